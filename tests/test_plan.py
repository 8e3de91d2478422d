"""The workflow's parse-time decisions (npuflow.plan), without Snakemake: which recipe each target
builds, where mixed precision applies, the user datasets a model reads, the run files and each
pair's chain of stages."""

from conftest import classifier_entry, make_config
from npuflow.config import validate_config
from npuflow.layout import STAGES
from npuflow.plan import Pair, Plan


def plan(**entry) -> Plan:
    config = make_config(m=classifier_entry(**entry))
    config["targets"] = ["ax650n-npu3", "rdk-x5", "j5"]
    config["models"]["m"].setdefault("targets", config["targets"])
    return Plan(config)


def test_each_target_builds_its_recipe_with_the_models_changes():
    p = plan(precision={"rdk-x5": {"op_types": {"Softmax": "int16"}}})
    assert [p.recipe_of("m", t) for t in ("ax650n-npu3", "rdk-x5", "j5")] == [
        "int8",
        "int8_Softmax-int16",  # the profile's Softmax: float, changed by the model's entry
        "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16",
    ]
    assert set(p.recipes()) == {"int8", "int8_Softmax-int16", "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16"}
    assert p.recipes()["int8_Softmax-int16"] == {"default": "int8", "op_types": {"Softmax": "int16"}}
    assert not any(p.searched("m", t) for t in ("ax650n-npu3", "rdk-x5", "j5"))
    assert [pair.mixed for pair in p.pairs()] == [False, False, False]


def test_mixed_precision_chooses_the_recipe_of_the_targets_it_names_only():
    p = plan(mixed_precision={"targets": ["rdk-x5"], "goal": {"metric": "cosine", "value": 0.99}})
    assert (p.searched("m", "rdk-x5"), p.searched("m", "j5")) == (True, False)
    pair = p.pair("m", "rdk-x5")
    assert (pair.recipe, pair.base_recipe, pair.mixed) == ("mixed-rdk-x5", "int8_Softmax-float", True)
    assert p.quantized("m", "rdk-x5") == "results/m/quant/mixed-rdk-x5.onnx"
    # The search starts from the precision analysis of the target's own recipe.
    assert p.base_layers("m", "rdk-x5") == "results/m/eval/int8_Softmax-float.layers.json"
    assert p.build_layers("m", "rdk-x5") == "results/m/eval/mixed-rdk-x5.layers.json"
    assert "mixed-rdk-x5" in p.recipe_ids() and "mixed-rdk-x5" not in p.recipes()
    files = p.run_files("m")
    assert files["rdk-x5"]["mixed"] == "results/m/mixed/rdk-x5.json" and "mixed" not in files["j5"]
    # Without `targets`, every target of the model is searched.
    every = plan(mixed_precision={"goal": {"metric": "cosine", "value": 0.99}})
    assert all(every.searched("m", t) for t in ("ax650n-npu3", "rdk-x5", "j5"))


def test_a_mixed_pair_chains_through_the_search_and_a_dataset_through_its_preparation(tmp_path):
    entry = classifier_entry(calibration={"dataset": "mine"}, mixed_precision={"goal": {"metric": "cosine", "value": 0.9}})
    p = Plan(validate_config({"weights": "random", "datasets": {"mine": {"folder": str(tmp_path)}}, "models": {"m": entry}}))
    assert p.user_datasets("m") == ["mine"] and p.user_datasets("m", ("evaluation",)) == []
    assert p.dataset_indexes("m", ("calibration",)) == ["results/datasets/mine/index.json"]
    pair = p.pair("m", "rdk-x5")
    chain = pair.chain()
    assert [s.stage for s in chain] == [
        "dataset",
        "fetch",
        "export",
        "simplify",
        "surgery",
        "ptq",
        "calibrate",
        "reference",
        "quantize",
        "evaluate",
        "mixed_precision",
        "evaluate",
        "build",
        "plot",
        "init_mlflow",
        "track",
    ]
    assert chain[0].log == "results/logs/dataset/mine.log" and chain[0].outputs == ("results/datasets/mine/index.json",)
    assert chain[8].log == "results/logs/quantize/m.int8_Softmax-float.log"  # the base recipe, which the search starts from
    assert chain[10].log == "results/logs/mixed_precision/m.rdk-x5.log"
    assert chain[11].outputs[0] == "results/m/eval/mixed-rdk-x5.json"
    # A pair without mixed precision or datasets goes straight from its recipe's evaluation to the build.
    plain = Pair("m", "ax650n-npu3", "int8", "int8")
    assert [s.stage for s in plain.chain()][6:10] == ["reference", "quantize", "evaluate", "build"]
    assert Pair.from_json(pair.to_json()) == pair


def test_specs_and_memory_per_stage():
    import json

    p = plan()
    assert set(json.loads(p.spec_json("m", "surgery"))) == set(STAGES.surgery.fields)
    assert set(json.loads(p.spec_json("m", "mixed_precision"))) <= set(STAGES.mixed_precision.fields)
    # Mixed precision runs evaluation's per-layer comparison at each step: the same estimate.
    assert p.job_mem_mb("mixed_precision", "m") == p.job_mem_mb("evaluate", "m") > p.job_mem_mb("reference", "m")
