"""Precision recipes, calibration methods, per-layer analysis, mixed precision, datasets and task accuracy."""

import csv
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import reference_and_evaluate
from npuflow.pipeline.config import ConfigError, validate_config
from npuflow.util.io import read_json


def _attention_like():
    """x → MatMul → Softmax → MatMul → GELU (Erf form) → out: enough for recipe resolution."""
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    c = {n: onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s2", 1.4142135), ("one", 1.0), ("half", 0.5))}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="qk"),
        helper.make_node("Softmax", ["a"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w"], ["v"], name="pv"),
        helper.make_node("Div", ["v", "s2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["v", "e1"], ["m"], name="gelu_mul"),
        helper.make_node("Mul", ["m", "half"], ["y"], name="gelu_half"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
        [w, *c.values()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_recipe_priority_is_layer_then_op_type_then_subgraph():
    from npuflow.graph.precision import resolve_precision

    model = _attention_like()
    recipe = {
        "default": "int8",
        "op_types": {"Softmax": "float", "Gelu": "int16"},
        "layers": {"gelu_erf": "float"},
        "subgraphs": [{"start": ["x"], "end": ["v"], "dtype": "int16"}],
    }
    p = resolve_precision(model, recipe)
    assert p["qk"] == "int16" and p["pv"] == "int16"  # subgraph x → v
    assert p["softmax"] == "float"  # op type beats subgraph
    assert p["gelu_div"] == p["gelu_add"] == p["gelu_mul"] == p["gelu_half"] == "int16"  # `Gelu` covers the Erf form
    assert p["gelu_erf"] == "float"  # named layer beats op type


def test_recipe_naming_a_missing_layer_is_refused_with_the_field():
    from npuflow.graph.precision import RecipeError, resolve_precision

    with pytest.raises(RecipeError, match=r"precision\.layers\.nope: no node of that name"):
        resolve_precision(_attention_like(), {"default": "int8", "layers": {"nope": "int16"}})


def test_bad_recipe_in_config_names_the_entry_and_field():
    from conftest import classifier_entry

    config = {
        "weights": "random",
        "targets": ["rdk-x5"],
        "models": {"m": classifier_entry(precision={"rdk-x5": {"op_types": {"Softmax": "int4"}}})},
    }
    with pytest.raises(ConfigError, match=r"models\.m\.precision\.rdk-x5\.op_types\.Softmax"):
        validate_config(config)
    config["models"]["m"]["precision"] = {"j5": {"op_types": {"Softmax": "int16"}}}
    with pytest.raises(ConfigError, match=r"models\.m\.precision\.j5: not one of this model's targets"):
        validate_config(config)


def test_histogram_methods_narrow_the_minmax_range():
    from npuflow.quant.calibrate import compute_ranges

    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 1, 200_000), [40.0, -35.0]])  # two outliers
    threshold = np.abs(data).max()
    hist, edges = np.histogram(data, 2048, range=(-threshold, threshold))
    stats = {"t": (hist, edges.astype(np.float32), np.float32(data.min()), np.float32(data.max()), np.float32(threshold))}
    calib = {"percentile": 99.99}
    mm, pc, en = (compute_ranges(stats, m, calib)["t"] for m in ("minmax", "percentile", "entropy"))
    assert mm == pytest.approx((-35.0, 40.0), rel=1e-5)
    assert 3.0 < pc[1] < 6.0 and -6.0 < pc[0] < -3.0  # 99.99 % of a unit normal lies within ±3.9
    assert 2.0 < en[1] < 20.0 and en[0] == pytest.approx(-en[1])  # KL clips the outliers, symmetric


@pytest.fixture(scope="module")
def seg_quant(segmenter, tmp_path_factory):
    """The tiny SegFormer quantised under a recipe with int16 Softmax and float MatMul, evaluated."""
    from npuflow.quant.quantize import quantize

    spec, p = segmenter
    d = tmp_path_factory.mktemp("segq")
    recipe = {"default": "int8", "op_types": {"Softmax": "int16"}}
    q = quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=recipe,
        out_onnx=d / "q.onnx",
        out_json=d / "q.json",
    )
    _, e = reference_and_evaluate(d / "q.onnx", spec, p, d, recipe="x")
    return spec, p, d, q, e


def test_int16_recipe_reaches_the_quantised_model_and_the_simulator(seg_quant):
    from npuflow.graph.precision import embedded_precision
    from npuflow.sim import analyse
    from npuflow.targets import load_targets

    spec, p, d, q, e = seg_quant
    model = onnx.load(str(d / "q.onnx"))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in softmax:  # its input is dequantised from int16
        dq = producer[n.input[0]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[2]].data_type == TensorProto.INT16
    precision = embedded_precision(model)
    assert {precision[n.name] for n in softmax} == {"int16"} and q["node_dtypes"]["int16"] >= len(softmax)
    # rdk-x5's own recipe runs Softmax on the CPU; the model's int16 recipe keeps it on the BPU
    op_of = analyse(model, load_targets().get("rdk-x5")).mapping.op_of
    assert {op_of[n.name].unit for n in softmax} == {"vector"}
    assert {op_of[n.name].precision for n in softmax} == {"int16"}


def test_float_layers_stay_unquantised_and_fall_back_to_the_cpu(segmenter, tmp_path):
    from npuflow.quant.quantize import quantize
    from npuflow.sim.build import build
    from npuflow.targets import load_targets

    spec, p = segmenter
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe={"default": "int8", "op_types": {"Softmax": "float"}},
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    model = onnx.load(str(tmp_path / "q.onnx"))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(n.input[0].endswith("DequantizeLinear_Output") for n in softmax)  # float op reads dequantised data
    report = build(tmp_path / "q.onnx", load_targets().get("ax650n-npu3"), tmp_path / "b")
    assert report["cpu_ops"] == len(softmax) and report["subgraphs"] == len(softmax) + 1
    assert report["precision_recipe"] == "int8_Softmax-float"


def _near_uniform_attention(tmp_path):
    """x → MatMul → Softmax over 197 near-equal logits → MatMul: DeiT-Tiny's attention with random
    weights, whose Softmax output (at most ~0.008) gets an int8 scale of ~3e-5. Calibrated."""
    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges

    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array((rng.standard_normal((16, 197)) * 0.02).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((197, 16)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["s"], name="qk"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w2"], ["y"], name="av"),
    ]
    graph = helper.make_graph(
        nodes,
        "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 197, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 197, 16])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "f.onnx")
    images = rng.standard_normal((8, 197, 16)).astype(np.float32)
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    return model, images


def test_a_float_op_runs_in_float_between_int8_crossings(tmp_path, monkeypatch):
    """The quantised model keeps a float op float where onnxruntime's optimiser used to fuse
    DQ → Softmax → Q into its int8 QLinearSoftmax; the tensors crossing to and from the NPU stay
    int8 at their calibrated scales, and the simulator sees the same model as before."""
    import onnxruntime as ort

    from npuflow.quant import quantize as q
    from npuflow.sim import analyse, simulate
    from npuflow.targets import load_targets

    model, images = _near_uniform_attention(tmp_path)
    recipe = {"default": "int8", "op_types": {"Softmax": "float"}}
    q.quantize_model(model, tmp_path / "r.json", recipe, {}, tmp_path / "new.onnx")
    with monkeypatch.context() as m:  # the model as it was quantised before: no int16 step
        m.setattr(q, "keep_float_nodes_float", lambda model, precision: 0)
        q.quantize_model(model, tmp_path / "r.json", recipe, {}, tmp_path / "old.onnx")

    def run(path, optimise, outputs=None):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not optimise:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.optimized_model_filepath = str(tmp_path / f"opt-{Path(path).stem}-{optimise}.onnx")
        m = onnx.load(str(path))
        for name in outputs or []:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(outputs or None, {"x": x[None]})[-1] for x in images]), onnx.load(opts.optimized_model_filepath)

    def cosine(a, b):
        return float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))

    reference = np.concatenate([run_float(model, x) for x in images])
    old, old_graph = run(tmp_path / "old.onnx", True)
    new, new_graph = run(tmp_path / "new.onnx", True)
    ops = lambda g: {n.op_type for n in g.graph.node}  # noqa: E731
    unfused, _ = run(tmp_path / "new.onnx", False)
    assert "QLinearSoftmax" in ops(old_graph)  # the bug: the "float" Softmax ran in int8 at a tiny scale
    assert "QLinearSoftmax" not in ops(new_graph) and "Softmax" in ops(new_graph)
    assert cosine(new, reference) > cosine(old, reference) + 0.01
    # with or without graph optimisation, the float Softmax gives the same result: what the target runs
    assert cosine(new, reference) == pytest.approx(cosine(unfused, reference), abs=2e-3)
    # what crosses back to the NPU is exactly the int8 value the old graph gave it
    av_input = next(n for n in onnx.load(str(tmp_path / "new.onnx")).graph.node if n.name == "av").input[0]
    old_input = next(n for n in onnx.load(str(tmp_path / "old.onnx")).graph.node if n.name == "av").input[0]
    np.testing.assert_array_equal(run(tmp_path / "new.onnx", False, [av_input])[0], run(tmp_path / "old.onnx", False, [old_input])[0])
    # the simulator looks through the Q/DQ nodes: the same build either way
    profile = load_targets().get("rdk-x5")
    latency = [simulate(analyse(onnx.load(str(tmp_path / f)), profile), profile, 1).total_s for f in ("old.onnx", "new.onnx")]
    assert latency[0] == pytest.approx(latency[1], rel=1e-9)


@pytest.mark.slow  # a ViT through torch export, calibration and quantisation: ~15 s
def test_a_float_softmax_stays_float_in_a_vision_transformer(tmp_path):
    """DeiT-Tiny (random weights, 64 px): with Softmax float, onnxruntime's optimised session keeps
    every Softmax a float Softmax (no QLinearSoftmax, no int8 pair fused around it), and its output
    cosine matches the unoptimised session's."""
    import timm
    import torch

    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.quantize import quantize_model
    from npuflow.util.onnxutil import session

    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    torch.onnx.export(net, torch.randn(1, 3, 64, 64), str(tmp_path / "f.onnx"), opset_version=17, dynamo=False)
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    model = onnx.load(str(tmp_path / "f.onnx"))
    softmax = sum(n.op_type == "Softmax" for n in model.graph.node)
    quantize_model(model, tmp_path / "r.json", {"default": "int8", "op_types": {"Softmax": "float"}}, {}, tmp_path / "q.onnx")

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    optimised = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    assert "QLinearSoftmax" not in optimised and optimised.count("Softmax") == softmax == 12

    def outputs(path, optimize):
        sess = session(path, 1, optimize)
        return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[None]})[0] for x in images])

    ref = outputs(tmp_path / "f.onnx", False)
    cos = [
        float(np.sum(ref * q) / np.linalg.norm(ref) / np.linalg.norm(q)) for q in (outputs(tmp_path / "q.onnx", o) for o in (True, False))
    ]
    assert cos[0] == pytest.approx(cos[1], abs=0.01) and cos[0] > 0.5


