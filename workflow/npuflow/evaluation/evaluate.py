"""Stage evaluate: the quantised model against the float model on held-out images (never used for
calibration), and host-CPU latency of both measured with onnxruntime.

The float reference (outputs and fp32 latency) is computed once per model by `reference`; each
quantised model (one per distinct node precision map, shared by the targets whose recipes make it)
is compared to it by `evaluate`, and layer by layer by `analyse` (its own job: the memory-heavy part)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from npuflow.core.records import EVAL_METRICS, FLOAT_ACCURACY, EvalReport, LayerAnalysis, Manifest, ReferenceReport
from npuflow.core.tasks import TASKS
from npuflow.data.batches import held_out_batch
from npuflow.data.datasets import IGNORE_LABEL, DatasetError
from npuflow.evaluation.timing import host_latency_ms, timed_runs
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import input_name, load, session


def expose_logits(model):
    """If the model's sole output is an ArgMax of logits (segmentation surgery), add the logits
    as a second output, so fidelity is measured on the scores and agreement on the class ids."""
    from npuflow.graph.opgraph import Index

    graph = model.graph
    node = Index.of_onnx(graph).producer.get(graph.output[0].name)
    if len(graph.output) == 1 and node is not None and node.op_type == "ArgMax":
        import onnx

        graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    return model


def scores_and_classes(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float scores, class ids) from a model's outputs: class ids over axis 1 of the scores."""
    if len(outputs) == 2 and np.issubdtype(outputs[0].dtype, np.integer):
        return outputs[1], outputs[0][:, 0]
    return outputs[0], np.argmax(outputs[0], axis=1)


def run_model(model, images: np.ndarray, threads: int):
    """(session, input name, outputs stacked per output, each image's run time) of `model` run on
    each image."""
    sess = session(model, threads)
    name = input_name(model)
    runs, seconds = timed_runs(sess, name, images)
    outs = [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]
    return sess, name, outs, seconds


