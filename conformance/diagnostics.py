"""What a person is told when their input is wrong: one error class, one did-you-mean, one YAML
locator.

Specs, adapter configs, known-divergence files, results files and command-line values all come
from people; a mistake in any of them must end as one message that says where (file, line,
column), what, and how to fix it, and never as a traceback. Every such error is a
:class:`UserError` (the modules keep their own subclasses, so callers can tell a spec from a
shard), the CLI catches the base class once and exits 2 (conformance/runner/cli.py), and the
helpers below are the only places that suggest spellings and find a value's line.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import yaml


class UserError(Exception):
    """A fault in what a person gave us; ``str()`` is the message to show them::

        file:line:col: message
          fix: what to do

    Every part but ``message`` is optional; a subclass whose messages already hold their fix
    (one line, ``...; fix: ...``) passes ``fix=None``."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None, fix: str | None = None):
        self.message, self.file, self.line, self.column, self.fix = message, file, line, column, fix
        super().__init__(self.render())

    @property
    def col(self) -> int | None:
        """The column under its older name (SpecError, YamlFileError)."""
        return self.column

    def location(self) -> str:
        """``file:line:col`` as far as it is known ("" without a file)."""
        if not self.file:
            return ""
        return self.file + (f":{self.line}" if self.line else "") + (f":{self.column}" if self.line and self.column
                                                                     else "")

    def render(self) -> str:
        loc = self.location()
        return (f"{loc}: " if loc else "") + self.message + (f"\n  fix: {self.fix}" if self.fix else "")


def close_matches(word: object, choices: Iterable[object], n: int = 1) -> list[str]:
    """The ``n`` choices closest to ``word`` (difflib's ratio of at least 0.6), best first."""
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)


def did_you_mean(word: object, choices: Iterable[object], *, n: int = 1, prefix: str = " (",
                 suffix: str = ")") -> str:
    """``" (did you mean 'x'?)"`` for the closest choices, or "" when none is close; ``prefix``
    and ``suffix`` place it in a sentence (``prefix="", suffix=" "`` starts a fix with it)."""
    close = close_matches(word, choices, n=n)
    if not close:
        return ""
    return f"{prefix}did you mean {', '.join(repr(c) for c in close)}?{suffix}"


class YamlLocator:
    """Where each value of a YAML document is: 1-based (line, column) by key path.

    Built on the node tree of :func:`conformance.safe_yaml.load` (the data's own nodes), so
    positions exist even for values a schema rejects. A path is a sequence of mapping keys and
    list indices; a path that goes further than the document ends at its deepest match (the
    enclosing value is the best place to point at)."""

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def walk(self, path: Sequence[object]) -> tuple[yaml.Node | None, yaml.Node | None, bool]:
        """(value node, key node, whether the whole path was found): the deepest match; for a
        key written twice the last one, as the loader keeps it."""
        node, key_node = self.root, None
        for part in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in reversed(node.value):
                    if getattr(k, "value", None) == str(part):
                        child = (v, k)
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child = (node.value[part], None)
            if child is None:
                return node, key_node, False
            node, key_node = child
        return node, key_node, True

    def node(self, path: Sequence[object]) -> yaml.Node | None:
        """The value node at ``path``, None when the path is not in the document."""
        node, _, found = self.walk(tuple(path))
        return node if found else None

    def at(self, path: Sequence[object], key: bool = False) -> tuple[int | None, int | None]:
        """1-based (line, column) of the value at ``path`` (of its key with ``key=True``)."""
        node, key_node, found = self.walk(tuple(path))
        target = key_node if (key and found and key_node is not None) else node
        if target is None:
            return None, None
        return target.start_mark.line + 1, target.start_mark.column + 1

    def line(self, path: Sequence[object]) -> int | None:
        """The line of ``path``'s key (a list item's own line), or of its deepest enclosing
        value; None for an empty document or the top level."""
        if not path or self.root is None:
            return None
        node, key_node, _ = self.walk(tuple(path))
        target = key_node if key_node is not None else node
        return None if target is None else target.start_mark.line + 1
