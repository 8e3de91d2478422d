"""One merge rule for the config's blocks (issue 29, item 1): a block the config has both globally
and under a model resolves, per key, to the model's value over the global one over the schema's
default. The blocks are found in the schema here, so a new one is covered without a new test."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import classifier_entry
from npuflow.pipeline.config import model_spec, validate_config
from npuflow.pipeline.plan import Plan
from npuflow.pipeline.schema import SCHEMA_PATH
from npuflow.util.merge import merge_blocks

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
MODEL_FIELDS = SCHEMA["$defs"]["model"]["properties"]
# Every setting the config takes both at the top level and under models.<name>.
SHARED = [k for k in SCHEMA["properties"] if k in MODEL_FIELDS]
# Text (and list) values the schema cannot produce: names that must exist (a registry's, the
# config's datasets, the targets). A new key of a shared block that takes text needs two here.
NAMED_VALUES = {
    "calibration.method": ["percentile", "entropy"],
    "calibration.dataset": ["mycalib", "othercalib"],
    "targets": [["rdk-x5", "j5"], ["ax650n-npu3"]],
}


def resolved(schema: dict) -> dict:
    ref = schema.get("$ref")
    return {**SCHEMA["$defs"][ref.rsplit("/", 1)[-1]], **schema} if ref else schema


def candidates(schema: dict, where: str) -> list:
    """Valid values of a field, from its schema (bounds, enums, constants), else NAMED_VALUES."""
    schema = resolved(schema)
    if where in NAMED_VALUES:
        return list(NAMED_VALUES[where])
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return [v for sub in schema.get("anyOf", schema.get("oneOf")) for v in candidates(sub, where)]
    kind = schema.get("type")
    if kind == "boolean":
        return [True, False]
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 100))
        if kind == "integer":
            lo += "exclusiveMinimum" in schema
            return [lo + 1, lo + 2, lo + 3]
        return [lo + (hi - lo) * f for f in (0.5, 0.25, 0.75)]
    pytest.fail(f"{where}: no value to try; give NAMED_VALUES two valid ones")


def two_values(schema: dict, where: str) -> tuple:
    """A value for the global block that is not the schema's default (a reset to the default
    shows), and another for the model's."""
    default = resolved(schema).get("default", object())
    values = candidates(schema, where)
    glob = next((v for v in values if v != default), None)
    own = next((v for v in values if v != glob), None)
    if glob is None or own is None:
        pytest.fail(f"{where}: no two values to try (one not the default); give NAMED_VALUES two valid ones")
    return glob, own


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("sets")
    out = {}
    for name in ("mycalib", "othercalib"):
        (root / name).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / name / f"{i}.png")
        out[name] = {"folder": str(root / name)}
    return out


def test_the_schema_has_the_blocks_this_test_is_about():
    assert {"calibration", "quantization", "targets"} <= set(SHARED)  # found in the schema, not listed by hand


@pytest.mark.parametrize("block", [k for k in SHARED if resolved(SCHEMA["properties"][k]).get("type") == "object"])
def test_a_models_block_setting_one_key_keeps_the_global_value_of_every_other(block, datasets):
    fields = resolved(SCHEMA["properties"][block])["properties"]
    values = {key: two_values(sub, f"{block}.{key}") for key, sub in fields.items()}
    glob = {key: v for key, (v, _) in values.items()}
    for key, (_, own) in values.items():
        config = {"weights": "random", "datasets": copy.deepcopy(datasets), block: copy.deepcopy(glob)}
        config["models"] = {"a": classifier_entry(), "b": classifier_entry(**{block: {key: own}})}
        config = validate_config(config)
        assert config["models"]["b"][block] == {key: own}, "the model's block took schema defaults"
        specs = Plan(config, recipe_maps=None).specs
        assert specs["b"][block] == {**glob, key: own}, f"models.b.{block}: {{{key}: {own!r}}} reset another key"
        assert specs["a"][block] == glob
        assert model_spec(config, "b") == specs["b"]