def run_float(model, x):
    from npuflow.util.onnxutil import run_onnx

    return run_onnx(model, {"x": x[None]})[0]


def test_per_layer_table_has_every_layer_worst_first_with_the_target_unit(seg_quant, tmp_path):
    from npuflow.sim.build import build
    from npuflow.targets import load_targets

    spec, p, d, q, e = seg_quant
    rows = read_json(d / "l.json")["rows"]
    build(d / "q.onnx", load_targets().get("ax650n-npu3"), tmp_path / "b", layer_rows=rows, layers_csv=tmp_path / "t.layers.csv")
    with open(tmp_path / "t.layers.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) > 50
    assert list(table[0])[:10] == [
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
    ]
    # ranked rows worst first, then the rows left out of the ranking (kept float, near zero)
    flags = [bool(r["unranked"]) for r in table]
    assert flags == sorted(flags) and "not quantised" in {r["unranked"] for r in table}
    cosines = [float(r["cosine"]) for r in table if not r["unranked"]]
    assert cosines == sorted(cosines)
    assert all(r["quantized_dtype"] != "float" for r in table if not r["unranked"])
    # The logits' row, recomputed here: the float model's against the quantised model's as its
    # consumer (the ArgMax) reads them, over the analysis images.
    from npuflow.evaluation.evaluate import expose_logits
    from npuflow.util.onnxutil import run_onnx

    quant = onnx.load(str(d / "q.onnx"))
    argmax = next(n for n in quant.graph.node if n.op_type == "ArgMax")
    images = np.load(d / "r.npz")["images"][: spec["evaluation"]["analysis_images"]]
    f = np.concatenate([run_onnx(expose_logits(onnx.load(str(p["surgery_onnx"]))), {"input": i[None]})[1] for i in images]).ravel()
    quant.graph.output.append(helper.make_tensor_value_info(argmax.input[0], TensorProto.FLOAT, None))
    q = np.concatenate([run_onnx(quant, {"input": i[None]}, outputs=[argmax.input[0]])[0] for i in images]).ravel()
    logits = next(n for n in onnx.load(str(p["surgery_onnx"])).graph.node if n.op_type == "ArgMax").input[0]
    logits_row = next(r for r in table if r["tensor"] == logits)
    assert float(logits_row["cosine"]) == pytest.approx(f @ q / np.sqrt((f @ f) * (q @ q)), rel=1e-5)
    assert {r["unit"] for r in table} >= {"tensor", "vector"}
    assert {r["quantized_dtype"] for r in table} >= {"int8", "int16"}
    analysis = read_json(d / "l.json")
    assert analysis["worst_layers"][0]["cosine"] == pytest.approx(cosines[0], rel=1e-4)
    # the headline and the table's logits row measure the same model
    check = analysis["fidelity_check"]
    assert (
        check["tensor"] == logits
        and check["agrees"]
        and check["layer_table_cosine"] == pytest.approx(float(logits_row["cosine"]), rel=1e-5)
    )
    assert check["gap"] < 0.02


def test_near_zero_and_float_tensors_are_left_out_of_the_worst_layer_rankings(tmp_path):
    from npuflow.evaluation.layers import NEAR_ZERO_RATIO, read_layers_csv, unranked_reason, worst_rows, write_layers_csv
    from npuflow.report import worst_layers
    from npuflow.tracking.projection import layer_metrics

    def row(tensor, cosine, sqnr, quantised=True, rms=1.0):
        return {"tensor": tensor, "node": tensor, "op_type": "X", "shape": "1", "dtype": "float32", "quantized_dtype": "int8" if quantised else "float",
                "cosine": cosine, "sqnr_db": sqnr, "mse": 0.0, "local_sqnr_db": 30.0, "float_rms": rms, "unranked": unranked_reason(quantised, rms, 1.0)}  # fmt: skip

    rows = [
        row("conv", 0.99, 20.0),
        row("mean", -0.001, -114.0, rms=NEAR_ZERO_RATIO / 100),
        row("reshape", 0.5, 3.0, quantised=False),
        row("add", 0.95, 12.0),
    ]
    assert [r["unranked"] for r in rows] == ["", "near zero", "not quantised", ""]
    # relative to the node's inputs: a random-weight model's small activations stay ranked
    assert unranked_reason(True, 1e-9, 1e-8) == "" and unranked_reason(True, 1e-9, None) == ""
    write_layers_csv(rows, tmp_path / "l.csv")
    table = read_layers_csv(tmp_path / "l.csv")
    assert [r["tensor"] for r in table] == ["add", "conv", "mean", "reshape"]
    assert [r["tensor"] for r in worst_layers(table, 10)] == ["add", "conv"]  # report and summary.csv
    assert [r["tensor"] for r in worst_rows(rows)] == ["add", "conv"]  # eval report
    assert layer_metrics(tmp_path / "l.csv") == {"layers_analysed": 4.0, "layers_min_cosine": 0.95, "layers_min_sqnr_db": 12.0}


def test_fidelity_check_flags_a_headline_the_layer_table_disagrees_with():
    from npuflow.evaluation.layers import fidelity_check, fidelity_check_text

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10))
    rows = [{"tensor": "logits", "cosine": 0.976}]
    near = fidelity_check(rows, "logits", ref, ref + 0.2 * rng.standard_normal((4, 10)), 4)
    assert near["agrees"] and near["headline_cosine"] == pytest.approx(0.976, abs=0.02)
    far = fidelity_check(rows, "logits", ref, ref + rng.standard_normal((4, 10)), 4)
    assert not far["agrees"] and far["gap"] == pytest.approx(0.976 - far["headline_cosine"])
    assert fidelity_check_text(far).startswith("DISAGREES: headline cosine 0.")
    assert fidelity_check(rows, "other", ref, ref, 4) is None


