"""Simulator fit and validation: the CSV (precision column, bad rows), summary figures, the fit's
parameters and what it records, cross-validation on a small synthetic CSV."""

import copy
import hashlib
import json

import onnx
import pytest

from conftest import REPO
from npuflow.calibration.fit import MAX_PARAMETERS, RATE_PATHS, fit_group, predict
from npuflow.calibration.published import Row, SimFitError, model_onnx, parse_precision, read_published
from npuflow.calibration.validate import summarise, validate
from npuflow.sim import analyse
from npuflow.targets import changes_text, get_path, load_targets, set_path
from test_simulator import conv_model

PUBLISHED = "target,model,timm_name,input_hw,batch,metric,value,precision,source\n"
CSV = REPO / "data" / "published" / "npu_latency_calibration.csv"


def test_read_published_rows_precision_and_bad_rows(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(PUBLISHED + 'rdk-x5,evit,efficientvit_m5,224x224,1,latency_ms,2.95,Softmax=int16;Gelu=int16,"zoo, single thread"\n')
    (row,) = read_published(good)
    assert row == Row(
        "rdk-x5", "evit", "efficientvit_m5", (224, 224), 1, "latency_ms", 2.95, "zoo, single thread", "Softmax=int16;Gelu=int16", 2
    )
    assert row.recipe_override() == {"op_types": {"Softmax": "int16", "Gelu": "int16"}} and not row.error
    bad = tmp_path / "bad.csv"
    bad.write_text(
        PUBLISHED
        + "rdk-x5,a,resnet18,224x224,1,throughput,2.95,,x\n"
        + "rdk-x5,b,resnet18,224x224,1,latency_ms,0,,x\n"
        + "rdk-x5,c,resnet18,224x224,1,latency_ms,-1.5,,x\n"
        + "rdk-x5,d,resnet18,224,1,latency_ms,1.5,,x\n"
        + "rdk-x5,e,resnet18,224x224,1,latency_ms,1.5,Softmax=int4,x\n"
        + "rdk-x5,f,resnet18,224x224,1,latency_ms,1.5,defualt=int16,x\n"
    )
    rows = read_published(bad)
    assert [r.model for r in rows] == list("abcdef")  # kept in place, each with its reason
    assert "line 2: metric 'throughput'" in rows[0].error and "expected positive" in rows[1].error and "expected positive" in rows[2].error
    assert rows[3].error and "precision.op_types.Softmax: expected one of int8, int16, float, got 'int4'" in rows[4].error
    assert "line 7: precision 'defualt': not an ONNX op type" in rows[5].error and "did you mean default?" in rows[5].error
    (tmp_path / "cols.csv").write_text("target,model\n")
    with pytest.raises(SimFitError, match="missing columns"):
        read_published(tmp_path / "cols.csv")
    old = tmp_path / "old.csv"  # the column is optional
    old.write_text("target,model,timm_name,input_hw,batch,metric,value,source\nj5,s,swin,224x224,1,fps,133,x\n")
    assert read_published(old)[0].precision == "" and not read_published(old)[0].error


def test_parse_precision():
    assert parse_precision(" Softmax = int16 ; LayerNormalization=float;") == {
        "op_types": {"Softmax": "int16", "LayerNormalization": "float"}
    }
    # whole-model 16-bit deployments: w8a16 (AXERA's U16) and a16w16; patterns are op types too
    assert parse_precision("default=int16;weights=int8;Gelu=float") == {
        "default": "int16",
        "weights": "int8",
        "op_types": {"Gelu": "float"},
    }
    assert parse_precision("default=int16;weights=int16") == {"default": "int16", "weights": "int16"}
    with pytest.raises(ValueError, match="Softmax"):
        parse_precision("Softmax")


@pytest.mark.parametrize(
    "text, message",
    [
        ("defualt=int16", "precision 'defualt': not an ONNX op type, a fusion pattern, nor one of default, weights; did you mean default?"),
        ("Sofmax=int16", "did you mean Softmax"),
        ("weights=int4", "precision.weights: expected one of int8, int16"),
        ("default=float", "precision.default: expected int8 or int16"),
        ("Nonesuch=int16", "precision 'Nonesuch': not an ONNX op type"),
    ],
)
def test_a_typo_in_a_precision_is_refused_in_one_line_naming_the_close_match(text, message):
    with pytest.raises(ValueError) as e:
        parse_precision(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_summary_figures():
    rows = [
        {"target": "a", "family": "f", "metric": "latency_ms", "batch": 1, "published": 1.0, "predicted": 1.05, "error_pct": 5.0},
        {"target": "a", "family": "f", "metric": "latency_ms", "batch": 1, "published": 2.0, "predicted": 1.5, "error_pct": -25.0},
        {"target": "a", "family": "g", "metric": "latency_ms", "batch": 1, "published": 3.0, "predicted": 3.3, "error_pct": 10.0},
        {"target": "a", "family": "g", "metric": "fps", "batch": 8, "published": 100.0, "predicted": 115.0, "error_pct": 15.0},
        {"target": "b", "family": "g", "metric": "fps", "batch": 8, "published": 100.0, "predicted": None},
    ]
    s = summarise(rows)
    assert s["rows"] == 5 and s["failures"] == 1
    assert s["mape_pct"] == pytest.approx(13.75)
    assert s["within_20pct_share"] == pytest.approx(3 / 5) and s["within_10pct_share"] == pytest.approx(2 / 5)  # a failure is a miss
    # time per frame: 1, 2, 3 ms and 10 ms (100 FPS) published; 1.05, 1.5, 3.3, 8.7 predicted
    assert s["per_target"]["a"]["spearman"] == pytest.approx(1.0)
    assert s["per_family"]["f"] == {"rows": 2, "failures": 0, "mape_pct": 15.0, "worst_error_pct": -25.0}
    assert s["per_family"]["g"]["failures"] == 1 and s["per_family"]["g"]["mape_pct"] == pytest.approx(12.5)


@pytest.mark.parametrize("target", load_targets().names())
def test_every_profile_declares_few_physical_parameters_with_units_and_ranges(target):
    """At most 8, each a rate the timing step reads (never one that changes the analysis), with a
    unit and a physically plausible range that holds both the prior and the fitted value."""
    fitted, spec = load_targets().get(target), load_targets(apply_fit=False).get(target)
    params = fitted["fit_parameters"]
    assert 4 <= len(params) <= MAX_PARAMETERS
    for path, decl in params.items():
        low, high = decl["range"]
        assert path in RATE_PATHS and decl["unit"] and 0 < low < high
        assert low <= get_path(spec, path) <= high and low <= get_path(fitted, path) <= high, path
    if spec.get("datasheet_only"):
        assert not fitted.get("fit") and fitted["transferred"]["from"] == spec["transfer_from"]
    if spec.get("fit_only"):  # a few-shot or one-row chip fits fewer parameters than it has rows
        rows = sum(r.target == target for r in read_published(CSV))
        assert 0 < len(spec["fit_only"]) < max(rows, 2) and set(spec["fit_only"]) <= set(params)


def test_each_fit_records_its_residuals_and_the_csvs_sha256():
    digest = hashlib.sha256(CSV.read_bytes()).hexdigest()
    rows = [r for r in read_published(CSV)]
    targets = load_targets()
    for target in {r.target for r in rows}:
        fit = targets.get(target)["fit"]
        assert fit["data"] == {"csv": CSV.name, "sha256": digest, "rows": sum(r.target == target for r in rows)}
        assert len(fit["residuals"]) == fit["data"]["rows"] and set(fit["parameters"]) == set(targets.get(target)["fit_parameters"])


def test_fit_recovers_a_known_profile(monkeypatch):
    """Measurements made by a profile with other rates are fitted back within 2 % (plain least
    squares, a prior too weak to matter)."""
    monkeypatch.setattr("npuflow.calibration.fit.PRIOR_FACTOR", 1e6)
    monkeypatch.setattr("npuflow.calibration.fit.LOSS", "linear")
    base = load_targets(apply_fit=False).get("ax650n-npu3")
    truth = copy.deepcopy(base)
    truth_values = {"units.tensor.efficiency": 0.4, "units.vector.efficiency": 0.3, "memory.efficiency": 0.6, "overheads.op_s": 4e-6}
    for path, value in truth_values.items():
        set_path(truth, path, value)
    models = [
        conv_model(cin=c, cout=c, hw=hw, softmax=sm)
        for c, hw, sm in [(16, 112, 0), (64, 56, 1), (128, 28, 0), (256, 14, 1), (512, 7, 0), (32, 224, 1)]
    ]
    rows, analyses = [], []
    for i, m in enumerate(models):
        a = analyse(m, base)
        for batch, metric in ((1, "latency_ms"), (8, "fps")):
            rows.append(Row("ax650n-npu3", f"m{i}", f"m{i}", (0, 0), batch, metric, predict(a, truth, batch, metric), ""))
            analyses.append(a)
    (result,) = fit_group([base], [rows], [analyses])
    assert max(abs(r["error_pct"]) for r in result["residuals"]) < 2.0
    assert result["parameters"]["units.tensor.efficiency"] == pytest.approx(0.4, rel=0.1)
    assert get_path(base, "units.tensor.efficiency") == 0.6  # the profile given is not modified


def test_fitted_parameters_are_applied_and_carried_to_a_derived_profile():
    targets = load_targets(
        {"fitted": {"base": "ax650n-npu3", "fit": {"parameters": {"units.tensor.efficiency": 0.5}}}, "derived": {"base": "fitted"}}
    )
    assert targets.get("fitted")["units"]["tensor"]["efficiency"] == 0.5
    # a derived profile keeps its base's fitted values (comparable with it), without a fit of its own
    derived = targets.get("derived")
    assert derived["units"]["tensor"]["efficiency"] == 0.5 and "fit" not in derived and derived["transferred"]["from"] == "fitted"
    from npuflow.sim.build import profile_basis

    assert profile_basis(derived) == "not fitted itself: the fitted fit's parameters on its own figures"
    same = load_targets({"rdk-x5-same": {"base": "rdk-x5"}})  # nothing changed: the same predictions
    assert {p: get_path(same.get("rdk-x5-same"), p) for p in RATE_PATHS} == {p: get_path(same.get("rdk-x5"), p) for p in RATE_PATHS}


def test_a_derived_profile_is_comparable_with_its_base():
    """Unchanged, it predicts exactly the base's figures; with 1.5× compute and faster DDR it is
    never slower; it says what it changes (a fitted built-in such as ax650n-npu1 stands on its own)."""
    faster = {"base": "rdk-x5", "units": {"tensor": {"peak_ops_per_s": {"int8": 15e12}}}, "memory": {"ddr_bytes_per_s": 19.2e9}}
    targets = load_targets({"same": {"base": "rdk-x5"}, "faster": faster})
    for cin, hw in [(16, 112), (64, 56), (256, 14)]:
        model = conv_model(cin=cin, cout=cin, hw=hw)
        base, same, fast = (predict(analyse(model, targets.get(t)), targets.get(t), 8, "fps") for t in ("rdk-x5", "same", "faster"))
        assert same == base and fast >= base
    assert targets.get("same")["differs_from_base"] == {"base": "rdk-x5", "changes": {}}
    assert changes_text(targets.get("faster")["differs_from_base"]) == (
        "derived from rdk-x5: memory.ddr_bytes_per_s 1.28e+10 → 1.92e+10, units.tensor.peak_ops_per_s.int8 1e+13 → 1.5e+13"
    )
    assert "differs_from_base" not in targets.get("ax650n-npu1") and "differs_from_base" not in targets.get("rdk-x5")


def test_prior_keeps_a_parameter_the_data_cannot_see():
    """Conv-only measurements say nothing about the vector unit: its efficiency stays the profile's."""
    base = load_targets(apply_fit=False).get("rdk-x5")
    models = [conv_model(cin=c, cout=c, hw=hw) for c, hw in [(16, 112), (64, 56), (128, 28), (256, 14), (512, 7)]]
    analyses = [analyse(m, base) for m in models]
    rows = [
        Row("rdk-x5", f"m{i}", f"m{i}", (0, 0), 1, "latency_ms", 1.5 * predict(a, base, 1, "latency_ms"), "")
        for i, a in enumerate(analyses)
    ]
    (result,) = fit_group([base], [rows], [analyses])
    assert result["parameters"]["units.vector.efficiency"] == pytest.approx(base["units"]["vector"]["efficiency"], rel=0.05)
    assert max(abs(r["error_pct"]) for r in result["residuals"]) < 10


def test_stored_fit_matches_the_simulator_today(tmp_path):
    """The residuals stored by `npuflow sim-fit` are what the simulator predicts now (a changed
    simulator without a re-fit fails here)."""
    targets = load_targets()
    rows = [r for r in read_published(CSV) if r.model == "mobilenetv1"]
    model = onnx.load(str(model_onnx("mobilenetv1_100", (224, 224), tmp_path)))
    for row in rows:
        profile = targets.get(row.target)
        stored = next(r for r in profile["fit"]["residuals"] if r["model"] == row.model)
        assert predict(analyse(model, profile), profile, row.batch, row.metric) == pytest.approx(stored["predicted"], rel=1e-4)
    assert len(rows) == 3
    assert json.loads((tmp_path / "mobilenetv1_100-224x224.json").read_text())["family"] == "efficientnet"  # timm's module


def _cached(cache, name, family, **kw):
    """A small model put where sim-validate's export cache looks for it (no export runs)."""
    onnx.save(conv_model(**kw), str(cache / f"{name}-64x64.onnx"))
    (cache / f"{name}-64x64.json").write_text(json.dumps({"name": name, "input_hw": [64, 64], "family": family}))


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    """Eight small models in four families on two targets, plus one row of each kind of bad input."""
    d = tmp_path_factory.mktemp("simval")
    cache = d / "cache"
    cache.mkdir()
    rows = []
    for i, (c, hw, fam) in enumerate(
        [(16, 64, "a"), (32, 64, "a"), (64, 32, "b"), (128, 16, "b"), (32, 32, "c"), (96, 16, "c"), (48, 64, "d"), (160, 8, "d")]
    ):
        _cached(cache, f"tiny{i}", fam, cin=c, cout=c, hw=hw, softmax=i % 2 == 1)
        truth = 0.05 * (1 + i) * (1.1 if i % 3 else 0.9)
        rows += [
            f"rdk-x5,tiny{i},tiny{i},64x64,1,latency_ms,{truth:.4f},,synthetic",
            f"ax650n-npu3,tiny{i},tiny{i},64x64,1,latency_ms,{truth / 3:.4f},,synthetic",
        ]
    rows += [
        "rdk-x5,tiny1,tiny1,64x64,1,latency_ms,0.2,Softmax=int16,synthetic: Softmax on the BPU",
        "ax630c,tiny0,tiny0,64x64,1,latency_ms,0.1,,synthetic: a few-shot chip",
        "nonesuch-npu,tiny0,tiny0,64x64,1,latency_ms,0.1,,bad: unknown target",
        "rdk-x5,tiny0,tiny0,64x64,1,latency_ms,-2,,bad: non-positive value",
        "rdk-x5,nothing,torchvision:nothing,64x64,1,latency_ms,1.0,,bad: a model sim-validate cannot build",
        "rdk-x5,ckpt,url:https://127.0.0.1:9/m.pth,64x64,1,latency_ms,1.0,,bad: a source sim-validate does not build",
    ]
    csv = d / "tiny.csv"
    csv.write_text(PUBLISHED + "\n".join(rows) + "\n")
    return csv, cache


@pytest.mark.parametrize("mode", [None, "family", "group", "task", "row"])
def test_validate_reports_every_row_with_its_failures_and_per_family_figures(tiny_csv, tmp_path, mode):
    csv, cache = tiny_csv
    report = validate(csv, tmp_path / "r.json", cache, cross_validate=mode)
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == report["summary"]
    rows = report["rows"]
    assert len(rows) == 22 and report["summary"]["rows"] == 22 and report["summary"]["failures"] == 4
    bad = {r["source"].split(": ")[1]: r["error"] for r in rows if r["predicted"] is None}
    assert "unknown target 'nonesuch-npu'" in bad["unknown target"] and "expected positive" in bad["non-positive value"]
    assert "unknown torchvision model 'nothing'" in bad["a model sim-validate cannot build"]
    assert "sim-validate builds timm:, hf:, torchvision:, ultralytics: names, not url:" in bad["a source sim-validate does not build"]
    assert (
        set(report["summary"]["per_family"]) == {"a", "b", "c", "d", "(not built)"} and report["summary"]["within_10pct_share"] is not None
    )
    assert report["profile_basis"]["ax630c"].startswith("few-shot: 2 parameters fitted to")
    assert next(r for r in rows if r["target"] == "ax630c")["predicted"] > 0
    # the precision column reaches the build: int16 Softmax on the BPU instead of float on the CPU
    default, int16 = (r for r in rows if r["model"] == "tiny1" and r["target"] == "rdk-x5")
    assert int16["precision"] == "Softmax=int16" and int16["predicted"] < default["predicted"]
    if mode is None:
        assert report["cross_validation"] is None
    else:
        cv = report["cross_validation"]
        # family: a…d; group: each family's task at its size (one each here); task: all at 64 px at once
        assert cv["mode"] == mode and cv["folds"] == {"family": 4, "group": 4, "task": 1, "row": 18}[mode]
        assert {r["task"] for r in rows if r["predicted"] is not None} == {"classify@64"}
        assert {"rdk-x5", "ax650n-npu3"} <= set(cv["refitted_targets"])


def test_cross_validation_predicts_a_held_out_family_from_a_fit_without_it(tiny_csv, tmp_path):
    """Rows scaled by 3 in one family only: the fit over all rows absorbs part of it, the
    family-held-out prediction cannot (it never saw them), so it misses them by more."""
    csv, cache = tiny_csv
    lines = csv.read_text().splitlines()
    skewed = [lines[0]] + [
        ",".join(p[:6] + [f"{float(p[6]) * 3:.4f}"] + p[7:])
        if (p := line.split(","))[1] in ("tiny0", "tiny1") and p[0] == "rdk-x5"
        else line
        for line in lines[1:17]
    ]
    (tmp_path / "s.csv").write_text("\n".join(skewed) + "\n")
    fit = validate(tmp_path / "s.csv", tmp_path / "f.json", cache)["rows"]
    held = validate(tmp_path / "s.csv", tmp_path / "h.json", cache, cross_validate="family")["rows"]

    def err(rows):
        return max(abs(r["error_pct"]) for r in rows if r["model"] in ("tiny0", "tiny1") and r["target"] == "rdk-x5")

    assert err(held) > err(fit)


def test_sim_validate_command_takes_the_cross_validation_flag(tiny_csv, tmp_path, capsys):
    from npuflow.cli import main

    csv, cache = tiny_csv
    args = ["sim-validate", str(csv), "--cache-dir", str(cache), "--config", str(tmp_path / "none.yaml")]
    assert main([*args, "--out", str(tmp_path / "plain.json")]) == 0
    assert main([*args, "--out", str(tmp_path / "cv.json"), "--cross-validate", "family"]) == 0
    plain, cv = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "cv.json"))
    assert plain["cross_validation"] is None and cv["cross_validation"]["mode"] == "family"
    assert '"per_family"' in capsys.readouterr().out  # the summary it prints
    with pytest.raises(SystemExit):  # argparse refuses a mode it does not know
        main([*args, "--out", str(tmp_path / "x.json"), "--cross-validate", "model"])


