"""Stage quantize: onnxruntime static QDQ quantisation from the model's stored calibration ranges,
at the precision the recipe gives each node (int8 or int16 activations, float for nodes kept out of
quantisation), so calibration runs once per model and quantisation once per distinct recipe.

Weights are int8, per-channel unless something asks for per-tensor (`per_channel_weights`). A node at int16 has
its activation tensors quantised to int16; a tensor between an int8 and an int16 node takes the
wider type, as the vendor compilers do. A float node stays float end to end: its output crosses
back to the NPU through a same-grid int16 step that no runtime kernel fuses (`keep_float_nodes_float`).
The resolved per-node map is embedded in the quantised model, so the simulated build sees exactly
the recipe the quantiser applied."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from npuflow.core.records import CalibrationReport, QuantReport
from npuflow.graph.precision import RANK, embed_precision, recipe_id, resolve_precision, weight_dtype
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import load, op_counts

# Per-channel DequantizeLinear (its `axis`) exists from opset 13; onnxruntime's quantiser does not
# raise an opset-11 model (the SegFormer flow) by itself, so npuflow converts it first. (16-bit
# types make onnxruntime raise the model to opset 21 itself.)
QDQ_MIN_OPSET = 13
# QuantizeLinear to int16 (the float nodes' same-grid step) is standard ONNX from opset 21.
INT16_QDQ_OPSET = 21


def onnx_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def tensor_types(model, precision: dict[str, str], default: str) -> dict[str, str]:
    """Activation tensors whose quantised type differs from the recipe default: int8 or int16."""
    weights = {i.name for i in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    types: dict[str, str] = {}
    for n in model.graph.node:
        dtype = precision.get(n.name)
        if dtype not in ("int8", "int16"):
            continue
        for t in list(n.input) + list(n.output):
            if t and t not in weights:
                types[t] = max(types.get(t, dtype), dtype, key=RANK.get)
    return {t: d for t, d in types.items() if d != default}


def _replace_input_indexed(self, old_input_name, new_input_name):
    """onnxruntime 1.31's quantiser renames a tensor's consumers by scanning every input of every
    node for every tensor it quantises (quadratic; ~30 % of quantising EfficientViT-M5). Same
    edit through an index of the nodes reading each tensor, extended as the quantiser appends
    nodes and rebuilt if nodes are removed; the output is byte-identical (tested)."""
    nodes = self.model.graph.node
    index = getattr(self, "_npuflow_readers", None)
    if index is None or len(nodes) < self._npuflow_indexed:
        index, self._npuflow_indexed = {}, 0
        self._npuflow_readers = index
    for node in nodes[self._npuflow_indexed :]:
        for name in set(node.input):
            index.setdefault(name, []).append(node)
    self._npuflow_indexed = len(nodes)
    for node in index.pop(old_input_name, []):
        if old_input_name in node.input:
            for j, name in enumerate(node.input):
                if name == old_input_name:
                    node.input[j] = new_input_name
            index.setdefault(new_input_name, []).append(node)


@contextlib.contextmanager
def quantizer_settings():
    """onnxruntime's quantiser as npuflow runs it, for one call and put back after: the indexed
    input renaming above in place of its own method, Softmax outputs on their calibrated range,
    and its per-weight warnings (logged on the root logger) kept out of the job's log."""
    from onnxruntime.quantization.base_quantizer import BaseQuantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    original, root = ONNXModel.replace_input_of_all_nodes, logging.getLogger()
    adjust = BaseQuantizer.adjust_tensor_ranges
    level = root.level
    ONNXModel.replace_input_of_all_nodes = _replace_input_indexed
    BaseQuantizer.adjust_tensor_ranges = _calibrated_softmax_ranges(adjust)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ONNXModel.replace_input_of_all_nodes = original
        BaseQuantizer.adjust_tensor_ranges = adjust
        root.setLevel(level)


