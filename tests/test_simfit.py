"""Simulator fit and validation: CSV handling, summary figures, and that a fit recovers a profile."""

import copy
import re

import pytest

from npuflow.simfit import FREE_PARAMETERS, Row, SimFitError, fit_target, predict, read_published, summarise
from npuflow.simulator import analyse
from npuflow.targets import get_path, load_targets, set_path
from test_simulator import conv_model

PUBLISHED = "target,model,timm_name,input_hw,batch,metric,value,source\n"


def test_read_published_rows_and_errors(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(PUBLISHED + 'rdk-x5,resnet18,resnet18,224x224,1,latency_ms,2.95,"zoo, single thread"\n')
    (row,) = read_published(good)
    assert row == Row("rdk-x5", "resnet18", "resnet18", (224, 224), 1, "latency_ms", 2.95, "zoo, single thread")
    bad = tmp_path / "bad.csv"
    bad.write_text(PUBLISHED + "rdk-x5,r,resnet18,224x224,1,throughput,2.95,x\n")
    with pytest.raises(SimFitError, match=re.escape("bad.csv:2: metric 'throughput'")):
        read_published(bad)
    (tmp_path / "cols.csv").write_text("target,model\n")
    with pytest.raises(SimFitError, match="missing columns"):
        read_published(tmp_path / "cols.csv")


def test_summary_figures():
    rows = [
        {"target": "a", "metric": "latency_ms", "batch": 1, "published": 1.0, "predicted": 1.1, "error_pct": 10.0},
        {"target": "a", "metric": "latency_ms", "batch": 1, "published": 2.0, "predicted": 1.5, "error_pct": -25.0},
        {"target": "a", "metric": "latency_ms", "batch": 1, "published": 3.0, "predicted": 3.3, "error_pct": 10.0},
        {"target": "a", "metric": "fps", "batch": 8, "published": 100.0, "predicted": 110.0, "error_pct": 10.0},
        {"target": "b", "metric": "fps", "batch": 8, "published": 100.0, "predicted": None},
    ]
    s = summarise(rows)
    assert s["rows"] == 5 and s["failures"] == 1
    assert s["mape_pct"] == pytest.approx(13.75)
    assert s["within_20pct_share"] == pytest.approx(3 / 5)  # a failure counts as a miss
    # time per frame: 1, 2, 3 ms and 10 ms (100 FPS) published; 1.1, 1.5, 3.3, 9.09 predicted
    assert s["per_target"]["a"]["spearman"] == pytest.approx(1.0)
    assert s["per_target"]["a"]["spearman_by_metric"]["latency_ms"] == pytest.approx(1.0)


def test_fit_recovers_a_known_profile(monkeypatch):
    """Measurements made by a profile with other efficiencies are fitted back within 2 % (with a
    prior too weak to matter)."""
    monkeypatch.setattr("npuflow.simfit.PRIOR_FACTOR", 1e6)
    base = load_targets(apply_fit=False).get("ax650n-npu3")
    truth = copy.deepcopy(base)
    truth_values = {
        "units.tensor.efficiency": 0.4,
        "units.vector.peak_ops_per_s.int8": 3e11,
        "memory.efficiency": 0.6,
        "overheads.op_s": 4e-6,
        "overheads.subgraph_s": 2e-4,
    }
    assert set(truth_values) == set(FREE_PARAMETERS)
    for path, value in truth_values.items():
        set_path(truth, path, value)
    models = [
        conv_model(cin=c, cout=c, hw=hw, softmax=sm)
        for c, hw, sm in [
            (16, 112, False),
            (64, 56, True),
            (128, 28, False),
            (256, 14, True),
            (512, 7, False),
            (32, 224, True),
            (8, 56, False),
        ]
    ]
    rows, graphs = [], []
    for i, m in enumerate(models):
        for batch, metric in ((1, "latency_ms"), (8, "fps")):
            g = analyse(m, base)
            rows.append(Row("ax650n-npu3", f"m{i}", f"m{i}", (0, 0), batch, metric, predict(analyse(m, truth), truth, batch, metric), ""))
            graphs.append(g)
    result = fit_target(base, rows, graphs)
    assert max(abs(r["error_pct"]) for r in result["residuals"]) < 2.0
    assert result["parameters"]["units.tensor.efficiency"] == pytest.approx(0.4, rel=0.1)
    assert get_path(base, "units.tensor.efficiency") is None  # the profile given is not modified


def test_fitted_parameters_are_applied_and_not_inherited():
    targets = load_targets(
        {"fitted": {"base": "ax650n-npu3", "fit": {"parameters": {"units.tensor.efficiency": 0.5}}}, "derived": {"base": "fitted"}}
    )
    assert targets.get("fitted")["units"]["tensor"]["efficiency"] == 0.5
    assert get_path(targets.get("derived"), "units.tensor.efficiency") is None and "fit" not in targets.get("derived")


def test_prior_keeps_a_parameter_the_data_cannot_see():
    """Conv-only measurements say nothing about the vector unit: its rate stays at the profile's."""
    base = load_targets(apply_fit=False).get("rdk-x5")
    models = [conv_model(cin=c, cout=c, hw=hw) for c, hw in [(16, 112), (64, 56), (128, 28), (256, 14), (512, 7)]]
    rows = [
        Row("rdk-x5", f"m{i}", f"m{i}", (0, 0), 1, "latency_ms", 1.5 * predict(analyse(m, base), base, 1, "latency_ms"), "")
        for i, m in enumerate(models)
    ]
    result = fit_target(base, rows, [analyse(m, base) for m in models])
    vector = result["parameters"]["units.vector.peak_ops_per_s.int8"]
    assert vector == pytest.approx(base["units"]["vector"]["peak_ops_per_s"]["int8"], rel=0.05)
    assert max(abs(r["error_pct"]) for r in result["residuals"]) < 10


def test_stored_fit_matches_the_simulator_today(tmp_path):
    """The residuals stored by `npuflow sim-fit` are what the simulator predicts now (a changed
    simulator without a re-fit fails here)."""
    import onnx

    from conftest import REPO
    from npuflow.simfit import model_onnx

    targets = load_targets()
    rows = [r for r in read_published(REPO / "data" / "published" / "npu_latency_calibration.csv") if r.model == "mobilenetv1"]
    model = onnx.load(str(model_onnx("mobilenetv1_100", (224, 224), tmp_path)))
    for row in rows:
        profile = targets.get(row.target)
        stored = next(r for r in profile["fit"]["residuals"] if r["model"] == row.model)
        assert predict(analyse(model, profile), profile, row.batch, row.metric) == pytest.approx(stored["predicted"], rel=1e-4)
    assert len(rows) == 3
