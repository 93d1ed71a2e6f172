"""One option table (conformance/runner/options.py) drives both the CLI's ``run`` arguments and
the pytest plugin's ``--ce-*`` options: every shared option exists in both, with the same
default, help, choices and type, and the CLI hands each given value to the plugin."""
import argparse

import pytest

from conformance.runner import cli
from conformance.runner.options import OPTIONS, SHARED, plugin_args, plugin_dest


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def _pytest_options(pytestconfig) -> dict:
    """The plugin's options as pytest registered them, by flag."""
    group = pytestconfig._parser.getgroup("ce-conformance")
    return {o.names()[0]: o for o in group.options}


def test_every_option_is_in_the_cli_with_its_table_entry():
    actions = {a.dest: a for a in _run_parser()._actions}
    for o in OPTIONS:
        a = actions[o.dest]
        assert tuple(a.option_strings) == o.cli_flags
        assert (a.default, a.help) == (o.default, o.help), o.dest
        assert a.choices == (list(o.choices) if o.choices else None), o.dest
        assert a.type is o.type, o.dest


def test_every_shared_option_is_in_the_plugin_with_the_same_default_and_help(pytestconfig):
    registered = _pytest_options(pytestconfig)
    assert set(registered) == {o.pytest_flag for o in SHARED.values()}
    cli_actions = {a.dest: a for a in _run_parser()._actions}
    for o in SHARED.values():
        p = registered[o.pytest_flag]
        assert p.dest == plugin_dest(o.dest)
        assert p.default == cli_actions[o.dest].default == o.default, o.dest
        assert p.attrs()["help"] == cli_actions[o.dest].help == o.help, o.dest
        assert pytestconfig.getoption(p.dest) == o.default, o.dest


def test_cli_only_options_are_not_sent_to_the_plugin():
    cli_only = {o.dest for o in OPTIONS if o.pytest_flag is None}
    assert cli_only == {"workers", "no_report", "verbose"}


@pytest.mark.parametrize("argv,expected", [
    ([], []),
    (["--profile", "quick", "--ci", "--seed", "3"], ["--ce-profile=quick", "--ce-seed=3", "--ce-derandomize"]),
    (["--adapter", "numpy", "--adapter", "x.yaml", "--check", "forward"],
     ["--ce-adapter=numpy", "--ce-adapter=x.yaml", "--ce-check=forward"]),
    (["--timeout", "5", "--no-isolation", "--shard", "1/2", "-n", "2", "-v"],
     ["--ce-timeout=5.0", "--ce-no-isolation", "--ce-shard=1/2"]),
])
def test_the_cli_hands_what_it_was_given_to_the_plugin(argv, expected):
    args = cli._parser().parse_args(["run", *argv])
    assert sorted(plugin_args(args)) == sorted(expected)
