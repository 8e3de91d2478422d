"""Per-layer precision analysis, like Pulsar2's precision_analysis table: for every tensor a node
produces, the float model's value against the quantised model's (as its consumers see it, after
Quantize/Dequantize) on held-out images — cosine, SQNR, MSE — and the local error the tensor's own
quantisation adds (its value before vs after its Q/DQ pair). Errors accumulate through the graph,
as in the vendor tables; the local SQNR is what ranks layers for mixed precision."""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path

import numpy as np

from npuflow.evaluation import segments
from npuflow.util.io import atomic_path
from npuflow.util.onnxutil import OutputBuffer, ReusedOutputs, input_name, session
from npuflow.util.progress import log, progress

COLUMNS = [
    "tensor",
    "node",
    "op_type",
    "shape",
    "dtype",
    "quantized_dtype",
    "cosine",
    "sqnr_db",
    "mse",
    "local_sqnr_db",
    "float_rms",
    "unranked",
    "collapsed",
    "below_floor",
]
# A tensor whose quantised value keeps less than this cosine to the float one has lost its signal:
# int8 layers of a working model stay above 0.9, a noisy one around 0.5-0.8, while a collapsed one
# (SegFormer's Softmax on a [0, 1] grid, all zeros: cosine 0) sits near 0. Rows below it are flagged
# (`below_floor`), counted in the layer record and MLflow, and shown on the report's headline row.
COSINE_FLOOR = 0.2
# How many flagged tensors the layer record names (the count covers them all).
FLAGGED_NAMES = 5
# A tensor whose RMS is below this fraction of its node's largest input RMS holds rounding residue
# (LayerNorm's ReduceMean of an already centred tensor): its cosine and SQNR compare noise with
# noise (SegFormer: cosine -0.001, SQNR -114 dB), so it is left out of the worst-layer ranking.
# Relative, because a random-weight model's activations may all be tiny.
NEAR_ZERO_RATIO = 1e-4
_SKIP = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape"}
_QTYPES = {3: "int8", 2: "int8", 5: "int16", 4: "int16"}  # onnx TensorProto INT8, UINT8, INT16, UINT16


def _float_tensors(model) -> list[tuple[str, str, str, list[int]]]:
    """(tensor, node, op_type, shape) for every float tensor a node of the float model produces."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    info = {vi.name: vi.type.tensor_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = []
    for n in model.graph.node:
        if n.op_type in _SKIP:
            continue
        for t in n.output:
            tt = info.get(t)
            if tt is not None and tt.elem_type == onnx.TensorProto.FLOAT:
                out.append((t, n.name, n.op_type, [d.dim_value for d in tt.shape.dim]))
    return out


def _with_outputs(model, names: list[str], shapes: dict[str, list[int]]):
    """The model with `names` as its outputs, each with its shape where known (0: unknown), so
    that onnxutil.ReusedOutputs can preallocate it."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in names:
        shape = shapes.get(name)
        known = shape is not None and all(d > 0 for d in shape)
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape if known else None))
    return m


def _whole(model, groups: list[list[str]], shapes: dict[str, list[int]]) -> list[segments.Segment]:
    """One segment per group that is the whole model exposing the group (a graph npuflow.evaluation.segments
    cannot cut): every node runs once per group."""
    fed = (input_name(model),)
    return [segments.Segment(_with_outputs(model, g, shapes), fed, tuple(g), tuple(g), frozenset()) for g in groups]


def _segments(model, groups: list[list[str]], shapes: dict[str, list[int]]) -> list[segments.Segment]:
    """The model cut into one segment per group, or, where it cannot be cut, the whole model for
    each group (the same figures, each node run once per group: said in the job's log)."""
    cut = segments.cut(model, groups)
    if cut is None and len(groups) > 1:
        log(
            f"layer analysis: {model.graph.name or 'the model'} cannot be cut into segments; it runs whole for each of its {len(groups)} groups"
        )
    return cut or _whole(model, groups, shapes)


