"""Stage calibrate: activation ranges of the float (post-surgery) model on calibration images,
computed once per model and reused by every target's quantisation (stored in onnxruntime's
calibration-cache format, which quantize_static reads back).

Methods (a registry): minmax, percentile (configurable), entropy (KL, TensorRT's method), and
`auto`, which does what Horizon's default calibration does: try several methods and
quantisation options, and keep the one whose quantised model's output is closest (cosine) to the
float model's on images the ranges were not computed from. The histogram methods share one pass
over the images: one signed histogram per tensor serves percentile, entropy and min/max; minmax
alone needs no histogram."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npuflow.data.batches import image_batches
from npuflow.util.io import atomic_path, read_json, write_json
from npuflow.util.onnxutil import ReusedOutputs, input_name, load, session
from npuflow.util.progress import progress
from npuflow.util.registry import Registry

HISTOGRAM_BINS = 2048
# Entropy searches thresholds on a coarser histogram (2048 bins / 4), as TensorRT does with 128
# quantised bins: fine enough, and the KL search is quadratic in bins.
ENTROPY_COARSEN = 4
ENTROPY_QUANTIZED_BINS = 128
DEFAULT_OPTIONS = {"per_channel": True, "activation_symmetric": False}


@dataclass(frozen=True)
class CalibrationMethod:
    """Ranges {tensor: (low, high)} from a tensor's histogram (hist, edges, min, max, threshold)."""

    ranges: Callable[[tuple, dict], tuple[float, float]] | None  # None: a search (auto)
    needs_histogram: bool = True


def _minmax(h, calib):
    return float(h[2]), float(h[3])


def _percentile(h, calib):
    hist, edges = h[0], h[1]
    cdf = np.cumsum(hist / max(hist.sum(), 1))
    cut = (100.0 - calib["percentile"]) / 200.0  # each side
    lo, hi = edges[np.searchsorted(cdf, cut)], edges[min(np.searchsorted(cdf, 1.0 - cut) + 1, len(edges) - 1)]
    return float(max(lo, h[2])), float(min(hi, h[3]))


