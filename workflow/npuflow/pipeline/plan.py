"""What the workflow decides while Snakemake reads it, as plain functions of the validated config:
the (model, target) pairs, the precision recipe each target builds (its profile's, with the model's
changes, or the one automatic mixed precision chooses), the user datasets a model reads, the files
of each MLflow run, and the chain of stages behind each pair (the report names the first one whose
output is missing). workflow/rules/common.smk only wires these to the rules; tests/test_plan.py
checks them without Snakemake.

A recipe is identified by what it does to the model, not by its spelling: the `recipes` checkpoint
resolves each of a model's recipes to its node precision map after surgery (`recipe_identity`),
and recipes that resolve alike use one quantised model (`shared_recipes`). Until a model's map
exists, each recipe stands for itself (the plan of a dry run in a fresh folder)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace

from npuflow.core.layout import MIXED_RECIPE, RESULTS, STAGES, run_files
from npuflow.graph.precision import merge_recipe, recipe_id
from npuflow.pipeline.memory import job_mem_mb
from npuflow.pipeline.spec import model_spec, stage_spec
from npuflow.targets import load_targets


def mixed_recipe_id(target: str) -> str:
    return MIXED_RECIPE.format(target=target)


# The parts of a model spec, beside its recipe, that change the quantised model a recipe makes
# (quantisation settings that can differ per recipe would join here).
IDENTITY_FIELDS: tuple[str, ...] = ()


def recipe_identity(node_precision: dict[str, str], recipe: dict, spec: dict | None = None) -> str:
    """What makes two quantised models of one model the same: the data type the recipe resolves
    each node to, the recipe's default activation type and weight granularity (a target may ask
    for per-tensor weights), and the spec's IDENTITY_FIELDS."""
    key = {"default": recipe.get("default", "int8"), "weights": recipe.get("weights", "int8"), "nodes": node_precision}
    key["granularity"] = recipe.get("weight_granularity")
    key.update({f: (spec or {}).get(f) for f in IDENTITY_FIELDS})
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def shared_recipes(identities: dict[str, str]) -> dict[str, str]:
    """{recipe id: the recipe id whose quantised model it uses}: of the recipes of one identity,
    the shortest id (then the first alphabetically), so the file names stay the simplest."""
    chosen: dict[str, str] = {}
    for rid in sorted(identities, key=lambda r: (len(r), r)):
        chosen.setdefault(identities[rid], rid)
    return {rid: chosen[identity] for rid, identity in identities.items()}


@dataclass(frozen=True)
class ChainStep:
    """A job behind a pair: its stage, its outputs and its log (concrete paths)."""

    stage: str
    outputs: tuple[str, ...]
    log: str


@dataclass(frozen=True)
class Pair:
    """One (model, target): its MLflow run, its row in the report."""

    model: str
    target: str
    recipe: str  # id of the quantised model the target builds
    base_recipe: str  # id of the target's own recipe for the model (where mixed precision starts)
    datasets: tuple[str, ...] = ()  # the user datasets the model reads (calibration, evaluation)

    @property
    def mixed(self) -> bool:
        """Whether automatic mixed precision chose the recipe this target builds."""
        return self.recipe != self.base_recipe

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "target": self.target,
                "recipe": self.recipe,
                "base_recipe": self.base_recipe,
                "datasets": list(self.datasets),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Pair:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict) -> Pair:
        return cls(d["model"], d["target"], d["recipe"], d.get("base_recipe", d["recipe"]), tuple(d.get("datasets", ())))

    def run_files(self) -> dict[str, str]:
        return run_files(self.model, self.target, self.recipe, self.mixed)

    def chain(self) -> list[ChainStep]:
        """Every job the pair's MLflow run waits for, in pipeline order: its datasets, the model's
        front stages and recipe map, quantisation, evaluation (unless mixed precision chooses) and
        per-layer analysis of the model the target's own recipe uses, then (where mixed precision chooses) the search and the
        evaluation and analysis of its choice, the build, the plot, the store and the logging job."""
        steps = [("dataset", {"dataset": d}) for d in self.datasets]
        steps += [(s, {}) for s in ("fetch", "export", "simplify", "surgery", "ptq", "recipes", "calibrate", "reference")]
        # the search reads the base model and its analysis, not its evaluation
        base_stages = ("quantize", "analyse") if self.mixed else ("quantize", "evaluate", "analyse")
        steps += [(s, {"recipe": self.base_recipe}) for s in base_stages]
        if self.mixed:
            steps += [("mixed_precision", {}), ("evaluate", {"recipe": self.recipe}), ("analyse", {"recipe": self.recipe})]
        steps += [("build", {}), ("plot", {}), ("init_mlflow", {}), ("track", {})]
        out = []
        for name, extra in steps:
            stage = STAGES[name]
            wildcards = {"model": self.model, "target": self.target, **extra}
            out.append(ChainStep(name, tuple(p.format(**wildcards) for p in stage.outputs.values()), stage.log_path(**wildcards)))
        return out


