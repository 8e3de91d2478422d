"""The record base class: a stage's JSON report read by attribute, keys it does not name kept (`extra`), a
missing one named."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from npuflow.util.errors import NpuflowError
from npuflow.util.io import read_json, write_json


class RecordError(NpuflowError):
    """A stage report without a key its record needs: written by another version of the stage."""


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of the stage reports. A field with no default is a key every report has (its value may
    be null); a field defaulting to None is written only when set."""

    # Keys of the file the record does not name, kept so that writing it back loses nothing.
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    # Fields holding records: {field: (record type, "one" | "list" | "dict")}.
    NESTED: ClassVar[dict[str, tuple[type[Record], str]]] = {}

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> typing.Self:
        if not isinstance(data, dict):
            raise RecordError(f"{where or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        required = {
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise RecordError(f"{where or 'report'}: not a {cls.__name__} (no {', '.join(missing)})")
        kwargs = {k: cls._nested(k, v, where) for k, v in data.items() if k in names}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def _nested(cls, name: str, value, where: str):
        kind, shape = cls.NESTED.get(name, (None, ""))
        if kind is None or value is None:
            return value
        if shape == "list":
            return [kind.from_json(v, f"{where}.{name}.{i}") for i, v in enumerate(value)]
        if shape == "dict":
            return {k: kind.from_json(v, f"{where}.{name}.{k}") for k, v in value.items()}
        return kind.from_json(value, f"{where}.{name}")

    @classmethod
    def read(cls, path: str | Path) -> typing.Self:
        return cls.from_json(read_json(path), str(path))

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = _plain(value)
        return {**out, **self.extra}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())


def _plain(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
