"""onnxutil.ReusedOutputs: the same values as a plain run, written into one reused buffer."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from npuflow.util.onnxutil import OutputBuffer, ReusedOutputs, session


def _model():
    """x -> Relu -> r -> Mul(r, 2) -> y, with outputs: y, the intermediate r, the input x itself,
    a constant, and r's shape (int64, its length not stated)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "two"], ["y"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Identity", ["two"], ["two_out"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f, [2, 3])],
        [
            helper.make_tensor_value_info("y", f, [2, 3]),
            helper.make_tensor_value_info("r", f, [2, 3]),
            helper.make_tensor_value_info("x", f, [2, 3]),
            helper.make_tensor_value_info("two_out", f, []),
            helper.make_tensor_value_info("shape", TensorProto.INT64, ["rank"]),
        ],
        [helper.make_tensor("two", f, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_reused_outputs_equal_a_plain_run_and_reuse_one_buffer():
    sess = session(_model())
    buffer = OutputBuffer()
    run = ReusedOutputs(sess, buffer)
    rng = np.random.default_rng(0)
    previous = None
    for _ in range(3):
        x = rng.standard_normal((3, 2)).astype(np.float32).T  # a strided feed, as an image batch's slice can be
        got, want = run.run({"x": x}), sess.run(None, {"x": x})
        assert len(got) == len(want) == 5
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(got[2], x)  # the input as an output: the feed's values, after the run
        np.testing.assert_array_equal(got[1], np.maximum(x, 0))
        if previous is not None:  # the stated float outputs land in the same pages every run
            assert np.shares_memory(got[0], previous[0]) and np.shares_memory(got[1], previous[1])
        previous = got
    # a second session on the same buffer writes into it too
    other = ReusedOutputs(session(_model()), buffer).run({"x": np.ones((2, 3), np.float32)})
    assert np.shares_memory(other[0], previous[0]) and np.array_equal(other[0], np.full((2, 3), 2.0, np.float32))
