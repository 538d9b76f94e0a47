"""``tscam-explain pretrained``: list the shipped models, show a model card, rebuild a shipped model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import PRETRAINED_DIR, list_pretrained, model_card


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrained list|card|build`` to the ``tscam-explain`` parser."""
    parser = subparsers.add_parser("pretrained", help="the models shipped in the package: list, card, build",
                                   description="The tiny models trained on the generated benchmark that ship "
                                               "inside the package (docs/synth.md).")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names and test metrics of the shipped models").set_defaults(func=_list)
    card = actions.add_parser("card", help="print a model card (recipe, data, commands, metrics)")
    card.add_argument("name")
    card.set_defaults(func=_card)
    build = actions.add_parser("build", help="train a shipped model with its committed commands and write it "
                                             "(weights and card) into the package")
    build.add_argument("name", help="tscam-synth, trt-synth or vit-synth")
    build.add_argument("--data-dir", type=Path, default=Path("data"), help="generated data (default: %(default)s)")
    build.add_argument("--runs-dir", type=Path, default=Path("runs"), help="training runs (default: %(default)s)")
    build.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR, help="where to write (default: the package)")
    build.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    build.set_defaults(func=_build)


def _list(args: argparse.Namespace) -> int:
    for name in list_pretrained():
        test = model_card(name)["metrics"]["test"]
        print(f"{name:<12} " + ", ".join(f"{key} {value:.1f}" for key, value in test.items()))
    return 0


def _card(args: argparse.Namespace) -> int:
    print(json.dumps(model_card(args.name), indent=1))
    return 0


def _build(args: argparse.Namespace) -> int:
    from .build import build

    path = build(args.name, data_dir=args.data_dir, runs_dir=args.runs_dir, out_dir=args.out_dir, device=args.device)
    print(f"wrote {path} and its card {path.with_suffix('.json')}")
    return 0
