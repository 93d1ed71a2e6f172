"""Stage 1 of the pipeline: load a YAML spec, validate it, and turn it into typed objects.

The spec is data: bounded safe YAML (:mod:`conformance.safe_yaml`), a JSON Schema for its
shape (``specs/spec.schema.json``) and the formula language (:mod:`conformance.formula`) for
its formulas. Beyond its shape, a spec must be sane before any adapter is judged by it
(:func:`_check_values`, :func:`_check_tolerances`): every number finite and of ordinary size,
tolerances within stated bounds, every formula reading only what its path binds. Every error
names the file, line and column, the offending key or value and, for typos, the nearest
valid key; a faulty spec never reaches an adapter.
"""
from __future__ import annotations

import ast
import hashlib
import json
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import safe_yaml
from .diagnostics import UserError, YamlLocator, close_matches, did_you_mean
from .formula import _AXIS_FUNCTIONS, CONSTANTS, FUNCTIONS, Formula, FormulaError, parse

#: Names every formula may read: the canonical inputs of specs/README.md.
INPUT_NAMES = frozenset({"x", "t", "y", "w", "g", "eps", "ignore_index", "C", "P"})
#: The inputs each target path binds (conformance/case.py: Case.canonical): the index path
#: has class indices t and no probabilities y, the probability path the other way round.
PATH_INPUTS = {"index": INPUT_NAMES - {"y"}, "probability": INPUT_NAMES - {"t"}}
REDUCTIONS = ("none", "sum", "mean")
#: Unit roundoff of each dtype: a tolerance row's ``u`` must be this unless it gives ``u_reason``.
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24, "float64": 2.0 ** -53}
#: Bounds of every ``k_*`` multiplier of a tolerance row.
K_BOUNDS = (1.0, 1024.0)
#: Bounds of a ``u`` given with a ``u_reason`` (any other ``u`` is a unit roundoff).
U_BOUNDS = (2.0 ** -64, 2.0 ** -4)
#: Largest integer a spec may write (the oracle computes in float64).
MAX_INT = 2 ** 53


class SpecError(UserError):
    """A spec file that cannot be used; the message is ready for a user."""

    def __init__(self, file: str, line: int | None, col: int | None, message: str, fix: str | None = ""):
        super().__init__(message, file, line, col, fix)


# --------------------------------------------------------------------------- typed spec
@dataclass(frozen=True)
class Gradient:
    wrt: str
    bindings: dict[str, Formula]
    reductions: dict[str, Formula]
    unspecified: Formula | None = None


@dataclass(frozen=True)
class TargetPath:
    name: str
    bindings: dict[str, Formula]
    reductions: dict[str, Formula]
    gradients: dict[str, Gradient]


@dataclass(frozen=True)
class SpecialCase:
    id: str
    make: tuple[str, ...]
    path: str | None
    expect: dict[str, str]
    note: str = ""


@dataclass(frozen=True)
class Variant:
    id: str
    description: str
    overrides: dict[str, str]
    replaces_errors: tuple[str, ...] = ()
    expect: str | None = None


@dataclass(frozen=True)
class ErrorClause:
    id: str
    severity: str
    make: str
    torch: str = ""


@dataclass(frozen=True)
class Metamorphic:
    id: str
    transform: str
    relation: str | dict[str, str]
    requires: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    reductions: tuple[str, ...] = ()
    description: str = ""

    def relation_for(self, reduction: str) -> str | None:
        if isinstance(self.relation, str):
            return self.relation
        return self.relation.get(reduction)


@dataclass(frozen=True)
class DtypeTolerance:
    u: float
    k_forward: float
    k_reduce: float
    k_gradient: float
    #: Further ``k_*`` / ``u_*`` constants of the row (checked like the four above).
    extra: dict[str, float] = field(default_factory=dict, compare=False)
    u_reason: str = ""


@dataclass(frozen=True)
class Tolerances:
    scale: Formula
    gscale: Formula
    dtypes: dict[str, DtypeTolerance]
    #: Error scale of the gradient w.r.t. probability targets (per position), if any.
    gscale_target: Formula | None = None
    #: What sums over classes in any order may lose, in units of gamma (specs/README.md):
    #: per position (forward), per gradient element, per target-gradient element.
    accumulate: Formula | None = None
    gaccumulate: Formula | None = None
    gaccumulate_target: Formula | None = None
    #: The rounding-bias rule (conformance/bias.py): {dtypes, max_internal, alpha, min_samples, min_mean}.
    unbiased: dict[str, Any] | None = None


@dataclass(frozen=True)
class Extension:
    """One LLM-kernel option of the spec's ``extensions:`` section (off at ``identity``)."""

    id: str
    stage: str
    identity: Any
    formulas: dict[str, Formula]                 # logits, dlogits, loss, dloss, value
    reductions: dict[str, Formula] = field(default_factory=dict)
    gradients: dict[str, Formula] = field(default_factory=dict)
    tolerance: dict[str, Formula] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    transform: str | None = None
    description: str = ""


#: The order the oracle applies the extensions in (softcap after the scale).
EXTENSION_ORDER = ("shift", "logit_scale", "softcap", "z_loss", "normalizer", "return_lse")


