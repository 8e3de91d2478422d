import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, classifier_entry, segformer_entry, snakemake
from npuflow.pipeline.config import ConfigError, load_config, model_spec, validate_config
from npuflow.targets import load_targets
from npuflow.targets.schema import profile_problems, profile_schema


def base(**models):
    return {"weights": "random", "models": models or {"m": classifier_entry()}}


def error_of(config) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(copy.deepcopy(config))
    return str(e.value)


def test_default_config_has_every_model_and_target():
    config = load_config(REPO / "config.yaml")
    assert set(config["models"]) == {f"efficientvit_m{i}" for i in range(6)} | {
        "swin_tiny",
        "mobilenetv3_large_100",
        "segformer_b0_cityscapes",
        "yolo11n",
    }
    assert config["targets"] == ["ax650n-npu1", "ax650n-npu3", "rdk-x5", "j5"]
    seg = model_spec(config, "segformer_b0_cityscapes")
    assert seg["opset"] == 11 and seg["input"]["shape"] == [1, 3, 640, 1280] and seg["surgery"] == ["append_argmax"]
    assert model_spec(config, "swin_tiny")["opset"] == 17  # schema default
    # the detector as the vendor zoos deploy it: 640×640, the NPU graph cut at the per-scale heads
    yolo = model_spec(config, "yolo11n")
    assert (yolo["source"], yolo["task"], yolo["input"]["shape"], yolo["head"]) == (
        "ultralytics:yolo11n",
        "detection",
        [1, 3, 640, 640],
        "split",
    )
    assert yolo["targets"] == config["targets"]
    calib = model_spec(config, "efficientvit_m5")["calibration"]
    assert (calib["method"], calib["images"], calib["dataset"], calib["per_channel"]) == ("minmax", 32, "samples", True)


def test_tiny_config_is_valid():
    config = load_config(REPO / "tests" / "config.tiny.yaml")
    assert list(config["models"]) == ["efficientvit_m0"] and len(config["targets"]) == 2


def test_model_override_of_calibration_merges_with_global():
    config = validate_config(base(m=classifier_entry(calibration={"images": 7})))
    calib = model_spec(config, "m")["calibration"]
    assert (calib["method"], calib["images"], calib["dataset"]) == ("minmax", 7, "samples")


