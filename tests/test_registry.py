"""The one registry form (conformance/registry.py) of modifiers, mutations and transforms:
every entry complete, lookups that say what is wrong, and declared needs that the draw, the
catalogue and the engine read (not names hard-coded where they are used)."""
from dataclasses import replace

import pytest

from conformance import metamorphic as mm
from conformance import strategies as strat
from conformance.adapters import resolve
from conformance.checks import Context, catalogue
from conformance.engine import _not_supported
from conformance.registry import Entry, Needs, Registry
from conformance.spec import load_default

REGISTRIES = {"MODIFIERS": strat.MODIFIERS, "MUTATIONS": strat.MUTATIONS, "TRANSFORMS": mm.TRANSFORMS}


@pytest.mark.parametrize("name", REGISTRIES)
def test_every_entry_has_its_name_a_doc_a_function_and_declared_needs(name):
    reg = REGISTRIES[name]
    assert isinstance(reg, Registry) and len(reg) > 0
    for key, entry in reg.items():
        assert entry.name == key
        assert entry.doc and entry.doc[0] != " "
        assert isinstance(entry.needs, Needs)
        if name != "MODIFIERS":  # a modifier may only constrain the draw (fn None)
            assert callable(entry.fn), key


def test_unknown_name_names_the_registry_and_the_closest_entry():
    with pytest.raises(KeyError) as err:
        strat.MUTATIONS["target_at_least_c"]
    assert "no error mutation 'target_at_least_c' in MUTATIONS in conformance/mutations.py" in str(err.value)
    assert "did you mean 'target_at_least_C'" in str(err.value)


def test_an_entry_cannot_be_defined_twice():
    reg: Registry[Entry] = Registry("thing", "THINGS in here")
    reg.add(Entry("a", "one"))
    with pytest.raises(ValueError, match="thing 'a' is defined twice in THINGS in here"):
        reg.add(Entry("a", "again"))


def test_data_validation_is_a_declared_need_read_by_the_engine():
    """An adapter that cannot raise on data values is not asked exactly the error checks whose
    mutation declares data_validation, and is asked every other error check."""
    spec = load_default()
    adapter = resolve("numpy")
    adapter.capabilities = replace(adapter.capabilities, raises_on_invalid=False)
    ctx = Context(spec, adapter, profile="quick")
    declared = {m for m, e in strat.MUTATIONS.items() if e.needs.data_validation}
    assert declared == {"target_at_least_C", "target_negative_not_ignored"}
    skipped, asked = set(), set()
    for check in catalogue(spec):
        if check.kind != "error":
            continue
        make = spec.errors[check.id.split(".", 1)[1]].make
        why = _not_supported(ctx, check)
        (skipped if why == "the adapter declares that it cannot raise on data values" else asked).add(make)
    assert skipped == declared
    assert asked and not asked & declared


def test_needs_of_a_mutation_restrict_the_draw():
    """spatial_size_mismatch declares ranks 3-5: every valid case drawn for it has one."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    spec = load_default()
    ctx = Context(spec, resolve("numpy"), profile="quick")
    check = next(c for c in catalogue(spec) if c.id == "error.spatial_size_mismatch")
    ranks = []

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        out = check.example(ctx, data.draw)
        ranks.append(out.case.rank)

    run()
    assert ranks and set(ranks) <= {3, 4, 5}
