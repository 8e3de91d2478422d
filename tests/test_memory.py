"""Jobs declare the memory they need, and a local run starts no more jobs than the machine holds."""

import math
import re

import psutil

from conftest import REPO, snakemake
from npuflow.pipeline.config import load_config, model_spec
from npuflow.pipeline.memory import FLOOR_MB, MARGIN, MEASURED_PEAKS_MB, job_mem_mb, local_mem_mb, megapixels


def test_estimates_are_the_line_through_the_measured_peaks_with_the_margin():
    config = load_config(REPO / "config.yaml")
    small, large = model_spec(config, "swin_tiny"), model_spec(config, "segformer_b0_cityscapes")
    assert (megapixels(small), megapixels(large)) == (224 * 224 / 1e6, 640 * 1280 / 1e6)
    for stage in ("export", "simplify", "calibrate", "reference", "analyse"):
        (x0, y0), (x1, y1) = MEASURED_PEAKS_MB[stage]

        def line(x, x0=x0, y0=y0, x1=x1, y1=y1):
            return y0 + (y1 - y0) / (x1 - x0) * (x - x0)

        # At the measured input: the measured peak (to float rounding) with the margin.
        assert abs(job_mem_mb(stage, large) - MARGIN * y1) < 1, stage
        # Twice SegFormer's pixels: on the line through the two peaks, beyond the second.
        assert job_mem_mb(stage, {"input": {"shape": [1, 3, 1280, 1280]}}) == math.ceil(MARGIN * line(2 * x1)), stage
    assert job_mem_mb("reference", {"input": {"shape": [1, 3, 8, 8]}}) == FLOOR_MB  # never below Snakemake's own default
    # Two of SegFormer's per-layer analyses (7.4 GB measured) run side by side on a 24 GB machine, not three.
    assert 2 * job_mem_mb("analyse", large) < 23_000 < 3 * job_mem_mb("analyse", large)
    assert job_mem_mb("mixed_precision", large) == job_mem_mb("analyse", large)  # the same per-layer comparison
    # The evaluation apart from it runs the quantised model as the reference runs the float one.
    assert job_mem_mb("evaluate", large) == job_mem_mb("reference", large) < job_mem_mb("analyse", large)


def test_local_limit_is_the_free_memory_or_the_containers_when_smaller(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import npuflow.pipeline.memory as memory

    gib = 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10 * gib))
    monkeypatch.setattr(memory, "CGROUP", tmp_path)
    assert local_mem_mb() == 10 * 1024  # no memory controller
    (tmp_path / "memory.max").write_text("max\n")
    assert local_mem_mb() == 10 * 1024
    (tmp_path / "memory.max").write_text(f"{4 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{1 * gib}\n")
    assert local_mem_mb() == 3 * 1024  # the container's limit less its usage
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=100 * 2**20))
    assert local_mem_mb() == FLOOR_MB


def test_jobs_declare_their_memory(tmp_path):
    """The per-layer analysis of a 640×1280 input asks for far more than one of 224×224."""
    config = (REPO / "tests" / "config.tiny.yaml").read_text()
    (tmp_path / "c.yaml").write_text(config.replace("{shape: [1, 3, 224, 224]}", "{shape: [1, 3, 640, 1280]}"))
    (tmp_path / "tiny").mkdir()
    (tmp_path / "big").mkdir()
    tiny = snakemake(tmp_path / "tiny", "-n")
    big = snakemake(tmp_path / "big", "-n", configfile=tmp_path / "c.yaml")
    assert tiny.returncode == 0 and big.returncode == 0, big.stderr[-2000:]

    def analyse_mem(proc):
        jobs = (proc.stdout + proc.stderr).split("rule ")
        return {int(re.search(r"mem_mb=(\d+)", j).group(1)) for j in jobs if j.startswith("analyse:")}

    spec = {"input": {"shape": [1, 3, 640, 1280]}}
    assert analyse_mem(big) == {job_mem_mb("analyse", spec)}
    assert analyse_mem(tiny) == {job_mem_mb("analyse", {"input": {"shape": [1, 3, 224, 224]}})}
    # A limit the user gives wins over the free memory: the job is held to it (and runs alone).
    (tmp_path / "limited").mkdir()
    limited = snakemake(tmp_path / "limited", "-n", "--resources", "mem_mb=1500", configfile=tmp_path / "c.yaml")
    assert analyse_mem(limited) == {1500}


def test_a_local_run_is_limited_to_the_free_memory(pipeline):
    """The tiny pipeline's run (conftest) registered a mem_mb limit (the memory then free: what
    that was is test_local_limit_is_the_free_memory_or_the_containers_when_smaller's to check)."""
    logs = sorted((pipeline / ".snakemake" / "log").glob("*.snakemake.log"))
    limits = [int(m) for log in logs for m in re.findall(r'Provided resources: .*mem_mb=Resource\("mem_mb", (\d+)\)', log.read_text())]
    assert limits
