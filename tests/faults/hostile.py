"""Helpers for the hostile-input tests: edit the shipped spec at a YAML path, and run the CLI.

Edits go through the node positions of the shipped file (not fixed line numbers or
patterns), so the tests keep working when the spec's text moves; each edit returns the
new text and the offset of the edit, from which the tests compute the line an error must
name.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from conformance.runner import cli
from conformance.spec import default_spec_path

SPEC_TEXT = default_spec_path().read_text()


def node_at(text: str, path: tuple) -> yaml.Node:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next(v for k, v in node.value if k.value == part)
        else:
            node = node.value[part]
    return node


def set_value(path: tuple, new: str, text: str = SPEC_TEXT) -> tuple[str, int]:
    """``text`` with the (scalar or flow) value at ``path`` replaced by the YAML ``new``."""
    node = node_at(text, path)
    start = node.start_mark.index
    end = start + len(text[start:node.end_mark.index].rstrip())
    return text[:start] + new + text[end:], start


def add_key(path: tuple, key: str, value: str, text: str = SPEC_TEXT) -> tuple[str, int]:
    """``text`` with ``key: value`` added to the mapping at ``path`` (flow or block style)."""
    node = node_at(text, path)
    if node.flow_style:
        close = text.rindex("}", node.start_mark.index, node.end_mark.index)
        return text[:close] + f", {key}: {value}" + text[close:], close + 2
    first = node.value[0][0]
    at = first.start_mark.index - first.start_mark.column
    return text[:at] + " " * first.start_mark.column + f"{key}: {value}\n" + text[at:], at


def prepend(block: str, text: str = SPEC_TEXT, *, at: str = "") -> tuple[str, int]:
    """``block`` (whole lines) put before the spec's first line; the offset is that of ``at``."""
    return block + text, block.index(at)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def run_cli(capsys, *argv: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of ``ce-conformance argv``."""
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = cli.main(list(argv))
    took = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return rc, out, err, took


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def billion_laughs(levels: int = 9, width: int = 9, key: str = "lol") -> str:
    """The classic alias bomb: ``levels`` lines, each ``width`` aliases of the line before."""
    lines = [f"{key}0: &{key}0 [" + ", ".join(["ha"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"{key}{i}: &{key}{i} [" + ", ".join([f"*{key}{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"
