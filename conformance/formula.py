"""The spec formula language: parsing, static checking and float64 evaluation.

A formula is a Python *expression* (parsed with ``ast`` in eval mode) restricted to a
whitelist of node types and functions, so that the YAML states what a loss is without any
Python being executed: no ``eval``, no attribute access, no subscripts, no lambdas.

Arrays follow the canonical layout of the specs: per-position quantities are ``(P, 1)``,
per-class ``(C,)`` and per-position-per-class ``(P, C)``; ordinary NumPy broadcasting does
the rest. ``sum(e)`` without an axis sums everything exactly rounded (``math.fsum``), which
is what keeps the oracle's own error far below any dtype under test.

A formula is bounded before it is parsed or walked (:data:`MAX_CHARS`, :data:`MAX_DEPTH`,
:data:`MAX_INT`): a hostile spec gets a clean :class:`FormulaError`, never a RecursionError
or MemoryError, and every literal is a finite float64.
"""
from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .diagnostics import close_matches

#: The class axis of the canonical layout, written ``axis=classes`` in formulas.
CLASSES = "classes"
#: Longest formula (characters, stripped); the shipped specs' longest is about 200.
MAX_CHARS = 2000
#: Deepest expression tree; the shipped specs' deepest is about 15.
MAX_DEPTH = 64
#: Largest integer literal (float64 represents every integer up to here exactly).
MAX_INT = 2 ** 53


class FormulaError(ValueError):
    """A formula that is not in the language; ``where`` says which spec entry holds it."""

    def __init__(self, message: str, *, source: str = "", where: str = "", col: int | None = None):
        self.message = message
        self.source = source
        self.where = where
        self.col = col
        pointer = ""
        if source and col is not None:
            pointer = f"\n    {source}\n    {' ' * col}^"
        super().__init__(f"{where + ': ' if where else ''}{message}{pointer}")


# --------------------------------------------------------------------------- functions
def _axis(axis: Any) -> int | None:
    if axis is None:
        return None
    if axis == CLASSES:
        return -1
    raise FormulaError(f"axis must be 'classes' or omitted, got {axis!r}")


def _exact_sum(a: np.ndarray) -> float:
    """Sum of every element, correctly rounded where the terms are finite."""
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    if not np.all(np.isfinite(a)):
        return float(np.sum(a))
    return math.fsum(a.tolist())


def _sum(e, axis=None):
    ax = _axis(axis)
    if ax is None:
        return np.float64(_exact_sum(e))
    # Pairwise summation along the class axis: the terms summed there (exp, w*q*lp) share
    # a sign, so the relative error stays below log2(C) * 2**-53.
    return np.sum(np.asarray(e, dtype=np.float64), axis=ax, keepdims=True)


def _reduce(fn: Callable) -> Callable:
    def reduce(e, axis=None):
        ax = _axis(axis)
        e = np.asarray(e)
        if ax is None:
            return fn(e) if e.size else fn(np.zeros(1, dtype=e.dtype))
        if e.shape[ax] == 0:
            return fn(np.zeros(e.shape[:-1] + (1,), dtype=e.dtype), axis=ax, keepdims=True)
        return fn(e, axis=ax, keepdims=True)

    return reduce


