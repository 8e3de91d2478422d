"""tests/background.py: a background fixture is computed once, whichever thread asks first; its
error reaches every test that uses it; the background sees the session's starting environment."""

from __future__ import annotations

import threading
import time

import pytest

import background


class _Config:
    """What a background computation reads of pytest's config: the temporary-path factory."""

    def __init__(self, tmp_path_factory):
        self._tmp_path_factory = tmp_path_factory


def test_computed_once_by_whichever_thread_asks_first(tmp_path_factory):
    calls, computing = [], threading.Event()

    def slow(tmp_path_factory):
        calls.append(threading.current_thread().name)
        computing.set()
        time.sleep(0.2)
        return tmp_path_factory.mktemp("background-test")

    work = background._Work(slow)
    config = _Config(tmp_path_factory)
    other = threading.Thread(target=work.compute, args=(config,), name="other")
    other.start()
    assert computing.wait(10)  # the other thread is computing: this one waits for its value
    value = work.get(config)
    other.join()
    assert calls == ["other"] and value.is_dir() and work.get(config) == value


def test_an_error_is_raised_in_every_test_that_asks():
    def broken():
        raise AssertionError("the run failed")

    work = background._Work(broken)
    work.compute(None)  # as the background thread does: kept, not raised
    for _ in range(2):
        with pytest.raises(AssertionError, match="the run failed"):
            work.get(None)


def test_the_background_sees_the_sessions_environment_not_a_tests_monkeypatch(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "set-by-a-test")
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(background.environment()))
    thread.start()
    thread.join()
    assert background.environment()["MLFLOW_TRACKING_USERNAME"] == "set-by-a-test"
    assert seen == background._ENVIRONMENT and seen.get("MLFLOW_TRACKING_USERNAME") != "set-by-a-test"
