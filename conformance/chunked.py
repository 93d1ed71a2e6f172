"""Row-chunked evaluation of the linear form (specs/linear_cross_entropy.yaml), so that the oracle
and the judge's bounds need memory for a few rows of logits at a time, never for all of them.

A fused linear cross-entropy kernel never holds the (P, C) logits; at P * C = 2**24 the dense
float64 oracle held about 35 times their size. Here a case of at least :data:`MIN_CELLS` logits
is cut into row chunks of about :data:`CHUNK_CELLS` logits. Each chunk is itself a linear case
(its rows of hidden and target, the whole classifier and bias), evaluated by the ordinary dense
oracle, with what the spec computes over ALL positions given to it from outside:

- pass 1 evaluates every chunk's forward bindings and keeps the per-position ones ``(rows, 1)``
  (``l``, ``wt``, ``valid``, ...); the position-global bindings (those whose formula reduces over
  the positions, e.g. ``den = sum(wt)``; :func:`reduces_positions`) and the
  reduction formula are then evaluated on those full per-position vectors;
- pass 2 evaluates every chunk's gradients with ``P`` and the position-global bindings
  overridden by their whole-batch values: ``G`` of a chunk is then the whole batch's ``G`` on
  its rows, and each gradient formula of the ``linear:`` section is either per row (hidden:
  concatenated) or a sum over positions (classifier, bias: summed over chunks, which requires the
  formula to be additive over the positions, :func:`additive_over_positions`).

The judge's bounds (conformance/compare.py ``Judge._chunk_bounds``) regenerate the chunks once
through :attr:`Evaluation.chunks <conformance.oracle.Evaluation>` and combine them the same way. Where a
spec's formulas do not allow this (a per-row binding reading a position-global one, a
non-additive sum over positions), :class:`NotChunkable` sends the case to the dense oracle.
"""
from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from typing import Any, TypeAlias

import numpy as np

from .case import Case, shift_labels
from .formula import Formula, FormulaError

#: conformance.oracle's Oracle and Evaluation, by name only: the oracle imports this module,
#: never the reverse (tests/test_import_graph.py)
Oracle: TypeAlias = Any
Evaluation: TypeAlias = Any

#: Cases with at least this many logits are evaluated in row chunks.
MIN_CELLS = 2 ** 20
#: Logits per chunk: rows = max(1, CHUNK_CELLS // C); 2**15 float64 cells are 256 KiB an array.
CHUNK_CELLS = 2 ** 15


class NotChunkable(Exception):
    """The spec's formulas cannot be evaluated row chunk by row chunk; use the dense oracle."""


def applies(spec, case: Case) -> bool:
    """True for a linear-form case of class indices with at least :data:`MIN_CELLS` logits."""
    if getattr(spec, "linear", None) is None or case.linear is None or case.target_kind != "index":
        return False
    return case.rank == 2 and case.positions > 1 and case.positions * case.num_classes >= MIN_CELLS


