"""The run's options, written once: ``ce-conformance run``'s arguments and the pytest plugin's
``--ce-*`` options are both built from :data:`OPTIONS`.

The CLI hands every option to the pytest plugin it starts (:func:`plugin_args`), and the
plugin is also used on its own (``pytest --pyargs conformance.suite --ce-adapter NAME``), so the
two sets must agree on meaning, default and help; one table makes that true by construction
(tests/test_options.py checks both parsers against it). Options that only the CLI has (how
pytest itself is run: ``-n``, ``-v``, ``--no-report``) are marked ``pytest_flag=None``.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROFILES = ("quick", "default", "thorough")


@dataclass(frozen=True)
class Option:
    """One option of a run: ``dest`` is its name in both parsers' results."""

    dest: str
    #: The CLI's spellings (``run`` subcommand), e.g. ("-n", "--workers").
    cli_flags: tuple[str, ...]
    help: str
    #: The pytest plugin's spelling, None for an option of the CLI only.
    pytest_flag: str | None = None
    default: Any = None
    #: argparse/pytest action: None (a value), "store_true" or "append".
    action: str | None = None
    type: type | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``argparse.add_argument`` and pytest's ``addoption`` alike."""
        kw: dict[str, Any] = {"help": self.help, "default": self.default}
        for key in ("action", "type", "choices", "metavar"):
            value = getattr(self, key)
            if value is not None:
                kw[key] = list(value) if key == "choices" else value
        return kw


_DB = "DIR|redis://HOST:PORT/DB|github:OWNER/REPO"

OPTIONS: tuple[Option, ...] = (
    Option("adapter", ("--adapter",), "adapter under test (repeatable): a builtin, pkg.module:attr, "
           "jax:/numpy:pkg.module:attr or an adapter config file (docs/gating.md); default: every built-in",
           "--ce-adapter", default=[], action="append", metavar="NAME|IMPORT.PATH:ATTR|CONFIG.yaml"),
    Option("profile", ("--profile",), "examples per check (conformance/checks.py: PROFILES)", "--ce-profile",
           default="default", choices=PROFILES),
    Option("seed", ("--seed",), "Hypothesis seed (default: random, recorded in results.json)", "--ce-seed",
           type=int),
    Option("derandomize", ("--ci",), "derandomised: the same examples on every run", "--ce-derandomize",
           default=False, action="store_true"),
    Option("out", ("--out",), "folder for results.json, junit.xml, failures/, repro/ and the report",
           "--ce-out", default="reports"),
    Option("spec", ("--spec",), "spec file (default: the packaged specs/cross_entropy.yaml)", "--ce-spec"),
    Option("known", ("--known",), "known-divergence file (repeatable; default: the shipped files for the "
           "built-ins, conformance/known/)", "--ce-known", action="append"),
    Option("strict", ("--strict",), "known divergences and permissive SHOULD clauses fail the run too",
           "--ce-strict", default=False, action="store_true"),
    Option("baseline", ("--baseline",), "results.json of an earlier run: fail only on what is new there",
           "--ce-baseline"),
    Option("check", ("--check",), "only checks whose id starts with this (repeatable)", "--ce-check",
           default=[], action="append"),
    Option("timeout", ("--timeout",), "per-check timeout of an adapter's worker process; a hung adapter "
           "costs one timeout, then its remaining checks are errors", "--ce-timeout", default=600.0,
           type=float, metavar="SECONDS"),
    Option("no_isolation", ("--no-isolation",), "run adapters in this process: no worker processes, no "
           "crash containment, no timeout", "--ce-no-isolation", default=False, action="store_true"),
    Option("shard", ("--shard",), "run shard I of N (items split by expected cost: "
           "conformance/runner/shard.py); merge with: ce-conformance report */results.json", "--ce-shard",
           metavar="I/N"),
    Option("database", ("--database",), "Hypothesis example database read and written (repeatable; "
           "default .hypothesis/ce-conformance)", "--ce-database", default=[], action="append", metavar=_DB),
    Option("database_readonly", ("--database-readonly",), "example database only read (repeatable): "
           "replay what CI found, write nothing there", "--ce-database-readonly", default=[], action="append",
           metavar=_DB),
    # the CLI's own: how pytest is run
    Option("workers", ("-n", "--workers"), "pytest-xdist workers (e.g. auto)"),
    Option("no_report", ("--no-report",), "skip the HTML report", default=False, action="store_true"),
    Option("verbose", ("-v", "--verbose"), "also show pytest's own output (one line per adapter x check "
           "item, its summary)", default=False, action="store_true"),
)

#: The options the pytest plugin has, by dest.
SHARED = {o.dest: o for o in OPTIONS if o.pytest_flag}


def plugin_dest(dest: str) -> str:
    """The option's name in pytest's namespace: prefixed, so that no other plugin's ``timeout``
    or ``seed`` can collide with it."""
    return "ce_" + dest


def add_to_argparse(parser: argparse.ArgumentParser) -> None:
    """Every option as an argument of ``ce-conformance run``."""
    for o in OPTIONS:
        parser.add_argument(*o.cli_flags, dest=o.dest, **o.kwargs())


def add_to_pytest(parser: Any) -> None:
    """The shared options as pytest options (``pytest_addoption``), in their own group."""
    group = parser.getgroup("ce-conformance", "cross-entropy conformance")
    for o in SHARED.values():
        assert o.pytest_flag is not None
        group.addoption(o.pytest_flag, dest=plugin_dest(o.dest), **o.kwargs())


def plugin_args(values: argparse.Namespace, *, skip: Sequence[str] = ()) -> list[str]:
    """The plugin's arguments for the shared options the CLI was given (defaults left out, so
    the plugin's own defaults, the same ones, apply)."""
    out: list[str] = []
    for o in SHARED.values():
        if o.dest in skip:
            continue
        value = getattr(values, o.dest)
        flag = str(o.pytest_flag)  # SHARED holds only options that have one
        if o.action == "store_true":
            out += [flag] if value else []
        elif o.action == "append":
            out += [f"{o.pytest_flag}={v}" for v in value or ()]
        elif value is not None and value != o.default:
            out.append(f"{o.pytest_flag}={value}")
    return [a for a in out if a]
