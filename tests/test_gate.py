"""The regression gate: exit codes, known divergences, baseline, diff, repro scripts, adapter
configs (declared capabilities and variants), driven through ``conformance.runner.cli.main``.

Each run is restricted with --check prefixes and the quick profile so that it takes seconds.
Planted implementations (tests/planted.py) stand in for third-party code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.runner import cli  # noqa: E402
from conformance.adapter_config import AdapterConfigError, load_config  # noqa: E402
from conformance.adapters import AdapterError, resolve  # noqa: E402

TESTS = Path(__file__).parent
BUG = "planted:off_by_3e4"        # wrong on every value: forward.index fails
GOOD = "planted:float64_round_once"  # correct


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CE_CONFORMANCE_PROGRESS", "0")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def run(tmp_path: Path, *args: str, out: str = "out") -> tuple[int, dict]:
    o = tmp_path / out
    code = cli.main(["run", "--profile", "quick", "--ci", "--no-report", "--out", str(o), *args])
    doc = json.loads((o / "results.json").read_text()) if (o / "results.json").exists() else {}
    return code, doc


def statuses(doc: dict) -> dict[str, str]:
    return {r["check"]: r["status"] for r in doc["results"]}


def known_file(tmp_path: Path, text: str, name: str = "known.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- exit codes
def test_new_failure_exits_1(tmp_path):
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index")
    assert code == 1
    assert statuses(doc) == {"forward.index": "failed"}
    assert doc["results"][0]["failure"]["counterexample"]["dtype"]


def test_correct_implementation_exits_0(tmp_path):
    code, doc = run(tmp_path, "--adapter", GOOD, "--check", "forward.index")
    assert code == 0 and statuses(doc) == {"forward.index": "passed"}


def test_unknown_adapter_exits_2_and_lists_builtins(tmp_path, capsys):
    code = cli.main(["run", "--adapter", "torch-cpuu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown adapter 'torch-cpuu'" in err and "did you mean 'torch-cpu'" in err
    for b in ("numpy", "torch-cpu", "torch-module-cpu", "jax-cpu"):
        assert b in err


# --------------------------------------------------------------------------- known divergences
def test_known_divergence_exits_0_with_status_known(tmp_path):
    k = known_file(tmp_path, f"""
adapter: "{BUG}"
known:
  - check: "forward.*"
    when: {{message_contains: "ulp"}}
    reason: every value is 3e-4 too large
    link: https://example.invalid/issue/1
""")
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index", "--known", k)
    assert code == 0
    r = doc["results"][0]
    assert r["status"] == "known"
    assert r["known"]["reason"] == "every value is 3e-4 too large"
    assert r["known"]["link"].endswith("/issue/1")
    assert doc["summary"]["known"] == 1 and doc["run"]["unmatched_known"] == []


def test_strict_fails_on_known_divergence(tmp_path):
    k = known_file(tmp_path, f"adapter: '{BUG}'\nknown:\n  - check: forward.index\n    reason: r\n")
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index", "--known", k, "--strict")
    assert code == 1
    assert statuses(doc) == {"forward.index": "failed"}
    assert doc["results"][0]["known"]["reason"] == "r" and doc["run"]["strict"] is True


def test_when_that_does_not_match_keeps_the_failure(tmp_path):
    k = known_file(tmp_path, f"adapter: '{BUG}'\nknown:\n  - check: forward.index\n    when: {{dtype: float16, "
                             f"reduction: none, target_kind: probability}}\n    reason: r\n")
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index", "--known", k)
    assert code == 1 and statuses(doc) == {"forward.index": "failed"}


def test_entry_for_a_passing_check_is_reported_fixed(tmp_path, capsys):
    k = known_file(tmp_path, f"adapter: '{GOOD}'\nknown:\n  - check: forward.index\n    reason: was broken\n")
    code, doc = run(tmp_path, "--adapter", GOOD, "--check", "forward.index", "--known", k)
    assert code == 0
    r = doc["results"][0]
    assert r["status"] == "fixed" and "remove the entry" in r["message"]
    assert doc["summary"]["fixed"] == 1
    assert "fixed: planted:float64_round_once::forward.index" in capsys.readouterr().out


def test_entry_that_matches_nothing_is_warned_about(tmp_path, capsys):
    k = known_file(tmp_path, f"""
