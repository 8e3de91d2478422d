"""task: detection — YOLO through every stage (random weights, 320×320), the host decode against
Ultralytics' own, NMS and mAP on cases worked by hand, letterboxing and box labels."""

import copy
import json

import numpy as np
import pytest
import torch

from conftest import make_config, run_front
from npuflow.evaluation.detect import Detections, box_iou, candidates, nms, postprocess
from npuflow.evaluation.detmetrics import agreement, average_precision, match
from npuflow.pipeline.spec import model_spec, stage_spec

# Random weights barely score any class (the head's prior biases): a low threshold keeps boxes to compare.
RANDOM_CONF = 0.01


def yolo_spec(source="ultralytics:yolo11n", size=320, **evaluation):
    config = make_config(y={"source": source, "task": "detection", "input": {"shape": [1, 3, size, size]}})
    config["evaluation"]["detection"].update(conf=RANDOM_CONF)
    config["evaluation"].update(evaluation)
    return model_spec(config, "y")


@pytest.fixture(scope="module")
def labelled_photos(tmp_path_factory):
    """Three sample photos as a user dataset with YOLO txt labels (Ultralytics' images/labels layout)."""
    import skimage.data
    from PIL import Image

    from npuflow.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("det-set")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    labels = {"astronaut": "0 0.5 0.5 0.6 0.9\n", "chelsea": "15 0.45 0.5 0.7 0.8\n", "coffee": "41 0.5 0.5 0.5 0.5\n45 0.2 0.2 0.1 0.1\n"}
    for name, text in labels.items():
        Image.fromarray(getattr(skimage.data, name)()).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text(text)
    index_dir = tmp_path_factory.mktemp("datasets") / "det"
    prepare_dataset("det", {"folder": str(root), "yolo_labels": "labels"}, index_dir)
    return index_dir.parent


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, labelled_photos):
    """yolo11n (random weights) at 320×320 through fetch … quantize, reference and evaluate on
    labelled photos, and a simulated build: (spec, paths, evaluate report, build report)."""
    from npuflow.evaluation.evaluate import analyse, evaluate, reference
    from npuflow.quant.quantize import quantize
    from npuflow.sim.build import build
    from npuflow.targets import load_targets

    spec = yolo_spec(images=3)
    spec["evaluation"]["dataset"] = "det"  # the user dataset below (its config entry is not needed past validation)
    root = tmp_path_factory.mktemp("yolo")
    paths = run_front(spec, root)
    d = root / "y"
    quantize(
        paths["surgery_onnx"],
        ranges_json=paths["ranges"],
        calibration_json=paths["calibration"],
        recipe={"default": "int8"},
        out_onnx=d / "int8.onnx",
        out_json=d / "int8.json",
    )
    # each stage gets only the spec fields the workflow passes it
    reference(
        paths["surgery_onnx"],
        manifest_json=paths["manifest"],
        spec=stage_spec(spec, "reference"),
        out_npz=d / "r.npz",
        out_json=d / "r.json",
        datasets_dir=labelled_photos,
    )
    ev_spec = stage_spec(spec, "evaluate")
    report = evaluate(
        d / "int8.onnx",
        reference_npz=d / "r.npz",
        reference_json=d / "r.json",
        manifest_json=paths["manifest"],
        spec=ev_spec,
        recipe="int8",
        out_json=d / "e.json",
    )
    analyse(
        d / "int8.onnx",
        float_onnx=paths["surgery_onnx"],
        reference_npz=d / "r.npz",
        spec=stage_spec(spec, "analyse"),
        out_layers=d / "l.json",
    )
    built = build(d / "int8.onnx", load_targets({}).get("rdk-x5"), d / "build", "y", "random")
    paths.update(quantize=d / "int8.json", build=d / "build" / "build.json", evaluate=d / "e.json", quant=d / "int8.onnx")
    return spec, paths, report, built


def test_yolo_export_ends_at_the_per_scale_head_outputs(yolo):
    from npuflow.util.io import read_json
    from npuflow.util.onnxutil import load

    _, paths, _, _ = yolo
    export = read_json(paths["export"])
    assert export["head"] == "split"
    assert export["outputs"] == {
        "box_s8": [1, 64, 40, 40],
        "cls_s8": [1, 80, 40, 40],
        "box_s16": [1, 64, 20, 20],
        "cls_s16": [1, 80, 20, 20],
        "box_s32": [1, 64, 10, 10],
        "cls_s32": [1, 80, 10, 10],
    }
    manifest = read_json(paths["manifest"])
    assert manifest["head"] == {"kind": "detect", "head_class": "Detect", "strides": [8, 16, 32], "reg_max": 16, "classes": 80}
    assert manifest["preprocessing"]["resize"] == "letterbox" and manifest["family"] == "yolo11"
    ops = {n.op_type for n in load(paths["surgery_onnx"]).graph.node}
    assert "Softmax" in ops  # C2PSA's attention, on the NPU; the DFL softmax is not in the graph:
    assert not any(n.op_type == "Softmax" and "dfl" in n.name.lower() for n in load(paths["surgery_onnx"]).graph.node)


