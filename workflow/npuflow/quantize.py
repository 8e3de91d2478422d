"""Stage quantize: onnxruntime static QDQ quantisation (int8 per-channel weights; activations at
the precision recipe's default, int8 or int16) from the model's stored calibration ranges, so
calibration runs once per model and quantisation once per distinct recipe, not once per target."""

from __future__ import annotations

import time
from pathlib import Path

from .io import atomic_path, read_json, write_json
from .onnxutil import load, op_counts


# Per-channel DequantizeLinear (its `axis`) exists from opset 13; onnxruntime's quantiser does not
# raise an opset-11 model (the SegFormer flow) by itself, so npuflow converts it first.
QDQ_MIN_OPSET = 13


def _onnx_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize(model_onnx: str | Path, ranges_json: str | Path, calibration_json: str | Path, recipe: dict, out_onnx: str | Path, out_json: str | Path) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    start = time.perf_counter()
    calibration = read_json(calibration_json)
    model = load(model_onnx)
    opset_in = _onnx_opset(model)
    if opset_in < QDQ_MIN_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, QDQ_MIN_OPSET)
    with atomic_path(out_onnx) as tmp:
        quantize_static(
            # In memory: given a path, onnxruntime writes a shape-inferred copy beside it, which
            # races between the targets' jobs.
            model,
            str(tmp),
            calibration_data_reader=None,
            calibration_cache_path=str(ranges_json),  # ranges from the calibrate stage, not recomputed
            calibrate_method=load_tensors_data(ranges_json).calibration_method,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type={"int8": QuantType.QInt8, "int16": QuantType.QInt16}[recipe["default"]],
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    quantized = load(out_onnx)
    ops = op_counts(quantized)
    report = {
        "recipe": recipe,
        "format": "QDQ",
        "opset_in": opset_in,
        "opset": _onnx_opset(quantized),
        "weights": "int8 per-channel symmetric",
        "activations": f"{recipe['default']} per-tensor asymmetric",
        "calibration_method": calibration["method"],
        "calibration_images": calibration["images"],
        "ops": ops,
        "quantize_nodes": ops.get("QuantizeLinear", 0),
        "int8_bytes": Path(out_onnx).stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
