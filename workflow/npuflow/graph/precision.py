"""Precision recipes: which data type each node of a model runs at on a target.

A recipe (a target profile's `precision:`, overridable per model and target in config.yaml) has a
default type and overrides by op type, by named layer (ONNX node name) and by subgraph (the nodes
between start and end tensors), with Pulsar2's priority: named layer > op type > subgraph >
default. Types are int8, int16 and float. The quantize stage and the simulator both use
`resolve_precision`, so the quantised model and the simulated build see the same recipe; the
quantised model carries the resolved map in its metadata (`npuflow.node_precision`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json

from npuflow.util.errors import NpuflowError
from npuflow.util.merge import merge_blocks

DTYPES = ("int8", "int16", "float")
WEIGHT_DTYPES = ("int8", "int16")  # a recipe's `weights`: the conv/matmul weights' type
RANK = {"int8": 0, "int16": 1, "float": 2}
# The keys of a recipe in the one-line grammar (`default=int16;weights=int8;Softmax=float`);
# every other word is an op type (of the ONNX standard, or a fusion pattern such as Gelu).
RECIPE_KEYS = ("default", "weights")
METADATA_KEY = "npuflow.node_precision"
DEFAULT_RECIPE = {"default": "int8"}
# Nodes that carry no arithmetic of their own; they take no part in a recipe.
_UNQUANTISED = {"QuantizeLinear", "DequantizeLinear", "Constant"}


class RecipeError(NpuflowError, ValueError):
    """A recipe names a layer or tensor the model does not have, or an unknown data type."""


def merge_recipe(base: dict | None, override: dict | None) -> dict:
    """A model's per-target override on top of the profile's recipe, by the config's one merge rule
    (npuflow.util.merge: op_types and layers merged key by key, default and weights replaced),
    except that subgraphs add up: the model's are appended to the profile's."""
    base, override = base or DEFAULT_RECIPE, override or {}
    out = merge_blocks({"default": "int8"}, base, {k: v for k, v in override.items() if k != "subgraphs"})
    if "subgraphs" in override:
        out["subgraphs"] = copy.deepcopy(base.get("subgraphs", [])) + copy.deepcopy(list(override["subgraphs"]))
    return {k: v for k, v in out.items() if v not in ({}, [])}


def weight_dtype(recipe: dict) -> str:
    """The weights' type: the recipe's `weights`, int8 unless it says int16."""
    return recipe.get("weights") or "int8"


def bits_name(recipe: dict) -> str:
    """The deployment's bit widths as vendors write them: `int8`, `w8a16` (int16 activations,
    int8 weights: AXERA's U16 models, the common case) or `a16w16` (both int16)."""
    default = recipe.get("default", "int8")
    if default == "int16":
        return "a16w16" if weight_dtype(recipe) == "int16" else "w8a16"
    return "int8" if weight_dtype(recipe) == "int8" else "w16a8"


def recipe_id(recipe: dict) -> str:
    """A readable, file-name-safe id: the bit widths (`int8`, `w8a16`, `a16w16`) and the op-type
    changes (`int8_Softmax-float`), plus a short content hash when layers or subgraphs are set."""
    recipe = {k: v for k, v in recipe.items() if v not in ({}, [])}
    parts = [bits_name(recipe)] + [f"{op}-{dtype}" for op, dtype in sorted((recipe.get("op_types") or {}).items())]
    if recipe.get("weight_granularity") == "per_tensor":  # a target profile's quantization.weights (npuflow.pipeline.plan)
        parts.append("wpt")
    if recipe.get("layers") or recipe.get("subgraphs"):
        parts.append("h" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8])
    return "_".join(parts)


