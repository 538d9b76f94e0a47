"""``tscam-explain evaluate``: run an explainer over a WSOL dataset and write the report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import timm
import torch

from ..explainers import list_explainers, make_explainer
from ..models import backbone_of
from ..pretrained import open_model
from ..vit import input_config
from .datasets import DATASET_FORMATS, FORMAT_OPTIONS, PROTOCOLS, WSOLDataset, open_dataset
from .harness import evaluate


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command to the ``tscam-explain`` parser.

    Args:
        subparsers: the main parser's subcommand collection.
    """
    parser = subparsers.add_parser(
        "evaluate", help="evaluate an explainer on a WSOL dataset (Top-1/5 Loc, GT-known, MaxBoxAcc, PxAP)",
        description="Explain every image of a WSOL dataset for its ground-truth class and write report.json "
                    "and report.md with the protocol's metrics, the settings and the package versions.")
    parser.add_argument("--checkpoint", help="a shipped model name (tscam-synth, trt-synth, vit-synth), a "
                                             "tscam-explain model file or an official TS-CAM / TRT checkpoint")
    parser.add_argument("--model", default="deit_small_patch16_224",
                        help="timm model name, used when no --checkpoint is given (default: %(default)s)")
    parser.add_argument("--pretrained", action="store_true", help="with --model: timm's pretrained weights (needs the hub)")
    parser.add_argument("--explainer", default="tscam", help=f"one of {', '.join(list_explainers())} (default: %(default)s)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="tscam",
                        help="tscam: the seeds' fixed threshold; maxboxacc: wsolevaluation's sweep; trt: TRT's "
                             "official evaluation, the tscam metrics plus its one-threshold 'MaxBoxAccV2' "
                             "(default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True,
                        help="cub: the CUB_200_2011 folder; ilsvrc-xml: the XML folder; ilsvrc-list: the list "
                             "file; wsolevaluation: the metadata split folder")
    add_dataset_arguments(parser)
    parser.add_argument("--cam-threshold", type=float,
                        help="tscam and trt protocol threshold (default: 0.1 CUB, 0.12 ILSVRC)")
    parser.add_argument("--cam-curve-interval", type=float, default=0.01, help="maxboxacc spacing (default: %(default)s)")
    parser.add_argument("--error-rule", choices=("official", "paper"), default="official",
                        help="error analysis rule of the tscam protocol (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=4, help="data loading processes (default: %(default)s)")
    parser.add_argument("--metric-workers", type=int, default=0, help="threads for the maxboxacc sweeps (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate"), help="report folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name a WSOL dataset (shared by ``evaluate`` and ``bench``).

    Args:
        parser: the subcommand's parser (or an argument group of it).
    """
    parser.add_argument("--dataset-format", choices=DATASET_FORMATS, default="cub", help="(default: %(default)s)")
    parser.add_argument("--image-dir", type=Path, help="image root (ilsvrc-xml, ilsvrc-list, wsolevaluation)")
    parser.add_argument("--mask-dir", type=Path, help="mask root (wsolevaluation OpenImages)")
    parser.add_argument("--synsets", type=Path, help="ilsvrc-xml: class order, one synset per line")
    parser.add_argument("--split", choices=("test", "train", "all"), default="test", help="cub split (default: %(default)s)")


def build_dataset(args: argparse.Namespace, protocol: str, mean: Sequence[float], std: Sequence[float],
                  input_size: int = 224) -> WSOLDataset:
    """The reader of ``--dataset-format`` for ``protocol``, with a clear error for missing options.

    Args:
        args: parsed options of :func:`add_dataset_arguments` and ``--data``.
        protocol: ``tscam``, ``trt`` or ``maxboxacc`` (how boxes are mapped to the input size).
        mean: the model's normalisation mean.
        std: the model's normalisation standard deviation.
        input_size: side of the model's square input.
    """
    missing = [option for option in FORMAT_OPTIONS.get(args.dataset_format, ()) if getattr(args, option) is None]
    if missing:
        raise SystemExit(f"--dataset-format {args.dataset_format} needs "
                         + " and ".join("--" + option.replace("_", "-") for option in missing))
    return open_dataset(args.dataset_format, args.data, protocol, image_dir=args.image_dir, mask_dir=args.mask_dir,
                        synsets=args.synsets, split=args.split, input_size=input_size, mean=mean, std=std)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the explainer and dataset, evaluate, write and print the report.

    Args:
        args: the parsed ``evaluate`` options.
    """
    if args.checkpoint is not None:
        model = open_model(args.checkpoint, map_location=args.device)
        if hasattr(model, "official"):
            print(model.official.describe())
    else:
        model = timm.create_model(args.model, pretrained=args.pretrained)
    # images are normalised as the backbone was trained (ImageNet's statistics for DeiT, not for every ViT)
    config = input_config(backbone_of(model))
    height, width = config["input_size"][-2:]
    if height != width:
        raise SystemExit(f"the model takes {height}x{width} inputs; the WSOL readers resize to a square")
    dataset = build_dataset(args, args.protocol, config["mean"], config["std"], height)
    if args.checkpoint is None and model.num_classes != dataset.num_classes:
        # the data's classes were not known when the model was made; a head of another size has no use here
        model.reset_classifier(dataset.num_classes)
    model = model.to(args.device).eval()
    explainer = make_explainer(args.explainer, model)
    report = evaluate(explainer, dataset, args.protocol, batch_size=args.batch_size, device=args.device,
                      num_workers=args.num_workers, cam_threshold=args.cam_threshold,
                      cam_curve_interval=args.cam_curve_interval, error_rule=args.error_rule, limit=args.limit,
                      metric_workers=args.metric_workers, progress=not args.no_progress)
    json_path, markdown_path = report.save(args.out)
    print(report.markdown())
    print(f"wrote {json_path} and {markdown_path}")
    return 0