@dataclass(frozen=True)
class Spec:
    """One operation's semantics, checked and ready for the oracle and the strategies."""

    file: str
    version: str
    operation: str
    reference: str
    summary: str
    sha256: str
    raw: dict[str, Any] = field(repr=False)
    paths: dict[str, TargetPath] = field(repr=False)
    special_cases: dict[str, SpecialCase] = field(repr=False)
    variants: dict[str, Variant] = field(repr=False)
    errors: dict[str, ErrorClause] = field(repr=False)
    metamorphic: dict[str, Metamorphic] = field(repr=False)
    tolerances: Tolerances = field(repr=False)
    applied_variants: tuple[str, ...] = ()
    #: Where each value of the file is (for errors found after loading, e.g. spec_consistency).
    marks: Any = field(default=None, repr=False, compare=False)
    #: The ``extensions:`` section, in :data:`EXTENSION_ORDER` (empty when the spec has none).
    extensions: dict[str, Extension] = field(default_factory=dict, repr=False)
    #: The ``linear:`` section of a composed spec (conformance/linear.py: LinearSection), None otherwise.
    linear: Any = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Spec({self.operation} {self.version}, {self.file!r}, sha256 {self.sha256[:12]})"

    def _repr_pretty_(self, p, cycle) -> None:
        """Hypothesis prints strategies with their arguments: keep the spec one line there."""
        p.text(repr(self))

    @property
    def domains(self) -> dict[str, Any]:
        return self.raw["domains"]

    @property
    def deprecated(self) -> list[dict[str, Any]]:
        return self.raw["signature"].get("deprecated", [])

    @property
    def deprecated_warning(self) -> str | None:
        """The warning category a call with a deprecated argument must emit (None: no rule)."""
        return self.raw["signature"].get("deprecated_warning")

    def with_variants(self, names) -> Spec:
        """This spec with the formula overrides of the named variants applied."""
        names = tuple(sorted(set(names) & set(self.variants)))
        if not names:
            return self
        paths = {k: replace(p, reductions=dict(p.reductions),
                            gradients={g: replace(gr, reductions=dict(gr.reductions)) for g, gr in p.gradients.items()})
                 for k, p in self.paths.items()}
        for name in names:
            for dotted, source in self.variants[name].overrides.items():
                table, key, known = _override_target(paths, dotted)
                table[key] = parse(source, known=known, where=f"variants.{name}.overrides.{dotted}")
        return replace(self, paths=paths, applied_variants=names)


# --------------------------------------------------------------------------- locating
def _schema() -> dict:
    return json.loads(resources.files("conformance.specs").joinpath("spec.schema.json").read_text())


class _Marks(YamlLocator):
    """The YAML node behind every value of a document, addressed by its JSON path
    (conformance/diagnostics.py: YamlLocator), plus duplicate keys and places in formulas.
    """

    def __init__(self, text: str, root: yaml.Node | None):
        super().__init__(root)
        self.text = text
        self.duplicates: list[tuple[tuple, yaml.Node, yaml.Node]] = []
        if self.root is not None:
            self._find_duplicates(self.root, ())

    def _find_duplicates(self, node, path):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for k, v in node.value:
                key = getattr(k, "value", None)
                if isinstance(key, str) and key != "<<":
                    if key in seen:
                        self.duplicates.append((path + (key,), seen[key], k))
                    seen.setdefault(key, k)
                self._find_duplicates(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._find_duplicates(v, path + (i,))

    def formula_at(self, path, offset: int | None) -> tuple[int | None, int | None]:
        """Where character ``offset`` of the (stripped) formula at ``path`` is in the file."""
        node = self.node(path)
        if not isinstance(node, yaml.ScalarNode):
            return self.at(path)
        start, end = node.start_mark, node.end_mark
        segment = self.text[start.index:end.index]
        line, col = start.line, start.column
        if node.style in ("|", ">"):  # the content starts on the line after the indicator
            cut = segment.find("\n")
            segment, line, col = ("", line, col) if cut < 0 else (segment[cut + 1:], line + 1, 0)
        elif node.style in ("'", '"'):
            segment, col = segment[1:-1], col + 1
        # The value is its source lines, stripped, joined by one character (a space where
        # YAML folds, a newline where it keeps the break), which is all formula.parse sees.
        pieces = []
        for i, raw in enumerate(segment.split("\n")):
            body = raw.strip()
            if body:
                indent = len(raw) - len(raw.lstrip())
                pieces.append((line + i, (col if i == 0 else 0) + indent, body))
        if not pieces:
            return start.line + 1, start.column + 1
        rest = offset or 0
        for ln, c, body in pieces:
            if rest <= len(body):
                return ln + 1, c + rest + 1
            rest -= len(body) + 1
        ln, c, body = pieces[-1]
        return ln + 1, c + len(body) + 1


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


_EXPECTED = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number",
             "integer": "an integer", "boolean": "true or false", "null": "an empty value"}


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for t, name in ((dict, "a mapping"), (list, "a list"), (str, "a string"), (int, "an integer"),
                    (float, "a number")):
        if isinstance(value, t):
            return name
    return "an empty value" if value is None else f"a {type(value).__name__}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word, options) -> str:
    return did_you_mean(word, options, prefix="", suffix=" ")


def _override_names(raw: dict) -> list[str]:
    """Every key a variant may override, for suggestions."""
    out = []
    for pname, praw in (raw.get("paths") or {}).items():
        if not isinstance(praw, dict):
            continue
        out += [f"paths.{pname}.reductions.{r}" for r in (praw.get("reductions") or {})]
        for wrt, graw in (praw.get("gradients") or {}).items():
            if isinstance(graw, dict):
                out += [f"paths.{pname}.gradients.{wrt}.reductions.{r}" for r in (graw.get("reductions") or {})]
    return out


