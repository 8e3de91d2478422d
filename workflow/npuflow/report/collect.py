"""The report's rows: one per (model, target), read from the stage reports of its MLflow run, or
marked failed at the first stage of its chain (npuflow.pipeline.plan.Pair.chain) whose output is missing,
with that stage's log."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from npuflow.core.records import (
    BuildReport,
    CalibrationReport,
    EvalReport,
    ExportReport,
    LayerAnalysis,
    Manifest,
    MixedReport,
    QuantReport,
    RunRecord,
    TrackReport,
)
from npuflow.evaluation.layers import read_layers_csv
from npuflow.pipeline.plan import Pair

# A target's CPU fallback is called out when it takes at least this share of the simulated time.
CPU_DOMINATES = 0.5


@dataclass(frozen=True)
class Published:
    """A published device measurement of the row's model on its target (the simulator's fit data)."""

    metric: str  # latency_ms (batch 1) | fps (at the row's batch)
    batch: int
    value: float
    simulated: float
    source: str

    @property
    def error_pct(self) -> float:
        return 100 * (self.simulated / self.value - 1)


@dataclass(frozen=True)
class CpuFallback:
    """What of a build runs on the host CPU: its share of the simulated time and its op types, and
    the op types a recipe can move to an NPU unit (a float op runs on the CPU; in int16 it runs on
    the unit that runs its type)."""

    share: float
    op_types: dict[str, int]  # op type -> CPU ops of that type
    movable: tuple[str, ...]  # op types an NPU unit of the target runs
    target: str

    @property
    def dominates(self) -> bool:
        return self.share >= CPU_DOMINATES

    def recipe(self) -> str:
        """The model entry's change that moves the movable op types onto the NPU, in int16."""
        ops = ", ".join(f"{op}: int16" for op in self.movable)
        return f"precision: {{{self.target}: {{op_types: {{{ops}}}}}}}"


@dataclass
class Row:
    model: str
    target: str
    status: str = "ok"  # ok | failed | not run
    failed_stage: str = ""
    log: str = ""
    files: dict[str, str] = field(default_factory=dict)
    run: RunRecord | None = None
    experiment_id: str = ""
    tracking_uri: str = ""
    manifest: Manifest | None = None
    calibration: CalibrationReport | None = None
    export: ExportReport | None = None
    quant: QuantReport | None = None
    build: BuildReport | None = None
    evaluate: EvalReport | None = None
    analysis: LayerAnalysis | None = None
    mixed: MixedReport | None = None
    worst_layer: dict | None = None
    published: list[Published] = field(default_factory=list)
    cpu: CpuFallback | None = None
    pareto: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def figure(self, key: str):
        """A figure of the row by its metric name (None where it does not apply)."""
        if not self.ok:
            return None
        if key in self.evaluate.metrics:
            return self.evaluate.metrics[key]
        return getattr(self.build, key, None)


# ------------------------------------------------------------------------------------ failures
def first_missing(pair: Pair) -> tuple[str, str] | None:
    """(stage, log) of the first stage of the pair's chain with a missing output, or None."""
    for step in pair.chain():
        if not all(Path(p).exists() for p in step.outputs):
            return step.stage, step.log
    return None


def failed_row(pair: Pair, stage: str, log: str) -> Row:
    # A stage whose job ran and failed leaves its log; one that never started (an earlier stage
    # failed, or Snakemake stopped) leaves none.
    status = "failed" if Path(log).exists() else "not run"
    return Row(pair.model, pair.target, status=status, failed_stage=stage, log=log)


# ------------------------------------------------------------------------------- the good rows
def worst_layers(rows: list[dict], n: int = 10) -> list[dict]:
    """The n ranked layers furthest from float (`npuflow.evaluation.layers.ranked`): lowest SQNR (cosine
    where a row has no SQNR)."""
    from npuflow.evaluation.layers import ranked

    def badness(r):
        s, c = r.get("sqnr_db"), r.get("cosine")
        if isinstance(s, float) and not math.isnan(s):
            return (0, s)
        if isinstance(c, float) and not math.isnan(c):
            return (1, c)
        return (2, 0.0)

    return sorted((r for r in ranked(rows) if badness(r)[0] < 2), key=badness)[:n]


