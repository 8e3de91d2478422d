"""What a name in the config may be. Model, target, profile and dataset names (and the precision
op types that recipe ids are made of) become folder and file names, Snakemake wildcards, MLflow
run names and command arguments: a name is data, so it is checked against NAME_PATTERN when the
config is read, and the workflow's wildcard constraints come from the same definition."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# Letters, digits, '_', '-' and '.', starting with a letter or digit: no '/', '\', spaces, quotes
# or shell characters. No lookaround, so it can sit inside a wildcard's regex. '..' is refused by
# `is_name` apart from the pattern (it would take a lookahead, which inside a wildcard's regex
# would look past the wildcard into the rest of the path).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_NAME_LENGTH = 100
NAME_RE = re.compile(NAME_PATTERN)
EXPECTED = (
    f"letters, digits, '_', '-' and '.', starting with a letter or digit, no '..', at most {MAX_NAME_LENGTH} characters "
    "(names become folder and file names and command arguments)"
)

# Where the config holds names: (dotted path, with * for any key; what of it is a name).
# "keys": the mapping's keys; "items": a list's items; "value": the string itself.
NAME_FIELDS = (
    ("models", "keys"),
    ("datasets", "keys"),
    ("target_profiles", "keys"),
    ("targets", "items"),
    ("calibration.dataset", "value"),
    ("evaluation.dataset", "value"),
    ("target_profiles.*.precision.op_types", "keys"),
    ("models.*.targets", "items"),
    ("models.*.calibration.dataset", "value"),
    ("models.*.precision", "keys"),
    ("models.*.precision.*.op_types", "keys"),
    ("models.*.mixed_precision.targets", "items"),
)


def field_path(parts: Iterable) -> str:
    """A dotted field path (`models.m.input.shape`) on one line, whatever its keys: a key that is
    not plain printable text (a newline or a space at either end in it, an empty one, or a key
    that YAML read as a number or null) is shown as Python writes it ('a\\nb', '', None), so that
    one problem stays one line and names its field."""
    return ".".join(p if isinstance(p, str) and p.isprintable() and p.strip() == p and p else repr(p) for p in parts)


def is_name(text: object, max_length: int | None = MAX_NAME_LENGTH) -> bool:
    """Whether `text` is a name (`max_length` None: of any length, as the recipe ids made of names)."""
    return (
        isinstance(text, str)
        and NAME_RE.fullmatch(text) is not None
        and ".." not in text
        and (max_length is None or len(text) <= max_length)
    )


def _sites(node: object, parts: list[str], where: str) -> Iterator[tuple[str, object]]:
    """(dotted path, node) of every node at `parts` under `node` (`*`: every key of a mapping)."""
    if not parts:
        yield where, node
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        yield from _sites(node[key], rest, field_path([where, key]) if where else field_path([key]))


def name_problems(config: dict) -> list[str]:
    """One line per name in `config` that is not a name (NAME_FIELDS), naming the field. Profile
    keys may start with '_': such a profile is a base for others, never a target."""
    problems = []
    for path, kind in NAME_FIELDS:
        for where, node in _sites(config, path.split("."), ""):
            if kind == "keys" and isinstance(node, dict):
                for key in node:
                    name = key.removeprefix("_") if path == "target_profiles" and isinstance(key, str) else key
                    if not is_name(name):
                        problems.append(f"{where}: the entry {key!r} is not a usable name; expected {EXPECTED}")
            elif kind == "items" and isinstance(node, list):
                problems += [
                    f"{where}.{i}: {item!r} is not a usable name; expected {EXPECTED}" for i, item in enumerate(node) if not is_name(item)
                ]
            elif kind == "value" and isinstance(node, str) and not is_name(node):
                problems.append(f"{where}: {node!r} is not a usable name; expected {EXPECTED}")
    return problems


def wildcard_constraint(names: Iterable[str]) -> str:
    """A Snakemake wildcard constraint matching exactly `names`, each of which must be a name.
    Exact names, not NAME_PATTERN itself: a wildcard that takes any name makes outputs such as
    eval/{recipe}.json and eval/{recipe}.layers.json match one file. No names: it matches nothing."""
    names = list(names)
    bad = [n for n in names if not is_name(n, max_length=None)]
    if bad:
        raise ValueError(f"not names, so not wildcard values: {', '.join(map(repr, bad))}")
    return "|".join(re.escape(n) for n in names) or "(?!)"
