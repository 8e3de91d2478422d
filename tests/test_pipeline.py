"""End to end: Snakemake on tests/config.tiny.yaml (one small timm model, two targets), offline."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, mlflow_runs, snakemake
from npuflow.core.records import BuildReport, EvalReport, TrackReport


def test_mlflow_holds_one_finished_run_per_model_and_target(pipeline):
    client, runs = mlflow_runs(pipeline)
    assert sorted(r.data.tags["target"] for r in runs) == ["ax650n-npu3", "rdk-x5"]
    for r in runs:
        assert r.info.status == "FINISHED"
        tags, metrics, params = r.data.tags, r.data.metrics, r.data.params
        assert (tags["model"], tags["task"], tags["weights"], tags["family"]) == (
            "efficientvit_m0",
            "classification",
            "random",
            "efficientvit_msra",
        )
        assert (
            "RANDOM" in tags["mlflow.note.content"]
            and "SIMULATION" in tags["mlflow.note.content"]
            and tags["npuflow.latency"] == "simulated"
        )
        build = BuildReport.read(pipeline / "results" / "efficientvit_m0" / "build" / tags["target"] / "build.json")
        evaluation = EvalReport.read(pipeline / "results" / "efficientvit_m0" / "eval" / f"{build.precision_recipe}.json")
        assert (metrics["latency_ms"], metrics["fps"]) == (build.latency_ms, build.fps) and metrics["cosine"] == evaluation.metrics[
            "cosine"
        ]
        assert metrics["cosine"] > 0.5
        assert metrics["host_fp32_ms"] > 0 and metrics["host_int8_ms"] > 0 and metrics["params"] == 2_349_436
        assert metrics["onnx_bytes"] > metrics["int8_bytes"] > 0 and metrics["macs"] > 0 and metrics["subgraphs"] >= 1
        # Not applicable is absent, never 0: no segmentation figure, no accuracy without labels.
        assert not {"pixel_agreement", "top1", "miou"} & set(metrics)
        assert (params["opset"], params["input_shape"], params["calibration_method"], params["calibration_images"]) == (
            "17",
            "1x3x224x224",
            "minmax",
            "4",
        )
        assert params["precision_recipe"] == {"ax650n-npu3": "int8", "rdk-x5": "int8_Softmax-int16"}[tags["target"]]
        # 4 of the samples' 9 calibration photos: none augmented, no percentile (minmax)
        assert (params["calibration_augmented_images"], params["calibration_percentile"]) == ("0", "none")
        assert "precision/layers.csv" in {a.path for a in client.list_artifacts(r.info.run_id, "precision")}
        assert all(params[f"{t}_version"] for t in ("torch", "timm", "onnx", "onnxruntime", "onnxsim", "mlflow", "npuflow"))
        artifacts = {a.path for d in ("reports", "onnx", "plots") for a in client.list_artifacts(r.info.run_id, d)}
        assert {
            "reports/build.json",
            "reports/trace.json",
            "reports/evaluate.json",
            "reports/manifest.json",
            "onnx/model.onnx",
            "onnx/model.sim.onnx",
            "onnx/model.surgery.onnx",
            "plots/latency.png",
        } <= artifacts
        # The calibration and evaluation images, as the run's dataset inputs (the UI's Dataset column).
        inputs = {i.tags[0].value: i.dataset for i in client.get_run(r.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"calibration", "evaluation"} and {d.name for d in inputs.values()} == {"samples"}
        assert inputs["calibration"].digest != inputs["evaluation"].digest and inputs["calibration"].source_type == "code"
        assert "astronaut" in inputs["calibration"].source and "astronaut" not in inputs["evaluation"].source
        assert json.loads(inputs["evaluation"].profile)["images"] == 4
        # The quantised model: a logged model of the run, registered as <model>-<target>@current.
        version = client.get_model_version_by_alias(f"efficientvit_m0-{tags['target']}", "current")
        assert version.run_id == r.info.run_id and version.source == f"models:/{tags['npuflow.model_id']}"
        assert client.get_logged_model(tags["npuflow.model_id"]).source_run_id == r.info.run_id


def test_the_experiment_is_a_model_training_one(pipeline):
    """MLflow's UI opens an experiment by its kind; without one it opened npuflow's on the GenAI overview."""
    from npuflow.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    client, runs = mlflow_runs(pipeline)
    assert client.get_experiment(runs[0].info.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_filter_for_one_target_as_in_the_readme(pipeline):
    client, runs = mlflow_runs(pipeline)
    found = client.search_runs([runs[0].info.experiment_id], "tags.target = 'rdk-x5' and tags.`npuflow.current` = 'true'")
    assert [(r.data.tags["model"], r.data.tags["target"]) for r in found] == [("efficientvit_m0", "rdk-x5")]


def test_summary_and_report_cover_every_pair(pipeline):
    with open(pipeline / "results" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["target"]) for r in rows] == [("efficientvit_m0", "ax650n-npu3"), ("efficientvit_m0", "rdk-x5")]
    track = TrackReport.read(pipeline / "results" / "efficientvit_m0" / "track.json")
    for r in rows:
        files = track.runs[r["target"]].files
        build, evaluation = BuildReport.read(pipeline / files["build"]), EvalReport.read(pipeline / files["evaluate"])
        assert r["status"] == "ok" and r["weights"] == "random" and r["run_id"] == track.runs[r["target"]].run_id
        assert (float(r["latency_ms"]), float(r["host_int8_ms"])) == (build.latency_ms, evaluation.metrics["host_int8_ms"])
        assert float(r["cosine"]) == evaluation.metrics["cosine"] and r["pareto"] == "true"  # alone on its target: on the front
        assert r["pixel_agreement"] == "" and r["registered_model"] == f"efficientvit_m0-{r['target']}"
        # The worst layer is the lowest-SQNR ranked row of the target's per-layer table.
        with open(pipeline / files["layers"]) as f:
            table = [row for row in csv.DictReader(f) if not row["unranked"] and row["sqnr_db"] not in ("", "inf", "nan")]
        worst = min(table, key=lambda row: float(row["sqnr_db"]))
        assert (r["worst_layer"], float(r["worst_layer_sqnr_db"])) == (worst["node"], float(worst["sqnr_db"]))
    x5 = next(r for r in rows if r["target"] == "rdk-x5")
    assert int(x5["subgraphs"]) == 1 and x5["precision_recipe"] == "int8_Softmax-int16"  # the model's recipe keeps Softmax on the BPU
    page = (pipeline / "results" / "report.html").read_text()
    assert "RANDOM WEIGHTS" in page and "ax650n-npu3" in page and "SIMULATED" in page and "SIMULATION" in page
    assert page.count("data:image/png;base64,") == 3  # two Pareto plots, one latency breakdown
    assert "<script" not in page and 'src="http' not in page  # self-contained: nothing is loaded from elsewhere
    assert "Simulated latency by op type" in page and "Worst layers, quantised vs float (rdk-x5)" in page
    assert "Calibration: minmax, 4 images of dataset samples." in page
    # the per-layer caption counts the analysis' images (evaluation.analysis_images: 2), not the evaluation's (4)
    assert "on 2 held-out images, worst" in page and "on 4 held-out images" not in page
    assert page.count("How to read this.") >= 5
    # Each row links its build summary, its trace (relative to the page) and its MLflow run.
    for target, run in track.runs.items():
        assert f'href="efficientvit_m0/build/{target}/summary.txt"' in page and f'href="efficientvit_m0/build/{target}/trace.json"' in page
        assert f'href="http://127.0.0.1:5000/#/experiments/{track.experiment_id}/runs/{run.run_id}?workflowType=machine_learning"' in page
    # Columns empty on every row (no labels: no accuracy; a classifier: no pixel agreement) are left out.
    assert "top-1 %" not in page and "mIoU" not in page and "pixel agr." not in page and "top-1 agr. %" in page
    assert sorted(p.name for p in (pipeline / "results" / "plots").iterdir()) == ["pareto.ax650n-npu3.png", "pareto.rdk-x5.png"]


def test_snakemake_report(pipeline, tmp_path):
    proc = snakemake(pipeline, "--report", str(tmp_path / "report.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    for name in ("summary.csv", "report.html", "pareto.rdk-x5.png", "latency.png", "Pareto plots"):
        assert name in page


def test_each_recipe_is_quantised_and_evaluated_once_with_a_layer_table_per_target(pipeline):
    model = pipeline / "results" / "efficientvit_m0"
    recipes = ("int8", "int8_Softmax-int16")  # ax650n-npu3's; rdk-x5's with the model's int16 Softmax
    assert sorted(p.name for p in (model / "quant").iterdir()) == sorted(
        [f"{r}.{ext}" for r in recipes for ext in ("json", "onnx")] + ["ax650n-npu3.layers.csv", "rdk-x5.layers.csv"]
    )
    assert sorted(p.name for p in (model / "eval").iterdir()) == sorted(
        [f"{r}{ext}" for r in recipes for ext in (".json", ".layers.json")] + ["reference.json", "reference.npz"]
    )
    # No two quantised models of the model have the same graph (node precision map).
    from npuflow.graph.precision import embedded_precision
    from npuflow.util.onnxutil import load

    graphs = [json.dumps(embedded_precision(load(p)), sort_keys=True) for p in (model / "quant").glob("*.onnx")]
    assert len(graphs) == 2 and len(set(graphs)) == 2
    with open(model / "quant" / "rdk-x5.layers.csv") as f:
        rows = list(csv.DictReader(f))
    softmax = [r for r in rows if r["op_type"] == "Softmax"]
    assert softmax and {r["quantized_dtype"] for r in softmax} == {"int16"} and {r["unit"] for r in softmax} == {"vector"}


def test_a_target_whose_recipe_resolves_as_another_builds_that_model(pipeline_copy, tmp_path):
    """j5's recipe (int16 LayerNorm, GELU and Softmax) on a model without LayerNorm or GELU gives
    every node the type rdk-x5's (int16 Softmax) does: once the `recipes` checkpoint has run,
    adding j5 plans no quantisation, evaluation or analysis, and j5 builds rdk-x5's model."""
    from npuflow.core.records import RecipeMap

    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["targets"] = [*config["targets"], "j5"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(pipeline_copy, "--until", "recipes", configfile=tmp_path / "c.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = pipeline_copy / "results" / "efficientvit_m0"
    j5 = "int8_Gelu-int16_LayerNormalization-int16_Softmax-int16"
    assert RecipeMap.read(model / "recipes.json").uses == {
        "int8": "int8",
        "int8_Softmax-int16": "int8_Softmax-int16",
        j5: "int8_Softmax-int16",
    }
    planned = snakemake(pipeline_copy, "-n", "-p", configfile=tmp_path / "c.yaml")
    out = planned.stdout + planned.stderr
    assert planned.returncode == 0 and "rule build:" in out and "wildcards: model=efficientvit_m0, target=j5" in out
    assert not any(f"rule {r}:" in out for r in ("quantize", "evaluate", "analyse", "calibrate", "reference"))
    assert "npuflow build results/efficientvit_m0/quant/int8_Softmax-int16.onnx --target j5" in out


def test_second_run_does_nothing(pipeline):
    proc = snakemake(pipeline)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_forced_logging_reuses_runs(pipeline_copy):
    proc = snakemake(pipeline_copy, "--forcerun", "track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, runs = mlflow_runs(pipeline_copy)
    assert len(runs) == 2
    runs = yaml.safe_load((pipeline_copy / "results" / "efficientvit_m0" / "track.json").read_text())["runs"]
    assert sorted(runs) == ["ax650n-npu3", "rdk-x5"] and all(r["reused"] and not r["registered"] for r in runs.values())
    for target in runs:  # registration is idempotent: still one version
        assert [v.version for v in client.search_model_versions(f"name = 'efficientvit_m0-{target}'")] == [1]


def test_changed_inputs_supersede_the_run_and_move_the_alias(pipeline, tmp_path):
    """In a store of its own: unchanged inputs reuse the run and its model version; changed ones
    (here a different evaluation, and a per-layer table) log a new run, register a new version and
    move the alias."""
    import json

    from npuflow.tracking.store import init_store, mlflow_client
    from npuflow.tracking.track import CURRENT_TAG, log_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    init_store(uri=uri, experiment="t", out_json=tmp_path / "init.json")
    client = mlflow_client(uri)
    exp_id = client.get_experiment_by_name("t").experiment_id
    track = json.loads((pipeline / "results" / "efficientvit_m0" / "track.json").read_text())["runs"]["rdk-x5"]
    files = {k: str(pipeline / v) for k, v in track["files"].items()}
    spec = {"name": "efficientvit_m0", "task": "classification", "source": "timm:efficientvit_m0", "input": {"shape": [1, 3, 224, 224]}}

    first = log_run(client, exp_id, spec, "rdk-x5", files)
    again = log_run(client, exp_id, spec, "rdk-x5", files)
    assert (first.version, first.registered) == ("1", True)
    assert again.run_id == first.run_id and again.reused and (again.version, again.registered) == ("1", False)

    ev = json.loads(Path(files["evaluate"]).read_text())
    (tmp_path / "eval.json").write_text(json.dumps({**ev, "cosine": 0.5}))
    (tmp_path / "layers.csv").write_text(
        "tensor,node,op_type,shape,dtype,quantized_dtype,cosine,sqnr_db,mse\n"
        "a,/conv1/Conv,Conv,1x8x8x8,float32,int8,0.999,31.5,1e-5\n"
        "b,/attn/Softmax,Softmax,1x4x49x49,float32,int8,0.91,9.25,3e-3\n"
    )
    changed = log_run(
        client, exp_id, spec, "rdk-x5", {**files, "evaluate": str(tmp_path / "eval.json"), "layers": str(tmp_path / "layers.csv")}
    )
    assert changed.run_id != first.run_id and (changed.version, changed.registered) == ("2", True)
    assert client.get_model_version_by_alias("efficientvit_m0-rdk-x5", "current").run_id == changed.run_id
    old, new = client.get_run(first.run_id), client.get_run(changed.run_id)
    assert old.data.tags[CURRENT_TAG] == "false" and old.data.tags["npuflow.superseded_by"] == changed.run_id
    assert new.data.metrics["cosine"] == 0.5 and new.data.metrics["layers_min_sqnr_db"] == 9.25 and new.data.metrics["layers_analysed"] == 2
    assert "precision/layers.csv" in {a.path for a in client.list_artifacts(changed.run_id, "precision")}


def planned_jobs(workdir, configfile) -> set[tuple[str, str]]:
    """(rule, model) of every job a dry run would run."""
    proc = snakemake(workdir, "-n", configfile=configfile)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs, rule = set(), None
    for line in proc.stdout.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("wildcards:") and rule:
            wildcards = dict(w.split("=") for w in line.split(":", 1)[1].strip().split(", "))
            jobs.add((rule, wildcards.get("model", "")))
    return jobs


def test_changed_entry_reruns_only_what_reads_the_change(pipeline, tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["models"]["second"] = dict(config["models"]["efficientvit_m0"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert {model for _, model in planned_jobs(pipeline, tmp_path / "c.yaml")} == {"second"}

    del config["models"]["second"]
    config["models"]["efficientvit_m0"]["calibration"] = {"images": 5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned_jobs(pipeline, tmp_path / "c.yaml")}
    # ptq reads the calibration images too (bias correction, SmoothQuant), and the recipes are
    # resolved on its model; the reference does not read them
    assert rules == {"ptq", "recipes", "calibrate", "quantize", "build", "evaluate", "analyse", "plot", "track"}


def test_bad_config_fails_before_any_job_naming_the_field(tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["models"]["efficientvit_m0"]["input"]["shape"] = [1, 3, 224]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, configfile=tmp_path / "c.yaml")
    assert proc.returncode != 0
    assert "models.efficientvit_m0.input.shape" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


TINY_MODEL_TEXT = """  efficientvit_m0:
    source: "timm:efficientvit_m0"
    task: classification
    input: {shape: [1, 3, 224, 224]}
    surgery: [fold_head_bn]
    reparameterize: false
"""


@pytest.mark.parametrize(
    "edit, where, expected",
    [
        # The same model name twice: Snakemake's YAML loader would keep the second silently.
        (lambda t: t + TINY_MODEL_TEXT.replace("fold_head_bn", "append_argmax"), "models.efficientvit_m0", "given twice"),
        (lambda t: t.replace("[fold_head_bn]", "[append_argmax]"), "models.efficientvit_m0.surgery", "task: segmentation"),
        (
            lambda t: t.replace("reparameterize: false", "reparameterize: false\n    opset: 21"),
            "models.efficientvit_m0.opset",
            "maximum of 20",
        ),
        (lambda t: t.replace("targets: [ax650n-npu3, rdk-x5]", "targets: [ax650n-npu3, rdk-x50]"), "targets.1", "unknown target 'rdk-x50'"),
        (  # issue 15's case: a misspelt key, accepted before, left its builds on the base's numbers
            lambda t: t + "target_profiles:\n  my-npu: {base: ax650n-npu3, units: {tensor: {peak_op_per_s: {int8: 8.0e+12}}}}\n",
            "target_profiles.my-npu.units.tensor.peak_op_per_s",
            "unknown key (expected one of ops, peak_ops_per_s, efficiency, cout_lanes, w8a16_share, tile)",
        ),
        (  # YAML 1.1 reads 25.6e9 (no dot) as text: the profile's DDR rate would not be a number
            lambda t: t + "target_profiles:\n  my-npu: {base: ax650n-npu3, memory: {ddr_bytes_per_s: 25.6e9}}\n",
            "target_profiles.my-npu.memory.ddr_bytes_per_s",
            "expected a number, got '25.6e9'",
        ),
    ],
    ids=["duplicate-model", "append_argmax-on-classifier", "opset-21", "unknown-target", "misspelt-profile-key", "profile-rate-as-text"],
)
def test_bad_config_fails_dry_run_before_any_job(tmp_path, edit, where, expected):
    text = (REPO / "tests" / "config.tiny.yaml").read_text()
    assert TINY_MODEL_TEXT in text
    (tmp_path / "c.yaml").write_text(edit(text))
    proc = snakemake(tmp_path, "-n", configfile=tmp_path / "c.yaml")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and f"{where}: " in out and expected in out, out[-2000:]
    assert "Job stats" not in out and "rule fetch" not in out and not (tmp_path / "results").exists()


def test_run_left_unfinished_by_a_killed_job_is_retired(pipeline_copy):
    """A logging job killed after creating its run leaves it RUNNING; the next logging retires it."""
    from npuflow.tracking.track import CURRENT_TAG

    client, runs = mlflow_runs(pipeline_copy)
    exp_id = runs[0].info.experiment_id
    orphan = client.create_run(exp_id, tags={"model": "efficientvit_m0", "target": "rdk-x5", CURRENT_TAG: "true"})
    proc = snakemake(pipeline_copy, "--forcerun", "track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, runs = mlflow_runs(pipeline_copy)
    current = [r for r in runs if r.data.tags.get(CURRENT_TAG) == "true"]
    assert sorted(r.data.tags["target"] for r in current) == ["ax650n-npu3", "rdk-x5"]
    assert all(r.info.status == "FINISHED" for r in current)
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
