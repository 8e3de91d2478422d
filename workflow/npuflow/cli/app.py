"""The `npuflow` entry point: parse the command line, run the command, print its result as JSON or
its error in one line (npuflow.cli.base has the Command class and its registry; npuflow.cli.commands
the commands)."""

from __future__ import annotations

import argparse
import json
import sys

# The commands register themselves into COMMANDS on import (they subclass base.Command).
from npuflow.cli import base, commands  # noqa: F401
from npuflow.cli.base import COMMANDS, Parser
from npuflow.util.errors import INTERRUPTED, NpuflowError


def build_parser() -> argparse.ArgumentParser:
    doc = base.__doc__.split("\n\n")  # the help says what npuflow is and how commands are named
    parser = Parser(prog="npuflow", description=" ".join(doc[0].split()), epilog=" ".join(doc[1].split()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS.get(args.command).run(args)
    except NpuflowError as e:  # bad input: one clear line, no traceback
        print(f"npuflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written (permissions, a full disk, …)
        where = f"{e.filename}: " if e.filename else ""
        print(f"npuflow {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (Snakemake passes it to its jobs): one line, outputs appear whole or not at all
        print(f"npuflow {args.command}: {INTERRUPTED}", file=sys.stderr)
        return 130
    if result is not None:
        print(json.dumps(result, indent=2, default=str)[:4000])
    return 0