def test_sim_validate_builds_torchvision_and_ultralytics_names_at_the_rows_input_size(tmp_path):
    """A YOLO with its head split as deployed, a torchvision classifier and segmenter: each row
    built at its input_hw, held out by its source's family."""
    rows = [
        "rdk-x5,yolo11n,ultralytics:yolo11n,32x32,1,latency_ms,0.5,,synthetic",
        "ax650n-npu3,yolo11n,ultralytics:yolo11n,32x32,1,latency_ms,0.2,,synthetic",
        "rdk-x5,squeezenet,torchvision:squeezenet1_1,64x64,1,latency_ms,0.5,,synthetic",
        "rdk-x5,lraspp,torchvision:lraspp_mobilenet_v3_large,64x64,1,latency_ms,0.8,,synthetic",
    ]
    (tmp_path / "c.csv").write_text(PUBLISHED + "\n".join(rows) + "\n")
    report = validate(tmp_path / "c.csv", tmp_path / "r.json", tmp_path / "cache", cross_validate="family")
    assert report["summary"]["failures"] == 0, [r.get("error") for r in report["rows"]]
    assert [r["family"] for r in report["rows"]] == ["yolo11", "yolo11", "squeezenet", "lraspp"]
    assert set(report["summary"]["per_family"]) == {"yolo11", "squeezenet", "lraspp"}
    assert all(r["predicted"] > 0 for r in report["rows"])
    yolo = onnx.load(str(tmp_path / "cache" / "ultralytics_yolo11n-32x32.onnx"))
    assert [o.name for o in yolo.graph.output] == ["box_s8", "cls_s8", "box_s16", "cls_s16", "box_s32", "cls_s32"]
    assert [d.dim_value for d in yolo.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]


