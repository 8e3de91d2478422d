"""The simulated NPU build: work counting, patterns, fusion, partitioning, roofline bounds, the
mechanisms each profile family models, the build's files and its trace."""

import copy
import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.graph.opgraph import Graph
from npuflow.graph.patterns import PATTERNS, find
from npuflow.graph.precision import resolve_precision
from npuflow.sim import analyse, simulate
from npuflow.sim.build import build
from npuflow.targets import get_path, load_targets
from npuflow.util.io import read_json

TARGETS = load_targets()
INT8 = {"default": "int8"}


def conv_model(cin=16, cout=32, hw=56, k=3, softmax=False, group=1, act="Relu"):
    """input → Conv(+act) [→ Softmax → Conv]: a graph whose work is known by hand."""
    w = numpy_helper.from_array(np.zeros((cout, cin // group, k, k), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[k // 2] * 4, group=group, name="conv")]
    if act == "Gelu":  # as torch exports it below opset 20
        consts = {"sqrt2": 1.4142135, "one": 1.0, "half": 0.5}
        nodes += [
            helper.make_node("Div", ["c", "sqrt2"], ["d"], name="div"),
            helper.make_node("Erf", ["d"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["a"], name="add"),
            helper.make_node("Mul", ["c", "a"], ["m"], name="mul"),
            helper.make_node("Mul", ["m", "half"], ["r"], name="half"),
        ]
    else:
        consts = {}
        nodes.append(helper.make_node(act, ["c"], ["r"], name="relu"))
    out = "r"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["r"], ["s"], axis=1, name="softmax"))
        nodes.append(helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2"))
        out = "y"
    inits = [w] + ([numpy_helper.from_array(np.zeros((cout, cout, 1, 1), np.float32), "w2")] if softmax else [])
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sim(model, profile, batch=1):
    return simulate(analyse(model, profile), profile, batch)


def build_model(model, profile, tmp_path):
    path = tmp_path / "m.onnx"
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return build(path, profile, tmp_path / "out", "m", "random")


def test_conv_macs_counted_and_relu_fused():
    a = analyse(conv_model(), TARGETS.get("ax650n-npu3"))
    (conv,) = a.ops
    assert conv.name == "conv" and conv.fused == ["Relu"] and [n.name for n in conv.members] == ["conv", "relu"]
    assert a.demands.macs[0] == 32 * 56 * 56 * 16 * 9
    assert a.mapping.groups()["relu"] == ["conv", "relu"]


def test_alignment_padding_costs_small_channel_counts_more():
    profile = TARGETS.get("ax650n-npu3")
    aligned = analyse(conv_model(cin=16, cout=32), profile).demands
    ragged = analyse(conv_model(cin=3, cout=32), profile).demands
    # 3 input channels pad to the 8-channel tile: same padded work as 8 channels, 3/8 useful
    assert ragged.tensor_useful[0] / ragged.tensor_ops[0] == pytest.approx(3 / 8 * aligned.tensor_useful[0] / aligned.tensor_ops[0])


@pytest.mark.parametrize("target", ["ax650n-npu3", "rdk-x5"])
def test_a_depthwise_conv_keeps_one_input_lane_per_output_channel_busy(target):
    """A depthwise conv fills 1 of the profile's cin_grouped input lanes (a fitted number: 32 on
    AXERA's NPU, 64 on the BPUs before a fit), so the same MACs cost that many times the work of a
    dense conv's; a grouped conv with 16 channels per group fills 16 of them."""
    from npuflow.sim.cost import cout_lanes, tensor_ops

    profile = TARGETS.get(target)
    lanes = profile["units"]["tensor"]["tile"]["cin_grouped"]
    thin = max(1, cout_lanes(profile) / 64)  # 64 output channels on the fitted output lanes
    dw = analyse(conv_model(cin=64, cout=64, group=64), profile).demands
    assert dw.macs[0] == 64 * 56 * 56 * 9 and tensor_ops(dw, profile)[0] / dw.tensor_useful[0] == pytest.approx(thin * lanes * 64 / 56)
    wider = copy.deepcopy(profile)
    wider["units"]["tensor"]["tile"]["cin_grouped"] = 2 * lanes  # twice the idle lanes: twice the work
    assert tensor_ops(dw, wider)[0] == pytest.approx(2 * tensor_ops(dw, profile)[0])
    grouped = analyse(conv_model(cin=64, cout=64, group=4), profile).demands  # 16 input channels a group
    assert tensor_ops(grouped, profile)[0] / grouped.tensor_useful[0] == pytest.approx(thin * max(1, lanes / 16) * 64 / 56)
    # a thin layer: 8 output channels on the output lanes leave the rest idle
    thin8 = analyse(conv_model(cin=64, cout=8), profile).demands
    assert tensor_ops(thin8, profile)[0] / thin8.tensor_ops[0] == pytest.approx(max(1, cout_lanes(profile) / 8))


def test_lookup_table_activations_occupy_the_bpu_vector_unit_but_not_axeras():
    """GELU fused after a conv is still evaluated by the Bayes-e vector unit's lookup table (the
    op takes the slower of the two); AXERA's conv engines apply it on their output for free."""
    model = conv_model(cin=64, cout=64, act="Gelu")
    x5, ax = analyse(model, TARGETS.get("rdk-x5")), analyse(model, TARGETS.get("ax650n-npu3"))
    assert [op.fused for op in x5.ops] == [["Gelu"]] == [op.fused for op in ax.ops]
    assert x5.demands.vector_ops[0] >= 64 * 56 * 56 * 8 and ax.demands.vector_ops[0] == 0


@pytest.mark.parametrize("name", PATTERNS.names())
def test_every_pattern_is_found_once_and_seen_by_precision_and_fusion_alike(name):
    """One recognition serves both: a recipe naming the pattern sets all its nodes, and the
    simulator runs a collapsing pattern as one op (an annotating one keeps its nodes as ops)."""
    pattern = PATTERNS.get(name)()
    model = pattern.example()
    (match,) = [m for m in find(Graph(model, shapes=False)) if m.pattern == name]
    members = {n.name for n in match.members}
    precision = resolve_precision(model, {"default": "int8", "op_types": {name: "int16"}})
    assert {precision[n] for n in members} == {"int16"} and set(precision) - members <= {n for n in precision if precision[n] == "int8"}
    a = analyse(model, TARGETS.get("ax650n-npu3"), recipe={"default": "int8", "op_types": {name: "int16"}})
    ops = {a.mapping.op_of[n].name for n in members if n in a.mapping.op_of}
    if match.collapse:
        assert len(ops) == 1 and {op.precision for op in a.ops if op.name in ops} == {"int16"}
    else:
        assert len(ops) > 1


def test_attention_records_its_head_dimension_on_its_matmuls():
    a = analyse(PATTERNS.get("Attention").example(), TARGETS.get("rdk-x5"))
    assert {op.head_dim for op in a.ops if op.op_type == "MatMul"} == {8}


def test_attention_reading_its_probabilities_transposed_is_the_same_pattern():
    """Ultralytics' C2PSA and YOLO12's area attention: (q·s)ᵀ·k → softmax → v·attnᵀ. One match;
    the transposes the matmuls read are theirs to fold (no data move)."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["qs"], name="scale"),
        helper.make_node("Transpose", ["qs"], ["qt"], perm=[0, 1, 3, 2], name="qt"),
        helper.make_node("MatMul", ["qt", "x"], ["s"], name="qk"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
        helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 1, 3, 2], name="pt"),
        helper.make_node("MatMul", ["x", "pt"], ["y"], name="av"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 32, 400])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(0.17), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (match,) = find(Graph(model))
    assert match.pattern == "Attention" and {n.name for n in match.members} == {"qk", "softmax", "pt", "av"}
    a = analyse(model, TARGETS.get("ax650n-npu3"))
    assert {op.name: op.head_dim for op in a.ops if op.op_type == "MatMul"} == {"qk": 32, "av": 32}
    assert {op.op_type for op in a.ops} == {"Mul", "MatMul", "Softmax"}  # both transposes folded into the matmuls
    precision = resolve_precision(model, {"default": "int8", "op_types": {"Attention": "int16"}})
    assert {n for n, p in precision.items() if p == "int16"} == {"qk", "softmax", "pt", "av"}


def _concat_model(parts: list[int]):
    """Convs whose outputs are concatenated along the channels, then one conv over the whole."""
    inits = [numpy_helper.from_array(np.zeros((c, 8, 1, 1), np.float32), f"w{i}") for i, c in enumerate(parts)]
    inits.append(numpy_helper.from_array(np.zeros((8, sum(parts), 1, 1), np.float32), "wy"))
    nodes = [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"], name=f"conv{i}") for i in range(len(parts))]
    nodes += [
        helper.make_node("Concat", [f"c{i}" for i in range(len(parts))], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "wy"], ["y"], name="convy"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 40, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("target", "view_block"), [("ax650n-npu3", 8), ("rdk-x5", 32), ("j5", 32)])
def test_a_channel_concat_is_a_view_where_its_parts_fill_whole_blocks_of_the_layout(target, view_block):
    """The producers write into the concatenation in place where every part is a whole number of
    the layout's channel blocks (AXERA: 2H16W8C; the BPUs write 32-channel output blocks)."""
    aligned = analyse(_concat_model([view_block, 2 * view_block]), TARGETS.get(target))
    assert "concat" not in aligned.mapping.op_of
    ragged = analyse(_concat_model([view_block // 2, view_block]), TARGETS.get(target))
    assert ragged.mapping.op_of["concat"].unit == "dma"


@pytest.mark.parametrize("target", TARGETS.names())
def test_prediction_never_beats_peak_throughput(target, tmp_path):
    profile = TARGETS.get(target)
    report = build_model(conv_model(cin=64, cout=64, hw=112), profile, tmp_path)
    peak = profile["units"]["tensor"]["peak_ops_per_s"]["int8"]
    assert report["latency_ms"] / 1e3 >= 2 * report["macs"] / peak
    assert report["fps"] <= report["cores"] * peak / (2 * report["macs"])
    assert 0 < report["tensor_utilisation"] <= 1


def test_cpu_fallback_splits_the_graph_into_subgraphs(tmp_path):
    model = conv_model(softmax=True)
    x5 = build_model(model, TARGETS.get("rdk-x5"), tmp_path / "x5")
    ax = build_model(model, TARGETS.get("ax650n-npu3"), tmp_path / "ax")
    assert x5["cpu_ops"] == 1 and x5["subgraphs"] == 2  # Softmax on the CPU between two BPU parts
    assert [p["device"] for p in x5["partition"]] == ["npu", "cpu", "npu"]
    assert ax["cpu_ops"] == 0 and ax["subgraphs"] == 1


def test_a_cpu_op_pays_the_conversion_of_every_tensor_it_hands_over():
    """Softmax on the CPU dequantises and re-lays-out its input and quantises its output back:
    boundary_ops_per_element CPU operations per element each way, on top of its own math."""
    profile = TARGETS.get("rdk-x5")
    a = analyse(conv_model(softmax=True), profile)
    (i,) = [k for k, op in enumerate(a.ops) if op.unit == "cpu"]
    elements = 32 * 56 * 56
    per = profile["vector_ops_per_element"]["Softmax"] + 2 * profile["units"]["cpu"]["boundary_ops_per_element"]
    assert a.demands.cpu_ops[i] == elements * per


def test_build_writes_report_and_a_trace_that_adds_up_to_the_latency(tmp_path):
    report = build_model(conv_model(softmax=True), TARGETS.get("rdk-x5"), tmp_path)
    on_disk = read_json(tmp_path / "out" / "build.json")
    assert on_disk["simulated"] is True and on_disk["latency_ms"] == report["latency_ms"] > 0
    assert set(on_disk["unit_time_ms"]) == {"tensor", "vector", "dma", "cpu", "overhead"}
    assert sum(on_disk["unit_time_ms"].values()) == pytest.approx(on_disk["latency_ms"])
    assert all("time_s" not in p for p in on_disk["partition"])
    assert sum(p["time_ms"] for p in on_disk["partition"]) <= on_disk["latency_ms"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "SIMULATION" in summary and f"{report['latency_ms']:10.3f} ms" in summary and "cpu " in summary
    spans = [e for e in read_json(tmp_path / "out" / "trace.json")["traceEvents"] if e["ph"] == "X"]
    assert [s["name"] for s in spans if s["name"] != "overhead"] == ["Conv+Relu", "Softmax", "Conv"]
    kinds = {s["args"]["kind"] for s in spans if s["name"] == "overhead"}
    assert kinds == {"input transfer", "subgraph launch", "op dispatch", "output transfer"}
    for a, b in itertools.pairwise(spans):  # end to end, no gaps
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"])
    assert sum(s["dur"] for s in spans) / 1e3 == pytest.approx(report["latency_ms"], rel=1e-9)
    assert spans[-1]["ts"] + spans[-1]["dur"] == pytest.approx(report["latency_ms"] * 1e3)
    overhead_ms = sum(s["dur"] for s in spans if s["name"] == "overhead") / 1e3
    assert overhead_ms == pytest.approx(report["unit_time_ms"]["overhead"])


def test_batch_throughput_loads_weights_once_per_batch():
    profile = TARGETS.get("ax650n-npu1")
    one = sim(conv_model(cin=256, cout=256, hw=7), profile, 1).total_s
    eight = sim(conv_model(cin=256, cout=256, hw=7), profile, 8).total_s
    assert eight < 8 * one  # weight traffic and launches are shared by the batch


def test_a_dual_core_chip_runs_a_stream_of_frames_on_each_core(tmp_path):
    j5 = TARGETS.get("j5")
    report = build_model(conv_model(cin=64, cout=64), j5, tmp_path)
    assert report["cores"] == 2 and report["fps_batch1"] == pytest.approx(2e3 / report["latency_ms"])


@pytest.mark.parametrize("target", ["ax630c", "ax620q", "rdk-x3"])
def test_few_shot_chips_say_so_fit_fewer_parameters_than_rows_and_take_the_rest_from_their_family(target, tmp_path):
    profile = TARGETS.get(target)
    source = TARGETS.get(profile["transfer_from"])
    fit = profile["fit"]
    assert fit["data"]["rows"] >= 3 and set(fit["parameters"]) >= set(profile["fit_only"]) and len(profile["fit_only"]) < 3
    for path in set(profile["fit_parameters"]) - set(profile["fit_only"]):  # the family's fitted physics transfers
        assert get_path(profile, path) == source["fit"]["parameters"][path]
    assert profile["units"]["tensor"]["peak_ops_per_s"] != source["units"]["tensor"]["peak_ops_per_s"]  # its own datasheet
    report = build_model(conv_model(), profile, tmp_path)
    rows = fit["data"]["rows"]  # three each, and the AX630C's five w8a16 pose rows
    basis = f"few-shot: 2 parameters fitted to {rows} published measurements (npu_latency_calibration.csv), the rest from the {source['name']} fit"
    assert report["profile_fitted"] is True and report["profile_basis"] == basis
    assert basis in (tmp_path / "out" / "summary.txt").read_text()


def test_quantised_model_builds_on_every_target(classifier, tmp_path):
    from npuflow.quant.quantize import quantize

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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyse(model, TARGETS.get("ax650n-npu3"))
    op_of, d = a.mapping.op_of, a.demands
    assert op_of["t2"] is op_of["t1"] and op_of["t1"].fused == ["Transpose"] and "reshape" not in op_of
    reorder = {op.name: d.reorder_bytes[i] for i, op in enumerate(a.ops)}
    assert reorder["softmax"] == 8 * 32 * 32 and reorder["conv2"] == 8 * 32 * 32  # int8 tensors
    assert reorder["conv1"] == 0  # fed by a data move, not by the vector unit
    # the Bayes-e vector unit reads the tensor unit's layout as it is
    assert not analyse(model, TARGETS.get("rdk-x5")).demands.reorder_bytes.any()


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


def test_every_build_states_its_prediction_interval_and_what_it_rests_on(tmp_path):
    """build.json and summary.txt carry the nominal-80 % interval around the latency and the FPS,
    from the stored cross-validated residuals of the chip family's classifier rows (64 px)."""
    from npuflow.sim.uncertainty import stored_table

    report = build_model(conv_model(), TARGETS.get("rdk-x5"), tmp_path)
    lat, fps = report["latency_ms_interval"], report["fps_interval"]
    assert lat["low"] < report["latency_ms"] < lat["high"] and fps["low"] < report["fps"] < fps["high"]
    spread = stored_table()["classes"]["horizon-bpu/classify"]
    assert lat["low"] == pytest.approx(report["latency_ms"] / np.exp(spread["high"]))
    assert fps["high"] == pytest.approx(report["fps"] * np.exp(spread["high"]))
    assert lat["nominal"] == 0.8 and lat["basis"] == f"horizon-bpu/classify, {spread['rows']} held-out rows"
    text = (tmp_path / "out" / "summary.txt").read_text()
    assert f"[{lat['low']:.3f} – {lat['high']:.3f} ms]" in text and "nominal 80% interval from cross-validated residuals" in text
    assert report["bits"] == "int8"


def test_intervals_are_calibrated_on_held_out_groups():
    """Residuals that miss together by group: the 10-90 % quantiles cover less than 80 % of a
    group left out of the table, so the calibration widens them until it does, and says so."""
    from npuflow.sim.uncertainty import TAILS, calibrated, coverage, interval, interval_table

    rng = np.random.default_rng(0)
    residuals = [(f"g{i // 5}", "chip/classify", 0.1 * (i // 5 % 3 - 1) + rng.normal(0, 0.05)) for i in range(100)]
    assert coverage(residuals, TAILS[0]) < 0.8
    table = calibrated(residuals)
    assert (
        table["tail"] < TAILS[0]
        and table["coverage"] >= 0.8
        and table["coverage"] == pytest.approx(coverage(residuals, table["tail"]), abs=1e-3)
    )
    # too few rows of a class: the chip family's spread, then all rows'
    sparse = interval_table([("chip/classify", r) for _, _, r in residuals] + [("chip/dense", 0.5)])
    assert "chip/dense" not in sparse["classes"] and interval(sparse, "chip/dense", 2.0, "latency_ms")["basis"] == "chip, 101 held-out rows"
    assert interval(None, "chip/dense", 2.0, "latency_ms") is None
