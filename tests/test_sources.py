"""Model sources: every registered source (timm-style, over the registry), torchvision's real
MobileNetV2 weights offline, Ultralytics checkpoints read without running code, unknown names."""

import copy
import os
import pickle
import time

import pytest
import torch

from conftest import IMAGENET_CATS, IMAGENET_ESPRESSO, MOBILENET_V2_FILE, classify_photo, make_config, run_front
from npuflow.graph.export import export
from npuflow.pipeline.config import ConfigError, model_spec, validate_config
from npuflow.pipeline.schema import load_schema
from npuflow.pipeline.spec import STAGE_FIELDS
from npuflow.sources.core import SOURCES, FetchError, source_fields, source_for
from npuflow.sources.fetch import fetch
from npuflow.util.onnxutil import load, run_onnx

SOURCE_NAMES = SOURCES.names()


def example_spec(prefix: str, folder, weights: str = "random") -> dict:
    config = make_config(m=SOURCES.get(prefix).example_entry(folder))
    config["weights"] = weights
    return model_spec(config, "m")


def valid_value(schema: dict):
    """A value a field's schema accepts (to give a source a field it does not read)."""
    if "enum" in schema:
        return schema["enum"][0]
    return {"object": {}, "boolean": True}.get(schema["type"], "0" * 64 if "pattern" in schema else "x")


@pytest.fixture
def offline(monkeypatch):
    """Every hub and download host unreachable, whatever network this machine has."""
    import npuflow.sources.core
    import npuflow.util.download

    monkeypatch.setattr(npuflow.util.download, "reachable", lambda *a, **k: False)
    monkeypatch.setattr(npuflow.sources.core, "reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")


def test_builtin_sources_are_registered():
    assert {"timm", "hf", "url", "file", "torchvision", "ultralytics"} <= set(SOURCE_NAMES)


@pytest.mark.parametrize("prefix", SOURCE_NAMES)
def test_every_source_is_one_registry_entry(prefix, tmp_path):
    """Its example validates; the schema has its fields and the fetch/export stages read them;
    each required field is named when missing; another source's field is refused; a task it does
    not serve is refused."""
    cls = SOURCES.get(prefix)
    assert cls.syntax.startswith(f"{prefix}:") and cls.example["source"].startswith(f"{prefix}:")
    example = cls.example_entry(tmp_path)
    validate_config(make_config(m=copy.deepcopy(example)))
    model_fields = load_schema()["$defs"]["model"]["properties"]
    assert prefix in model_fields["source"]["description"]
    for field in cls.fields:
        assert model_fields[field] == cls.fields[field]
        assert field in STAGE_FIELDS["fetch"] and field in STAGE_FIELDS["export"]
    for field in cls.required:
        entry = {k: v for k, v in copy.deepcopy(example).items() if k != field}
        with pytest.raises(ConfigError, match=rf"models\.m\.{field}: a {prefix}: source needs `{field}`"):
            make_config(m=entry)
    foreign = next((f for f in source_fields() if f not in cls.fields), None)
    if foreign:
        with pytest.raises(ConfigError, match=rf"models\.m\.{foreign}: not read by {prefix}: sources"):
            make_config(m={**copy.deepcopy(example), foreign: valid_value(source_fields()[foreign])})
    other = next(t for t in ("classification", "segmentation", "detection") if t not in cls.tasks)
    with pytest.raises(ConfigError, match=r"models\.m\.task: "):
        make_config(m={**copy.deepcopy(example), "task": other})


@pytest.mark.parametrize("prefix", SOURCE_NAMES)
def test_every_source_builds_random_weights_offline_and_exports(prefix, offline, tmp_path):
    """Random weights without the network, labelled so (a source that carries its graph keeps its
    file's weights, and says so); the export has the outputs the source names."""
    spec = example_spec(prefix, tmp_path)
    manifest = fetch(spec, tmp_path / "fetch", tmp_path)
    assert manifest["family"]
    if SOURCES.get(prefix).carries_graph:
        assert manifest["weights"] == "pretrained" and "weights: random does not apply" in manifest["weights_detail"]["note"]
    else:
        assert manifest["weights"] == "random" and manifest["seed"] == 0
    report = export(spec, fetch_dir=tmp_path / "fetch", out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "export.json", threads=2)
    names = [o.name for o in load(tmp_path / "m.onnx").graph.output]
    assert names == (list(report["outputs"]) if "outputs" in report else ["output"])
    assert report["max_abs_diff_vs_source"] >= 0
    again = fetch(spec, tmp_path / "again", tmp_path)
    assert again["weights_sha256"] == manifest["weights_sha256"]  # seeded: the same weights


