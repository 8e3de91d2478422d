"""Ctrl-C: an interrupted npuflow command says so in one line (no traceback) and exits 130, and the
run's error handler tells an interrupted run from a failed one (issue 28, part 7)."""

from __future__ import annotations

import csv

import pytest

from npuflow.report import failure_lines, interrupted
from npuflow.util.errors import INTERRUPTED


def test_an_interrupted_command_prints_one_line_and_exits_130(monkeypatch, capsys, tmp_path):
    from npuflow.cli import main
    from npuflow.cli.app import COMMANDS  # importing the app registers the commands

    def stopped(self, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(COMMANDS.get("check-config")), "run", stopped)
    (tmp_path / "c.yaml").write_text("models: {}\n")
    try:
        status = main(["check-config", str(tmp_path / "c.yaml")])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped npuflow's main (a traceback in the job log)")
    assert status == 130
    err = capsys.readouterr().err
    assert err == f"npuflow check-config: {INTERRUPTED}\n" and "Traceback" not in err


def summary(tmp_path, rows: list[tuple[str, str]]) -> str:
    """A partial summary CSV whose failed rows' logs end with the given last lines."""
    path = tmp_path / "summary.partial.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["model", "target", "status", "failed_stage", "log"])
        writer.writeheader()
        for i, (status, last_line) in enumerate(rows):
            log = tmp_path / f"{i}.log"
            log.write_text(f"starting\n{last_line}\n")
            writer.writerow({"model": f"m{i}", "target": "rdk-x5", "status": status, "failed_stage": "evaluate", "log": str(log)})
    return str(path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("failed", f"npuflow evaluate: {INTERRUPTED}"), ("ok", "")], True),
        ([("failed", f"npuflow evaluate: {INTERRUPTED}"), ("failed", f"npuflow build: {INTERRUPTED}")], True),
        ([("failed", f"npuflow evaluate: {INTERRUPTED}"), ("failed", "npuflow build: error: no such file")], False),
        ([("ok", ""), ("not run", "")], False),
    ],
)
def test_a_run_is_interrupted_only_when_every_failed_job_was(tmp_path, rows, expected):
    path = summary(tmp_path, rows)
    assert interrupted(path) is expected
    if not expected and any(status == "failed" for status, _ in rows):
        assert any(" failed at evaluate: " in line for line in failure_lines(path))


def test_a_ctrl_c_while_the_commands_load_is_one_line_too(monkeypatch, capsys):
    """The console script imports only npuflow.cli; a Ctrl-C while the commands' modules import
    (torch, onnx: seconds) is caught like one while a command runs, not a traceback."""
    import sys

    from npuflow.cli import main

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "npuflow.cli.app":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "npuflow.cli.app", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    try:
        status = main(["--help"])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped npuflow's main while its commands imported")
    assert status == 130 and capsys.readouterr().err == f"npuflow: {INTERRUPTED}\n"


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    """`npuflow check-config c.yaml | head -c 1`: the reader closes the pipe early; npuflow ends
    without a BrokenPipeError traceback."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import REPO

    npuflow = Path(sys.executable).parent / "npuflow"
    proc = subprocess.run(
        f"'{npuflow}' check-config '{REPO / 'config.yaml'}' | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.stdout == "{" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
