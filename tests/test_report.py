"""The comparison report: Pareto marking, the per-layer table, and a report that marks a failed
model under --keep-going."""

import csv
import shutil

import yaml

from conftest import REPO, mlflow_runs, snakemake


def _row(model, fps, cosine, target="t", task="classification", **metrics):
    from types import SimpleNamespace

    from npuflow.report import Row

    evaluate = SimpleNamespace(task=task, metrics={"cosine": cosine, **metrics})
    return Row(model, target, build=SimpleNamespace(fps=fps, batch=8), evaluate=evaluate)


def test_pareto_front_uses_accuracy_only_when_every_model_has_it():
    from npuflow.report import Row, mark_pareto, quality_metric

    rows = [
        _row("fast", 100.0, 0.90, top1=0.70),
        _row("good", 10.0, 0.99, top1=0.80),
        _row("dominated", 50.0, 0.95, top1=0.60),
        _row("both", 10.0, 0.90, top1=0.80),
        Row("broken", "t", status="failed"),
    ]
    assert quality_metric([r for r in rows if r.ok]) == "top1"
    mark_pareto(rows)
    assert {r.model: r.pareto for r in rows} == {"fast": True, "good": True, "dominated": False, "both": True, "broken": None}
    del rows[0].evaluate.metrics["top1"]  # one model without labelled results: fall back to fidelity for the whole target
    assert quality_metric([r for r in rows if r.ok]) == "cosine"
    mark_pareto(rows)
    assert {r.model: r.pareto for r in rows if r.ok} == {"fast": True, "good": True, "dominated": True, "both": False}


def test_detection_models_have_a_front_of_their_own_by_the_detection_fidelity_metric():
    from npuflow.report import mark_pareto
    from npuflow.report.html import quality_text
    from npuflow.report.pareto import quality_groups

    rows = [
        _row("yolo_fast", 50.0, 0.999, task="detection", map50_vs_float=0.60),
        _row("clf", 100.0, 0.99),
        _row("yolo_good", 20.0, 0.990, task="detection", map50_vs_float=0.90),
        _row("yolo_worse", 30.0, 0.999, task="detection", map50_vs_float=0.50),
    ]
    groups = quality_groups(rows)  # the classifiers' panel first, whatever the rows' order
    assert {k: [r.model for r in g] for k, g in groups.items()} == {
        "cosine": ["clf"],
        "map50_vs_float": ["yolo_fast", "yolo_good", "yolo_worse"],
    }
    mark_pareto(rows)
    # by cosine yolo_worse would beat yolo_good and stand on the classifier's front; by mAP50 vs float it does not
    assert {r.model: r.pareto for r in rows} == {"clf": True, "yolo_fast": True, "yolo_good": True, "yolo_worse": False}
    assert quality_text(groups) == (
        "int8 vs float cosine (fidelity); int8 mAP50 vs float boxes (fidelity) for the detection models, on a front of their own"
    )
    rows[0].evaluate.metrics.update(map50=0.3)  # labels for one detector only: fidelity still, for all of them
    assert list(quality_groups(rows)) == ["cosine", "map50_vs_float"]
    for r in rows[2:]:
        r.evaluate.metrics.update(map50=0.3)
    assert list(quality_groups(rows)) == ["cosine", "map50"]
    del rows[3].evaluate.metrics["map50"], rows[3].evaluate.metrics["map50_vs_float"]  # no boxes to compare (random weights)
    groups = quality_groups(rows)
    assert {k: [r.model for r in g] for k, g in groups.items()} == {"cosine": ["clf", "yolo_fast", "yolo_good", "yolo_worse"]}
    assert quality_text(groups) == "int8 vs float cosine (fidelity)"


