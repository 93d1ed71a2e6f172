"""The one YAML loader of the project: safe, bounded, and keeping every value's line.

Specs, known-divergence files and adapter configs come from people who are not the suite's
authors and are read in other people's CI, so reading one must be cheap whatever it holds.
``yaml.safe_load`` builds no Python objects, but it is not bounded: a "billion laughs" file
(a few lines of anchors and aliases) expands into billions of values once anything walks
it, and 10,000 nested brackets overflow the composer's recursion. This loader composes the
node tree once (PyYAML's safe loader, libyaml's parser where present) and refuses, at the offending line, before
anything is expanded:

* a file over :data:`MAX_BYTES`;
* nesting deeper than :data:`MAX_DEPTH`;
* more than :data:`MAX_ALIASES` aliases, an alias to a collection that is still open
  (a recursive document), or a document that would hold more than :data:`MAX_NODES` values
  with every alias expanded (each alias counts the full size of what it names);
* a value the constructor cannot build (a 5,000-digit integer, an unknown tag).

The document is then constructed from that same node tree, so :func:`load` returns both the
data and the nodes (``node.start_mark`` is the position behind every value).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .diagnostics import UserError

MAX_BYTES = 512_000
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 5_000


class YamlLimitError(yaml.MarkedYAMLError):
    """A document over one of the loader's limits; ``problem_mark`` is where it went over."""


class YamlFileError(UserError):
    """A YAML file that cannot be used: ``file``, 1-based ``line``/``col`` (or None), ``problem``
    and a ``fix``; ``str()`` is the message for a user (conformance/diagnostics.py)."""

    def __init__(self, file: str, line: int | None, col: int | None, problem: str, fix: str = ""):
        self.problem = problem
        super().__init__(problem, file, line, col, fix)


class _Bounds:
    """Composer hooks that count depth, aliases and the expanded size as the nodes are made
    (the composition is always PyYAML's Python code, so these hooks always apply)."""

    def __init__(self, stream: Any = None) -> None:
        if stream is not None:
            super().__init__(stream)  # type: ignore[call-arg]  # the loader after this mixin takes it
        self._depth = 0
        self._aliases = 0
        self._size: dict[int, int] = {}   # id(node) -> values it stands for, aliases expanded
        self._keep: list[yaml.Node] = []  # keeps the ids above valid
        self._total = 0                   # values composed so far, aliases expanded

    def _count(self, n: int, mark):
        self._total += n
        if self._total > MAX_NODES:
            self._over(mark, f"the document would hold more than {MAX_NODES} values (aliases expanded)")

    def _over(self, mark, problem: str):
        raise YamlLimitError(None, None, problem, mark)

    def _fix_for_size(self) -> str:
        return ("write the values out instead of repeating anchors (&name / *name)" if self._aliases else
                "these files hold hundreds of values, not tens of thousands: check that this is the right file")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    self._over(event.start_mark, f"more than {MAX_ALIASES} aliases (*{event.anchor})")
                if id(target) not in self._size:
                    self._over(event.start_mark, f"the alias *{event.anchor} refers to a collection that "
                                                 "contains it (a recursive document)")
                self._count(self._size[id(target)], event.start_mark)
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._over(event.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        self._count(1, event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size[id(c)] for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size[id(k)] + self._size[id(v)] for k, v in node.value)
        else:
            size = 1
        self._size[id(node)] = size
        self._keep.append(node)
        return node

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # Python refuses int() of more than 4300 digits
            raise yaml.constructor.ConstructorError(None, None, f"the integer {node.value[:20]}... cannot be "
                                                    f"read ({len(node.value)} characters)", node.start_mark) from exc


class _PyLoader(_Bounds, yaml.SafeLoader):
    """Pure Python: slower, with PyYAML's clearer syntax messages."""


try:  # libyaml's parser (events) under the Python composer: about 4 times faster
    from yaml._yaml import CParser

    class _FastLoader(_Bounds, yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Bounds.__init__(self)
except ImportError:  # PyYAML built without libyaml
    _FastLoader = _PyLoader  # type: ignore[misc, assignment]  # the same interface, slower

for _cls in (_PyLoader, _FastLoader):
    _cls.add_constructor("tag:yaml.org,2002:int", _Bounds.construct_yaml_int)  # type: ignore[type-var]  # a mixin method


def _fix(problem: str) -> str:
    if "'\\t'" in problem:
        return "indent with spaces, never tabs"
    if "constructor" in problem or "tag" in problem:
        return "remove the tag: the file is plain data (safe YAML) and cannot build Python objects"
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or fix the indentation of this line"
    if "alias" in problem:
        return "write the values out instead of repeating anchors (&name / *name)"
    if "another document" in problem:
        return "a file holds one document: remove this '---' and what follows it"
    if "nesting" in problem:
        return f"flatten the structure: at most {MAX_DEPTH} levels of lists and mappings"
    if "integer" in problem:
        return "write a number of ordinary size"
    return "fix the YAML syntax here: indentation, brackets and quotes must balance"


def load(text: str, *, file: str = "<string>") -> tuple[Any, yaml.Node | None]:
    """(document, root node) of one YAML document; :class:`YamlFileError` on any fault."""
    if len(text) > MAX_BYTES:
        raise YamlFileError(file, None, None, f"the file is larger than {MAX_BYTES} bytes",
                            "a spec, known-divergence file or adapter config is a few kilobytes")
    try:
        return _load(_FastLoader, text, file)
    except YamlFileError as exc:
        if exc.problem.startswith("not valid YAML") and _FastLoader is not _PyLoader:
            _load(_PyLoader, text, file)  # the same fault, in PyYAML's clearer words
        raise


def _load(cls, text: str, file: str) -> tuple[Any, yaml.Node | None]:
    loader = cls(text)
    try:
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = str(getattr(exc, "problem", None) or exc).strip()
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000) met before ours
            exc, problem = YamlLimitError(None, None, "", mark), f"nesting deeper than {MAX_DEPTH} levels"
        raise YamlFileError(file, mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                            f"not valid YAML: {problem}" if not isinstance(exc, YamlLimitError) else problem,
                            loader._fix_for_size() if "values" in problem else _fix(problem)) from None
    finally:
        loader.dispose()
    return doc, node


def read(path: str | Path, *, what: str) -> str:
    """The text of ``path`` (UTF-8, at most :data:`MAX_BYTES`); :class:`YamlFileError` if not."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise YamlFileError(str(path), None, None, f"the {what} is larger than {MAX_BYTES} bytes",
                                "point to the right file: these files are a few kilobytes")
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(str(path), None, None, f"cannot read the {what}: {exc.strerror or exc}",
                            "check the path (relative paths start from the current folder)") from None
    except UnicodeDecodeError as exc:
        raise YamlFileError(str(path), None, None, f"the {what} is not UTF-8 text ({exc.reason})",
                            "save the file as UTF-8") from None


def load_file(path: str | Path, *, what: str) -> tuple[Any, yaml.Node | None]:
    """:func:`read` then :func:`load`."""
    return load(read(path, what=what), file=str(path))
