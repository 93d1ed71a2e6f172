"""Scale-out (issue 15): -n through pytest-xdist gives a serial run's results, --shard splits
by expected cost and ``report`` merges shards into one run (refusing files of different
runs), a shared example database (a real redis-server) replays a failure found elsewhere
first, and the JAX adapter compiles once per bucket, not per shape or option."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conformance.runner import cli, database, merge, shard
from conformance.runner import results as resultsmod
from conformance.checks import catalogue
from conformance.spec import load_default

HERE = Path(__file__).parent
ROOT = HERE.parent
SMALL = ["--adapter", "numpy", "--adapter", "planted:mean_over_count", "--profile", "quick",
         "--check", "metamorphic.weight_scaling_mean", "--check", "error.", "--check", "special.all_ignored",
         "--no-report"]


def _env():
    path = os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, CE_CONFORMANCE_PROGRESS="0")


def _run(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "conformance.runner.cli", *args], cwd=cwd, env=_env(), text=True,
                          capture_output=True, timeout=timeout)


def _by_id(path: Path) -> dict:
    return {r["id"]: r for r in json.loads(path.read_text())["results"]}


def _essence(r: dict) -> tuple:
    f = r.get("failure") or {}
    return (r["status"], r["examples"], r.get("seed"), f.get("counterexample"), f.get("signature"))


# --------------------------------------------------------------------------- -n (xdist)
@pytest.mark.parametrize("mode", [["--seed", "7"], ["--ci"]], ids=["seed", "ci"])
def test_xdist_run_equals_serial_run(tmp_path, mode):
    pytest.importorskip("xdist")
    serial = _run(tmp_path / "serial", "run", *SMALL, *mode, "--out", "out")
    par = _run(tmp_path / "par", "run", *SMALL, *mode, "-n", "2", "--out", "out")
    assert serial.returncode == par.returncode == 1, serial.stderr[-2000:] + par.stderr[-2000:]
    a, b = _by_id(tmp_path / "serial" / "out" / "results.json"), _by_id(tmp_path / "par" / "out" / "results.json")
    from conformance.checks import catalogue
    from conformance.spec import load_default

    per_adapter = [c for c in catalogue(load_default())
                   if c.id.startswith(("metamorphic.weight_scaling_mean", "error.", "special.all_ignored"))]
    assert sorted(a) == sorted(b) and len(a) == 2 * len(per_adapter)
    assert {i: _essence(r) for i, r in a.items()} == {i: _essence(r) for i, r in b.items()}
    failed = [i for i, r in a.items() if r["status"] == "failed"]
    assert failed == ["planted:mean_over_count::metamorphic.weight_scaling_mean"]
    assert a[failed[0]]["failure"]["counterexample"]  # a real counterexample, equal in both runs


# --------------------------------------------------------------------------- --shard
def test_shard_parse_errors():
    assert shard.parse("2/3") == (2, 3)
    for bad, fragment in (("0/3", "between 1 and N"), ("4/3", "between 1 and N"), ("x", "expected I/N")):
        with pytest.raises(shard.ShardError, match=fragment):
            shard.parse(bad)


class _A:
    def __init__(self, framework):
        self.framework = framework

    def unavailable(self):
        return None


def test_shards_split_by_cost_deterministically():
    checks = catalogue(load_default())
    adapters = {"numpy": _A("numpy"), "torch-cpu": _A("torch"), "jax-cpu": _A("jax")}
    n = 3
    parts = [shard.select(adapters, checks, "default", f"{i}/{n}") for i in range(1, n + 1)]
    ids = [[f"{a}::{c.id}" for a, c in p] for p in parts]
    every = [f"{a}::{c.id}" for a, c in shard.select(adapters, checks, "default", None)]
    assert sorted(sum(ids, [])) == sorted(every) and len(set(sum(ids, []))) == len(every)  # each item once
    assert ids == [[f"{a}::{c.id}" for a, c in shard.select(adapters, checks, "default", f"{i}/{n}")]
                   for i in range(1, n + 1)]  # the same split every time
    costs = [sum(shard.cost(c, "default", adapters[a].framework) for a, c in p) for p in parts]
    biggest = max(shard.cost(c, "default", "jax") for c in checks)
    assert max(costs) - min(costs) <= biggest  # even in expected cost (largest-first greedy bound)
    assert len({len(p) for p in parts}) > 1  # ... and so not in count


def test_shards_merge_into_the_serial_run(tmp_path):
    args = ["run", *SMALL, "--seed", "3"]
    whole = _run(tmp_path / "whole", *args, "--out", "out")
    s1 = _run(tmp_path / "s1", *args, "--shard", "1/2", "--out", "out")
    s2 = _run(tmp_path / "s2", *args, "--shard", "2/2", "--out", "out")
    assert whole.returncode == 1 and {s1.returncode, s2.returncode} == {0, 1}, s1.stderr[-1500:] + s2.stderr[-1500:]
    one, two = _by_id(tmp_path / "s1" / "out" / "results.json"), _by_id(tmp_path / "s2" / "out" / "results.json")
    assert one and two and not set(one) & set(two)
    m = _run(tmp_path, "report", str(tmp_path / "s1" / "out" / "results.json"),
             str(tmp_path / "s2" / "out" / "results.json"), "--out", str(tmp_path / "merged"))
    assert m.returncode == 0, m.stderr
    merged = _by_id(tmp_path / "merged" / "results.json")
    serial = _by_id(tmp_path / "whole" / "out" / "results.json")
    assert {i: _essence(r) for i, r in merged.items()} == {i: _essence(r) for i, r in serial.items()}
    doc = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted(s["shard"] for s in doc["run"]["shards"]) == ["1/2", "2/2"]
    assert doc["summary"]["failed"] == 1
    suite = ET.parse(tmp_path / "merged" / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == str(len(serial)) and suite.get("failures") == "1"
    failing = next(r for r in merged.values() if r["status"] == "failed")
    assert (tmp_path / "merged" / failing["failure"]["inputs"]).is_file()
    assert (tmp_path / "merged" / failing["failure"]["repro"]).is_file()
    assert (tmp_path / "merged" / "index.html").is_file() or "HTML report skipped" in m.stderr


def _doc(tmp: Path, name: str, *, sha="a" * 64, seed=1, version="0.1.0", ids=("x::c",), shard_="1/2"):
    run = {"profile": "quick", "seed": seed, "derandomize": False, "shard": shard_,
           "versions": {"ce-conformance": version}}
    results = [{"id": i, "adapter": i.split("::")[0], "check": i.split("::")[1], "kind": "error", "status": "passed",
                "message": "", "examples": 1, "duration_s": 0.1} for i in ids]
    folder = tmp / name
    resultsmod.write(folder, spec={"operation": "cross_entropy", "version": "1", "sha256": sha, "file": "s"},
                     run=run, results=results)
    return str(folder / "results.json")


@pytest.mark.parametrize("change,fragment", [
    ({"sha": "b" * 64}, "different spec (sha256) (bbbbbbbbbbbb vs aaaaaaaaaaaa)"),
    ({"seed": 2}, "different seed (2 vs 1)"),
    ({"version": "0.2.0"}, "different suite version ('0.2.0' vs '0.1.0')"),
    ({"ids": ("x::c",)}, "result x::c is also in"),
    ({"shard_": "2/3"}, "different numbers of shards"),
])
def test_merge_refuses_results_of_different_runs(tmp_path, capsys, change, fragment):
    a = _doc(tmp_path, "a")
    b = _doc(tmp_path, "b", **{"ids": ("y::c",), "shard_": "2/2", **change})
    rc = cli.main(["report", a, b, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "fix:" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m" / "results.json").exists()


def test_merge_warns_about_missing_shards(tmp_path, capsys):
    a = _doc(tmp_path, "a", shard_="1/3")
    b = _doc(tmp_path, "b", ids=("y::c",), shard_="3/3")
    assert cli.main(["report", a, b, "--out", str(tmp_path / "m")]) == 0
    assert "shard(s) 2/3 not given" in capsys.readouterr().err


# --------------------------------------------------------------------------- example database
def test_database_specs(tmp_path):
    spec = database.compose([str(tmp_path / "d")], ["redis://h:1/0", "github:o/r"], default=None)
    assert spec == f"{tmp_path / 'd'};ro:redis://h:1/0;ro:github:o/r"
    assert database.compose([], [], default="rel") == os.path.abspath("rel")
    assert [k for _, k, _ in database.entries(spec)] == ["directory", "redis", "github"]
    for bad, fragment in (("ftp://x", "unknown kind of database"), ("github:nope", "expected github:OWNER/REPO")):
        with pytest.raises(database.DatabaseError, match=fragment):
            database.build(bad)


@pytest.mark.parametrize("argv,fragment", [
    (["--database", "ftp://x"], "unknown kind of database"),
    (["--database", "d", "--ci"], "a derandomised search cannot use an example database"),
    (["--shard", "3/2"], "I must be between 1 and N"),
])
def test_run_option_errors_exit_2(tmp_path, capsys, argv, fragment):
    rc = cli.main(["run", "--adapter", "numpy", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_readonly_database_is_read_not_written(tmp_path):
    """A failure stored by one run (directory database) is replayed first through a read-only
    view, which receives nothing new."""
    import planted
    from conformance.adapters.base import Capabilities
    from conformance.adapters.torch_adapter import TorchFunctionAdapter
    from conformance.checks import Context
    from conformance.engine import run_check

    pytest.importorskip("torch")
    spec = load_default()
    check = next(c for c in catalogue(spec) if c.id == "metamorphic.ignore_equals_remove")
    ctx = Context(spec, TorchFunctionAdapter(planted.ignored_rows_leak, "leak", capabilities=Capabilities()),
                  profile="quick", extra_specs={op: load_default(op) for op in ("log_softmax", "nll_loss")})
    shared, local = tmp_path / "ci-db", tmp_path / "dev-db"
    first = run_check(ctx, check, seed=2, database=str(shared))
    assert first.status == "failed" and first.first_failure["examples"] > 1
    stored = sorted(p.name for p in shared.rglob("*") if p.is_file())
    assert stored
    fresh = run_check(ctx, check, seed=5)
    again = run_check(ctx, check, seed=5, database=database.compose([str(local)], [str(shared)]))
    assert again.status == "failed" and again.first_failure["examples"] == 1 < fresh.first_failure["examples"]
    assert sorted(p.name for p in shared.rglob("*") if p.is_file()) == stored  # read-only: nothing written
    assert any(p.is_file() for p in local.rglob("*"))  # the developer's own folder keeps it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (.ci/run installs it with apt-get)")
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'ce-conformance[test]')")
    import redis

    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_redis_database_replays_a_failure_first_in_another_folder(tmp_path, redis_url):
    pytest.importorskip("torch")
    args = ["run", "--adapter", "planted:ignored_rows_leak", "--profile", "quick", "--check",
            "metamorphic.ignore_equals_remove", "--no-report", "--out", "out"]
    first = _run(tmp_path / "ci", *args, "--seed", "2", "--database", redis_url)
    assert first.returncode == 1, first.stderr[-2000:]
    found = next(iter(_by_id(tmp_path / "ci" / "out" / "results.json").values()))
    assert found["status"] == "failed" and found["first_failure"]["examples"] > 1
    import redis
    assert redis.Redis.from_url(redis_url).keys(b"ce-conformance:*")  # stored under the suite's prefix
    second = _run(tmp_path / "dev", *args, "--seed", "5", "--database-readonly", redis_url)
    assert second.returncode == 1, second.stderr[-2000:]
    replayed = next(iter(_by_id(tmp_path / "dev" / "out" / "results.json").values()))
    assert replayed["status"] == "failed" and replayed["first_failure"]["examples"] == 1
    assert replayed["failure"]["signature"] == found["failure"]["signature"]


def test_unreachable_redis_is_a_usage_error(tmp_path, capsys):
    pytest.importorskip("redis")
    rc = cli.main(["run", "--adapter", "numpy", "--out", str(tmp_path / "o"), "--database",
                   f"redis://127.0.0.1:{_free_port()}/0"])
    err = capsys.readouterr().err
    assert rc == 2 and "the Redis server does not answer" in err and "fix:" in err


# --------------------------------------------------------------------------- JAX compilations
def test_jax_compiles_once_per_bucket_not_per_shape_or_option():
    pytest.importorskip("jax")
    from conformance.adapters import resolve
    from conformance.case import Case

    jax, ref = resolve("jax-cpu"), resolve("numpy")
    rng = np.random.default_rng(0)
    cases = [Case(x=rng.standard_normal((P, C)).astype(dt), target=rng.integers(0, C, P), reduction=red,
                  label_smoothing=eps)
             for P, C, dt, red, eps in ((5, 3, np.float32, "mean", 0.0), (7, 6, np.float16, "sum", 0.1),
                                        (3, 8, np.float32, "none", 0.0), (8, 5, np.float16, "mean", 0.2))]
    misses, hits = jax.cache_misses, jax.cache_hits
    for i, case in enumerate(cases):
        got = jax.call(case, gradient=bool(i % 2))
        want = ref.call(case, gradient=bool(i % 2))
        assert got.value.dtype == want.value.dtype and got.value.shape == want.value.shape
        tol = 2e-3 if case.x.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(np.asarray(got.value, np.float64), np.asarray(want.value, np.float64), rtol=tol)
        for k in want.gradients:
            np.testing.assert_allclose(np.asarray(got.gradients[k], np.float64),
                                       np.asarray(want.gradients[k], np.float64), rtol=tol, atol=tol)
    # P <= 8 and C <= 8 share one bucket; float16 is computed in float32; reduction, smoothing
    # and the gradient flag are not compiled in: one compilation for all four
    assert (jax.cache_misses - misses, jax.cache_hits - hits) == (1, 3)


def test_jax_cache_folder_is_documented_and_bounded(monkeypatch, tmp_path):
    from conformance.adapters import jax_adapter

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CE_CONFORMANCE_JAX_CACHE", raising=False)
    assert jax_adapter._cache_dir() == str(tmp_path / "ce-conformance" / "jax-lru")
    monkeypatch.setenv("CE_CONFORMANCE_JAX_CACHE", "off")
    assert jax_adapter._cache_dir() is None
    monkeypatch.setenv("CE_CONFORMANCE_JAX_CACHE_MB", "64")
    assert jax_adapter._cache_bytes() == 64 * 2**20
    monkeypatch.delenv("CE_CONFORMANCE_JAX_CACHE_MB")
    assert jax_adapter._cache_bytes() == jax_adapter.CACHE_MB * 2**20
    assert "CE_CONFORMANCE_JAX_CACHE" in (ROOT / "README.md").read_text()
