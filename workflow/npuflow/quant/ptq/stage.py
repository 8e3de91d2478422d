"""The ptq stage: the model's `quantization:` settings applied to its float (post-surgery) ONNX
model once, on the calibration images, before calibration; every target's calibration,
quantisation, per-layer analysis and mixed precision read the transformed model. The resolved
settings ride in the model's metadata (`SETTINGS_KEY`), so the quantiser applies the same
weight granularity that bias correction corrected for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from npuflow.core.records import PtqReport
from npuflow.quant.ptq import apply_methods, resolve_settings, settings_id
from npuflow.util.io import atomic_path

SETTINGS_KEY = "npuflow.quantization"


def embedded_settings(model) -> dict | None:
    for p in model.metadata_props:
        if p.key == SETTINGS_KEY:
            return json.loads(p.value)
    return None


def ptq(
    model_onnx: str | Path,
    *,
    manifest_json: str | Path,
    spec: dict,
    out_onnx: str | Path,
    out_json: str | Path,
    datasets_dir: str | Path = "results/datasets",
    cache_dir: str | Path | None = None,
) -> dict:
    import onnx

    from npuflow.data.batches import image_batches
    from npuflow.util.io import read_json

    start = time.perf_counter()
    settings = resolve_settings(spec.get("quantization"))
    model = onnx.load(str(model_onnx))
    calib = spec["calibration"]
    enabled = [k for k, v in settings.items() if k != "weights" and v is not False]
    images = None
    if enabled:  # the calibration images, as the calibrate stage prepares them
        manifest = read_json(manifest_json)
        images = image_batches(
            calib["dataset"],
            "calibration",
            calib["images"],
            spec["input"]["shape"],
            manifest["preprocessing"],
            spec["seed"],
            datasets_dir,
            cache_dir,
        ).images
    transformed, methods = apply_methods(model, settings, images)
    del transformed.metadata_props[:]
    transformed.metadata_props.extend(p for p in model.metadata_props if p.key != SETTINGS_KEY)
    onnx.helper.set_model_props(
        transformed, {**{p.key: p.value for p in transformed.metadata_props}, SETTINGS_KEY: json.dumps(settings, sort_keys=True)}
    )
    with atomic_path(out_onnx) as tmp:
        onnx.save(transformed, str(tmp))
    report = PtqReport(
        settings=settings,
        settings_id=settings_id(settings),
        methods=methods,
        calibration_images=0 if images is None else len(images),
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report.to_json()