def _qdq_of(quant_model) -> dict[str, tuple[str, str]]:
    """{tensor: (its dequantised name, quantised dtype)} for tensors behind a Q/DQ pair. A chain
    of pairs (a float node's same-grid int16 step before its int8 one, npuflow.quant.quantize) counts
    as its last pair: what the consumers read."""
    from onnx import numpy_helper

    inits = {i.name: i for i in quant_model.graph.initializer}
    dq_of = {n.input[0]: n.output[0] for n in quant_model.graph.node if n.op_type == "DequantizeLinear"}
    pairs = {}
    for n in quant_model.graph.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in dq_of:
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            dtype = _QTYPES.get(zp.data_type, "int8") if zp is not None else "int8"
            if zp is not None and zp.data_type not in _QTYPES:
                dtype = str(numpy_helper.to_array(zp).dtype)
            pairs[n.input[0]] = (dq_of[n.output[0]], dtype)
    out = {}
    for tensor, last in pairs.items():
        while last[0] in pairs:
            last = pairs[last[0]]
        out[tensor] = last
    return out


# Activations a session returns per image are held at once; tensors are analysed in groups of at
# most this many float bytes (the quantised side holds up to twice that: before and after Q/DQ), so
# SegFormer at 640×1280 (~5 GB of activations per image) fits beside other jobs.
GROUP_BYTES = 2 * 1024**3


def _groups(tensors: list[tuple], budget: int) -> list[list[tuple]]:
    groups, current, size = [], [], 0
    for t in tensors:
        nbytes = 4 * int(np.prod([d if d > 0 else 1 for d in t[3]] or [1]))
        if current and size + nbytes > budget:
            groups.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    return groups + ([current] if current else [])


# Elements per float64 block of `_accumulate`: blocks that stay in cache, where converting a whole
# activation (SegFormer: ~5 GB an image in all) wrote fresh pages each time (20M elements: 0.08 s
# in blocks against 0.6 s whole).
BLOCK = 1 << 18


def _accumulator() -> np.ndarray:
    """f·q, f², q², (f−q)², count, (pre−q)², then min q, max q, min f, max f (`_accumulate`)."""
    return np.array([0.0] * 6 + [math.inf, -math.inf, math.inf, -math.inf])


def _accumulate(acc: np.ndarray, f: np.ndarray, q: np.ndarray, pre: np.ndarray | None) -> None:
    """acc += (f·q, f·f, q·q, (f−q)², size, (pre−q)²) in float64, for a float tensor `f`, its
    quantised value `q` as consumers read it and, where it has a Q/DQ pair, its value `pre` before;
    acc[6:10] keep the range of q and of f (a constant tensor: min == max)."""
    f, q = f.ravel(), q.ravel()
    pre = None if pre is None else pre.ravel()
    fb, qb, db = (np.empty(min(f.size, BLOCK)) for _ in range(3))
    for start in range(0, f.size, BLOCK):
        end = min(start + BLOCK, f.size)
        fk, qk, dk = fb[: end - start], qb[: end - start], db[: end - start]
        fk[:], qk[:] = f[start:end], q[start:end]
        acc[0] += fk @ qk
        acc[1] += fk @ fk
        acc[2] += qk @ qk
        np.subtract(fk, qk, out=dk)
        acc[3] += dk @ dk
        acc[6], acc[7] = min(acc[6], qk.min()), max(acc[7], qk.max())
        acc[8], acc[9] = min(acc[8], fk.min()), max(acc[9], fk.max())
        if pre is not None:
            np.subtract(pre[start:end], qk, out=dk)
            acc[5] += dk @ dk
    acc[4] += f.size


