"""npuflow's analytical NPU simulator (the build stage): the quantised graph as the NPU sees it
(`graph`), fusion patterns (`patterns`), unit mapping and fusion (`passes`), the cost model
(`cost`), a build's two halves (`analysis`: analyse, simulate), the stage itself (`build`) and its
renderers (`render`). The fit to published measurements and its validation live in `fit`,
`published` and `validate`. All figures are simulations, never measurements."""

from npuflow.sim.analysis import Analysis, Simulation, analyse, frames_per_s, simulate

__all__ = ["Analysis", "Simulation", "analyse", "frames_per_s", "simulate"]