def test_sim_fit_makes_a_few_shot_profile_of_a_users_chip_from_three_rows(tiny_csv, tmp_path):
    """A chip of the user's own, derived from a few-shot profile (its datasheet figures changed),
    fitted to three of their measurements: only its fit_only parameters move, the rest are the
    family's fitted values; the fit is written where asked, nothing built-in is rewritten, and
    three rows are too few to measure intervals."""
    import yaml

    from npuflow.calibration.validate import fit
    from npuflow.targets import FIT_DIR

    _, cache = tiny_csv
    user = {"my-chip": {"base": "ax630c", "chip": "my board", "units": {"tensor": {"peak_ops_per_s": {"int8": 5.0e12}}}}}
    csv = tmp_path / "mine.csv"
    csv.write_text(
        PUBLISHED + "".join(f"my-chip,tiny{i},tiny{i},64x64,1,latency_ms,{0.02 * (i + 1):.3f},,my own board\n" for i in range(3))
    )
    before = {p.name: p.stat().st_mtime_ns for p in FIT_DIR.iterdir()}
    out = fit(csv, cache, tmp_path / "fits", user)
    written = yaml.safe_load((tmp_path / "fits" / "my-chip.yaml").read_text())["fit"]
    assert set(out) == {"my-chip"} and written["data"]["rows"] == 3 and len(written["residuals"]) == 3
    base = load_targets().get("ax630c")
    for path, value in written["parameters"].items():
        if path not in base["fit_only"]:
            assert value == get_path(base, path), path  # the family's fitted value, not refitted
    assert not (tmp_path / "fits" / "intervals.yaml").exists()
    assert {p.name: p.stat().st_mtime_ns for p in FIT_DIR.iterdir()} == before


def test_interval_residuals_put_latency_and_fps_rows_on_one_time_scale():
    """An FPS predicted 10 % high is a time predicted 10 % low: both residuals say 'too fast'."""
    import math

    from npuflow.calibration.validate import time_residual

    lat = Row("x", "m", "m", (224, 224), 1, "latency_ms", 2.0, "")
    fps = Row("x", "m", "m", (224, 224), 8, "fps", 100.0, "")
    assert time_residual(lat, 2.0 / 1.1) == pytest.approx(-math.log(1.1))
    assert time_residual(fps, 110.0) == pytest.approx(-math.log(1.1))
