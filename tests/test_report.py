"""The comparison report: Pareto marking, the per-layer table, and a report that marks a failed
model under --keep-going."""

import csv
import shutil

import yaml

from conftest import REPO, mlflow_runs, snakemake


def test_pareto_front_uses_accuracy_only_when_every_model_has_it():
    from npuflow.report import mark_pareto, quality_metric

    rows = [
        {"model": m, "target": "t", "status": "ok", "fps": fps, "cosine": cos, **extra}
        for m, fps, cos, extra in [
            ("fast", 100.0, 0.90, {"top1": 0.70}),
            ("good", 10.0, 0.99, {"top1": 0.80}),
            ("dominated", 50.0, 0.95, {"top1": 0.60}),
            ("both", 10.0, 0.90, {"top1": 0.80}),
        ]
    ]
    rows.append({"model": "broken", "target": "t", "status": "failed"})
    assert quality_metric([r for r in rows if r["status"] == "ok"]) == "top1"
    mark_pareto(rows)
    assert {r["model"]: r.get("pareto") for r in rows} == {"fast": True, "good": True, "dominated": False, "both": True, "broken": None}
    del rows[0]["top1"]  # one model without labelled results: fall back to fidelity for the whole target
    assert quality_metric([r for r in rows if r["status"] == "ok"]) == "cosine"
    mark_pareto(rows)
    assert {r["model"]: r.get("pareto") for r in rows if r["status"] == "ok"} == {
        "fast": True,
        "good": True,
        "dominated": True,
        "both": False,
    }


def test_worst_layers_lowest_sqnr_first_and_metrics_without_a_table(tmp_path):
    from npuflow.report import read_layers, worst_layers
    from npuflow.track import layer_metrics

    path = tmp_path / "layers.csv"
    path.write_text(
        "tensor,node,op_type,shape,dtype,quantized_dtype,cosine,sqnr_db,mse\n"
        "a,n1,Conv,1x8,float32,int8,0.99,30,1e-4\nb,n2,Softmax,1x8,float32,int8,0.9,8,1e-2\n"
        "c,n3,Add,1x8,float32,int8,0.95,,1e-3\nd,n4,Mul,1x8,float32,int8,1.0,inf,0\n"
    )
    assert [r["node"] for r in worst_layers(read_layers(path), 3)] == ["n2", "n1", "n4"]
    assert layer_metrics(path) == {"layers_analysed": 4.0, "layers_min_cosine": 0.9, "layers_min_sqnr_db": 8.0}
    assert layer_metrics(None) == {}


def test_keep_going_report_marks_failed_model(pipeline, tmp_path):
    """One model fails at fetch (an unknown timm name); under --keep-going the other is calibrated,
    quantised, built, evaluated and logged, and the report written over what exists marks the
    failed one."""
    # The good model's fetch … surgery outputs from the tiny pipeline (same spec): its remaining
    # seven jobs still start well after the broken fetch has failed.
    front = tmp_path / "results" / "efficientvit_m0"
    front.mkdir(parents=True)
    source = pipeline / "results" / "efficientvit_m0"
    shutil.copytree(source / "fetch", front / "fetch")
    for name in ("model.onnx", "export.json", "model.sim.onnx", "simplify.json", "model.surgery.onnx", "surgery.json"):
        shutil.copy2(source / name, front / name)
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["targets"] = ["rdk-x5"]
    config["calibration"]["images"] = 2
    config["evaluation"] = {"images": 2, "latency_repeats": 3}
    config["models"]["broken"] = {"source": "timm:no_such_model_xyz", "task": "classification", "input": {"shape": [1, 3, 224, 224]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    proc = snakemake(tmp_path, "--keep-going", configfile=tmp_path / "c.yaml")
    assert proc.returncode != 0
    _, runs = mlflow_runs(tmp_path)
    assert [(r.data.tags["model"], r.data.tags["target"], r.info.status) for r in runs] == [("efficientvit_m0", "rdk-x5", "FINISHED")]

    with open(tmp_path / "results" / "summary.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["efficientvit_m0"]["status"] == "ok" and rows["efficientvit_m0"]["run_id"] == runs[0].info.run_id
    broken = rows["broken"]
    assert (broken["status"], broken["failed_stage"], broken["log"]) == ("failed", "fetch", "results/logs/fetch/broken.log")
    assert broken["latency_ms"] == "" and broken["run_id"] == ""
    page = (tmp_path / "results" / "report.html").read_text()
    assert "1 of 2 (model, target) pairs FAILED" in page and "FAILED at fetch" in page
    assert "no_such_model_xyz" in page  # the tail of the failed job's log
