"""The `npuflow` command line: one command per stage and tool (`base` has the Command class and its
registry, `commands` the commands, `app` parses and runs them). `npuflow` is `main` here."""

from npuflow.cli.app import main

__all__ = ["main"]
