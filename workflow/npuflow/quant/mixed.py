"""Automatic mixed precision for one (model, target), like OpenVINO NNCF's accuracy-aware
quantisation but weighed against the target's simulated latency: starting from the target's
recipe, promote the layers whose own quantisation hurts most (lowest local SQNR in the precision
analysis) to int16 — 1, 2, 4, … at a time — then int16 ones to float, re-quantising and checking
the fidelity goal on images apart from both the calibration and the evaluation images, until the
goal is met, the step budget is spent, or the latency budget would be exceeded. Every step is a
point of the accuracy/latency trade-off curve; the chosen recipe is saved with the model."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

from npuflow.core.records import CalibrationReport, CurvePoint, Goal, LayerAnalysis, Manifest, MixedReport, MixedStep
from npuflow.data.batches import image_batches
from npuflow.graph.precision import embedded_precision, recipe_id
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import load
from npuflow.util.progress import log


def _score(model, images, ref_scores, ref_classes, task: str) -> dict:
    from npuflow.evaluation.evaluate import expose_logits, fidelity, run_model, scores_and_classes

    _, _, outs, _ = run_model(expose_logits(model), images, 2)
    scores, classes = scores_and_classes(outs)
    return fidelity(ref_scores, ref_classes, scores, classes, task)


def promotion_order(rows: list[dict], groups: dict[str, list[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """(int8 layers, int16 layers), each most sensitive first: lowest local SQNR, i.e. the most
    noise its own quantisation adds relative to the signal. A layer is a fused group on the target
    (conv + BN + activation run as one op), promoted together: `groups` maps a node to its group."""

    def order(dtype):
        ranked = sorted(
            (r for r in rows if r["quantized_dtype"] == dtype and r["local_sqnr_db"] != float("inf")), key=lambda r: r["local_sqnr_db"]
        )
        layers = {}
        for r in ranked:
            group = tuple(groups.get(r["node"], [r["node"]]))
            layers.setdefault(group, list(group))
        return list(layers.values())

    return order("int8"), order("int16")


def fused_groups(model, profile: dict) -> dict[str, list[str]]:
    """{node: the nodes of its fused group} as the simulator maps the model onto the target."""
    from npuflow.sim import analyse

    return analyse(model, profile).mapping.groups()


def mixed_precision(
    float_onnx: str | Path,
    *,
    manifest_json: str | Path,
    ranges_json: str | Path,
    calibration_json: str | Path,
    layers_json: str | Path,
    spec: dict,
    profile: dict,
    base_recipe: dict,
    out_onnx: str | Path,
    base_onnx: str | Path | None = None,
    out_quant_json: str | Path,
    out_json: str | Path,
    datasets_dir: str | Path = "results/datasets",
    cache_dir: str | Path | None = None,
) -> MixedReport:
    from npuflow.evaluation.evaluate import expose_logits, run_model, scores_and_classes
    from npuflow.quant.quantize import onnx_opset, quantize_model, quantize_report
    from npuflow.sim import analyse, simulate

    start = time.perf_counter()
    mp = spec["mixed_precision"]
    metric, goal = mp["goal"]["metric"], mp["goal"]["value"]
    calib = spec["calibration"]
    manifest = Manifest.read(manifest_json)
    calibration = CalibrationReport.read(calibration_json)
    options = calibration.quantization
    # Images after the calibration ones (and after auto-calibration's), never the evaluation images.
    skip = calib["images"] + (calib["selection_images"] if calib["method"] == "auto" else 0)
    batch = image_batches(
        calib["dataset"],
        "calibration",
        skip + mp["images"],
        spec["input"]["shape"],
        manifest.preprocessing,
        spec["seed"],
        datasets_dir,
        cache_dir,
    )
    images = batch.images[skip:]
    float_model = load(float_onnx)
    _, _, ref_outs, _ = run_model(expose_logits(copy.deepcopy(float_model)), images, 2)
    ref_scores, ref_classes = scores_and_classes(ref_outs)
    int8_layers, int16_layers = promotion_order(LayerAnalysis.read(layers_json).rows, fused_groups(float_model, profile))

    curve = []
    with tempfile.TemporaryDirectory(prefix="npuflow-mixed-") as tmp:

        def point(recipe: dict, promoted: dict, quantized_onnx: str | Path | None = None) -> dict:
            t0 = time.perf_counter()
            if quantized_onnx is None:
                path = Path(tmp) / f"step{len(curve)}.onnx"
                precision = quantize_model(copy.deepcopy(float_model), ranges_json, recipe, options, path)
            else:  # the base recipe's model, as the quantize stage made it: not quantised again
                path = Path(quantized_onnx)
                precision = embedded_precision(load(path))
            quantize_s = time.perf_counter() - t0
            quantized = load(path)
            fid = _score(quantized, images, ref_scores, ref_classes, spec["task"])
            latency_ms = simulate(analyse(quantized, profile), profile, 1).total_s * 1e3
            p = {
                "step": len(curve),
                "promoted": dict(promoted),
                "nodes_int16": sum(1 for d in promoted.values() if d == "int16"),
                "nodes_float": sum(1 for d in promoted.values() if d == "float"),
                metric: fid[metric],
                "cosine": fid["cosine"],
                "latency_ms": latency_ms,
                "recipe": recipe,
                "path": str(path),
                "precision": precision,
                "quantize_s": quantize_s,
            }
            curve.append(p)
            log(
                f"mixed precision step {p['step']}: {p['nodes_int16']} int16 / {p['nodes_float']} float nodes, "
                f"{metric} {p[metric]:.5f}, simulated {latency_ms:.4g} ms"
            )
            return p

        base = point(base_recipe, {}, base_onnx)
        base["within_budget"] = True
        budget_ms = base["latency_ms"] * (1 + mp["max_latency_increase_pct"] / 100)
        queue = [(layer, "int16") for layer in int8_layers] + [(layer, "float") for layer in int16_layers + int8_layers]
        promoted: dict[str, str] = {}
        k, last = 1, base
        while last[metric] < goal and len(curve) <= mp["max_steps"] and queue:
            step, queue = queue[:k], queue[k:]
            promoted.update({node: dtype for layer, dtype in step for node in layer})
            recipe = copy.deepcopy(base_recipe)
            recipe["layers"] = {**recipe.get("layers", {}), **promoted}
            last = point(recipe, promoted)
            last["within_budget"] = last["latency_ms"] <= budget_ms
            if not last["within_budget"]:
                break
            k *= 2
        feasible = [p for p in curve if p["within_budget"]]
        meeting = [p for p in feasible if p[metric] >= goal]
        chosen = meeting[0] if meeting else max(feasible, key=lambda p: p[metric])
        # The chosen step's model is the quantize stage's output for its recipe (the same
        # quantize_model call); kept, with the stage's report beside it, not quantised again.
        # Where the search keeps the base recipe, that is the base recipe's own model: a link to
        # it, not a second copy (Snakemake times a link by the link itself).
        with atomic_path(out_onnx) as out:
            if chosen["step"] == 0 and base_onnx is not None:
                out.unlink()
                out.symlink_to(os.path.relpath(Path(base_onnx).resolve(), Path(out_onnx).resolve().parent))
            else:
                shutil.copyfile(chosen["path"], out)
        quant = quantize_report(onnx_opset(float_model), out_onnx, chosen["precision"], chosen["recipe"], calibration, chosen["quantize_s"])
        quant.write(out_quant_json)
    for p in curve:  # the step's files and node map stay out of the report
        for key in ("path", "precision", "quantize_s"):
            p.pop(key)
    report = MixedReport(
        model=spec["name"],
        target=profile["name"],
        simulated_latency=True,
        goal=Goal(metric=metric, value=goal),
        goal_met=chosen[metric] >= goal,
        base=MixedStep(recipe_id=recipe_id(base_recipe), latency_ms=base["latency_ms"], **{metric: base[metric]}),
        chosen=MixedStep(
            step=chosen["step"],
            recipe=chosen["recipe"],
            latency_ms=chosen["latency_ms"],
            latency_increase_pct=100 * (chosen["latency_ms"] / base["latency_ms"] - 1),
            **{metric: chosen[metric]},
        ),
        latency_budget_ms=budget_ms,
        images=len(images),
        curve=[CurvePoint.from_json(p) for p in curve],
        seconds=round(time.perf_counter() - start, 3),
    )
    report.write(out_json)
    return report
