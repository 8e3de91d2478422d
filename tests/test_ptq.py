"""PTQ methods (npuflow.ptq): every registry entry on its example model, the settings checks, and
the per-tensor MobileNetV2 improvement on the real ImageNet weights."""

import numpy as np
import onnx
import pytest

from npuflow.ptq import PTQ_METHODS, apply_methods, check_settings, resolve_settings, settings_id
from npuflow.ptq.examples import images_for


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
    from npuflow.ptq.cle import find_pairs
    from npuflow.ptq.graph import Weights

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
    from npuflow.ptq.graph import Weights, outputs_of, quantise_weight

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
    from npuflow.ptq import PtqError

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