@pytest.mark.parametrize(
    "mutate, where, expected",
    [
        (lambda c: c["models"]["m"].update(task="regression"), "models.m.task", "is not one of"),
        (lambda c: c["models"]["m"].update(task="detection"), "models.m.task", "timm: sources serve classification, not detection"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 224]), "models.m.input.shape", "too short"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 0, 224]), "models.m.input.shape.2", "less than the minimum"),
        (lambda c: c["models"]["m"]["input"].update(shape=[2, 3, 224, 224]), "models.m.input.shape", "batch must be 1"),
        (
            lambda c: c["models"]["m"].update(source="torchhub:foo"),
            "models.m.source",
            "unknown model source 'torchhub'; close matches: torchvision",
        ),
        (lambda c: c["models"]["m"].update(source="timm"), "models.m.source", "does not match"),
        (
            lambda c: c["models"]["m"].update(hf_config={"model_type": "x"}),
            "models.m.hf_config",
            "not read by timm: sources (it is for hf:)",
        ),
        (lambda c: c["models"]["m"].update(source="ultralytics:yolo11n"), "models.m.task", "ultralytics:yolo11n is a detection model"),
        (
            lambda c: c["models"]["m"].update(source="ultralytics:yolo11n-cls", head="full"),
            "models.m.head",
            "only detection models have a head to split",
        ),
        (
            lambda c: c["models"]["m"].update(source="ultralytics:yolo11n", task="detection", head="cut"),
            "models.m.head",
            "is not one of ['split', 'full']",
        ),
        (
            lambda c: c["models"]["m"].update(
                source="ultralytics:yolo11n", task="detection", mixed_precision={"goal": {"metric": "cosine", "value": 0.9}}
            ),
            "models.m.mixed_precision",
            "not available for task: detection",
        ),
        (lambda c: c["models"]["m"].update(surgery=["fold_head_nb"]), "models.m.surgery.0", "close matches: fold_head_bn"),
        (lambda c: c["models"]["m"].update(opset=7), "models.m.opset", "less than the minimum"),
        (lambda c: c["models"]["m"].update(surgery=["append_argmax"]), "models.m.surgery", "task: segmentation"),
        (lambda c: c["models"]["m"].update(colour="red"), "models.m", "Additional properties"),
        (lambda c: c.update(targets=["ax650n-npu2"]), "targets.0", "close matches: ax650n-npu3, ax650n-npu1"),
        (lambda c: c.update(weights="maybe"), "weights", "is not one of"),
        (lambda c: c["models"].update({"bad/name": classifier_entry()}), "models", "the entry 'bad/name' is not a usable name"),
        (lambda c: c["models"].update({"..": classifier_entry()}), "models", "the entry '..' is not a usable name"),
        (lambda c: c["models"].update({"nul.v2": classifier_entry()}), "models.nul.v2", "nul is a device name on Windows"),
        (lambda c: c["models"].update({"COM1": classifier_entry()}), "models.COM1", "COM1 is a device name on Windows"),
        (
            lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 224, 100000]),
            "models.m.input.shape.3",
            "greater than the maximum of 8192",
        ),
        (lambda c: c["models"]["m"].update(source="url:https://example.org/w.pth"), "models.m.arch", "needs `arch`"),
        (
            lambda c: c["models"]["m"].update(source="url:http://example.org/w.pth", arch="efficientvit_m0"),
            "models.m.source",
            "plain http is refused",
        ),
        (lambda c: c["models"]["m"].update(calibration={"method": "kl"}), "models.m.calibration.method", "unknown calibration method"),
        # Hostile or mistaken entries (issue #6): each refused before any job, naming the field.
        (lambda c: c["models"]["m"].update(targets=["rdk-x6"]), "models.m.targets.0", "unknown target 'rdk-x6'; close matches: rdk-x5"),
        (lambda c: c.update(calibration={"method": "kl"}), "calibration.method", "unknown calibration method 'kl'"),
        (lambda c: c.update(calibration={"dataset": "imagenet"}), "calibration.dataset", "unknown dataset 'imagenet'"),
        (lambda c: c.update(evaluation={"dataset": "imagenet"}), "evaluation.dataset", "unknown dataset 'imagenet'"),
        (lambda c: c["models"]["m"].update(surgery=["rm -rf /"]), "models.m.surgery.0", "unknown surgery pass 'rm -rf /'"),
        (lambda c: c["models"].update({"my model": classifier_entry()}), "models", "the entry 'my model' is not a usable name"),
        (lambda c: c["models"].update({"../../etc": classifier_entry()}), "models", "the entry '../../etc' is not a usable name"),
        (lambda c: c["models"].update({"a\\b": classifier_entry()}), "models", "is not a usable name"),
        (lambda c: c["models"].update({"mlflow.db": classifier_entry()}), "models.mlflow.db", "taken by results/mlflow.db"),
        (lambda c: c["models"].update({"logs": classifier_entry()}), "models.logs", "taken by results/logs"),
        # The report's Pareto plots share results/plots with nothing (from the stage table).
        (lambda c: c["models"].update({"plots": classifier_entry()}), "models.plots", "taken by results/plots"),
        (lambda c: c["models"].update({"M": classifier_entry()}), "models.M", "differs from models.m only in case"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 224, 224, 1]), "models.m.input.shape", "too long"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, -224, 224]), "models.m.input.shape.2", "less than the minimum of 1"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 1, 224, 224]), "models.m.input.shape", "expected 3 (RGB) channels"),
        (lambda c: c["models"]["m"]["input"].update(std=[0.2, 0.0, 0.2]), "models.m.input.std.1", "less than or equal to the minimum of 0"),
        (lambda c: c["models"]["m"]["input"].update(std=[0.2, float("nan"), 0.2]), "models.m.input.std", "expected finite numbers"),
        (lambda c: c["models"]["m"]["input"].update(mean=[float("inf"), 0.5, 0.5]), "models.m.input.mean", "expected finite numbers"),
        (lambda c: c.update(calibration={"images": 0}), "calibration.images", "less than the minimum of 1"),
        (lambda c: c.update(evaluation={"images": -3}), "evaluation.images", "less than the minimum of 1"),
        (lambda c: c.update(evaluation={"latency_repeats": 0}), "evaluation.latency_repeats", "less than the minimum of 1"),
        (lambda c: c.update(seed=-1), "seed", "less than the minimum of 0"),
        (lambda c: c["models"]["m"].update(opset=21), "models.m.opset", "greater than the maximum of 20"),
        (
            lambda c: c["models"]["m"].update(source="url:ftp://example.org/w.pth", arch="efficientvit_m0"),
            "models.m.source",
            "expected url:https://",
        ),
        (lambda c: c["models"]["m"].update(sha256="abc"), "models.m.sha256", "does not match"),
    ],
)
def test_bad_config_names_entry_and_field(mutate, where, expected):
    config = base()
    mutate(config)
    message = error_of(config)
    assert f"{where}:" in message or f"{where}." in message, message
    assert expected in message, message


