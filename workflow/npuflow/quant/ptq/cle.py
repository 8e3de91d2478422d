"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization", §4.1).

For a Conv → (Relu | Clip(0, m)) → Conv pair, output channel i of the first conv and input channel
i of the second are rescaled by s_i = sqrt(r1_i / r2_i) (r: the channels' weight ranges), so
both get range sqrt(r1_i · r2_i): the first conv's weights and bias divide by s_i, the second's
weights multiply by it. ReLU is positively homogeneous, so the float model computes the same
function. ReLU6 is not: Clip(0, 6) becomes Relu → Min(bound_i) with bound_i = 6 / s_i per channel,
which keeps the float model exact (DFQ replaces ReLU6 by ReLU instead, changing the model). Depthwise
convs take part on either side (their input channel i is their output channel i), so MobileNetV2's
pointwise → depthwise → pointwise chains equalise across both pairs; sweeps repeat until the
scales settle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npuflow.quant.ptq.graph import Weights, attr, readers

SWEEPS = 8
SETTLED = 1e-3  # stop when no scale in a sweep moves further than this from 1


@dataclass
class Pair:
    first: object  # Conv node
    act: object  # Relu node (after the first sweep, a Clip(0, m) has become Relu)
    bound: str | None  # the Min's per-channel bound initializer (a former Clip), or None
    second: object  # Conv node


def _conv_ok(node, weights: Weights) -> bool:
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    w = weights.get(node.input[1])
    group = int(attr(node, "group", 1))
    return group == 1 or (group == w.shape[0] and w.shape[1] == 1)  # dense or depthwise


def _single_reader(rd, tensor: str):
    users = rd.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _clip_bounds(node, weights: Weights) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants."""
    if len(node.input) >= 3 and all(node.input[i] in weights for i in (1, 2) if node.input[i]):
        lo = float(weights.get(node.input[1])) if node.input[1] else -np.inf
        hi = float(weights.get(node.input[2])) if len(node.input) > 2 and node.input[2] else np.inf
        return lo, hi
    if attr(node, "max") is not None:
        return float(attr(node, "min", -np.inf)), float(attr(node, "max"))
    return None


def find_pairs(model, weights: Weights) -> list[Pair]:
    """Conv → Relu/ReLU6 (→ Min bound) → Conv chains where each tensor between has one reader."""
    rd = readers(model)
    pairs = []
    for first in model.graph.node:
        if not _conv_ok(first, weights):
            continue
        act = _single_reader(rd, first.output[0])
        if act is None or act.op_type not in ("Relu", "Clip"):
            continue
        if act.op_type == "Clip":
            bounds = _clip_bounds(act, weights)
            if bounds is None or bounds[0] != 0.0 or not np.isfinite(bounds[1]):
                continue
        out, bound = act.output[0], None
        nxt = _single_reader(rd, out)
        if act.op_type == "Relu" and nxt is not None and nxt.op_type == "Min" and len(nxt.input) == 2 and nxt.input[1] in weights:
            bound, out = nxt.input[1], nxt.output[0]
            nxt = _single_reader(rd, out)
        if _conv_ok(nxt, weights) and nxt.input[0] == out:
            pairs.append(Pair(first, act, bound, nxt))
    return pairs


def _relu6_to_relu_min(model, weights: Weights, pairs: list[Pair]) -> None:
    """Each pair's Clip(0, m) → Relu → Min(bound), a per-channel bound (m everywhere, to begin
    with). One rebuild of the node list (its messages are copied, so no pair survives it)."""
    from onnx import helper

    replace = {}
    for p in pairs:
        _, hi = _clip_bounds(p.act, weights)
        channels = weights.get(p.first.input[1]).shape[0]
        base = p.act.name or p.act.output[0]
        bound = weights.unique_name(f"{base}_cle_bound")
        weights.set(bound, np.full((channels, 1, 1), hi, np.float32))
        relu_out = f"{p.act.output[0]}_cle_relu"
        replace[p.act.output[0]] = [
            helper.make_node("Relu", [p.act.input[0]], [relu_out], name=f"{base}_cle_relu"),
            helper.make_node("Min", [relu_out, bound], [p.act.output[0]], name=f"{base}_cle_bound"),
        ]
    nodes = []
    for n in model.graph.node:
        nodes.extend(replace.get(n.output[0], [n]) if n.op_type == "Clip" else [n])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _input_ranges(w2: np.ndarray, depthwise: bool) -> np.ndarray:
    if depthwise:
        return np.max(np.abs(w2.reshape(w2.shape[0], -1)), axis=1)
    return np.max(np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)), axis=1)


def equalise(model, weights: Weights) -> dict:
    """Equalise every pair in place; the pairs, sweeps and the largest scale applied."""
    relu6 = [p for p in find_pairs(model, weights) if p.act.op_type == "Clip"]
    if relu6:
        _relu6_to_relu_min(model, weights, relu6)
    pairs = find_pairs(model, weights)
    for p in pairs:  # each pair rescales constants of its own
        for node in (p.first, p.second):
            for i in range(1, len(node.input)):
                if node.input[i]:
                    weights.private(node, i)
    sweeps, spread = 0, 1.0
    for sweeps in range(1, SWEEPS + 1):  # noqa: B007 (reported)
        moved = 0.0
        for p in pairs:
            w1, w2 = weights.get(p.first.input[1]), weights.get(p.second.input[1])
            depthwise = int(attr(p.second, "group", 1)) > 1
            r1 = np.max(np.abs(w1.reshape(w1.shape[0], -1)), axis=1)
            r2 = _input_ranges(w2, depthwise)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0).astype(np.float32)
            shape1 = [-1] + [1] * (w1.ndim - 1)
            weights.set(p.first.input[1], w1 / s.reshape(shape1))
            if len(p.first.input) > 2 and p.first.input[2]:
                weights.set(p.first.input[2], weights.get(p.first.input[2]) / s)
            if p.bound:
                weights.set(p.bound, weights.get(p.bound) / s.reshape(-1, 1, 1))
            shape2 = [-1] + [1] * (w2.ndim - 1) if depthwise else [1, -1] + [1] * (w2.ndim - 2)
            weights.set(p.second.input[1], w2 * s.reshape(shape2))
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
            spread = max(spread, float(np.max(s)), float(1 / np.min(s)))
        if moved < SETTLED:
            break
    return {
        "pairs": len(pairs),
        "sweeps": sweeps,
        "relu6_bounds": sum(p.bound is not None for p in pairs),
        "largest_scale": round(spread, 3),
    }
