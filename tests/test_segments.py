"""npuflow.evaluation.segments: a graph cut into one segment per group of exposed tensors, each node run once."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def _skips():
    """x → MatMul a → Relu b → Reshape(MatMul(b), Shape(b)) c → Add(c, a) d → Reshape(d, Shape(b)) e → Softmax f → Add(f, b) g
    → Mul(g, k) y: skip connections over several nodes, an int64 tensor read far from where it is
    made, and a Constant k made first and read last."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["k"], name="k", value=onnx.numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Shape", ["b"], ["s"], name="shape"),
        helper.make_node("MatMul", ["b", "w"], ["c0"], name="mm2"),
        helper.make_node("Reshape", ["c0", "s"], ["c"], name="reshape0"),
        helper.make_node("Add", ["c", "a"], ["d"], name="skip1"),
        helper.make_node("Reshape", ["d", "s"], ["e"], name="reshape"),
        helper.make_node("Softmax", ["e"], ["f"], name="softmax", axis=-1),
        helper.make_node("Add", ["f", "b"], ["g"], name="skip2"),
        helper.make_node("Mul", ["g", "k"], ["y"], name="half"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _whole_model_values(model, x):
    m = onnx.ModelProto.FromString(model.SerializeToString())
    del m.graph.output[:]
    names = [t for n in model.graph.node for t in n.output]
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
    from npuflow.util.onnxutil import session

    return dict(zip(names, session(m).run(None, {"x": x})))


@pytest.mark.parametrize(
    "groups",
    [
        [["a"], ["b"], ["c"], ["d"], ["e"], ["f"], ["g"], ["y"]],  # a segment per tensor
        [["a", "b", "c"], ["d", "e"], ["f", "g", "y"]],
        [["y"], ["c", "a"], ["e"]],  # out of graph order: later groups read what the first kept
    ],
)
def test_each_node_runs_in_one_segment_and_every_group_gets_the_whole_models_values(groups):
    from npuflow.evaluation.segments import cut
    from npuflow.util.onnxutil import ReusedOutputs, session

    model = _skips()
    segs = cut(model, groups)
    ran = [n.name for s in segs if s.model for n in s.model.graph.node if n.op_type != "Constant"]
    assert sorted(ran) == sorted(set(ran))  # no node twice (a Constant goes where it is read)
    assert set(ran) <= {n.name for n in model.graph.node}
    assert all("k" not in s.inputs and "k" not in s.keep for s in segs)
    if groups[0] == ["y"]:  # the first segment computed c and a: the second runs nothing
        assert segs[1].model is None and {"a", "c"} <= segs[0].keep
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 4, 4)).astype(np.float32)
        expected = _whole_model_values(model, x)
        kept = {}
        for seg, group in zip(segs, groups):
            assert seg.group == tuple(group)
            run = ReusedOutputs(session(seg.model)).run if seg.model else None
            values, kept = seg.step(run, {"x": x}, kept)
            assert set(values) == set(group)
            for t in group:
                np.testing.assert_allclose(values[t], expected[t], rtol=1e-6, atol=1e-7)
            assert set(kept) == set(seg.keep)
    # the first segment of the one-per-tensor cut needs only the input; a later one reads what it keeps
    one_each = cut(model, [["a"], ["b"], ["c"], ["d"], ["e"], ["f"], ["g"], ["y"]])
    assert one_each[0].inputs == ("x",) and "s" in one_each[2].keep and "s" in one_each[4].inputs
    assert one_each[-1].keep == frozenset()


def test_a_graph_with_a_subgraph_is_not_cut():
    from npuflow.evaluation.segments import cut

    model = _skips()
    branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "branch", [], [helper.make_empty_tensor_value_info("z")])
    cond = onnx.numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    assert cut(model, [["a"], ["y"]]) is None


def _quantised_skips(tmp_path, images):
    """_skips and its int8 model (its Softmax kept float), calibrated on `images`."""
    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.quantize import quantize_model

    model = _skips()
    onnx.save(model, tmp_path / "f.onnx")
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    quantize_model(model, tmp_path / "r.json", {"default": "int8", "layers": {"softmax": "float"}}, {}, tmp_path / "q.onnx")
    return model, onnx.load(str(tmp_path / "q.onnx"))


def _assert_same_rows(rows, expected):
    assert [r["tensor"] for r in rows] == [r["tensor"] for r in expected]
    for r, e in zip(rows, expected):
        for key in ("cosine", "sqnr_db", "mse", "local_sqnr_db", "float_rms"):
            assert r[key] == pytest.approx(e[key], rel=1e-9), (r["tensor"], key)


def test_the_layer_analysis_in_one_group_per_tensor_equals_the_analysis_in_one_group(tmp_path):
    """analyse_layers cuts both models into segments (npuflow.evaluation.layers.GROUP_BYTES bounds a group);
    its rows do not depend on where the cuts fall."""
    from npuflow.evaluation.layers import analyse_layers

    images = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    model, quant = _quantised_skips(tmp_path, images)
    whole = analyse_layers(model, quant, images, threads=1)
    assert [r["tensor"] for r in whole] == ["a", "b", "c0", "c", "d", "e", "f", "g", "y"]
    assert {r["quantized_dtype"] for r in whole} == {"int8", "float"}
    _assert_same_rows(analyse_layers(model, quant, images, threads=1, group_bytes=1), whole)


def test_a_graph_that_cannot_be_cut_gives_the_same_rows_and_says_so(tmp_path, monkeypatch, capsys):
    """Where npuflow.evaluation.segments cannot cut a graph, analyse_layers runs the whole model for each group:
    the same rows, and a line in the job's log saying it."""
    from npuflow.evaluation import layers, segments

    images = np.random.default_rng(1).standard_normal((2, 4, 4)).astype(np.float32)
    model, quant = _quantised_skips(tmp_path, images)
    cut_rows = layers.analyse_layers(model, quant, images, threads=1, group_bytes=1)
    assert "cannot be cut" not in capsys.readouterr().err
    monkeypatch.setattr(segments, "cut", lambda model, groups: None)
    whole_rows = layers.analyse_layers(model, quant, images, threads=1, group_bytes=1)
    assert "cannot be cut into segments; it runs whole for each of its 9 groups" in capsys.readouterr().err
    _assert_same_rows(whole_rows, cut_rows)