def _shifted_lse(x):
    """(m, z, log(sum(exp(z)))) with m the row maximum and z = x - m, accurate also for a tiny loss.

    Subtracting the row maximum keeps huge logits exact; a row whose maximum is not finite
    gives NaN exactly as the literal formula does (inf - inf). The maximal term exp(0) = 1
    is taken out and log1p used, so that a confident row's log-probability keeps its
    relative accuracy instead of an absolute 2**-53.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] == 0:
        zero = np.zeros(x.shape[:-1] + (1,))
        return zero, x, zero
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    e = np.exp(z)
    idx = np.argmax(z == 0, axis=-1)[..., None]
    hit = np.take_along_axis(z, idx, axis=-1) == 0   # False for rows with no finite maximum
    np.put_along_axis(e, idx, np.where(hit, 0.0, np.take_along_axis(e, idx, axis=-1)), axis=-1)
    s = np.sum(e, axis=-1, keepdims=True)
    return m, z, np.where(hit, np.log1p(s), np.log(s))


def _logsumexp(x, axis=CLASSES):
    _axis(axis)
    m, _, lse = _shifted_lse(x)
    return m + lse


def _log_softmax(x, axis=CLASSES):
    _axis(axis)
    _, z, lse = _shifted_lse(x)
    return z - lse


def _softmax(x, axis=CLASSES):
    ax = _axis(axis)
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=ax, keepdims=True) if x.shape[ax] else np.zeros(x.shape[:-1] + (1,))
    e = np.exp(x - m)
    return e / np.sum(e, axis=ax, keepdims=True)


def _take(v, idx):
    """``v[idx]`` for a per-class vector ``v`` and integer per-position indices."""
    v = np.asarray(v)
    idx = np.asarray(idx).astype(np.int64)
    if v.size == 0:
        return np.zeros(idx.shape)
    return v[np.clip(idx, 0, v.shape[-1] - 1)]


def _take_along(a, idx, axis=CLASSES):
    _axis(axis)
    a = np.asarray(a)
    idx = np.asarray(idx).astype(np.int64)
    if a.shape[-1] == 0:
        return np.zeros(idx.shape)
    return np.take_along_axis(a, np.clip(idx, 0, a.shape[-1] - 1), axis=-1)


def _one_hot(idx, n):
    idx = np.asarray(idx).astype(np.int64)
    return (idx == np.arange(int(n))).astype(np.float64)


def _where(c, a, b):
    return np.where(np.asarray(c, dtype=bool), a, b)


def _count(mask):
    return np.float64(np.count_nonzero(np.asarray(mask, dtype=bool)))


def _fits_float32(a: np.ndarray, block: int = 2 ** 16) -> bool:
    """Every finite value of ``a`` is a float32 value; checked a block at a time, so that a
    classifier of C * H values costs no copy of its size (conformance/chunked.py)."""
    flat = np.asarray(a).reshape(-1)
    for i in range(0, flat.size, block):
        f = flat[i:i + block]
        f = f[np.isfinite(f)]
        if not np.all(f.astype(np.float32).astype(np.float64) == f):
            return False
    return True


def _matmul(a, b):
    """``a @ b`` for the linear form (specs/linear_cross_entropy.yaml), far more accurate than
    any tolerance: when an operand holds float32-representable values (inputs of float32 or
    narrower), every product of two such values is exact in float64 and the float64 sum loses
    at most n * 2**-53 relative to sum|a||b|, 2**-29 of the float32 bound; otherwise (float64
    inputs) the products and the sum are taken in long double (64-bit significand on x86) and
    the result stays in long double, so that a sum of row chunks' products
    (conformance/chunked.py) is not rounded to float64 chunk by chunk."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if _fits_float32(a) or _fits_float32(b):
        return a @ b
    return a.astype(np.longdouble) @ b.astype(np.longdouble)


def _linear(h, W, b):
    """Logits ``h @ W.T + b`` (P, C) from hidden (P, H), classifier (C, H) and bias (C,), with the
    bias added in the same extended sum (a single rounding to float64)."""
    h, W, b = (np.asarray(v, dtype=np.float64) for v in (h, W, b))
    if _fits_float32(h) and _fits_float32(W) and _fits_float32(b):
        return h @ W.T + b   # exact products; two roundings of 2**-53
    return np.asarray(h.astype(np.longdouble) @ W.T.astype(np.longdouble) + b.astype(np.longdouble), dtype=np.float64)


def _sum_positions(e):
    """Column sums over the positions: (P, C) -> (C,) (the bias gradient), in long double (kept,
    like :func:`_matmul`'s, so that row chunks' sums add up unrounded)."""
    e = np.asarray(e)
    return e.astype(np.longdouble).sum(axis=0) if e.ndim == 2 else e.astype(np.float64)