def _schema_error(err: jsonschema.ValidationError, file: str, marks: _Marks, raw: dict) -> SpecError:
    path = list(err.absolute_path)
    where = _dotted(path)
    if err.validator in ("oneOf", "anyOf") and err.context:
        # Explain against the alternative the value was closest to, not the whole union.
        same_type = [c for c in err.context if c.validator != "type"]
        if same_type:
            inner = _schema_error(jsonschema.exceptions.best_match(same_type), file, marks, raw)
            alts = " or ".join(_EXPECTED.get(c.validator_value, str(c.validator_value))
                               for c in err.context if c.validator == "type")
            return SpecError(inner.file or file, inner.line, inner.col, inner.message,
                             (inner.fix or "") + (f" (or give {alts})" if alts else ""))
        expected = " or ".join(_EXPECTED.get(c.validator_value, str(c.validator_value)) for c in err.context)
        line, col = marks.at(path)
        return SpecError(file, line, col, f"{where}: expected {expected}, got {_kind(err.instance)}",
                         f"give {expected}")
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            key = extra[0]
            line, col = marks.at(path + [key], key=True)
            fix = _did_you_mean(key, allowed) + (f"Known keys here: {', '.join(allowed)}." if allowed else "")
            return SpecError(file, line, col, f"'{key}' is not a known key in {where}", fix.strip())
    if "propertyNames" in err.relative_schema_path:
        bad = err.instance
        line, col = marks.at(path + [bad], key=True)
        if err.validator == "enum":
            allowed = [str(a) for a in err.validator_value]
            fix = _did_you_mean(bad, allowed) + f"allowed here: {', '.join(allowed)}"
        elif path[-1:] == ["overrides"]:
            names = _override_names(raw)
            fix = _did_you_mean(bad, names) + ("this spec's formulas: " + ", ".join(names) if names else
                                               "write paths.<path>.reductions.<reduction>")
        else:
            fix = f"names here are lower_snake_case (they must match {err.validator_value})"
        return SpecError(file, line, col, f"'{bad}' is not an allowed key in {where}", fix.strip())
    line, col = marks.at(path)
    if err.validator == "type":
        want = err.validator_value
        expected = " or ".join(_EXPECTED.get(w, str(w)) for w in (want if isinstance(want, list) else [want]))
        node = marks.node(path)
        literal = node.value if isinstance(node, yaml.ScalarNode) else err.instance
        if want == "string" and isinstance(err.instance, (int, float, bool)):
            fix = f'quote it: "{literal}"'
        elif want in ("number", "integer") and isinstance(err.instance, str):
            fix = "write a bare number, e.g. 8, without quotes or words"
        elif want == "array" and not isinstance(err.instance, (dict, list)):
            fix = f"write a list, e.g. [{literal}]"
        elif want == "object":
            fix = "write a mapping: one `key: value` per line, indented under this key"
        else:
            fix = f"give {expected}"
        return SpecError(file, line, col, f"{where}: expected {expected}, got {_kind(err.instance)} "
                                          f"{_short(err.instance)}", fix)
    if err.validator == "enum":
        allowed = [str(a) for a in err.validator_value]
        return SpecError(file, line, col, f"{where}: {_short(err.instance)} is not allowed here",
                         _did_you_mean(err.instance, allowed) + f"allowed: {', '.join(allowed)}")
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        name = missing[0] if missing else "?"
        # A key that the schema's patterns allow (k_*, u_*) but that is close to a missing one is a typo.
        extra = [k for k in err.instance if k not in err.schema.get("properties", {}) and k not in err.validator_value]
        close = close_matches(name, extra)
        if close:
            line, col = marks.at(path + [close[0]], key=True)
            return SpecError(file, line, col, f"'{close[0]}' is not a known key in {where}",
                             f"did you mean '{name}'? (the required key '{name}' is missing)")
        if path:
            line, col = marks.at(path, key=True)
        return SpecError(file, line, col, f"{where}: the required key '{name}' is missing",
                         f"add '{name}:' " + (f"under {where}" if path else "at the top level"))
    if err.validator == "pattern" and path == ["spec_version"]:
        return SpecError(file, line, col, f"spec_version: {_short(err.instance)} is not a semantic version",
                         'write MAJOR.MINOR.PATCH in quotes, e.g. spec_version: "1.0.0"')
    fix = {"pattern": f"the value must match {err.validator_value}",
           "minLength": "give a non-empty value",
           "minItems": f"give at least {err.validator_value} item(s)",
           "maxItems": f"give at most {err.validator_value} item(s)",
           "minProperties": f"give at least {err.validator_value} entry(ies)",
           "minimum": f"give a value >= {err.validator_value}",
           "maximum": f"give a value <= {err.validator_value}",
           "exclusiveMinimum": f"give a value > {err.validator_value}"}.get(err.validator, "see specs/README.md")
    return SpecError(file, line, col, f"{where}: {err.message}", fix)


# --------------------------------------------------------------------------- faults
class _Fault(Exception):
    """A fault found while building, located by the JSON path of the offending node."""

    def __init__(self, path: tuple, message: str, fix: str = "", *, key: bool = False):
        super().__init__(message)
        self.path, self.message, self.fix, self.key = tuple(path), message, fix, key

    def error(self, file: str, marks: _Marks) -> SpecError:
        line, col = marks.at(self.path, key=self.key)
        return SpecError(file, line, col, f"{_dotted(self.path)}: {self.message}", self.fix)


