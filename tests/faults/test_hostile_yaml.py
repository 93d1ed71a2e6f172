"""Every YAML file the suite reads goes through conformance/safe_yaml.py: alias bombs, deep
nesting, huge files and numbers, recursive documents and Python tags are refused at their
line, fast, whether they arrive as a spec (test_hostile_specs.py), a ``--known`` file or an
adapter config. The README quotes the number of payloads times carriers tested here.
"""
from __future__ import annotations

import time

import pytest

from conformance import safe_yaml

from .hostile import billion_laughs, run_cli, write

#: (id, YAML text, 1-based line the error must name or None, message fragment)
PAYLOADS = [
    ("billion_laughs_9x9", billion_laughs(9, 9), range(1, 10), "values (aliases expanded)"),
    ("billion_laughs_7x10", billion_laughs(7, 10), range(1, 8), "values (aliases expanded)"),
    ("alias_in_a_mapping_merge", "base: &b {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}\n"
     + "".join(f"m{i}: {{<<: *b}}\n" for i in range(120)), range(2, 200), "aliases"),
    ("recursive_alias", "known: &k [*k]\n", [1], "recursive document"),
    ("nesting_10000_flow", "known: " + "[" * 10_000 + "]" * 10_000 + "\n", [1], "nesting deeper than 64"),
    ("nesting_100_block", "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n", [64],
     "nesting deeper than 64"),
    ("file_of_600k", "# " + "x" * 600_000 + "\nknown: []\n", None, "larger than"),
    ("flat_list_of_50000", "known: [" + ", ".join(["1"] * 50_000) + "]\n", [1], f"more than {safe_yaml.MAX_NODES} values"),
    ("integer_of_5000_digits", "known: " + "9" * 5000 + "\n", [1], "cannot be read"),
    ("python_tag", "known: !!python/object/apply:os.system [echo hi]\n", [1], "safe YAML"),
    ("two_documents", "known: []\n---\nknown: []\n", [2, 3], "found another document"),
    ("tab_indentation", "known:\n\t- check: x\n", [2], "tab"),
]

@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory):
    """Import what a run imports before anything is timed (the timings are of the checks)."""
    from conformance.runner import cli
    from conformance.adapters import resolve

    resolve("numpy")
    warm = tmp_path_factory.mktemp("warm")
    cli.main(["run", "--adapter", str(warm / "missing.yaml"), "--out", str(warm / "o"), "--no-report"])


#: How each carrier is given to the CLI; each must stop before pytest starts.
CARRIERS = {
    "known_file": lambda f, out: ["run", "--adapter", "numpy", "--known", f, "--out", out, "--no-report"],
    "adapter_config": lambda f, out: ["run", "--adapter", f, "--out", out, "--no-report"],
    "spec": lambda f, out: ["spec", "validate", f],
    "run_spec": lambda f, out: ["run", "--spec", f, "--adapter", "numpy", "--out", out, "--no-report"],
}


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@pytest.mark.parametrize("case_id,text,lines,fragment", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_hostile_yaml_is_refused_at_its_line(capsys, tmp_path, carrier, case_id, text, lines, fragment):
    f = write(tmp_path, "hostile.yaml", text)
    rc, out, err, took = run_cli(capsys, *CARRIERS[carrier](f, str(tmp_path / "out")))
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    first = err.strip().splitlines()[0]
    if carrier == "spec":  # spec validate: the error (its fix on a second line), then a count
        assert err.strip().splitlines()[-1] == "1 of 1 spec file(s) failed", err
    else:  # a UserError (conformance/diagnostics.py): the error, then its fix when it has one
        rest = err.strip().splitlines()[1:]
        assert rest == [] or (len(rest) == 1 and rest[0].startswith("  fix: ")), err
    assert fragment in err, err
    assert f in first, err
    if lines is None:
        assert f"{f}: " in err, err
    else:
        assert any(f"{f}:{n}:" in err for n in lines), (lines, err)
    assert took < 2.0, f"took {took:.2f} s"
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("case_id,text,lines,fragment", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_the_loader_refuses_in_under_a_second(case_id, text, lines, fragment):
    t0 = time.perf_counter()
    with pytest.raises(safe_yaml.YamlFileError) as info:
        safe_yaml.load(text, file="f.yaml")
    assert time.perf_counter() - t0 < 1.0
    assert fragment in str(info.value)
    assert (info.value.line is None) == (lines is None)
    if lines is not None:
        assert info.value.line in lines


# --------------------------------------------------------------------------- the limits, exactly
def _nested(depth: int) -> str:
    return "[" * (depth - 1) + "1" + "]" * (depth - 1)   # depth - 1 lists around a scalar


def test_depth_limit_is_exact():
    assert safe_yaml.load(_nested(safe_yaml.MAX_DEPTH), file="f")[0] is not None
    with pytest.raises(safe_yaml.YamlFileError, match="nesting deeper"):
        safe_yaml.load(_nested(safe_yaml.MAX_DEPTH + 1), file="f")


def test_alias_limit_is_exact():
    ok = "a: &a 1\nb: [" + ", ".join(["*a"] * safe_yaml.MAX_ALIASES) + "]\n"
    assert len(safe_yaml.load(ok, file="f")[0]["b"]) == safe_yaml.MAX_ALIASES
    with pytest.raises(safe_yaml.YamlFileError, match="more than 100 aliases"):
        safe_yaml.load(ok.replace("]", ", *a]"), file="f")


def test_ordinary_anchors_still_work():
    doc, node = safe_yaml.load("base: &b {u: 1, k: 2}\nrow: {<<: *b, k: 3}\nlist: [*b, *b]\n", file="f")
    assert doc["row"] == {"u": 1, "k": 3} and doc["list"] == [{"u": 1, "k": 2}] * 2
    assert node.value[1][0].start_mark.line == 1   # the nodes keep their lines


def test_the_table_is_large_enough():
    print(f"\n{len(PAYLOADS)} hostile YAML payloads x {len(CARRIERS)} carriers ({', '.join(sorted(CARRIERS))})"
          " and the loader itself")
    assert len(PAYLOADS) >= 10
