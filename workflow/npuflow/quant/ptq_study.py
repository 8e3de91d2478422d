"""One PTQ settings combination measured end to end on a float model: transform, calibrate
(min/max on the transformed model), quantise with the configured weight granularity, and compare
with the float model on held-out images (output cosine, SQNR, top-1/top-5 agreement, the
per-layer table). What benchmarks/ptq.py and benchmarks/real_weights.py print and the tests assert."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from npuflow.quant.ptq import apply_methods, resolve_settings


def measure(
    float_model,
    settings: dict,
    calibration: np.ndarray,
    held_out: np.ndarray,
    layer_images: int = 2,
    recipe: dict | None = None,
    task: str = "classification",
) -> dict:
    """`recipe`: the precision recipe quantised to (default all int8); `task`: what the outputs
    are (`features`: fidelity figures only, no agreement of classes)."""
    import onnx

    from npuflow.evaluation.evaluate import fidelity
    from npuflow.evaluation.layers import analyse_layers, ranked
    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.ptq.graph import outputs_of
    from npuflow.quant.quantize import quantize_model

    settings = resolve_settings(settings)
    start = time.perf_counter()
    model, report = apply_methods(float_model, settings, calibration)
    transform_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="npuflow-ptq-") as tmp:
        tmp = Path(tmp)
        onnx.save(model, str(tmp / "f.onnx"))
        save_ranges(compute_ranges(collect(tmp / "f.onnx", calibration, False), "minmax", {}), tmp / "r.json")
        options = {"per_channel": settings["weights"] == "per_channel"}
        quantize_model(model, tmp / "r.json", recipe or {"default": "int8"}, options, tmp / "q.onnx")
        quant = onnx.load(str(tmp / "q.onnx"))
    ref = outputs_of(float_model, held_out)[0]
    out = outputs_of(quant, held_out)[0]
    figures = fidelity(ref, np.argmax(ref, axis=1), out, np.argmax(out, axis=1), task)
    # the table compares like with like: the transformed float model's tensors (CLE rescales them)
    rows = ranked(analyse_layers(model, quant, held_out[:layer_images], threads=2)) if layer_images else []
    sqnr = [r["sqnr_db"] for r in rows if np.isfinite(r["sqnr_db"])]
    return {
        **figures,
        "layers_min_sqnr_db": min(sqnr) if sqnr else None,
        "layers": rows,
        "transform_s": transform_s,
        "methods": report,
    }
