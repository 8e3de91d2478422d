"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

An activation x feeding MatMul/Gemm layers with constant weights is divided per input channel k
by s_k = max|x_k|^α / max|W_k|^(1−α) and the weights' row k multiplied by it, so x·W is unchanged
while x's per-tensor int8 range shrinks to its typical channels. The division is folded into the
LayerNormalization that produces x (its scale and bias), as the paper does for the QKV and FC1
layers, so the graph keeps its ops; data moves between the norm and the MatMuls (Swin's window
partition: Reshape, Transpose, Slice, Concat, zero Pad) keep the channel axis last and pass the
scaling through. Activations with no such norm are left alone."""

from __future__ import annotations

import numpy as np

from npuflow.quant.ptq.graph import Weights, attr, readers, run_exposing

PASS_THROUGH = {"Reshape", "Transpose", "Slice", "Concat", "Pad", "Identity", "Squeeze", "Unsqueeze"}
SCALE_LIMITS = (1e-5, 1e5)


def _last_dims(model) -> dict[str, tuple[int, int]]:
    """(rank, last dim) of every tensor shape inference knows."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    out = {}
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            out[vi.name] = (len(dims), dims[-1].dim_value)
    return out


def _keeps_channels_last(node, weights: Weights, shapes, channels: int) -> bool:
    rank_last = shapes.get(node.output[0])
    if rank_last is None or rank_last[1] != channels:
        return False
    rank = rank_last[0]
    if node.op_type == "Transpose":
        perm = attr(node, "perm")
        return perm is not None and perm[-1] == len(perm) - 1
    if node.op_type == "Concat":
        return attr(node, "axis") % rank != rank - 1
    if node.op_type == "Slice":
        axes = weights.get(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] in weights else None
        return axes is not None and all(a % rank != rank - 1 for a in axes)
    if node.op_type == "Pad":
        mode = attr(node, "mode", b"constant")
        value_ok = len(node.input) < 3 or not node.input[2] or (node.input[2] in weights and float(weights.get(node.input[2])) == 0.0)
        return mode in (b"constant", "constant") and value_ok
    return True


def find_groups(model, weights: Weights) -> list[dict]:
    """Per LayerNormalization whose output reaches only MatMul/Gemm weights (through data moves):
    the norm, the matmuls and the tensor to measure."""
    rd = readers(model)
    shapes = _last_dims(model)
    groups = []
    for ln in model.graph.node:
        if ln.op_type != "LayerNormalization" or attr(ln, "axis", -1) != -1 or len(ln.input) < 3:
            continue
        if ln.input[1] not in weights or ln.input[2] not in weights:
            continue
        channels = weights.get(ln.input[1]).shape[-1]
        reached, frontier, matmuls, ok = {ln.output[0]}, [ln.output[0]], [], True
        while frontier and ok:
            t = frontier.pop()
            for user in rd.get(t, []):
                if user is None:
                    ok = False
                elif (
                    user.op_type == "MatMul" and user.input[0] == t and user.input[1] in weights and weights.get(user.input[1]).ndim == 2
                ) or (user.op_type == "Gemm" and user.input[0] == t and user.input[1] in weights and not attr(user, "transA", 0)):
                    matmuls.append(user)
                elif user.op_type in PASS_THROUGH and user.input[0] == t and _keeps_channels_last(user, weights, shapes, channels):
                    if user.output[0] not in reached:
                        reached.add(user.output[0])
                        frontier.append(user.output[0])
                    if user.op_type == "Concat" and not all(i in reached or i in weights for i in user.input):
                        ok = False
                else:
                    ok = False
        if ok and matmuls:
            groups.append({"norm": ln, "matmuls": list({id(m): m for m in matmuls}.values()), "channels": channels})
    return groups


def _weight_rows(node, weights: Weights) -> np.ndarray:
    """The weight as [K (input channels), N]."""
    w = weights.get(node.input[1])
    return w.T if node.op_type == "Gemm" and attr(node, "transB", 0) else w


def smooth(model, weights: Weights, images: np.ndarray, alpha: float) -> dict:
    groups = find_groups(model, weights)
    tensors = [g["norm"].output[0] for g in groups]

    def reduce(t, v, prev):
        m = np.max(np.abs(v.reshape(-1, v.shape[-1])), axis=0)
        return m if prev is None else np.maximum(prev, m)

    act_max = run_exposing(model, images, tensors, reduce) if tensors else {}
    before, after = [], []
    for g in groups:
        a = act_max[g["norm"].output[0]].astype(np.float64)
        w = np.max(np.stack([np.max(np.abs(_weight_rows(m, weights)), axis=1) for m in g["matmuls"]]), axis=0).astype(np.float64)
        s = np.where((a > 0) & (w > 0), a**alpha / np.maximum(w, 1e-30) ** (1 - alpha), 1.0)
        s = np.clip(s, *SCALE_LIMITS).astype(np.float32)
        ln = g["norm"]
        for i in (1, 2):  # constants of its own (equal ones may be shared after onnxsim)
            weights.private(ln, i)
        for m in g["matmuls"]:
            weights.private(m, 1)
        weights.set(ln.input[1], weights.get(ln.input[1]) / s)
        weights.set(ln.input[2], weights.get(ln.input[2]) / s)
        for m in g["matmuls"]:
            wm = weights.get(m.input[1])
            weights.set(m.input[1], wm * (s[None, :] if m.op_type == "Gemm" and attr(m, "transB", 0) else s[:, None]))
        before.append(float(a.max() / max(np.median(a), 1e-30)))
        after.append(float((a / s).max() / max(np.median(a / s), 1e-30)))
    return {
        "norms": len(groups),
        "matmuls": sum(len(g["matmuls"]) for g in groups),
        "alpha": alpha,
        # how far the largest channel sticks out of the typical one, in the smoothed activations
        "activation_outlier_ratio_before": round(max(before), 3) if before else None,
        "activation_outlier_ratio_after": round(max(after), 3) if after else None,
    }