def test_layer_figures_are_sums_over_the_images_of_the_float_and_quantised_tensors(tmp_path):
    """Each row's cosine, SQNR, MSE and local SQNR against their formulas, recomputed here from
    the two models' tensors, with one tensor a group (a segment each) and a tensor kept float."""
    from npuflow.evaluation.layers import analyse_layers
    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.quantize import quantize_model
    from npuflow.util.onnxutil import run_onnx

    model = _attention_like()
    model.ir_version = 8  # onnxruntime's highest is below what onnx.helper writes
    model.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32), "w")
    )
    onnx.save(model, tmp_path / "f.onnx")
    images = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    quantize_model(model, tmp_path / "r.json", {"default": "int8", "layers": {"gelu_half": "float"}}, {}, tmp_path / "q.onnx")
    quant = onnx.load(str(tmp_path / "q.onnx"))
    rows = {r["tensor"]: r for r in analyse_layers(model, quant, images, threads=1, group_bytes=1)}
    dq_of = {n.input[0]: n.output[0] for n in quant.graph.node if n.op_type == "DequantizeLinear"}
    q_of = {n.input[0]: n.output[0] for n in quant.graph.node if n.op_type == "QuantizeLinear"}

    def values(m, tensor):
        """The tensor as a session exposing every float tensor computes it (onnxruntime fuses no
        node whose output is exposed), as the table's segments do wherever they cut."""
        m = onnx.ModelProto.FromString(m.SerializeToString())
        exposed = [t for n in m.graph.node if n.op_type != "QuantizeLinear" for t in n.output if t not in {"y"}]
        m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in exposed)
        return np.concatenate([run_onnx(m, {"x": i[None]}, outputs=[tensor])[0].ravel() for i in images]).astype(np.float64)

    assert rows["y"]["quantized_dtype"] == "float" and rows["p"]["quantized_dtype"] == "int8"
    for tensor in ("a", "p", "v", "e", "y"):
        f, pre = values(model, tensor), values(quant, tensor)
        q = values(quant, dq_of[q_of[tensor]]) if tensor in q_of else pre
        row = rows[tensor]
        assert row["cosine"] == pytest.approx(f @ q / np.sqrt((f @ f) * (q @ q)), rel=1e-9)
        assert row["mse"] == pytest.approx(np.mean((f - q) ** 2), rel=1e-9)
        assert row["sqnr_db"] == pytest.approx(10 * np.log10((f @ f) / np.sum((f - q) ** 2)), rel=1e-9)
        if tensor in q_of:
            assert 0 < row["local_sqnr_db"] == pytest.approx(10 * np.log10((q @ q) / np.sum((pre - q) ** 2)), rel=1e-9)
        else:  # no Q/DQ pair: no local error
            assert row["local_sqnr_db"] == float("inf")


