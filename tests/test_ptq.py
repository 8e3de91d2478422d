"""PTQ methods (npuflow.quant.ptq): every registry entry on its example model, the settings checks, and
the per-tensor MobileNetV2 improvement on the real ImageNet weights."""

import numpy as np
import onnx
import pytest

from npuflow.quant.ptq import PTQ_METHODS, apply_methods, check_settings, resolve_settings, settings_id
from npuflow.quant.ptq.examples import images_for


@pytest.mark.parametrize("key", PTQ_METHODS.names())
def test_every_method_applies_to_its_example_and_passes_its_verification(key):
    method = PTQ_METHODS.get(key)
    model = method.example()
    value = 0.5 if key == "smoothquant" else True
    assert not method.check(value)
    transformed, report = apply_methods(model, resolve_settings({key: value, "weights": "per_tensor"}), images_for(model))
    entry = report[key]
    assert entry["status"] == "applied" and entry["verified"] and entry["seconds"] >= 0
    assert {k: v["status"] for k, v in report.items() if k != key} == dict.fromkeys(set(PTQ_METHODS.names()) - {key}, "disabled")
    if "max_abs_diff" in entry:  # a float-equivalent transform: recorded and tiny
        assert entry["max_abs_diff"] <= 1e-4 * max(entry["output_scale"], 1.0)
    onnx.checker.check_model(transformed)
    assert transformed.SerializeToString() != model.SerializeToString()


@pytest.mark.parametrize("key", PTQ_METHODS.names())
def test_a_method_the_graph_cannot_use_is_not_applicable(key):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    value = 0.5 if key == "smoothquant" else True
    _, report = apply_methods(model, resolve_settings({key: value}), np.zeros((2, 4), np.float32))
    assert report[key]["status"] == "not applicable" and report[key]["reason"]


def test_equalisation_balances_the_channel_ranges_and_keeps_relu6_exact():
    from npuflow.quant.ptq.cle import find_pairs
    from npuflow.quant.ptq.graph import Weights

    model = PTQ_METHODS.get("cross_layer_equalization").example()
    w = Weights(model)
    before = np.max(np.abs(w.get("w1").reshape(8, -1)), axis=1)
    out, report = apply_methods(model, resolve_settings({"cross_layer_equalization": True}), images_for(model))
    w = Weights(out)
    after = np.max(np.abs(w.get("w1").reshape(8, -1)), axis=1)
    assert before.max() / before.min() > 100 and after.max() / after.min() < before.max() / before.min() / 10
    entry = report["cross_layer_equalization"]
    assert entry["pairs"] == 2 and entry["relu6_bounds"] == 1  # pw→dw (through ReLU6), dw→pw
    assert len(find_pairs(out, w)) == 2 and "Clip" not in {n.op_type for n in out.graph.node}


def test_bias_correction_reduces_the_output_shift_it_targets():
    model = PTQ_METHODS.get("bias_correction").example()
    for weights in ("per_tensor", "per_channel"):
        _, report = apply_methods(model, resolve_settings({"bias_correction": True, "weights": weights}), images_for(model))
        entry = report["bias_correction"]
        assert entry["layers"] == 3 and entry["output_shift_after"] < 0.5 * entry["output_shift_before"], (weights, entry)


def test_smoothquant_shrinks_the_activation_outliers_and_raises_the_int8_sqnr():
    from npuflow.quant.ptq.graph import Weights, outputs_of, quantise_weight

    model = PTQ_METHODS.get("smoothquant").example()
    images = images_for(model, 16)
    out, report = apply_methods(model, resolve_settings({"smoothquant": 0.5}), images)
    entry = report["smoothquant"]
    assert entry["norms"] == 1 and entry["matmuls"] == 1
    assert entry["activation_outlier_ratio_after"] < entry["activation_outlier_ratio_before"] / 3

    def int8_fc1_sqnr(m):  # fc1 with per-tensor int8 input and per-channel int8 weights
        n = np.concatenate([outputs_of(_expose(m, "n"), images)[1]]).reshape(-1, 16)
        w = Weights(m).get("w1")
        scale = np.abs(n).max() / 127
        q = np.clip(np.round(n / scale), -127, 127) * scale @ quantise_weight(w, 1)
        f = n @ w
        return 10 * np.log10(np.sum(f**2) / np.sum((f - q) ** 2))

    assert int8_fc1_sqnr(out) > int8_fc1_sqnr(model) + 3


def _expose(model, tensor):
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return m


def test_settings_are_checked_naming_the_key():
    from npuflow.quant.ptq import PtqError

    with pytest.raises(PtqError, match=r"unknown quantization key 'bias_corection'.*bias_correction"):
        check_settings({"bias_corection": True}, "models.m.quantization")
    with pytest.raises(PtqError, match=r"models.m.quantization.weights: expected one of per_channel, per_tensor"):
        check_settings({"weights": "per_row"}, "models.m.quantization")
    with pytest.raises(PtqError, match="smoothquant: expected false or an alpha"):
        check_settings({"smoothquant": 1.5}, "models.m.quantization")
    assert (
        settings_id(resolve_settings({"weights": "per_tensor", "cross_layer_equalization": True, "bias_correction": True})) == "pt_cle_bc"
    )
    assert settings_id(resolve_settings({"smoothquant": 0.5})) == "pc_sq0.5"
    assert settings_id(resolve_settings()) == "pc"