FUNCTIONS: Mapping[str, Callable] = {
    "where": _where,
    "sum": _sum,
    "count": _count,
    "max": _reduce(np.max),
    "min": _reduce(np.min),
    "any": _reduce(np.any),
    "all": _reduce(np.all),
    "log": np.log,
    "log2": np.log2,
    "exp": np.exp,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "isfinite": np.isfinite,
    "isnan": np.isnan,
    "log_softmax": _log_softmax,
    "softmax": _softmax,
    "logsumexp": _logsumexp,
    "take": _take,
    "take_along": _take_along,
    "one_hot": _one_hot,
    # the linear form (hidden (P, H), classifier (C, H)); see _matmul for their accuracy
    "linear": _linear,
    "matmul": _matmul,
    "matmul_nt": lambda a, b: _matmul(a, np.asarray(b, dtype=np.float64).T),
    "matmul_tn": lambda a, b: _matmul(np.asarray(a, dtype=np.float64).T, b),
    "sum_positions": _sum_positions,
}

#: Functions whose ``axis`` keyword is allowed.
_AXIS_FUNCTIONS = {"sum", "max", "min", "any", "all", "log_softmax", "softmax", "logsumexp", "take_along"}

CONSTANTS: Mapping[str, Any] = {"classes": CLASSES, "inf": np.inf, "nan": np.nan, "pi": np.pi}

_BINOPS = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
    ast.Pow: np.power, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or,
}
_CMPOPS = {
    ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
    ast.Gt: np.greater, ast.GtE: np.greater_equal,
}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive, ast.Invert: np.logical_not, ast.Not: np.logical_not}


# --------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Formula:
    """A parsed, checked formula; ``names`` are the variables it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]
    where: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fn", _compile(self.tree.body, self))

    def __getstate__(self) -> dict[str, Any]:  # closures do not pickle: a worker compiles its own
        return {k: v for k, v in self.__dict__.items() if k != "_fn"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        with np.errstate(all="ignore"):
            return self._fn(env)  # type: ignore[attr-defined]


def parse(source: str, *, known: set[str] | frozenset[str], where: str = "") -> Formula:
    """Parse ``source`` and check it against the language; ``known`` are the names in scope."""
    if not isinstance(source, str):
        raise FormulaError(f"a formula must be a string, got {type(source).__name__}", where=where)
    if len(source.strip()) > MAX_CHARS:
        raise FormulaError(f"the formula is {len(source.strip())} characters long, more than {MAX_CHARS}",
                           where=where)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not a valid expression: {exc.msg}", source=source.strip(), where=where,
                           col=(exc.offset or 1) - 1) from None
    except (RecursionError, MemoryError):  # the parser's own nesting limit
        raise FormulaError(f"the formula is nested more than {MAX_DEPTH} levels deep", where=where) from None
    _check_depth(tree, source.strip(), where)
    names: set[str] = set()
    _check(tree.body, source.strip(), where, set(known), names)
    return Formula(source.strip(), tree, frozenset(names), where)


def _check_depth(tree: ast.AST, src: str, where: str) -> None:
    """Refuse a tree deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormulaError(f"the formula is nested more than {MAX_DEPTH} levels deep", source=src, where=where,
                               col=getattr(node, "col_offset", None))
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node)]


def _suggest(name: str, options) -> str:
    close = close_matches(name, sorted(options))
    return f"; did you mean '{close[0]}'?" if close else ""