def test_an_activation_folded_into_its_conv_keeps_the_convs_unit_and_time(tmp_path):
    """onnxruntime's quantiser removes ResNet's Relu behind each Conv (the Conv writes the Relu's
    tensor); the Relu rows get the Conv's unit and simulated time."""
    import timm
    import torch

    from npuflow.evaluation.layers import analyse_layers
    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.quantize import quantize_model
    from npuflow.sim import analyse, simulate
    from npuflow.sim.build import layer_table
    from npuflow.targets import load_targets

    torch.manual_seed(0)
    torch.onnx.export(
        timm.create_model("resnet18").eval(), torch.randn(1, 3, 32, 32), str(tmp_path / "f.onnx"), opset_version=17, dynamo=False
    )
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    quantize_model(onnx.load(str(tmp_path / "f.onnx")), tmp_path / "r.json", {"default": "int8"}, {}, tmp_path / "q.onnx")
    quant = onnx.load(str(tmp_path / "q.onnx"))
    assert "Relu" not in {n.op_type for n in quant.graph.node if n.name.endswith("act1/Relu")}
    rows = analyse_layers(onnx.load(str(tmp_path / "f.onnx")), quant, images[:1], threads=1)
    profile = load_targets().get("ax650n-npu3")
    analysis = analyse(quant, profile)
    table = layer_table(rows, analysis, simulate(analysis, profile, 1))
    relu = [r for r in table if r["op_type"] == "Relu" and r["node"] not in analysis.graph.by_name]
    assert len(relu) >= 9  # the stem's and each basic block's first Relu
    assert {r["unit"] for r in relu} == {"tensor"} and all(r["fused_into"].endswith("Conv") for r in relu)
    # a Relu the Conv writes carries the Conv's time (the Conv has no row of its own); one behind
    # a residual Add is fused into that Conv's op, whose time the Conv's row carries
    assert all(r["sim_time_us"] > 0 for r in relu if r["fused_into"] == r["node"].replace("act1/Relu", "conv1/Conv"))
    assert sum(r["sim_time_us"] > 0 for r in relu) >= 9


