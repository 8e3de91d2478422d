"""The workflow's parse-time decisions (npuflow.pipeline.plan), without Snakemake: which recipe each target
builds, where mixed precision applies, the user datasets a model reads, the run files and each
pair's chain of stages."""

import pytest

from conftest import classifier_entry, make_config
from npuflow.core.layout import STAGES
from npuflow.pipeline.config import validate_config
from npuflow.pipeline.plan import Pair, Plan


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
    assert p.base_layers("m", "rdk-x5") == "results/m/eval/int8_Softmax-float.layers.json"  # the analyse stage's
    assert p.build_layers("m", "rdk-x5") == "results/m/eval/mixed-rdk-x5.layers.json"
    assert "mixed-rdk-x5" in p.recipe_ids() and "mixed-rdk-x5" not in p.recipes()
    files = p.run_files("m")
    assert files["rdk-x5"]["mixed"] == "results/m/mixed/rdk-x5.json" and "mixed" not in files["j5"]
    # Without `targets`, every target of the model is searched.
    every = plan(mixed_precision={"goal": {"metric": "cosine", "value": 0.99}})
    assert all(every.searched("m", t) for t in ("ax650n-npu3", "rdk-x5", "j5"))


def test_a_mixed_pair_chains_through_the_search_and_a_dataset_through_its_preparation(tmp_path):
    entry = classifier_entry(calibration={"dataset": "mine"}, mixed_precision={"goal": {"metric": "cosine", "value": 0.9}})
    (tmp_path / "0.png").write_bytes(b"")  # a folder of images (the config refuses one without any)
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
        "recipes",
        "calibrate",
        "reference",
        "quantize",
        "analyse",
        "mixed_precision",
        "evaluate",
        "analyse",
        "build",
        "plot",
        "init_mlflow",
        "track",
    ]
    assert chain[0].log == "results/logs/dataset/mine.log" and chain[0].outputs == ("results/datasets/mine/index.json",)
    assert chain[9].log == "results/logs/quantize/m.int8_Softmax-float.log"  # the base recipe, which the search starts from
    assert chain[11].log == "results/logs/mixed_precision/m.rdk-x5.log"
    assert chain[12].outputs[0] == "results/m/eval/mixed-rdk-x5.json"
    # A pair without mixed precision or datasets goes straight from its recipe's evaluation to the build.
    plain = Pair("m", "ax650n-npu3", "int8", "int8")
    assert [s.stage for s in plain.chain()][7:12] == ["reference", "quantize", "evaluate", "analyse", "build"]
    assert Pair.from_json(pair.to_json()) == pair


def test_specs_and_memory_per_stage():
    import json

    p = plan()
    assert set(json.loads(p.spec_json("m", "surgery"))) == set(STAGES.surgery.fields)
    assert set(json.loads(p.spec_json("m", "mixed_precision"))) <= set(STAGES.mixed_precision.fields)
    # Mixed precision runs evaluation's per-layer comparison at each step: the same estimate.
    assert p.job_mem_mb("mixed_precision", "m") == p.job_mem_mb("analyse", "m") > p.job_mem_mb("reference", "m")