def _calibrated_softmax_ranges(adjust):
    """onnxruntime's range adjustment, except that a Softmax output keeps its calibrated range
    [0, max] (at most [0, 1]) instead of a fixed [0, 1]: attention over thousands of tokens peaks
    near 0.001 (SegFormer-B0 at 640×1280: 0.0012–0.0013), below the fixed grid's first step
    (1/255), and came out exactly 0 — every attention map and what follows it. The vendor
    toolchains calibrate it as any other tensor."""
    import numpy as np
    from onnxruntime.quantization.calibrate import TensorData

    def adjusted(self):
        ranges = self.tensors_range
        kept = {}
        if ranges is not None:
            for node in self.model.nodes():
                out = node.output[0] if node.op_type == "Softmax" and node.output else None
                if out in ranges and isinstance(ranges[out], TensorData) and self.should_quantize_node(node):
                    kept[out] = float(ranges[out].range_value[1])
        adjust(self)
        for out, high in kept.items():
            if 0.0 < high < 1.0:
                ranges[out] = TensorData(lowest=np.float32(0.0), highest=np.float32(high))

    return adjusted


def keep_float_nodes_float(model, precision: dict[str, str]) -> int:
    """Make every float node of a QDQ model float end to end, as the target runs it on the CPU.

    onnxruntime's quantiser leaves a float node between the dequantised int8 tensor it reads and
    the QuantizeLinear of its output (the NPU consumer's int8 input): DequantizeLinear → op →
    QuantizeLinear, which every QDQ runtime reads as one quantised op. onnxruntime's optimiser
    fuses it into its own int8 kernel (QLinearSoftmax, QLinearAdd, QLinearConcat, …), so the
    "float" op ran in int8 at a calibrated output scale (DeiT-Tiny's Softmax on rdk-x5: cosine
    0.50 against 0.96 unfused). Here the float node's output is quantised first to int16 on the
    int8 grid (same scale and zero point), then to int8: exactly the int8 value (the int16 step
    only skips the saturation, which the int8 step then applies), but the node now reads int8
    and writes int16, a pair that no onnxruntime kernel takes, so it runs in float; the tensor
    still crosses to the NPU as int8 at its calibrated scale. Q/DQ nodes are what the simulator
    looks through, so its view of the model is unchanged. Returns the outputs so treated."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    float_nodes = {name for name, dtype in precision.items() if dtype == "float"}
    before: dict[int, list] = {}  # id(QuantizeLinear node) -> the nodes to insert before it
    steps = 0
    for node in graph.node:
        if node.name not in float_nodes:
            continue
        for out in node.output:
            quantizers = [q for q in readers.get(out, []) if q.op_type == "QuantizeLinear" and len(q.input) == 3]
            quantizers = [
                q for q in quantizers if q.input[2] in inits and inits[q.input[2]].data_type in (TensorProto.INT8, TensorProto.UINT8)
            ]
            if not quantizers:
                continue
            zp = inits[quantizers[0].input[2]]
            wide_zp = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(zp).astype("int16"), f"{out}_float_boundary_zero_point")
            graph.initializer.append(wide_zp)
            wide, step_out = f"{out}_float_boundary_int16", f"{out}_float_boundary"
            scale = quantizers[0].input[1]
            nodes = [
                helper.make_node("QuantizeLinear", [out, scale, wide_zp.name], [wide], name=f"{out}_float_boundary_QuantizeLinear"),
                helper.make_node(
                    "DequantizeLinear", [wide, scale, wide_zp.name], [step_out], name=f"{out}_float_boundary_DequantizeLinear"
                ),
            ]
            for q in quantizers:
                q.input[0] = step_out
            before[id(quantizers[0])] = nodes
            steps += 1
    if steps:
        ordered = []
        for n in graph.node:
            ordered.extend(before.get(id(n), []))
            ordered.append(n)
        del graph.node[:]
        graph.node.extend(ordered)
    return steps


def per_channel_weights(model, recipe: dict, options: dict) -> bool:
    """Per-channel weight scales unless something asks for per-tensor: the target's recipe (its
    profile's `quantization.weights`), the model's `quantization.weights` (carried in the ptq
    stage's model), or the calibration stage's choice."""
    from npuflow.quant.ptq.stage import embedded_settings

    settings = embedded_settings(model) or {}
    if "per_tensor" in (recipe.get("weight_granularity"), settings.get("weights")):
        return False
    return bool(options.get("per_channel", True))


def quantize_model(model, ranges_json: str | Path, recipe: dict, options: dict, out_onnx: str | Path) -> dict[str, str]:
    """Quantise `model` (in memory) to `out_onnx` under `recipe`; returns the node precision map."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    if onnx_opset(model) < QDQ_MIN_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, QDQ_MIN_OPSET)
    qtype = {"int8": QuantType.QInt8, "int16": QuantType.QInt16}
    precision = resolve_precision(model, recipe)
    if "float" in precision.values() and onnx_opset(model) < INT16_QDQ_OPSET:
        from onnx import version_converter

        # the float nodes' int16 step (keep_float_nodes_float) is standard ONNX from opset 21, as
        # onnxruntime's quantiser itself converts a model for its int16 types
        model = version_converter.convert_version(model, INT16_QDQ_OPSET)
        precision = resolve_precision(model, recipe)
    overrides = {t: [{"quant_type": qtype[d]}] for t, d in tensor_types(model, precision, recipe["default"]).items()}
    with atomic_path(out_onnx) as tmp, quantizer_settings():
        quantize_static(
            # In memory: given a path, onnxruntime writes a shape-inferred copy beside it, which
            # races between the targets' jobs.
            model,
            str(tmp),
            calibration_data_reader=None,
            calibration_cache_path=str(ranges_json),  # ranges from the calibrate stage, not recomputed
            calibrate_method=load_tensors_data(ranges_json).calibration_method,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel_weights(model, recipe, options),
            activation_type=qtype[recipe["default"]],
            weight_type=qtype[weight_dtype(recipe)],  # w8a16 (the common 16-bit deployment) or a16w16
            nodes_to_exclude=sorted(n for n, d in precision.items() if d == "float"),
            extra_options={
                "ActivationSymmetric": options.get("activation_symmetric", False),
                "WeightSymmetric": True,
                "TensorQuantOverrides": overrides,
            },
        )
        quantized = load(tmp)
        keep_float_nodes_float(quantized, precision)
        embed_precision(quantized, precision, recipe)
        import onnx

        onnx.save(quantized, str(tmp))
    return precision


def quantize(
    model_onnx: str | Path,
    *,
    ranges_json: str | Path,
    calibration_json: str | Path,
    recipe: dict,
    out_onnx: str | Path,
    out_json: str | Path,
) -> dict:
    start = time.perf_counter()
    calibration = CalibrationReport.read(calibration_json)
    model = load(model_onnx)
    precision = quantize_model(model, ranges_json, recipe, calibration.quantization, out_onnx)
    report = quantize_report(onnx_opset(model), out_onnx, precision, recipe, calibration, time.perf_counter() - start)
    report.write(out_json)
    return report.to_json()


def quantize_report(
    opset_in: int, quantized_onnx: str | Path, precision: dict, recipe: dict, calibration: CalibrationReport, seconds: float
) -> QuantReport:
    """The quantize stage's report on a model quantize_model wrote (returning `precision`)."""
    from collections import Counter

    options = calibration.quantization
    quantized = load(quantized_onnx)
    per_channel = per_channel_weights(quantized, recipe, options)
    ops = op_counts(quantized)
    return QuantReport(
        recipe=recipe,
        recipe_id=recipe_id(recipe),
        format="QDQ",
        opset_in=opset_in,
        opset=onnx_opset(quantized),
        weights=f"int8 {'per-channel' if per_channel else 'per-tensor'} symmetric",
        activations=f"{recipe['default']} per-tensor {'symmetric' if options.get('activation_symmetric') else 'asymmetric'}",
        node_dtypes=dict(Counter(precision.values())),
        calibration_method=calibration.method,
        calibration_images=calibration.images,
        ops=ops,
        quantize_nodes=ops.get("QuantizeLinear", 0),
        int8_bytes=Path(quantized_onnx).stat().st_size,
        seconds=round(seconds, 3),
    )