def test_auto_calibration_keeps_the_best_candidate(segmenter, tmp_path):
    from npuflow.quant.calibrate import calibrate

    spec, p = segmenter
    spec = {**spec, "calibration": {**spec["calibration"], "method": "auto", "images": 4, "selection_images": 2}}
    report = calibrate(
        p["surgery_onnx"], manifest_json=p["manifest"], spec=spec, out_ranges=tmp_path / "r.json", out_json=tmp_path / "c.json"
    )
    tried = report["candidates"]
    assert [c["method"] for c in tried[:4]] == ["minmax", "percentile", "percentile", "entropy"] and len(tried) == 6
    best = max(tried, key=lambda c: c["cosine"])
    assert report["chosen"]["method"] == best["method"]
    assert report["quantization"] == {"per_channel": best["per_channel"], "activation_symmetric": best["activation_symmetric"]}
    assert report["selection_images"] == 2 and report["images"] == 4


def test_mixed_precision_walks_the_trade_off_curve(seg_quant, tmp_path):
    from npuflow.quant.mixed import mixed_precision
    from npuflow.targets import load_targets

    spec, p, d, q, e = seg_quant
    spec = {
        **spec,
        "mixed_precision": {"goal": {"metric": "cosine", "value": 0.999999}, "max_steps": 2, "max_latency_increase_pct": 1000, "images": 2},
    }
    base = {"default": "int8"}
    report = mixed_precision(
        p["surgery_onnx"],
        manifest_json=p["manifest"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        layers_json=d / "l.json",
        spec=spec,
        profile=load_targets().get("ax650n-npu3"),
        base_recipe=base,
        out_onnx=tmp_path / "m.onnx",
        out_quant_json=tmp_path / "m.q.json",
        out_json=tmp_path / "m.json",
    ).to_json()
    curve = report["curve"]
    assert 2 <= len(curve) <= 3 and curve[0]["nodes_int16"] == 0
    assert [c["nodes_int16"] for c in curve] == sorted(c["nodes_int16"] for c in curve)
    assert curve[-1]["latency_ms"] >= curve[0]["latency_ms"]  # int16 costs time on the NPU
    chosen = report["chosen"]
    assert report["goal_met"] == (chosen["cosine"] >= 0.999999)
    # The chosen step's model is kept: the same bytes and report the quantize stage gives its recipe.
    from npuflow.quant.quantize import quantize

    stage = quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=chosen["recipe"],
        out_onnx=tmp_path / "s.onnx",
        out_json=tmp_path / "s.json",
    )
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "s.onnx").read_bytes()
    kept = read_json(tmp_path / "m.q.json")
    assert {k: v for k, v in kept.items() if k != "seconds"} == {k: v for k, v in stage.items() if k != "seconds"}


