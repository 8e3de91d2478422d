"""Each stage on small random-weight models: values, files and errors."""

import importlib.metadata
import json

import numpy as np
import onnx
import pytest

from conftest import make_config, reference_and_evaluate
from npuflow.util.io import read_json
from npuflow.util.onnxutil import op_counts, run_onnx

INT8 = {"default": "int8"}


def test_fetch_random_weights_are_labelled_and_reproducible(classifier, tmp_path):
    from npuflow.sources.fetch import fetch

    spec, p = classifier
    manifest = read_json(p["manifest"])
    assert manifest["weights"] == "random" and manifest["seed"] == 0 and manifest["family"] == "efficientvit_msra"
    assert "random" in manifest["weights_detail"]
    assert manifest["params"] == 2_349_436  # efficientvit_m0's published parameter count (2.3 M)
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    again = fetch(spec, tmp_path / "again", tmp_path)
    assert again["weights_sha256"] == manifest["weights_sha256"]  # seeded: identical weights


def test_export_matches_torch_and_records_opset(classifier):
    spec, p = classifier
    report = read_json(p["export"])
    assert report["opset"] == 17 and report["output_shape"] == [1, 1000]
    import torch

    from npuflow.sources.fetch import load_model

    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = load_model(spec, p["fetch"])(torch.from_numpy(x)).numpy()
    (got,) = run_onnx(p["onnx"], {"input": x})
    assert np.max(np.abs(got - expected)) <= 1e-3 * np.max(np.abs(expected))
    assert report["max_abs_diff_vs_source"] <= 1e-3 * np.max(np.abs(expected))
    model = onnx.load(str(p["onnx"]))
    assert model.opset_import[0].version == 17
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]


def test_simplify_removes_shape_ops_and_keeps_outputs(classifier):
    _, p = classifier
    report = read_json(p["simplify"])
    assert report["nodes_after"] < report["nodes_before"]
    assert report["ops_before"].get("Shape", 0) > 0 and report["ops_after"].get("Shape", 0) == 0
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (before,) = run_onnx(p["onnx"], {"input": x})
    (after,) = run_onnx(p["sim"], {"input": x})
    assert np.max(np.abs(after - before)) <= 1e-4 * np.max(np.abs(before))
    assert report["onnxsim_version"] == f"v{importlib.metadata.version('onnxsim')}"  # as onnxsim.__version__ states it


def test_simplify_stage_imports_no_torch(classifier, tmp_path):
    """The stage in a process of its own, as the pipeline runs it: onnxsim's simplifier without the
    package's __init__ (which imports torch), the same simplified model, and `import onnxsim` whole
    afterwards."""
    import subprocess
    import sys

    _, p = classifier
    code = (
        "import sys, onnx\n"
        "from npuflow.graph.simplify import simplify\n"
        f"simplify({str(p['onnx'])!r}, out_onnx={str(tmp_path / 's.onnx')!r}, out_json={str(tmp_path / 's.json')!r})\n"
        "print('torch' in sys.modules)\n"
        "import onnxsim\n"
        "print(onnxsim.__version__, callable(onnxsim.quantize))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", f"v{importlib.metadata.version('onnxsim')}", "True"]
    assert onnx.load(str(tmp_path / "s.onnx")).graph == onnx.load(str(p["sim"])).graph


def test_fold_head_bn_removes_the_batchnorm_and_keeps_outputs(classifier):
    _, p = classifier
    report = read_json(p["surgery"])
    (step,) = report["passes"]
    assert step["pass"] == "fold_head_bn" and step["folded"][0]["into"].endswith("Gemm")
    assert "BatchNormalization" in op_counts(p["sim"]) and "BatchNormalization" not in op_counts(p["surgery_onnx"])
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (before,) = run_onnx(p["sim"], {"input": x})
    (after,) = run_onnx(p["surgery_onnx"], {"input": x})
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_append_argmax_makes_class_ids_the_sole_output(segmenter):
    _, p = segmenter
    before, after = onnx.load(str(p["sim"])), onnx.load(str(p["surgery_onnx"]))
    assert after.ir_version == before.ir_version and after.opset_import[0].version == 11
    (out,) = after.graph.output
    assert out.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert after.graph.node[-1].op_type == "ArgMax"
    attrs = {a.name: a.i for a in after.graph.node[-1].attribute}
    assert attrs == {"axis": 1, "keepdims": 1}
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 128)).astype(np.float32)
    (logits,) = run_onnx(before, {"input": x})
    (ids,) = run_onnx(after, {"input": x})
    assert logits.shape == (1, 5, 16, 32) and ids.shape == (1, 1, 16, 32)
    np.testing.assert_array_equal(ids[:, 0], logits.argmax(1))


