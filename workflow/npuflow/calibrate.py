"""Stage calibrate: activation ranges of the float (post-surgery) model on calibration images,
computed once per model and reused by every target's quantisation (stored in onnxruntime's
calibration-cache format, which quantize_static reads back)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import image_batches
from .io import atomic_path, read_json, write_json
from .onnxutil import input_name, load
from .registry import Registry


@dataclass(frozen=True)
class CalibrationMethod:
    """An onnxruntime calibration method and its options."""

    ort_method: str  # name in onnxruntime.quantization.CalibrationMethod
    extra_options: dict = field(default_factory=dict)  # create_calibrator's option names


CALIBRATION_METHODS: Registry[CalibrationMethod] = Registry("calibration method")
CALIBRATION_METHODS.add("minmax", CalibrationMethod("MinMax"))
CALIBRATION_METHODS.add("percentile", CalibrationMethod("Percentile", {"percentile": 99.999}))
CALIBRATION_METHODS.add("entropy", CalibrationMethod("Entropy"))

# Bounds the calibrator's memory (every tensor of every image is held until merged): images are
# fed in chunks, each merged into the running ranges. (onnxruntime's own max_intermediate_outputs
# option drops the chunk before merging it, so it is not used.)
CHUNK_IMAGES = 4


class _Reader:
    """onnxruntime CalibrationDataReader over an in-memory image array."""

    def __init__(self, name: str, images: np.ndarray):
        self._it = iter([{name: img[None]} for img in images])

    def get_next(self):
        return next(self._it, None)


def calibrate(model_onnx: str | Path, manifest_json: str | Path, spec: dict, out_ranges: str | Path, out_json: str | Path) -> dict:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    start = time.perf_counter()
    calib = spec["calibration"]
    method = CALIBRATION_METHODS.get(calib["method"])
    manifest = read_json(manifest_json)
    model = load(model_onnx)
    name = input_name(model)
    images, sources = image_batches(calib["dataset"], "calibration", calib["images"], spec["input"]["shape"], manifest["preprocessing"], spec["seed"])
    with tempfile.TemporaryDirectory(prefix="npuflow-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model_onnx),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(OrtMethod, method.ort_method),
            providers=["CPUExecutionProvider"],
            extra_options=method.extra_options,
        )
        for i in range(0, len(images), CHUNK_IMAGES):
            calibrator.collect_data(_Reader(name, images[i : i + CHUNK_IMAGES]))
        tensors = calibrator.compute_data()
    with atomic_path(out_ranges) as tmp:
        save_tensors_data(tensors, tmp)
    report = {
        "method": calib["method"],
        "dataset": calib["dataset"],
        "images": calib["images"],
        "image_sources": sources,
        "weights": manifest["weights"],
        "tensors": len(tensors.data),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
