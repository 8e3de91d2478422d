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


_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}
_ALIGN = 64


class OutputBuffer:
    """Bytes that successive runs' outputs are written into, grown to the largest run. Reusing
    warm pages matters on this VM: a fresh buffer per run made runs that return gigabytes of
    activations allocation-bound (SegFormer's per-layer tensor group at 640×1280: 8 s a run,
    1–2 s into reused pages)."""

    def __init__(self):
        self._bytes = np.empty(0, np.uint8)

    def take(self, nbytes: int) -> np.ndarray:
        if nbytes > self._bytes.size:
            self._bytes = np.empty(0, np.uint8)  # let the old pages go before taking new ones
            self._bytes = np.empty(nbytes, np.uint8)
        return self._bytes


class ReusedOutputs:
    """Runs one session with its outputs written into an OutputBuffer (its own, or one shared
    with other sessions run in turn). The arrays `run` returns are views of the buffer, valid
    until the next run on it. Outputs whose shape the session does not state (a dynamic dimension)
    are left to onnxruntime to allocate, run by run."""

    def __init__(self, sess, buffer: OutputBuffer | None = None):
        self.sess, self.buffer = sess, buffer or OutputBuffer()
        self._outputs = sess.get_outputs()
        self._specs = [self._stated(o) for o in self._outputs]
        self._sizes = [int(np.prod(s[0])) * s[1].itemsize if s else 0 for s in self._specs]
        self._offsets = np.cumsum([0] + [-(-n // _ALIGN) * _ALIGN for n in self._sizes])

    @staticmethod
    def _stated(out) -> tuple[tuple[int, ...], np.dtype] | None:
        dtype = _DTYPES.get(out.type)
        if dtype is None or not out.shape or not all(isinstance(d, int) and d > 0 for d in out.shape):
            return None
        return tuple(out.shape), np.dtype(dtype)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        memory = self.buffer.take(int(self._offsets[-1]))
        binding = self.sess.io_binding()
        # Kept until the outputs are copied: an output that is an input (a calibration model
        # outputs its input) comes back as the feed's own memory, and a strided image's
        # contiguous copy would be freed by then.
        fed = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        for name, array in fed.items():
            binding.bind_cpu_input(name, array)
        views = []
        for out, spec, size, offset in zip(self._outputs, self._specs, self._sizes, self._offsets):
            if spec is None:
                binding.bind_output(out.name, "cpu")
                views.append(None)
                continue
            view = memory[offset : offset + size].view(spec[1]).reshape(spec[0])
            binding.bind_output(out.name, "cpu", 0, spec[1], list(spec[0]), view.ctypes.data)
            views.append(view)
        self.sess.run_with_iobinding(binding)
        # onnxruntime may hand back a value of its own instead of writing into the bound buffer (an
        # input or a constant as an output): copy that one.
        for i, value in enumerate(binding.get_outputs()):
            if views[i] is None or value.data_ptr() != views[i].ctypes.data:
                views[i] = value.numpy().copy()
        return views


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


def lift_constants(model) -> int:
    """Turn the main graph's numeric Constant nodes into initializers, in place (exporters such as
    paddle2onnx store every weight as a Constant node; calibration, PTQ and the simulator look for
    weights among the initializers). Returns how many were lifted."""
    from onnx import numpy_helper

    graph = model.graph
    kept, lifted = [], []
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" else None
        if value is None:
            kept.append(node)
        else:
            lifted.append(numpy_helper.from_array(value, node.output[0]))
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(lifted)
    return len(lifted)


def _constant_value(node) -> np.ndarray | None:
    """A Constant node's value as an array, or None for the forms that are not plain numbers
    (strings, sparse tensors)."""
    from onnx import helper, numpy_helper

    (attr,) = node.attribute
    if attr.name == "value":
        array = numpy_helper.to_array(attr.t)
        return None if array.dtype.kind in "OSU" else array
    plain = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name in plain:
        return np.asarray(helper.get_attribute_value(attr), dtype=plain[attr.name])
    return None
