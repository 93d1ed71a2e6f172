"""The HTML report: escaping, self-containment, size, errors, and a real run."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

from conformance.runner import cli, report  # noqa: E402
from conformance.runner.results import SCHEMA, STATUSES  # noqa: E402

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


# --- the page in a real headless browser -------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium): headless browser checks skipped")
# the network is closed here: without these chromium waits on connections it cannot make
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# with --enable-logging=stderr every console message of the page (console.log/warn/error alike,
# uncaught exceptions, CSP violations) comes out as `[...:INFO:CONSOLE:1] "text", source: URL (1)`
# (older builds: `INFO:CONSOLE(1)`); the page itself never logs, so any such line is a failure
CONSOLE = re.compile(r"CONSOLE[:(]|Uncaught")


def _chromium(url: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url],
        capture_output=True, text=True, timeout=60,
    )


def _console(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


class _Dom(HTMLParser):
    """The elements of a dumped DOM: (tag, attributes, classes)."""

    def __init__(self, html: str):
        super().__init__()
        self.els: list[tuple[str, dict[str, str | None], set[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.els.append((tag, d, set((d.get("class") or "").split())))

    def find(self, tag: str, cls: str | None = None, **attrs: str):
        return [(d, c) for t, d, c in self.els if t == tag and (cls is None or cls in c)
                and all(d.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _hidden(d: dict, c: set) -> bool:
    hidden = "hidden" in d
    assert hidden == ("hidden" in c), (d, c)  # attribute and class agree
    return hidden


@needs_chromium
def test_browser_console_check_can_fail(tmp_path):
    """The console assertion below is only worth something if it sees a page's errors."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
                    '<script>console.error("deliberate-error");</script>'
                    '<script>throw new Error("deliberate-throw");</script></body></html>')
    proc = _chromium(page.as_uri(), "--dump-dom", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = _console(proc)
    assert any("deliberate-error" in line for line in lines), proc.stderr[-3000:]
    assert any("Uncaught" in line and "deliberate-throw" in line for line in lines), proc.stderr[-3000:]


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    """A real run with two adapters and failures: with no known divergences and --strict,
    torch's accepted NaN / negative label_smoothing (SHOULD clauses, else `permissive`) fail."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("browser_run")
    known = out / "no-known.yaml"
    known.write_text("known: []\n")
    rc = cli.main(["run", "--adapter", "numpy", "--adapter", "torch-cpu", "--profile", "quick", "--ci",
                   "--check", "forward", "--check", "error.label", "--out", str(out / "reports"),
                   "--known", str(known), "--strict"])
    return rc, out / "reports" / "index.html"


@needs_chromium
def test_browser_real_report(browser_run, tmp_path):
    rc, index = browser_run
    assert rc == 1, "the run should have failures (torch accepts a NaN label_smoothing)"
    assert index.stat().st_size < 2 * 1024 * 1024
    adapters = ["numpy", "torch-cpu"]

    proc = _chromium(index.as_uri(), "--dump-dom", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console(proc), _console(proc)
    dom = _Dom(proc.stdout)
    for a in adapters:
        assert dom.find("th", "col", data_adapter=a), f"{a} missing from the matrix header"
        assert dom.find("td", "cell", data_adapter=a), f"{a} has no matrix cells"
    cells = dom.find("td", "cell")
    assert {d.get("data-status") for d, _ in cells} >= {"passed", "failed"}
    assert not any(_hidden(d, c) for d, c in cells + dom.find("tr", "mrow")), "unfiltered page hides something"
    assert dom.find("section", "failure", data_status="failed")

    # a filter from the URL fragment changes what is shown
    proc = _chromium(index.as_uri() + "#status=failed", "--dump-dom", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console(proc), _console(proc)
    dom = _Dom(proc.stdout)
    passed = dom.find("td", "cell", data_status="passed")
    failed = dom.find("td", "cell", data_status="failed")
    assert passed and failed
    assert all(_hidden(d, c) for d, c in passed), "passed cells still shown under #status=failed"
    assert not any(_hidden(d, c) for d, c in failed), "failed cells hidden under #status=failed"
    rows = dom.find("tr", "mrow")
    shown = [d["data-check"] for d, c in rows if not _hidden(d, c)]
    assert shown and len(shown) < len(rows)
    assert {"error.label_smoothing_nan", "error.label_smoothing_negative"} <= set(shown), shown
    sections = dom.find("section", "failure")
    assert sections and not any(_hidden(d, c) for d, c in sections)

    # adapter and status together: numpy's column goes, torch-cpu's passed cells stay, no failure is shown
    proc = _chromium(index.as_uri() + "#adapter=torch-cpu&status=passed", "--dump-dom", tmp_path=tmp_path)
    assert not _console(proc), _console(proc)
    dom = _Dom(proc.stdout)
    assert all(_hidden(d, c) and "col-hidden" in c for d, c in dom.find("td", "cell", data_adapter="numpy"))
    assert all(_hidden(d, c) for d, c in dom.find("th", "col", data_adapter="numpy"))
    assert not any(_hidden(d, c) for d, c in dom.find("th", "col", data_adapter="torch-cpu"))
    assert all(_hidden(d, c) for d, c in dom.find("section", "failure"))

    # a screenshot a person can look at (kept next to the report)
    shot = index.parent / "screenshot.png"
    proc = _chromium(index.as_uri(), f"--screenshot={shot}", "--window-size=1400,2000", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_chromium_dom(page, tmp_path):
    _, out, _ = page
    proc = _chromium(out.resolve().as_uri(), "--dump-dom", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console(proc), _console(proc)
    dom = proc.stdout
    assert 'id="matrix"' in dom
    assert "check0.passed" in dom
    assert "<script>alert(1)" not in dom