def test_mixed_precision_that_keeps_the_base_recipe_links_its_model(seg_quant, tmp_path, monkeypatch):
    """A goal the base recipe meets: the search's first step is the base recipe's model as the
    quantize stage made it (not quantised again), and the chosen model is that file, linked."""
    from npuflow.quant.mixed import mixed_precision
    from npuflow.quant.quantize import quantize
    from npuflow.targets import load_targets

    spec, p, d, q, e = seg_quant
    spec = {
        **spec,
        "mixed_precision": {"goal": {"metric": "cosine", "value": -1.0}, "max_steps": 2, "max_latency_increase_pct": 10, "images": 2},
    }
    base = {"default": "int8"}
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=base,
        out_onnx=tmp_path / "quant" / "int8.onnx",
        out_json=tmp_path / "quant" / "int8.json",
    )
    import npuflow.quant.quantize

    calls = []
    monkeypatch.setattr(npuflow.quant.quantize, "quantize_model", lambda *a, **k: calls.append(a))
    report = mixed_precision(
        p["surgery_onnx"],
        manifest_json=p["manifest"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        layers_json=d / "l.json",
        spec=spec,
        profile=load_targets().get("ax650n-npu3"),
        base_recipe=base,
        base_onnx=tmp_path / "quant" / "int8.onnx",
        out_onnx=tmp_path / "quant" / "mixed-ax650n-npu3.onnx",
        out_quant_json=tmp_path / "quant" / "mixed-ax650n-npu3.json",
        out_json=tmp_path / "m.json",
    ).to_json()
    assert report["chosen"]["step"] == 0 and len(report["curve"]) == 1 and report["goal_met"] and calls == []
    out = tmp_path / "quant" / "mixed-ax650n-npu3.onnx"
    assert out.is_symlink() and os.readlink(out) == "int8.onnx"
    assert read_json(tmp_path / "quant" / "mixed-ax650n-npu3.json")["recipe"] == base


def _write_png(path, rng, size=(40, 56), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 255 if mode == "RGB" else 5, shape, dtype=np.uint8), mode).save(path)


