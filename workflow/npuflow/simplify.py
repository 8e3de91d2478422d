"""Stage simplify: onnxsim (constant folding, shape-op elimination), with outputs checked equal
in onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .export import fixed_input
from .errors import NpuflowError
from .io import atomic_path, write_json
from .onnxutil import input_name, load, op_counts, run_onnx

SIMPLIFY_ATOL = 1e-4


class SimplifyError(NpuflowError):
    pass


def outputs_close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> float:
    """Max abs difference between two output lists; raise if shapes differ."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"output shape changed: {x.shape} vs {y.shape}")
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def simplify(in_onnx: str | Path, out_onnx: str | Path, out_json: str | Path, threads: int = 1) -> dict:
    import onnx
    import onnxsim

    start = time.perf_counter()
    model = load(in_onnx)
    simplified, ok = onnxsim.simplify(model, check_n=0)
    if not ok:
        raise SimplifyError(f"onnxsim could not simplify {in_onnx}")
    name = input_name(model)
    shape = [d.dim_value for d in next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim]
    feeds = {name: fixed_input(shape)}
    before = run_onnx(model, feeds, threads)
    after = run_onnx(simplified, feeds, threads)
    diff = outputs_close(before, after, SIMPLIFY_ATOL)
    scale = max(1.0, max(float(np.max(np.abs(o))) for o in before))
    if diff > SIMPLIFY_ATOL * scale:
        raise SimplifyError(f"onnxsim changed outputs of {in_onnx} by {diff:.3g}")
    with atomic_path(out_onnx) as tmp:
        onnx.save(simplified, str(tmp))
    ops_before, ops_after = op_counts(model), op_counts(simplified)
    report = {
        "ops_before": ops_before,
        "ops_after": ops_after,
        "nodes_before": sum(ops_before.values()),
        "nodes_after": sum(ops_after.values()),
        "max_abs_diff": diff,
        "onnxsim_version": onnxsim.__version__,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_json, report)
    return report