def analyse_layers(float_model, quant_model, images: np.ndarray, threads: int = 2, group_bytes: int = GROUP_BYTES) -> list[dict]:
    """One row per float tensor produced by a node, in graph order."""
    tensors = _float_tensors(float_model)
    quant_names = {o for n in quant_model.graph.node for o in n.output}
    tensors = [t for t in tensors if t[0] in quant_names]
    qdq = _qdq_of(quant_model)
    fin, qin = input_name(float_model), input_name(quant_model)
    acc = {t[0]: _accumulator() for t in tensors}
    shapes = {t[0]: t[3] for t in tensors}  # a dequantised tensor has its float tensor's shape
    shapes.update({qdq[t][0]: shapes[t] for t in shapes if t in qdq})
    groups = _groups(tensors, group_bytes)
    float_groups = [[t[0] for t in group] for group in groups]
    post_of = {t: qdq[t][0] if t in qdq else t for t in acc}
    quant_groups = [sorted({*names, *(post_of[t] for t in names)}) for names in float_groups]
    # Each group's tensors from the segment of the graph that computes them, fed what the segments
    # before it computed (npuflow.evaluation.segments): each node runs once per image, not once per group.
    fsegs, qsegs = (_segments(m, g, shapes) for m, g in ((float_model, float_groups), (quant_model, quant_groups)))
    fkept, qkept = [{} for _ in images], [{} for _ in images]
    # Every segment's outputs go into the same two buffers, so their pages stay warm across runs.
    fbuffer, qbuffer = OutputBuffer(), OutputBuffer()
    for names, fseg, qseg in progress(list(zip(float_groups, fsegs, qsegs)), "layer analysis (tensor groups)", unit="group"):
        # No arena: it kept each run's high-water mark of buffers beside the activations the run
        # returned (SegFormer's peak: 9.0 GB with it, 7.2 GB without).
        frun, qrun = (
            ReusedOutputs(session(seg.model, threads, arena=False), buffer).run if seg.model else None
            for seg, buffer in ((fseg, fbuffer), (qseg, qbuffer))
        )
        for i, img in enumerate(images):
            fvals, fkept[i] = fseg.step(frun, {fin: img[None]}, fkept[i])
            qvals, qkept[i] = qseg.step(qrun, {qin: img[None]}, qkept[i])
            for t in names:
                post = post_of[t]
                pre = qvals[t] if post != t else None  # without a Q/DQ pair: no local error
                _accumulate(acc[t], fvals[t], qvals[post], pre)
            del fvals, qvals
        del frun, qrun
    rms_of = {t: float(np.sqrt(a[1] / max(a[4], 1))) for t, a in acc.items()}
    inputs_of = {n.name: list(n.input) for n in float_model.graph.node}
    rows = []
    for t, node, op_type, shape in tensors:
        fq, ff, qq, err, count, local, qmin, qmax, fmin, fmax = map(float, acc[t])
        rms = rms_of[t]
        input_rms = max((rms_of[i] for i in inputs_of.get(node, []) if i in rms_of), default=None)
        unranked = unranked_reason(t in qdq, rms, input_rms)
        cosine = _cosine(fq, ff, qq)
        # a near-zero tensor's figures compare rounding residue with residue: never flagged
        judged = unranked != "near zero"
        rows.append(
            {
                "tensor": t,
                "node": node,
                "op_type": op_type,
                "shape": "x".join(map(str, shape)),
                "dtype": "float32",
                "quantized_dtype": qdq[t][1] if t in qdq else "float",
                "cosine": cosine,
                "sqnr_db": _db(ff, err),
                "mse": float(err / max(count, 1)),
                "local_sqnr_db": _db(qq, local),
                "float_rms": rms,
                "unranked": unranked,
                "collapsed": judged and qmin == qmax and fmin < fmax,
                "below_floor": judged and cosine < COSINE_FLOOR,
            }
        )
    return rows


def unranked_reason(quantised: bool, float_rms: float, input_rms: float | None) -> str:
    """Why a tensor's row is left out of the worst-layer ranking ('' when it is ranked): a tensor
    the quantised model keeps float adds no error of its own (it carries its inputs'), and a
    near-zero one (against its node's inputs, `input_rms`) has figures that compare noise with noise."""
    if not quantised:
        return "not quantised"
    if input_rms is not None and float_rms < NEAR_ZERO_RATIO * input_rms:
        return "near zero"
    return ""


def worst_rows(rows: list[dict], n: int = 5) -> list[dict]:
    """The eval report's worst layers: the n ranked rows of lowest cosine, their key figures."""
    keys = ("tensor", "op_type", "quantized_dtype", "cosine", "sqnr_db")
    return [{k: r[k] for k in keys} for r in sorted(ranked(rows), key=lambda r: r["cosine"])[:n]]


# The headline fidelity and the per-layer table's output row measure the same tensor on the same
# images, the headline through the session a runtime would optimise, the table through one whose
# exposed tensors keep every op unfused. Beyond this gap in cosine they do not measure the same
# model (DeiT-Tiny's "float" Softmax fused into an int8 kernel: 0.50 against 0.976).
FIDELITY_CHECK_TOLERANCE = 0.02


