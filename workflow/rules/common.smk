import json
import re

from snakemake.exceptions import WorkflowError

from npuflow.config import ConfigError, model_spec, stage_spec, validate_config
from npuflow.targets import load_targets, recipe_id
from npuflow.track import tracking_uri

# Schema (workflow/schemas/config.schema.yaml, JSON Schema 2020-12, defaults filled in) and the
# checks a schema can't express, before the DAG is built. Errors name the entry and field.
try:
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

SPECS = {name: model_spec(config, name) for name in config["models"]}
TARGET_PROFILES = load_targets(config["target_profiles"])
# Precision recipes in use, by id; a target's quantised model is the one of its recipe.
RECIPES = {recipe_id(TARGET_PROFILES.get(t)): TARGET_PROFILES.get(t).get("precision", {"default": "int8"}) for t in TARGET_PROFILES.names()}
PAIRS = [(m, t) for m, spec in SPECS.items() for t in spec["targets"]]
# MLFLOW_TRACKING_URI wins over the config; as a rule param, switching it re-runs the logging.
MLFLOW_URI = tracking_uri(config["mlflow"]["tracking_uri"])
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"]


wildcard_constraints:
    model="|".join(re.escape(m) for m in SPECS),
    target="|".join(re.escape(t) for t in TARGET_PROFILES.names()),
    recipe="|".join(re.escape(r) for r in RECIPES),


def spec_json(stage):
    """The part of the model spec a stage reads, as a rule param: a changed field re-runs the
    jobs of that model that read it (Snakemake's params trigger), and nothing else."""
    return lambda wildcards: json.dumps(stage_spec(SPECS[wildcards.model], stage), sort_keys=True)


def quantized(wildcards):
    """The quantised model a target runs: the one of the target's precision recipe."""
    return f"results/{wildcards.model}/quant/{recipe_id(TARGET_PROFILES.get(wildcards.target))}.onnx"


def layers_table(model, target, recipe):
    """The per-layer precision table of a target's quantised model, when the quantize rule writes
    one (an output named `layers`): runs and the report use it when it is listed, and do without."""
    out = rules.quantize.output
    return out.layers.format(model=model, target=target, recipe=recipe) if "layers" in out.keys() else None


def run_files(model):
    """{target: {name: path}}: the stage reports and artifacts of each MLflow run of a model
    (names as in npuflow.track.ARTIFACTS)."""
    d = f"results/{model}"
    runs = {}
    for target in SPECS[model]["targets"]:
        recipe = recipe_id(TARGET_PROFILES.get(target))
        runs[target] = {
            "manifest": f"{d}/fetch/manifest.json", "export": f"{d}/export.json", "simplify": f"{d}/simplify.json",
            "surgery": f"{d}/surgery.json", "calibration": f"{d}/calibration.json", "quantize": f"{d}/quant/{recipe}.json",
            "build": f"{d}/build/{target}/build.json", "trace": f"{d}/build/{target}/trace.json",
            "build_summary": f"{d}/build/{target}/summary.txt", "evaluate": f"{d}/eval/{recipe}.json",
            "onnx_float": f"{d}/model.onnx", "onnx_sim": f"{d}/model.sim.onnx", "onnx_surgery": f"{d}/model.surgery.onnx",
            "onnx_quant": f"{d}/quant/{recipe}.onnx", "plot": f"{d}/plots/latency.png",
        }
        layers = layers_table(model, target, recipe)
        if layers:
            runs[target]["layers"] = layers
    return runs


def track_inputs(wildcards):
    return {f"{target}.{name}": path for target, files in run_files(wildcards.model).items() for name, path in files.items()}


def profile_json(wildcards):
    return json.dumps(TARGET_PROFILES.get(wildcards.target), sort_keys=True)