@pytest.mark.parametrize("prefix", [p for p in SOURCE_NAMES if not SOURCES.get(p).carries_graph])
def test_every_source_offline_pretrained_fails_fast_and_auto_falls_back(prefix, offline, tmp_path):
    """(A source that carries its graph has no architecture to fall back to: tests/test_onnx_source.py.)"""
    spec = example_spec(prefix, tmp_path, "pretrained")
    source_for(spec).build(spec)  # imports paid before the clock starts
    start = time.perf_counter()
    with pytest.raises(FetchError, match=r"^models\.m"):
        fetch(spec, tmp_path / "out", tmp_path)
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()
    if prefix != "file":  # a missing file is an error, not "unavailable now"
        manifest = fetch(example_spec(prefix, tmp_path, "auto"), tmp_path / "auto", tmp_path)
        assert manifest["weights"] == "random" and manifest["weights_detail"] != "weights: random in the config"


# ------------------------------------------------------------------------------ torchvision


def test_real_mobilenet_v2_classifies_the_sample_photos_in_float_and_int8(real_mobilenet):
    """A real ImageNet classifier end to end, offline: chelsea is a cat, coffee an espresso, before
    and after int8 quantisation."""
    spec, paths, quant = real_mobilenet
    manifest = load_manifest(paths)
    assert manifest["weights"] == "pretrained" and manifest["weights_detail"]["file"].endswith(MOBILENET_V2_FILE)
    assert manifest["weights_detail"]["file_sha256"].startswith("b0353104")
    assert manifest["preprocessing"]["crop_pct"] == pytest.approx(224 / 256)
    for onnx_path in (paths["surgery_onnx"], quant):
        assert classify_photo(onnx_path, "chelsea", manifest["preprocessing"]) in IMAGENET_CATS
        assert classify_photo(onnx_path, "coffee", manifest["preprocessing"]) == IMAGENET_ESPRESSO


def load_manifest(paths):
    from npuflow.util.io import read_json

    return read_json(paths["manifest"])