def test_worst_layers_lowest_sqnr_first_and_metrics_without_a_table(tmp_path):
    from npuflow.evaluation.layers import read_layers_csv
    from npuflow.report import worst_layers
    from npuflow.tracking.projection import layer_metrics

    path = tmp_path / "layers.csv"
    path.write_text(
        "tensor,node,op_type,shape,dtype,quantized_dtype,cosine,sqnr_db,mse\n"
        "a,n1,Conv,1x8,float32,int8,0.99,30,1e-4\nb,n2,Softmax,1x8,float32,int8,0.9,8,1e-2\n"
        "c,n3,Add,1x8,float32,int8,0.95,,1e-3\nd,n4,Mul,1x8,float32,int8,1.0,inf,0\n"
    )
    assert [r["node"] for r in worst_layers(read_layers_csv(path), 3)] == ["n2", "n1", "n4"]
    assert layer_metrics(path) == {"layers_analysed": 4.0, "layers_min_cosine": 0.9, "layers_min_sqnr_db": 8.0}
    assert layer_metrics(None) == {}


def _touch_chain_until(pair, stop: str):
    """Write every output of the pair's chain before the first step of stage `stop`."""
    from pathlib import Path

    for step in pair.chain():
        if step.stage == stop:
            return step
        for p in step.outputs:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            Path(p).write_text("{}")
    raise AssertionError(stop)


def test_a_failed_mixed_precision_search_is_reported_at_its_own_stage_and_log(tmp_path, monkeypatch):
    from pathlib import Path

    from npuflow.pipeline.plan import Pair
    from npuflow.report import collect

    monkeypatch.chdir(tmp_path)
    pair = Pair("m", "rdk-x5", "mixed-rdk-x5", "int8_Softmax-float")
    step = _touch_chain_until(pair, "mixed_precision")
    (row,) = collect([pair])
    assert (row.status, row.failed_stage, row.log) == ("not run", "mixed_precision", "results/logs/mixed_precision/m.rdk-x5.log")
    Path(step.log).parent.mkdir(parents=True)
    Path(step.log).write_text("npuflow mixed: error: …\n")
    (row,) = collect([pair])
    assert (row.status, row.failed_stage, row.log) == ("failed", "mixed_precision", step.log)


def test_a_missing_dataset_folder_is_reported_at_the_dataset_stage(tmp_path, monkeypatch):
    from pathlib import Path

    from npuflow.pipeline.plan import Pair
    from npuflow.report import collect

    monkeypatch.chdir(tmp_path)
    pair = Pair("m", "ax650n-npu3", "int8", "int8", datasets=("mine",))
    log = Path("results/logs/dataset/mine.log")
    log.parent.mkdir(parents=True)
    log.write_text("npuflow dataset: error: datasets.mine.folder: no folder /nowhere\n")
    (row,) = collect([pair])
    assert (row.status, row.failed_stage, row.log) == ("failed", "dataset", "results/logs/dataset/mine.log")


def test_figures_are_rounded_to_what_they_mean():
    from npuflow.report.columns import fmt, sig

    assert [sig(v) for v in (1.6099, 0.024310, 929.97, 4219.0, 12345.6, 0.0)] == ["1.61", "0.0243", "930", "4,220", "12,300", "0"]
    assert fmt(4.49e9, "G") == "4.49" and fmt(79_193_600, "G") == "0.0792"  # MACs in G
    assert fmt(6_823_997, "MB") == "6.82" and fmt(2_349_436, "M") == "2.35"  # sizes in MB, parameters in M
    assert fmt(0.9988767, "cosine") == "0.9989" and fmt(23.3309, "db") == "23.3" and fmt(float("inf"), "db") == "∞"
    assert fmt(0.875, "pct") == "87.5" and fmt(0.0, "pct_nonzero") == "" and fmt(-19.84, "err") == "-19.8"
    assert fmt(None, "ms") == "" and fmt(True, "flag") == "★" and fmt(False, "flag") == ""


def test_columns_empty_on_every_row_are_left_out():
    from npuflow.report.html import _table

    t = _table(["model", "top-1 %", "cosine", "mIoU %"], [["a", "", "0.99", ""], ["b", "", "0.98", ""]])
    assert t == {"head": ["model", "cosine"], "rows": [["a", "0.99"], ["b", "0.98"]]}


