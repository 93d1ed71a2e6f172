"""Stage 7: the self-contained HTML report (``index.html``) rendered from results files.

``render(files, out_dir)`` merges one or more ``results.json`` files (later files win for
the same result id; the headers come from the first), and writes ``out_dir/index.html``:
header, summary matrix, failure sections, accuracy plots (inline SVG), coverage tables
and client-side filters.  Everything taken from the results goes through Jinja2
autoescaping; only the SVG that matplotlib generates here is marked safe.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from . import results as _results

MAX_POINTS = 5000  # ratios kept per adapter x dtype plot
MAX_PLOTS = 40
MAX_WORST = 5
MAX_TEXT = 20000  # characters of a repro script / counterexample shown
SHOWN = ("failed", "flaky", "error", "permissive", "known")


def _rid(r: dict[str, Any]) -> str:
    return r.get("id") or f"{r.get('adapter')}::{r.get('check')}"


def _merge(files: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Path]]:
    if not files:
        raise ValueError("no results files given")
    first: dict[str, Any] | None = None
    merged: dict[str, dict[str, Any]] = {}
    base: dict[str, Path] = {}
    adapters: dict[str, dict[str, Any]] = {}
    for f in files:
        doc = _results.load(f)
        if not isinstance(doc.get("results"), list):
            raise ValueError(f"{f}: results file without a 'results' list")
        if first is None:
            first = doc
        for a in (doc.get("run") or {}).get("adapters") or []:
            if isinstance(a, dict) and a.get("name") is not None:
                adapters.setdefault(str(a["name"]), a)
        for r in doc["results"]:
            if not isinstance(r, dict):
                raise ValueError(f"{f}: a result is not an object")
            merged[_rid(r)] = r
            base[_rid(r)] = Path(f).resolve().parent
    assert first is not None
    header = dict(first)
    header["adapters"] = list(adapters.values())
    return header, merged, base


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v, indent=1, default=str)


def _compact(v: Any, depth: int = 0) -> str:
    """JSON indented by object, with lists of scalars (shapes, values) kept on one line."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(v, dict) and v:
        items = [f"{inner}{json.dumps(str(k))}: {_compact(x, depth + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, (list, tuple)) and v and any(isinstance(x, (dict, list, tuple)) for x in v):
        return "[\n" + ",\n".join(inner + _compact(x, depth + 1) for x in v) + "\n" + pad + "]"
    return json.dumps(v, default=str, allow_nan=True)


def _pretty(v: Any) -> str:
    s = _compact(v)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "\n... (truncated)"


def _repro(failure: dict[str, Any], base: Path) -> tuple[str, str | None]:
    rel = failure.get("repro")
    if not rel or not isinstance(rel, str):
        return "", None
    p = (base / rel)
    try:
        text = p.read_text(errors="replace")
    except OSError:
        return rel, None
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "\n# ... (truncated)"
    return rel, text


def plots_available() -> bool:
    """Whether matplotlib (the ``report`` extra) is installed: without it the page has no
    plots and says how to get them; everything else is the same."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _svg_hist(values: list[float], title: str) -> str:
    if not plots_available():
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(vals) > MAX_POINTS:
        step = len(vals) / MAX_POINTS
        vals = [vals[int(i * step)] for i in range(MAX_POINTS)]
    fig, ax = plt.subplots(figsize=(3.6, 2.2), dpi=72)
    try:
        pos = [v for v in vals if v > 0]
        zeros = len(vals) - len(pos)
        if pos:
            lo = max(min(pos), 1e-12)
            hi = max(max(pos), 1.0) * 1.5
            if hi / lo > 100:
                import numpy as np

                bins = np.logspace(math.log10(lo), math.log10(hi), 30)
                ax.set_xscale("log")
            else:
                import numpy as np

                # bins over [0, hi], not over the data's own (possibly tiny) range: a sliver
                # of 30 bins squeezed near 0 on an axis that runs to the bound is invisible
                bins = np.linspace(0.0, hi, 31)
            ax.hist(pos, bins=list(bins), color="#4878a8")
        ax.axvline(1.0, color="#c03030", linestyle="--", linewidth=1)
        # The title holds an adapter's name: a `$` would start matplotlib math text (and an
        # unbalanced one stops the report), so every `$` is escaped to a literal dollar sign.
        ax.set_title(f"{title} ({len(vals)} values, {zeros} exact)".replace("$", r"\$"), fontsize=8)
        ax.set_xlabel("error / bound (<= 1 passes)", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.tight_layout()
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    finally:
        plt.close(fig)
    svg = buf.getvalue()
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    # inline SVG in HTML needs no namespaces or RDF metadata: drop every URI from it
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg


def _context(header: dict[str, Any], merged: dict[str, dict[str, Any]], base: dict[str, Path]) -> dict[str, Any]:
    results = list(merged.values())
    adapters = sorted({str(r.get("adapter")) for r in results} | {str(a.get("name")) for a in header["adapters"]})
    checks = sorted({str(r.get("check")) for r in results})
    matrix: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        matrix[str(r.get("check"))][str(r.get("adapter"))] = r
    statuses: list[str] = [s for s in _results.STATUSES if any(r.get("status") == s for r in results)]
    statuses += sorted({str(r.get("status")) for r in results} - set(statuses))

    failures = []
    for r in sorted(results, key=lambda r: (str(r.get("adapter")), str(r.get("check")))):
        if r.get("status") not in SHOWN:
            continue
        raw = r.get("failure")
        f: dict[str, Any] = raw if isinstance(raw, dict) else {}
        rel, script = _repro(f, base[_rid(r)])
        failures.append({
            "r": r, "f": f, "id": _rid(r),
            "expected": _text(f.get("expected")), "actual": _text(f.get("actual")),
            "exception": _text(f.get("exception")),
            "counterexample": _pretty(f["counterexample"]) if f.get("counterexample") is not None else "",
            "traceback": _text(f.get("traceback"))[-MAX_TEXT:],
            "repro": rel, "script": script,
            "known": r.get("known") if isinstance(r.get("known"), dict) else None,
        })

    accuracy: list[dict[str, Any]] = []
    for a in adapters:
        ratios: dict[str, list[float]] = defaultdict(list)
        worst: list[dict[str, Any]] = []
        for r in results:
            if str(r.get("adapter")) != a:
                continue
            for dt, vs in (r.get("ratios") or {}).items():
                if isinstance(vs, list):
                    ratios[str(dt)].extend(v for v in vs if isinstance(v, (int, float)))
            for w in r.get("worst") or []:
                if isinstance(w, dict):
                    worst.append(dict(w, check=r.get("check")))
        worst.sort(key=lambda w: -(w.get("ratio") or 0) if isinstance(w.get("ratio"), (int, float)) else 0)
        plots: list[dict[str, Any]] = []
        for dt in sorted(ratios):
            if len(accuracy) * 4 + len(plots) >= MAX_PLOTS:
                break
            vals = ratios[dt]
            finite = [v for v in vals if math.isfinite(v)]
            plots.append({
                "dtype": dt, "n": len(vals), "svg": _svg_hist(vals, f"{a} {dt}") if finite else "",
                "max": max(finite) if finite else None,
                "over": sum(1 for v in vals if not (v <= 1)),
            })
        if plots or worst:
            accuracy.append({"adapter": a, "plots": plots, "worst": worst[:MAX_WORST]})

    coverage: dict[str, dict[str, dict[str, int]]] = {}
    for a in adapters:
        cov: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in results:
            if str(r.get("adapter")) != a:
                continue
            for feat, vals in (r.get("coverage") or {}).items():
                if isinstance(vals, dict):
                    for v, n in vals.items():
                        if isinstance(n, (int, float)):
                            cov[str(feat)][str(v)] += int(n)
        if cov:
            coverage[a] = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in sorted(cov.items())}

    tway: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        t = r.get("tway")
        if isinstance(t, dict) and isinstance(t.get("total"), int) and t["total"]:
            tway[str(r.get("check"))][str(r.get("adapter"))] = t
    return {
        "plots_available": plots_available(),
        "tway": dict(sorted(tway.items())),
        "spec": header.get("spec") or {}, "run": header.get("run") or {}, "adapter_info": header["adapters"],
        "summary": _results.summary(results), "all_statuses": _results.STATUSES,
        "adapters": adapters, "checks": checks, "matrix": matrix, "statuses": statuses,
        "failures": failures, "accuracy": accuracy, "coverage": coverage,
        "n_results": len(results),
    }


def _num(v: Any, digits: int = 4) -> Any:
    """A float shown to ``digits`` significant digits (full precision stays in a title); others as they are."""
    if isinstance(v, bool) or not isinstance(v, float):
        return "" if v is None or isinstance(v, jinja2.Undefined) else v
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def _wbr(v: Any) -> markupsafe.Markup:
    """``v`` escaped, with a line-break opportunity after each '.', '_' and ':' (long ids wrap there)."""
    return markupsafe.Markup(re.sub(r"([._:])", r"\1<wbr>", str(markupsafe.escape(str(v)))))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("conformance", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["num"] = _num
    env.filters["wbr"] = _wbr
    return env


def render(files: list[str], out_dir: Path) -> Path:
    """Merge ``files`` and write ``out_dir/index.html``; return its path (ValueError on bad input)."""
    header, merged, base = _merge([str(f) for f in files])
    ctx = _context(header, merged, base)
    ctx["files"] = [str(f) for f in files]
    html = _env().get_template("report.html.j2").render(**ctx)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .results import atomic_write
    return atomic_write(out_dir / "index.html", html)
