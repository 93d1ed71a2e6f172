"""Every field of the spec is read: changing one field at a time changes how a planted
correct implementation is judged (or the spec is refused). A field that changes nothing
would be a spec that says more than the code reads."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from conformance.adapters.base import Capabilities  # noqa: E402
from conformance.adapters.torch_adapter import TorchFunctionAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.spec import SpecError, default_spec_path, load  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import planted  # noqa: E402

RAW = yaml.safe_load(default_spec_path().read_text())


def _mutated(tmp_path: Path, edit) -> str:
    raw = yaml.safe_load(default_spec_path().read_text())
    edit(raw)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


def _status(spec_file: str, check_id: str, seed: int = 1) -> tuple[str, str]:
    spec = load(spec_file)
    check = next(c for c in catalogue(spec) if c.id == check_id)
    adapter = TorchFunctionAdapter(planted.float64_round_once, "correct", capabilities=Capabilities())
    r = run_check(Context(spec, adapter, profile="default"), check, seed=seed)
    return r.status, r.message


def _set(path: tuple, value):
    def edit(raw):
        node = raw
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


#: (field changed, new value, the check that must judge differently, the status it gets instead
#: of "passed", text the message must contain)
MUTATIONS = [
    (("metamorphic", "batch_permutation", "relation"), {"none": "equal", "sum": "equal", "mean": "equal"},
     "metamorphic.batch_permutation", "error", "relation 'equal' does not hold for the spec's own formulas"),
    (("signature", "deprecated_warning"), "DeprecationWarning", "forward.index", "failed", "no DeprecationWarning"),
    (("paths", "index", "reductions", "mean"), "where(den == 0, nan, sum(l) / P)", "forward.index", "failed",
     "expected"),
    (("errors", "label_smoothing_negative", "severity"), "MUST", "error.label_smoothing_negative", "failed",
     "MUST be rejected"),
    (("special_cases", "all_ignored", "expect", "mean"), "zero", "special.all_ignored", "error",
     "special_cases.all_ignored.expect: mean is not zero"),
]


@pytest.mark.parametrize("path,value,check,status,text", MUTATIONS, ids=[".".join(m[0]) for m in MUTATIONS])
def test_changing_a_field_changes_the_verdict(tmp_path, path, value, check, status, text):
    before = _status(str(default_spec_path()), check)
    assert before[0] in ("passed", "permissive"), before
    after = _status(_mutated(tmp_path, _set(path, value)), check)
    assert after[0] == status and after[0] != before[0], after
    assert text in after[1], after[1]


def test_permuted_relation_needs_a_permuting_transform(tmp_path):
    f = _mutated(tmp_path, _set(("metamorphic", "shift_invariance", "relation"), "permuted"))
    with pytest.raises(SpecError, match=r"metamorphic.*relation 'permuted' needs a transform that permutes"):
        load(f)


def test_a_relation_that_is_true_stays_passed():
    assert _status(str(default_spec_path()), "metamorphic.batch_permutation")[0] == "passed"
    assert _status(str(default_spec_path()), "metamorphic.shift_invariance")[0] == "passed"
