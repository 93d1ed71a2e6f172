"""The runner: what drives the pipeline and records what it says.

The pipeline modules (``conformance/*.py``: spec, oracle, strategies, compare, checks, engine)
turn the spec into verdicts for one adapter and one check; everything here runs them at the
scale of a run and talks to people and files: the command line (``cli``, ``spec_cli``, the
option table ``options``), the pytest plugin and its per-run session (``pytest_plugin``,
``session``), worker processes (``worker``, ``isolation``), results files, shards and example
databases (``results``, ``merge``, ``shard``, ``database``) and what is written for people
(``repro``, ``report``, ``bench``). Runner modules may import pipeline modules; pipeline
modules import nothing from here except the example database (``engine`` builds it).
"""
