"""The adapter config's ``form:`` key: an LLM kernel gated from YAML alone (no Python), and
every bad value reported at its own file:line with a fix."""
import textwrap

import pytest

pytest.importorskip("torch")

from conformance.adapter_config import AdapterConfigError  # noqa: E402
from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.llm import LlmTorchAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.spec import load_default  # noqa: E402

SPEC = load_default()
CHECKS = {c.id: c for c in catalogue(SPEC)}

FORM = """\
import: planted_llm:{fn}
form:
  args: [logits, target]
  layout: flat
  options:
    ignore_index: ignore_index
    reduction: null
    softcap: softcap
    z_loss: z_loss
    return_z_loss: return_z_loss
  returns: {{loss: 0, z_loss: 1}}
  fixed: {{return_lse: false}}
"""


def _write(tmp_path, text, name="llm.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_form_builds_an_llm_adapter_with_the_declared_call(tmp_path):
    a = resolve(str(_write(tmp_path, FORM.format(fn="reference"))))
    assert isinstance(a, LlmTorchAdapter) and a.name == "llm"
    assert a.form.options == {"ignore_index": "ignore_index", "reduction": "reduction", "softcap": "softcap",
                              "z_loss": "z_loss", "return_z_loss": "return_z_loss"}
    assert a.form.returns == {"loss": 0, "z_loss": 1} and a.form.fixed == {"return_lse": False}
    assert a.capabilities.extensions == {"softcap", "z_loss", "return_z_loss"}
    assert "weight" not in a.capabilities.features and a.capabilities.ranks == {2}


def test_config_keys_still_apply_on_top_of_the_form(tmp_path):
    a = resolve(str(_write(tmp_path, FORM.format(fn="reference") + "dtypes: [float64]\nmax_classes: 8\n")))
    assert a.capabilities.dtypes == {"float64"} and a.capabilities.max_classes == 8
    assert a.capabilities.extensions == {"softcap", "z_loss", "return_z_loss"}


def test_a_form_config_gates_the_kernel(tmp_path):
    """The softcap bug fails through the config; the correct composition passes the same check."""
    bad = resolve(str(_write(tmp_path, FORM.format(fn="softcap_x_tanh"), "bad.yaml")))
    good = resolve(str(_write(tmp_path, FORM.format(fn="reference"), "good.yaml")))
    r_bad = run_check(Context(SPEC, bad, profile="default"), CHECKS["extension.softcap"], seed=1)
    r_good = run_check(Context(SPEC, good, profile="quick"), CHECKS["extension.softcap"], seed=0)
    assert r_bad.status == "failed", r_bad.message
    assert r_good.status == "passed", r_good.message


@pytest.mark.parametrize("body, line, message", [
    ("form: [logits]\n", 2, "'form' must be a mapping"),
    ("form:\n  argz: [logits, target]\n", 3, "unknown form key 'argz' (did you mean 'args'?)"),
    ("form:\n  args:\n    - logits\n    - labels\n", 5, "unknown argument 'labels'"),
    ("form:\n  args: [logits]\n", 3, "'args' must place both logits and target"),
    ("form:\n  layout: seq\n", 3, "unknown layout 'seq'"),
    ("form:\n  options:\n    reduction: reduction\n    softcapping: softcap\n", 5,
     "unknown option 'softcapping' (did you mean 'softcap'?)"),
    ("form:\n  options:\n    z_loss: 3\n", 4, "option 'z_loss' must map to a keyword name (got 3)"),
    ("form:\n  returns: {z_loss: 1}\n", 3, "'returns' must say where the loss is"),
    ("form:\n  returns:\n    loss: 0\n    zloss: 1\n", 5, "unknown output 'zloss' (did you mean 'z_loss'?)"),
    ("form:\n  returns:\n    loss: -1\n", 4, "output 'loss' must be a tuple index, an attribute name or null"),
    ("form:\n  fixed: [impl]\n", 3, "'fixed' must map keyword names to constants"),
])
def test_bad_form_values_name_file_line_and_fix(tmp_path, body, line, message):
    p = _write(tmp_path, "import: planted_llm:reference\n" + body)
    with pytest.raises(AdapterConfigError) as e:
        resolve(str(p))
    assert e.value.file == str(p) and e.value.line == line, str(e.value)
    assert message in e.value.message and e.value.fix, str(e.value)


def test_form_needs_a_torch_function(tmp_path):
    p = _write(tmp_path, "import: numpy:planted_llm:reference\nform: {returns: loss}\n")
    with pytest.raises(AdapterConfigError) as e:
        resolve(str(p))
    assert e.value.line == 1 and "'form' needs a torch function" in e.value.message


def test_bad_form_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    from conformance.runner import cli

    p = _write(tmp_path, "import: planted_llm:reference\nform:\n  layout: seq\n", "bad.yaml")
    assert cli.main(["run", "--adapter", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3" in err and "unknown layout 'seq'" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "bad.yaml" in line]) == 1