def check_recipe(recipe: dict, where: str) -> list[str]:
    """Problems with a recipe's shape and types (names are checked against the model later)."""
    problems = []
    if recipe.get("default", "int8") not in ("int8", "int16"):
        problems.append(
            f"{where}.default: expected int8 or int16 (float-by-default is not a quantised model), got {recipe.get('default')!r}"
        )
    if recipe.get("weights", "int8") not in WEIGHT_DTYPES:
        problems.append(f"{where}.weights: expected one of {', '.join(WEIGHT_DTYPES)} (the weights' type), got {recipe.get('weights')!r}")
    for name in recipe.get("op_types") or {}:
        unknown = _op_type_problem(name)
        if unknown:
            problems.append(f"{where}.op_types.{name}: {unknown}")
    for key in ("op_types", "layers"):
        for name, dtype in (recipe.get(key) or {}).items():
            if dtype not in DTYPES:
                problems.append(f"{where}.{key}.{name}: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    for i, sub in enumerate(recipe.get("subgraphs") or []):
        if not isinstance(sub, dict) or not sub.get("start") or not sub.get("end") or sub.get("dtype") not in DTYPES:
            problems.append(f"{where}.subgraphs.{i}: expected {{start: [tensor, …], end: [tensor, …], dtype: int8|int16|float}}")
    unknown = set(recipe) - {"default", "weights", "op_types", "layers", "subgraphs", "weight_granularity"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (expected default, weights, op_types, layers, subgraphs)")
    return problems


@functools.cache
def known_op_types() -> frozenset[str]:
    """Op types a recipe may name: the ONNX standard's (every domain onnx ships) and the fusion
    patterns the simulator and the vendor compilers treat as one op (Gelu, LayerNorm, …)."""
    import onnx.defs

    from npuflow.graph.patterns import PATTERNS

    return frozenset({s.name for s in onnx.defs.get_all_schemas_with_history()} | set(PATTERNS.names()))


def _op_type_problem(word: str) -> str | None:
    """Why `word` is not an op type a recipe can set (None when it is), naming close matches."""
    import difflib

    known = known_op_types()
    if word in known:
        return None
    close = difflib.get_close_matches(str(word), sorted(known | set(RECIPE_KEYS)), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"not an ONNX op type, a fusion pattern, nor one of {', '.join(RECIPE_KEYS)}{hint}"


def parse_recipe_text(text: str) -> dict:
    """The one-line recipe grammar of the published CSV's `precision` column:
    `default=int16;weights=int8;Softmax=float` → {"default": "int16", "weights": "int8",
    "op_types": {"Softmax": "float"}}. Raises RecipeError naming the word at fault."""
    recipe: dict = {}
    op_types: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise RecipeError(f"precision {part!r}: expected key=dtype (default=, weights= or an op type)")
        if key in RECIPE_KEYS:
            recipe[key] = value
        else:
            problem = _op_type_problem(key)
            if problem:
                raise RecipeError(f"precision {key!r}: {problem}")
            op_types[key] = value
    if op_types:
        recipe["op_types"] = op_types
    problems = check_recipe(recipe, "precision")
    if problems:
        raise RecipeError("; ".join(problems))
    return recipe


def _pattern_nodes(model, graph=None) -> dict[str, set[str]]:
    """{pattern op type: its nodes} for the fusion patterns found in the model (npuflow.graph.patterns):
    a recipe's `op_types: {Gelu: int16}` covers every node of each GELU written out with Erf, as the
    vendor compilers treat it as one op."""
    from npuflow.graph.opgraph import Graph
    from npuflow.graph.patterns import find

    found: dict[str, set[str]] = {}
    for m in find(graph if graph is not None else Graph(model, shapes=False)):
        found.setdefault(m.pattern, set()).update(n.name for n in m.members)
    return found


def _subgraph_nodes(graph, start: list[str], end: list[str]) -> set[str]:
    """Nodes on a path from any start tensor to any end tensor (inclusive of the end's producer)."""
    from npuflow.graph.opgraph import Index

    index = Index.of_onnx(graph)
    producer = index.producer
    forward, stack = set(), list(start)
    while stack:
        for n in index.users(stack.pop()):
            if n.name not in forward:
                forward.add(n.name)
                stack.extend(n.output)
    backward, stack = set(), [producer[t] for t in end if t in producer]
    while stack:
        n = stack.pop()
        if n.name in backward:
            continue
        backward.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer and i not in start)
    return forward & backward


def resolve_precision(model, recipe: dict, where: str = "precision", graph=None) -> dict[str, str]:
    """{node name: dtype} for every arithmetic node of `model` under `recipe`. `graph`: the
    simulator's view of the model when the caller has one (patterns are found on it)."""
    sim_graph, graph = graph, model.graph
    nodes = [n for n in graph.node if n.op_type not in _UNQUANTISED]
    names = {n.name for n in nodes}
    tensors = {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.input}
    problems = []
    for layer in recipe.get("layers") or {}:
        if layer not in names:
            problems.append(f"{where}.layers.{layer}: no node of that name in the model")
    for i, sub in enumerate(recipe.get("subgraphs") or []):
        for t in list(sub["start"]) + list(sub["end"]):
            if t not in tensors:
                problems.append(f"{where}.subgraphs.{i}: no tensor {t!r} in the model")
    if problems:
        raise RecipeError("bad precision recipe:\n  " + "\n  ".join(problems))
    precision = {n.name: recipe.get("default", "int8") for n in nodes}
    for sub in recipe.get("subgraphs") or []:
        for name in _subgraph_nodes(graph, list(sub["start"]), list(sub["end"])) & names:
            precision[name] = sub["dtype"]
    op_types = dict(recipe.get("op_types") or {})
    # op types a recipe names that are patterns (Gelu, Swish, …) rather than single ONNX ops
    from npuflow.graph.patterns import PATTERNS

    patterned = {}
    if any(op_type in PATTERNS for op_type in op_types):
        for op_type, members in _pattern_nodes(model, sim_graph).items():
            if op_type in op_types:
                patterned.update(dict.fromkeys(members, op_types[op_type]))
    for n in nodes:
        if n.op_type in op_types:
            precision[n.name] = op_types[n.op_type]
        elif n.name in patterned:
            precision[n.name] = patterned[n.name]
    precision.update(recipe.get("layers") or {})
    return precision


def embedded_precision(model) -> dict[str, str] | None:
    """The node precision map a quantised model carries, if it was quantised by npuflow."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


def embed_precision(model, precision: dict[str, str], recipe: dict) -> None:
    for key, value in ((METADATA_KEY, json.dumps(precision, sort_keys=True)), ("npuflow.recipe", json.dumps(recipe, sort_keys=True))):
        prop = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        prop.key, prop.value = key, value
