"""The commands that log and present results: init-mlflow and track (MLflow), plot, report and audit."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    add_model_arguments,
    add_outputs,
    command,
    input_dir,
    input_file,
    json_object,
    model_spec_of,
)


@command
class InitMlflow(Command):
    name = "init-mlflow"
    help = "create the tracking store and the experiment, once, before any logging job"

    def add_arguments(self, p):
        p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
        p.add_argument("--experiment", required=True, help="experiment name")
        add_outputs(p, out="the store record (JSON) to write")

    def run(self, args):
        from npuflow.tracking.store import init_store
        from npuflow.tracking.uri import tracking_uri

        return init_store(uri=tracking_uri(args.tracking_uri, "--tracking-uri"), experiment=args.experiment, out_json=args.out).to_json()


@command
class Track(Command):
    name = "track"
    help = "log (or reuse) the MLflow run of each (model, target) of one model"

    def add_arguments(self, p):
        add_model_arguments(p)
        p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
        p.add_argument("--experiment", required=True, help="experiment name (created by init-mlflow)")
        p.add_argument(
            "--files", required=True, type=json_object, help="JSON {target: {name: path}}: the stage reports and artifacts of each run"
        )
        add_outputs(p, out="the runs record (JSON) to write")

    def run(self, args):
        from npuflow.tracking.track import log_model_runs
        from npuflow.tracking.uri import tracking_uri

        report = log_model_runs(
            uri=tracking_uri(args.tracking_uri, "--tracking-uri"),
            experiment=args.experiment,
            spec=model_spec_of(args),
            runs=args.files,
            out_json=args.out,
        )
        return report.to_json()


@command
class Plot(Command):
    name = "plot"
    help = "a model's simulated latency breakdown (by unit and op type) over its targets, as PNG"

    def add_arguments(self, p):
        p.add_argument("--model", required=True, help="the model's name (the plot's title)")
        p.add_argument("--files", required=True, type=json_object, help="JSON {target: {name: path}} with each target's build and trace")
        add_outputs(p, out="the PNG to write")

    def run(self, args):
        from npuflow.report.plots import plot_model

        plot_model(model=args.model, runs=args.files, out_png=args.out)
        return {"plot": args.out}


@command
class Report(Command):
    name = "report"
    help = "summary.csv and report.html over all (model, target) pairs"
    description = (
        "summary.csv and report.html over all (model, target) pairs; a pair whose chain of stage outputs is "
        "incomplete is marked failed at the first missing one, with that stage's log."
    )

    def add_arguments(self, p):
        p.add_argument(
            "--pair",
            action="append",
            default=[],
            required=True,
            type=json_object,
            metavar="JSON",
            help='one (model, target), as npuflow.pipeline.plan.Pair writes it: {"model": …, "target": …, "recipe": …, "base_recipe": …, "datasets": […]}',
        )
        p.add_argument("--plots-dir", help="also write pareto.<target>.png here")
        p.add_argument(
            "--mlflow-ui",
            default="http://127.0.0.1:5000",
            help="the MLflow UI the run links open, for a local store (default: %(default)s)",
        )
        p.add_argument(
            "--published",
            type=input_file,
            help="published device measurements to show beside the simulated figures (the CSV sim-fit fits to)",
        )
        p.add_argument(
            "--target-profiles",
            type=json_object,
            default="{}",
            help="the config's own target_profiles as JSON (which ops a recipe can move to the NPU)",
        )
        p.add_argument(
            "--partial",
            action="store_true",
            help="the report of a run that stopped early (the workflow's error handler's): the page says so",
        )
        p.add_argument(
            "--replaces",
            action="append",
            default=[],
            metavar="PATH",
            help="a partial report this one replaces: removed once this one is written",
        )
        p.add_argument(
            "--complete",
            metavar="PATH",
            help="written last, once every file of the report is: the workflow's mark that the report is complete",
        )
        add_outputs(p, csv="summary CSV to write", html="report HTML to write")

    def run(self, args):
        from pathlib import Path

        from npuflow.core.layout import STAGES
        from npuflow.pipeline.plan import Pair, resolve_pair
        from npuflow.report import report

        rows = report(
            pairs=[resolve_pair(Pair.from_dict(p)) for p in args.pair],
            out_csv=args.csv,
            out_html=args.html,
            plots_dir=args.plots_dir,
            mlflow_ui=args.mlflow_ui,
            published_csv=args.published,
            target_profiles=args.target_profiles,
            partial=args.partial,
        )
        for stale in args.replaces:
            Path(stale).unlink(missing_ok=True)
        summary = {
            "rows": len(rows),
            "failed": [f"{r.model}:{r.target} at {r.failed_stage}" for r in rows if not r.ok],
            "csv": args.csv,
            "html": args.html,
        }
        if not args.partial and Path(args.csv) == Path(STAGES.report.output("csv")):
            # the report just written, read back against the stage reports it comes from (not the
            # MLflow runs: reading them costs ~5 s a report; `npuflow audit` does)
            from npuflow.report.audit import audit

            checked, problems = audit(".", published_csv=args.published, mlflow=False, target_profiles=args.target_profiles)
            for line in problems:
                print(f"WARNING: audit: {line}", flush=True)
            summary["audit"] = {"rows_checked": checked, "disagreements": problems}
        if args.complete:
            from npuflow.util.io import write_json

            write_json(args.complete, summary)
        return summary


@command
class Audit(Command):
    name = "audit"
    help = "check every figure of a run (summary.csv, report.html, its MLflow runs) against the stage reports it comes from"
    description = (
        "Reads the stage reports of every ok row of RUN_DIR/results/summary.csv again and checks that summary.csv, "
        "report.html (each row's latency, FPS and cosine; the per-layer captions' image counts) and the MLflow runs' "
        "metrics show what they give; prints each disagreement and exits 2 if there is one."
    )

    def add_arguments(self, p):
        p.add_argument(
            "run_dir", nargs="?", default=".", type=input_dir, help="the folder the run ran in, holding results/ (default: here)"
        )
        p.add_argument("--config", type=input_file, help="the run's config file (its own target_profiles, if any)")
        p.add_argument("--published", type=input_file, help="the published measurements the report was given: its columns are checked too")
        p.add_argument("--no-mlflow", action="store_true", help="leave the MLflow runs out")

    def run(self, args):
        from npuflow.pipeline.config import load_config
        from npuflow.report.audit import audit
        from npuflow.util.errors import NpuflowError

        profiles = load_config(args.config).get("target_profiles", {}) if args.config else {}
        checked, problems = audit(args.run_dir, published_csv=args.published, mlflow=not args.no_mlflow, target_profiles=profiles)
        for line in problems:
            print(line, flush=True)
        if problems:
            raise NpuflowError(f"{len(problems)} disagreements with the stage reports, over {checked} rows (listed above)")
        return {"rows_checked": checked, "disagreements": 0}