def test_cpu_fallback_names_its_ops_and_the_recipe_that_moves_them():
    from types import SimpleNamespace

    from npuflow.report.collect import cpu_fallback
    from npuflow.targets import load_targets

    lanes = [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": u}}
        for u, tid in (("tensor", 1), ("vector", 2), ("cpu", 4))
    ]
    ops = [("Conv", 1, 10.0), ("Softmax", 4, 300.0), ("Softmax", 4, 300.0), ("TopK", 4, 50.0), ("Add", 2, 5.0)]
    trace = {"traceEvents": lanes + [{"ph": "X", "name": n, "tid": tid, "dur": d} for n, tid, d in ops]}
    build = SimpleNamespace(unit_share={"tensor": 0.2, "cpu": 0.7}, target="rdk-x5")
    cpu = cpu_fallback(build, trace, load_targets().get("rdk-x5"))
    assert cpu.dominates and cpu.op_types == {"Softmax": 2, "TopK": 1}
    assert cpu.movable == ("Softmax",)  # rdk-x5's vector unit runs Softmax; no unit runs TopK
    assert cpu.recipe() == "precision: {rdk-x5: {op_types: {Softmax: int16}}}"
    no_cpu = {"traceEvents": lanes + [{"ph": "X", "name": "Conv", "tid": 1, "dur": 1.0}]}
    assert cpu_fallback(build, no_cpu, None) is None


def test_published_measurements_are_matched_by_model_input_target_and_batch():
    from types import SimpleNamespace

    from conftest import REPO
    from npuflow.calibration.published import read_published
    from npuflow.report.collect import published_figures

    published = read_published(REPO / "data" / "published" / "npu_latency_calibration.csv")
    row = next(p for p in published if p.target == "ax650n-npu3" and p.metric == "fps" and p.name == "efficientvit_m0")
    build = SimpleNamespace(target="ax650n-npu3", batch=row.batch, latency_ms=0.3, fps=row.value * 1.1)
    (figure,) = published_figures(build, "timm:efficientvit_m0", [1, 3, *row.hw], published)
    assert (figure.metric, figure.value) == ("fps", row.value) and abs(figure.error_pct - 10.0) < 1e-9
    assert published_figures(build, "timm:efficientvit_m0", [1, 3, 256, 256], published) == []  # another input size
    # the default config's own name, with its pretrained tag, is the CSV's architecture
    assert published_figures(build, "timm:efficientvit_m0.r224_in1k", [1, 3, *row.hw], published) == [figure]
    # a figure published at batch 1 (Swin-T on Journey 5: 133 FPS) against the batch-1 throughput
    swin = next(p for p in published if p.target == "j5" and p.name.startswith("swin_tiny"))
    j5 = SimpleNamespace(target="j5", batch=8, latency_ms=5.0, fps=500.0, fps_batch1=swin.value * 0.9)
    (figure,) = published_figures(j5, "timm:swin_tiny_patch4_window7_224.ms_in1k", [1, 3, *swin.hw], published)
    assert (figure.metric, figure.batch, figure.value) == ("fps", 1, swin.value) and abs(figure.error_pct + 10.0) < 1e-9
    assert published_figures(build, "hf:efficientvit_m0", [1, 3, *row.hw], published) == []  # another source's name
    assert (
        published_figures(SimpleNamespace(**{**vars(build), "batch": row.batch + 1}), "timm:efficientvit_m0", [1, 3, *row.hw], published)
        == []
    )


