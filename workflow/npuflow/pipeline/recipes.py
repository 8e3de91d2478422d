"""Stage recipes (a Snakemake checkpoint): each of a model's precision recipes resolved on the
model after surgery, and which quantised model each uses. Two recipes that give every node the
same type (a j5 recipe's int16 LayerNorm on a model without LayerNorm, say) make the same model:
it is quantised, evaluated and analysed once, and both targets build it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from npuflow.core.records import RecipeMap
from npuflow.graph.precision import resolve_precision
from npuflow.pipeline.plan import recipe_identity, shared_recipes
from npuflow.util.onnxutil import load
from npuflow.util.progress import log


def recipe_map(model_onnx: str | Path, *, recipes: dict[str, dict], spec: dict, out_json: str | Path) -> dict:
    start = time.perf_counter()
    model = load(model_onnx)
    identities, dtypes = {}, {}
    for rid, recipe in recipes.items():
        precision = resolve_precision(model, recipe, where=f"{spec['name']}: precision recipe {rid}")
        identities[rid] = recipe_identity(precision, recipe, spec)
        dtypes[rid] = dict(Counter(precision.values()))
    uses = shared_recipes(identities)
    for rid, used in uses.items():
        if used != rid:
            log(f"recipe {rid} resolves on {spec['name']} as {used} does: it uses {used}'s quantised model")
    report = RecipeMap(model=spec["name"], identities=identities, uses=uses, node_dtypes=dtypes)
    report.write(out_json)
    log(f"{len(recipes)} recipe(s), {len(set(uses.values()))} quantised model(s), {time.perf_counter() - start:.1f} s")
    return report.to_json()
