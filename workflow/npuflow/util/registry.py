"""timm-style registries: the things users extend (model sources, surgery passes, calibration
methods, NPU targets) are entries looked up by name, never branches in someone else's function."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from npuflow.util.errors import NpuflowError

T = TypeVar("T")


class UnknownName(NpuflowError, KeyError):
    """A name that no registry entry has; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return unknown_name_message(self.kind, name, self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """The entries in the order they were registered."""
        return list(self._entries.items())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def unknown_name_message(kind: str, name: object, known) -> str:
    # a name from a config may be any YAML scalar (`1:`, `null:`): matched as the text it reads as
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; known: {', '.join(sorted(known)[:20])}"
    return f"unknown {kind} {name!r}{hint}"