class Plan:
    """The validated config's decisions (config.validate_config has filled its defaults)."""

    def __init__(self, config: dict, recipe_maps: str | None = RESULTS):
        self.config = config
        self.specs = {name: model_spec(config, name) for name in config["models"]}
        self.targets = load_targets(config["target_profiles"])
        self.recipe_maps = recipe_maps
        # Snakemake asks for the same recipes and maps thousands of times while it builds the DAG.
        self._base_recipes: dict[tuple[str, str], tuple[dict, str]] = {}
        self._maps: dict[str, tuple[tuple[int, int] | None, dict[str, str]]] = {}

    # ------------------------------------------------------------------ recipe identity
    def model_recipes(self, model: str) -> dict[str, dict]:
        """{id: recipe} of the model's targets' own recipes (what its `recipes` checkpoint resolves)."""
        return {self.base_recipe_id(model, t): self.base_recipe(model, t) for t in self.specs[model]["targets"]}

    def shared(self, model: str) -> dict[str, str]:
        """{recipe id: the recipe id whose quantised model it uses}, from the model's recipe map
        (the `recipes` checkpoint, under `recipe_maps`); before the map exists, each its own."""
        from npuflow.core.records import RecipeMap

        uses = {}
        if self.recipe_maps is not None:  # None: plan as before any map
            path = os.path.join(self.recipe_maps, os.path.relpath(STAGES.recipes.output("map", model=model), RESULTS))
            try:
                st = os.stat(path)
                version = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                version = None
            cached = self._maps.get(path)
            if cached is None or cached[0] != version:  # the checkpoint has written it (anew)
                cached = self._maps[path] = (version, RecipeMap.read(path).uses if version else {})
            uses = cached[1]
        return {rid: uses.get(rid, rid) for rid in self.model_recipes(model)}

    def used_recipe(self, model: str, target: str) -> str:
        """The id of the quantised model the target's own recipe uses."""
        rid = self.base_recipe_id(model, target)
        return self.shared(model).get(rid, rid)

    # ------------------------------------------------------------------ recipes
    def base_recipe(self, model: str, target: str) -> dict:
        """The target profile's precision recipe with the model's own changes for that target
        (one object per pair, which callers read and do not change)."""
        return self._recipe_and_id(model, target)[0]

    def base_recipe_id(self, model: str, target: str) -> str:
        """`recipe_id` of `base_recipe`."""
        return self._recipe_and_id(model, target)[1]

    def _recipe_and_id(self, model: str, target: str) -> tuple[dict, str]:
        if (model, target) not in self._base_recipes:
            recipe = self._merged_recipe(model, target)
            self._base_recipes[model, target] = (recipe, recipe_id(recipe))
        return self._base_recipes[model, target]

    def model_precision(self, model: str, target: str) -> dict | None:
        """The model's `precision:` change for a target: keyed by the target, else by the nearest
        target it derives from (`precision: {rdk-x5: …}` follows a profile with `base: rdk-x5`)."""
        given = self.specs[model].get("precision") or {}
        for name in [target, *self.targets.get(target).get("derived_from", [])]:
            if name in given:
                return given[name]
        return None

    def _merged_recipe(self, model: str, target: str) -> dict:
        recipe = merge_recipe(self.targets.get(target).get("precision"), self.model_precision(model, target))
        # a chip whose quantiser takes one scale per weight tensor (its profile's quantization.weights)
        if (self.targets.get(target).get("quantization") or {}).get("weights") == "per_tensor":
            recipe = {**recipe, "weight_granularity": "per_tensor"}
        return recipe

    def searched(self, model: str, target: str) -> bool:
        """Whether automatic mixed precision chooses this (model, target)'s recipe."""
        mp = self.specs[model].get("mixed_precision")
        return mp is not None and target in mp.get("targets", self.specs[model]["targets"])

    def recipe_of(self, model: str, target: str) -> str:
        """The id of the quantised model a target builds: its recipe's, or mixed-<target>."""
        return mixed_recipe_id(target) if self.searched(model, target) else self.used_recipe(model, target)

    def recipes(self) -> dict[str, dict]:
        """The recipes the quantize stage runs, by id: targets (of any model) with the same recipe
        share one quantised model."""
        return {self.base_recipe_id(m, t): self.base_recipe(m, t) for m, t in self.model_targets()}

    def recipe_ids(self) -> list[str]:
        """Every quantised model's id: the recipes', and mixed precision's choice for any target."""
        return list(self.recipes()) + [mixed_recipe_id(t) for t in self.targets.names()]

    # ------------------------------------------------------------------ pairs
    def model_targets(self) -> list[tuple[str, str]]:
        return [(m, t) for m, spec in self.specs.items() for t in spec["targets"]]

    def user_datasets(self, model: str, roles: tuple[str, ...] = ("calibration", "evaluation")) -> list[str]:
        """The datasets under `datasets:` the model's calibration and/or evaluation read (the
        built-in `samples` needs no preparing)."""
        spec = self.specs[model]
        return sorted({spec[role]["dataset"] for role in roles} & set(self.config["datasets"]))

    def pair(self, model: str, target: str) -> Pair:
        base = self.used_recipe(model, target)
        return Pair(model, target, self.recipe_of(model, target), base, tuple(self.user_datasets(model)))

    def pairs(self) -> list[Pair]:
        return [self.pair(m, t) for m, t in self.model_targets()]

    def unresolved_pairs(self) -> list[Pair]:
        """The pairs as planned before any recipe map (each recipe its own model), which
        `resolve_pair` settles where the job runs. The report job takes these: a job that
        aggregates every model must not wait on a checkpoint, as Snakemake (9.27) runs no job that
        waits on a missing checkpoint's output when the job's own outputs exist, so a model added to
        a finished folder would be left out; its command line stays the same once the maps exist."""
        return Plan(self.config, recipe_maps=None).pairs()

    # ------------------------------------------------------------------ files of the rules
    def dataset_indexes(self, model: str, roles: tuple[str, ...]) -> list[str]:
        return [STAGES.dataset.output("index", dataset=d) for d in self.user_datasets(model, roles)]

    def quantized(self, model: str, target: str) -> str:
        """The quantised model a target builds."""
        return STAGES.quantize.output("onnx", model=model, recipe=self.recipe_of(model, target))

    def build_layers(self, model: str, target: str) -> str:
        """The precision analysis of the quantised model the target builds."""
        return STAGES.analyse.output("layers", model=model, recipe=self.recipe_of(model, target))

    def base_layers(self, model: str, target: str) -> str:
        """The precision analysis of the target's own recipe, which mixed precision starts from."""
        return STAGES.analyse.output("layers", model=model, recipe=self.used_recipe(model, target))

    def base_quantized(self, model: str, target: str) -> str:
        """The quantised model of the target's own recipe (mixed precision's first step)."""
        return STAGES.quantize.output("onnx", model=model, recipe=self.used_recipe(model, target))

    def run_files(self, model: str) -> dict[str, dict[str, str]]:
        """{target: {name: path}}: the stage reports and artifacts of each MLflow run of a model
        (names: npuflow.core.layout.RUN_FILES)."""
        return {p.target: p.run_files() for p in self.pairs() if p.model == model}

    # ------------------------------------------------------------------ params of the rules
    def spec_json(self, model: str, stage: str) -> str:
        """The part of the model spec a stage reads: a changed field re-runs the jobs of that model
        that read it (Snakemake's params trigger), and nothing else."""
        return json.dumps(stage_spec(self.specs[model], stage), sort_keys=True)

    def profile_json(self, target: str) -> str:
        return json.dumps(self.targets.get(target), sort_keys=True)

    def model_recipes_json(self, model: str) -> str:
        return json.dumps(self.model_recipes(model), sort_keys=True)

    def recipe_json(self, recipe: str) -> str:
        return json.dumps(self.recipes()[recipe], sort_keys=True)

    def base_recipe_json(self, model: str, target: str) -> str:
        return json.dumps(self.base_recipe(model, target), sort_keys=True)

    def job_mem_mb(self, stage: str, model: str) -> int:
        return job_mem_mb(stage, self.specs[model])


def resolve_pair(pair: Pair, recipe_maps: str = RESULTS) -> Pair:
    """The pair with its recipes as its model's recipe map shares them (unchanged where the map
    does not exist yet: its stages have not run)."""
    from npuflow.core.records import RecipeMap

    path = os.path.join(recipe_maps, os.path.relpath(STAGES.recipes.output("map", model=pair.model), RESULTS))
    if not os.path.exists(path):
        return pair
    uses = RecipeMap.read(path).uses
    base = uses.get(pair.base_recipe, pair.base_recipe)
    return replace(pair, recipe=pair.recipe if pair.mixed else base, base_recipe=base)
