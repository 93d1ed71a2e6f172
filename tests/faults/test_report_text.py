"""Adapter names are text everywhere in the HTML report: a name with ``$…$`` (matplotlib math
text, unbalanced or not) still gets its accuracy plot, with the dollar signs shown as such."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from conformance.runner.results import SCHEMA  # noqa: E402

from .hostile import run_cli  # noqa: E402


@pytest.mark.parametrize("name", ["$x^2$", "cost $5", r"$\frac{a}{b", "a$b$c$"])
def test_dollar_signs_in_an_adapter_name_do_not_stop_the_report(capsys, tmp_path, name):
    doc = {"schema": SCHEMA, "spec": {}, "run": {"adapters": [{"name": name}]}, "summary": {},
           "results": [{"id": f"{name}::forward.index", "adapter": name, "check": "forward.index",
                        "status": "passed", "message": "", "ratios": {"float32": [0.1, 0.5, 0.9]}}]}
    f = tmp_path / "results.json"
    f.write_text(json.dumps(doc))
    rc, out, err, _ = run_cli(capsys, "report", str(f), "--out", str(tmp_path / "rep"))
    assert rc == 0, err
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<svg" in html                      # the plot was drawn
    assert f"{name} float32 (3 values" in html.replace("&#34;", '"')  # its title, dollars as text