def test_user_target_profile_inherits_a_builtin():
    config = base()
    config["target_profiles"] = {"ax650n-fast": {"base": "ax650n-npu3", "units": {"tensor": {"peak_ops_per_s": {"int8": 36.0e12}}}}}
    config["targets"] = ["ax650n-fast"]
    validate_config(config)
    config["target_profiles"]["ax650n-fast"]["memory"] = {"ddr_bytes_per_s": -1}
    assert "target_profiles.ax650n-fast.memory.ddr_bytes_per_s" in error_of(config)


@pytest.mark.parametrize("target", sorted(load_targets().names()))
def test_every_builtin_profile_meets_the_profile_schema(target):
    """Resolved (its base chain merged, its fit applied) as the simulator reads it."""
    assert profile_problems(load_targets().get(target), target) == []


def test_the_profile_schema_refuses_unknown_keys_at_every_level():
    """Every mapping of the schema lists its keys, so none falls back silently to the base's value."""

    def mappings(node, path="(top)"):
        if isinstance(node, dict):
            if "properties" in node:
                yield path, node
            for k, v in node.items():
                yield from mappings(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from mappings(v, f"{path}.{i}")

    found = list(mappings(profile_schema()))
    assert len(found) > 15 and [p for p, m in found if m.get("additionalProperties") is not False] == []


MY_NPU = "target_profiles.my-npu"


@pytest.mark.parametrize(
    "profile, expected",
    [
        (  # the case: accepted before, and its builds used the base's numbers
            {"units": {"tensor": {"peak_op_per_s": {"int8": 8.0e12}}}},
            f"{MY_NPU}.units.tensor.peak_op_per_s: unknown key (expected one of ops, peak_ops_per_s, efficiency, cout_lanes, w8a16_share, tile)",
        ),
        ({"memry": {"onchip_bytes": 1}}, f"{MY_NPU}.memry: unknown key (expected one of base, chip, mode,"),
        (
            {"units": {"npu2": {"peak_ops_per_s": {"int8": 1.0e12}}}},
            f"{MY_NPU}.units.npu2: unknown key (expected one of tensor, vector, dma, cpu)",
        ),
        (  # YAML 1.1 reads 25.6e9 as text
            {"memory": {"ddr_bytes_per_s": "25.6e9"}},
            f"{MY_NPU}.memory.ddr_bytes_per_s: expected a number, got '25.6e9' (YAML reads 25.6e9 as text: write it with a dot "
            "and a signed exponent, 2.56e+10)",
        ),
        ({"cores": "two"}, f"{MY_NPU}.cores: expected an integer, got 'two'"),
        ({"units": {"dma": {"ops": "Transpose"}}}, f"{MY_NPU}.units.dma.ops: expected a list, got 'Transpose'"),
        ({"memory": {"ddr_bytes_per_s": 0}}, f"{MY_NPU}.memory.ddr_bytes_per_s: expected a number > 0, got 0"),
        ({"units": {"tensor": {"efficiency": 1.5}}}, f"{MY_NPU}.units.tensor.efficiency: expected a number ≤ 1, got 1.5"),
        (
            {"units": {"vector": {"peak_ops_per_s": {"int16": 1.0e12}}}, "base": "_axera"},
            f"{MY_NPU}.units.tensor.peak_ops_per_s: missing (Peak operations per second by precision",
        ),
        ({"base": "_axera"}, f"{MY_NPU}.memory.ddr_bytes_per_s: missing (DDR bandwidth the NPU draws, bytes per second.)"),
        (
            {"units": {"tensor": {"ops": ["Conv", "Gemm", "MatMul", "Softmax"]}}},
            f"{MY_NPU}.units.vector.ops: Softmax is also listed in units.tensor.ops (an op runs on one unit, or is free: list it once)",
        ),
        ({"free_ops": ["Reshape", "Transpose"]}, f"{MY_NPU}.free_ops: Transpose is also listed in units.dma.ops"),
        (
            {"quantization": {"weights": "per_layer"}},
            f"{MY_NPU}.quantization.weights: expected one of per_channel, per_tensor, got 'per_layer'",
        ),
        ({"precision": {"default": "float"}}, f"{MY_NPU}.precision.default: expected one of int8, int16, got 'float'"),
        ({1: "a"}, f"{MY_NPU}.1: unknown key"),
    ],
    ids=[
        "misspelt-rate",
        "unknown-top-level-key",
        "unknown-unit",
        "number-as-text",
        "wrong-type",
        "ops-not-a-list",
        "zero-rate",
        "share-above-1",
        "unit-without-rate",
        "no-memory",
        "op-on-two-units",
        "free-and-on-a-unit",
        "per-layer-weights",
        "float-default-recipe",
        "number-as-key",
    ],
)
def test_a_bad_target_profile_is_refused_naming_the_profile_and_key_path(profile, expected):
    config = base()
    config["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", **profile}}
    message = error_of(config)
    assert expected in message, message


