"""The float reference and the evaluation of a quantised model for `task: detection`.

Both models' head outputs are decoded and NMS'd on the host (npuflow.evaluation.detect) at the deployment
threshold; the int8 boxes are compared with the float boxes (agreement, mean IoU, mAP with the
float boxes as reference) and, when the evaluation images carry box labels, both models' mAP
against them. Head outputs are compared as the other tasks' outputs are (cosine, SQNR over all of
them), and the host CPU time of decode + NMS is measured apart from the model's."""

from __future__ import annotations

import time

import numpy as np

from npuflow.core.records import FLOAT_ACCURACY, EvalReport, Manifest, ReferenceReport
from npuflow.data.batches import held_out_batch, stack_boxes
from npuflow.evaluation.detect import postprocess
from npuflow.evaluation.detmetrics import average_precision
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import input_name, load, session

# Ultralytics validates (mAP) at this threshold: the whole precision/recall curve.
MAP_CONF = 0.001


def _run(model, images: np.ndarray, threads: int):
    """The session, its input and output names, each image's outputs as {name: array} and each
    image's run time (timing.timed_runs)."""
    from npuflow.evaluation.timing import timed_runs

    sess = session(model, threads)
    name = input_name(model)
    names = [o.name for o in sess.get_outputs()]
    runs, seconds = timed_runs(sess, name, images)
    return sess, name, names, [dict(zip(names, r)) for r in runs], seconds


def _settings(spec: dict) -> dict:
    return spec["evaluation"]["detection"]


def _decode(runs: list[dict], head: dict, hw, settings: dict, conf: float | None = None):
    return [postprocess(r, head, hw, settings["conf"] if conf is None else conf, settings["iou"], settings["max_det"]) for r in runs]


def _truths(boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(b[:, 1:5], b[:, 0].astype(np.int64)) for b in boxes]


def _label_map(runs, head, hw, settings, boxes) -> dict:
    if boxes is None:
        return {}
    ap = average_precision(_decode(runs, head, hw, settings, MAP_CONF), _truths(boxes))
    return {} if ap is None else {"map50": ap[0], "map50_95": ap[1], "labelled_images": len(boxes)}


def reference(
    float_onnx, *, manifest_json, spec: dict, out_npz, out_json, threads: int = 1, datasets_dir="results/datasets", cache_dir=None
) -> dict:
    from npuflow.evaluation.timing import host_latency_ms

    start = time.perf_counter()
    manifest = Manifest.read(manifest_json)
    ev = spec["evaluation"]
    hw = spec["input"]["shape"][2:]
    batch = held_out_batch(spec, manifest.preprocessing, datasets_dir, cache_dir)
    sess, name, names, runs, seconds = _run(load(float_onnx), batch.images, threads)
    fp32_ms, repeats, fp32_spread = host_latency_ms(sess, {name: batch.images[:1]}, ev["latency_repeats"], seconds)
    floats = _decode(runs, manifest.head, hw, _settings(spec))
    with atomic_path(out_npz) as tmp, open(tmp, "wb") as f:
        extra = {"boxes": stack_boxes(batch.boxes)} if batch.boxes is not None else {}
        np.savez(f, images=batch.images, **{f"out_{n}": np.concatenate([r[n] for r in runs]) for n in names}, **extra)
    accuracy = _label_map(runs, manifest.head, hw, _settings(spec), batch.boxes)
    figures = {"float_boxes_per_image": sum(len(d) for d in floats) / len(floats), **{f"float_{k}": v for k, v in accuracy.items()}}
    report = ReferenceReport(
        images=len(batch.images),
        dataset=ev["dataset"],
        image_sources=batch.names,
        accuracy={k: v for k, v in figures.items() if k in FLOAT_ACCURACY},
        labelled_images=accuracy.get("labelled_images"),
        host_fp32_ms=fp32_ms,
        host_fp32_repeats=repeats,
        host_fp32_spread=fp32_spread,
        host_threads=threads,
        seconds=round(time.perf_counter() - start, 3),
        extra={"detection": _settings(spec)},
    )
    report.write(out_json)
    return report.to_json()