def test_torchvision_pretrained_offline_names_the_missing_file(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    config = make_config(
        m={"source": "torchvision:mobilenet_v2.IMAGENET1K_V1", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}
    )
    config["weights"] = "pretrained"
    with pytest.raises(FetchError) as e:
        fetch(model_spec(config, "m"), tmp_path / "out", tmp_path)
    message = str(e.value)
    assert message.startswith("models.m: weights: pretrained, but torchvision weights MobileNet_V2_Weights.IMAGENET1K_V1")
    assert f"{MOBILENET_V2_FILE} is not in torch's hub cache ({tmp_path / 'empty-torch-home' / 'hub' / 'checkpoints'})" in message
    assert "unreachable" in message


def test_torchvision_damaged_cached_weights_are_refused(tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / MOBILENET_V2_FILE).write_bytes(b"not the weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = make_config(
        m={"source": "torchvision:mobilenet_v2.IMAGENET1K_V1", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}
    )
    config["weights"] = "auto"  # a damaged file is an error, not a reason for random weights
    with pytest.raises(FetchError, match=r"models\.m: .*mobilenet_v2-b0353104\.pth has sha256 [0-9a-f]+, not the b0353104… its name"):
        fetch(model_spec(config, "m"), tmp_path / "out", tmp_path)


@pytest.mark.parametrize(
    "source, task, expected",
    [
        ("torchvision:mobilenet_v9", "classification", "unknown torchvision model 'mobilenet_v9'; close matches: mobilenet_v2"),
        ("torchvision:lraspp_mobilenet_v3_large", "classification", "is a segmentation model, not classification"),
        ("torchvision:mobilenet_v2.IMAGENET1K_V9", "classification", "unknown MobileNet_V2_Weights entry 'IMAGENET1K_V9'; close matches"),
        ("ultralytics:yolo11q", "detection", "unknown Ultralytics model 'yolo11q'; close matches: yolo11"),
        ("ultralytics:yolov8n-obb", "detection", "unknown Ultralytics model 'yolov8n-obb'; close matches: yolov8"),
        ("timm:efficientvit_m9", "classification", "unknown timm model 'efficientvit_m9'; close matches: efficientvit_m"),
    ],
)
def test_unknown_names_list_close_matches(source, task, expected, tmp_path):
    spec = model_spec(make_config(m={"source": source, "task": task, "input": {"shape": [1, 3, 64, 64]}}), "m")
    with pytest.raises(FetchError, match=r"^models\.m\.(source|task): ") as e:
        fetch(spec, tmp_path / "out", tmp_path)
    assert expected in str(e.value)
    assert not (tmp_path / "out").exists()


def test_torchvision_segmenter_through_export_to_build(tmp_path):
    """LR-ASPP MobileNetV3 (random weights): export, simplify, ArgMax surgery, calibrate, quantise,
    simulated build."""
    from npuflow.quant.quantize import quantize
    from npuflow.sim.build import build
    from npuflow.targets import load_targets

    entry = {
        "source": "torchvision:lraspp_mobilenet_v3_large",
        "task": "segmentation",
        "input": {"shape": [1, 3, 128, 128]},
        "surgery": ["append_argmax"],
    }
    spec = model_spec(make_config(seg=entry), "seg")
    paths = run_front(spec, tmp_path)
    assert load_manifest(paths)["family"] == "lraspp"
    (logits,) = run_onnx(paths["sim"], {"input": torch.zeros(1, 3, 128, 128).numpy()})
    assert logits.shape == (1, 21, 128, 128)  # torchvision's 21 VOC classes, at the input's resolution
    quant = tmp_path / "int8.onnx"
    quantize(
        paths["surgery_onnx"],
        ranges_json=paths["ranges"],
        calibration_json=paths["calibration"],
        recipe={"default": "int8"},
        out_onnx=quant,
        out_json=tmp_path / "int8.json",
    )
    report = build(quant, load_targets({}).get("ax650n-npu3"), tmp_path / "build", "seg", "random")
    assert report["latency_ms"] > 0 and report["subgraphs"] >= 1


# ------------------------------------------------------------------------------ ultralytics


def ultralytics_checkpoint(model, **extra) -> dict:
    """A checkpoint laid out as Ultralytics' releases are: the whole model object, in half precision."""
    import numpy as np

    return {
        "date": "2026-01-01T00:00:00",
        "version": "8.4.0",
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "train_args": {"imgsz": 640, "data": "coco.yaml"},
        "train_metrics": {"metrics/mAP50-95(B)": np.float64(0.39)},
        "model": copy.deepcopy(model).half(),
        "ema": None,
        "optimizer": None,
        "epoch": -1,
        **extra,
    }


@pytest.fixture
def yolo_spec():
    config = make_config(y={"source": "ultralytics:yolo11n", "task": "detection", "input": {"shape": [1, 3, 64, 64]}})
    config["weights"] = "pretrained"
    return model_spec(config, "y")


def test_ultralytics_checkpoint_loads_as_weights_only(yolo_spec, tmp_path):
    """A pickled DetectionModel is read with inert stand-ins for its classes; its tensors load."""
    from safetensors.torch import load_file

    torch.manual_seed(7)
    model = source_for(yolo_spec).build(yolo_spec)
    cached = tmp_path / "downloads" / "ultralytics" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    torch.save(ultralytics_checkpoint(model), cached)
    manifest = fetch(yolo_spec, tmp_path / "out", tmp_path)
    assert manifest["weights"] == "pretrained" and manifest["weights_detail"]["file"] == str(cached)
    fetched = load_file(tmp_path / "out" / "weights.safetensors")
    for k, v in model.state_dict().items():
        expected = v.half().to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(fetched[k], expected), k


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_ultralytics_checkpoint_is_refused_without_running(yolo_spec, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.manual_seed(7)
    model = source_for(yolo_spec).build(yolo_spec)
    cached = tmp_path / "downloads" / "ultralytics" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    torch.save(ultralytics_checkpoint(model, train_args=Payload()), cached)
    yolo_spec["weights"] = "auto"  # refused outright, not taken for "unavailable"
    with pytest.raises(FetchError) as e:
        fetch(yolo_spec, tmp_path / "out", tmp_path)
    assert str(e.value) == (
        f"models.y: {cached} names posix.system, which would import and run code; refused (npuflow never runs code from a checkpoint)"
    )
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_ultralytics_names_are_inert_whatever_they_name(yolo_spec, tmp_path):
    """A name under an allowed prefix is a stand-in, never the real function: an Ultralytics
    function that would create a folder, smuggled into the checkpoint, creates nothing."""
    from ultralytics.utils.files import increment_path

    marker = tmp_path / "made-by-the-checkpoint"

    class Smuggled:
        def __reduce__(self):
            return (increment_path, (str(marker), False, "", True))

    torch.manual_seed(7)
    model = source_for(yolo_spec).build(yolo_spec)
    cached = tmp_path / "downloads" / "ultralytics" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    torch.save(ultralytics_checkpoint(model, train_args=Smuggled()), cached)
    assert fetch(yolo_spec, tmp_path / "out", tmp_path)["weights"] == "pretrained"
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"<html>rate limited</html>", pickle.dumps({"model": 1})])
def test_broken_ultralytics_checkpoint_is_refused_naming_the_file(content, yolo_spec, tmp_path):
    cached = tmp_path / "downloads" / "ultralytics" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    with pytest.raises(FetchError, match=rf"^models\.y: {cached} is not a loadable checkpoint"):
        fetch(yolo_spec, tmp_path / "out", tmp_path)
