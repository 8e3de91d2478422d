import copy

import pytest
import yaml

from conftest import REPO, classifier_entry, segformer_entry
from npuflow.config import ConfigError, load_config, model_spec, validate_config


def base(**models):
    return {"weights": "random", "models": models or {"m": classifier_entry()}}


def error_of(config) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(copy.deepcopy(config))
    return str(e.value)


def test_default_config_has_every_model_and_target():
    config = load_config(REPO / "config.yaml")
    assert set(config["models"]) == {f"efficientvit_m{i}" for i in range(6)} | {"swin_tiny", "mobilenetv3_large_100", "segformer_b0_cityscapes"}
    assert config["targets"] == ["ax650n-npu1", "ax650n-npu3", "rdk-x5", "j5"]
    seg = model_spec(config, "segformer_b0_cityscapes")
    assert seg["opset"] == 11 and seg["input"]["shape"] == [1, 3, 640, 1280] and seg["surgery"] == ["append_argmax"]
    assert model_spec(config, "swin_tiny")["opset"] == 17  # schema default
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
        (lambda c: c["models"]["m"].update(task="detection"), "models.m.task", "is not one of"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 224]), "models.m.input.shape", "too short"),
        (lambda c: c["models"]["m"]["input"].update(shape=[1, 3, 0, 224]), "models.m.input.shape.2", "less than the minimum"),
        (lambda c: c["models"]["m"]["input"].update(shape=[2, 3, 224, 224]), "models.m.input.shape", "batch must be 1"),
        (lambda c: c["models"]["m"].update(source="torchhub:foo"), "models.m.source", "does not match"),
        (lambda c: c["models"]["m"].update(surgery=["fold_head_nb"]), "models.m.surgery.0", "close matches: fold_head_bn"),
        (lambda c: c["models"]["m"].update(opset=7), "models.m.opset", "less than the minimum"),
        (lambda c: c["models"]["m"].update(surgery=["append_argmax"]), "models.m.surgery", "task: segmentation"),
        (lambda c: c["models"]["m"].update(colour="red"), "models.m", "Additional properties"),
        (lambda c: c.update(targets=["ax650n-npu2"]), "targets.0", "close matches: ax650n-npu3, ax650n-npu1"),
        (lambda c: c.update(weights="maybe"), "weights", "is not one of"),
        (lambda c: c["models"].update({"bad/name": classifier_entry()}), "models", "does not match"),
        (lambda c: c["models"].update({"..": classifier_entry()}), "models", "does not match"),
        (lambda c: c["models"]["m"].update(source="url:https://example.org/w.pth"), "models.m.arch", "needs `arch`"),
        (lambda c: c["models"]["m"].update(source="url:http://example.org/w.pth", arch="efficientvit_m0"), "models.m.source", "plain http is refused"),
        (lambda c: c["models"]["m"].update(calibration={"method": "kl"}), "models.m.calibration.method", "unknown calibration method"),
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


def test_segmentation_entry_is_valid():
    validate_config(base(s=segformer_entry()))


def test_check_config_cli_reports_field(tmp_path, capsys):
    from npuflow.cli import main

    bad = base()
    bad["models"]["m"]["task"] = "detection"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["check-config", str(path)]) == 2
    assert "models.m.task" in capsys.readouterr().err