class _FormulaFault(_Fault):
    def __init__(self, path: tuple, exc: FormulaError, known, context: str = ""):
        message, fix = _explain_formula(exc, known)
        super().__init__(path, message + context, fix)
        self.exc = exc

    def error(self, file: str, marks: _Marks) -> SpecError:
        exc = self.exc
        line, col = marks.formula_at(self.path, exc.col)
        message = f"{_dotted(self.path)}: {self.message}"
        if exc.source:
            message += f"\n    {exc.source.replace(chr(10), ' ')}"
            if exc.col is not None:
                message += f"\n    {' ' * exc.col}^"
        return SpecError(file, line, col, message, self.fix)


def _names_in_scope(known) -> str:
    known = set(known)
    inputs = sorted(known & INPUT_NAMES)
    bound = sorted(known - INPUT_NAMES)
    return f"inputs {', '.join(inputs)}" + (f"; bindings {', '.join(bound)}" if bound else "") + \
           f"; constants {', '.join(CONSTANTS)}"


def _explain_formula(exc: FormulaError, known) -> tuple[str, str]:
    """(reason, fix) for a formula the language rejects; the fix names the nearest valid word."""
    msg = exc.message
    functions = ", ".join(sorted(FUNCTIONS))
    if msg.startswith("the formula is"):  # over formula.MAX_CHARS or MAX_DEPTH
        return msg, "bind intermediate values under `bindings:` and use them by name"
    if msg.startswith("the integer literal") or "overflows" in msg:
        return msg, "write a number of ordinary size (the constants inf and nan exist for those values)"
    m = re.match(r"unknown function '(\w+)'", msg)
    if m:
        return f"unknown function '{m[1]}'", _did_you_mean(m[1], FUNCTIONS) + f"the functions are: {functions}"
    m = re.match(r"unknown name '(\w+)'", msg)
    if m:
        if m[1] in INPUT_NAMES:
            other = [p for p, names in PATH_INPUTS.items() if m[1] in names]
            return (f"'{m[1]}' is not an input of this path",
                    f"only the {' and '.join(other)} path(s) bind '{m[1]}'; names in scope here: "
                    f"{_names_in_scope(known)}")
        hint = _did_you_mean(m[1], set(known) | set(CONSTANTS))
        function = close_matches(m[1], FUNCTIONS)
        if not hint and function:  # e.g. `softmx` where softmax(...) was meant
            hint = f"did you mean the function '{function[0]}(...)'? "
        return f"unknown name '{m[1]}'", hint + f"names in scope here: {_names_in_scope(known)}"
    if msg.startswith("not a valid expression"):
        return msg, ("write one expression with balanced brackets, e.g. where(valid, t, 0); "
                     "operators: + - * / ** & | ~ == != < <= > >=")
    try:
        tree = ast.parse((exc.source or "").strip(), mode="eval")  # parsed only, never run
    except SyntaxError:
        tree = None
    nodes = list(ast.walk(tree)) if tree is not None else []
    if any(isinstance(n, ast.Name) and n.id.startswith("__") for n in nodes) or \
            any(isinstance(n, ast.Attribute) and n.attr.startswith("__") for n in nodes):
        return msg, ("a formula is data and is never executed: it may only combine names in scope with "
                     f"the language's functions ({functions}); imports, attributes and Python built-ins "
                     "do not exist here")
    attrs = [n for n in nodes if isinstance(n, ast.Attribute)]
    if attrs and (msg.startswith("only plain function calls") or msg.startswith("Attribute")):
        attr = attrs[0]
        close = close_matches(attr.attr, FUNCTIONS)
        if close:
            return msg, (f"did you mean '{close[0]}'? call the language's functions directly: "
                         f"{close[0]}(...), not {ast.unparse(attr)}(...)")
        return msg, f"there are no modules or attributes; the functions are: {functions}"
    fixes = {
        "Subscript": "there is no indexing: use take(w, t) for a per-class vector or "
                     "take_along(a, t, axis=classes) for a (P, C) array",
        "Lambda": "a formula is one expression, without lambda: bind intermediate values under "
                  "`bindings:` and use them by name",
        "BoolOp": "write & for and, | for or, ~ for not, with comparisons in parentheses: (t >= 0) & (t < C)",
        "IfExp": "write where(condition, a, b)",
        "NamedExpr": "bind the value under `bindings:` instead",
    }
    for kind, fix in fixes.items():
        if msg.startswith(f"{kind} is not allowed"):
            return msg, fix
    if re.match(r"\w+ is not allowed", msg):
        return msg, ("only numbers, names in scope, arithmetic, comparisons, & | ~ and calls of the "
                     f"language's functions are allowed; the functions are: {functions}")
    if msg.startswith("only numbers are allowed as constants"):
        return msg, ("names are written bare (wt, not 'wt'); True, False, None and strings are not "
                     "values in the language: use 0 and 1 or a comparison")
    if "is not in the formula language" in msg:
        return msg, "the operators are + - * / ** & | ~ and the comparisons == != < <= > >="
    if "keyword" in msg or "axis=" in msg:
        return msg, ("only axis=classes is accepted, and only by: "
                     + ", ".join(sorted(_AXIS_FUNCTIONS)))
    m = re.match(r"'(\w+)' is a function", msg)
    if m:
        return msg, f"call it with its arguments: {m[1]}(...)"
    return msg, "write the formula in the language of specs/README.md"


def _parse(source, known, path: tuple, context: str = "") -> Formula:
    try:
        return parse(source, known=frozenset(known), where=_dotted(path))
    except FormulaError as exc:
        raise _FormulaFault(path, exc, known, context) from None