def test_failed_surgery_leaves_no_output(segmenter, tmp_path):
    from npuflow.graph.surgery import SurgeryError, surgery

    _, p = segmenter
    out = tmp_path / "x.onnx"
    with pytest.raises(SurgeryError, match="fold_head_bn: found no BatchNormalization"):
        surgery(p["sim"], passes=["fold_head_bn"], out_onnx=out, out_json=tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_calibration_ranges_cover_every_tensor_once(classifier):
    spec, p = classifier
    report = read_json(p["calibration"])
    assert report["images"] == 4 and report["method"] == "minmax" and report["image_sources"][0] == "astronaut"
    ranges = json.loads(p["ranges"].read_text())["data"]
    assert len(ranges) == report["tensors"] > 100
    lo, hi = (float(np.ravel(ranges["input"][k]["data"])[0]) for k in ("lowest", "highest"))
    assert -2.2 < lo < 0 < hi < 2.7  # ImageNet-normalised real photos


@pytest.fixture(scope="module")
def quantized(classifier, tmp_path_factory):
    from npuflow.quant.quantize import quantize

    _, p = classifier
    d = tmp_path_factory.mktemp("quant")
    report = quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=d / "q.onnx",
        out_json=d / "q.json",
    )
    return d / "q.onnx", report


def test_quantize_writes_int8_qdq_with_per_channel_weights(quantized, classifier):
    path, report = quantized
    model = onnx.load(str(path))
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert report["quantize_nodes"] > 100 and dq
    inits = {i.name: i for i in model.graph.initializer}
    conv_w_scales = [
        inits[n.input[1]] for n in dq if n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
    ]
    assert conv_w_scales, "per-channel weight scales expected"
    zp_types = {inits[n.input[2]].data_type for n in dq if len(n.input) > 2 and n.input[2] in inits}
    assert zp_types == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}  # int8 tensors, int32 biases
    assert report["int8_bytes"] < 0.5 * classifier[1]["onnx"].stat().st_size


def test_quantize_leaves_onnxruntime_and_logging_as_it_found_them_and_its_faster_renaming_changes_no_byte(
    classifier, tmp_path, monkeypatch
):
    import logging

    from onnxruntime.quantization.onnx_model import ONNXModel

    import npuflow.quant.quantize as q

    _, p = classifier
    original, root = ONNXModel.replace_input_of_all_nodes, logging.getLogger()
    monkeypatch.setattr(root, "level", logging.INFO)
    q.quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=tmp_path / "a.onnx",
        out_json=tmp_path / "a.json",
    )
    assert ONNXModel.replace_input_of_all_nodes is original and root.level == logging.INFO
    monkeypatch.setattr(q, "_replace_input_indexed", original)  # onnxruntime's own (quadratic) renaming
    q.quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=tmp_path / "b.onnx",
        out_json=tmp_path / "b.json",
    )
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_quantize_reuses_ranges_without_recalibrating(classifier, tmp_path, monkeypatch):
    import sys

    from npuflow.quant.quantize import quantize

    ortq = sys.modules["onnxruntime.quantization.quantize"]  # the module, not the function of that name

    def no_calibration(*a, **k):
        raise AssertionError("quantize must not calibrate")

    monkeypatch.setattr(ortq, "create_calibrator", no_calibration)
    _, p = classifier
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    assert (tmp_path / "q.onnx").exists()


def _outputs(model, images) -> np.ndarray:
    """The model's (first) output on each image, stacked: computed here, apart from evaluate."""
    return np.concatenate([run_onnx(model, {"input": img[None]})[0] for img in images])


def _cosine_per_image(f: np.ndarray, q: np.ndarray) -> np.ndarray:
    f, q = f.reshape(len(f), -1).astype(np.float64), q.reshape(len(q), -1).astype(np.float64)
    return np.sum(f * q, axis=1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1))