def _check(node: ast.AST, src: str, where: str, known: set[str], names: set[str]) -> None:
    def fail(msg: str, n: ast.AST = node):
        raise FormulaError(msg, source=src, where=where, col=getattr(n, "col_offset", None))

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            fail(f"only numbers are allowed as constants, got {node.value!r}")
        if isinstance(node.value, int) and abs(node.value) > MAX_INT:
            fail(f"the integer literal has {len(str(abs(node.value)))} digits: literals are at most 2**53")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            fail("the number literal overflows to inf: write the constant inf")
        return
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return
        if node.id in FUNCTIONS:
            fail(f"'{node.id}' is a function; call it as {node.id}(...)")
        if node.id not in known:
            fail(f"unknown name '{node.id}'{_suggest(node.id, known | set(CONSTANTS))}")
        names.add(node.id)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            fail(f"operator {type(node.op).__name__} is not in the formula language")
        _check(node.left, src, where, known, names)
        _check(node.right, src, where, known, names)
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            fail(f"operator {type(node.op).__name__} is not in the formula language")
        _check(node.operand, src, where, known, names)
        return
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMPOPS:
                fail(f"comparison {type(op).__name__} is not in the formula language")
        _check(node.left, src, where, known, names)
        for c in node.comparators:
            _check(c, src, where, known, names)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            fail("only plain function calls such as sum(...) are allowed")
        assert isinstance(node.func, ast.Name)  # fail() raised otherwise
        fname = node.func.id
        if fname not in FUNCTIONS:
            fail(f"unknown function '{fname}'{_suggest(fname, FUNCTIONS)}; "
                 f"the language has: {', '.join(sorted(FUNCTIONS))}")
        for kw in node.keywords:
            if kw.arg != "axis" or fname not in _AXIS_FUNCTIONS:
                fail(f"{fname}() takes no keyword '{kw.arg}'", kw.value)
            if not (isinstance(kw.value, ast.Name) and kw.value.id == CLASSES):
                fail(f"{fname}(axis=...) must be axis=classes", kw.value)
        for a in node.args:
            if isinstance(a, ast.Starred):
                fail("*args are not allowed")
            _check(a, src, where, known, names)
        return
    fail(f"{type(node).__name__} is not allowed in a formula (allowed: numbers, names, "
         "arithmetic, comparisons, &, |, ~ and calls of the language's functions)")


def _compile(node: ast.AST, formula: Formula) -> Callable[[Mapping[str, Any]], Any]:
    """The checked tree as nested closures, built once per formula: the oracle evaluates the
    same few formulas for every example, and walking the tree each time was a tenth of a run."""
    if isinstance(node, ast.Constant):
        value = np.float64(node.value)  # type: ignore[arg-type]  # _check allowed numbers only
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in CONSTANTS:
            const = CONSTANTS[name]
            return lambda env: const

        def lookup(env):
            try:
                return env[name]
            except KeyError:
                raise FormulaError(f"'{name}' has no value here", source=formula.source,
                                   where=formula.where, col=node.col_offset) from None
        return lookup
    if isinstance(node, ast.BinOp):
        op, left, right = _BINOPS[type(node.op)], _compile(node.left, formula), _compile(node.right, formula)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.UnaryOp):
        uop, operand = _UNARY[type(node.op)], _compile(node.operand, formula)
        return lambda env: uop(operand(env))
    if isinstance(node, ast.Compare):
        first = _compile(node.left, formula)
        chain = [(_CMPOPS[type(o)], _compile(c, formula)) for o, c in zip(node.ops, node.comparators)]

        def compare(env):
            left, out = first(env), None
            for cop, comp in chain:
                right = comp(env)
                r = cop(left, right)
                out = r if out is None else np.logical_and(out, r)
                left = right
            return out
        return compare
    if isinstance(node, ast.Call):
        fn = FUNCTIONS[node.func.id]  # type: ignore[attr-defined]  # checked by _check: a plain name
        args = [_compile(a, formula) for a in node.args]
        kwargs = [(str(kw.arg), _compile(kw.value, formula)) for kw in node.keywords]  # axis= only
        return lambda env: fn(*[a(env) for a in args], **{k: v(env) for k, v in kwargs})
    raise FormulaError(f"{type(node).__name__} cannot be evaluated", source=formula.source, where=formula.where)
