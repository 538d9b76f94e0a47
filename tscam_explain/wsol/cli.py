"""``tscam-explain evaluate``: run an explainer over a WSOL dataset and write the report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import timm
import torch
from timm.data import resolve_data_config

from ..explainers import list_explainers, make_explainer
from ..models import backbone_of, load_model
from .datasets import CUBDataset, ILSVRCListDataset, ILSVRCXMLDataset, WSOLDataset, WSOLEvalDataset
from .harness import evaluate

DATASET_FORMATS = ("cub", "ilsvrc-xml", "ilsvrc-list", "wsolevaluation")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command to the ``tscam-explain`` parser.

    Args:
        subparsers: the main parser's subcommand collection.
    """
    parser = subparsers.add_parser(
        "evaluate", help="evaluate an explainer on a WSOL dataset (Top-1/5 Loc, GT-known, MaxBoxAcc, PxAP)",
        description="Explain every image of a WSOL dataset for its ground-truth class and write report.json "
                    "and report.md with the protocol's metrics, the settings and the package versions.")
    parser.add_argument("--checkpoint", type=Path, help="a tscam-explain model file (TS-CAM or TRT)")
    parser.add_argument("--model", default="deit_small_patch16_224",
                        help="timm model name, used when no --checkpoint is given (default: %(default)s)")
    parser.add_argument("--pretrained", action="store_true", help="with --model: timm's pretrained weights (needs the hub)")
    parser.add_argument("--explainer", default="tscam", help=f"one of {', '.join(list_explainers())} (default: %(default)s)")
    parser.add_argument("--protocol", choices=("tscam", "maxboxacc"), default="tscam",
                        help="tscam: the seeds' fixed threshold; maxboxacc: wsolevaluation's sweep (default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True,
                        help="cub: the CUB_200_2011 folder; ilsvrc-xml: the XML folder; ilsvrc-list: the list "
                             "file; wsolevaluation: the metadata split folder")
    parser.add_argument("--dataset-format", choices=DATASET_FORMATS, default="cub", help="(default: %(default)s)")
    parser.add_argument("--image-dir", type=Path, help="image root (ilsvrc-xml, ilsvrc-list, wsolevaluation)")
    parser.add_argument("--mask-dir", type=Path, help="mask root (wsolevaluation OpenImages)")
    parser.add_argument("--synsets", type=Path, help="ilsvrc-xml: class order, one synset per line")
    parser.add_argument("--split", choices=("test", "train", "all"), default="test", help="cub split (default: %(default)s)")
    parser.add_argument("--cam-threshold", type=float, help="tscam protocol threshold (default: 0.1 CUB, 0.12 ILSVRC)")
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


def build_dataset(args: argparse.Namespace, mean: Sequence[float], std: Sequence[float]) -> WSOLDataset:
    """The reader of ``--dataset-format`` for ``--protocol``, with a clear error for missing options.

    Args:
        args: the parsed ``evaluate`` options.
        mean: the model's normalisation mean.
        std: the model's normalisation standard deviation.
    """
    needs = {"ilsvrc-xml": ("image_dir", "synsets"), "ilsvrc-list": ("image_dir",), "wsolevaluation": ("image_dir",)}
    for option in needs.get(args.dataset_format, ()):
        if getattr(args, option) is None:
            raise SystemExit(f"--dataset-format {args.dataset_format} needs --{option.replace('_', '-')}")
    normalization = dict(mean=mean, std=std)
    if args.dataset_format == "cub":
        return CUBDataset(args.data, args.split, args.protocol, **normalization)
    if args.dataset_format == "ilsvrc-xml":
        return ILSVRCXMLDataset(args.data, args.image_dir, args.synsets, args.protocol, **normalization)
    if args.dataset_format == "ilsvrc-list":
        return ILSVRCListDataset(args.data, args.image_dir, protocol=args.protocol, **normalization)
    return WSOLEvalDataset(args.data, args.image_dir, args.mask_dir, args.protocol, **normalization)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the explainer and dataset, evaluate, write and print the report.

    Args:
        args: the parsed ``evaluate`` options.
    """
    if args.checkpoint is not None:
        model = load_model(args.checkpoint, map_location=args.device)
    else:
        model = timm.create_model(args.model, pretrained=args.pretrained)
    # images are normalised as the backbone was trained (ImageNet's statistics for DeiT, not for every ViT)
    config = resolve_data_config({}, model=backbone_of(model))
    dataset = build_dataset(args, config["mean"], config["std"])
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
