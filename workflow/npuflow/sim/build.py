"""Stage build: a simulated compile of the quantised model for one target, written as build.json
(the figures), trace.json (the timeline) and summary.txt, and the per-layer table when the
precision analysis is given."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from npuflow.sim.analysis import Analysis, Simulation, analyse, frames_per_s, simulate
from npuflow.sim.cost import UNIT_CODES, tensor_ops
from npuflow.sim.render import chrome_trace, readable_summary
from npuflow.util.io import atomic_path, write_json

UNITS = tuple(UNIT_CODES)


def profile_basis(profile: dict) -> str:
    """What a profile's rates rest on, as the build summary and reports say it."""
    fit = profile.get("fit")
    if fit and profile.get("fit_only") and profile.get("transfer_from"):
        rows, only = fit["data"]["rows"], len(profile["fit_only"])
        return (
            f"few-shot: {only} parameter{'s' * (only > 1)} fitted to {rows} published measurement{'s' * (rows > 1)} "
            f"({fit['data']['csv']}), the rest from the {profile['transfer_from']} fit"
        )
    if fit:
        return f"fitted to {fit['data']['rows']} published measurements ({fit['data']['csv']})"
    if profile.get("datasheet_only"):
        return "not fitted, datasheet only"
    moved = profile.get("transferred")
    if moved:
        return f"not fitted itself: the {moved['from']} fit's parameters on its own figures"
    return "profile not fitted to measurements"


def layer_table(rows: list[dict], analysis: Analysis, sim: Simulation) -> list[dict]:
    """The precision analysis rows with where each layer runs on this target and its simulated
    time (a fused node's time is its op's, given on the op's anchor; `fused_into` names it)."""
    index = {id(op): i for i, op in enumerate(analysis.ops)}
    graph_nodes = analysis.graph.by_name
    # onnxruntime's quantiser folds a Relu/Clip behind a Conv into it (the Conv writes the Relu's
    # tensor); such a row is the Conv's, which then has no row of its own
    producer = {t: n.name for n in analysis.graph.nodes for t in n.outputs}
    row_nodes = {r["node"] for r in rows}
    out = []
    for r in rows:
        node = r["node"]
        if node not in graph_nodes and producer.get(r["tensor"]) in analysis.mapping.op_of:
            node = producer[r["tensor"]]
        op = analysis.mapping.op_of.get(node)
        if op is None:
            unit = "free" if node in graph_nodes else ""
            out.append({**r, "unit": unit, "fused_into": "", "sim_time_us": 0.0 if unit else ""})
            continue
        if node != r["node"]:
            anchor = op.node.name == node and node not in row_nodes
            out.append({**r, "unit": op.unit, "fused_into": op.name, "sim_time_us": _op_us(sim, index[id(op)]) if anchor else 0.0})
            continue
        anchor = op.node.name == r["node"]
        out.append(
            {**r, "unit": op.unit, "fused_into": "" if anchor else op.name, "sim_time_us": _op_us(sim, index[id(op)]) if anchor else 0.0}
        )
    return out


def _op_us(sim: Simulation, i: int) -> float:
    return float(sim.costs.busy_s[i] + sim.costs.overhead_s[i]) * 1e6


def input_size(analysis: Analysis) -> int:
    """The model input's larger spatial side (0 when unknown)."""
    shapes = [analysis.graph.tensors[t].shape for t in analysis.graph.inputs if t in analysis.graph.tensors]
    return max((max(s[2:4]) for s in shapes if len(s) >= 4), default=0)


def prediction_intervals(analysis: Analysis, profile: dict, latency_ms: float, fps: float) -> dict:
    """The nominal-80 % intervals of the predicted latency and FPS (npuflow.sim.uncertainty):
    from the cross-validated residuals of comparable rows; {} before any fit wrote the table. The
    build knows the graph, not the task: its kind of work is told by the input size (dense at
    512 px and up)."""
    from npuflow.sim.uncertainty import comparable_class, interval, stored_table

    table = stored_table()
    cls = comparable_class(profile.get("family", ""), "", input_size(analysis))
    lat, thr = interval(table, cls, latency_ms, "latency_ms"), interval(table, cls, fps, "fps")
    return {"latency_ms_interval": lat, "fps_interval": thr} if lat and thr else {}


