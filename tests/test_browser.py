"""What a person sees: the tiny pipeline's report.html and its MLflow experiment, opened in headless
Chromium (Debian's chromium and chromium-driver; .ci/run installs them). Screenshots are kept in
test-artifacts/ at the repository root (NPUFLOW_TEST_ARTIFACTS moves it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import background
from conftest import REPO, TINY_CONFIG, copy_pipeline, snakemake
from npuflow.core.records import TrackReport

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags that keep Chromium from reaching out to anything on a closed network, in a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WIDTH = 1400
ARTIFACTS = Path(os.environ.get("NPUFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--window-size={WIDTH},900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page at the window's width, kept as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(max(height, 900), 16000))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)
    print(f"screenshot: {path}")
    return path


def test_report_fits_1400_px_and_shows_every_model_and_target(pipeline, chromium):
    from selenium.webdriver.common.by import By

    chromium.set_window_size(WIDTH, 900)
    chromium.get((pipeline / "results" / "report.html").as_uri())
    widths = chromium.execute_script(
        "const d = document.documentElement; return [window.innerWidth, d.clientWidth, d.scrollWidth, document.body.scrollWidth]"
    )
    inner, client, scroll, body = widths
    assert inner == WIDTH and scroll <= client and body <= client, f"horizontal scroll at {WIDTH} px: {widths}"
    text = chromium.find_element(By.TAG_NAME, "body").text
    for name in ("efficientvit_m0", "ax650n-npu3", "rdk-x5"):
        assert name in text, name
    # Every plot is an image the browser decoded; no element is wider than the page.
    images = chromium.execute_script("return [...document.images].map(i => [i.alt, i.naturalWidth, i.getBoundingClientRect().right])")
    assert len(images) == 3 and all(width > 0 and right <= client for _, width, right in images), images
    wide = chromium.execute_script(
        "return [...document.querySelectorAll('table, pre, img, p')].filter(e => e.getBoundingClientRect().right > arguments[0]).length",
        client,
    )
    assert wide == 0
    assert screenshot(chromium, "report-1400px.png").stat().st_size > 10_000


@background.fixture(scope="module")
def with_detector(pipeline, tmp_path_factory):
    """The tiny pipeline's folder with a YOLO added by a config entry only (random weights, 256×256)
    and run again: its jobs, the tracking and the report run; the classifier's are up to date."""
    import yaml

    workdir = copy_pipeline(pipeline, tmp_path_factory.mktemp("det") / "pipeline")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"]["yolo11n"] = {"source": "ultralytics:yolo11n", "task": "detection", "input": {"shape": [1, 3, 256, 256]}}
    configfile = workdir / "config.detector.yaml"
    configfile.write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, configfile=configfile)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "efficientvit_m0" not in " ".join(line for line in proc.stdout.splitlines() if "wildcards: model=" in line)
    return workdir


def test_a_detection_row_shows_its_box_metrics_beside_the_classifier(with_detector, chromium):
    import csv

    from selenium.webdriver.common.by import By

    with open(with_detector / "results" / "summary.csv", newline="") as f:
        summary = {(r["model"], r["target"]): r for r in csv.DictReader(f)}
    det = summary[("yolo11n", "rdk-x5")]
    assert det["status"] == "ok" and det["task"] == "detection" and float(det["map50_vs_float"]) > 0
    assert summary[("efficientvit_m0", "rdk-x5")]["map50_vs_float"] == ""  # absent, never 0
    chromium.set_window_size(WIDTH, 900)
    chromium.get((with_detector / "results" / "report.html").as_uri())
    table = chromium.find_element(By.XPATH, "//h2[@id='target-rdk-x5']/following::table[1]")
    head = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    rows = {
        tr.find_elements(By.TAG_NAME, "td")[0].text: [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert {"box agr. %", "mAP50 vs float %", "host NMS ms", "top-1 agr. %"} <= set(head), head
    yolo, clf = rows["yolo11n"], rows["efficientvit_m0"]
    col = head.index("mAP50 vs float %")
    assert yolo[col] == f"{100 * float(det['map50_vs_float']):.1f}" and clf[col] == ""
    assert yolo[head.index("box agr. %")] == f"{100 * float(det['box_agreement']):.1f}"
    assert clf[head.index("top-1 agr. %")] and not yolo[head.index("top-1 agr. %")]
    # the detector's own Pareto front, by the detection fidelity metric, told in the page's reading note
    text = chromium.find_element(By.TAG_NAME, "body").text
    assert "int8 vs float cosine (fidelity); int8 mAP50 vs float boxes (fidelity) for the detection models, on a front of their own" in text
    assert det["pareto"] == "true" and summary[("efficientvit_m0", "rdk-x5")]["pareto"] == "true"
    widths = chromium.execute_script("const d = document.documentElement; return [d.clientWidth, d.scrollWidth, document.body.scrollWidth]")
    assert widths[1] <= widths[0] and widths[2] <= widths[0], f"horizontal scroll at {WIDTH} px: {widths}"
    images = chromium.execute_script("return [...document.images].map(i => [i.alt, i.naturalWidth])")
    assert len(images) == 4 and all(width > 0 for _, width in images), images
    screenshot(chromium, "report-detection-1400px.png")


@pytest.fixture
def mlflow_ui(pipeline):
    """`mlflow ui` on the tiny pipeline's store, as README starts it (on a free port), with every
    process it starts stopped after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers: starts in seconds
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        str(mlflow),
        "ui",
        "--backend-store-uri",
        "sqlite:///results/mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(command, cwd=pipeline, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError as e:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow ui did not start") from e
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_mlflow_ui_opens_the_experiment_on_its_runs_not_the_genai_overview(pipeline, mlflow_ui, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from npuflow.tracking.store import experiment_url

    track = TrackReport.read(pipeline / "results" / "efficientvit_m0" / "track.json")
    names = [f"efficientvit_m0@{target}" for target in track.runs]
    chromium.set_window_size(WIDTH, 900)
    chromium.get(experiment_url(mlflow_ui, track.experiment_id))  # the link README and the report give

    def body() -> str:
        return chromium.find_element(By.TAG_NAME, "body").text

    WebDriverWait(chromium, 90, poll_frequency=0.5).until(lambda _: all(n in body() for n in names))
    assert "/overview" not in chromium.current_url and f"/experiments/{track.experiment_id}/runs" in chromium.current_url
    text = body()
    assert "Token Usage" not in text and "Tokens per Trace" not in text  # the GenAI overview's panels
    assert "samples" in text  # the Dataset column: the runs' calibration and evaluation images
    screenshot(chromium, "mlflow-runs-1400px.png")
