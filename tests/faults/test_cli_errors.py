"""Every bad path and every malformed results file: exit 2, one line on stderr naming the
path, no traceback — before any work starts. The README quotes the number of cases.

Malformed results files have the right ``schema`` and a broken body; each goes through
``diff`` (both sides), ``report``, ``repro`` and ``run --baseline``: 1 from ``diff`` would
read as "something broke", so a crash there must never look like a verdict.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conformance.runner.results import SCHEMA

from .hostile import run_cli

GOOD = {"schema": SCHEMA, "spec": {}, "run": {}, "summary": {},
        "results": [{"id": "a::forward.index", "adapter": "a", "check": "forward.index", "status": "passed",
                     "message": ""}]}


def _body(change) -> dict:
    doc = copy.deepcopy(GOOD)
    change(doc)
    return doc


def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


#: (id, results document or raw text, message fragment)
MALFORMED = [
    ("results_not_a_list", _body(lambda d: d.update(results={"a": 1})), "'results' is missing or not a list"),
    ("results_missing", _body(lambda d: d.pop("results")), "'results' is missing or not a list"),
    ("result_not_an_object", _body(lambda d: d["results"].append("x")), "results[1] is not an object"),
    ("status_missing", _body(lambda d: d["results"][0].pop("status")), "results[0].status is missing"),
    ("status_unknown", _body(lambda d: d["results"][0].update(status="great")), "'great' is not one of"),
    ("adapter_not_a_string", _body(lambda d: d["results"][0].update(adapter=7)), "results[0].adapter"),
    ("check_null", _body(lambda d: d["results"][0].update(check=None)), "results[0].check"),
    ("id_not_a_string", _body(lambda d: d["results"][0].update(id=[1])), "results[0].id is not a string"),
    ("message_not_a_string", _body(lambda d: d["results"][0].update(message={"a": 1})), "results[0].message"),
    ("failure_a_list", _body(lambda d: d["results"][0].update(failure=[1])), "results[0].failure is not an object"),
    ("repro_outside_the_folder", _body(lambda d: d["results"][0].update(failure={"repro": "../../etc/passwd"})),
     "not a relative path inside the results folder"),
    ("repro_absolute", _body(lambda d: d["results"][0].update(failure={"repro": "/etc/passwd"})),
     "not a relative path inside the results folder"),
    ("run_not_an_object", _body(lambda d: d.update(run=[])), "'run' is not an object"),
    ("nested_100_deep", _body(lambda d: d["results"][0].update(extra=_deep(100))), "nested more than 64"),
    ("nested_100000_deep", '{"schema": "%s", "results": %s}' % (SCHEMA, "[" * 100_000 + "]" * 100_000),
     "nested more than 64"),
    ("not_json", '{"schema": ', "not valid JSON"),
    ("not_utf8", b"\xff\xfe{}", "not UTF-8"),
    ("wrong_schema", {"schema": "other", "results": []}, "not a ce-conformance results file"),
]


def _write(tmp_path: Path, name: str, body) -> str:
    p = tmp_path / name
    if isinstance(body, bytes):
        p.write_bytes(body)
    else:
        p.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(p)


def _assert_one_line_error(rc, out, err, *fragments):
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])


COMMANDS = {
    "diff_old": lambda bad, good, tmp: ["diff", bad, good],
    "diff_new": lambda bad, good, tmp: ["diff", good, bad],
    "report": lambda bad, good, tmp: ["report", bad, "--out", str(tmp / "rep")],
    "repro": lambda bad, good, tmp: ["repro", "a::forward.index", "--results", bad],
    "baseline": lambda bad, good, tmp: ["run", "--adapter", "numpy", "--baseline", bad, "--out", str(tmp / "o"),
                                        "--no-report"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case_id,body,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_results_file_exits_2_with_one_line(capsys, tmp_path, command, case_id, body, fragment):
    bad = _write(tmp_path, "bad.json", body)
    good = _write(tmp_path, "good.json", GOOD)
    rc, out, err, _ = run_cli(capsys, *COMMANDS[command](bad, good, tmp_path))
    _assert_one_line_error(rc, out, err, bad, fragment)


def test_a_well_formed_results_file_passes_the_same_commands(capsys, tmp_path):
    good = _write(tmp_path, "good.json", GOOD)
    assert run_cli(capsys, "diff", good, good)[0] == 0
    rc, out, err, _ = run_cli(capsys, "repro", "a::forward.index", "--results", good)
    _assert_one_line_error(rc, out, err, "has no failure to reproduce")   # a refusal, not a crash


# --------------------------------------------------------------------------- output paths
def _paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_dir").mkdir()
    return {
        "existing_file": (str(a_file), "is a file, not a folder"),
        "under_a_file": (str(a_file / "sub"), "is a file, so nothing can be created under it"),
        "deep_under_a_file": (str(a_file / "x" / "y"), "is a file, so nothing can be created under it"),
        "unwritable": ("/proc/ce-conformance-out", "cannot write there"),
        "brackets_under_a_file": (str(a_file / "[/red]x"), "[/red]x"),
    }


PATH_CASES = ["existing_file", "under_a_file", "deep_under_a_file", "unwritable", "brackets_under_a_file"]


@pytest.mark.parametrize("case", PATH_CASES)
def test_run_out_that_cannot_be_written_exits_2_before_pytest(capsys, tmp_path, case):
    out_dir, fragment = _paths(tmp_path)[case]
    rc, out, err, took = run_cli(capsys, "run", "--adapter", "numpy", "--out", out_dir, "--no-report")
    _assert_one_line_error(rc, out, err, "--out", fragment)
    assert "INTERNALERROR" not in out + err and took < 5


@pytest.mark.parametrize("case", PATH_CASES)
def test_report_out_that_cannot_be_written_exits_2(capsys, tmp_path, case):
    good = _write(tmp_path, "good.json", GOOD)
    out_dir, fragment = _paths(tmp_path)[case]
    rc, out, err, _ = run_cli(capsys, "report", good, "--out", out_dir)
    _assert_one_line_error(rc, out, err, "--out", fragment)


REPRO_OUT = {
    "a_folder": (lambda t: str(t / "a_dir"), "give a .py file name"),
    "not_py": (lambda t: str(t / "repro.txt"), "give a .py file name"),
    "under_a_file": (lambda t: str(t / "a_file" / "r.py"), "is a file, so nothing can be created under it"),
    "unwritable": (lambda t: "/proc/ce-conformance/r.py", "cannot write there"),
}


@pytest.mark.parametrize("case", sorted(REPRO_OUT))
def test_repro_out_that_cannot_be_written_exits_2(capsys, tmp_path, case):
    _paths(tmp_path)
    (tmp_path / "repro").mkdir()
    for suffix in (".py", ".json", ".npz"):
        (tmp_path / "repro" / f"repro_x{suffix}").write_text("")
    doc = _body(lambda d: d["results"][0].update(status="failed", failure={"repro": "repro/repro_x.py"}))
    results = _write(tmp_path, "results.json", doc)
    make, fragment = REPRO_OUT[case]
    rc, out, err, _ = run_cli(capsys, "repro", "a::forward.index", "--results", results, "--out", make(tmp_path))
    _assert_one_line_error(rc, out, err, fragment)


def test_missing_results_file_exits_2(capsys, tmp_path):
    for argv in (["diff", str(tmp_path / "none.json"), str(tmp_path / "none.json")],
                 ["report", str(tmp_path / "none.json"), "--out", str(tmp_path / "r")],
                 ["repro", "a::b", "--results", str(tmp_path / "none.json")],
                 ["diff", str(tmp_path), str(tmp_path)]):
        rc, out, err, _ = run_cli(capsys, *argv)
        _assert_one_line_error(rc, out, err, "cannot read results")


def test_count():
    n = len(MALFORMED) * len(COMMANDS) + 2 * len(PATH_CASES) + len(REPRO_OUT) + 4
    print(f"\n{n} CLI error cases ({len(MALFORMED)} malformed results files x {len(COMMANDS)} commands, "
          f"{len(PATH_CASES)} bad --out paths x run/report, {len(REPRO_OUT)} bad repro --out, 4 missing files)")