def build_report(analysis: Analysis, profile: dict, model_name: str = "", weights: str = "") -> tuple[dict, Simulation]:
    """build.json's figures and the batch-1 simulation they come from."""
    from npuflow.graph.precision import bits_name, recipe_id

    n = int(profile["batch"])
    many = simulate(analysis, profile, n)
    one = simulate(analysis, profile, 1)
    c, d, ops = one.costs, analysis.demands, analysis.ops
    latency_s = one.total_s
    unit_time = {u: float(c.busy_s[d.unit == code].sum()) for u, code in UNIT_CODES.items()}
    unit_time["overhead"] = float(c.overhead_s.sum() + c.part_overhead_s.sum() + c.input_s + c.output_s)
    peak = profile["units"]["tensor"]["peak_ops_per_s"]["int8"]
    macs = int(d.macs.sum())
    op_s = c.busy_s + c.overhead_s
    partition = []
    for p, part in enumerate(d.parts):
        members = d.part == p
        partition.append({**part, "ops": int(members.sum()), "time_ms": float(op_s[members].sum() + c.part_overhead_s[p]) * 1e3})
    padded_tensor = tensor_ops(d, profile)
    useful = np.where(padded_tensor > 0, d.tensor_useful, d.vector_useful)
    padded = np.where(padded_tensor > 0, padded_tensor, d.vector_ops)
    top = np.argsort(-op_s, kind="stable")[:10]
    report = {
        "model": model_name,
        "target": profile["name"],
        "chip": profile.get("chip", ""),
        "mode": profile.get("mode", ""),
        "simulated": True,
        "profile_fitted": bool(profile.get("fit")),
        "profile_basis": profile_basis(profile),
        **({"derived_from_base": profile["differs_from_base"]} if profile.get("differs_from_base") else {}),
        "weights": weights,
        "precision_recipe": recipe_id(analysis.recipe),
        "bits": bits_name(analysis.recipe),
        "latency_ms": latency_s * 1e3,
        "batch": n,
        "cores": int(profile.get("cores", 1)),
        "fps": frames_per_s(many, profile),
        "fps_batch1": frames_per_s(one, profile),
        "macs": macs,
        "tensor_utilisation": (2.0 * macs / peak) / latency_s,
        "subgraphs": sum(1 for p in d.parts if p["device"] == "npu"),
        "cpu_ops": int((d.unit == UNIT_CODES["cpu"]).sum()),
        "partition": partition,
        "ddr_bytes_per_frame": int(d.weight_bytes.sum() + c.spill_bytes.sum() + d.input_bytes + d.output_bytes),
        "unit_time_ms": {u: t * 1e3 for u, t in unit_time.items()},
        "unit_share": {u: t / latency_s for u, t in unit_time.items()},
        "ops": {
            "total": len(analysis.graph.nodes),
            "fused": sum(len(op.members) - 1 for op in ops),
            "free": len(analysis.graph.nodes) - sum(len(op.members) for op in ops),
        },
        "unknown_dims": analysis.graph.unknown_dims,
        # the fusion patterns recognised (npuflow.graph.patterns): {Swish: 77, Attention: 1}
        "patterns": dict(Counter(m.pattern for m in analysis.mapping.matches)),
        "top_ops": [
            {
                "name": ops[i].name,
                "op_type": ops[i].op_type,
                "fused": list(ops[i].fused),
                "unit": ops[i].unit,
                "precision": ops[i].precision,
                "time_ms": float(op_s[i]) * 1e3,
                "bound": "memory" if c.memory_s[i] > c.compute_s[i] else "compute",
                "padding_waste": float(1.0 - useful[i] / padded[i]) if padded[i] else 0.0,
            }
            for i in top
        ],
        "seconds": 0.0,
    }
    report.update(prediction_intervals(analysis, profile, report["latency_ms"], report["fps"]))
    return report, one


def build(
    quant_onnx: str | Path,
    profile: dict,
    out_dir: str | Path,
    model_name: str = "",
    weights: str = "",
    layer_rows: list[dict] | None = None,
    layers_csv: str | Path | None = None,
) -> dict:
    """Simulated compile: build.json, trace.json, summary.txt in `out_dir`; with the precision
    analysis rows, also the per-layer table for this target (`layers_csv`)."""
    import onnx

    start = time.perf_counter()
    analysis = analyse(onnx.load(str(quant_onnx)), profile)
    report, one = build_report(analysis, profile, model_name, weights)
    out_dir = Path(out_dir)
    if layer_rows is not None and layers_csv:
        from npuflow.evaluation.layers import write_layers_csv

        write_layers_csv(layer_table(layer_rows, analysis, one), layers_csv, ["unit", "fused_into", "sim_time_us"])
    write_json(out_dir / "trace.json", chrome_trace(one, profile["name"]))
    report["seconds"] = round(time.perf_counter() - start, 3)
    with atomic_path(out_dir / "summary.txt") as tmp:
        tmp.write_text(readable_summary(report))
    write_json(out_dir / "build.json", report)
    return report
