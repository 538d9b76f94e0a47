"""The ``tscam-explain`` command line: explain, evaluate, train, synth, bench, demo, pretrained.

Each subcommand lives beside the code it drives and
exposes ``register(subparsers)``; this module only collects them."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMAND_MODULES = (
    "tscam_explain.explain_cli",
    "tscam_explain.train.cli",
    "tscam_explain.wsol.cli",
    "tscam_explain.synth",
    "tscam_explain.bench.cli",
    "tscam_explain.pretrained.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tscam-explain", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
