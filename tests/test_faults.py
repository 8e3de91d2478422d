"""Faults a user meets, answered at once (issue 15): what the config can tell before any job runs
(local paths, counts), one-line errors from every command, an input size a model cannot take, the
pre-flight check of the tracking server and its refusals, one run per working folder; and, end to
end, a run that fails, is fixed, is interrupted and is finished by running it again. The cases and
their messages: docs/hostile-input.md."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

import background
from conftest import REPO, classifier_entry, copy_pipeline, snakemake, snakemake_command, snakemake_env
from npuflow.pipeline.config import ConfigError, load_config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


def write_images(folder: Path, n: int, size: int = 32) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
    return paths


# ---------------------------------------------------------------------------------------------
# What the config can tell: local paths, counts
# ---------------------------------------------------------------------------------------------


def test_local_paths_are_checked_when_the_config_is_read_naming_entry_field_and_path(tmp_path):
    (tmp_path / "a-file").write_text("x")
    write_images(tmp_path / "cal", 2)
    config = {
        "weights": "random",
        "datasets": {
            "gone": {"folder": str(tmp_path / "no-such-folder")},
            "file": {"folder": str(tmp_path / "a-file")},
            "masked": {"folder": str(tmp_path / "cal"), "masks": "masks"},
            "arch": {"archive": "relative/set.tar"},
        },
        "calibration": {"dataset": "gone"},
        "mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example.org"},
        "models": {
            "ckpt": classifier_entry(source=f"file:{tmp_path}/no-such.pth", arch="efficientvit_m0"),
            "dir": classifier_entry(source=f"file:{tmp_path}", arch="efficientvit_m0"),
            "hub": {"source": "hf:someone/unknown-segformer", "task": "segmentation", "input": {"shape": [1, 3, 64, 64]}},
        },
    }
    text = problems_of(write_config(tmp_path / "c.yaml", config))
    assert f"datasets.gone.folder: no folder {tmp_path}/no-such-folder" in text
    assert f"datasets.file.folder: {tmp_path}/a-file is a file, not a folder" in text
    assert f"datasets.masked.masks: no folder {tmp_path}/cal/masks" in text
    assert f"datasets.arch.archive: no file relative/set.tar (relative to {Path.cwd()})" in text
    assert f"models.ckpt.source: no such file {tmp_path}/no-such.pth" in text
    assert f"models.dir.source: {tmp_path} is a folder, not a checkpoint file" in text
    assert "models.hub.hf_config: hf:someone/unknown-segformer has no shipped architecture config" in text
    assert "mlflow.tracking_uri: the tracking URI https://***@mlflow.example.org has credentials in it" in text
    assert "hunter2" not in text and "bob" not in text


def test_a_missing_dataset_folder_stops_snakemake_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["datasets"] = {"mine": {"folder": str(tmp_path / "not-there")}}
    config["calibration"]["dataset"] = "mine"
    proc = snakemake(tmp_path, configfile=write_config(tmp_path / "c.yaml", config))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"datasets.mine.folder: no folder {tmp_path}/not-there" in out
    assert "rule fetch" not in out and not (tmp_path / "results").exists()


def test_out_of_range_counts_are_refused_with_the_numbers(tmp_path):
    write_images(tmp_path / "val", 3)
    base = {"weights": "random", "models": {"m": classifier_entry()}}
    text = problems_of(write_config(tmp_path / "a.yaml", {**base, "calibration": {"images": 100_000_000}}))
    assert "calibration.images: 100000000 is greater than the maximum of 100000" in text
    # Within the bound, but more float32 tensors than one job may hold (8 GiB).
    text = problems_of(write_config(tmp_path / "b.yaml", {**base, "calibration": {"images": 20_000}}))
    assert "calibration.images: the calibration job of models.m would hold 20000 images of 3×224×224 at once, 11.2 GiB" in text
    assert "at most 14266 fit in the 8 GiB a job may hold" in text
    big = classifier_entry(input={"shape": [1, 3, 640, 1280]}, mixed_precision={"goal": {"metric": "cosine", "value": 0.9}, "images": 900})
    text = problems_of(write_config(tmp_path / "c.yaml", {**base, "models": {"seg": big}}))
    assert "models.seg.mixed_precision.images: the mixed-precision job of models.seg would hold 932 images of 3×640×1280" in text
    assert "at most 873 fit" in text
    # Held-out evaluation images count once each: no more than the folder holds.
    evaluation = {"datasets": {"val": {"folder": str(tmp_path / "val")}}, "evaluation": {"dataset": "val", "images": 5}}
    text = problems_of(write_config(tmp_path / "d.yaml", {**base, **evaluation}))
    assert (
        f"evaluation.images: 5 asked, but datasets.val holds 3 images ({tmp_path}/val); held-out images count once each, so at most 3"
        in text
    )
    assert load_config(write_config(tmp_path / "e.yaml", {**base, **evaluation, "evaluation": {"dataset": "val", "images": 3}}))
    text = problems_of(write_config(tmp_path / "f.yaml", {**base, "evaluation": {"latency_repeats": 10**9}}))
    assert "evaluation.latency_repeats: 1000000000 is greater than the maximum of 10000" in text


def test_an_archive_dataset_holding_fewer_evaluation_images_than_asked_fails_in_one_line(tmp_path):
    """An archive's images are counted once it is prepared: the reference stage refuses, naming the numbers."""
    import tarfile

    from npuflow.data.batches import image_batches
    from npuflow.data.datasets import DatasetError
    from npuflow.data.prepare import prepare_dataset

    write_images(tmp_path / "src", 2)
    with tarfile.open(tmp_path / "set.tar", "w") as tar:
        tar.add(tmp_path / "src", arcname=".")
    prepare_dataset("val", {"archive": str(tmp_path / "set.tar")}, tmp_path / "ds" / "val")
    prep = {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert image_batches("val", "evaluation", 2, [1, 3, 16, 16], prep, 0, datasets_dir=tmp_path / "ds").images.shape[0] == 2
    with pytest.raises(DatasetError, match=r"evaluation\.images: 3 asked, but dataset val holds 2 images"):
        image_batches("val", "evaluation", 3, [1, 3, 16, 16], prep, 0, datasets_dir=tmp_path / "ds")


def test_a_dataset_folder_without_images_stops_even_the_dry_run_naming_the_field(tmp_path):
    """Before: an empty calibration folder passed the dry run and failed in its job."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes" / "deep").mkdir(parents=True)
    (tmp_path / "notes" / "deep" / "README.txt").write_text("no image here")
    (tmp_path / "notes" / "masks").mkdir()
    write_images(tmp_path / "notes" / "masks", 1)  # images of the masks sub-folder are not the dataset's
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["datasets"] = {"calib": {"folder": str(tmp_path / "empty")}, "held": {"folder": str(tmp_path / "notes"), "masks": "masks"}}
    config["calibration"]["dataset"] = "calib"
    suffixes = ".bmp, .jpeg, .jpg, .png, .ppm, .tif, .tiff, .webp"
    expected = (
        f"  datasets.calib.folder: no images ({suffixes}) in {tmp_path}/empty or its sub-folders\n"
        f"  datasets.held.folder: no images ({suffixes}) in {tmp_path}/notes or its sub-folders"
    )
    assert problems_of(write_config(tmp_path / "c.yaml", config)) == f"invalid config:\n{expected}"
    proc = snakemake(tmp_path, "-n", configfile=tmp_path / "c.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out and "Traceback" not in out
    assert "rule fetch" not in out and not (tmp_path / "results").exists()


def test_labels_the_model_cannot_output_are_refused_before_any_job_where_the_config_tells_its_outputs(tmp_path):
    """Before: evaluation labels past a model's classes gave top1: 0.0 and exit 0. The config knows
    the outputs of hf: models (their architecture config) and torchvision's classifiers (1000)."""
    for cls in ("0", "4", "7", "1000"):
        write_images(tmp_path / "val" / cls, 1)
    vit = {
        "source": "hf:someone/tiny-vit",
        "task": "classification",
        "input": {"shape": [1, 3, 32, 32]},
        "hf_config": {"model_type": "vit", "architectures": ["ViTForImageClassification"], "num_labels": 5},
    }
    tv = {"source": "torchvision:squeezenet1_1", "task": "classification", "input": {"shape": [1, 3, 64, 64]}}
    base = {"weights": "random", "datasets": {"val": {"folder": str(tmp_path / "val")}}, "evaluation": {"dataset": "val", "images": 4}}
    text = problems_of(write_config(tmp_path / "a.yaml", {**base, "models": {"vit": vit, "sq": tv}}))
    assert text == (
        "invalid config:\n"
        "  datasets.val.folder: class folder '1000' is label 1000, but models.sq outputs 1000 classes (0 to 999; torchvision's "
        "classifiers: ImageNet-1k): the model can never predict 1 of the 4 class folders, and top-1 would count their images as "
        "wrong instead of failing; name the class folders by the model's class indices, or list the model's classes in order "
        "under datasets.val.classes\n"
        "  datasets.val.folder: class folder '1000' is label 1000, but models.vit outputs 5 classes (0 to 4; models.vit.hf_config: "
        "num_labels): the model can never predict 2 of the 4 class folders, and top-1 would count their images as wrong instead "
        "of failing; name the class folders by the model's class indices, or list the model's classes in order under "
        "datasets.val.classes"
    )
    # Named folders: labels in sorted order, or in the order `classes` gives; a folder it lacks is refused too.
    for cls in ("cat", "dog", "emu", "fox", "gnu", "hen"):
        write_images(tmp_path / "named" / cls, 1)
    named = {"weights": "random", "evaluation": {"dataset": "val", "images": 6}, "models": {"vit": vit}}
    text = problems_of(write_config(tmp_path / "b.yaml", {**named, "datasets": {"val": {"folder": str(tmp_path / "named")}}}))
    assert "datasets.val.folder: class folder 'hen' is label 5, but models.vit outputs 5 classes (0 to 4;" in text
    listed = {"folder": str(tmp_path / "named"), "classes": ["cat", "dog", "emu", "fox", "gnu"]}
    text = problems_of(write_config(tmp_path / "c.yaml", {**named, "datasets": {"val": listed}}))
    assert text == "invalid config:\n  datasets.val.classes: class folder(s) hen not listed"
    listed["classes"] = ["hen", "cat", "dog", "emu", "fox", "gnu", "owl"]
    text = problems_of(write_config(tmp_path / "d.yaml", {**named, "datasets": {"val": listed}}))
    assert text.startswith("invalid config:\n  datasets.val.classes: class folder 'gnu' is label 5, but models.vit outputs 5")
    # Labels that fit, a segmenter, a model whose outputs only building it tells (timm): not refused here.
    assert load_config(
        write_config(tmp_path / "e.yaml", {**base, "evaluation": {"dataset": "val", "images": 4}, "models": {"m": classifier_entry()}})
    )
    listed["classes"] = ["cat", "dog", "emu", "fox", "gnu", "hen"]
    assert load_config(write_config(tmp_path / "f.yaml", {**named, "datasets": {"val": listed}, "models": {"sq": tv}}))


def test_labels_the_model_cannot_output_fail_the_reference_job_where_only_its_outputs_tell(tmp_path):
    """A model of 3 classes (timm's and checkpoints' counts are known once built), evaluated on
    class folders 0, 1 and 5: the reference job fails in one line, writing nothing."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from npuflow.core.records import Manifest
    from npuflow.data.datasets import DatasetError
    from npuflow.data.prepare import prepare_dataset
    from npuflow.evaluation.evaluate import label_problem, reference

    weights = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "three-classes",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    manifest = dict(model="m", source="timm:x", arch=None, task="classification", family="x", weights="random")
    manifest.update(weights_detail="", seed=0, hub_reachable=None, params=9, weights_sha256="", seconds=0.0)
    Manifest(**manifest, preprocessing={"mean": [0.5] * 3, "std": [0.5] * 3}).write(tmp_path / "manifest.json")
    for cls in ("0", "1", "5"):
        write_images(tmp_path / "val" / cls, 1)
    prepare_dataset("val", {"folder": str(tmp_path / "val")}, tmp_path / "ds" / "val")
    spec = {"name": "m", "task": "classification", "seed": 0, "input": {"shape": [1, 3, 16, 16]}}
    spec["evaluation"] = {"dataset": "val", "images": 3, "latency_repeats": 1}
    with pytest.raises(DatasetError) as e:
        reference(
            tmp_path / "m.onnx",
            manifest_json=tmp_path / "manifest.json",
            spec=spec,
            out_npz=tmp_path / "r.npz",
            out_json=tmp_path / "r.json",
            datasets_dir=tmp_path / "ds",
        )
    assert str(e.value) == (
        "dataset val: label 5 is past the model's last class (3 outputs, 0 to 2): the model can never predict it, so its "
        "accuracy would read low instead of failing; label the images by the model's class indices (datasets.val.classes "
        "lists folder names in the model's class order), or evaluate on a dataset of its classes"
    )
    assert not (tmp_path / "r.npz").exists() and not (tmp_path / "r.json").exists()
    # Segmentation masks alike (255 is "ignore", not a class).
    scores = np.zeros((1, 5, 2, 2), np.float32)
    assert label_problem(scores, None, np.array([[[0, 4], [255, 1]]]), "segmentation", "cs") is None
    assert label_problem(scores, None, np.array([[[0, 7], [255, 5]]]), "segmentation", "cs").startswith(
        "dataset cs: mask class 7 is past the model's last class (5 outputs, 0 to 4)"
    )


# ---------------------------------------------------------------------------------------------
# One-line errors from every command
# ---------------------------------------------------------------------------------------------

MISSING = "/no/such/path"


def bad_argv(name: str, cmd, tmp_path: Path) -> list[str]:
    """`npuflow <name>` with each required argument a mistake: a file that is not there, JSON
    that does not parse, a tracking URI with credentials; outputs into tmp_path."""
    import argparse

    from npuflow.cli.base import input_dir, input_file, json_object, onnx_file

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    argv = [name]
    for action in parser._actions:
        if not (action.required or not action.option_strings) or action.dest == "help":
            continue
        if action.type in (input_file, onnx_file, input_dir):
            value = MISSING
        elif action.type is json_object:
            value = "{oops"
        elif action.dest == "tracking_uri":
            value = "https://pipeline:s3cret-pw@mlflow.example.org"
        elif not action.option_strings:  # a positional that is no file: a name, or check-config's file
            value = MISSING if name == "check-config" else "x"
        else:
            value = str(tmp_path / action.dest)
        argv += [value] if not action.option_strings else [action.option_strings[0], value]
    return argv


def test_every_command_answers_a_user_mistake_in_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    from npuflow.cli.app import COMMANDS, main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no config.yaml here: commands that default to one say so
    for name, cmd in COMMANDS.items():
        argv = bad_argv(name, cmd, tmp_path)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's refusal of an argument
            rc = e.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"npuflow {name}: error: "), (argv, err)
        assert "Traceback" not in err and "s3cret-pw" not in err, (argv, err)
        assert MISSING in err or "not valid JSON" in err or "credentials" in err or "name a model" in err or "no such" in err, (argv, err)
    assert not any(tmp_path.iterdir()), "a refused command wrote something"


def test_files_of_the_wrong_kind_and_bad_json_are_named_in_one_line(tmp_path, capsys):
    from npuflow.cli import main

    (tmp_path / "report.json").write_text("{}")
    cases = [
        (["simplify", str(tmp_path / "report.json"), "--out", "o", "--report", "r"], f"{tmp_path}/report.json is not an ONNX model"),
        (["simplify", str(tmp_path), "--out", "o", "--report", "r"], f"{tmp_path} is a folder, not a file"),
        (["build", MISSING, "--target", "rdk-x5", "--out-dir", "o"], f"argument input: no such file {MISSING}"),
        (["fetch", "--spec", "[1, 2]", "--out-dir", "o"], "argument --spec: expected a JSON object"),
        (["export", "--spec", "{}", "--fetch-dir", MISSING, "--out", "o", "--report", "r"], f"no such folder {MISSING}"),
        (["check-config", MISSING], f"{MISSING}: no such file"),
        (["check-config", str(tmp_path)], f"{tmp_path}: a folder, not a config file"),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ]
    for argv, expected in cases:
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and expected in err, (argv, err)


def spec_argv(name: str, cmd, tmp_path: Path, spec: dict) -> list[str]:
    """`npuflow <name> --spec SPEC` with every other required argument a file or folder that is
    there (an empty ONNX-looking file, an empty folder), outputs into tmp_path/out."""
    import argparse

    from npuflow.cli.base import input_dir, input_file, json_object, onnx_file

    (tmp_path / "in.onnx").write_bytes(b"\x08")
    (tmp_path / "in").mkdir(exist_ok=True)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    argv = [name, "--spec", json.dumps(spec)]
    for action in parser._actions:
        if not (action.required or not action.option_strings) or action.dest in ("help", "spec"):
            continue
        if action.type in (input_file, onnx_file):
            value = str(tmp_path / "in.onnx")
        elif action.type is input_dir:
            value = str(tmp_path / "in")
        elif action.type is json_object:
            value = "{}"
        elif action.dest == "tracking_uri":
            value = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
        else:
            value = str(tmp_path / "out" / action.dest)
        argv += [value] if not action.option_strings else [action.option_strings[0], value]
    return argv


def test_a_hand_written_spec_missing_a_field_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    """Every command that takes --spec checks it against the fields its stage reads, as model_spec
    resolves them: a missing field (nested ones by their path) is named before anything runs."""
    from npuflow.cli import main
    from npuflow.cli.app import COMMANDS  # importing the app registers the commands
    from npuflow.cli.base import COMMAND_STAGES
    from npuflow.pipeline.spec import model_spec as resolve
    from npuflow.pipeline.spec import stage_spec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    full = resolve(load_config(REPO / "tests" / "config.tiny.yaml"), "efficientvit_m0")
    # the field to drop: a nested one where the stage reads one
    drops = {"calibrate": "calibration.images", "mixed": "calibration.method", "evaluate": "evaluation.images"}
    checked = []
    for name, cmd in COMMANDS.items():
        if "--spec" not in {o for a in spec_parser(cmd)._actions for o in a.option_strings}:
            continue
        stage = COMMAND_STAGES.get(name, name)
        spec = copy.deepcopy(stage_spec(full, stage))
        field = drops.get(name, "input.shape" if "input" in spec else "name")
        head, _, leaf = field.rpartition(".")
        del (spec[head] if head else spec)[leaf]
        argv = spec_argv(name, cmd, tmp_path, spec)
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err == f"npuflow {name}: error: --spec ({stage} stage): missing field {field}\n", (argv, err)
        assert not (tmp_path / "out").exists(), name
        checked.append(name)
    assert set(checked) >= {"fetch", "export", "surgery", "calibrate", "reference", "evaluate", "mixed", "track"}
    # a field of the wrong type is named with what was expected; the resolved spec of every stage passes
    assert main(["fetch", "--spec", json.dumps({**stage_spec(full, "fetch"), "seed": "one"}), "--out-dir", "o"]) == 2
    assert "--spec (fetch stage): seed: 'one' is not of type 'integer'" in capsys.readouterr().err


def test_every_resolved_spec_passes_the_spec_check_of_every_stage():
    """No false alarm: what the workflow passes (model_spec, cut to each stage's fields) is accepted."""
    from npuflow.pipeline.spec import STAGE_FIELDS, model_spec, spec_problems, stage_spec

    for path in (REPO / "config.yaml", REPO / "tests" / "config.tiny.yaml"):
        config = load_config(path)
        for name in config["models"]:
            spec = model_spec(config, name)
            for stage in STAGE_FIELDS:
                assert spec_problems(stage_spec(spec, stage), stage) == [], (path.name, name, stage)
                assert spec_problems(spec, stage) == [], (path.name, name, stage)


def spec_parser(cmd):
    import argparse

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return parser


BROKEN_YAML = 'weights: random\nmodels:\n  m0:\n    source: "timm:efficientvit_m0"\n   task: classification\n'


def test_a_yaml_syntax_error_names_its_line_in_check_config_and_snakemake(tmp_path, capsys):
    from npuflow.cli import main

    (tmp_path / "config.yaml").write_text(BROKEN_YAML)
    assert main(["check-config", str(tmp_path / "config.yaml")]) == 2
    expected = "not valid YAML: line 5, column 4: expected <block end>, but found '<block mapping start>' (while parsing a block mapping from line 3)"
    assert expected in capsys.readouterr().err
    # Snakemake on a folder's own config.yaml: npuflow's loader reads it before Snakemake's, which
    # would say only "not valid JSON or YAML". (A --configfile is read by Snakemake first.)
    command = [a for a in snakemake_command(tmp_path, "-n") if a != "--configfile" and a != str(REPO / "tests" / "config.tiny.yaml")]
    proc = subprocess.run(command, capture_output=True, text=True, env=snakemake_env(), cwd=tmp_path)
    assert proc.returncode != 0 and "config.yaml: " + expected in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# An input size the model cannot take
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a model through fetch and export
def test_an_input_size_the_model_cannot_take_fails_in_one_line_naming_both_sizes(tmp_path, capsys):
    """deit_tiny_patch16_224 at 256×256: torch's 39-line traceback before; now the export job's one line."""
    from npuflow.cli import main

    config = write_config(
        tmp_path / "c.yaml",
        {
            "weights": "random",
            "models": {"deit": {"source": "timm:deit_tiny_patch16_224", "task": "classification", "input": {"shape": [1, 3, 256, 256]}}},
        },
    )
    assert main(["fetch", "--config", str(config), "--model", "deit", "--out-dir", str(tmp_path / "fetch")]) == 0
    capsys.readouterr()
    argv = ["export", "--config", str(config), "--model", "deit", "--fetch-dir", str(tmp_path / "fetch")]
    assert main([*argv, "--out", str(tmp_path / "model.onnx"), "--report", str(tmp_path / "export.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "npuflow export: error: models.deit.input.shape: the model does not run on 256×256 input "
        "(AssertionError: Input height (256) doesn't match model (224).); it takes 224×224: set input.shape: [1, 3, 224, 224]"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "fetch"]  # no ONNX, no report, no temporary


# ---------------------------------------------------------------------------------------------
# The tracking server, asked before any job runs
# ---------------------------------------------------------------------------------------------


class _FakeServer(http.server.BaseHTTPRequestHandler):
    """Answers every request with `answer` = (status, body), after `delay` s; records the
    Authorization headers it got."""

    answer: tuple[int, str] = (200, '{"experiment": {"experiment_id": "7"}}')
    delay = 0.0
    seen: ClassVar[list] = []

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization"))
        time.sleep(self.delay)
        status, body = self.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _FakeServer.seen, _FakeServer.delay = [], 0.0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight_error(uri: str, **kwargs) -> str:
    from npuflow.tracking.server import TrackingServerError, preflight

    with pytest.raises(TrackingServerError) as e:
        preflight(uri, "npuflow-tiny", **kwargs)
    return str(e.value)


def test_preflight_tells_each_refusal_apart_in_one_line(fake_server, monkeypatch, tmp_path):
    from npuflow.tracking.server import preflight

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    uri = fake_server
    start = time.monotonic()
    port = closed_port()
    message = preflight_error(f"http://127.0.0.1:{port}")
    assert message.startswith(f"no MLflow tracking server answers at http://127.0.0.1:{port} (connection refused")
    assert time.monotonic() - start < 3
    _FakeServer.answer = (401, "You are not authenticated.")
    assert preflight_error(uri) == (
        f"MLflow tracking server {uri} asks for a login (401 Unauthorized) and none is set: export MLFLOW_TRACKING_USERNAME "
        'and MLFLOW_TRACKING_PASSWORD (README, "Scaling out")'
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    assert preflight_error(uri).startswith("MLFLOW_TRACKING_USERNAME is set but MLFLOW_TRACKING_PASSWORD is not")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pw")
    message = preflight_error(uri)
    assert message.startswith(f"MLflow tracking server {uri} refused the login of user 'pipeline' (MLFLOW_TRACKING_USERNAME) (401")
    assert "s3cret-pw" not in message and _FakeServer.seen[-1] == "Basic " + base64.b64encode(b"pipeline:s3cret-pw").decode()
    _FakeServer.answer = (403, "Permission denied")
    assert (
        "user 'pipeline' (MLFLOW_TRACKING_USERNAME) may not read the experiment 'npuflow-tiny' (403: Permission denied)"
        in preflight_error(uri)
    )
    _FakeServer.answer = (403, "Invalid Host header - possible DNS rebinding attack detected")
    assert f'start it with --allowed-hosts "{uri[7:]}"' in preflight_error(uri)
    _FakeServer.answer = (404, "<html><title>404 Not Found</title></html>")
    assert preflight_error(uri).endswith("is it an MLflow tracking server?")
    _FakeServer.answer = (404, '{"error_code": "RESOURCE_DOES_NOT_EXIST"}')
    assert "creates experiment 'npuflow-tiny'" in preflight(uri, "npuflow-tiny")
    _FakeServer.answer = (200, '{"experiment": {"experiment_id": "7"}}')
    assert preflight(uri, "npuflow-tiny") == f"experiment 'npuflow-tiny' (id 7) at {uri}"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    preflight(uri, "npuflow-tiny")
    assert _FakeServer.seen[-1] == "Bearer t0ken"
    _FakeServer.delay = 2.0
    start = time.monotonic()
    assert f"MLflow tracking server {uri}: no answer within 0.5 s although it accepts connections" in preflight_error(uri, timeout=0.5)
    assert time.monotonic() - start < 2
    assert preflight(f"sqlite:///{tmp_path}/results/mlflow.db", "x") is None  # no server to ask: a store it can write
    assert not (tmp_path / "results").exists()  # checked, not made


def test_a_slow_server_gets_a_bounded_wait_said_as_it_waits_then_one_line(fake_server, monkeypatch):
    """Before: a loaded server (basic auth hashing the password, a busy machine) that took over
    5 s to answer was refused by the pre-flight although it was up."""
    from npuflow.tracking.server import preflight
    from npuflow.util.errors import ConfigError

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    uri, said = fake_server, []
    _FakeServer.answer, _FakeServer.delay = (200, '{"experiment": {"experiment_id": "7"}}'), 1.2
    start = time.monotonic()
    assert preflight(uri, "npuflow-tiny", timeout=10, interval=0.5, say=said.append) == f"experiment 'npuflow-tiny' (id 7) at {uri}"
    assert 1.2 <= time.monotonic() - start < 5  # the answer, as soon as it came
    assert said and all(re.fullmatch(rf"waiting for {uri} \(no answer yet, [0-9] s of 10 s\)", line) for line in said), said
    # Still no answer when the wait is over: one line, once it is over (NPUFLOW_TRACKING_WAIT_S sets it).
    _FakeServer.delay, said[:] = 5.0, []
    monkeypatch.setenv("NPUFLOW_TRACKING_WAIT_S", "1")
    start = time.monotonic()
    with pytest.raises(Exception) as e:
        preflight(uri, "npuflow-tiny", interval=0.3, say=said.append)
    assert 1 <= time.monotonic() - start < 3
    assert str(e.value) == (
        f"MLflow tracking server {uri}: no answer within 1 s although it accepts connections (overloaded, stuck, or a proxy "
        "in between that does not pass the request on); check it, or wait longer with NPUFLOW_TRACKING_WAIT_S=<seconds>"
    )
    assert len(said) >= 2 and said[0].startswith(f"waiting for {uri} (no answer yet, 0 s of 1 s)")
    # A refused connection does not wait.
    start = time.monotonic()
    assert "(connection refused: nothing listens there)" in preflight_error(f"http://127.0.0.1:{closed_port()}", say=said.append)
    assert time.monotonic() - start < 1
    monkeypatch.setenv("NPUFLOW_TRACKING_WAIT_S", "soon")
    with pytest.raises(ConfigError, match=r"^NPUFLOW_TRACKING_WAIT_S: expected a number of seconds above 0, got 'soon'$"):
        preflight(uri, "npuflow-tiny")


def test_server_errors_are_reported_as_the_answers_they_are_with_the_servers_message(fake_server, monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    uri = fake_server
    failure = "(psycopg2.OperationalError) connection to server failed: postgresql://mlflow:hunter2@db:5432/mlflow"
    _FakeServer.answer = (500, json.dumps({"error_code": "INTERNAL_ERROR", "message": failure}))
    message = preflight_error(uri)
    assert message == (
        f"MLflow tracking server {uri} answered HTTP 500 Internal Server Error: INTERNAL_ERROR: (psycopg2.OperationalError) "
        "connection to server failed: postgresql://***@db:5432/mlflow (an error of the server or a proxy before it, not of the "
        "request: its log says more)"
    )
    _FakeServer.answer = (502, "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>nginx</body></html>")
    assert preflight_error(uri).startswith(f"MLflow tracking server {uri} answered HTTP 502 Bad Gateway: 502 Bad Gateway nginx (an error")
    _FakeServer.answer = (429, "Too many requests, slow down")
    assert preflight_error(uri) == f"MLflow tracking server {uri} answered HTTP 429 Too Many Requests: Too many requests, slow down"


DISK_ERROR = json.dumps({"error_code": "INTERNAL_ERROR", "message": "(sqlite3.OperationalError) disk I/O error"})


class _BreakingServer(http.server.BaseHTTPRequestHandler):
    """An MLflow server that answers the pre-flight's question, then fails every request with
    `status` and an MLflow error body (a backend store that broke: a full disk, a database gone)."""

    status = 500
    body = DISK_ERROR
    asked: ClassVar[list] = []

    def _answer(self):
        type(self).asked.append(f"{self.command} {self.path.split('?')[0]}")
        if len(type(self).asked) == 1:
            status, body = 200, json.dumps({"experiment": {"experiment_id": "7", "name": "npuflow-tiny", "tags": []}})
        else:
            status, body = type(self).status, type(self).body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        # Retried by MLflow (its retries drop the answer's body): the server is asked again.
        (500, None, "answered HTTP 500 Internal Server Error while {doing} (asked again, it says: INTERNAL_ERROR: "),
        (403, '{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}', "answered HTTP 403 Forbidden while {doing}: "),
    ],
)
def test_a_server_that_passed_the_preflight_then_answers_an_error_is_reported_as_that_answer(status, body, said, tmp_path, monkeypatch):
    """Before: reported as "stopped answering (connection lost)"."""
    from npuflow.tracking.server import preflight
    from npuflow.tracking.store import TrackingFailed, init_store

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's retries would take 14 s; the answer is the same
    _BreakingServer.asked, _BreakingServer.status = [], status
    _BreakingServer.body = body or DISK_ERROR
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BreakingServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert preflight(uri, "npuflow-tiny") == f"experiment 'npuflow-tiny' (id 7) at {uri}"
        with pytest.raises(TrackingFailed) as e:
            init_store(uri=uri, experiment="npuflow-tiny", out_json=tmp_path / "store.json")
    finally:
        httpd.shutdown()
        httpd.server_close()
    doing = "the experiment 'npuflow-tiny' was looked up or created"
    message = str(e.value)
    assert message.startswith(f"the MLflow tracking server {uri} {said.format(doing=doing)}"), message
    assert message.endswith("every stage output is kept, and the next snakemake run logs what is missing")
    assert "stopped answering" not in message and "connection lost" not in message
    assert not (tmp_path / "store.json").exists()


def test_a_server_that_is_not_there_stops_snakemake_before_any_job_in_seconds(tmp_path):
    """Before: the first MLflow job retried for 250 s and died with a `requests` traceback."""
    port = closed_port()
    start = time.monotonic()
    env = {**snakemake_env(), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    proc = subprocess.run(snakemake_command(tmp_path), capture_output=True, text=True, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"no MLflow tracking server answers at http://127.0.0.1:{port} (connection refused" in out
    assert "rule fetch:" not in out and "rule init_mlflow:" not in out  # no job started
    assert time.monotonic() - start < 30  # Snakemake's start and the DAG; the check itself is at most 5 s
    assert not (tmp_path / "results").exists()


def test_a_tracking_store_that_cannot_be_written_fails_in_seconds_naming_the_path(tmp_path):
    """Before: MLflow retried creating its database engine for about two minutes, then printed
    one line. A path under a regular file cannot be written, by root either (chmod would not stop root)."""
    from npuflow.tracking.server import TrackingServerError, check_store, preflight
    from npuflow.tracking.store import init_store

    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "a-folder.db").mkdir()
    advice = "; set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a place this user can write"
    cases = {
        f"sqlite:///{tmp_path}/blocker/results/mlflow.db": f"cannot write {tmp_path}/blocker/results/mlflow.db: {tmp_path}/blocker is a file, not a folder",
        f"file://{tmp_path}/blocker/mlruns": f"cannot write {tmp_path}/blocker/mlruns: {tmp_path}/blocker is a file, not a folder",
        f"{tmp_path}/blocker": f"{tmp_path}/blocker is a file, not a folder",
        f"sqlite:///{tmp_path}/a-folder.db": f"{tmp_path}/a-folder.db is a folder, not a database file",
    }
    start = time.monotonic()
    for uri, problem in cases.items():
        for check in (check_store, lambda uri: preflight(uri, "npuflow-tiny")):
            with pytest.raises(TrackingServerError) as e:
                check(uri)
            assert str(e.value) == f"MLflow tracking store {uri}: {problem}{advice}"
    with pytest.raises(TrackingServerError, match=rf"^MLflow tracking store sqlite:///{tmp_path}/blocker/mlflow.db: cannot write "):
        init_store(uri=f"sqlite:///{tmp_path}/blocker/mlflow.db", experiment="npuflow-tiny", out_json=tmp_path / "store.json")
    # A database server that is not there: refused at once, its password not shown.
    port = closed_port()
    with pytest.raises(TrackingServerError) as e:
        check_store(f"postgresql://mlflow:hunter2@127.0.0.1:{port}/mlflow")
    assert str(e.value) == (
        f"no database server answers at 127.0.0.1:{port} for the tracking store postgresql://***@127.0.0.1:{port}/mlflow "
        "(connection refused: nothing listens there); start it, or set MLFLOW_TRACKING_URI to the store you use"
    )
    assert time.monotonic() - start < 5
    check_store(f"sqlite:///{tmp_path}/new/results/mlflow.db")  # a path it can make: fine, and nothing made yet
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.db", "blocker"]  # no probe file left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_as_tracking_store_is_refused_naming_it(tmp_path):
    from npuflow.tracking.server import TrackingServerError, check_store

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(
            TrackingServerError, match=rf"cannot write {tmp_path}/ro/mlflow.db: cannot make files in {tmp_path}/ro \(Permission denied\)"
        ):
            check_store(f"sqlite:///{tmp_path}/ro/mlflow.db")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_an_unwritable_tracking_store_stops_snakemake_before_any_job_naming_the_path(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    uri = f"sqlite:///{tmp_path}/blocker/mlflow.db"
    start = time.monotonic()
    env = {**snakemake_env(), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(snakemake_command(tmp_path), capture_output=True, text=True, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"MLflow tracking store {uri}: cannot write {tmp_path}/blocker/mlflow.db: {tmp_path}/blocker is a file, not a folder" in out
    assert "rule fetch:" not in out and "rule init_mlflow:" not in out and "Traceback" not in out  # no job started
    assert time.monotonic() - start < 30  # Snakemake's start and the DAG; the check itself takes milliseconds
    assert not (tmp_path / "results").exists()


def test_connection_lost_is_told_apart_from_other_mlflow_failures():
    import requests
    from mlflow.exceptions import MlflowException

    from npuflow.tracking.answers import connection_lost
    from npuflow.tracking.store import TrackingFailed

    def raised(cause):
        try:
            try:
                raise cause
            except Exception as e:
                raise MlflowException(
                    f"API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception {e}"
                ) from None
        except MlflowException as e:
            return e

    refused = raised(requests.exceptions.ConnectionError("Max retries exceeded (Caused by NewConnectionError(... Connection refused))"))
    assert connection_lost(refused) == "connection refused"
    assert connection_lost(MlflowException("RESOURCE_ALREADY_EXISTS")) is None
    message = str(TrackingFailed("http://127.0.0.1:5000", "m@rdk-x5 was logged", refused, "the runs of m@j5 are logged; "))
    assert message == (
        "the MLflow tracking server http://127.0.0.1:5000 stopped answering (connection refused) while m@rdk-x5 was logged; "
        "the runs of m@j5 are logged; every stage output is kept, and the next snakemake run logs what is missing"
    )


# ---------------------------------------------------------------------------------------------
# One run per folder
# ---------------------------------------------------------------------------------------------


def test_the_run_lock_is_held_until_its_process_ends_however_it_ends(tmp_path):
    from npuflow.pipeline.runlock import RunningElsewhere, hold_run_lock, release_run_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from npuflow.pipeline.runlock import hold_run_lock; hold_run_lock(sys.argv[1]); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunningElsewhere, match=rf"another Snakemake run \(pid {holder.pid} on .*\) is working in {re.escape(str(tmp_path))}"
        ):
            hold_run_lock(tmp_path)
    finally:
        holder.kill()  # kill -9: no chance to release anything
        holder.wait()
    assert hold_run_lock(tmp_path)  # the kernel released it: nothing to unlock
    release_run_lock()


# ---------------------------------------------------------------------------------------------
# End to end: a failure fixed, a run interrupted, two runs in one folder; each finished by running again
# ---------------------------------------------------------------------------------------------


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@background.fixture(scope="module")
def failed_fixed_interrupted(pipeline, tmp_path_factory):
    """A copy of the tiny pipeline's working folder, with its complete report and MLflow runs, run
    again on one target, evaluated on a folder of images one of which is broken:
    1. the run fails at `reference` (the other jobs go on); 2. the image is fixed and the run
    started again, stopped (SIGSTOP) while a job runs so that a second run is tried beside it
    (refused by Snakemake's lock; `--unlock`; refused by npuflow's), then Ctrl-C (SIGINT to its
    process group); 3. the same command again."""
    import shutil
    import sqlite3

    workdir = copy_pipeline(pipeline, tmp_path_factory.mktemp("faults") / "pipeline")

    def mlflow_run_ids():
        con = sqlite3.connect(workdir / "results" / "mlflow.db")
        try:
            return {row[0] for row in con.execute("SELECT run_uuid FROM runs")}
        finally:
            con.close()

    steps = {"earlier_report": (workdir / "results" / "report.html").read_bytes(), "earlier_runs": mlflow_run_ids()}
    images = write_images(workdir / "eval-images", 4)
    images[-1].write_text("not an image")
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config.update(targets=["ax650n-npu3"], datasets={"evalset": {"folder": str(workdir / "eval-images")}})
    config["evaluation"]["dataset"] = "evalset"
    del config["models"]["efficientvit_m0"]["precision"]
    configfile = write_config(workdir / "c.yaml", config)
    steps["failed"] = snakemake(workdir, configfile=configfile)
    steps["after_failure"] = {p.name for p in (workdir / "results").iterdir()}
    steps["report_after_failure"] = (workdir / "results" / "report.html").read_bytes()
    steps["runs_after_failure"] = mlflow_run_ids()

    write_images(workdir / "fixed", 4)
    shutil.copy2(workdir / "fixed" / "3.png", images[-1])
    with open(workdir / "interrupted.log", "w") as log:
        first = subprocess.Popen(
            snakemake_command(workdir, configfile=configfile),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=snakemake_env(),
            cwd=workdir,
            start_new_session=True,
        )
        try:
            reference = workdir / "results" / "efficientvit_m0" / "eval" / "reference.json"
            _wait_for(lambda: reference.exists() or first.poll() is not None, 300, "the reference job")
            os.killpg(first.pid, signal.SIGSTOP)  # mid-run: evaluate is starting or running
            steps["second_run"] = snakemake(workdir, configfile=configfile)
            steps["unlock"] = snakemake(workdir, "--unlock", configfile=configfile)
            steps["after_unlock"] = snakemake(workdir, configfile=configfile)
            os.killpg(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
            first.wait(timeout=300)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    steps["interrupted"] = (first.returncode, (workdir / "interrupted.log").read_text())
    steps["after_interrupt"] = {p.name for p in (workdir / "results").iterdir()}
    steps["report_after_interrupt"] = (workdir / "results" / "report.html").read_bytes()
    steps["finished"] = snakemake(workdir, configfile=configfile)
    return workdir, steps


def test_a_failed_run_prints_the_reason_and_writes_only_the_partial_report(failed_fixed_interrupted):
    workdir, steps = failed_fixed_interrupted
    proc = steps["failed"]
    out = proc.stdout + proc.stderr
    reason = f"npuflow reference: error: dataset evalset: cannot read {workdir}/eval-images/3.png: cannot identify image file"
    assert proc.returncode != 0
    assert f"Logfile results/logs/reference/efficientvit_m0.log:\n{'=' * 80}\n{reason}" in out  # the log, in the terminal
    assert "npuflow: the run did not finish; what exists is in results/report.partial.html" in out
    assert f"  efficientvit_m0 (ax650n-npu3) failed at reference: {reason}" in out
    # The report of what exists goes beside the earlier complete report, which stays as it was
    # (before: the failed run removed it), as do the MLflow runs.
    assert "(results/report.html, of an earlier complete run, is kept until a run finishes)" in out
    assert {"report.partial.html", "summary.partial.csv", "report.html", "summary.csv"} <= steps["after_failure"]
    assert steps["report_after_failure"] == steps["earlier_report"]
    assert steps["runs_after_failure"] == steps["earlier_runs"] != set()


def test_a_second_run_in_the_folder_is_refused_even_after_unlock(failed_fixed_interrupted):
    _, steps = failed_fixed_interrupted
    second = steps["second_run"]
    assert second.returncode != 0 and "LockException" in second.stdout + second.stderr  # Snakemake's own lock
    assert steps["unlock"].returncode == 0
    after = steps["after_unlock"]
    out = after.stdout + after.stderr
    assert after.returncode != 0 and "another Snakemake run (pid " in out and "two runs in one folder would write the same files" in out
    assert "rule evaluate:" not in out and "rule build:" not in out  # refused before any job


def test_ctrl_c_then_the_same_command_finishes_with_the_complete_report(failed_fixed_interrupted):
    workdir, steps = failed_fixed_interrupted
    rc, log = steps["interrupted"]
    assert rc != 0, log[-3000:]
    assert steps["report_after_interrupt"] == steps["earlier_report"]  # still the earlier complete one
    finished = steps["finished"]
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = workdir / "results"
    import csv

    with open(results / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["target"], r["status"]) for r in rows] == [("efficientvit_m0", "ax650n-npu3", "ok")]  # replaced
    assert "INCOMPLETE RUN" not in (results / "report.html").read_text()
    assert not (results / "report.partial.html").exists() and not (results / "summary.partial.csv").exists()
    assert not list(results.rglob("*.part")) and not list((workdir / ".snakemake" / "incomplete").iterdir())
    again = snakemake(workdir, "-n", configfile=workdir / "c.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    json.loads((results / "efficientvit_m0" / "track.json").read_text())