def test_the_ptq_stage_reports_each_method_and_carries_the_settings_to_the_quantiser(classifier, tmp_path):
    """efficientvit_m0 (random weights): equalisation and bias correction apply, SmoothQuant is
    not applicable (no LayerNorm feeding a MatMul); the quantiser then uses per-tensor weights."""
    from conftest import make_config
    from npuflow.core.records import PtqReport
    from npuflow.pipeline.config import model_spec
    from npuflow.quant.ptq.stage import embedded_settings, ptq
    from npuflow.quant.quantize import quantize

    _, p = classifier
    settings = {"weights": "per_tensor", "cross_layer_equalization": True, "bias_correction": True, "smoothquant": 0.5}
    spec = model_spec(make_config(evit={**__import__("conftest").classifier_entry(), "quantization": settings}), "evit")
    report = ptq(p["surgery_onnx"], manifest_json=p["manifest"], spec=spec, out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "ptq.json")
    assert PtqReport.read(tmp_path / "ptq.json").settings_id == report["settings_id"] == "pt_cle_sq0.5_bc"
    methods = report["methods"]
    assert methods["smoothquant"] == {"status": "not applicable", "reason": "no LayerNormalization feeding MatMul/Gemm weights"}
    assert methods["cross_layer_equalization"]["status"] == "applied" and methods["cross_layer_equalization"]["verified"]
    assert methods["cross_layer_equalization"]["max_abs_diff"] < 1e-3
    bc = methods["bias_correction"]
    assert bc["status"] == "applied" and bc["output_shift_after"] < bc["output_shift_before"]
    assert report["calibration_images"] == spec["calibration"]["images"]
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert embedded_settings(model) == {**settings}
    q = quantize(
        tmp_path / "m.onnx",
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe={"default": "int8"},
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    assert q["weights"] == "int8 per-tensor symmetric"
    quant = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i for i in quant.graph.initializer}
    conv_weight_scales = [
        inits[n.input[1]]
        for n in quant.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and len(inits[n.input[0]].dims) == 4
    ]
    assert conv_weight_scales and all(len(s.dims) == 0 or s.dims == [1] for s in conv_weight_scales)


def test_a_target_profile_requiring_per_tensor_weights_gets_its_own_quantised_model():
    from conftest import classifier_entry, make_config
    from npuflow.graph.precision import recipe_id
    from npuflow.pipeline.plan import Plan
    from npuflow.quant.quantize import per_channel_weights

    config = make_config(evit=classifier_entry())
    config["targets"] = ["ax650n-npu3", "pt-chip"]
    config["target_profiles"] = {"pt-chip": {"base": "rdk-x5", "quantization": {"weights": "per_tensor"}}}
    plan = Plan(config)
    recipe = plan.base_recipe("evit", "pt-chip")
    assert (
        recipe["weight_granularity"] == "per_tensor"
        and plan.recipe_of("evit", "pt-chip") == recipe_id(recipe)
        and recipe_id(recipe).endswith("_wpt")
    )
    assert "weights" not in plan.base_recipe("evit", "ax650n-npu3")
    assert per_channel_weights(onnx.ModelProto(), recipe, {"per_channel": True}) is False
    assert per_channel_weights(onnx.ModelProto(), plan.base_recipe("evit", "ax650n-npu3"), {"per_channel": True}) is True


def test_equalisation_and_bias_correction_rescue_per_tensor_mobilenet_v2(real_mobilenet):
    """torchvision's MobileNetV2 with its real ImageNet weights, int8 with per-tensor weights:
    CLE + BC bring the output SQNR and cosine back to the per-channel model's (benchmarks/ptq.py
    prints the full table)."""
    from npuflow.data.batches import image_batches
    from npuflow.data.datasets import CALIBRATION_PHOTOS
    from npuflow.quant.ptq_study import measure
    from npuflow.util.io import read_json

    spec, paths, _ = real_mobilenet
    model = onnx.load(str(paths["surgery_onnx"]))
    pre = read_json(paths["manifest"])["preprocessing"]
    shape = spec["input"]["shape"]
    calib = image_batches("samples", "calibration", 16, shape, pre, spec["seed"], paths["manifest"].parent.parent / "datasets").images
    n = len(CALIBRATION_PHOTOS)
    held = image_batches(
        "samples", "calibration", 32 + n, shape, pre, spec["seed"] + 1000, paths["manifest"].parent.parent / "datasets"
    ).images[n:]
    per_channel = measure(model, {}, calib, held, layer_images=0)
    per_tensor = measure(model, {"weights": "per_tensor"}, calib, held, layer_images=0)
    rescued = measure(
        model, {"weights": "per_tensor", "cross_layer_equalization": True, "bias_correction": True}, calib, held, layer_images=0
    )
    assert per_tensor["sqnr_db"] < per_channel["sqnr_db"] - 2  # per-tensor weights cost MobileNetV2 dearly
    assert rescued["sqnr_db"] > per_tensor["sqnr_db"] + 3 and rescued["sqnr_db"] > per_channel["sqnr_db"] - 0.5
    assert rescued["cosine"] > per_tensor["cosine"] + 0.02
    assert rescued["top1_agreement"] >= per_channel["top1_agreement"] - 0.1
    assert rescued["methods"]["cross_layer_equalization"]["max_abs_diff"] < 1e-3


def test_a_methods_result_reads_as_one_line():
    from npuflow.quant.ptq.report import method_text

    model = PTQ_METHODS.get("cross_layer_equalization").example()
    _, report = apply_methods(model, resolve_settings({"cross_layer_equalization": True}), images_for(model))
    text = method_text(report["cross_layer_equalization"])
    assert text.startswith("applied (pairs 2, sweeps ") and "max_abs_diff " in text and "; verified; " in text
    assert method_text(report["bias_correction"]) == "disabled"
    assert method_text({"status": "not applicable", "reason": "no LayerNormalization"}) == "not applicable: no LayerNormalization"
