"""The `npuflow` command line: one command per stage and tool (`base` has the Command class and its
registry, `commands` the commands, `app` parses and runs them). `npuflow` is `main` here."""

from __future__ import annotations

import os
import sys

from npuflow.util.errors import INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """The entry point. The commands load here, inside the Ctrl-C handler (the console script
    imports only this module): a Ctrl-C while they import or the command line is parsed is one
    line and exit 130, as one while a command runs (npuflow.cli.app.main) is."""
    try:
        from npuflow.cli.app import main as run

        return run(argv)
    except KeyboardInterrupt:
        print(f"npuflow: {INTERRUPTED}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of its output went away (`npuflow check-config c.yaml | head -3`): end quietly,
        # as a shell tool killed by SIGPIPE does; stdout is pointed at /dev/null so that Python's
        # own flush at exit does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


__all__ = ["main"]