def test_image_folder_with_class_folders_gives_labels_and_top1(tmp_path, segmenter, capsys):
    from npuflow.data.batches import image_batches
    from npuflow.data.prepare import prepare_dataset
    from npuflow.evaluation.evaluate import task_metrics

    rng = np.random.default_rng(0)
    for cls in ("3", "7"):
        for i in range(2):
            _write_png(tmp_path / "imgs" / cls / f"{i}.png", rng)
    index = prepare_dataset("mine", {"folder": str(tmp_path / "imgs")}, tmp_path / "ds" / "mine")
    assert index["labels"] == "folders" and [i["label"] for i in index["images"]] == [3, 3, 7, 7]
    prep = {"mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 0.875, "interpolation": "bicubic"}
    batch = image_batches("mine", "evaluation", 4, [1, 3, 32, 32], prep, 0, tmp_path / "ds", tmp_path / "cache")
    assert batch.images.shape == (4, 3, 32, 32) and list(batch.labels) == [3, 3, 7, 7]
    again = image_batches("mine", "evaluation", 4, [1, 3, 32, 32], prep, 0, tmp_path / "ds", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1 and np.array_equal(again.images, batch.images)
    # Calibrating on its 4 images with 6 asked tops up with 2 augmented copies, and says so.
    import copy

    from npuflow.quant.calibrate import calibrate

    spec, paths = segmenter
    spec = copy.deepcopy(spec)
    spec["calibration"].update(dataset="mine", images=6)
    report = calibrate(
        paths["surgery_onnx"],
        manifest_json=paths["manifest"],
        spec=spec,
        out_ranges=tmp_path / "r.json",
        out_json=tmp_path / "c.json",
        datasets_dir=tmp_path / "ds",
    )
    assert report["augmented_images"] == 2 and sum("#aug" in n for n in report["image_sources"]) == 2
    from npuflow.core.records import CalibrationReport
    from npuflow.core.records.quant import calibration_text

    assert calibration_text(CalibrationReport.from_json(report)) == "minmax, 6 images of dataset mine, 2 of them augmented copies"
    assert "dataset mine holds 4 for calibration; 2 are seeded augmented copies" in capsys.readouterr().out
    scores = np.zeros((4, 10))
    scores[[0, 1, 2, 3], [3, 3, 2, 7]] = 1.0
    scores[2, 7] = 0.5  # third image: true class second
    m = task_metrics(scores, scores.argmax(1), batch.labels, None, "classification")
    assert m == {"top1": 0.75, "top5": 1.0, "labelled_images": 4}


def test_transparent_pngs_are_composited_over_white(tmp_path):
    """A cut-out PNG (RGBA: the subject opaque, the rest transparent black) is seen as a viewer
    shows it: the transparent part white, not the black its RGB channels hold."""
    from PIL import Image

    from npuflow.data.datasets import IndexedImages
    from npuflow.data.prepare import prepare_dataset

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (200, 40, 40, 255)  # an opaque red square; the rest (0, 0, 0, 0)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "imgs" / "cutout.png")
    Image.fromarray(rgba, "RGBA").convert("P").save(tmp_path / "imgs" / "palette.png", transparency=0)
    prepare_dataset("cut", {"folder": str(tmp_path / "imgs")}, tmp_path / "ds" / "cut")
    for sample in IndexedImages(tmp_path / "ds" / "cut" / "index.json").samples("evaluation"):
        assert sample.image[0, 0].tolist() == [255, 255, 255], sample.name
        assert sample.image[3, 3].tolist() == [200, 40, 40], sample.name


def test_masks_give_miou(tmp_path):
    from npuflow.data.batches import image_batches
    from npuflow.data.prepare import prepare_dataset
    from npuflow.evaluation.evaluate import task_metrics

    rng = np.random.default_rng(1)
    for i in range(2):
        _write_png(tmp_path / "cs" / f"{i}.png", rng, (32, 64))
        _write_png(tmp_path / "cs" / "masks" / f"{i}.png", rng, (32, 64), mode="L")
    index = prepare_dataset("cs", {"folder": str(tmp_path / "cs"), "masks": "masks"}, tmp_path / "ds" / "cs")
    assert index["masks"] and index["labels"] == "none" and [i["mask"] for i in index["images"]] == ["masks/0.png", "masks/1.png"]
    batch = image_batches("cs", "evaluation", 2, [1, 3, 16, 32], {"mean": [0.5] * 3, "std": [0.25] * 3}, 0, tmp_path / "ds")
    assert batch.masks.shape == (2, 16, 32)
    pred = batch.masks[:, ::2, ::2].astype(np.int64)  # a perfect prediction at half resolution
    scores = np.eye(5)[pred].transpose(0, 3, 1, 2)
    assert task_metrics(scores, pred, None, batch.masks, "segmentation")["miou"] == pytest.approx(1.0)


def test_one_user_dataset_for_calibration_and_evaluation_is_refused():
    from conftest import classifier_entry

    config = {
        "weights": "random",
        "datasets": {"mine": {"folder": "x"}},
        "calibration": {"dataset": "mine"},
        "evaluation": {"dataset": "mine"},
        "models": {"m": classifier_entry()},
    }
    with pytest.raises(ConfigError, match=r"models\.m\.calibration\.dataset: 'mine' is also the evaluation dataset"):
        validate_config(config)
    config["evaluation"]["dataset"] = "other"
    with pytest.raises(ConfigError, match=r"evaluation\.dataset: unknown dataset 'other'"):
        validate_config(config)


def test_archive_dataset_is_extracted_once_and_indexed_with_labels(tmp_path):
    import tarfile

    from npuflow.data.prepare import prepare_dataset

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        _write_png(tmp_path / "src" / cls / "a.png", rng)
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    entry = {"archive": str(tmp_path / "set.tar.gz"), "classes": ["dog", "cat"]}
    index = prepare_dataset("pets", entry, tmp_path / "ds" / "pets")
    assert [(i["path"], i["label"]) for i in index["images"]] == [("cat/a.png", 1), ("dog/a.png", 0)]
    assert (tmp_path / "ds" / "pets" / "files" / "cat" / "a.png").exists() and len(index["archive_sha256"]) == 64
    with pytest.raises(Exception, match="sha256"):
        prepare_dataset("pets", {**entry, "sha256": "0" * 64}, tmp_path / "ds" / "pets2")


def test_a_softmax_over_many_tokens_keeps_its_calibrated_range_in_int8(tmp_path):
    """Attention over 4096 tokens peaks near 1/4096: on onnxruntime's fixed [0, 1] grid (step
    1/255) every probability was 0 and so was the attention after it (SegFormer-B0 on AX650N:
    cosine 0 behind a 0.9965 headline). On its calibrated range the output follows the float one."""
    import torch

    from npuflow.quant.calibrate import collect, compute_ranges, save_ranges
    from npuflow.quant.quantize import quantize_model
    from npuflow.util.onnxutil import session

    class Attention(torch.nn.Module):
        def forward(self, q, v=None):  # q: [1, 4096, 8] as both query and key, v = q
            scores = q @ q.transpose(1, 2) * 0.05
            return torch.softmax(scores, dim=-1) @ q

    torch.manual_seed(0)
    torch.onnx.export(Attention(), torch.randn(1, 4096, 8), str(tmp_path / "f.onnx"), opset_version=17, dynamo=False)
    images = np.random.default_rng(0).standard_normal((2, 4096, 8)).astype(np.float32)
    save_ranges(compute_ranges(collect(tmp_path / "f.onnx", images, False), "minmax", {}), tmp_path / "r.json")
    quantize_model(onnx.load(str(tmp_path / "f.onnx")), tmp_path / "r.json", {"default": "int8"}, {}, tmp_path / "q.onnx")
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    softmax_out = next(n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "Softmax").output[0]
    q_node = next(n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "QuantizeLinear" and n.input[0] == softmax_out)
    assert float(scales[q_node.input[1]]) < 1 / 255 / 10  # the calibrated range, not [0, 1]

    def output(path):
        sess = session(path, 1, False)
        return sess.run(None, {sess.get_inputs()[0].name: images[:1]})[0]

    ref, quant = output(tmp_path / "f.onnx"), output(tmp_path / "q.onnx")
    assert float(np.sum(ref * quant) / np.linalg.norm(ref) / np.linalg.norm(quant)) > 0.9


def _collapsing_pair():
    """A float model x → Relu → r → Mul 2 → y, z = x·0, and its 'quantised' twin whose Q/DQ pair on
    r has a scale so large (1000) that every value rounds to 0: r and y come out all zeros."""
    f32 = TensorProto.FLOAT

    def model(nodes, inits):
        graph = helper.make_graph(
            nodes,
            "collapse",
            [helper.make_tensor_value_info("x", f32, [1, 4, 4])],
            [helper.make_tensor_value_info("y", f32, [1, 4, 4]), helper.make_tensor_value_info("z", f32, [1, 4, 4])],
            [onnx.numpy_helper.from_array(np.array(v, dtype=d), k) for k, (v, d) in inits.items()],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    consts = {"two": (2.0, np.float32), "zero": (0.0, np.float32)}
    tail = [helper.make_node("Mul", ["x", "zero"], ["z"], name="zero_mul")]
    float_model = model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Mul", ["r", "two"], ["y"], name="double"), *tail], consts
    )
    quant_model = model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["r_q"], name="r_q"),
            helper.make_node("DequantizeLinear", ["r_q", "s", "zp"], ["r_dq"], name="r_dq"),
            helper.make_node("Mul", ["r_dq", "two"], ["y"], name="double"),
            *tail,
        ],
        {**consts, "s": (1000.0, np.float32), "zp": (0, np.int8)},
    )
    return float_model, quant_model


