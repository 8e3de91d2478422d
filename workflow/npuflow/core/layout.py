"""The pipeline's contract in one table: every stage with its rule, its `npuflow` command, its
outputs and log, the model-spec fields it reads and its memory estimate.

Everything else that names a stage's files derives from this table: the rules' outputs, logs and
benchmarks (workflow/rules/*.smk), the files of each MLflow run (`RUN_FILES`, with their artifact
paths), the report's failure chain (npuflow.pipeline.plan), the model names that would collide with other
entries of results/ (`reserved_names`), `config.STAGE_FIELDS`, the memory keys, and the tests'
fixtures. tests/test_layout.py checks every rule's jobs against it. Adding a stage or renaming an
output is one edit here, plus the stage's own code.

Patterns are paths relative to the working directory over the wildcards {model}, {target},
{recipe} (a precision recipe id) and {dataset}."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

RESULTS = "results"
# The recipe id of the quantised model that automatic mixed precision chose for a target.
MIXED_RECIPE = "mixed-{target}"


def _source_fields() -> tuple[str, ...]:
    from npuflow.sources.core import source_fields  # each registered source's own config fields

    return ("name", "source", "weights", "seed", "task", "input", *source_fields())


# What fetch reads of a model spec (the source and how to build it); export reads more.
SOURCE_FIELDS = _source_fields()


@dataclass(frozen=True)
class Stage:
    """One stage: a rule of that name that runs `npuflow <command>`."""

    name: str
    command: str | None
    outputs: dict[str, str]
    log: str
    # Its jobs time themselves into results/benchmarks/<stage>/… (the log's name, .tsv).
    benchmark: bool = True
    # The model-spec fields its jobs get (`--spec`): a change to one re-runs the stage. None: no spec.
    fields: tuple[str, ...] | None = None
    # The key of npuflow.pipeline.memory.MEASURED_PEAKS_MB its jobs' memory is estimated from (`mem_mb`).
    memory: str | None = None

    @property
    def benchmark_pattern(self) -> str | None:
        if not self.benchmark:
            return None
        log = PurePosixPath(self.log)
        return str(PurePosixPath(RESULTS, "benchmarks", *log.parts[2:]).with_suffix(".tsv"))

    def output(self, name: str, **wildcards) -> str:
        return self.outputs[name].format(**wildcards)

    def log_path(self, **wildcards) -> str:
        return self.log.format(**wildcards)

    def wildcards(self) -> set[str]:
        """The wildcards its outputs are over (a job of the stage is one value of each)."""
        import string

        return {f for p in self.outputs.values() for _, f, _, _ in string.Formatter().parse(p) if f}


class StageTable:
    """The stages in pipeline order, by name: `STAGES.fetch`, `STAGES["fetch"]`."""

    def __init__(self, stages: list[Stage]):
        self._stages = {s.name: s for s in stages}
        if len(self._stages) != len(stages):
            raise ValueError("two stages of one name")

    def __getitem__(self, name: str) -> Stage:
        return self._stages[name]

    def __getattr__(self, name: str) -> Stage:
        try:
            return self._stages[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[Stage]:
        return iter(self._stages.values())

    def __contains__(self, name: str) -> bool:
        return name in self._stages

    def names(self) -> list[str]:
        return list(self._stages)


def _model(*parts: str) -> str:
    return str(PurePosixPath(RESULTS, "{model}", *parts))


def _log(stage: str, name: str) -> str:
    return str(PurePosixPath(RESULTS, "logs", stage, name))


STAGES = StageTable(
    [
        Stage(
            "dataset",
            "dataset",
            {"index": f"{RESULTS}/datasets/{{dataset}}/index.json"},
            _log("dataset", "{dataset}.log"),
            benchmark=False,
        ),
        Stage(
            "fetch",
            "fetch",
            {"weights": _model("fetch", "weights.safetensors"), "manifest": _model("fetch", "manifest.json")},
            _log("fetch", "{model}.log"),
            fields=SOURCE_FIELDS,
        ),
        Stage(
            "export",
            "export",
            {"onnx": _model("model.onnx"), "report": _model("export.json")},
            _log("export", "{model}.log"),
            fields=SOURCE_FIELDS + ("opset", "reparameterize"),
            memory="export",
        ),
        Stage(
            "simplify",
            "simplify",
            {"onnx": _model("model.sim.onnx"), "report": _model("simplify.json")},
            _log("simplify", "{model}.log"),
            memory="simplify",
        ),
        Stage(
            "surgery",
            "surgery",
            {"onnx": _model("model.surgery.onnx"), "report": _model("surgery.json")},
            _log("surgery", "{model}.log"),
            fields=("name", "surgery"),
        ),
        Stage(
            "ptq",
            "ptq",
            {"onnx": _model("model.ptq.onnx"), "report": _model("ptq.json")},
            _log("ptq", "{model}.log"),
            fields=("name", "quantization", "calibration", "input", "seed"),
            memory="calibrate",
        ),
        # A checkpoint: which quantised model each of the model's recipes uses (recipes that resolve
        # to the same node precision share one); the jobs after it are planned from its map.
        Stage(
            "recipes",
            "recipes",
            {"map": _model("recipes.json")},
            _log("recipes", "{model}.log"),
            fields=("name",),
        ),
        Stage(
            "calibrate",
            "calibrate",
            {"ranges": _model("calibration.ranges.json"), "report": _model("calibration.json")},
            _log("calibrate", "{model}.log"),
            fields=("name", "calibration", "input", "seed"),
            memory="calibrate",
        ),
        Stage(
            "reference",
            "reference",
            {"npz": _model("eval", "reference.npz"), "report": _model("eval", "reference.json")},
            _log("reference", "{model}.log"),
            fields=("name", "task", "evaluation", "input", "seed"),
            memory="reference",
        ),
        Stage(
            "quantize",
            "quantize",
            {"onnx": _model("quant", "{recipe}.onnx"), "report": _model("quant", "{recipe}.json")},
            _log("quantize", "{model}.{recipe}.log"),
        ),
        Stage(
            "evaluate",
            "evaluate",
            {"report": _model("eval", "{recipe}.json")},
            _log("evaluate", "{model}.{recipe}.log"),
            fields=("name", "task", "evaluation"),
            # It runs the quantised model over the reference's images as reference runs the float one.
            memory="reference",
        ),
        # The per-layer precision analysis of a quantised model, apart from its evaluation: mixed
        # precision and the builds wait for it only, and it is what holds SegFormer's 7 GB.
        Stage(
            "analyse",
            "analyse",
            {"layers": _model("eval", "{recipe}.layers.json")},
            _log("analyse", "{model}.{recipe}.log"),
            fields=("name", "task", "evaluation"),
            memory="analyse",
        ),
        Stage(
            "mixed_precision",
            "mixed",
            {
                # The quantize stage's two outputs for the chosen recipe, and the trade-off curve.
                "onnx": _model("quant", f"{MIXED_RECIPE}.onnx"),
                "quant": _model("quant", f"{MIXED_RECIPE}.json"),
                "report": _model("mixed", "{target}.json"),
            },
            _log("mixed_precision", "{model}.{target}.log"),
            fields=("name", "task", "calibration", "input", "seed", "mixed_precision"),
            # Every step runs the per-layer comparison evaluation runs.
            memory="analyse",
        ),
        Stage(
            "build",
            "build",
            {
                "build": _model("build", "{target}", "build.json"),
                "trace": _model("build", "{target}", "trace.json"),
                "summary": _model("build", "{target}", "summary.txt"),
                "layers": _model("quant", "{target}.layers.csv"),
            },
            _log("build", "{model}.{target}.log"),
        ),
        Stage("plot", "plot", {"png": _model("plots", "latency.png")}, _log("plot", "{model}.log"), benchmark=False),
        Stage(
            "init_mlflow",
            "init-mlflow",
            {"store": f"{RESULTS}/mlflow.init.json"},
            f"{RESULTS}/logs/init_mlflow.log",
            benchmark=False,
        ),
        Stage(
            "track",
            "track",
            {"runs": _model("track.json")},
            _log("track", "{model}.log"),
            fields=("name", "task", "source", "input", "surgery"),
        ),
        Stage(
            "report",
            "report",
            {
                "csv": f"{RESULTS}/summary.csv",
                "html": f"{RESULTS}/report.html",
                "pareto": f"{RESULTS}/plots/pareto.{{target}}.png",  # one per target
                # Written last: the mark that the report is complete. A run that stops early removes
                # it (never the report itself), so that the next run makes the report again.
                "complete": f"{RESULTS}/report.complete.json",
            },
            f"{RESULTS}/logs/report.log",
            benchmark=False,
        ),
    ]
)

# Entries of results/ that are no stage's output: the embedded MLflow store and its artifacts
# (the default tracking URI), the checkpoint downloads of url: sources (fetch's cache), the
# preprocessed images, the onerror handler's report and its log, and `npuflow sim-validate`/`sim-fit`'s files.
MLFLOW_DB = f"{RESULTS}/mlflow.db"
MLARTIFACTS = f"{RESULTS}/mlartifacts"
DOWNLOADS = f"{RESULTS}/downloads"
IMAGE_CACHE = f"{RESULTS}/cache/images"
REPORT_ONERROR_LOG = f"{RESULTS}/logs/report.onerror.log"
# The report of what exists when a run stops early (the onerror handler's): never the report
# stage's own outputs, which would tell Snakemake the run is finished.
PARTIAL_REPORT = {"csv": f"{RESULTS}/summary.partial.csv", "html": f"{RESULTS}/report.partial.html"}
SIM_CACHE = f"{RESULTS}/sim-cache"
SIM_VALIDATE = f"{RESULTS}/sim-validate.json"
OTHER_ENTRIES = (MLFLOW_DB, MLARTIFACTS, DOWNLOADS, IMAGE_CACHE, REPORT_ONERROR_LOG, *PARTIAL_REPORT.values(), SIM_CACHE, SIM_VALIDATE)


def reserved_names() -> tuple[str, ...]:
    """The entries of results/ that are not model folders: a model of one of these names would
    write into them (results/mlflow.db/… would break the tracking store)."""
    paths = [p for s in STAGES for p in (*s.outputs.values(), s.log, s.benchmark_pattern) if p] + list(OTHER_ENTRIES)
    names = (PurePosixPath(p).parts[1] for p in paths)
    return tuple(dict.fromkeys(n for n in names if n != "{model}"))


@dataclass(frozen=True)
class RunFile:
    """A file of one (model, target)'s MLflow run: a stage output, where the run keeps it as an
    artifact (None: not an artifact), and whether its content keys the run (`hashed`)."""

    name: str
    stage: str
    output: str
    artifact: str | None
    hashed: bool = False
    # Only where automatic mixed precision chose the target's recipe.
    mixed_only: bool = False


RUN_FILES = (
    RunFile("manifest", "fetch", "manifest", "reports/manifest.json", hashed=True),
    RunFile("export", "export", "report", "reports/export.json", hashed=True),
    RunFile("simplify", "simplify", "report", "reports/simplify.json", hashed=True),
    RunFile("surgery", "surgery", "report", "reports/surgery.json", hashed=True),
    RunFile("ptq", "ptq", "report", "reports/ptq.json", hashed=True),
    RunFile("calibration", "calibrate", "report", "reports/calibration.json", hashed=True),
    RunFile("reference", "reference", "report", "reports/reference.json", hashed=True),
    # {recipe} is the quantised model the target builds: for mixed-<target>, mixed_precision's
    # `onnx` and `quant` outputs have these very paths.
    RunFile("quantize", "quantize", "report", "reports/quantize.json", hashed=True),
    RunFile("build", "build", "build", "reports/build.json", hashed=True),
    RunFile("trace", "build", "trace", "reports/trace.json"),
    RunFile("build_summary", "build", "summary", "reports/build_summary.txt"),
    RunFile("evaluate", "evaluate", "report", "reports/evaluate.json", hashed=True),
    RunFile("analysis", "analyse", "layers", "reports/analysis.json", hashed=True),
    RunFile("layers", "build", "layers", "precision/layers.csv", hashed=True),
    RunFile("mixed", "mixed_precision", "report", "precision/mixed_precision.json", hashed=True, mixed_only=True),
    RunFile("plot", "plot", "png", "plots/latency.png"),
    RunFile("onnx_float", "export", "onnx", "onnx/model.onnx"),
    RunFile("onnx_sim", "simplify", "onnx", "onnx/model.sim.onnx"),
    RunFile("onnx_surgery", "surgery", "onnx", "onnx/model.surgery.onnx"),
    # The quantised model is the run's logged model, not a plain artifact.
    RunFile("onnx_quant", "quantize", "onnx", None),
)
ARTIFACTS = {f.name: f.artifact for f in RUN_FILES if f.artifact}
HASHED = tuple(f.name for f in RUN_FILES if f.hashed)


def run_files(model: str, target: str, recipe: str, mixed: bool) -> dict[str, str]:
    """{name: path} of the files of the (model, target) run whose quantised model is `recipe`."""
    wildcards = {"model": model, "target": target, "recipe": recipe}
    return {f.name: STAGES[f.stage].output(f.output, **wildcards) for f in RUN_FILES if mixed or not f.mixed_only}


def relocate(path: str, root: str | Path) -> Path:
    """A results/… path under another results folder (the tests' stage fixtures)."""
    return Path(root) / PurePosixPath(path).relative_to(RESULTS)
