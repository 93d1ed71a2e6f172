"""One form for the three vocabularies the spec names by string: modifiers
(``special_cases.*.make``), mutations (``errors.*.make``) and metamorphic transforms
(``metamorphic.*.transform``).

Each entry is a name, a line of documentation, a function and what it needs. The needs are
declared, not guessed from names: the draw reads which target kinds and ranks an entry
applies to, the catalogue reads which adapter features and extensions a check then needs,
and the engine reads whether the adapter must be able to reject data values
(``data_validation``: a class index out of range is only seen in the data, which a kernel
that never inspects its labels cannot report). A spec that names an entry that does not
exist is refused at load time with the registry's own did-you-mean (conformance/spec.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .diagnostics import did_you_mean


@dataclass(frozen=True)
class Needs:
    """What an entry needs; an empty tuple means "any"."""

    #: Adapter features (``Capabilities.features``) without which the entry does not concern the adapter.
    features: tuple[str, ...] = ()
    #: Spec extensions the adapter must declare.
    extensions: tuple[str, ...] = ()
    #: Target kinds a case must have for the entry to apply (drawn only from these).
    target_kinds: tuple[str, ...] = ()
    #: Input ranks a case must have for the entry to apply (drawn only from these).
    ranks: tuple[int, ...] = ()
    #: The adapter must be able to raise on data values (``Capabilities.raises_on_invalid``).
    data_validation: bool = False


@dataclass(frozen=True)
class Entry:
    """One named entry: ``fn``'s signature is the registry's (see each registry's doc)."""

    name: str
    doc: str
    fn: Callable[..., Any] | None = None
    needs: Needs = Needs()


@dataclass(frozen=True)
class Modifier(Entry):
    """A special case's shape of input: constraints on the draw (``force``: fields of
    conformance/modifiers.py ``Constraints``, which conformance/strategies.py reads) plus
    ``fn(draw, env)`` applied to the finished arrays."""

    force: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transform(Entry):
    """A metamorphic transform: ``fn(case, draw)`` -> (transformed case, output mapping) or None.
    ``permutes_positions``: the outputs correspond through a permutation of positions, the only
    kind a spec relation ``permuted`` may name (conformance/spec.py checks it)."""

    permutes_positions: bool = False


E = TypeVar("E", bound=Entry)


class Registry(Mapping[str, E], Generic[E]):
    """Entries by name, in the order they were added; a lookup of an unknown name says which
    registry, where it is defined, and the closest name."""

    def __init__(self, kind: str, where: str):
        self.kind, self.where = kind, where
        self._entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is defined twice in {self.where}")
        self._entries[entry.name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no {self.kind} {name!r} in {self.where}{did_you_mean(name, self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
