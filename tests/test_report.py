"""The HTML report: escaping, self-containment, size, errors, and a real run."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

from conformance import cli, report  # noqa: E402
from conformance.results import SCHEMA, STATUSES  # noqa: E402

EVIL = "<script>alert(1)</script>"


def _result(adapter, check, status, **extra):
    r = {
        "id": f"{adapter}::{check}", "adapter": adapter, "check": check, "kind": check.split(".")[0],
        "clause": "paths.index", "description": f"desc {EVIL}", "status": status, "severity": "MUST",
        "examples": 7, "duration_s": 0.1, "message": f"{status} message {EVIL}",
        "coverage": {f"dtype{EVIL}": {f"float32{EVIL}": 3, "float16": 2}},
        "accuracy": {}, "ratios": {"float32": [0.0, 0.01, 0.5, 1.0, 3.0]},
        "worst": [{"dtype": "float32", "what": EVIL, "error_ulps": 2.0, "bound_ulps": 4.0, "ratio": 0.5,
                   "case": {"note": EVIL}}],
        "failure": None, "known": None,
    }
    if status in ("failed", "known", "error"):
        r["failure"] = {
            "clause": f"clause {EVIL}", "what": "loss", "message": EVIL, "expected": 1.0, "actual": EVIL,
            "error_ulps": 12.0, "bound_ulps": 4.0, "index": [0], "exception": f"ValueError: {EVIL}",
            "counterexample": {"input": {"values": [1.0, 2.0], "note": EVIL}},
            "repro": "repro/repro_x.py", "traceback": f"Traceback {EVIL}",
        }
    if status == "known":
        r["known"] = {"reason": f"known {EVIL}", "link": "https://example.org/issue/1"}
    r.update(extra)
    return r


def _doc(adapters):
    results = []
    for i, s in enumerate(STATUSES):
        for a in adapters:
            results.append(_result(a, f"check{i}.{s}", s))
    return {
        "schema": SCHEMA,
        "spec": {"operation": "cross_entropy", "version": "1.0.0", "sha256": "abc123", "file": "x.yaml"},
        "run": {"profile": "quick", "seed": 3, "command": f"ce-conformance run {EVIL}", "started": "2026-01-01",
                "finished": "2026-01-01", "interrupted": False, "versions": {"numpy": EVIL},
                "adapters": [{"name": a, "framework": "fw", "device": "cpu", "unavailable": None} for a in adapters]
                + [{"name": "gone", "framework": "jax", "device": "gpu", "unavailable": f"no gpu {EVIL}"}],
                "unmatched_known": [f"entry 0 {EVIL} matched nothing"]},
        "summary": {},
        "results": results,
    }


@pytest.fixture
def page(tmp_path):
    adapters = [f"evil{EVIL}", "plain"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_doc(adapters)))
    (tmp_path / "repro").mkdir()
    (tmp_path / "repro" / "repro_x.py").write_text(f"print('{EVIL}')\n")
    out = report.render([str(path)], tmp_path / "html")
    return adapters, out, out.read_text()


def test_escaped(page):
    _, out, html = page
    assert out.name == "index.html"
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;" in html
    assert "print(&#39;&lt;script&gt;alert(1)" in html  # the repro script is embedded, escaped
    assert "unmatched known divergence" in html and "no gpu &lt;script&gt;" in html


def test_matrix_has_every_adapter_and_status(page):
    adapters, _, html = page
    m = re.search(r'<table id="matrix">(.*?)</table>', html, re.S)
    assert m
    matrix = m.group(1)
    for a in adapters:
        esc = a.replace("<", "&lt;").replace(">", "&gt;")
        assert esc in matrix
    for s in STATUSES:
        assert f'data-status="{s}"' in matrix
        assert re.search(rf">\s*{s}\s*(</a>)?\s*<span", matrix), s


def test_self_contained_and_small(page):
    _, out, html = page
    assert not re.search(r"""(href|src|action|xmlns(:\w+)?)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert not re.search(r"@import", html)
    # the only URLs left are inside escaped text (the known-divergence link)
    for m in re.finditer(r"https?://", html):
        tag_start, tag_end = html.rfind("<", 0, m.start()), html.rfind(">", 0, m.start())
        assert tag_end > tag_start, html[max(0, m.start() - 80):m.start() + 40]
    assert "<svg" in html
    assert out.stat().st_size < 2 * 1024 * 1024


def test_later_file_wins(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    d1 = _doc(["x"])
    d2 = _doc(["x"])
    d2["spec"]["version"] = "9.9.9"
    d2["results"] = [_result("x", "check0.passed", "failed", message="replaced-by-second")]
    (a / "results.json").write_text(json.dumps(d1))
    (b / "results.json").write_text(json.dumps(d2))
    html = report.render([str(a / "results.json"), str(b / "results.json")], tmp_path / "o").read_text()
    assert "replaced-by-second" in html
    assert "9.9.9" not in html and "1.0.0" in html


def test_bad_input(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        report.render([str(bad)], tmp_path / "o")
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        report.render([str(missing)], tmp_path / "o")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["run", "--adapter", "numpy", "--profile", "quick", "--out", str(out),
                   "--check", "forward", "--check", "error.reduction"])
    return rc, out


def test_real_run(real_run):
    rc, out = real_run
    assert rc == 0
    index = out / "index.html"
    assert index.exists()
    html = index.read_text()
    assert "numpy" in html
    assert index.stat().st_size < 2 * 1024 * 1024


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed: headless DOM check skipped")
def test_chromium_dom(page):
    _, out, _ = page
    proc = subprocess.run(
        [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.resolve().as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'id="matrix"' in dom
    assert "check0.passed" in dom
    assert "<script>alert(1)" not in dom
