"""The simulated NPU build: work counting, fusion, partitioning, roofline bounds."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.io import read_json
from npuflow.simulator import build, simulate
from npuflow.targets import load_targets

TARGETS = load_targets()
INT8 = {"default": "int8"}


def conv_model(cin=16, cout=32, hw=56, k=3, softmax=False):
    """input → Conv(+Relu) [→ Softmax]: a graph whose work is known by hand."""
    w = numpy_helper.from_array(np.zeros((cout, cin, k, k), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[k // 2] * 4, name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    out = "r"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["r"], ["s"], axis=1, name="softmax"))
        nodes.append(helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2"))
        out = "y"
    inits = [w] + ([numpy_helper.from_array(np.zeros((cout, cout, 1, 1), np.float32), "w2")] if softmax else [])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_macs_counted_and_relu_fused():
    sim = simulate(conv_model(), TARGETS.get("ax650n-npu3"))
    conv, relu = sim["graph"].ops
    assert conv.macs == 32 * 56 * 56 * 16 * 9
    assert relu.fused_into == "conv" and conv.fused == ["Relu"] and relu.time_s == 0


def test_alignment_padding_costs_small_channel_counts_more():
    profile = TARGETS.get("ax650n-npu3")
    aligned = simulate(conv_model(cin=16, cout=32), profile)["graph"].ops[0]
    ragged = simulate(conv_model(cin=3, cout=32), profile)["graph"].ops[0]
    # 3 input channels pad to the 8-channel tile: same padded work as 8 channels, 3/8 useful
    assert ragged.work_unpadded / ragged.work == pytest.approx(3 / 8 * aligned.work_unpadded / aligned.work)


@pytest.mark.parametrize("target", TARGETS.names())
def test_prediction_never_beats_peak_throughput(target, tmp_path):
    profile = TARGETS.get(target)
    report = build_model(conv_model(cin=64, cout=64, hw=112), profile, tmp_path)
    peak = profile["units"]["tensor"]["peak_ops_per_s"]["int8"]
    assert report["latency_ms"] / 1e3 >= 2 * report["macs"] / peak
    assert report["fps"] <= peak / (2 * report["macs"])
    assert 0 < report["tensor_utilisation"] <= 1


def build_model(model, profile, tmp_path):
    path = tmp_path / "m.onnx"
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return build(path, profile, tmp_path / "out", "m", "random")


def test_cpu_fallback_splits_the_graph_into_subgraphs(tmp_path):
    model = conv_model(softmax=True)
    x5 = build_model(model, TARGETS.get("rdk-x5"), tmp_path / "x5")
    ax = build_model(model, TARGETS.get("ax650n-npu3"), tmp_path / "ax")
    assert x5["cpu_ops"] == 1 and x5["subgraphs"] == 2  # Softmax on the CPU between two BPU parts
    assert [p["device"] for p in x5["partition"]] == ["npu", "cpu", "npu"]
    assert ax["cpu_ops"] == 0 and ax["subgraphs"] == 1


def test_build_writes_report_and_chrome_trace(tmp_path):
    report = build_model(conv_model(softmax=True), TARGETS.get("rdk-x5"), tmp_path)
    on_disk = read_json(tmp_path / "out" / "build.json")
    assert on_disk["simulated"] is True and on_disk["latency_ms"] == report["latency_ms"] > 0
    assert set(on_disk["unit_time_ms"]) == {"tensor", "vector", "dma", "cpu", "overhead"}
    assert sum(on_disk["unit_time_ms"].values()) == pytest.approx(on_disk["latency_ms"])
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "SIMULATION" in summary and f"{report['latency_ms']:10.3f} ms" in summary and "cpu " in summary
    trace = read_json(tmp_path / "out" / "trace.json")
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [s["name"] for s in spans] == ["Conv+Relu", "Softmax", "Conv"]
    assert spans[1]["ts"] == pytest.approx(spans[0]["ts"] + spans[0]["dur"])


def test_batch_throughput_loads_weights_once_per_batch():
    profile = TARGETS.get("ax650n-npu1")
    one = simulate(conv_model(cin=256, cout=256, hw=7), profile, 1)["total_s"]
    eight = simulate(conv_model(cin=256, cout=256, hw=7), profile, 8)["total_s"]
    assert eight < 8 * one  # weight traffic and overheads are shared by the batch


def test_quantised_model_builds_on_every_target(classifier, tmp_path):
    from npuflow.quantize import quantize

    _, p = classifier
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    for target in TARGETS.names():
        report = build(tmp_path / "q.onnx", TARGETS.get(target), tmp_path / target, "evit", "random")
        assert report["macs"] == pytest.approx(79e6, rel=0.05)  # EfficientViT-M0: 79 M MACs (paper)
        assert report["latency_ms"] > 0 and report["fps"] > 0 and len(report["top_ops"]) == 10
        assert report["unknown_dims"] == 0


def test_transpose_chain_is_one_data_move_and_unit_switches_cost_a_reorder():
    """x → Transpose → Reshape → Transpose → Conv → Softmax → Conv"""
    w = numpy_helper.from_array(np.zeros((8, 8, 1, 1), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "shape")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1], name="t1"),
        helper.make_node("Reshape", ["t1", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 1, 3, 2], name="t2"),
        helper.make_node("Conv", ["t2", "w"], ["c1"], name="conv1"),
        helper.make_node("Softmax", ["c1"], ["s"], axis=1, name="softmax"),
        helper.make_node("Conv", ["s", "w"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, shape],
    )
    ops = {
        op.name: op
        for op in simulate(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), TARGETS.get("ax650n-npu3"))["graph"].ops
    }
    assert ops["t2"].fused_into == "t1" and ops["t1"].fused == ["Transpose"] and ops["reshape"].unit == "free"
    assert ops["softmax"].reorder_bytes == 8 * 32 * 32 and ops["conv2"].reorder_bytes == 8 * 32 * 32  # int8 tensors
    assert ops["conv1"].reorder_bytes == 0  # fed by a data move, not by the vector unit


def _unknown_op_model(op: str, quantised: bool):
    """x → Conv → <op no NPU unit lists> → Conv (optionally with the Q/DQ pairs onnxruntime puts
    around what it quantises): the op must fall back to the CPU, never crash the build."""
    w = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w")
    inits = [w, numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    extra_opsets = []
    if op == "Einsum":
        middle = [helper.make_node("Einsum", ["c", "c"], ["m"], equation="bchw,bchw->bchw", name="op")]
    elif op == "TopK":
        inits.append(numpy_helper.from_array(np.array([8], np.int64), "k"))
        middle = [helper.make_node("TopK", ["c", "k"], ["m", "idx"], axis=1, name="op")]
    elif op == "NonMaxSuppression":  # boxes/scores from the conv; its output count is data-dependent
        inits += [
            numpy_helper.from_array(np.array(v, np.int64), n)
            for n, v in (("bs", [1, 256, 4]), ("ss", [1, 8, 256]), ("st", [0]), ("en", [4]), ("ax", [1]), ("ms", [1, 8, 16, 16]))
        ]
        middle = [
            helper.make_node("Reshape", ["c", "ss"], ["scores"], name="r1"),
            helper.make_node("Slice", ["c", "st", "en", "ax"], ["c4"], name="slice"),
            helper.make_node("Reshape", ["c4", "bs"], ["boxes"], name="r2"),
            helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="op"),
            helper.make_node("Cast", ["sel"], ["self"], to=TensorProto.FLOAT, name="cast"),
            helper.make_node("ReduceSum", ["self"], ["sum"], keepdims=0, name="sum"),
            helper.make_node("Add", ["c", "sum"], ["m"], name="add"),
        ]
    else:  # an op of a domain onnx's shape inference knows nothing of
        middle = [helper.make_node(op, ["c"], ["m"], domain="com.example", name="op")]
        extra_opsets = [helper.make_opsetid("com.example", 1)]

    def qdq(t):
        return (
            [
                helper.make_node("QuantizeLinear", [t, "s", "z"], [f"{t}_q"]),
                helper.make_node("DequantizeLinear", [f"{t}_q", "s", "z"], [f"{t}_dq"]),
            ]
            if quantised
            else []
        )

    src = (lambda t: f"{t}_dq") if quantised else (lambda t: t)
    nodes = [
        *qdq("x"),
        helper.make_node("Conv", [src("x"), "w"], ["c"], name="conv1"),
        *middle,
        *qdq("m"),
        helper.make_node("Conv", [src("m"), "w"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])


@pytest.mark.parametrize("quantised", [False, True], ids=["float", "qdq"])
@pytest.mark.parametrize("op", ["Einsum", "TopK", "NonMaxSuppression", "CustomOp"])
def test_op_no_unit_runs_falls_back_to_cpu_in_the_build_report(op, quantised, tmp_path):
    for target in ("ax650n-npu3", "rdk-x5"):
        report = build_model(_unknown_op_model(op, quantised), TARGETS.get(target), tmp_path / target)
        parts = [(p["device"], p["first_op"]) for p in report["partition"]]
        assert ("cpu", "op") in parts and parts[0] == ("npu", "conv1") and parts[-1][0] == "npu", parts
        assert report["subgraphs"] > 1 and report["cpu_ops"] >= 1 and report["latency_ms"] > 0
        assert read_json(tmp_path / target / "out" / "build.json")["subgraphs"] == report["subgraphs"]
        if op in ("NonMaxSuppression", "CustomOp"):  # shapes no inference can know: said, not hidden
            assert report["unknown_dims"] > 0