def test_a_profile_that_passed_its_check_is_checked_again_once_it_changes():
    # load_targets keeps the profiles that passed (npuflow.targets._check): a changed one is new
    good = {"my-npu": {"base": "ax650n-npu3", "batch": 1}}
    assert load_targets(good).get("my-npu")["batch"] == load_targets(good).get("my-npu")["batch"] == 1
    with pytest.raises(ConfigError, match=r"my-npu\.batch"):
        load_targets({"my-npu": {"base": "ax650n-npu3", "batch": "one"}})


def test_the_quantization_key_takes_per_tensor_weights():
    config = base()
    config["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", "quantization": {"weights": "per_tensor"}}}
    config["targets"] = ["my-npu"]
    validate_config(config)
    assert load_targets(config["target_profiles"]).get("my-npu")["quantization"] == {"weights": "per_tensor"}


def test_segmentation_entry_is_valid():
    validate_config(base(s=segformer_entry()))


def test_check_config_cli_reports_field(tmp_path, capsys):
    from npuflow.cli import main

    bad = base()
    bad["models"]["m"]["task"] = "regression"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["check-config", str(path)]) == 2
    assert "models.m.task" in capsys.readouterr().err


def test_duplicate_keys_are_refused_naming_the_field_and_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: two models of one name would silently be one."""
    path = tmp_path / "c.yaml"
    path.write_text("""weights: random
models:
  m0:
    source: "timm:efficientvit_m0"
    task: classification
    input: {shape: [1, 3, 224, 224]}
  m0:
    source: "timm:efficientvit_m1"
    task: classification
    input: {shape: [1, 3, 224, 224], shape: [1, 3, 256, 256]}
""")
    with pytest.raises(
        ConfigError, match=rf"^models\.m0: given twice in {path} \(lines 3 and 7\); YAML would silently keep only the last one"
    ):
        load_config(path)
    path.write_text(path.read_text().replace('  m0:\n    source: "timm:efficientvit_m1"', '  m1:\n    source: "timm:efficientvit_m1"'))
    with pytest.raises(ConfigError, match=r"^models\.m1\.input\.shape: given twice .*\(lines 10 and 10\)"):
        load_config(path)


def test_yaml_merge_keys_and_shared_anchors_are_not_duplicates(tmp_path):
    """A key given again after a merge (`<<: *base`) overrides it; that is YAML, not a duplicate."""
    path = tmp_path / "c.yaml"
    path.write_text("""weights: random
