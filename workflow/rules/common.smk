import json
import re

from snakemake.exceptions import WorkflowError

from npuflow.cluster import job_limits, partition_name, slurm_node
from npuflow.config import ConfigError, load_yaml, model_spec, stage_spec, validate_config
from npuflow.data import DATASETS
from npuflow.memory import job_mem_mb, local_mem_mb
from npuflow.precision import merge_recipe, recipe_id
from npuflow.targets import load_targets
from npuflow.track import tracking_uri

# Schema (workflow/schemas/config.schema.yaml, JSON Schema 2020-12, defaults filled in) and the
# checks a schema can't express, before the DAG is built. Errors name the entry and field.
# Snakemake's YAML loader keeps the last of two equal keys (two models of one name would silently
# be one): each config file is read again by npuflow's loader, which refuses them.
try:
    for path in workflow.configfiles:
        load_yaml(path)
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

SPECS = {name: model_spec(config, name) for name in config["models"]}
TARGET_PROFILES = load_targets(config["target_profiles"])
PAIRS = [(m, t) for m, spec in SPECS.items() for t in spec["targets"]]
# MLFLOW_TRACKING_URI wins over the config; as a rule param, switching it re-runs the logging.
MLFLOW_URI = tracking_uri(config["mlflow"]["tracking_uri"])
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"]
IMAGE_CACHE = "results/cache/images"

# Jobs declare the memory they need (npuflow.memory); a local run starts no more of them than the
# memory free now holds, unless `--resources mem_mb=…` says otherwise. The executor is not known yet
# while the Snakefile is read (workflow.non_local_exec is always False here); `--jobs` (`_nodes`) is
# what cluster and cloud executors require and what the local one turns into `--cores`. On a
# cluster each job asks its scheduler for its own mem_mb instead, and no job asks for more CPUs or
# memory than the largest Slurm node offers (npuflow.cluster): Snakemake's --max-threads and the
# mem_mb limit (per job on a cluster, not summed) take the node's figures. Read once, by the
# process that submits; the jobs get --max-threads from it.
if workflow.global_resources["_nodes"].value is None:
    if "mem_mb" not in workflow.global_resources:
        workflow.register_resource("mem_mb", local_mem_mb())
elif workflow.is_main_process:
    _defaults = workflow.resource_settings.default_resources
    _partition = _defaults.get("slurm_partition") if _defaults is not None else None
    _given = workflow.global_resources.get("mem_mb")
    _limits = job_limits(
        slurm_node(partition_name(getattr(_partition, "raw", None))),
        workflow.resource_settings.max_threads,
        _given.value if _given is not None else None,
    )
    workflow.resource_settings.max_threads = _limits.max_threads
    if _limits.mem_mb is not None:
        workflow.register_resource("mem_mb", _limits.mem_mb)


def mem_mb(stage):
    return lambda wildcards: job_mem_mb(stage, SPECS[wildcards.model])


def base_recipe(model, target):
    """The target profile's precision recipe with the model's own changes for that target."""
    return merge_recipe(TARGET_PROFILES.get(target).get("precision"), SPECS[model].get("precision", {}).get(target))


def searched(model, target):
    """Whether automatic mixed precision chooses this (model, target)'s recipe."""
    mp = SPECS[model].get("mixed_precision")
    return mp is not None and target in mp.get("targets", SPECS[model]["targets"])


def recipe_of(model, target):
    """The id of the quantised model a target builds: its recipe's, or mixed-<target> when searched."""
    return f"mixed-{target}" if searched(model, target) else recipe_id(base_recipe(model, target))


# Precision recipes by id; targets (of any model) with the same recipe share one quantised model.
RECIPES = {recipe_id(base_recipe(m, t)): base_recipe(m, t) for m, t in PAIRS}


wildcard_constraints:
    model="|".join(re.escape(m) for m in SPECS),
    target="|".join(re.escape(t) for t in TARGET_PROFILES.names()),
    recipe="|".join(re.escape(r) for r in list(RECIPES) + [f"mixed-{t}" for t in TARGET_PROFILES.names()]),
    dataset="|".join(re.escape(d) for d in config["datasets"]) or "(?!)",


def spec_json(stage):
    """The part of the model spec a stage reads, as a param of the rules: a changed field re-runs
    the jobs of that model that read it (Snakemake's params trigger), and nothing else."""
    return lambda wildcards: json.dumps(stage_spec(SPECS[wildcards.model], stage), sort_keys=True)


def dataset_inputs(*roles):
    """The prepared index of each user dataset the model's calibration/evaluation reads."""

    def inputs(wildcards):
        spec = SPECS[wildcards.model]
        names = {spec[role]["dataset"] for role in roles}
        return [f"results/datasets/{d}/index.json" for d in sorted(names) if d not in DATASETS]

    return inputs


def quantized(wildcards):
    """The quantised model a target builds."""
    return f"results/{wildcards.model}/quant/{recipe_of(wildcards.model, wildcards.target)}.onnx"


def target_layers(wildcards):
    return f"results/{wildcards.model}/eval/{recipe_of(wildcards.model, wildcards.target)}.layers.json"


def run_files(model):
    """{target: {name: path}}: the stage reports and artifacts of each MLflow run of a model
    (names as in npuflow.track.ARTIFACTS)."""
    d = f"results/{model}"
    runs = {}
    for target in SPECS[model]["targets"]:
        recipe = recipe_of(model, target)
        runs[target] = {
            "manifest": f"{d}/fetch/manifest.json",
            "export": f"{d}/export.json",
            "simplify": f"{d}/simplify.json",
            "surgery": f"{d}/surgery.json",
            "calibration": f"{d}/calibration.json",
            "quantize": f"{d}/quant/{recipe}.json",
            "build": f"{d}/build/{target}/build.json",
            "trace": f"{d}/build/{target}/trace.json",
            "build_summary": f"{d}/build/{target}/summary.txt",
            "evaluate": f"{d}/eval/{recipe}.json",
            "onnx_float": f"{d}/model.onnx",
            "onnx_sim": f"{d}/model.sim.onnx",
            "onnx_surgery": f"{d}/model.surgery.onnx",
            "onnx_quant": f"{d}/quant/{recipe}.onnx",
            "plot": f"{d}/plots/latency.png",
            "layers": f"{d}/quant/{target}.layers.csv",
        }
        if searched(model, target):
            runs[target]["mixed"] = f"{d}/mixed/{target}.json"
    return runs


def track_inputs(wildcards):
    return {f"{target}.{name}": path for target, files in run_files(wildcards.model).items() for name, path in files.items()}


def profile_json(wildcards):
    return json.dumps(TARGET_PROFILES.get(wildcards.target), sort_keys=True)