adapter: "{BUG}"
known:
  - check: forward.index
    reason: matches
  - check: forward.indx
    reason: a typo matches no check
  - check: forward.index
    when: {{dtype: bfloat16, reduction: none, regime: huge}}
    reason: a condition that does not occur
""")
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index", "--known", k)
    assert code == 0
    unmatched = doc["run"]["unmatched_known"]
    assert len(unmatched) == 2
    assert any("entry 1 (forward.indx) matched nothing" in u for u in unmatched)
    assert any("entry 2 (forward.index) matched nothing" in u for u in unmatched)
    out = capsys.readouterr().out
    assert "warning: " in out and "entry 1 (forward.indx) matched nothing" in out
    # the shipped torch file is about other adapters: no warning for it
    assert "torch.yaml" not in out


def test_known_file_errors_name_file_line_and_fix(tmp_path, capsys):
    k = known_file(tmp_path, "adapter: x\nknown:\n  - check: forward.index\n    reason: r\n    when: {dtyp: float16}\n")
    code = cli.main(["run", "--adapter", GOOD, "--known", k, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{k}:5" in err and "unknown key 'dtyp'" in err and "did you mean 'dtype'" in err
    k2 = known_file(tmp_path, "adapter: x\nknown:\n  - check: a\n    reason: r\n    when: {dtype: float61}\n", "k2.yaml")
    assert cli.main(["run", "--adapter", GOOD, "--known", k2, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{k2}:5" in err and "unknown value 'float61'" in err and "did you mean 'float" in err


# --------------------------------------------------------------------------- baseline and diff
def test_baseline_tolerates_old_failures_and_catches_new_ones(tmp_path, capsys):
    code, _ = run(tmp_path, "--adapter", BUG, "--check", "forward.index", out="failing")
    assert code == 1
    failing = str(tmp_path / "failing" / "results.json")
    # failed in the baseline too: not a regression
    code, doc = run(tmp_path, "--adapter", BUG, "--check", "forward.index", "--baseline", failing, out="b1")
    assert code == 0
    r = doc["results"][0]
    assert r["status"] == "known" and r["known"]["file"] == "baseline"
    # every failing example was accepted by the baseline's failure signatures, none is new
    assert r["failures"] and all(f["accepted_by"]["by"] == "baseline" for f in r["failures"])

    # passed in the baseline: a regression. Same adapter name, so use a config to rename.
    cfg_good = tmp_path / "impl_good.yaml"
    cfg_good.write_text(f"name: impl\nimport: {GOOD}\n")
    cfg_bad = tmp_path / "impl_bad.yaml"
    cfg_bad.write_text(f"name: impl\nimport: {BUG}\n")
    code, _ = run(tmp_path, "--adapter", str(cfg_good), "--check", "forward.index", out="passing")
    assert code == 0
    passing = str(tmp_path / "passing" / "results.json")
    code, doc = run(tmp_path, "--adapter", str(cfg_bad), "--check", "forward.index", "--baseline", passing, out="b2")
    assert code == 1 and statuses(doc) == {"forward.index": "failed"}

    # diff: what broke between the two
    capsys.readouterr()
    assert cli.main(["diff", passing, str(tmp_path / "b2" / "results.json")]) == 1
    out = capsys.readouterr().out
    assert "broke: 1" in out and "impl::forward.index" in out and "fixed: 0" in out
    assert cli.main(["diff", str(tmp_path / "b2" / "results.json"), passing]) == 0
    out = capsys.readouterr().out
    assert "broke: 0" in out and "fixed: 1" in out


def test_bad_baseline_exits_2(tmp_path, capsys):
    p = tmp_path / "nope.json"
    p.write_text("{}")
    assert cli.main(["run", "--adapter", GOOD, "--baseline", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "not a ce-conformance results file" in capsys.readouterr().err


# --------------------------------------------------------------------------- repro scripts
@pytest.mark.parametrize("name,check", [("wrong_dtype", "forward.probability")])
def test_repro_script_reproduces_the_failure(tmp_path, capsys, name, check):
    code, doc = run(tmp_path, "--adapter", f"planted:{name}", "--check", check)
    assert code == 1
    rid = f"planted:{name}::{check}"
    results = str(tmp_path / "out" / "results.json")
    capsys.readouterr()
    assert cli.main(["repro", rid, "--results", results]) == 0
    script = Path(capsys.readouterr().out.strip())
    assert script.is_file() and script.name.startswith("repro_")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "expected (exact):" in proc.stdout and "actual:" in proc.stdout and "FAIL:" in proc.stdout


def test_repro_of_an_unknown_id_exits_2(tmp_path, capsys):
    run(tmp_path, "--adapter", GOOD, "--check", "forward.index")
    assert cli.main(["repro", "nope::x", "--results", str(tmp_path / "out" / "results.json")]) == 2
    assert "no result 'nope::x'" in capsys.readouterr().err


def test_repro_script_of_a_config_adapter_resolves_the_config(tmp_path, capsys):
    cfg = tmp_path / "cfg" / "mine.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"name: mine\nimport: {BUG}\n")
    code, doc = run(tmp_path, "--adapter", str(cfg), "--check", "forward.index")
    assert code == 1
    script = tmp_path / "out" / doc["results"][0]["failure"]["repro"]
    assert json.loads(script.with_suffix(".json").read_text())["adapter"] == str(cfg.resolve())


# --------------------------------------------------------------------------- adapter configs
def test_config_declared_unsupported_feature_is_not_supported(tmp_path):
    cfg = tmp_path / "nols.yaml"
    cfg.write_text(f"name: no-smoothing\nimport: {GOOD}\nunsupported: [label_smoothing, weight]\n"
                   "dtypes: [float32, float64]\n")
    a = resolve(str(cfg))
    assert "label_smoothing" not in a.capabilities.features and "weight" not in a.capabilities.features
    code, doc = run(tmp_path, "--adapter", str(cfg), "--check", "forward.index", "--check", "special.neg_inf_with_smoothing",
                    "--check", "metamorphic.weight_scaling_mean", "--check", "metamorphic.shift_invariance")
    st = statuses(doc)
    assert st["metamorphic.weight_scaling_mean"] == "not_supported"
    assert st["forward.index"] == "passed" and st["metamorphic.shift_invariance"] == "passed"
    r = next(r for r in doc["results"] if r["check"] == "forward.index")
    assert set(r["coverage"]["label_smoothing"]) == {"0"}       # never sent
    assert set(r["coverage"]["dtype"]) <= {"float32", "float64"}
    info = doc["run"]["adapters"][0]
    assert info["name"] == "no-smoothing" and "label_smoothing" in info["capabilities"]["unsupported"]


def test_undeclared_feature_checks_are_not_supported(tmp_path):
    cfg = tmp_path / "nols.yaml"
    cfg.write_text(f"name: no-smoothing\nimport: {GOOD}\nunsupported: [label_smoothing]\n")
    code, doc = run(tmp_path, "--adapter", str(cfg), "--check", "special.neg_inf_with_smoothing",
                    "--check", "error.label_smoothing")
    assert set(statuses(doc).values()) == {"not_supported"}


def test_config_declared_variant_reports_variant(tmp_path):
    plain_code, plain = run(tmp_path, "--adapter", "planted:all_ignored_mean_zero", "--check", "special.all_ignored",
                            out="plain")
    assert plain_code == 1 and statuses(plain) == {"special.all_ignored": "failed"}
    cfg = tmp_path / "variant.yaml"
    # unsupported gradient: the planted function's zeros carry no grad_fn (its gradient is not the point)
    cfg.write_text("name: zero-mean\nimport: planted:all_ignored_mean_zero\nvariants: [all_ignored_mean_zero]\n"
                   "unsupported: [gradient]\n")
    code, doc = run(tmp_path, "--adapter", str(cfg), "--check", "special.all_ignored", "--check", "forward.index")
    assert code == 0
    st = statuses(doc)
    assert st["special.all_ignored"] == "variant" and st["forward.index"] in ("passed", "variant")
    r = next(r for r in doc["results"] if r["check"] == "special.all_ignored")
    assert r["variants"] == ["all_ignored_mean_zero"]


def test_config_known_file_is_relative_to_the_config_and_defaults_to_its_adapter(tmp_path):
    d = tmp_path / "gate"
    d.mkdir()
    (d / "mine.known.yaml").write_text("known:\n  - check: forward.index\n    reason: off by 3e-4, tracked\n")
    (d / "mine.yaml").write_text(f"name: mine\nimport: {BUG}\nknown: mine.known.yaml\n")
    code, doc = run(tmp_path, "--adapter", str(d / "mine.yaml"), "--check", "forward.index")
    assert code == 0 and statuses(doc) == {"forward.index": "known"}
    assert doc["results"][0]["known"]["reason"] == "off by 3e-4, tracked"


def test_config_import_finds_modules_next_to_the_config(tmp_path):
    (tmp_path / "my_impl.py").write_text("import torch.nn.functional as F\n"
                                         "def ce(input, target, **kw):\n    return F.cross_entropy(input, target, **kw)\n")
    (tmp_path / "mine.yaml").write_text("import: my_impl:ce\n")
    a = resolve(str(tmp_path / "mine.yaml"))
    assert a.name == "mine" and a.source == str((tmp_path / "mine.yaml").resolve())


@pytest.mark.parametrize("text,line,needles", [
    ("import: planted:float64_round_once\nunsuported: [weight]\n", 2,
     ["unknown key 'unsuported'", "did you mean 'unsupported'"]),
    ("import: planted:float64_round_once\nunsupported:\n  - weight\n  - label_smothing\n", 4,
     ["unknown feature 'label_smothing'", "did you mean 'label_smoothing'", "fix: use names from"]),
    ("import: planted:float64_round_once\nvariants: [all_ignored_mean_0]\n", 2,
     ["unknown variant 'all_ignored_mean_0'", "did you mean 'all_ignored_mean_zero'"]),
    ("import: planted:float64_round_once\ndtypes: [float61]\n", 2, ["unknown dtype 'float61'"]),
    ("import: planted:float64_round_once\nranks: [0]\n", 2, ["rank 0 is outside"]),
    ("import: planted:float64_round_once\nraises_on_invalid: maybe\n", 2, ["must be true or false"]),
    ("import: planted:float64_round_once\nmax_classes: -3\n", 2, ["positive integer"]),
    ("import: planted:float64_round_once\nknown: missing.yaml\n", 2, ["does not exist", "relative to the config"]),
    ("name: x\n", 1, ["missing key 'import'"]),
    ("name: x\nimport: planted:no_such_fn\n", 2, ["has no attribute 'no_such_fn'"]),
    ("import: [a\n", 2, ["not valid YAML"]),
])
def test_config_errors_name_file_line_and_fix(tmp_path, text, line, needles):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(AdapterError) as ei:
        resolve(str(p))
    msg = str(ei.value)
    assert f"bad.yaml:{line}:" in msg, msg
    for n in needles:
        assert n in msg, msg


def test_config_error_through_the_cli_exits_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("import: planted:float64_round_once\nunsuported: [weight]\n")
    assert cli.main(["run", "--adapter", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2" in err and "did you mean 'unsupported'" in err
    assert cli.main(["run", "--adapter", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_config_returns_absolute_known(tmp_path):
    (tmp_path / "k.yaml").write_text("known: []\n")
    (tmp_path / "c.yml").write_text("import: torch-cpu\nknown: k.yaml\ndevice: cpu\n")
    cfg = load_config(tmp_path / "c.yml")
    assert cfg["known"] == str((tmp_path / "k.yaml").resolve()) and cfg["name"] == "c"
    with pytest.raises(AdapterConfigError):
        (tmp_path / "d.yaml").write_text("import: torch-cpu\ndevice: cuda0\n")
        load_config(tmp_path / "d.yaml")


def test_cli_subprocess_with_pythonpath(tmp_path):
    """The documented CI form: PYTHONPATH=tests and a planted:NAME import path."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "CE_CONFORMANCE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "conformance.runner.cli", "run", "--adapter", BUG, "--check", "forward.index",
                           "--profile", "quick", "--ci", "--no-report", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 failed" in proc.stdout