def test_a_tensor_quantised_to_a_constant_is_flagged_without_a_division_by_zero(tmp_path):
    """SegFormer's Softmax on a [0, 1] grid came out all zeros (issue 29): such a tensor, and the
    one computed from it, are flagged `collapsed` and `below_floor` in the table, counted and named in
    the layer record and MLflow; their SQNR is a defined -inf/0 dB, computed without a warning. A
    tensor that is zero in float too is an exact match, not flagged."""
    import warnings

    from npuflow.core.records import LayerAnalysis
    from npuflow.evaluation.evaluate import analyse
    from npuflow.evaluation.layers import COSINE_FLOOR, flag_text, read_layers_csv, write_layers_csv
    from npuflow.tracking.projection import fidelity_metrics

    float_model, quant_model = _collapsing_pair()
    onnx.save(float_model, tmp_path / "f.onnx")
    onnx.save(quant_model, tmp_path / "q.onnx")
    images = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", images=images)
    spec = {"task": "detection", "evaluation": {"analysis_images": 2}}  # detection: no headline check to run
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = analyse(
            tmp_path / "q.onnx",
            float_onnx=tmp_path / "f.onnx",
            reference_npz=tmp_path / "ref.npz",
            spec=spec,
            out_layers=tmp_path / "l.json",
        )
    record = LayerAnalysis.read(tmp_path / "l.json")
    rows = {r["tensor"]: r for r in record.rows}
    assert rows["r"]["collapsed"] and rows["r"]["below_floor"] and rows["r"]["quantized_dtype"] == "int8"
    assert rows["r"]["cosine"] == 0.0 < COSINE_FLOOR and rows["r"]["sqnr_db"] == 0.0  # noise = the whole signal
    assert rows["r"]["local_sqnr_db"] == float("-inf")  # the quantised signal is zero
    assert rows["y"]["collapsed"] and rows["y"]["unranked"] == "not quantised"  # what the collapse feeds
    assert not rows["z"]["collapsed"] and not rows["z"]["below_floor"] and rows["z"]["cosine"] == 1.0  # zero in float too
    assert (record.flagged_tensors, record.collapsed_tensors, record.flagged_names) == (2, 2, ["r", "y"])
    assert out["flagged_tensors"] == 2
    assert fidelity_metrics(record) == {"flagged_tensors": 2.0, "collapsed_tensors": 2.0}
    # the CSV keeps the flags as booleans; the report's per-layer table says which
    write_layers_csv(record.rows, tmp_path / "l.csv")
    table = {r["tensor"]: r for r in read_layers_csv(tmp_path / "l.csv")}
    assert table["r"]["collapsed"] is True and table["z"]["collapsed"] is False and table["r"]["local_sqnr_db"] == float("-inf")
    assert flag_text(table["r"]) == "collapsed (constant in int8)" and flag_text(table["z"]) == ""
    assert flag_text({"below_floor": True}) == f"cosine < {COSINE_FLOOR}"
    # an analysis written before the flags: no flag metrics, not zero
    assert fidelity_metrics(LayerAnalysis(images=1, rows=[])) == {}


def test_sqnr_and_cosine_of_extreme_energies_are_defined_without_warnings():
    from npuflow.evaluation.layers import _cosine, _db

    with np.errstate(all="raise"):
        assert _db(1e-300, 1e300) == pytest.approx(-6000.0)  # the ratio underflowed to 0: log10(0)
        assert _db(0.0, 1.0) == float("-inf") and _db(1.0, 0.0) == float("inf") and _db(0.0, 0.0) == float("inf")
        assert _cosine(1e-200, 1e-200, 1e-200) == pytest.approx(1.0)  # the product of energies underflowed
        assert _cosine(0.0, 1.0, 0.0) == 0.0 and _cosine(0.0, 0.0, 0.0) == 1.0