@pytest.mark.parametrize("block", [k for k in SHARED if resolved(SCHEMA["properties"][k]).get("type") != "object"])
def test_a_models_list_or_value_replaces_the_global_one_whole(block):
    glob, own = two_values(SCHEMA["properties"][block], block)
    config = {"weights": "random", block: glob, "models": {"a": classifier_entry(), "b": classifier_entry(**{block: own})}}
    specs = Plan(validate_config(config), recipe_maps=None).specs
    assert (specs["a"][block], specs["b"][block]) == (glob, own)


def test_a_models_calibration_method_keeps_the_global_images_and_dataset(datasets):
    """The issue's reproduction: global minmax on 20 images of mycalib, `models.b.calibration:
    {method: entropy}` calibrated b on 32 sample photos (its block took the schema's defaults)."""
    config = {
        "weights": "random",
        "datasets": datasets,
        "calibration": {"method": "minmax", "images": 20, "dataset": "mycalib"},
        "models": {"a": classifier_entry(), "b": classifier_entry(calibration={"method": "entropy"})},
    }
    plan = Plan(validate_config(config), recipe_maps=None)
    calib = plan.specs["b"]["calibration"]
    assert (calib["method"], calib["images"], calib["dataset"]) == ("entropy", 20, "mycalib")
    assert (calib["percentile"], calib["per_channel"]) == (99.999, True)  # set nowhere: the schema's default
    assert '"dataset": "mycalib"' in plan.spec_json("b", "calibrate") and '"images": 20' in plan.spec_json("b", "calibrate")
    assert plan.user_datasets("b", ("calibration",)) == ["mycalib"]


def test_merge_blocks_is_per_key_recursive_and_replaces_lists_whole():
    default = {"a": 1, "nested": {"x": 1, "y": 2}, "list": [1, 2]}
    glob = {"nested": {"y": 3}, "list": [3]}
    model = {"nested": {"z": 4}, "a": 5}
    merged = merge_blocks(default, glob, None, model)
    assert merged == {"a": 5, "nested": {"x": 1, "y": 3, "z": 4}, "list": [3]}
    merged["nested"]["x"] = 0
    assert default["nested"]["x"] == 1  # nothing shared with the layers
    assert merge_blocks({"k": {"x": 1}}, {"k": 2}) == {"k": 2} and merge_blocks({"k": 2}, {"k": {"x": 1}}) == {"k": {"x": 1}}


def test_a_global_method_reaches_a_default_config_model_whose_block_sets_only_images():
    """The default config's SegFormer sets `calibration: {images: 4}`: a global `method: auto`
    left it on minmax (its block took the schema's default method)."""
    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["calibration"]["method"] = "auto"
    config = validate_config(config)
    seg = model_spec(config, "segformer_b0_cityscapes")["calibration"]
    assert (seg["method"], seg["images"], seg["dataset"]) == ("auto", 4, "samples")
    assert model_spec(config, "swin_tiny")["calibration"]["method"] == "auto"


def test_a_models_precision_changes_merge_into_the_targets_recipe_by_the_same_rule():
    from npuflow.graph.precision import merge_recipe

    profile = {
        "default": "int8",
        "op_types": {"Softmax": "float", "Gelu": "int16"},
        "subgraphs": [{"start": ["a"], "end": ["b"], "dtype": "int16"}],
    }
    model = {"op_types": {"Softmax": "int16"}, "weights": "int16", "subgraphs": [{"start": ["c"], "end": ["d"], "dtype": "float"}]}
    merged = merge_recipe(profile, model)
    assert merged["op_types"] == {"Softmax": "int16", "Gelu": "int16"} and (merged["default"], merged["weights"]) == ("int8", "int16")
    assert [s["start"] for s in merged["subgraphs"]] == [["a"], ["c"]]  # a model's subgraphs add to the profile's
    assert profile["op_types"]["Softmax"] == "float" and merge_recipe(None, None) == {"default": "int8"}
