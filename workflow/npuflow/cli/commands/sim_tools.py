"""The simulator against published measurements: sim-validate and sim-fit."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    command,
    input_file,
    user_profiles,
)


@command
class SimValidate(Command):
    name = "sim-validate"
    help = "predict published device measurements with the simulator"

    def add_arguments(self, p):
        p.add_argument(
            "csv",
            type=input_file,
            help="published measurements (columns: target,model,timm_name,input_hw,batch,metric,value,[precision,]source)",
        )
        p.add_argument("--out", required=True, help="report JSON")
        p.add_argument(
            "--cross-validate",
            choices=["family", "group", "task", "row"],
            help="refit every target without each held-out fold and predict it from that fit: a model family, a family's "
            "task at one resolution (group), a task at one resolution across families (task), or a row",
        )
        p.add_argument("--cache-dir", default="results/sim-cache", help="exported models, reused between runs")
        p.add_argument("--config", default="config.yaml", help="for user target_profiles (if the file exists)")

    def run(self, args):
        from npuflow.calibration.validate import validate

        return validate(args.csv, args.out, args.cache_dir, user_profiles(args.config), args.cross_validate)["summary"]


@command
class SimFit(Command):
    name = "sim-fit"
    help = "fit the targets' free physical parameters to published measurements"

    def add_arguments(self, p):
        p.add_argument("csv", type=input_file, help="published measurements (the columns of data/published/npu_latency_calibration.csv)")
        p.add_argument("--cache-dir", default="results/sim-cache", help="exported models, reused between runs")
        p.add_argument("--profile-dir", help="where the fits are written, one <target>.yaml each (default: the built-in targets/fits/)")
        p.add_argument("--config", default="config.yaml", help="for user target_profiles (if the file exists): a few-shot chip of your own")

    def run(self, args):
        from npuflow.calibration.validate import fit

        return {
            t: {"parameters": r["parameters"], "rms_log_error": r["rms_log_error"]}
            for t, r in fit(args.csv, args.cache_dir, args.profile_dir, user_profiles(args.config)).items()
        }
