"""Covering arrays: every valid t-way combination of option classes, in few rows.

A deviation that appears only on one combination of three options (float16 x a weight with
zeros x reduction 'none') is found by random sampling only by luck: a check that draws 80
examples leaves many triples of option values untouched. A covering array of strength t
lists rows (one value per option) such that every valid combination of t options' values
appears in at least one row; the forward and gradient checks run these rows as pinned
examples before their random phase (conformance/engine.py), so that every valid t-tuple is
exercised in every run.

The generator is the greedy one-row-at-a-time construction of AETG/IPOG family tools:
start each row from an uncovered tuple, then give every other option the value that covers
the most uncovered tuples. It is deterministic (ties go to the earlier value) and respects
constraints: a partial assignment that ``valid`` rejects is never extended, and tuples that
no valid row can contain are excluded from what must be covered.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

Row = dict[str, str]
Tuple_ = tuple[tuple[str, str], ...]


def _tuples_of(assign: Mapping[str, str], names: Sequence[str], t: int) -> Iterable[Tuple_]:
    keys = [n for n in names if n in assign]
    for combo in itertools.combinations(keys, t):
        yield tuple((k, assign[k]) for k in combo)


def valid_tuples(domains: Mapping[str, Sequence[str]], t: int, valid: Callable[[Row], bool]) -> set[Tuple_]:
    """Every t-tuple of option values that some valid row can contain."""
    names = list(domains)
    t = min(t, len(names))
    out: set[Tuple_] = set()
    for combo in itertools.combinations(names, t):
        for values in itertools.product(*(domains[n] for n in combo)):
            tup = tuple(zip(combo, values))
            if valid(dict(tup)) and _completable(dict(tup), domains, valid):
                out.add(tup)
    return out


def _completable(partial: Row, domains: Mapping[str, Sequence[str]], valid: Callable[[Row], bool]) -> bool:
    """Whether ``partial`` extends to a full valid row (depth-first, pruned by ``valid``)."""
    rest = [n for n in domains if n not in partial]
    if not rest:
        return valid(partial)
    n = rest[0]
    return any(valid({**partial, n: v}) and _completable({**partial, n: v}, domains, valid) for v in domains[n])


def covering_array(domains: Mapping[str, Sequence[str]], t: int,
                   valid: Callable[[Row], bool] = lambda row: True) -> list[Row]:
    """Rows covering every valid t-tuple of ``domains`` (each a full, valid assignment)."""
    names = [n for n in domains if len(domains[n]) > 0]
    domains = {n: list(domains[n]) for n in names}
    if not names:
        return []
    t = max(1, min(t, len(names)))
    uncovered = valid_tuples(domains, t, valid)
    order = sorted(uncovered)
    rows: list[Row] = []
    while uncovered:
        seed = next(tup for tup in order if tup in uncovered)
        row: Row = dict(seed)
        for n in names:
            if n in row:
                continue
            best, best_gain = None, -1
            for v in domains[n]:
                cand = {**row, n: v}
                if not valid(cand) or not _completable(cand, domains, valid):
                    continue
                gain = sum(1 for tup in _tuples_of(cand, names, t) if (n, v) in tup and tup in uncovered)
                if gain > best_gain:
                    best, best_gain = v, gain
            if best is None:  # cannot happen: the seed tuple is completable
                raise AssertionError(f"no valid value for {n} after {row}")
            row[n] = best
        full = {n: row[n] for n in names}
        uncovered.difference_update(_tuples_of(full, names, t))
        rows.append(full)
    return rows


def coverage(rows: Iterable[Mapping[str, str]], domains: Mapping[str, Sequence[str]], t: int,
             valid: Callable[[Row], bool] = lambda row: True) -> tuple[int, int]:
    """(valid t-tuples present in ``rows``, valid t-tuples in all): the t-way coverage."""
    names = [n for n in domains if len(domains[n]) > 0]
    doms = {n: list(domains[n]) for n in names}
    if not names:
        return 0, 0
    t = max(1, min(t, len(names)))
    everything = valid_tuples(doms, t, valid)
    seen: set[Tuple_] = set()
    for r in rows:
        seen.update(tup for tup in _tuples_of({n: r[n] for n in names if n in r}, names, t) if tup in everything)
    return len(seen), len(everything)


# --------------------------------------------------------------------------- the checks' option space
#: Strength of the covering array run by the forward and gradient checks, per profile.
STRENGTH = {"quick": 2, "default": 3, "thorough": 4}


def option_domains(spec, req) -> dict[str, list[str]]:
    """The option classes a check may draw (conformance.gate.OPTION_CLASSES names), from the
    spec's domains intersected with an adapter's capabilities (a strategies.Request).
    ``layout`` is an option class of signatures but not of the covering array: drawn at
    random on every example (5 layouts over ~200 examples a check), it would add ~35 rows
    per check and leave t-way triples that some layouts cannot take (channels-last needs
    spatial axes, expanded equal batch entries) uncovered."""
    from .strategies import rank_class

    feats = req.features
    regimes = [r for r in spec.domains.get("value_regimes", {"ordinary": ""}) if r != "nonfinite"]
    if req.regimes:
        regimes = [r for r in regimes if r in req.regimes] or ["ordinary"]
    return {
        "dtype": list(req.dtypes),
        "target": list(req.target_kinds),
        "reduction": list(req.reductions),
        "weight": [k for k in spec.domains.get("weight", ["absent"]) if k == "absent" or "weight" in feats],
        "ignore": (list(spec.domains.get("ignore_index", ["default"]))
                   if "index" in req.target_kinds and "ignore_index" in feats else ["default"]),
        "smoothing": ["0", "(0,1)", "1"] if "label_smoothing" in feats else ["0"],
        "rank": list(dict.fromkeys(rank_class(r) for r in req.ranks)),
        "regime": regimes,
    }


def option_valid(row: Row) -> bool:
    """Combinations the strategies never draw: huge logits only in float32/float64 (they
    overflow half precision), an ignore_index only with class-index targets."""
    if row.get("regime") == "huge" and row.get("dtype") in ("float16", "bfloat16"):
        return False
    if row.get("target") == "probability" and row.get("ignore", "default") != "default":
        return False
    return True
