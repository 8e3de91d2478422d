"""Small ONNX models the PTQ methods apply to (the registry's `example`, for the tests): the
imbalance each method exists for is built in."""

from __future__ import annotations

import numpy as np


def _model(nodes, inits: dict, x_shape, y_shape, name: str):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def conv_chain():
    """MobileNetV2's block: pointwise Conv → ReLU6 → depthwise Conv → Relu → pointwise Conv, its
    first conv's output channels spanning three orders of magnitude (as BN folding leaves them)."""
    from onnx import helper

    rng = np.random.default_rng(0)
    c_in, c, c_out = 4, 8, 6
    spread = np.logspace(-1.5, 1.0, c).astype(np.float32)
    inits = {
        "w1": rng.standard_normal((c, c_in, 1, 1)) * spread[:, None, None, None],
        "b1": rng.standard_normal(c) * spread * 0.1 + 0.5,
        "wd": rng.standard_normal((c, 1, 3, 3)) / spread[:, None, None, None] ** 0.5,
        "bd": rng.standard_normal(c) * 0.1,
        "w2": rng.standard_normal((c_out, c, 1, 1)) * 0.3,
        "b2": rng.standard_normal(c_out) * 0.1,
        "zero": np.array(0.0),
        "six": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="pw1"),
        helper.make_node("Clip", ["a", "zero", "six"], ["a6"], name="relu6"),
        helper.make_node("Conv", ["a6", "wd", "bd"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["dr"], name="relu"),
        helper.make_node("Conv", ["dr", "w2", "b2"], ["y"], name="pw2"),
    ]
    return _model(nodes, inits, (1, c_in, 8, 8), (1, c_out, 8, 8), "conv_chain")


def norm_mlp():
    """A transformer's LayerNorm → FC1 (MatMul + Add) → Relu → FC2, two of the norm's channels
    scaled 50× (the structural activation outliers of vision transformers)."""
    from onnx import helper

    rng = np.random.default_rng(1)
    c, hidden = 16, 32
    gamma = np.ones(c)
    gamma[[3, 11]] = 50.0
    inits = {
        "gamma": gamma,
        "beta": rng.standard_normal(c) * 0.1,
        "w1": rng.standard_normal((c, hidden)) * 0.2,
        "b1": rng.standard_normal(hidden) * 0.1,
        "w2": rng.standard_normal((hidden, c)) * 0.2,
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, (1, 10, c), (1, 10, c), "norm_mlp")


def images_for(model, n: int = 8, seed: int = 0) -> np.ndarray:
    """Calibration-like inputs for an example: normal noise of its input's shape (batch 1 each)."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal((n, *dims[1:])).astype(np.float32)
