"""ce-conformance: a property-based conformance suite for cross-entropy loss.

The package reads as a pipeline, one module per stage:
spec (load + validate) -> formula/oracle (exact values) -> strategies (Hypothesis inputs)
-> adapters (implementations under test) -> compare (tolerances, verdicts)
-> checks (what is asked of every adapter) -> engine (a check under Hypothesis).
The runner (:mod:`conformance.runner`) drives it: CLI, pytest plugin, workers, results, report.
"""
__version__ = "0.3.0.dev0"