def rows_per_chunk(C: int) -> int:
    return max(1, CHUNK_CELLS // max(C, 1))


# --------------------------------------------------------------------------- formulas
#: Names indexed by position (rows of the canonical layout): the inputs, the linear form's hidden
#: states, the logit transforms' values and the gradients' names; a binding reading one is too.
ROW_INPUTS = frozenset({"x", "t", "y", "g", "hidden", "x_raw", "dlogits", "G", "dG", "dl", "dl_logits", "p", "l"})
#: Functions that reduce everything when called without ``axis=classes``.
_TOTAL = frozenset({"sum", "count", "max", "min", "any", "all"})
#: Functions that always sum over the positions (the linear form's classifier and bias gradients).
_OVER_POSITIONS = frozenset({"sum_positions", "matmul_tn"})


def row_names(bindings: dict[str, Formula], rows: frozenset[str] = ROW_INPUTS) -> frozenset[str]:
    """``rows`` and every binding that reads one of them, in the bindings' order."""
    out = set(rows)
    for name, f in bindings.items():
        if f.names & out:
            out.add(name)
    return frozenset(out)


def reduces_positions(node: ast.AST, rows: frozenset[str] = ROW_INPUTS) -> bool:
    """True when the expression sums (or takes a max, count, ...) over the positions: a call of
    sum_positions or matmul_tn, or a total reduction (no ``axis``) of something read from
    ``rows``. ``sum(w)`` over the class weights is not one; ``sum(wt)`` is."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
            if sub.func.id in _OVER_POSITIONS:
                return True
            if sub.func.id in _TOTAL and not sub.keywords and any(
                    isinstance(n, ast.Name) and n.id in rows for n in ast.walk(sub)):
                return True
    return False


_SCALAR_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)


def _constant_like(node: ast.AST) -> bool:
    """Numbers, names and their arithmetic: no call, so nothing indexed by position is formed."""
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, _SCALAR_OPS):
        return _constant_like(node.left) and _constant_like(node.right)
    if isinstance(node, ast.UnaryOp):
        return _constant_like(node.operand)
    return False


def _additive(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return reduces_positions(node)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return _additive(node.left) and _additive(node.right)
        if isinstance(node.op, ast.Mult):
            return ((_additive(node.left) and _constant_like(node.right))
                    or (_additive(node.right) and _constant_like(node.left)))
        if isinstance(node.op, ast.Div):
            return _additive(node.left) and _constant_like(node.right)
        return False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _additive(node.operand)
    return False


def additive_over_positions(formula: Formula) -> bool:
    """True when the formula is a sum over the positions times factors that hold none: its
    value on all rows is the sum of its values on row chunks (``matmul_tn(G, hidden)``,
    ``sum_positions(dG) + gamma * P * sum_positions(abs(G))``)."""
    return _additive(formula.tree.body)


class Combiner:
    """The whole batch's value of a formula from its values on the row chunks, added one at a
    time: a running total for a sum over the positions (so that no more than one chunk's part
    is held), the rows concatenated for a per-row formula."""

    def __init__(self, formula: Formula):
        self.sums = reduces_positions(formula.tree.body)
        if self.sums and not additive_over_positions(formula):
            raise NotChunkable(f"{formula.where or formula.source}: a sum over positions that is not additive")
        self.formula = formula
        self.terms = [(sign, _subformula(node, formula)) for sign, node in _terms(formula.tree.body)] \
            if self.sums else []
        self.total: np.ndarray | None = None
        self.rows: list[np.ndarray] = []

    def add_formula(self, env: dict) -> None:
        """Add the formula's value on one chunk's environment; a sum over positions term by
        term into the running total (one term's array alive at a time, not the whole sum's)."""
        if not self.sums:
            self.add(self.formula.evaluate(env))
            return
        with np.errstate(all="ignore"):
            for sign, term in self.terms:
                v = np.asarray(term.evaluate(env))
                if self.total is None:
                    self.total = np.array(v if sign > 0 else -v, dtype=_total_dtype(v))
                elif sign > 0:
                    self.total += v
                else:
                    self.total -= v
                del v

    def add(self, part) -> None:
        if not self.sums:
            self.rows.append(np.asarray(part, dtype=np.float64))
        else:   # long double parts (formula._matmul of float64 inputs) are summed unrounded
            p = np.asarray(part)
            if self.total is None:
                self.total = np.array(p, dtype=_total_dtype(p))
            else:
                self.total += p

    def result(self) -> np.ndarray:
        if self.sums and self.total is not None:
            return np.asarray(self.total, dtype=np.float64)
        if not self.sums and self.rows:
            return np.concatenate(self.rows, axis=0)
        raise NotChunkable("no chunk")


def _total_dtype(part: np.ndarray) -> np.dtype:
    """A running total's dtype: long double where the part is (float64 inputs, whose chunks'
    sums must not be rounded), float64 otherwise (float32-representable inputs: their products
    are exact in float64, and a long double total would double the (C, H) arrays' memory)."""
    return np.result_type(part, np.float64)


def _terms(node: ast.expr, sign: int = 1) -> list[tuple[int, ast.expr]]:
    """The top-level terms of a sum (``a + b - c``), with their signs."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return _terms(node.left, sign) + _terms(node.right, sign if isinstance(node.op, ast.Add) else -sign)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _terms(node.operand, -sign)
    return [(sign, node)]


def _subformula(node: ast.expr, formula: Formula) -> Formula:
    """A term of ``formula`` as a formula of its own (already checked as part of the whole)."""
    names = frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name)) & formula.names
    return Formula(ast.unparse(node), ast.Expression(body=node), names, formula.where)


# --------------------------------------------------------------------------- cases
def _row_slice(a, lo: int, hi: int, P: int):
    """Rows lo:hi of a per-position array (first axis P), anything else unchanged."""
    if a is None:
        return None
    arr = np.asarray(a)
    return arr[lo:hi] if arr.ndim >= 1 and arr.shape[0] == P else a


def _whole(case: Case) -> dict[str, Any]:
    """The classifier and bias in float64, made once and shared by every chunk of every pass."""
    lin = case.linear or {}
    return {"classifier": np.asarray(lin["classifier"], dtype=np.float64),
            "bias": None if lin.get("bias") is None else np.asarray(lin["bias"], dtype=np.float64)}


def _chunk_cases(case: Case, rows: int, whole: dict[str, Any]) -> Iterator[tuple[int, int, Case]]:
    """The row chunks of a rank-2 linear case, each a linear case of its own: its rows of the
    logits, hidden states, targets (already shifted, so the ``shift`` extension is dropped) and
    upstream gradient; the classifier and bias of ``whole``."""
    P = case.positions
    lin = case.linear or {}
    t = np.asarray(case.target).astype(np.int64).reshape(-1, 1)
    if case.extensions.get("shift"):
        t = shift_labels(t, case.none_shape, case.ignore_index)
    t = t.reshape(-1).astype(np.asarray(case.target).dtype)
    ext = {k: v for k, v in case.extensions.items() if k != "shift"}
    up = case.upstream
    for lo in range(0, P, rows):
        hi = min(P, lo + rows)
        sub_lin = dict(lin, hidden=np.asarray(lin["hidden"])[lo:hi], **whole)
        yield lo, hi, case.copy(x=case.x[lo:hi], target=t[lo:hi], linear=sub_lin, extensions=ext,
                                upstream=_row_slice(up, lo, hi, P))


# --------------------------------------------------------------------------- the oracle
def _position_globals(path) -> dict[str, Formula]:
    """The path's forward bindings that reduce over the positions (``den = sum(wt)``)."""
    rows = row_names(path.bindings)
    return {n: f for n, f in path.bindings.items() if reduces_positions(f.tree.body, rows)}


def _check_structure(spec, path) -> dict[str, Formula]:
    """The position-global bindings, after checking that the chunks can use them: no per-row
    forward binding reads one (pass 1 would see a chunk's own value), and no gradient binding
    reduces over the positions."""
    glob = _position_globals(path)
    seen: set[str] = set()
    for name, f in path.bindings.items():
        if name in glob:
            seen.add(name)
        elif f.names & seen:
            raise NotChunkable(f"binding {name} reads the position-global {sorted(f.names & seen)}")
    rows = row_names(path.bindings)
    for grad in path.gradients.values():
        grows = row_names(grad.bindings, rows)
        for name, f in grad.bindings.items():
            if reduces_positions(f.tree.body, grows):
                raise NotChunkable(f"gradient binding {name} reduces over the positions")
    return glob


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def evaluate(oracle: Oracle, case: Case, *, gradients: bool, reduction: str | None,
             rows: int | None = None) -> Evaluation:
    """The dense oracle's :class:`~conformance.oracle.Evaluation` of ``case``, computed chunk by
    chunk (see the module docstring); its ``env`` holds the scalars, per-class vectors and
    per-position vectors of the whole batch, and ``chunks`` regenerates the chunks' evaluations."""
    spec = oracle.spec
    path = spec.paths[oracle.path_for(case)]
    glob = _check_structure(spec, path)
    P, C = case.positions, case.num_classes
    rows = rows or rows_per_chunk(C)
    base = {"P": np.float64(P)}
    whole = _whole(case)

    # pass 1: the forward pass of every chunk; keep its per-position vectors
    first: Evaluation | None = None
    per_pos: dict[str, list[np.ndarray]] = {}
    terms: dict[str, list[np.ndarray]] = {}
    full: dict[str, Any] = {}
    for lo, hi, sub in _chunk_cases(case, rows, whole):
        ev = oracle._dense(sub, gradients=False, reduction=reduction, overrides=base)
        n = hi - lo
        if first is None:   # its formulas and outputs' metadata; not its arrays
            first = dataclasses.replace(ev, env={}, gradient_envs={})
        for k, v in ev.env.items():
            if k in glob or k in ("x", "x_raw", "dlogits"):
                continue
            a = np.asarray(v) if isinstance(v, np.ndarray | np.generic | float | int) else None
            if a is None:
                continue
            # canonical shapes: (rows, 1) per position, (C,) per class, 0-d scalars; (rows, C)
            # logits-sized and (rows, H) / (C, H) matmul operands are not kept
            if a.ndim == 2 and a.shape == (n, 1):
                per_pos.setdefault(k, []).append(a)
            elif a.ndim <= 1:
                if k not in full:
                    full[k] = v
                elif not _same(full[k], a):
                    raise NotChunkable(f"{k} differs between row chunks")
        for name, (_, ext, _) in ev.outputs.items():   # an extension's per-position output term
            f = ext.formulas.get("loss") or ext.formulas.get("value")
            terms.setdefault(name, []).append(np.broadcast_to(np.asarray(f.evaluate(ev.env), dtype=np.float64), (n, 1)))
        del ev, sub   # one chunk's arrays alive at a time
    assert first is not None
    for k, parts in per_pos.items():
        full[k] = np.concatenate(parts, axis=0)
    full["g"] = case.upstream_canonical(first.reduction)
    full["P"] = np.float64(P)
    with np.errstate(all="ignore"):
        try:
            for name, f in glob.items():
                full[name] = f.evaluate(full)
            value_formula = first.formulas["value"]
            raw = np.asarray(value_formula.evaluate(full), dtype=np.float64)
        except FormulaError as exc:   # a position-global formula reads a per-logit quantity
            raise NotChunkable(str(exc)) from None
        outputs: dict[str, Any] = {}
        for name, (_, ext, formula) in first.outputs.items():
            term = np.concatenate(terms[name], axis=0)
            if formula is not None:   # reduced like the loss
                val = np.asarray(formula.evaluate(dict(full, l=term)), dtype=np.float64)
                outputs[name] = (oracle._shape_output(case, val, first.reduction, first.path), ext, formula)
            else:
                outputs[name] = (case.from_canonical(term, "none"), ext, None)
    overrides = dict(base, **{k: full[k] for k in glob})

    def chunks(with_gradients: bool = True) -> Iterator[tuple[Case, Evaluation]]:
        """The chunks again, each evaluated with the whole batch's P and position-global values;
        with gradients, G and its environments only (the sums over the chunks are made from them)."""
        for _, _, sub in _chunk_cases(case, rows, whole):
            yield sub, oracle._dense(sub, gradients=with_gradients, reduction=reduction, overrides=overrides,
                                     chain=False)

    grads: dict[str, np.ndarray] = {}
    unspec: dict[str, np.ndarray] = {}
    mags: dict[str, np.ndarray] = {}
    formulas = dict(first.formulas)
    if gradients:   # pass 2
        acc: dict[str, Combiner] = {}
        macc: dict[str, Combiner] = {}
        # the chunks' G and environments; each gradient and magnitude formula evaluated into its
        # running total term by term (as LinearSection.chain would, one (C, H) array at a time)
        lin = spec.linear
        for _, ev in chunks(True):
            for wrt in (w for w in lin.gradients if w in ev.gradient_envs):   # (no bias: no bias gradient)
                genv = ev.gradient_envs[wrt]
                acc.setdefault(wrt, Combiner(lin.gradients[wrt])).add_formula(genv)
                if wrt in lin.magnitudes:
                    macc.setdefault(wrt, Combiner(lin.magnitudes[wrt])).add_formula(genv)
            formulas.update(ev.formulas)
            del ev, genv
        for wrt, c in acc.items():
            grads[wrt] = c.result()
            unspec[wrt] = np.zeros(grads[wrt].shape, dtype=bool)
        mags = {wrt: c.result() for wrt, c in macc.items()}
    value = oracle._shape_output(case, raw, first.reduction, first.path)
    return dataclasses.replace(first, value=value, gradients=grads, unspecified=unspec, env=full,
                               gradient_envs={}, formulas=formulas, outputs=outputs, magnitudes=mags,
                               bound_cache={}, chunks=chunks)
