"""Jobs declare the memory they need, and a local run starts no more jobs than the machine holds."""

import re

import psutil

from conftest import REPO, snakemake
from npuflow.config import load_config, model_spec
from npuflow.memory import MEASURED_PEAKS_MB, job_mem_mb, local_mem_mb


def test_estimates_cover_the_measured_peaks_and_grow_with_the_input():
    config = load_config(REPO / "config.yaml")
    small, large = model_spec(config, "swin_tiny"), model_spec(config, "segformer_b0_cityscapes")
    for stage, ((_, small_peak), (_, large_peak)) in MEASURED_PEAKS_MB.items():
        assert job_mem_mb(stage, small) >= small_peak and job_mem_mb(stage, large) >= large_peak
    # SegFormer's evaluation (13 GB measured) leaves no room for a second one on a 24 GB machine.
    assert 13_000 < job_mem_mb("evaluate", large) < 24_000 / 1.4
    assert job_mem_mb("evaluate", {"input": {"shape": [1, 3, 1024, 2048]}}) > job_mem_mb("evaluate", large)


def test_local_limit_is_the_free_memory():
    assert 1000 <= local_mem_mb() <= psutil.virtual_memory().total // 2**20


def test_jobs_declare_their_memory(tmp_path):
    """The evaluation of a 640×1280 input asks for far more than one of 224×224."""
    config = (REPO / "tests" / "config.tiny.yaml").read_text()
    (tmp_path / "c.yaml").write_text(config.replace("{shape: [1, 3, 224, 224]}", "{shape: [1, 3, 640, 1280]}"))
    (tmp_path / "tiny").mkdir()
    (tmp_path / "big").mkdir()
    tiny = snakemake(tmp_path / "tiny", "-n")
    big = snakemake(tmp_path / "big", "-n", configfile=tmp_path / "c.yaml")
    assert tiny.returncode == 0 and big.returncode == 0, big.stderr[-2000:]

    def evaluate_mem(proc):
        jobs = (proc.stdout + proc.stderr).split("rule ")
        return {int(re.search(r"mem_mb=(\d+)", j).group(1)) for j in jobs if j.startswith("evaluate:")}

    spec = {"input": {"shape": [1, 3, 640, 1280]}}
    assert evaluate_mem(big) == {job_mem_mb("evaluate", spec)}
    assert evaluate_mem(tiny) == {job_mem_mb("evaluate", {"input": {"shape": [1, 3, 224, 224]}})}
    # A limit the user gives wins over the free memory: the job is held to it (and runs alone).
    (tmp_path / "limited").mkdir()
    limited = snakemake(tmp_path / "limited", "-n", "--resources", "mem_mb=1500", configfile=tmp_path / "c.yaml")
    assert evaluate_mem(limited) == {1500}


def test_a_local_run_is_limited_to_the_free_memory(pipeline):
    """The tiny pipeline's run (conftest) started with the memory then free as its mem_mb limit."""
    logs = sorted((pipeline / ".snakemake" / "log").glob("*.snakemake.log"))
    limits = [int(m) for log in logs for m in re.findall(r'Provided resources: .*mem_mb=Resource\("mem_mb", (\d+)\)', log.read_text())]
    assert limits and all(1000 <= limit <= psutil.virtual_memory().total // 2**20 for limit in limits)