def _head_fidelity(ref: dict, runs: list[dict], names: list[str]) -> dict:
    """Cosine and SQNR of the head outputs, all of them together per image, and per output."""
    n = len(runs)
    f = np.concatenate([ref[f"out_{k}"].reshape(n, -1) for k in names], axis=1).astype(np.float64)
    q = np.concatenate([np.concatenate([r[k] for r in runs]).reshape(n, -1) for k in names], axis=1).astype(np.float64)
    cos = np.sum(f * q, axis=1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-30)
    noise = np.sum((f - q) ** 2)
    per_output = {}
    for k in names:
        fk, qk = ref[f"out_{k}"].astype(np.float64).ravel(), np.concatenate([r[k] for r in runs]).astype(np.float64).ravel()
        nk = np.sum((fk - qk) ** 2)
        per_output[k] = {
            "cosine": float(fk @ qk / (np.linalg.norm(fk) * np.linalg.norm(qk) + 1e-30)),
            "sqnr_db": float(10 * np.log10(np.sum(fk**2) / nk)) if nk > 0 else float("inf"),
        }
    return {
        "cosine": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "sqnr_db": float(10 * np.log10(np.sum(f**2) / noise)) if noise > 0 else float("inf"),
        "max_abs_error": float(np.max(np.abs(f - q))),
        "head_outputs": per_output,
    }


def decode_nms_ms(runs: list[dict], head: dict, hw, settings: dict, repeats: int = 3) -> float:
    """Median host time of decode + threshold + NMS per image (each image `repeats` times)."""
    times = []
    for r in runs:
        for _ in range(repeats):
            t = time.perf_counter()
            postprocess(r, head, hw, settings["conf"], settings["iou"], settings["max_det"])
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def evaluate(quant_onnx, *, reference_npz, reference_json, manifest_json, spec: dict, recipe: str, out_json, threads=1) -> dict:
    from npuflow.evaluation.detmetrics import agreement
    from npuflow.evaluation.timing import host_latency_ms

    start = time.perf_counter()
    ref = np.load(reference_npz)
    ref_report, manifest = ReferenceReport.read(reference_json), Manifest.read(manifest_json)
    head, settings, hw = manifest.head, _settings(spec), ref["images"].shape[2:]  # the stage reads no `input`
    sess, name, names, runs, seconds = _run(load(quant_onnx), ref["images"], threads)
    int8_ms, repeats, int8_spread = host_latency_ms(sess, {name: ref["images"][:1]}, spec["evaluation"]["latency_repeats"], seconds)
    float_runs = [{k: ref[f"out_{k}"][i : i + 1] for k in names} for i in range(len(runs))]
    floats, quants = _decode(float_runs, head, hw, settings), _decode(runs, head, hw, settings)
    boxes = None
    if "boxes" in ref:
        b = ref["boxes"]
        boxes = [b[b[:, 0] == i, 1:] for i in range(len(runs))]
    report = {
        "model": spec["name"],
        "recipe": recipe,
        "task": spec["task"],
        "weights": manifest.weights,
        "images": len(runs),
        "dataset": ref_report.dataset,
        "detection": settings,
        **_head_fidelity(ref, runs, names),
        **agreement(floats, quants, _decode(runs, head, hw, settings, MAP_CONF)),
        **_label_map(runs, head, hw, settings, boxes),
        **ref_report.accuracy,
        "host_fp32_ms": ref_report.host_fp32_ms,
        "host_int8_ms": int8_ms,
        **({"host_fp32_spread": ref_report.host_fp32_spread} if ref_report.host_fp32_spread is not None else {}),
        "host_int8_spread": int8_spread,
        "host_int8_repeats": repeats,
        "host_decode_nms_ms": decode_nms_ms(runs, head, hw, settings),
        "host_threads": threads,
        "seconds": round(time.perf_counter() - start, 3),
    }
    # Through the record: it files the figures under their metric names (records.EVAL_METRICS).
    record = EvalReport.from_json(report, str(out_json))
    record.write(out_json)
    return record.to_json()
