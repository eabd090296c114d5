"""The ``navit`` command line. Each area registers its sub-commands; errors become exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from navit_deploy.errors import NavitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="navit", description="NaViT: native-aspect ViT deployment toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    from navit_deploy.commands import (bench_cmds, compile_cmds, core, deploy_cmds, import_cmds, quantize_cmds,
                                       serve_cmds)

    for module in (core, import_cmds, deploy_cmds, quantize_cmds, compile_cmds, bench_cmds, serve_cmds):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NavitError as exc:
        print(f"navit {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