def cpu_fallback(build: BuildReport, trace: dict, profile: dict | None) -> CpuFallback | None:
    """The CPU's part of a build, from its trace's cpu lane; None when nothing runs there."""
    lanes = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("ph") == "M" and e.get("name") == "thread_name"}
    on_cpu = Counter(e["name"].split("+")[0] for e in trace["traceEvents"] if e.get("ph") == "X" and lanes.get(e.get("tid")) == "cpu")
    if not on_cpu:
        return None
    npu_ops = {op for u, spec in (profile or {}).get("units", {}).items() if u != "cpu" for op in spec.get("ops", [])}
    movable = tuple(op for op in on_cpu if op in npu_ops)
    return CpuFallback(share=build.unit_share.get("cpu", 0.0), op_types=dict(on_cpu), movable=movable, target=build.target)


def published_figures(build: BuildReport, source: str, shape: list[int], published: list) -> list[Published]:
    """The published measurements of this model (its timm architecture, whatever its pretrained
    tag: `efficientvit_m0.r224_in1k` is the CSV's `efficientvit_m0`; or its `<source>:` name, at
    its input size) on this target: latency at batch 1, FPS at the simulated batch or at batch 1."""
    name = _architecture(source)
    hw = (shape[2], shape[3])
    out = []
    for p in published:
        if p.target != build.target or _architecture(p.name) != name or tuple(p.hw) != hw:
            continue
        if p.metric == "latency_ms" and p.batch == 1:
            out.append(Published("latency_ms", 1, p.value, build.latency_ms, p.source))
        elif p.metric == "fps" and p.batch == build.batch:
            out.append(Published("fps", p.batch, p.value, build.fps, p.source))
        elif p.metric == "fps" and p.batch == 1:
            out.append(Published("fps", 1, p.value, build.fps_batch1, p.source))
    return out


def _architecture(name: str) -> str:
    """A timm name without its scheme and pretrained tag (`timm:resnet18.a1_in1k` → `resnet18`);
    other sources' names as they are."""
    scheme, sep, ref = name.partition(":")
    if sep and scheme != "timm":
        return name
    return (ref if sep else name).split(".", 1)[0]


def good_row(pair: Pair, track: TrackReport, published: list, profiles) -> Row:
    from npuflow.util.io import read_json

    run = track.runs[pair.target]
    files = run.files
    build = BuildReport.read(files["build"])
    manifest = Manifest.read(files["manifest"])
    row = Row(
        pair.model,
        pair.target,
        files=files,
        run=run,
        experiment_id=track.experiment_id,
        tracking_uri=track.tracking_uri,
        manifest=manifest,
        calibration=CalibrationReport.read(files["calibration"]) if files.get("calibration") else None,
        export=ExportReport.read(files["export"]),
        quant=QuantReport.read(files["quantize"]),
        build=build,
        evaluate=EvalReport.read(files["evaluate"]),
        analysis=LayerAnalysis.read(files["analysis"]) if files.get("analysis") and Path(files["analysis"]).exists() else None,
        mixed=MixedReport.read(files["mixed"]) if files.get("mixed") and Path(files["mixed"]).exists() else None,
    )
    if files.get("layers") and Path(files["layers"]).exists():
        worst = worst_layers(read_layers_csv(files["layers"]), 1)
        row.worst_layer = worst[0] if worst else None
    row.published = published_figures(build, manifest.source, row.export.input_shape, published)
    profile = profiles.get(pair.target) if pair.target in profiles else None
    row.cpu = cpu_fallback(build, read_json(files["trace"]), profile)
    return row


def collect(pairs: list[Pair], published: list | None = None, profiles=None) -> list[Row]:
    """One row per pair, in the pairs' order. Paths are the stage table's, under the working
    directory (the report runs where the workflow runs)."""
    from npuflow.core.layout import STAGES

    rows = []
    for pair in pairs:
        missing = first_missing(pair)
        if missing is None:
            track = TrackReport.read(STAGES.track.output("runs", model=pair.model))
            if pair.target not in track.runs:
                missing = ("track", STAGES.track.log_path(model=pair.model))
        if missing is not None:
            rows.append(failed_row(pair, *missing))
            continue
        rows.append(good_row(pair, track, published or [], profiles or {}))
    return rows