def test_yolo_evaluation_compares_boxes_and_head_outputs(yolo):
    _, _, report, _ = yolo
    assert report["task"] == "detection" and report["images"] == 3 and report["detection"]["conf"] == RANDOM_CONF
    assert 0.95 < report["cosine"] <= 1 and report["sqnr_db"] > 10
    assert set(report["head_outputs"]) == {"box_s8", "cls_s8", "box_s16", "cls_s16", "box_s32", "cls_s32"}
    assert report["float_boxes_per_image"] > 0 and report["boxes_per_image"] > 0
    for key in ("box_agreement", "box_iou_mean", "map50_vs_float", "map50_95_vs_float", "map50", "map50_95", "float_map50"):
        assert 0 <= report[key] <= 1, key
    assert report["box_iou_mean"] >= 0.5  # matched boxes overlap by at least the matching IoU
    assert report["map50_95_vs_float"] <= report["map50_vs_float"]
    assert report["labelled_images"] == 3
    assert report["host_decode_nms_ms"] > 0 and report["host_int8_ms"] > 0
    assert "mask_iou_mean" not in report and "keypoint_oks_mean" not in report


def test_yolo_builds_and_its_metrics_log_under_the_uniform_names(yolo):
    from npuflow.core.records import EVAL_METRICS
    from npuflow.tracking.projection import RunReports, run_metrics

    _, paths, report, built = yolo
    assert built["latency_ms"] > 0 and built["subgraphs"] >= 1
    # every SiLU one op, C2PSA's attention recognised as the transformers' is, every shape known;
    # built in int8 throughout (the recipe the model carries), nothing falls back to the CPU
    assert built["patterns"] == {"Swish": 77, "Attention": 1} and built["unknown_dims"] == 0
    assert built["cpu_ops"] == 0 and built["subgraphs"] == 1
    files = {k: paths[k] for k in ("manifest", "export", "simplify", "calibration", "quantize", "build", "evaluate")}
    metrics = run_metrics(RunReports.read(files), files)
    for key in ("box_agreement", "map50_vs_float", "map50", "host_decode_nms_ms", "cosine", "sqnr_db"):
        assert key in EVAL_METRICS and metrics[key] == pytest.approx(report[key]), key


# yolo11n: DFL boxes; yolov8n-seg: masks; yolo26n-pose: boxes without DFL, YOLO26's keypoint decoding
@pytest.mark.parametrize("source", ["ultralytics:yolo11n", "ultralytics:yolov8n-seg", "ultralytics:yolo26n-pose"])
def test_host_decode_matches_ultralytics_own(source):
    """The split head decoded on the host gives the boxes, scores, classes and mask coefficients
    or keypoints that Ultralytics' own decoded output gives, anchor for anchor."""
    from npuflow.sources.ultralytics import UltralyticsSource

    spec = yolo_spec(source, 128)
    src = UltralyticsSource()
    torch.manual_seed(3)
    model = src.build(spec)
    head = src.head(model)
    from npuflow.data.batches import image_batches

    prep = {"mean": [0.0] * 3, "std": [1.0] * 3, "resize": "letterbox", "pad": 114}
    x = torch.from_numpy(image_batches("samples", "evaluation", 6, [1, 3, 128, 128], prep, 0).images[5:6])  # the horse
    with torch.no_grad():
        split, names = src.export_form(model, spec)
        ours = dict(zip(names, (t.numpy() for t in split(x))))
        full, names = src.export_form(copy.deepcopy(model), {**spec, "head": "full"})
        out = full(x)
        theirs = dict(zip(names, (t.numpy() for t in (out if isinstance(out, tuple) else [out]))))
    a, b = candidates(ours, head, 0.001), candidates(theirs, head, 0.001)
    assert len(a[1]) > 10 and len(a[1]) == len(b[1])
    np.testing.assert_allclose(a[0], b[0], atol=2e-3)  # boxes
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4)  # scores
    unsaturated = a[1] < 0.999  # where float32 sigmoids round several classes to 1.0, argmax takes the first
    assert unsaturated.sum() > 10 and np.array_equal(a[2][unsaturated], b[2][unsaturated])  # classes
    if head["kind"] != "detect":
        np.testing.assert_allclose(a[3], b[3], atol=2e-3)  # mask coefficients, keypoints
    found = postprocess(ours, head, (128, 128), 0.001)
    assert 0 < len(found) <= len(a[1]) and (found.masks is not None) == (head["kind"] == "segment")
    assert (found.keypoints is not None) == (head["kind"] == "pose")


