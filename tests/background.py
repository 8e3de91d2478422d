"""Whole-pipeline fixtures computed beside the tests.

Most of the suite runs in this one process, on one core, while the fixtures that take a config
through Snakemake (the tiny pipeline, the kill -9 runs, the runs against an authenticating
server, ...) spend their time in Snakemake's subprocesses. Such a fixture is declared with
`@background.fixture(scope=...)`. Once the tests are collected, conftest moves the tests that use
one to the end (`rank`), and the background fixtures those tests use are computed, in the order
the tests will ask for them, in one thread beside the other tests (`start`); with a second
thread for the kill -9 runs, which need no other, the suite took no less on 2 cores. A test that
asks for one gets its value, or the exception its computation raised; one that asks before the
thread reached it computes it itself, so each is computed once either way.

A background fixture's arguments are `tmp_path_factory` and other background fixtures; it must
not read what the foreground tests change (os.environ: `environment()` is the session's own).
"""

from __future__ import annotations

import inspect
import os
import threading

import pytest

_ENVIRONMENT = dict(os.environ)  # as the session started, before any test's monkeypatch


def environment() -> dict:
    """os.environ in the main thread; the session's starting environment in the background, where
    a foreground test's monkeypatched variable (a tracking password, TORCH_HOME) must not leak in."""
    return dict(os.environ) if threading.current_thread() is threading.main_thread() else dict(_ENVIRONMENT)


class _Work:
    """One background fixture's computation: run once, by whichever thread asks first."""

    def __init__(self, function):
        self.function = function
        self.arguments = list(inspect.signature(function).parameters)
        self.lock = threading.Lock()
        self.done = False
        self.value = None
        self.error: BaseException | None = None

    def get(self, config):
        self.compute(config)
        if self.error is not None:
            raise self.error
        return self.value

    def compute(self, config) -> None:
        with self.lock:
            if not self.done:
                try:
                    kwargs = {a: config._tmp_path_factory if a == "tmp_path_factory" else _WORKS[a].get(config) for a in self.arguments}
                    self.value = self.function(**kwargs)
                except BaseException as e:  # handed to every test that uses it, as a fixture's own error would be
                    self.error = e
                self.done = True


_WORKS: dict[str, _Work] = {}


def fixture(scope: str):
    """`@pytest.fixture(scope=scope)` whose value is computed in the background thread."""

    def declare(function):
        if function.__name__ in _WORKS:
            raise ValueError(f"two background fixtures named {function.__name__}")
        work = _WORKS[function.__name__] = _Work(function)

        def value(request, **_):  # the arguments are the same fixtures, resolved by pytest: unused
            return work.get(request.config)

        # pytest resolves the same arguments first, so the fixture closure (and the `slow` mark) is the function's own
        value.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD), *inspect.signature(function).parameters.values()]
        )
        value.__doc__ = function.__doc__
        return pytest.fixture(scope=scope, name=function.__name__)(value)

    return declare


def rank(item) -> int:
    """Where a test goes (conftest sorts by it): 0 if it uses no background fixture, else 1 + the
    place, in the order they were declared, of the last one it uses; so the tests that need only
    the first ones (the tiny pipeline) run while the later ones are computed."""
    used = [i for i, name in enumerate(_WORKS) if name in getattr(item, "fixturenames", ())]
    return 1 + max(used) if used else 0


class _Runner:
    def __init__(self, config, names: list[str]):
        self.config = config
        self.names = names
        self.closing = threading.Event()  # the session is ending: start nothing more
        self.thread = threading.Thread(target=self._main, name="background-fixtures", daemon=True)

    def _main(self):
        for name in self.names:
            if self.closing.is_set():
                return
            _WORKS[name].compute(self.config)  # an error is kept for the tests that use it

    def close(self):
        self.closing.set()
        self.thread.join()  # the fixture being computed ends: no Snakemake run outlives the session


def start(session) -> None:
    """Compute the background fixtures the collected tests use, in the order they first use them."""
    names = []
    for item in session.items:
        names += [n for n in item.fixturenames if n in _WORKS and n not in names]
    if names:
        session.config._tmp_path_factory.getbasetemp()  # made here, once: two threads making it at once made two
        runner = _Runner(session.config, names)
        session.config.add_cleanup(runner.close)
        runner.thread.start()
