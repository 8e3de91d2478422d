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
import hashlib
import json

from .errors import NpuflowError

DTYPES = ("int8", "int16", "float")
RANK = {"int8": 0, "int16": 1, "float": 2}
METADATA_KEY = "npuflow.node_precision"
DEFAULT_RECIPE = {"default": "int8"}
# Nodes that carry no arithmetic of their own; they take no part in a recipe.
_UNQUANTISED = {"QuantizeLinear", "DequantizeLinear", "Constant"}


class RecipeError(NpuflowError, ValueError):
    """A recipe names a layer or tensor the model does not have, or an unknown data type."""


def merge_recipe(base: dict | None, override: dict | None) -> dict:
    """A model's per-target override on top of the profile's recipe: op_types and layers are
    merged key by key, subgraphs appended, default replaced."""
    out = copy.deepcopy(base or DEFAULT_RECIPE)
    out.setdefault("default", "int8")
    for key, value in (override or {}).items():
        if key in ("op_types", "layers"):
            out[key] = {**out.get(key, {}), **value}
        elif key == "subgraphs":
            out[key] = out.get(key, []) + list(value)
        else:
            out[key] = value
    return {k: v for k, v in out.items() if v not in ({}, [])}


def recipe_id(recipe: dict) -> str:
    """A readable, file-name-safe id: the default type and the op-type changes (`int8`,
    `int8_Softmax-float`), plus a short content hash when layers or subgraphs are set."""
    recipe = {k: v for k, v in recipe.items() if v not in ({}, [])}
    parts = [recipe.get("default", "int8")] + [f"{op}-{dtype}" for op, dtype in sorted((recipe.get("op_types") or {}).items())]
    if recipe.get("weights") == "per_tensor":  # a target profile's quantization.weights (npuflow.plan)
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
    for key in ("op_types", "layers"):
        for name, dtype in (recipe.get(key) or {}).items():
            if dtype not in DTYPES:
                problems.append(f"{where}.{key}.{name}: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    for i, sub in enumerate(recipe.get("subgraphs") or []):
        if not isinstance(sub, dict) or not sub.get("start") or not sub.get("end") or sub.get("dtype") not in DTYPES:
            problems.append(f"{where}.subgraphs.{i}: expected {{start: [tensor, …], end: [tensor, …], dtype: int8|int16|float}}")
    unknown = set(recipe) - {"default", "op_types", "layers", "subgraphs"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (expected default, op_types, layers, subgraphs)")
    return problems


def _pattern_nodes(model, graph=None) -> dict[str, set[str]]:
    """{pattern op type: its nodes} for the fusion patterns found in the model (npuflow.sim.patterns):
    a recipe's `op_types: {Gelu: int16}` covers every node of each GELU written out with Erf, as the
    vendor compilers treat it as one op."""
    from .sim.graph import Graph
    from .sim.patterns import find

    found: dict[str, set[str]] = {}
    for m in find(graph if graph is not None else Graph(model, shapes=False)):
        found.setdefault(m.pattern, set()).update(n.name for n in m.members)
    return found


def _subgraph_nodes(graph, start: list[str], end: list[str]) -> set[str]:
    """Nodes on a path from any start tensor to any end tensor (inclusive of the end's producer)."""
    from .sim.graph import Index

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
    from .sim.patterns import PATTERNS

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
