"""Reading a config file: YAML or JSON, refusing keys given twice and aliases that expand too far."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from npuflow.util.errors import ConfigError

# A YAML alias repeats a node without copying it; validation and the per-job specs expand it.
# A config larger than this once expanded is refused (a "billion laughs" file would hang them).
MAX_CONFIG_NODES = 1_000_000


def load_yaml(path: str | Path):
    """YAML as yaml.safe_load reads it (JSON as json does, below), but refusing what it would silently get wrong: a key
    given twice in one mapping (PyYAML keeps the last, so two models of one name would be one),
    and aliases that expand beyond MAX_CONFIG_NODES."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise ConfigError(f"{path}: no such file{where}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file: {e}") from None
    # JSON is YAML only without tabs: a .json file, or one that opens with '{', is read as JSON.
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _load_json(text, path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _check_nodes(loader, node, path, [], {}) > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES} values once its YAML aliases are expanded; refused")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    finally:
        loader.dispose()


def _load_json(text: str, path: Path):
    """JSON, refusing a key given twice in one object as load_yaml does (json keeps the last)."""

    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise ConfigError(f"{path}: the key {twice!r} is given twice in one object; JSON readers keep only the last one")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, the problem, and what it was parsing there."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).split())
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context and error.context_mark is not None:
        text += f" ({error.context} from line {error.context_mark.line + 1})"
    return text


def _check_nodes(loader, node, path: Path, where: list[str], sizes: dict) -> int:
    """Refuse duplicate keys (naming the field and both lines); return the node's expanded size."""
    if id(node) in sizes:  # an alias: its size is known (None while it is being walked: a cycle)
        if sizes[id(node)] is None:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: {'.'.join(where) or '(top level)'}: a YAML alias that contains itself; refused"
            )
        return sizes[id(node)]
    sizes[id(node)] = None
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                size += _check_nodes(loader, value_node, path, where, sizes)
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            field = ".".join([*where, str(key)])
            if key in seen:
                raise ConfigError(
                    f"{field}: given twice in {path} (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "YAML would silently keep only the last one. Rename or remove one"
                )
            seen[key] = key_node.start_mark.line + 1
            size += _check_nodes(loader, value_node, path, [*where, str(key)], sizes)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_check_nodes(loader, v, path, [*where, str(i)], sizes) for i, v in enumerate(node.value))
    sizes[id(node)] = size
    return size
