"""A build's two halves: `analyse` (graph, unit mapping, fusion, demands: everything the fitted
rates do not change) and `simulate` (the demands timed with a profile's rates, batch 1 or N)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from npuflow.graph.opgraph import Graph
from npuflow.sim.cost import Costs, Demands, costs, demands
from npuflow.sim.passes import Mapping, map_graph


@dataclass
class Analysis:
    mapping: Mapping
    demands: Demands
    recipe: dict  # the precision recipe the build ran with (the model's, else the profile's)

    @property
    def graph(self) -> Graph:
        return self.mapping.graph

    @property
    def ops(self):
        return self.mapping.ops


@dataclass
class Simulation:
    analysis: Analysis
    batch: int
    costs: Costs

    @property
    def total_s(self) -> float:
        return self.costs.total_s


def model_recipe(model, profile: dict) -> dict:
    from npuflow.graph.precision import DEFAULT_RECIPE

    carried = next((p.value for p in model.metadata_props if p.key == "npuflow.recipe"), None)
    return json.loads(carried) if carried else profile.get("precision", DEFAULT_RECIPE)


def analyse(model, profile: dict, graph: Graph | None = None, recipe: dict | None = None) -> Analysis:
    """The rate-independent part of a build. The node precision is the one the quantised model
    carries, else `recipe` (default: the profile's) resolved here. `graph` may be shared between
    targets: the mapping never changes it."""
    from npuflow.graph.precision import embedded_precision, resolve_precision, weight_dtype

    graph = graph or Graph(model)
    node_precision = embedded_precision(model)
    if node_precision is None:
        recipe = recipe if recipe is not None else profile.get("precision", {"default": "int8"})
        node_precision = resolve_precision(model, recipe, graph=graph)
    else:
        recipe = model_recipe(model, profile)
    mapping = map_graph(graph, profile, node_precision)
    return Analysis(mapping, demands(mapping, profile, weight_dtype(recipe)), recipe)


def simulate(analysis: Analysis, profile: dict, batch: int = 1) -> Simulation:
    """One batch of `batch` frames on one core, timed with the profile's rates."""
    return Simulation(analysis, batch, costs(analysis.demands, profile, batch))


def frames_per_s(sim: Simulation, profile: dict) -> float:
    """Throughput: a chip with several NPU cores runs one stream of batches on each."""
    return int(profile.get("cores", 1)) * sim.batch / sim.total_s