def _entropy(h, calib):
    """TensorRT's KL-divergence threshold: the symmetric range whose int8 rendering of the
    (coarsened) histogram loses least information; searched on every 2nd candidate width."""
    hist, edges = h[0].astype(np.float64), h[1]
    pad = (-len(hist)) % (2 * ENTROPY_COARSEN)  # keep the zero bin central: pad both sides
    hist = np.pad(hist, (pad // 2, pad - pad // 2))
    step = (edges[1] - edges[0]) * ENTROPY_COARSEN
    hist = hist.reshape(-1, ENTROPY_COARSEN).sum(axis=1)
    zero, half = len(hist) // 2, ENTROPY_QUANTIZED_BINS // 2
    if hist.sum() == 0 or zero < half:
        return float(h[2]), float(h[3])
    best_kl, best_i = np.inf, zero
    for i in range(half, zero + 1, 2):
        window = hist[zero - i : zero + i]
        p = window.copy()
        p[0] += hist[: zero - i].sum()
        p[-1] += hist[zero + i :].sum()
        group = np.arange(2 * i) * ENTROPY_QUANTIZED_BINS // (2 * i)
        used = window > 0
        q = np.bincount(group, weights=window, minlength=ENTROPY_QUANTIZED_BINS)[group]
        q = np.where(used, q / np.maximum(np.bincount(group, weights=used, minlength=ENTROPY_QUANTIZED_BINS)[group], 1), 0.0)
        p, q = p / p.sum(), q / max(q.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = best_i * step
    return float(max(-threshold, h[2])), float(min(threshold, h[3]))


CALIBRATION_METHODS: Registry[CalibrationMethod] = Registry("calibration method")
CALIBRATION_METHODS.add("minmax", CalibrationMethod(_minmax, needs_histogram=False))
CALIBRATION_METHODS.add("percentile", CalibrationMethod(_percentile))
CALIBRATION_METHODS.add("entropy", CalibrationMethod(_entropy))
# `auto` is a search over the others (see auto_calibrate), not a range rule of its own.
AUTO = "auto"
CALIBRATION_METHODS.add(AUTO, CalibrationMethod(None))
# What auto tries: range rules (name, percentile) with the default options, then the best with other options.
AUTO_RULES = (("minmax", None), ("percentile", 99.99), ("percentile", 99.999), ("entropy", None))
AUTO_OPTIONS = ({"per_channel": True, "activation_symmetric": True}, {"per_channel": False, "activation_symmetric": False})


def collect(model_onnx: str | Path, images: np.ndarray, histogram: bool) -> dict[str, tuple]:
    """Per calibrated tensor: (hist, edges, min, max, threshold). With `histogram`, the signed
    histogram that percentile and entropy need (onnxruntime's histogram collector, which also
    tracks min/max); without, min/max only (hist and edges empty), which is much cheaper on large
    activations (SegFormer at 640×1280). Images go through one at a time, so memory holds one
    image's activations."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import HistogramCollector

    name = input_name(load(model_onnx))
    with tempfile.TemporaryDirectory(prefix="npuflow-calib-") as tmp:
        # onnxruntime's calibrator picks the tensors to calibrate and builds the model that outputs them.
        calibrator = create_calibrator(
            Path(model_onnx),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=OrtMethod.Entropy,
            providers=["CPUExecutionProvider"],
        )
    sess = calibrator.infer_session
    reused = ReusedOutputs(sess)  # every image's activations into the same warm pages
    names = [o.name for o in sess.get_outputs()]
    wanted = [i for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    collector = HistogramCollector("entropy", False, HISTOGRAM_BINS, ENTROPY_QUANTIZED_BINS, 99.999, "same")
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    for img in progress(images, "calibration images", unit="img"):
        outs = reused.run({name: img[None]})
        if histogram:
            collector.collect({names[i]: [outs[i]] for i in wanted})
            continue
        for i in wanted:
            a = outs[i]
            if a.size:
                lows[names[i]] = min(lows.get(names[i], np.inf), float(a.min()))
                highs[names[i]] = max(highs.get(names[i], -np.inf), float(a.max()))
    if histogram:
        return dict(collector.histogram_dict)
    empty = np.zeros(0)
    return {t: (empty, empty, np.float32(lows[t]), np.float32(highs[t]), None) for t in lows}


def compute_ranges(stats: dict[str, tuple], method: str, calib: dict) -> dict[str, tuple[float, float]]:
    rule = CALIBRATION_METHODS.get(method)
    return {t: rule.ranges(h, calib) for t, h in stats.items()}


def save_ranges(ranges: dict[str, tuple[float, float]], path: str | Path) -> None:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {t: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32)) for t, (lo, hi) in ranges.items()}
    with atomic_path(path) as tmp:
        save_tensors_data(TensorsData(OrtMethod.MinMax, data), tmp)


def _float_output(outputs: list[np.ndarray]) -> np.ndarray:
    """A model's float outputs as one vector (a detection head's per-scale outputs, together)."""
    return np.concatenate([o.ravel() for o in outputs if np.issubdtype(o.dtype, np.floating)])


def output_cosine(model, images: np.ndarray, reference: list[np.ndarray]) -> float:
    """Mean cosine of the model's float outputs against the float model's, per image."""
    sess = session(model, 2)
    name = input_name(model)
    cos = []
    for img, ref in zip(images, reference):
        out = _float_output(sess.run(None, {name: img[None]}))
        f, q = ref.ravel().astype(np.float64), out.astype(np.float64)
        cos.append(float(f @ q / (np.linalg.norm(f) * np.linalg.norm(q) + 1e-30)))
    return float(np.mean(cos))


def float_outputs(model, images: np.ndarray) -> list[np.ndarray]:
    sess = session(model, 2)
    name = input_name(model)
    return [_float_output(sess.run(None, {name: img[None]})) for img in images]


def auto_calibrate(model_onnx, stats: dict, calib: dict, selection: np.ndarray, recipe: dict) -> tuple[dict, dict, list[dict]]:
    """Try the range rules, then the best with other quantisation options; keep the best output
    cosine on the selection images. Returns (ranges, options, candidates tried)."""
    from npuflow.evaluation.evaluate import expose_logits
    from npuflow.quant.quantize import quantize_model

    model = expose_logits(load(model_onnx))
    reference = float_outputs(model, selection)
    tried = []
    best = None
    with tempfile.TemporaryDirectory(prefix="npuflow-auto-") as tmp:

        def trial(method, percentile, options):
            ranges = compute_ranges(stats, method, {**calib, "percentile": percentile or calib["percentile"]})
            save_ranges(ranges, Path(tmp) / "ranges.json")
            quantize_model(load(model_onnx), Path(tmp) / "ranges.json", recipe, options, Path(tmp) / "q.onnx")
            cosine = output_cosine(expose_logits(load(Path(tmp) / "q.onnx")), selection, reference)
            row = {"method": method, **({"percentile": percentile} if percentile else {}), **options, "cosine": cosine}
            tried.append(row)
            return row, ranges

        for method, percentile in AUTO_RULES:
            row, ranges = trial(method, percentile, DEFAULT_OPTIONS)
            if best is None or row["cosine"] > best[0]["cosine"]:
                best = (row, ranges)
        for options in AUTO_OPTIONS:
            row, ranges = trial(best[0]["method"], best[0].get("percentile"), options)
            if row["cosine"] > best[0]["cosine"]:
                best = (row, ranges)
    chosen = best[0]
    return best[1], {k: chosen[k] for k in DEFAULT_OPTIONS}, tried


def calibrate(
    model_onnx: str | Path,
    *,
    manifest_json: str | Path,
    spec: dict,
    out_ranges: str | Path,
    out_json: str | Path,
    datasets_dir: str | Path = "results/datasets",
    cache_dir: str | Path | None = None,
) -> dict:
    start = time.perf_counter()
    calib = spec["calibration"]
    method = calib["method"]
    manifest = read_json(manifest_json)
    auto = method == AUTO
    # auto judges candidates on images after the calibration ones (fresh augmentations of the
    # calibration split): never the evaluation images, which stay held out.
    extra = calib["selection_images"] if auto else 0
    batch = image_batches(
        calib["dataset"],
        "calibration",
        calib["images"] + extra,
        spec["input"]["shape"],
        manifest["preprocessing"],
        spec["seed"],
        datasets_dir,
        cache_dir,
    )
    images, selection = batch.images[: calib["images"]], batch.images[calib["images"] :]
    augmented = sum(bool(re.search(r"#aug\d+$", name)) for name in batch.names[: calib["images"]])  # image_batches' copies
    if augmented:  # the split holds fewer images than asked: say so, not only in the report
        print(
            f"calibration: {calib['images']} images asked, dataset {calib['dataset']} holds {calib['images'] - augmented}"
            f" for calibration; {augmented} are seeded augmented copies of them",
            flush=True,
        )
    prepared = time.perf_counter()
    stats = collect(model_onnx, images, CALIBRATION_METHODS.get(method).needs_histogram)
    collected = time.perf_counter()
    options = {k: calib[k] for k in DEFAULT_OPTIONS}
    candidates = []
    if auto:
        ranges, options, candidates = auto_calibrate(model_onnx, stats, calib, selection, {"default": "int8"})
    else:
        ranges = compute_ranges(stats, method, calib)
    save_ranges(ranges, out_ranges)
    chosen = max(candidates, key=lambda c: c["cosine"]) if candidates else None
    report = {
        "method": method,
        "chosen": ({k: chosen[k] for k in ("method", "percentile") if k in chosen} if chosen else {"method": method}),
        "percentile": calib["percentile"] if method == "percentile" else None,
        "quantization": options,
        "dataset": calib["dataset"],
        "images": calib["images"],
        "image_sources": batch.names[: calib["images"]],
        "augmented_images": augmented,
        "selection_images": len(selection),
        "candidates": candidates,
        "weights": manifest["weights"],
        "tensors": len(ranges),
        "seconds_preprocess": round(prepared - start, 3),
        "seconds_collect": round(collected - prepared, 3),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