# --------------------------------------------------------------------------- building
def load(path: str | Path) -> Spec:
    """Read, validate and build a spec; raise :class:`SpecError` with file:line on any fault."""
    path = Path(path)
    file = str(path)
    try:
        text = safe_yaml.read(path, what="spec")
    except safe_yaml.YamlFileError as exc:
        fix = "pass an existing spec file, e.g. specs/cross_entropy.yaml" if "cannot read" in exc.problem else exc.fix
        raise SpecError(file, None, None, exc.problem, fix) from None
    return loads(text, file=file)


def loads(text: str, *, file: str = "<string>") -> Spec:
    """Like :func:`load`, for spec text; ``file`` is the name used in error messages."""
    try:
        raw, root = safe_yaml.load(text, file=file)
    except safe_yaml.YamlFileError as exc:
        raise SpecError(file, exc.line, exc.col, exc.problem, exc.fix) from None
    marks = _Marks(text, root)
    if marks.duplicates:
        path, first, second = marks.duplicates[0]
        raise SpecError(file, second.start_mark.line + 1, second.start_mark.column + 1,
                        f"duplicate key '{path[-1]}' in {_dotted(path[:-1])} "
                        f"(first at line {first.start_mark.line + 1})",
                        "keep only one: YAML would silently use the last one")
    if not isinstance(raw, dict):
        raise SpecError(file, 1, 1, "a spec must be a mapping at the top level", "start from specs/cross_entropy.yaml")
    try:
        _check_values(raw)  # before the schema: NaN slips through minimum/maximum
    except _Fault as fault:
        raise fault.error(file, marks) from None
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (marks.at(list(e.absolute_path))[0] or 0))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise _schema_error(best, file, marks, raw)
    if "base" in raw:  # a composed spec (linear_cross_entropy): the base spec's loss on computed logits
        try:
            spec = _build_composed(raw, text, file)
        except _Fault as fault:
            raise fault.error(file, marks) from None
        _check_references(spec, marks)
        return replace(spec, marks=marks)
    try:
        _check_tolerances(raw["tolerances"]["dtypes"])
        _check_domains(raw["domains"])
        spec = _build(raw, text, file)
    except _Fault as fault:
        raise fault.error(file, marks) from None
    _check_references(spec, marks)
    return replace(spec, marks=marks)


