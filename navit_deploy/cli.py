"""The ``navit`` command line. Each area registers its sub-commands; errors become exit code 2.

A command run with ``--json`` prints its errors as JSON too (``{"error", "error_type", "command"}`` on
stdout, exit code 2), so that a script reading stdout always gets JSON; the plain message also goes to stderr.
A closed stdout (``navit ... | head``) ends the command quietly with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from navit_deploy.errors import NavitError


def version() -> str:
    """The installed package's version (the source tree's pyproject when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("navit-deploy")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navit", description="NaViT: native-aspect ViT deployment toolkit")
    parser.add_argument("--version", action="version", version=f"navit-deploy {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="run 'navit COMMAND --help' for its options")
    from navit_deploy.commands import (bench_cmds, compile_cmds, core, deploy_cmds, import_cmds, quantize_cmds,
                                       serve_cmds)

    for module in (core, import_cmds, deploy_cmds, quantize_cmds, compile_cmds, bench_cmds, serve_cmds):
        module.add_parsers(sub)
    return parser


def _stdout_closed() -> int:
    """stdout's reader went away: point stdout at /dev/null so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to redirect
        pass
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except NavitError as exc:
        print(f"navit {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            try:
                print(json.dumps({"error": str(exc), "error_type": type(exc).__name__, "command": args.command}))
                sys.stdout.flush()
            except BrokenPipeError:
                _stdout_closed()
        return 2


if __name__ == "__main__":
    sys.exit(main())