def test_evaluate_compares_int8_to_float_on_held_out_images(quantized, classifier, tmp_path):
    spec, p = classifier
    ref, report = reference_and_evaluate(quantized[0], spec, p, tmp_path)
    assert set(ref["image_sources"]).isdisjoint(read_json(p["calibration"])["image_sources"])
    images = np.load(tmp_path / "r.npz")["images"]
    f, q = _outputs(p["surgery_onnx"], images), _outputs(quantized[0], images)
    top5 = np.argsort(-q, axis=1)[:, :5]
    assert report["top1_agreement"] == np.mean(f.argmax(1) == q.argmax(1))
    assert report["top5_agreement"] == np.mean([c in t for c, t in zip(f.argmax(1), top5)])
    assert report["cosine"] == pytest.approx(np.mean(_cosine_per_image(f, q)), rel=1e-9) and report["cosine"] > 0.9
    assert report["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum((f - q.astype(np.float64)) ** 2)))
    assert report["host_fp32_ms"] > 0 and report["host_int8_ms"] > 0 and report["weights"] == "random"


def test_segmentation_evaluation_reports_pixel_agreement(segmenter, tmp_path):
    from npuflow.evaluation.evaluate import expose_logits
    from npuflow.quant.quantize import quantize

    spec, p = segmenter
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe=INT8,
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    _, report = reference_and_evaluate(tmp_path / "q.onnx", spec, p, tmp_path)
    assert "top1_agreement" not in report and read_json(p["manifest"])["family"] == "segformer"
    images = np.load(tmp_path / "r.npz")["images"]
    float_ids, quant_ids = _outputs(p["surgery_onnx"], images), _outputs(tmp_path / "q.onnx", images)  # the ArgMax head: class ids
    assert float_ids.dtype == np.int64 and report["pixel_agreement"] == np.mean(float_ids == quant_ids)
    # Fidelity is measured on the logits under the ArgMax.
    logits = [
        np.concatenate([run_onnx(expose_logits(onnx.load(str(m))), {"input": i[None]})[1] for i in images])
        for m in (p["surgery_onnx"], tmp_path / "q.onnx")
    ]
    assert report["cosine"] == pytest.approx(np.mean(_cosine_per_image(*logits)), rel=1e-9)


def test_fidelity_metrics_values():
    from npuflow.evaluation.evaluate import fidelity

    f = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    m = fidelity(f, f.argmax(1), f, f.argmax(1), "classification")
    assert m["cosine"] == pytest.approx(1.0) and m["sqnr_db"] == float("inf") and m["top1_agreement"] == 1.0
    q = f + np.array([[0.1, 0, 0], [0, 0, 0]])
    m = fidelity(f, f.argmax(1), q, q.argmax(1), "classification")
    assert m["sqnr_db"] == pytest.approx(10 * np.log10(24 / 0.01))


@pytest.mark.parametrize(
    "runs, repeats, budget, extra_runs, samples, median_ms",
    [
        ([9.0, 1.0, 2.0, 3.0], 20, 5.0, 0, 3, 2000.0),  # the images' runs after the first fill the budget
        ([9.0, 1.0, 2.0, 3.0, 4.0], 2, 5.0, 0, 2, 1500.0),  # no more samples than `repeats`
        ([9.0, 0.001], 20, 0.0, 2, 3, None),  # topped up to MIN_REPEATS, no warm-up: the session ran
        ([], 4, 0.0, 1 + 3, 3, None),  # nothing ran: a warm-up, then MIN_REPEATS runs
        ([], 20, 1e9, 1 + 20, 20, None),  # within the budget: `repeats` runs
    ],
)
def test_host_latency_takes_the_held_out_runs_as_samples(monkeypatch, runs, repeats, budget, extra_runs, samples, median_ms):
    """The held-out images' run times after the first (a warm-up) are the latency's samples; more
    runs only to reach `repeats` within the budget, and at least MIN_REPEATS."""
    from npuflow.evaluation import timing

    monkeypatch.setattr(timing, "LATENCY_BUDGET_S", budget)

    class Session:
        calls = 0

        def run(self, outputs, feeds):
            Session.calls += 1

    ms, n, spread = timing.host_latency_ms(Session(), {"x": None}, repeats, runs)
    assert (Session.calls, n) == (extra_runs, samples)
    if median_ms is not None:
        assert ms == pytest.approx(median_ms)
        taken = runs[1 : samples + 1]  # the samples (the warm-up's 9 s left out): slowest over fastest
        assert spread == pytest.approx(max(taken) / min(taken))


def test_unknown_timm_name_lists_close_matches():
    from conftest import classifier_entry
    from npuflow.pipeline.config import model_spec
    from npuflow.sources.core import FetchError
    from npuflow.sources.fetch import fetch

    spec = model_spec(make_config(m=classifier_entry(source="timm:efficientvit_m9")), "m")
    with pytest.raises(FetchError, match=r"efficientvit_m0|efficientvit_m5") as e:
        fetch(spec, "/nonexistent-never-written", "/tmp")
    assert "models.m.source" in str(e.value)


def test_int16_recipe_quantises_activations_to_int16(classifier, tmp_path):
    from npuflow.quant.quantize import quantize

    _, p = classifier
    report = quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe={"default": "int16"},
        out_onnx=tmp_path / "q.onnx",
        out_json=tmp_path / "q.json",
    )
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    zp = {inits.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert zp == {onnx.TensorProto.INT16} and report["activations"].startswith("int16")
    # w8a16: the weights stay int8; `weights: int16` makes them int16 too (a16w16), and both run
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert {inits[w] for w in weights} == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}  # int32: biases
    quantize(
        p["surgery_onnx"],
        ranges_json=p["ranges"],
        calibration_json=p["calibration"],
        recipe={"default": "int16", "weights": "int16"},
        out_onnx=tmp_path / "q16.onnx",
        out_json=tmp_path / "q16.json",
    )
    wide = onnx.load(str(tmp_path / "q16.onnx"))
    wide_inits = {i.name: i.data_type for i in wide.graph.initializer}
    wide_weights = {n.input[0] for n in wide.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in wide_inits}
    assert onnx.TensorProto.INT16 in {wide_inits[w] for w in wide_weights} and onnx.TensorProto.INT8 not in {
        wide_inits[w] for w in wide_weights
    }
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal([1, 3, 64, 64]).astype(np.float32)
    for path in (tmp_path / "q.onnx", tmp_path / "q16.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
        (out,) = session.run(None, {session.get_inputs()[0].name: np.resize(x, shape)})[:1]
        assert np.isfinite(out).all()


def test_targets_with_one_recipe_share_one_quantised_model():
    from npuflow.graph.precision import recipe_id
    from npuflow.targets import load_targets

    targets = load_targets({"my-npu": {"base": "ax650n-npu3", "precision": {"default": "int16"}}})
    ids = {t: recipe_id(targets.get(t)["precision"]) for t in ("ax650n-npu1", "ax650n-npu3", "rdk-x5", "j5", "my-npu")}
    assert ids == {
        "ax650n-npu1": "int8",
        "ax650n-npu3": "int8",
        "rdk-x5": "int8_Softmax-float",
        "j5": "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16",
        "my-npu": "w8a16",  # int16 activations, int8 weights: as AXERA names its U16 models
    }
    assert recipe_id({"default": "int16", "weights": "int16", "op_types": {"Softmax": "float"}}) == "a16w16_Softmax-float"


def test_reparameterisation_exports_the_single_branch_deploy_form(tmp_path):
    from npuflow.graph.export import export_module
    from npuflow.sources.timm import TimmSource

    source = TimmSource()
    train_form = source.build({"name": "m", "source": "timm:mobileone_s0"})
    deploy_form = source.deploy_form(train_form)
    export_module(train_form, [1, 3, 64, 64], 17, tmp_path / "train.onnx", "m")
    export_module(deploy_form, [1, 3, 64, 64], 17, tmp_path / "deploy.onnx", "m")
    train_convs, deploy_convs = op_counts(tmp_path / "train.onnx")["Conv"], op_counts(tmp_path / "deploy.onnx")["Conv"]
    assert deploy_convs < train_convs / 2  # each block's branches became one convolution
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (a,) = run_onnx(tmp_path / "train.onnx", {"input": x})
    (b,) = run_onnx(tmp_path / "deploy.onnx", {"input": x})
    assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(a))