def _resize_masks(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Masks to the model's output resolution (nearest): SegFormer predicts at 1/4 of the input."""
    if masks.shape[1:] == hw:
        return masks
    rows = (np.arange(hw[0]) * masks.shape[1] // hw[0])[:, None]
    cols = (np.arange(hw[1]) * masks.shape[2] // hw[1])[None, :]
    return masks[:, rows, cols]


def label_problem(scores: np.ndarray, labels: np.ndarray | None, masks: np.ndarray | None, task: str, dataset: str) -> str | None:
    """Labels (or mask classes) the model cannot output: a top-1 or mIoU against them would be a
    number, 0 or lower than the truth, where it should be an error. The config refuses them before
    any job where it knows how many classes a model outputs; here the outputs tell."""
    count = scores.shape[1] if scores.ndim > 1 else 0
    annotations = TASKS.get(task).annotations
    if annotations == "labels" and labels is not None:
        past = labels[labels >= count]
        what, n = "label", len(past)
    elif annotations == "masks" and masks is not None:
        past = masks[(masks >= count) & (masks != IGNORE_LABEL)]
        what, n = "mask class", len(np.unique(past))
    else:
        return None
    if not n:
        return None
    return (
        f"dataset {dataset}: {what} {int(past.max())} is past the model's last class ({count} outputs, 0 to {count - 1}): "
        f"the model can never predict it, so its accuracy would read low instead of failing; label the images by the "
        f"model's class indices (datasets.{dataset}.classes lists folder names in the model's class order), or evaluate on "
        "a dataset of its classes"
    )


def task_metrics(scores: np.ndarray, classes: np.ndarray, labels: np.ndarray | None, masks: np.ndarray | None, task: str) -> dict:
    """Task accuracy against the evaluation set's labels (top-1/top-5) or masks (mIoU), where the
    task reads them (npuflow.core.tasks) and the set has them."""
    annotations = TASKS.get(task).annotations
    if annotations == "labels" and labels is not None:
        known = labels >= 0
        top5 = np.argsort(-scores[known], axis=1)[:, :5]
        return {
            "top1": float(np.mean(classes[known] == labels[known])),
            "top5": float(np.mean([lb in t for lb, t in zip(labels[known], top5)])),
            "labelled_images": int(known.sum()),
        }
    if annotations == "masks" and masks is not None:
        truth = _resize_masks(masks, classes.shape[1:])
        valid = truth != IGNORE_LABEL
        ious = []
        for c in range(scores.shape[1]):
            pred, true = (classes == c) & valid, (truth == c) & valid
            union = np.sum(pred | true)
            if union:
                ious.append(np.sum(pred & true) / union)
        return {
            "miou": float(np.mean(ious)) if ious else 0.0,
            "pixel_accuracy": float(np.mean(classes[valid] == truth[valid])),
            "labelled_images": len(masks),
        }
    return {}


def reference(
    float_onnx: str | Path,
    *,
    manifest_json: str | Path,
    spec: dict,
    out_npz: str | Path,
    out_json: str | Path,
    threads: int = 1,
    datasets_dir: str | Path = "results/datasets",
    cache_dir: str | Path | None = None,
) -> dict:
    if TASKS.get(spec["task"]).decoded:
        from npuflow.evaluation import detect_eval

        return detect_eval.reference(
            float_onnx,
            manifest_json=manifest_json,
            spec=spec,
            out_npz=out_npz,
            out_json=out_json,
            threads=threads,
            datasets_dir=datasets_dir,
            cache_dir=cache_dir,
        )
    start = time.perf_counter()
    manifest = Manifest.read(manifest_json)
    ev = spec["evaluation"]
    batch = held_out_batch(spec, manifest.preprocessing, datasets_dir, cache_dir)
    model = expose_logits(load(float_onnx))
    sess, name, outs, seconds = run_model(model, batch.images, threads)
    scores, classes = scores_and_classes(outs)
    problem = label_problem(scores, batch.labels, batch.masks, spec["task"], ev["dataset"])
    if problem:
        raise DatasetError(problem)
    fp32_ms, repeats, fp32_spread = host_latency_ms(sess, {name: batch.images[:1]}, ev["latency_repeats"], seconds)
    extra = {k: v for k, v in (("labels", batch.labels), ("masks", batch.masks)) if v is not None}
    with atomic_path(out_npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=batch.images, scores=scores, classes=classes, **extra)
    accuracy = task_metrics(scores, classes, batch.labels, batch.masks, spec["task"])
    report = ReferenceReport(
        images=len(batch.images),
        dataset=ev["dataset"],
        image_sources=batch.names,
        accuracy={f"float_{k}": v for k, v in accuracy.items() if f"float_{k}" in FLOAT_ACCURACY},
        labelled_images=accuracy.get("labelled_images"),
        host_fp32_ms=fp32_ms,
        host_fp32_repeats=repeats,
        host_fp32_spread=fp32_spread,
        host_threads=threads,
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report.to_json()


def fidelity(ref_scores, ref_classes, scores, classes, task: str) -> dict:
    f = ref_scores.reshape(len(ref_scores), -1).astype(np.float64)
    q = scores.reshape(len(scores), -1).astype(np.float64)
    cos = np.sum(f * q, axis=1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-30)
    noise = np.sum((f - q) ** 2)
    metrics = {
        "cosine": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "sqnr_db": float(10 * np.log10(np.sum(f**2) / noise)) if noise > 0 else float("inf"),
        "max_abs_error": float(np.max(np.abs(f - q))),
    }
    agreement = TASKS.get(task).agreement  # features: none (outputs without classes)
    if "top1_agreement" in agreement:
        top5 = np.argsort(-scores, axis=1)[:, :5]
        metrics["top1_agreement"] = float(np.mean(ref_classes == classes))
        metrics["top5_agreement"] = float(np.mean([rc in t for rc, t in zip(ref_classes, top5)]))
    if "pixel_agreement" in agreement:
        metrics["pixel_agreement"] = float(np.mean(ref_classes == classes))
    return metrics


def evaluate(
    quant_onnx: str | Path,
    *,
    reference_npz: str | Path,
    reference_json: str | Path,
    manifest_json: str | Path,
    spec: dict,
    recipe: str,
    out_json: str | Path,
    threads: int = 1,
) -> dict:
    """Fidelity and task accuracy of a quantised model against the float reference, and its host
    latency (the per-layer analysis is `analyse`'s)."""
    if TASKS.get(spec["task"]).decoded:
        from npuflow.evaluation import detect_eval

        return detect_eval.evaluate(
            quant_onnx,
            reference_npz=reference_npz,
            reference_json=reference_json,
            manifest_json=manifest_json,
            spec=spec,
            recipe=recipe,
            out_json=out_json,
            threads=threads,
        )
    start = time.perf_counter()
    ref = np.load(reference_npz)
    ref_report = ReferenceReport.read(reference_json)
    manifest = Manifest.read(manifest_json)
    quant_model = load(quant_onnx)
    model = expose_logits(quant_model)
    sess, name, outs, seconds = run_model(model, ref["images"], threads)
    scores, classes = scores_and_classes(outs)
    int8_ms, repeats, int8_spread = host_latency_ms(sess, {name: ref["images"][:1]}, spec["evaluation"]["latency_repeats"], seconds)
    labels = ref["labels"] if "labels" in ref else None
    masks = ref["masks"] if "masks" in ref else None
    problem = label_problem(scores, labels, masks, spec["task"], ref_report.dataset)
    if problem:
        raise DatasetError(problem)
    accuracy = task_metrics(scores, classes, labels, masks, spec["task"])
    figures = {
        **fidelity(ref["scores"], ref["classes"], scores, classes, spec["task"]),
        **accuracy,
        **ref_report.accuracy,
        "host_fp32_ms": ref_report.host_fp32_ms,
        "host_int8_ms": int8_ms,
        **({"host_fp32_spread": ref_report.host_fp32_spread} if ref_report.host_fp32_spread is not None else {}),
        "host_int8_spread": int8_spread,
    }
    unnamed = set(figures) - set(EVAL_METRICS) - {"labelled_images"}
    if unnamed:  # a figure every run, row and column shares needs its name in records.EVAL_METRICS
        raise RuntimeError(f"evaluation figures without a metric name: {sorted(unnamed)}")
    report = EvalReport(
        model=spec["name"],
        recipe=recipe,
        task=spec["task"],
        weights=manifest.weights,
        images=len(ref["images"]),
        dataset=ref_report.dataset,
        metrics={k: figures[k] for k in EVAL_METRICS if k in figures},
        labelled_images=accuracy.get("labelled_images"),
        host_int8_repeats=repeats,
        host_threads=threads,
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report.to_json()


def analyse(
    quant_onnx: str | Path,
    *,
    float_onnx: str | Path,
    reference_npz: str | Path,
    spec: dict,
    out_layers: str | Path,
    threads: int = 1,
) -> dict:
    """The per-layer precision analysis (npuflow.evaluation.layers) of a quantised model against the float
    model, on the first `evaluation.analysis_images` of the reference's images, any task."""
    from npuflow.evaluation.layers import COSINE_FLOOR, analyse_layers, fidelity_check, flag_summary, worst_rows

    start = time.perf_counter()
    ref = np.load(reference_npz)
    images = ref["images"][: spec["evaluation"]["analysis_images"]]
    float_model, quant_model = load(float_onnx), load(quant_onnx)
    rows = analyse_layers(float_model, quant_model, images, threads)
    check = None
    if not TASKS.get(spec["task"]).decoded:  # the table's output row against the headline's formula
        _, _, outs, _ = run_model(expose_logits(quant_model), images, threads)
        scores, _ = scores_and_classes(outs)
        scores_at = 1 if len(outs) == 2 and np.issubdtype(outs[0].dtype, np.integer) else 0  # as scores_and_classes
        scores_tensor = expose_logits(float_model).graph.output[scores_at].name  # the table's name for it: the float model's
        check = fidelity_check(rows, scores_tensor, ref["scores"], scores, len(images))
        if check and not check["agrees"]:
            print(
                f"WARNING: headline cosine {check['headline_cosine']:.4f} disagrees with the per-layer table's output row"
                f" ({check['tensor']}: {check['layer_table_cosine']:.4f}) on the same {check['images']} images",
                flush=True,
            )
    flags = flag_summary(rows)
    if flags["flagged_tensors"]:
        print(
            f"WARNING: {flags['flagged_tensors']} tensors lost their signal in the quantised model (constant while the float one"
            f" is not: {flags['collapsed_tensors']}; or cosine below {COSINE_FLOOR}), first: {', '.join(flags['flagged_names'])}",
            flush=True,
        )
    report = LayerAnalysis(
        images=len(images),
        rows=rows,
        worst_layers=worst_rows(rows),
        fidelity_check=check,
        **flags,
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_layers)
    return {"images": report.images, "layers": len(rows), "worst_layers": report.worst_layers, **flags, "seconds": report.seconds}