def test_keep_going_report_marks_failed_models_at_the_stage_that_failed(pipeline, tmp_path):
    """One model fails at fetch (an unknown timm name), one at preparing its calibration dataset (a
    class folder its `classes` do not list); under --keep-going the good one is calibrated,
    quantised, built, evaluated and logged, and the partial report written over what exists marks
    each failed one at its own stage, with that stage's log."""
    # The fetch … surgery outputs of the tiny pipeline (same spec) for the good model and the one
    # whose dataset is missing: their remaining jobs still start well after the failures.
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["models"]["nodata"] = {**config["models"]["efficientvit_m0"], "calibration": {"dataset": "missing"}}
    for model in ("efficientvit_m0", "nodata"):
        front = tmp_path / "results" / model
        front.mkdir(parents=True)
        source = pipeline / "results" / "efficientvit_m0"
        shutil.copytree(source / "fetch", front / "fetch")
        for name in ("model.onnx", "export.json", "model.sim.onnx", "simplify.json", "model.surgery.onnx", "surgery.json"):
            shutil.copy2(source / name, front / name)
    config["targets"] = ["rdk-x5"]
    config["calibration"]["images"] = 2
    config["evaluation"] = {"images": 2, "latency_repeats": 3}
    for cls in ("cat", "dog-not-listed"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        shutil.copy2(pipeline / "results" / "efficientvit_m0" / "plots" / "latency.png", tmp_path / "images" / cls / "a.png")
    config["datasets"] = {"missing": {"folder": str(tmp_path / "images"), "classes": ["cat"]}}
    config["models"]["broken"] = {"source": "timm:no_such_model_xyz", "task": "classification", "input": {"shape": [1, 3, 224, 224]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    proc = snakemake(tmp_path, "--keep-going", configfile=tmp_path / "c.yaml")
    assert proc.returncode != 0
    _, runs = mlflow_runs(tmp_path)
    assert [(r.data.tags["model"], r.data.tags["target"], r.info.status) for r in runs] == [("efficientvit_m0", "rdk-x5", "FINISHED")]

    # The report stage's outputs stay unwritten (the next run must not think it finished): the
    # error handler's report is the partial one.
    assert not (tmp_path / "results" / "summary.csv").exists() and not (tmp_path / "results" / "report.html").exists()
    with open(tmp_path / "results" / "summary.partial.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["efficientvit_m0"]["status"] == "ok" and rows["efficientvit_m0"]["run_id"] == runs[0].info.run_id
    broken, nodata = rows["broken"], rows["nodata"]
    assert (broken["status"], broken["failed_stage"], broken["log"]) == ("failed", "fetch", "results/logs/fetch/broken.log")
    assert (nodata["status"], nodata["failed_stage"], nodata["log"]) == ("failed", "dataset", "results/logs/dataset/missing.log")
    assert broken["latency_ms"] == "" and broken["run_id"] == ""
    page = (tmp_path / "results" / "report.partial.html").read_text()
    assert "INCOMPLETE RUN" in page and "2 of 3 (model, target) pairs FAILED" in page and "FAILED at fetch" in page
    assert "FAILED at dataset" in page and "no_such_model_xyz" in page and "dog-not-listed" in page  # the tails of the failed jobs' logs


def test_a_collapsed_layer_is_flagged_whatever_the_headline():
    """A quantised model whose worst layer lost its signal (SegFormer's attention: cosine 0 behind
    a 0.9965 output cosine) gets one warning per recipe; a merely poor layer gets none."""
    from types import SimpleNamespace

    from npuflow.report.html import COLLAPSED_COSINE, collapse_warnings

    def row(target, recipe, cosine):
        return SimpleNamespace(
            target=target,
            build=SimpleNamespace(precision_recipe=recipe),
            worst_layer={"node": "/attn/Softmax", "cosine": cosine},
            figure=lambda key: 0.9965,
        )

    rows = [row("ax650n-npu3", "int8", 0.0), row("ax650n-npu1", "int8", 0.0), row("rdk-x5", "int8_Softmax-float", COLLAPSED_COSINE + 0.3)]
    assert collapse_warnings(rows) == ["ax650n-npu3 (int8): layer /attn/Softmax has cosine 0.000 to the float model (output cosine 0.9965)"]


def test_flagged_tensors_show_on_the_headline_row_and_in_the_summary():
    """The per-layer analysis flagged tensors (constant in int8 or below the cosine floor): the
    headline cosine cell of that (model, target) says how many beneath the figure and names the first
    in its tooltip; summary.csv has the count and the first name. Nothing flagged: a plain cell."""
    from npuflow.core.records import LayerAnalysis
    from npuflow.evaluation.layers import COSINE_FLOOR
    from npuflow.report.columns import COLUMNS
    from npuflow.report.html import COLLAPSED_COSINE, _environment, flag_cell

    assert COLLAPSED_COSINE == COSINE_FLOOR  # one floor for the table, the record and the warning
    names = ["/attn/Softmax_output_0", "/attn/MatMul_1_output_0"]
    row = _row("segformer", 10.0, 0.9965)
    row.analysis = LayerAnalysis(images=2, rows=[], flagged_tensors=16, collapsed_tensors=16, flagged_names=names)
    cell = flag_cell(row)
    assert cell["sub"] == "⚠ 16 layers lost" and cell["cls"] == "failed"
    assert (
        cell["title"].startswith("16 tensors lost their float signal")
        and "/attn/Softmax_output_0, /attn/MatMul_1_output_0 and 14 more" in cell["title"]
    )
    html = _environment().from_string('{% from "report.html.j2" import td %}{{ td(cell) }}').render(cell={**cell, "text": "0.9965"})
    assert 'class="failed" title="16 tensors' in html and "0.9965" in html and "⚠ 16 layers lost" in html
    csv_of = {c.key: c.get(row) for c in COLUMNS if c.key in ("flagged_tensors", "first_flagged_tensor")}
    assert csv_of == {"flagged_tensors": 16, "first_flagged_tensor": "/attn/Softmax_output_0"}
    row.analysis = LayerAnalysis(images=2, rows=[], flagged_tensors=0, collapsed_tensors=0, flagged_names=[])
    assert flag_cell(row) is None
    row.analysis = None  # no analysis (or one written before the flags)
    assert flag_cell(row) is None and {c.key: c.get(row) for c in COLUMNS if c.key == "flagged_tensors"} == {"flagged_tensors": None}


def test_a_derived_profile_is_headed_as_one_with_what_it_changes():
    """`rdk-x5-fast: {base: rdk-x5, …}` is not the RDK X5: its section heading says it derives
    from it and what differs; a built-in chip keeps its name."""
    from types import SimpleNamespace

    from npuflow.report.html import chip_heading

    changes = {"units.tensor.peak_ops_per_s.int8": {"base": 10e12, "own": 15e12}}
    derived = SimpleNamespace(chip="D-Robotics RDK X5 (Sunrise X5)", derived_from_base={"base": "rdk-x5", "changes": changes})
    assert (
        chip_heading(derived)
        == "a profile derived from rdk-x5: units.tensor.peak_ops_per_s.int8 1e+13 → 1.5e+13 (D-Robotics RDK X5 (Sunrise X5))"
    )
    assert chip_heading(SimpleNamespace(chip="AXERA AX650N", derived_from_base=None)) == "AXERA AX650N"


def test_a_host_latency_measured_on_a_busy_machine_is_flagged():
    """Timed runs whose slowest took over twice the fastest (other jobs on the cores) get a `⚠`
    beneath the figure, its tooltip saying how much; steady ones a plain cell; summary.csv keeps the spread."""
    from npuflow.report.columns import COLUMNS
    from npuflow.report.html import noisy_text

    busy = _row("m", 10.0, 0.99, host_int8_ms=12.0, host_int8_spread=3.24, host_fp32_ms=8.0, host_fp32_spread=1.1)
    assert noisy_text(busy, "host_int8_ms").startswith("Its timed runs varied ×3.2 (slowest over fastest)")
    assert noisy_text(busy, "host_fp32_ms") is None
    assert {c.key: c.get(busy) for c in COLUMNS if c.key.endswith("_spread")} == {"host_fp32_spread": 1.1, "host_int8_spread": 3.24}
