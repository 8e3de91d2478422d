"""A profile's fit section: which of its values a fit may set (the rates the timing step reads),
how many, and checks of each declaration. npuflow.calibration.fit does the fitting."""

from __future__ import annotations

from npuflow.targets import get_path

MAX_PARAMETERS = 10
# Profile values the timing step reads (npuflow.sim.cost.costs): the only ones a fit may change,
# so the rate-independent analysis of a model stays valid for every trial value.
RATE_PATHS = (
    "units.tensor.efficiency",
    "units.tensor.w8a16_share",
    "units.tensor.tile.cin_grouped",
    "units.tensor.cout_lanes",
    "units.vector.efficiency",
    "units.dma.efficiency",
    "memory.efficiency",
    "memory.onchip_share",
    "overheads.op_s",
    "overheads.subgraph_s",
    "overheads.cpu_op_s",
)


def check_fit_parameters(profile: dict, where: str) -> list[str]:
    """Problems with a profile's declared parameters: count, unit, range, a value inside it."""
    params = profile.get("fit_parameters") or {}
    problems = []
    if len(params) > MAX_PARAMETERS:
        problems.append(f"{where}.fit_parameters: {len(params)} parameters, at most {MAX_PARAMETERS}")
    for path, spec in params.items():
        at = f"{where}.fit_parameters.{path}"
        if path not in RATE_PATHS:
            problems.append(f"{at}: not a rate the fit can set (one of {', '.join(RATE_PATHS)})")
            continue
        rng = spec.get("range") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not spec.get("unit") or not isinstance(rng, list) or len(rng) != 2 or not 0 < rng[0] < rng[1]:
            problems.append(f"{at}: expected {{unit: ..., range: [low, high]}} with 0 < low < high")
            continue
        value = get_path(profile, path)
        if not isinstance(value, (int, float)) or not rng[0] <= value <= rng[1]:
            problems.append(f"{at}: value {value!r} outside its range {rng}")
    return problems


def transferred(profile: dict, source_parameters: dict) -> dict:
    """The source's fitted values for the parameters this profile declares (all of them, also
    those it fits itself: they are its prior)."""
    return {p: v for p, v in source_parameters.items() if p in (profile.get("fit_parameters") or {})}