models:
  a: &base {source: "timm:efficientvit_m0", task: classification, input: {shape: [1, 3, 224, 224]}}
  b: {<<: *base, source: "timm:efficientvit_m1"}
""")
    config = load_config(path)
    assert config["models"]["a"]["source"] == "timm:efficientvit_m0" and config["models"]["b"]["source"] == "timm:efficientvit_m1"
    assert config["models"]["b"]["input"] == {"shape": [1, 3, 224, 224]}


def test_alias_bomb_is_refused_before_validation(tmp_path):
    lines = ["weights: random", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="more than 1000000 values once its YAML aliases are expanded"):
        load_config(tmp_path / "c.yaml")


def test_empty_or_non_mapping_config_file(tmp_path):
    for text in ("", "- a\n- b\n", "just a string\n"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match="config: expected a mapping at the top level"):
            load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("models: {m: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML"):
        load_config(tmp_path / "c.yaml")


def test_a_hand_written_build_profile_is_checked_by_the_same_schema(tmp_path, capsys):
    import json

    import onnx

    from npuflow.cli import main
    from test_simulator import conv_model

    onnx.save(conv_model(hw=8), str(tmp_path / "m.onnx"))
    profile = load_targets().get("ax650n-npu3")
    args = ["build", str(tmp_path / "m.onnx"), "--target", "ax650n-npu3", "--out-dir", str(tmp_path / "out")]
    assert main([*args, "--profile", json.dumps(profile)]) == 0  # the resolved profile, as the workflow passes it
    profile["units"]["tensor"]["peak_op_per_s"] = profile["units"]["tensor"].pop("peak_ops_per_s")
    assert main([*args, "--profile", json.dumps(profile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "npuflow build: error: --profile.units.tensor.peak_op_per_s: unknown key (expected one of ops, peak_ops_per_s, efficiency, cout_lanes, w8a16_share, tile); "
        "--profile.units.tensor.peak_ops_per_s: missing (Peak operations per second by precision: {int8: …, int16: …, float: …}; "
        "int8 is required.)"
    ]


def test_a_derived_profile_as_the_workflow_passes_it_builds_and_says_what_it_changes(tmp_path):
    """The resolved profile of `x5-fast: {base: rdk-x5, …}` (with the loader's `differs_from_base`)
    passes the build's schema check, and build.json carries what it changes."""
    import json

    import onnx

    from npuflow.cli import main
    from test_simulator import conv_model

    onnx.save(conv_model(hw=8), str(tmp_path / "m.onnx"))
    profile = load_targets({"x5-fast": {"base": "rdk-x5", "units": {"tensor": {"peak_ops_per_s": {"int8": 15e12}}}}}).get("x5-fast")
    args = ["build", str(tmp_path / "m.onnx"), "--target", "x5-fast", "--out-dir", str(tmp_path / "out")]
    assert main([*args, "--profile", json.dumps(profile)]) == 0
    built = json.loads((tmp_path / "out" / "build.json").read_text())
    assert built["derived_from_base"] == {"base": "rdk-x5", "changes": {"units.tensor.peak_ops_per_s.int8": {"base": 10e12, "own": 15e12}}}


def test_a_build_by_hand_of_a_pipeline_model_names_it_and_its_weights(tmp_path):
    """`npuflow build results/<model>/quant/int8.onnx --target …` (as docs/targets.md shows) records
    the model's name and weights kind from the layout; an ONNX file elsewhere its stem and
    `unknown`, never an empty name."""
    import json

    import onnx

    from npuflow.cli import main
    from test_simulator import conv_model

    quant = tmp_path / "results" / "mine" / "quant" / "int8.onnx"
    quant.parent.mkdir(parents=True)
    onnx.save(conv_model(hw=8), str(quant))
    (tmp_path / "results" / "mine" / "fetch").mkdir()
    manifest = {"model": "mine", "source": "timm:x", "arch": None, "task": "classification", "family": "x", "weights": "random"}
    manifest.update(weights_detail="test", seed=0, hub_reachable=None, params=1, weights_sha256="0", preprocessing={}, seconds=0.0)
    (tmp_path / "results" / "mine" / "fetch" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build", str(quant), "--target", "rdk-x5", "--out-dir", str(tmp_path / "a")]) == 0
    built = json.loads((tmp_path / "a" / "build.json").read_text())
    assert (built["model"], built["weights"]) == ("mine", "random")
    onnx.save(conv_model(hw=8), str(tmp_path / "lone.onnx"))
    assert main(["build", str(tmp_path / "lone.onnx"), "--target", "rdk-x5", "--out-dir", str(tmp_path / "b")]) == 0
    built = json.loads((tmp_path / "b" / "build.json").read_text())
    assert (built["model"], built["weights"]) == ("lone", "unknown (no --manifest given)")


TABBED_JSON = '{\n\t"weights": "random",\n\t"targets": ["ax650n-npu3"],\n\t"models": {\n\t\t"m": {\n\t\t\t"source": "timm:efficientvit_m0",\n\t\t\t"task": "classification",\n\t\t\t"input": {"shape": [1, 3, 224, 224]}%s\n\t\t}\n\t}\n}\n'


@pytest.mark.parametrize("name", ["c.json", "c.yaml"])
def test_a_json_config_indented_with_tabs_is_read_as_json(tmp_path, name):
    """JSON with tabs is no YAML (a tab cannot start a YAML token): by its extension or its '{'."""
    (tmp_path / name).write_text(TABBED_JSON % "")
    config = load_config(tmp_path / name)
    assert list(config["models"]) == ["m"] and config["targets"] == ["ax650n-npu3"]


def test_a_json_syntax_error_or_duplicate_key_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(TABBED_JSON % ",")  # a trailing comma
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: not valid JSON: line 9, column 3: Expecting property name enclosed in double quotes"
    path.write_text('{"weights": "random", "models": {}, "weights": "pretrained"}')
    with pytest.raises(ConfigError, match=r"c\.json: the key 'weights' is given twice in one object"):
        load_config(path)


def test_a_tabbed_json_configfile_runs_and_a_broken_default_config_names_its_line(tmp_path):
    (tmp_path / "c.json").write_text(TABBED_JSON % "")
    proc = snakemake(tmp_path, "-n", configfile=tmp_path / "c.json")
    assert proc.returncode == 0 and "rule fetch" in proc.stdout, proc.stderr[-2000:]
    # The default config (no --configfile), which the Snakefile reads: npuflow's loader names the line.
    (tmp_path / "config.yaml").write_text("weights: random\nmodels:\n  m: {source: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "config.yaml: not valid YAML: line 4, column 1: expected ',' or ']', but got '<stream end>'" in proc.stdout + proc.stderr


def test_a_models_calibration_block_overrides_the_global_one_key_by_key():
    """A model's `calibration: {method: entropy}` changes the method only: the global images and
    dataset stay (the entry's block used to get the schema defaults first: 32 sample photos)."""
    import yaml

    from conftest import REPO
    from npuflow.pipeline.config import model_spec, validate_config

    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["calibration"] = {"method": "minmax", "images": 20, "dataset": "samples", "percentile": 99.9}
    config["models"]["efficientvit_m0"]["calibration"] = {"method": "entropy"}
    config = validate_config(config)
    calibration = model_spec(config, "efficientvit_m0")["calibration"]
    assert calibration["method"] == "entropy" and calibration["images"] == 20 and calibration["dataset"] == "samples"
    assert calibration["percentile"] == 99.9 and calibration["per_channel"] is True  # global, then the schema's defaults


# Issue 28, part 5: what tests/test_fuzz_config.py found, each a traceback before (TypeError,
# AttributeError), now one line naming the field.
@pytest.mark.parametrize(
    "profile, expected",
    [
        ({"base": ["ax650n-npu3"]}, "target_profiles.my-npu.base: expected text, got ['ax650n-npu3']"),
        ({"base": "ax650n-npu3", "transfer_from": {}}, "target_profiles.my-npu.transfer_from: expected text, got {}"),
        ({"base": "ax650n-npu3", "units": None}, "target_profiles.my-npu.units: expected a mapping, got None"),
        ({"base": "rdk-x5", "fit_parameters": 3}, "target_profiles.my-npu.fit_parameters: expected a mapping, got 3"),
        ({"base": "ax650n-npu3", "fit": {"parameters": 100000}}, "target_profiles.my-npu.fit.parameters: expected a mapping, got 100000"),
        (
            {"base": "ax650n-npu3", "fit": {"parameters": {"units.tensor.peak_ops_per_s.int8.x": 1}}},
            "target_profiles.my-npu.fit.parameters.units.tensor.peak_ops_per_s.int8.x: not a rate the fit can set (one of units.tensor.efficiency",
        ),
    ],
    ids=["base-a-list", "transfer_from-a-mapping", "units-null", "fit_parameters-a-number", "fit-parameters-a-number", "fit-into-a-number"],
)
def test_a_profile_field_read_before_the_profile_check_is_refused_naming_it(profile, expected):
    """load_targets reads `base`, `transfer_from`, `fit` and `fit_parameters` and walks the
    profile's mappings while resolving it, before the resolved profile meets its schema: a user
    profile's keys are checked for their types first."""
    config = base()
    config["targets"] = ["my-npu"]
    config["target_profiles"] = {"my-npu": profile}
    message = error_of(config)
    assert message == f"invalid config:\n  {expected}" or f"\n  {expected}" in message, message
    assert all(line.startswith("  target_profiles.my-npu.") for line in message.splitlines()[1:]), message


def test_a_valid_fitted_rate_in_a_user_profile_is_still_taken():
    config = base()
    config["targets"] = ["my-npu"]
    config["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", "fit": {"parameters": {"memory.efficiency": 0.5}}}}
    validate_config(config)
    assert load_targets(config["target_profiles"]).get("my-npu")["memory"]["efficiency"] == 0.5


def test_a_user_profile_of_a_builtin_name_is_refused():
    """It would replace the built-in, and the built-ins derived from it (ax650n-npu1 from
    ax650n-npu3) with it, whose errors then named a built-in file instead of the config field."""
    config = base()
    config["target_profiles"] = {"ax650n-npu3": {}}
    assert error_of(config) == (
        "invalid config:\n  target_profiles.ax650n-npu3: the name of a built-in profile; give yours another name "
        "(with base: ax650n-npu3 to start from it)"
    )


@pytest.mark.parametrize(
    "mutate, expected",
    [
        # a key with a line break: its field path stayed split over two lines
        (lambda c: c["models"].update({"a\nb": {"task": 1}}), "  models.'a\\nb'.task: 1 is not one of"),
        (lambda c: c.update(target_profiles={"line\nbreak": None}), "  target_profiles.'line\\nbreak': None is not of type 'object'"),
        # keys YAML reads as false or null beside text ones: sorting the errors raised TypeError
        (lambda c: c["models"].update({False: 1, None: {"arch": None}}), "  models.False: 1 is not of type 'object'"),
    ],
    ids=["newline-in-model-name", "newline-in-profile-name", "null-and-false-keys"],
)
def test_odd_keys_give_one_line_per_problem(mutate, expected):
    config = base()
    mutate(config)
    message = error_of(config)
    assert f"\n{expected}" in message, message
    assert all(line.startswith("  models") or line.startswith("  target_profiles") for line in message.splitlines()[1:]), message


def test_a_misspelt_op_type_in_a_recipe_is_refused_naming_the_close_match():
    """`op_types: {Sofmax: int16}` set nothing (no op of that type) and said nothing; now the
    config check names the field and the op type meant, for a model's recipe and a profile's."""
    config = base()
    config["models"]["m"]["precision"] = {"rdk-x5": {"op_types": {"Sofmax": "int16", "Gelu": "int16"}}}
    message = error_of(config)
    assert (
        "models.m.precision.rdk-x5.op_types.Sofmax: not an ONNX op type, a fusion pattern" in message and "did you mean Softmax" in message
    )
    assert "Gelu" not in message  # a fusion pattern is an op type a recipe may set
    config = base()
    config["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", "precision": {"default": "int8", "op_types": {"LayerNorm": "int16"}}}}
    assert "target_profiles.my-npu.precision.op_types.LayerNorm: not an ONNX op type" in error_of(config)