def test_full_head_export_quantises_boxes_and_scores_into_one_tensor(tmp_path):
    """`head: full` exports Ultralytics' decoded output: one tensor of pixel boxes and 0..1 scores."""
    from npuflow.graph.export import export
    from npuflow.sources.fetch import fetch

    spec = yolo_spec(size=64)
    spec["head"] = "full"
    fetch(spec, tmp_path / "fetch", tmp_path)
    report = export(spec, fetch_dir=tmp_path / "fetch", out_onnx=tmp_path / "m.onnx", out_json=tmp_path / "e.json", threads=2)
    assert report["head"] == "full" and report["output_shape"] == [1, 84, 8 * 8 + 4 * 4 + 2 * 2] and "outputs" not in report


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert list(nms(boxes, scores, 0.5)) == [3, 2]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)
    # class-aware through the offset postprocess applies: the same box in another class stays
    found = postprocess(
        {"output": np.array([[[5, 5], [5, 5], [10, 10], [10, 10], [0.9, 0.0], [0.0, 0.8]]], np.float32)},
        {"kind": "detect", "classes": 2, "strides": [8], "reg_max": 16},
        (16, 16),
    )
    assert list(found.classes) == [0, 1] and len(found) == 2


def test_average_precision_on_cases_worked_by_hand():
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), np.array([0, 0]))]
    perfect = [Detections(truth[0][0], np.array([0.9, 0.8]), np.array([0, 0]))]
    assert average_precision(perfect, truth) == (pytest.approx(1.0), pytest.approx(1.0))
    # one hit, then a false positive, then nothing: precision 1 up to recall 0.5 -> AP = 51/101
    half = [Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]]), np.array([0.9, 0.8]), np.array([0, 0]))]
    assert average_precision(half, truth)[0] == pytest.approx(51 / 101)
    # a box shifted to IoU 0.6: both hit at 0.5-0.6; above, the best-scored box is a false positive,
    # so precision is 0.5 up to recall 0.5: AP = 0.5 * 51/101
    shifted = [Detections(np.array([[2.5, 0, 12.5, 10], [20, 20, 30, 30.0]]), np.array([0.9, 0.8]), np.array([0, 0]))]
    map50, map50_95 = average_precision(shifted, truth)
    assert box_iou(shifted[0].boxes[:1], truth[0][0][:1])[0, 0] == pytest.approx(0.6)
    assert map50 == pytest.approx(1.0) and map50_95 == pytest.approx((3 * 1.0 + 7 * 0.5 * 51 / 101) / 10)
    assert average_precision(perfect, [(np.zeros((0, 4)), np.zeros(0, int))]) is None


def test_agreement_matches_boxes_of_the_same_class_only():
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), np.array([0.9, 0.8]), np.array([0, 1]))
    same = Detections(ref.boxes + 0.5, np.array([0.85, 0.7]), np.array([0, 2]))
    assert [(i, j) for i, j, _ in match(ref, same)] == [(0, 0)]
    out = agreement([ref], [same], [same])
    assert out["box_agreement"] == pytest.approx(2 * 1 / 4) and out["box_iou_mean"] == pytest.approx(
        box_iou(ref.boxes[:1], same.boxes[:1])[0, 0]
    )


def test_letterbox_fits_pads_and_maps_boxes_as_ultralytics():
    from npuflow.data.batches import letterbox

    img = np.full((100, 200, 3), 255, np.uint8)
    chw, boxes = letterbox(img, (64, 64), {"mean": [0] * 3, "std": [1] * 3, "pad": 114}, None, np.array([[3, 0, 0, 200, 100.0]]))
    assert chw.shape == (3, 64, 64)
    assert chw[0, 0, 0] == pytest.approx(114 / 255) and chw[0, 32, 32] == pytest.approx(1.0)  # grey bands top and bottom
    assert chw[0, 15, 32] == pytest.approx(114 / 255) and chw[0, 16, 32] == pytest.approx(1.0)
    np.testing.assert_allclose(boxes, [[3, 0, 16, 64, 48]])


def test_coco_json_labels_are_indexed_in_category_order(tmp_path):
    from PIL import Image

    from npuflow.data.prepare import index_images

    Image.new("RGB", (40, 20)).save(tmp_path / "a.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg"}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"image_id": 7, "bbox": [1, 2, 10, 5], "category_id": 90},
            {"image_id": 7, "bbox": [0, 0, 40, 20], "category_id": 1, "iscrowd": 1},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    index = index_images("c", tmp_path, {"coco_json": "instances.json"})
    assert index["boxes"] is True and index["images"] == [{"path": "a.jpg", "boxes": [[1, 1.0, 2.0, 11.0, 7.0]]}]


def test_broken_box_labels_name_the_file_and_line(tmp_path):
    from PIL import Image

    from npuflow.data.datasets import DatasetError
    from npuflow.data.prepare import index_images

    (tmp_path / "labels").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\nperson here\n")
    with pytest.raises(DatasetError, match=r"datasets\.d\.yolo_labels: .*a\.txt:2: expected `class cx cy w h`, got 'person here'"):
        index_images("d", tmp_path, {"yolo_labels": "labels"})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match=r"datasets\.d\.coco_json: cannot read .*bad\.json as COCO annotations"):
        index_images("d", tmp_path, {"coco_json": "bad.json"})
