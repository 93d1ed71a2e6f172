"""conformance/diagnostics.py: one user-error class (file:line:col, message, fix), one
did-you-mean, one YAML locator; every user-facing error class is a UserError, and the CLI turns
any of them into one message and exit 2, never a traceback."""
import pytest

from conformance import safe_yaml
from conformance.adapter_config import AdapterConfigError
from conformance.adapters import AdapterError
from conformance.diagnostics import UserError, YamlLocator, close_matches, did_you_mean
from conformance.runner import cli
from conformance.runner.database import DatabaseError
from conformance.runner.merge import MergeError
from conformance.runner.session import ConfigError
from conformance.runner.shard import ShardError
from conformance.spec import SpecError


def test_rendering_location_message_and_fix():
    assert str(UserError("bad thing", "a.yaml", 3, 7, "do this")) == "a.yaml:3:7: bad thing\n  fix: do this"
    assert str(UserError("bad thing", "a.yaml", 3)) == "a.yaml:3: bad thing"
    assert str(UserError("bad thing", "a.yaml", None, 7)) == "a.yaml: bad thing"  # no column without a line
    assert str(UserError("bad thing; fix: x")) == "bad thing; fix: x"
    e = UserError("m", "f.yaml", 2, 5, "fx")
    assert (e.message, e.file, e.line, e.column, e.col, e.fix) == ("m", "f.yaml", 2, 5, 5, "fx")


@pytest.mark.parametrize("cls", [SpecError, safe_yaml.YamlFileError, AdapterConfigError, AdapterError, ConfigError,
                                 ShardError, MergeError, DatabaseError])
def test_every_user_facing_error_is_a_user_error(cls):
    assert issubclass(cls, UserError)


def test_subclasses_keep_their_constructors_and_render_alike():
    assert str(SpecError("s.yaml", 4, 2, "no", "yes")) == "s.yaml:4:2: no\n  fix: yes"
    assert str(safe_yaml.YamlFileError("y.yaml", 4, 2, "no", "yes")) == "y.yaml:4:2: no\n  fix: yes"
    assert str(AdapterConfigError("c.yaml", 4, "no", "yes")) == "c.yaml:4: no\n  fix: yes"
    assert isinstance(AdapterConfigError("c.yaml", 1, "m"), AdapterError)


def test_did_you_mean():
    assert did_you_mean("label_smothing", ["weight", "label_smoothing"]) == " (did you mean 'label_smoothing'?)"
    assert did_you_mean("zzz", ["weight", "label_smoothing"]) == ""
    assert did_you_mean("dtyp", ["dtype", "rank"], prefix="", suffix=" ") == "did you mean 'dtype'? "
    assert close_matches("cross_entrpy", ["cross_entropy", "nll_loss", "cross_entropy2"], n=2) == [
        "cross_entropy", "cross_entropy2"]
    assert close_matches(12, [11, 12, 99]) == ["12"]  # compared as text


def test_yaml_locator_finds_keys_items_and_the_deepest_match():
    text = "a: 1\nb:\n  c: [x, y]\n  d:\n    - e: 2\n    - f: 3\nb: {c: 4}\n"
    _, root = safe_yaml.load(text.replace("b: {c: 4}\n", ""), file="t.yaml")
    where = YamlLocator(root)
    assert where.at(("a",), key=True) == (1, 1)
    assert where.at(("a",)) == (1, 4)
    assert where.line(("b", "c")) == 3
    assert where.at(("b", "c", 1)) == (3, 10)
    assert where.line(("b", "d", 1)) == 6
    assert where.line(("b", "d", 1, "f")) == 6
    assert where.line(("b", "nope", "deeper")) == 2  # not there: the deepest enclosing key
    assert where.node(("b", "nope")) is None
    assert where.line(()) is None and YamlLocator(None).at(("a",)) == (None, None)


def _cli_error(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_cli_bad_adapter_config_exits_2_with_file_line_and_fix(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("import: numpy\ndtypse: [float32]\n")
    code, err = _cli_error(capsys, "run", "--adapter", str(cfg), "--out", str(tmp_path / "o"), "--no-report")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and f"{cfg}:2: unknown key 'dtypse' (did you mean 'dtypes'?)" in lines[0]
    assert lines[1].startswith("  fix: use one of name, import,"), err
    assert not (tmp_path / "o" / "results.json").exists()


def test_cli_bad_spec_exits_2_with_file_line_col_and_fix(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("operation: cross_entropy\n  bad: [\n")
    code, err = _cli_error(capsys, "run", "--spec", str(spec), "--adapter", "numpy", "--out", str(tmp_path / "o"))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"error: {spec}:2:") and "not valid YAML" in lines[0], err
    assert lines[1].startswith("  fix: "), err


@pytest.mark.parametrize("argv,fragment", [
    (["--shard", "3/2"], "--shard 3/2: I must be between 1 and N"),
    (["--shard", "x"], "--shard x: expected I/N"),
    (["--database", "{file}"], "is a file, not a folder"),
    (["--database", "a;b"], "';' separates database entries"),
    (["--database", "{file}.d", "--ci"], "a derandomised search cannot use an example database"),
])
def test_cli_bad_shard_or_database_exits_2_in_one_line(tmp_path, capsys, argv, fragment):
    (tmp_path / "a-file").write_text("")
    argv = [a.format(file=tmp_path / "a-file") for a in argv]
    code, err = _cli_error(capsys, "run", "--adapter", "numpy", "--out", str(tmp_path / "o"), *argv)
    assert code == 2
    assert err.count("error: ") == 1 and fragment in err, err
    assert not (tmp_path / "o" / "results.json").exists()
