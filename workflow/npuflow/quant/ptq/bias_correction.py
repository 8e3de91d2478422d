"""Bias correction (Nagel et al. 2019 §4.2, empirical form; Finkelstein et al. 2019).

Quantised weights W_q = W + ΔW shift a layer's expected output by ΔW · E[x]. With E[x] per input
channel measured on the calibration images (the float model's activations), each Conv, Gemm and
MatMul-with-bias gets b ← b − ΔW · E[x], where ΔW is the error of the weight quantisation the
quantiser will apply (symmetric int8, per channel or per tensor as configured). The spatial mean
stands in for each kernel tap's mean (zero padding at the borders is the difference).

Verified by measurement: every corrected layer's per-channel output mean, with quantised weights,
against the float model's, on the same images, before and after; the correction must reduce it."""

from __future__ import annotations

import numpy as np

from npuflow.quant.ptq.graph import Layer, Weights, channel_axis, copy_model, quantise_weight, readers, run_exposing, weighted_layers


def _channel_mean(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x.astype(np.float64), axis, 0)
    return x.reshape(x.shape[0], -1).mean(axis=1)


def channel_means(model, axes: dict[str, int], images: np.ndarray) -> dict[str, np.ndarray]:
    """The mean per channel (`axes[tensor]`) of each tensor over `images`."""
    sums = run_exposing(model, images, sorted(axes), lambda t, v, prev: _channel_mean(v, axes[t]) + (0 if prev is None else prev))
    return {t: s / len(images) for t, s in sums.items()}


def _output_axes(layers: list[Layer]) -> dict[str, int]:
    return {lay.node.output[0]: 1 if lay.node.op_type == "Conv" else -1 for lay in layers}


def output_shift(layer: Layer, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """ΔW · E[x]: the expected output shift per output channel."""
    op = layer.node.op_type
    if op == "Conv":
        taps = dw.astype(np.float64).reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # [out, in per group]
        if layer.groups == 1:
            return taps @ mean_x
        per = dw.shape[1]  # grouped: output channel o reads input channels of its group
        group_of = np.arange(dw.shape[0]) // (dw.shape[0] // layer.groups)
        cols = group_of[:, None] * per + np.arange(per)[None, :]
        return np.sum(taps * mean_x[cols], axis=1)
    if layer.out_axis == 0:  # Gemm, transB: W is [N, K]
        return dw.astype(np.float64) @ mean_x
    return mean_x @ dw.astype(np.float64)  # MatMul / Gemm: W is [K, N]


def _bias_of(model, layer: Layer, rd) -> tuple[str | None, str]:
    """The layer's bias initializer, or for a MatMul the constant of the Add after it; ('', why not)."""
    if layer.node.op_type != "MatMul":
        return layer.bias, ""
    users = rd.get(layer.node.output[0], [])
    if len(users) == 1 and users[0] is not None and users[0].op_type == "Add":
        other = next((i for i in users[0].input if i != layer.node.output[0]), None)
        return other, ""
    return None, "MatMul without a bias Add"


def correctable(model, weights: Weights) -> list[tuple[Layer, str | None]]:
    rd = readers(model)
    out = []
    for lay in weighted_layers(model, weights):
        bias, _ = _bias_of(model, lay, rd)
        if lay.node.op_type == "MatMul" and (bias is None or bias not in weights or weights.get(bias).ndim != 1):
            continue
        out.append((lay, bias))
    return out


def correct(model, weights: Weights, images: np.ndarray, per_channel: bool) -> dict:
    """Correct every layer's bias in place; returns what it did and the measured shifts."""
    pairs = correctable(model, weights)
    layers = [lay for lay, _ in pairs]
    before_model = copy_model(model)
    # the layers' inputs (what the correction needs) and outputs (the float reference of the
    # measurement), in one pass
    means = channel_means(model, {**{lay.x: channel_axis(lay) for lay in layers}, **_output_axes(layers)}, images)
    corrected = 0
    for lay, bias in pairs:
        w = weights.get(lay.weight)
        dw = quantise_weight(w, lay.out_axis if per_channel else None) - w
        shift = output_shift(lay, dw, means[lay.x]).astype(np.float32)
        if bias is None:  # a Conv/Gemm without bias gets one
            bias = weights.unique_name(f"{lay.node.name or lay.weight}_bias_corrected")
            weights.set(bias, np.zeros(shift.shape, np.float32))
            while len(lay.node.input) < 3:
                lay.node.input.append("")
            lay.node.input[2] = bias
            lay.bias = bias
        else:
            at = list(lay.node.input).index(bias) if lay.node.op_type != "MatMul" else None
            if at is not None:
                bias = lay.bias = weights.private(lay.node, at)
            else:  # the constant of the Add after the MatMul
                add = next(n for n in model.graph.node if lay.node.output[0] in n.input and bias in n.input)
                bias = weights.private(add, list(add.input).index(bias))
        weights.set(bias, weights.get(bias) - shift)
        corrected += 1
    before, after = measured_shift(before_model, model, layers, images, per_channel, means)
    return {"layers": corrected, "output_shift_before": before, "output_shift_after": after}


def with_quantised_weights(model, per_channel: bool):
    m = copy_model(model)
    w = Weights(m)
    for lay in weighted_layers(m, w):
        w.set(lay.weight, quantise_weight(w.get(lay.weight), lay.out_axis if per_channel else None))
    return m


def measured_shift(
    float_model, corrected_model, layers: list[Layer], images: np.ndarray, per_channel: bool, float_means: dict | None = None
) -> tuple[float, float]:
    """RMS over the corrected layers' output channels of (mean output with quantised weights −
    the float model's mean output), without and with the correction: what BC targets."""
    axes = _output_axes(layers)
    ref = float_means if float_means is not None else channel_means(float_model, axes, images)
    figures = []
    for model in (with_quantised_weights(float_model, per_channel), with_quantised_weights(corrected_model, per_channel)):
        m = channel_means(model, axes, images)
        d = np.concatenate([m[t] - ref[t] for t in sorted(axes)])
        figures.append(float(np.sqrt(np.mean(d**2))) if d.size else 0.0)
    return figures[0], figures[1]