def conv_relu_onnx(path):
    """A model with no Softmax, LayerNorm or GELU: every recipe below leaves it all int8."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_recipes_that_resolve_alike_share_one_quantised_model(tmp_path):
    from npuflow.core.layout import relocate
    from npuflow.pipeline.plan import recipe_identity, shared_recipes
    from npuflow.pipeline.recipes import recipe_map

    p = plan(precision={"rdk-x5": {"op_types": {"Softmax": "int16"}}})
    recipes = p.model_recipes("m")
    assert set(recipes) == {"int8", "int8_Softmax-int16", "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16"}
    # Before the model's map exists (a dry run in a fresh folder), each recipe stands for itself.
    assert p.recipe_of("m", "j5") == "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16"

    conv_relu_onnx(tmp_path / "m.onnx")
    out = relocate(STAGES.recipes.output("map", model="m"), tmp_path / "results")
    written = recipe_map(tmp_path / "m.onnx", recipes=recipes, spec=p.specs["m"], out_json=out)
    assert written["uses"] == dict.fromkeys(recipes, "int8")  # the simplest id names the shared model
    assert written["node_dtypes"]["int8_Softmax-int16"] == {"int8": 2}

    resolved = Plan(p.config, recipe_maps=str(tmp_path / "results"))
    assert [resolved.recipe_of("m", t) for t in ("ax650n-npu3", "rdk-x5", "j5")] == ["int8"] * 3
    assert {resolved.quantized("m", t) for t in ("rdk-x5", "j5")} == {"results/m/quant/int8.onnx"}
    assert resolved.base_layers("m", "j5") == "results/m/eval/int8.layers.json"
    assert {pair.recipe for pair in resolved.pairs()} == {"int8"} and not any(pair.mixed for pair in resolved.pairs())
    assert {f["quantize"] for f in resolved.run_files("m").values()} == {"results/m/quant/int8.json"}

    # A searched target still builds mixed precision's choice, starting from the shared model.
    mixed = {"targets": ["rdk-x5"], "goal": {"metric": "cosine", "value": 0.9}}
    searched = Plan(plan(precision={"rdk-x5": {"op_types": {"Softmax": "int16"}}}, mixed_precision=mixed).config, str(tmp_path / "results"))
    pair = searched.pair("m", "rdk-x5")
    assert (pair.recipe, pair.base_recipe) == ("mixed-rdk-x5", "int8")
    assert searched.base_quantized("m", "rdk-x5") == "results/m/quant/int8.onnx"

    # Identity: the node map and the default type, not the spelling.
    nodes = {"conv": "int8", "relu": "int8"}
    assert recipe_identity(nodes, {"default": "int8"}) == recipe_identity(nodes, {"default": "int8", "op_types": {"Softmax": "float"}})
    assert recipe_identity(nodes, {"default": "int8"}) != recipe_identity({**nodes, "relu": "int16"}, {"default": "int8"})
    assert shared_recipes({"b_long": "x", "a": "x", "c": "y"}) == {"b_long": "a", "a": "a", "c": "c"}


def test_the_report_gets_pairs_planned_before_any_map_and_settles_them_where_it_runs(tmp_path):
    from npuflow.core.records import RecipeMap
    from npuflow.pipeline.plan import resolve_pair

    plain, mixed = Pair("m", "j5", "int8_LayerNorm-int16", "int8_LayerNorm-int16"), Pair("m", "j5", "mixed-j5", "int8_LayerNorm-int16")
    assert resolve_pair(plain, str(tmp_path)) == plain  # no map yet: its stages have not run
    path = tmp_path / STAGES.recipes.output("map", model="m").split("/", 1)[1]
    path.parent.mkdir(parents=True)
    uses = {"int8_LayerNorm-int16": "int8", "int8_Softmax-float": "int8", "int8": "int8"}
    RecipeMap(model="m", identities=dict.fromkeys(uses, "a"), uses=uses, node_dtypes={}).write(path)
    assert resolve_pair(plain, str(tmp_path)) == Pair("m", "j5", "int8", "int8")
    assert resolve_pair(mixed, str(tmp_path)) == Pair("m", "j5", "mixed-j5", "int8")  # the search starts from the shared model
    # planned before any map, whatever maps exist: the report job's command line does not change when one appears
    config = validate_config(make_config(m=classifier_entry()))
    resolved = Plan(config, recipe_maps=str(tmp_path))
    assert resolved.pair("m", "rdk-x5").recipe == "int8"
    unresolved = resolved.unresolved_pairs()
    assert unresolved == Plan(config, recipe_maps=None).pairs() and unresolved[1].recipe == "int8_Softmax-float"
    assert [resolve_pair(p, str(tmp_path)) for p in unresolved] == resolved.pairs()


def test_outputs_a_stopped_run_left_marked_incomplete_are_removed(tmp_path):
    from base64 import urlsafe_b64encode

    from npuflow.pipeline.runlock import remove_incomplete_outputs

    marks = tmp_path / ".snakemake" / "incomplete"
    marks.mkdir(parents=True)
    for name in ("results/m/eval/reference.npz", "results/m/gone.json"):
        (marks / urlsafe_b64encode(name.encode()).decode()).write_text("")
    (tmp_path / "results" / "m" / "eval").mkdir(parents=True)
    (tmp_path / "results" / "m" / "eval" / "reference.npz").write_bytes(b"x")
    (tmp_path / "results" / "m" / "kept.json").write_text("{}")
    assert remove_incomplete_outputs(tmp_path) == [str(tmp_path / "results/m/eval/reference.npz")]
    assert not (tmp_path / "results/m/eval/reference.npz").exists() and (tmp_path / "results/m/kept.json").exists()
    # The report's own files stay (an earlier complete report: its job replaces them whole); its mark goes.
    for name in ("results/report.html", "results/plots/pareto.rdk-x5.png", "results/report.complete.json"):
        (marks / urlsafe_b64encode(name.encode()).decode()).write_text("")
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    keep = ("results/report.html", "results/plots/pareto.*.png")
    assert remove_incomplete_outputs(tmp_path, keep=keep) == [str(tmp_path / "results/report.complete.json")]
    assert (tmp_path / "results/report.html").exists() and (tmp_path / "results/plots/pareto.rdk-x5.png").exists()


def test_a_models_precision_for_a_chip_follows_to_profiles_derived_from_it():
    """`precision: {rdk-x5: {op_types: {Softmax: int16}}}` applies to `rdk-x5-same: {base: rdk-x5}`
    too (EfficientViT fell back to 25 CPU-split subgraphs there), and the derived profile predicts
    what its base does (the base's fit is carried over)."""
    import copy

    from npuflow.pipeline.config import validate_config
    from npuflow.pipeline.plan import Plan

    config = {
        "weights": "random",
        "targets": ["rdk-x5-same"],
        "target_profiles": {"rdk-x5-same": {"base": "rdk-x5"}},
        "calibration": {"images": 4},
        "evaluation": {"images": 3, "latency_repeats": 3},
        "models": {"m": classifier_entry(precision={"rdk-x5": {"op_types": {"Softmax": "int16"}}})},
    }
    plan = Plan(validate_config(copy.deepcopy(config)))
    assert plan.base_recipe("m", "rdk-x5-same")["op_types"] == {"Softmax": "int16"}
    assert plan.targets.get("rdk-x5-same")["derived_from"] == ["rdk-x5"]
    config["models"]["m"]["precision"] = {"j5": {"op_types": {"Softmax": "int16"}}}  # neither a target nor a base of one
    with pytest.raises(Exception, match=r"models\.m\.precision\.j5: not one of this model's targets, nor a base of one"):
        validate_config(copy.deepcopy(config))