def _check_values(raw: Any) -> None:
    """Every number in the document finite and at most :data:`MAX_INT` in magnitude."""
    stack: list[tuple[tuple, Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [(path + (k,), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(path + (i,), v) for i, v in enumerate(value)]
        elif isinstance(value, float) and not math.isfinite(value):
            raise _Fault(path, f"{value} is not allowed: a spec's numbers are finite",
                         "write a finite number (formulas may use the constants inf and nan)")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            digits = len(str(abs(value)))
            raise _Fault(path, f"a {digits}-digit integer is not allowed (at most 2**53 in magnitude)",
                         "write a number of ordinary size")


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * b


def roundoff_dtypes(u: float) -> list[str]:
    """The dtypes whose unit roundoff ``u`` is (as a spec writes it, to about 8 digits)."""
    return [d for d, v in UNIT_ROUNDOFF.items() if _near(u, v)]


def _check_tolerances(dtypes: Mapping[str, Mapping[str, Any]]) -> None:
    """Every k_* within :data:`K_BOUNDS`; every u and u_* a dtype's unit roundoff (the row's own
    for ``u``), or for ``u`` with a ``u_reason``, within :data:`U_BOUNDS`."""
    lo, hi = K_BOUNDS
    roundoffs = ", ".join(f"{d} 2**{int(math.log2(v))}" for d, v in UNIT_ROUNDOFF.items())
    for dtype, row in dtypes.items():
        base = ("tolerances", "dtypes", dtype)
        for key, value in row.items():
            if key == "u_reason" or isinstance(value, str):
                continue
            if key.startswith("k_") and not lo <= value <= hi:
                raise _Fault(base + (key,), f"{value!r} is outside [{lo:g}, {hi:g}]",
                             "a multiplier of the unit roundoff is at least 1 and at most 1024: a looser "
                             "bound would pass wrong answers")
            if key == "u":
                want = UNIT_ROUNDOFF[dtype]
                if row.get("u_reason"):
                    if not U_BOUNDS[0] <= value <= U_BOUNDS[1]:
                        raise _Fault(base + (key,), f"{value!r} is outside [2**-64, 2**-4]",
                                     "even with a u_reason, u is a unit roundoff of some arithmetic")
                elif not _near(value, want):
                    raise _Fault(base + (key,), f"{value!r} is not the unit roundoff of {dtype} "
                                                f"(2**{int(math.log2(want))} = {want!r})",
                                 f"write u: {want!r}, or add u_reason: explaining why this row differs")
            elif key.startswith("u_") and not roundoff_dtypes(value):
                raise _Fault(base + (key,), f"{value!r} is not a unit roundoff",
                             f"write the unit roundoff of the dtype it stands for: {roundoffs}")


def _check_domains(domains: Mapping[str, Any]) -> None:
    ls = domains.get("label_smoothing") or {}
    if "min" in ls and "max" in ls and ls["min"] > ls["max"]:
        raise _Fault(("domains", "label_smoothing", "min"), f"min {ls['min']} is above max {ls['max']}",
                     "give min <= max (an empty range draws nothing)")


def _bindings(raw: Mapping[str, str], known: set[str], base: tuple) -> dict[str, Formula]:
    out: dict[str, Formula] = {}
    for name, source in (raw or {}).items():
        path = base + (name,)
        if not str(name).isidentifier() or keyword.iskeyword(name):
            raise _Fault(path, f"'{name}' cannot be a binding name", "use a lower_snake_case identifier", key=True)
        if name in INPUT_NAMES or name in FUNCTIONS or name in CONSTANTS:
            what = "an input" if name in INPUT_NAMES else "a function" if name in FUNCTIONS else "a constant"
            raise _Fault(path, f"the binding '{name}' would hide {what} of the formula language",
                         "choose another name", key=True)
        if name in known:
            raise _Fault(path, f"'{name}' is already bound in this scope", "choose another name", key=True)
        out[name] = _parse(source, known, path)
        known.add(name)
    return out


class _Unresolved(LookupError):
    def __init__(self, message: str, options):
        super().__init__(message)
        self.message, self.options = message, sorted(options)


def _override_target(paths: Mapping[str, TargetPath], dotted: str):
    """(formula table, key, names in scope) that a variant override ``dotted`` replaces."""
    parts = dotted.split(".")
    if parts[1] not in paths:
        raise _Unresolved(f"the spec has no path '{parts[1]}'", paths)
    path = paths[parts[1]]
    known = set(PATH_INPUTS.get(parts[1], INPUT_NAMES)) | set(path.bindings)
    if parts[2] == "reductions":
        table, key = path.reductions, parts[3]
    else:
        if parts[3] not in path.gradients:
            raise _Unresolved(f"paths.{parts[1]} has no gradient with respect to '{parts[3]}'", path.gradients)
        grad = path.gradients[parts[3]]
        known |= set(grad.bindings)
        table, key = grad.reductions, parts[5]
    if key not in table:
        raise _Unresolved(f"{'.'.join(parts[:-1])} defines no '{key}' formula to override", table)
    return table, key, frozenset(known)


def _build(raw: dict, text: str, file: str) -> Spec:
    paths: dict[str, TargetPath] = {}
    for pname, praw in raw["paths"].items():
        base = ("paths", pname)
        known = set(PATH_INPUTS.get(pname, INPUT_NAMES))
        bindings = _bindings(praw["bindings"], known, base + ("bindings",))
        reductions = {r: _parse(s, known, base + ("reductions", r)) for r, s in praw["reductions"].items()}
        grads = {}
        for wrt, graw in (praw.get("gradients") or {}).items():
            gbase = base + ("gradients", wrt)
            gknown = set(known)
            gb = _bindings(graw.get("bindings"), gknown, gbase + ("bindings",))
            gr = {r: _parse(s, gknown, gbase + ("reductions", r)) for r, s in graw["reductions"].items()}
            unspec = graw.get("unspecified")
            grads[wrt] = Gradient(wrt, gb, gr, _parse(unspec, gknown, gbase + ("unspecified",)) if unspec else None)
        paths[pname] = TargetPath(pname, bindings, reductions, grads)

    domains = raw["domains"]
    for red in domains["reductions"]:
        for pname, p in paths.items():
            for where, table in [(("paths", pname, "reductions"), p.reductions)] + \
                    [(("paths", pname, "gradients", g, "reductions"), gr.reductions) for g, gr in p.gradients.items()]:
                if red not in table:
                    raise _Fault(where, f"no '{red}' formula, but domains.reductions lists '{red}'",
                                 f"add '{red}:' here or remove '{red}' from domains.reductions", key=True)
    if "elementwise" not in paths:
        for i, kind in enumerate(domains["target_kinds"]):
            if kind not in paths:
                raise _Fault(("domains", "target_kinds", i), f"target kind '{kind}' has no path",
                             f"add paths.{kind} or remove '{kind}' (paths: {', '.join(paths)})")

    tol = raw["tolerances"]
    all_known = set(INPUT_NAMES)
    for p in paths.values():
        all_known |= set(p.bindings)
    for pname, p in paths.items():  # a tolerance rule is evaluated with each path's bindings
        for key in ("scale", "gscale", "gscale_target", "accumulate", "gaccumulate", "gaccumulate_target"):
            if key in tol:
                _parse(tol[key], PATH_INPUTS.get(pname, INPUT_NAMES) | set(p.bindings), ("tolerances", key),
                       context=f" (tolerance rules are evaluated with the bindings of paths.{pname})")
    missing = [d for d in domains["dtypes"] if d not in tol["dtypes"]]
    if missing:
        raise _Fault(("tolerances", "dtypes"), f"no tolerance for {', '.join(missing)}, which domains.dtypes lists",
                     f"add a row for {missing[0]} (u, k_forward, k_reduce, k_gradient)", key=True)
    optional = {key: parse(tol[key], known=frozenset(all_known), where=f"tolerances.{key}")
                for key in ("gscale_target", "accumulate", "gaccumulate", "gaccumulate_target") if key in tol}
    tolerances = Tolerances(parse(tol["scale"], known=frozenset(all_known), where="tolerances.scale"),
                            parse(tol["gscale"], known=frozenset(all_known), where="tolerances.gscale"),
                            {d: _dtype_tolerance(v) for d, v in tol["dtypes"].items()},
                            unbiased=dict(tol["unbiased"]) if tol.get("unbiased") else None, **optional)

    special = {k: SpecialCase(k, tuple(v["make"]), v.get("path"), dict(v["expect"]), v.get("note", ""))
               for k, v in (raw.get("special_cases") or {}).items()}
    for cid, case in special.items():
        if case.path is not None and case.path not in paths:
            raise _Fault(("special_cases", cid, "path"), f"'{case.path}' is not a path of this spec",
                         f"use one of: {', '.join(paths)}")
    errors = {k: ErrorClause(k, v["severity"], v["make"], v.get("torch", ""))
              for k, v in (raw.get("errors") or {}).items()}
    variants = {k: Variant(k, v["description"], dict(v.get("overrides") or {}), tuple(v.get("replaces_errors") or ()),
                           v.get("expect")) for k, v in (raw.get("variants") or {}).items()}
    for vid, var in variants.items():
        for dotted, source in var.overrides.items():
            at = ("variants", vid, "overrides", dotted)
            try:
                _, _, known = _override_target(paths, dotted)
            except _Unresolved as exc:
                raise _Fault(at, exc.message, (f"it must be one of: {', '.join(_override_names(raw))}"),
                             key=True) from None
            _parse(source, known, at)
        for i, e in enumerate(var.replaces_errors):
            if e not in errors:
                raise _Fault(("variants", vid, "replaces_errors", i), f"unknown error clause '{e}'",
                             _did_you_mean(e, errors) + f"the clauses are: {', '.join(errors) or '(none)'}")
    meta = {k: Metamorphic(k, v["transform"], v["relation"], tuple(v.get("requires") or ()),
                           tuple(v.get("paths") or ()), tuple(v.get("reductions") or ()), v.get("description", ""))
            for k, v in (raw.get("metamorphic") or {}).items()}
    from .metamorphic import TRANSFORMS
    for mid, rel in meta.items():
        rels = [rel.relation] if isinstance(rel.relation, str) else list(rel.relation.values())
        if "permuted" in rels and rel.transform in TRANSFORMS and not TRANSFORMS[rel.transform].permutes_positions:
            permuting = sorted(n for n, t in TRANSFORMS.items() if t.permutes_positions)
            raise _Fault(("metamorphic", mid, "relation"),
                         f"relation 'permuted' needs a transform that permutes positions; '{rel.transform}' does not",
                         f"use 'equal', or one of the permuting transforms: {', '.join(permuting)}")
        for i, pname in enumerate(rel.paths):
            if pname not in paths:
                raise _Fault(("metamorphic", mid, "paths", i), f"'{pname}' is not a path of this spec",
                             f"use one of: {', '.join(paths)}")
    return Spec(file=file, version=raw["spec_version"], operation=raw["operation"], reference=raw["reference"],
                summary=raw["summary"], sha256=hashlib.sha256(text.encode()).hexdigest(), raw=raw, paths=paths,
                special_cases=special, variants=variants, errors=errors, metamorphic=meta, tolerances=tolerances,
                extensions=_extensions(raw.get("extensions") or {}, paths))


def _extensions(raw: Mapping[str, Any], paths: Mapping[str, TargetPath]) -> dict[str, Extension]:
    """The ``extensions:`` section, its formulas parsed against the index path's names plus the
    extension options themselves (``x`` there is the transformed logits)."""
    if not raw:
        return {}
    if "index" not in paths:
        raise _Fault(("extensions",), "extensions need an index path", "add paths.index or remove extensions:")
    idx = paths["index"]
    names = set(PATH_INPUTS["index"]) | set(idx.bindings) | set(EXTENSION_ORDER) | {"dl", "dlogits"}
    for g in idx.gradients.values():
        names |= set(g.bindings)
    known = frozenset(names)
    out: dict[str, Extension] = {}
    for eid in [e for e in EXTENSION_ORDER if e in raw]:
        e = raw[eid]
        base = ("extensions", eid)
        forms = {k: _parse(e[k], known, base + (k,)) for k in ("logits", "dlogits", "loss", "dloss", "value") if k in e}
        need = {"logits": ("logits", "dlogits"), "loss": ("loss", "dloss"), "output": ("value",)}.get(e["stage"], ())
        for k in need:
            if k not in forms:
                raise _Fault(base, f"a '{e['stage']}' extension needs a '{k}' formula",
                             f"add '{k}:' to extensions.{eid}")
        if e["stage"] == "target" and "transform" not in e:
            raise _Fault(base, "a 'target' extension needs a 'transform'", "add 'transform: shift_labels'")
        out[eid] = Extension(
            eid, e["stage"], e["identity"], forms,
            {r: _parse(f, known, base + ("reductions", r)) for r, f in (e.get("reductions") or {}).items()},
            {r: _parse(f, known, base + ("gradients", r)) for r, f in (e.get("gradients") or {}).items()},
            {k: _parse(f, known, base + ("tolerance", k)) for k, f in (e.get("tolerance") or {}).items()},
            dict(e["domain"]), e.get("output"), e.get("transform"), e.get("description", ""))
    return out


def _dtype_tolerance(row: Mapping[str, Any]) -> DtypeTolerance:
    main = ("u", "k_forward", "k_reduce", "k_gradient")
    return DtypeTolerance(**{k: float(row[k]) for k in main},
                          extra={k: float(v) for k, v in row.items() if k not in main and k != "u_reason"},
                          u_reason=row.get("u_reason", ""))


def _check_references(spec: Spec, marks: _Marks) -> None:
    """Names that point into Python registries (strategy modifiers, mutations, transforms)."""
    from . import metamorphic as mm
    from . import modifiers, mutations

    def need(name, registry, where, what, home):
        if name not in registry:
            line, col = marks.at(where)
            known = f"known: {', '.join(sorted(registry))}" if registry else f"{home} registers none yet"
            raise SpecError(spec.file, line, col, f"{_dotted(where)}: unknown {what} '{name}'",
                            _did_you_mean(name, registry) + known)

    for cid, case in spec.special_cases.items():
        for i, m in enumerate(case.make):
            need(m, modifiers.MODIFIERS, ("special_cases", cid, "make", i), "strategy modifier",
                 "MODIFIERS in conformance/modifiers.py")
    for eid, clause in spec.errors.items():
        need(clause.make, mutations.MUTATIONS, ("errors", eid, "make"), "error mutation",
             "MUTATIONS in conformance/mutations.py")
    for mid, rel in spec.metamorphic.items():
        need(rel.transform, mm.TRANSFORMS, ("metamorphic", mid, "transform"), "metamorphic transform",
             "TRANSFORMS in conformance/metamorphic.py")


def default_spec_path(operation: str = "cross_entropy") -> Path:
    return Path(str(resources.files("conformance.specs").joinpath(f"{operation}.yaml")))


def load_default(operation: str = "cross_entropy") -> Spec:
    return load(default_spec_path(operation))


# --------------------------------------------------------------------------- composed specs (the linear form)
def _build_composed(raw: dict, text: str, file: str):
    """The composed Spec: the base spec's index path, extensions, variants and tolerances, the
    inherited special cases and error clauses, and this file's own clauses and linear section."""
    from .linear import LINEAR_INPUTS, TOLERANCE_INPUTS, WRTS, LinearSection

    base_file = Path(file).parent / f"{raw['base']}.yaml"
    base = load(base_file if base_file.is_file() else default_spec_path(raw["base"]))
    if "index" not in base.paths:
        raise _Fault(("base",), f"{raw['base']} has no index path", "compose a spec with an index path")
    domains = {**base.raw["domains"], **raw["domains"]}
    for i, kind in enumerate(domains["target_kinds"]):
        if kind != "index":
            raise _Fault(("domains", "target_kinds", i), f"the linear form takes class indices only, not '{kind}'",
                           "write target_kinds: [index]")
    inherit = raw.get("inherit") or {}
    special = {}
    for i, sid in enumerate(inherit.get("special_cases") or ()):
        if sid not in base.special_cases:
            raise _Fault(("inherit", "special_cases", i), f"{raw['base']} has no special case '{sid}'",
                           _did_you_mean(sid, base.special_cases) + f"known: {', '.join(base.special_cases)}")
        special[sid] = base.special_cases[sid]
    errors = {}
    for i, eid in enumerate(inherit.get("errors") or ()):
        if eid not in base.errors:
            raise _Fault(("inherit", "errors", i), f"{raw['base']} has no error clause '{eid}'",
                           _did_you_mean(eid, base.errors) + f"known: {', '.join(base.errors)}")
        errors[eid] = base.errors[eid]
    # this file's own clauses, built by the ordinary loader on a skeleton around them
    own = _build({**base.raw, **{k: raw.get(k) or {} for k in ("special_cases", "errors", "metamorphic")},
                    "variants": {}, "extensions": {}, "paths": {"index": base.raw["paths"]["index"]},
                    "domains": domains}, text, file)
    special.update(own.special_cases)
    errors.update(own.errors)

    idx = base.paths["index"]
    path_names = set(PATH_INPUTS["index"]) | set(idx.bindings)
    for g in idx.gradients.values():
        path_names |= set(g.bindings)
    lin = raw["linear"]
    logits = _parse(lin["logits"], LINEAR_INPUTS, ("linear", "logits"))
    gradients = {w: _parse(lin["gradients"][w], LINEAR_INPUTS | {"G"}, ("linear", "gradients", w)) for w in WRTS}
    tol = lin["tolerance"]
    known = set(path_names | LINEAR_INPUTS | TOLERANCE_INPUTS)
    bindings = _bindings(tol["bindings"], known, ("linear", "tolerance", "bindings"))
    forward = _parse(tol["forward"], known, ("linear", "tolerance", "forward"))
    sensitivity = _parse(tol["sensitivity"], known, ("linear", "tolerance", "sensitivity"))
    tgrads = {w: _parse(tol["gradients"][w], known | {"dG"}, ("linear", "tolerance", "gradients", w)) for w in WRTS}
    outputs = {k: _parse(v, known, ("linear", "tolerance", "outputs", k))
               for k, v in (tol.get("outputs") or {}).items()}
    mags = {w: _parse(f, LINEAR_INPUTS | {"G"}, ("linear", "tolerance", "magnitudes", w))
            for w, f in (tol.get("magnitudes") or {}).items()}
    section = LinearSection(logits, gradients, bindings, forward, sensitivity, tgrads, outputs, dict(lin["domain"]),
                            magnitudes=mags)
    merged = {**base.raw, **raw, "domains": domains, "paths": {"index": base.raw["paths"]["index"]},
              "tolerances": base.raw["tolerances"], "variants": base.raw.get("variants") or {},
              "extensions": base.raw.get("extensions") or {}}
    return replace(base, file=file, version=raw["spec_version"], operation=raw["operation"], reference=raw["reference"],
                   summary=raw["summary"], sha256=hashlib.sha256(text.encode()).hexdigest(), raw=merged,
                   paths={"index": idx}, special_cases=special, errors=errors, metamorphic=own.metamorphic,
                   linear=section, marks=None)