def fidelity_check(rows: list[dict], tensor: str, ref_scores: np.ndarray, scores: np.ndarray, images: int) -> dict | None:
    """The headline's cosine over the analysis images (the table's formula) against the table's
    row for the output `tensor`; None when the table has no row for it."""
    row = next((r for r in rows if r["tensor"] == tensor), None)
    if row is None:
        return None
    f = ref_scores[:images].astype(np.float64).ravel()
    q = scores[:images].astype(np.float64).ravel()
    headline = float(f @ q / np.sqrt((f @ f) * (q @ q))) if f @ f > 0 and q @ q > 0 else 0.0
    gap = abs(headline - row["cosine"])
    return {
        "tensor": tensor,
        "images": int(min(images, len(scores))),
        "headline_cosine": headline,
        "layer_table_cosine": row["cosine"],
        "gap": gap,
        "tolerance": FIDELITY_CHECK_TOLERANCE,
        "agrees": bool(gap <= FIDELITY_CHECK_TOLERANCE),
    }


def fidelity_check_text(check: dict | None) -> str:
    """The eval report's fidelity check in words, for a run's params and the report."""
    if not check:
        return "not checked (no per-layer row for the output)"
    verdict = "agrees" if check["agrees"] else "DISAGREES"
    return (
        f"{verdict}: headline cosine {check['headline_cosine']:.4f} vs per-layer output row {check['layer_table_cosine']:.4f}"
        f" on {check['images']} images (tolerance {check['tolerance']})"
    )


def ranked(rows: list[dict]) -> list[dict]:
    """The rows the worst-layer rankings (report, summary.csv, MLflow, eval report) consider."""
    return [r for r in rows if not r.get("unranked")]


def flagged(row: dict) -> bool:
    """Whether a row's quantised tensor lost its float signal: constant (`collapsed`) or below the
    cosine floor (`below_floor`). Rows read back from the CSV hold the flags as booleans too."""
    return bool(row.get("collapsed")) or bool(row.get("below_floor"))


def flag_text(row: dict) -> str:
    """A row's flag as the report's per-layer table shows it ('' when not flagged)."""
    if row.get("collapsed"):
        return "collapsed (constant in int8)"
    return f"cosine < {COSINE_FLOOR}" if row.get("below_floor") else ""


def flag_summary(rows: list[dict]) -> dict:
    """The layer record's flag fields: how many tensors are flagged (collapsed or below the cosine
    floor), how many collapsed, and the first `FLAGGED_NAMES` flagged ones, worst (lowest cosine) first."""
    hits = sorted((r for r in rows if flagged(r)), key=lambda r: r["cosine"])
    return {
        "flagged_tensors": len(hits),
        "collapsed_tensors": sum(bool(r.get("collapsed")) for r in hits),
        "flagged_names": [r["tensor"] for r in hits[:FLAGGED_NAMES]],
    }


def _cosine(fq: float, ff: float, qq: float) -> float:
    """f·q / (|f| |q|); 1 when both are zero, 0 when one is. Square roots taken apart, so that no
    product of two tiny energies underflows to a division by zero."""
    if ff > 0 and qq > 0:
        return fq / (math.sqrt(ff) * math.sqrt(qq))
    return 1.0 if ff == qq else 0.0


def _db(signal: float, noise: float) -> float:
    """10·log10(signal / noise) as a difference of logarithms (a ratio of a tiny signal over a
    large noise underflowed to 0 and log10 divided by zero); +inf without noise (an exact match),
    -inf for a zero signal (a tensor quantised to all zeros). Never a warning, never NaN."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10 * (math.log10(signal) - math.log10(noise))


def write_layers_csv(rows: list[dict], path: str | Path, extra_columns: list[str] = ()) -> None:
    """Worst ranked layers first (lowest cosine), as the report shows them; then the unranked rows."""
    columns = COLUMNS + [c for c in extra_columns if c not in COLUMNS]
    ordered = sorted(rows, key=lambda r: (bool(r.get("unranked")), r["cosine"], r["sqnr_db"]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in ordered:
            w.writerow({k: _csv_cell(v) for k, v in r.items()})


def _csv_cell(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:.6g}" if isinstance(v, float) else v


def read_layers_csv(path: str | Path) -> list[dict]:
    """The per-layer table as `write_layers_csv` wrote it; cosine, SQNR and MSE as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("cosine", "sqnr_db", "mse", "local_sqnr_db", "float_rms"):
            if r.get(col) not in (None, ""):
                with contextlib.suppress(ValueError):
                    r[col] = float(r[col])
        for col in ("collapsed", "below_floor"):
            if col in r:
                r[col] = r[col] in ("True", "true", "1")
    return rows
