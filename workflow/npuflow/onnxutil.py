"""Small onnx/onnxruntime helpers shared by the stages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def fixed_input(shape, seed: int = 0) -> np.ndarray:
    """A reproducible input in the normalised-image range, for the stages' equivalence checks."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path))
    return model_or_path


def op_counts(model_or_path) -> dict[str, int]:
    graph = load(model_or_path).graph
    return dict(sorted(Counter(n.op_type for n in graph.node).items()))


def session(model_or_path, threads: int = 1, optimize: bool = True, arena: bool = True):
    """An onnxruntime CPU session. `arena=False` frees each buffer when the run is done with it
    instead of keeping the run's high-water mark for the next one."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnx(model_or_path, feeds: dict, threads: int = 1, outputs=None) -> list[np.ndarray]:
    return session(model_or_path, threads).run(outputs, feeds)


def input_name(model_or_path) -> str:
    graph = load(model_or_path).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Max abs difference between two output lists; raise if a shape differs."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"output shape changed: {x.shape} vs {y.shape}")
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def magnitude(outputs: list[np.ndarray]) -> float:
    """Largest abs value of the outputs: tolerances are relative to it (random-weight models can
    have outputs near 1e-8, where an absolute tolerance would check nothing)."""
    return max(max(float(np.max(np.abs(o))) for o in outputs), 1e-30)
