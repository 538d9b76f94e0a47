"""``tscam-explain train``: train TS-CAM or TRT with a recipe, on one device or under ``torchrun``.

    tscam-explain train --recipe tscam --data CUB_200_2011 --model deit_small_patch16_224 --pretrained --out runs/cub
    torchrun --nproc_per_node 8 -m tscam_explain.cli train --recipe tscam --defaults ilsvrc --data ILSVRC/train ...
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist

from ..models import HEADS
from .components import AMP_CHOICES, build_model, data_normalization, load_stage1, seed_everything
from .data import DATA_FORMATS, build_data, detect_defaults
from .loop import RunOptions, train
from .recipes import DATASET_DEFAULTS, RECIPES, Recipe, get_recipe, list_recipes, recipe_fields

__all__ = ["register", "run"]

_CHOICES = {"train_transform": ("resize_crop", "timm"), "head": tuple(sorted(HEADS))}


def _recipes_epilog() -> str:
    lines = [f"recipes (values: {' / '.join(name.upper() for name in DATASET_DEFAULTS)} defaults):"]
    for name, description in list_recipes().items():
        records = [RECIPES[name][dataset] for dataset in DATASET_DEFAULTS]

        def each(value) -> str:
            return "/".join(value(record) for record in records)

        lines.append(f"  {name:<11} {description}")
        lines.append(f"  {'':<11} epochs {each(lambda r: str(r.epochs))}, batch {each(lambda r: str(r.batch_size))}, "
                     f"lr {each(lambda r: f'{r.lr:g}')}, lr x{each(lambda r: f'{r.lr_decay_rate:g}')} at epochs "
                     f"{each(lambda r: str(list(r.lr_decay_epochs)))}"
                     + (f", u {each(lambda r: str(r.u))}" if records[0].u is not None else ""))
    lines.append("every recipe field can be overridden (see 'recipe overrides'); docs/training.md has the sources")
    return "\n".join(lines)


def _none_or(parse):
    """Parser for an optional field: the word ``none`` gives ``None``."""
    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)
    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _field_help() -> Dict[str, str]:
    """Each field's description from :class:`Recipe`'s ``Args:`` docstring (one source for both)."""
    descriptions: Dict[str, str] = {}
    current = None
    for line in (Recipe.__doc__ or "").split("Args:", 1)[-1].splitlines():
        match = re.match(r"^ {8}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            descriptions[current] = match.group(2)
        elif current and line.startswith(" " * 12):
            descriptions[current] += " " + line.strip()
    return {name: text.replace("``", "").replace("%", "%%") for name, text in descriptions.items()}


def _add_recipe_overrides(parser: argparse.ArgumentParser) -> None:
    """One option per overridable :class:`Recipe` field, typed from the dataclass; unset options keep
    the recipe's value (``argparse.SUPPRESS``), so only what the user typed overrides it."""
    group = parser.add_argument_group("recipe overrides (default: the recipe's value)")
    hints = typing.get_type_hints(Recipe)
    helps = _field_help()
    for spec in recipe_fields():
        hint = hints[spec.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "dest": spec.name, "help": helps.get(spec.name)}
        if origin is typing.Union:  # Optional[X]
            kwargs["type"] = _none_or(args[0])
            kwargs["metavar"] = f"{args[0].__name__.upper()}|none"
        elif origin is tuple:
            kwargs["type"] = args[0]
            kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
            if spec.name == "no_weight_decay":
                kwargs["nargs"] = "*"
        else:
            kwargs["type"] = hint
        if spec.name in _CHOICES:
            kwargs["choices"] = _CHOICES[spec.name]
        group.add_argument("--" + spec.name.replace("_", "-"), **kwargs)


def _model_kwargs(pairs: List[str]) -> Dict[str, Any]:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-kwargs takes KEY=VALUE pairs (e.g. depth=6), got {pair!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare word, e.g. act_layer=gelu
    return kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train TS-CAM or TRT with a recipe (recipes: " + ", ".join(RECIPES) + ")",
        description=__doc__, epilog=_recipes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="what to train (see below)")
    parser.add_argument("--defaults", choices=("auto",) + DATASET_DEFAULTS, default="auto",
                        help="whose hyperparameters: the official cub or ilsvrc ones, or synth (ours, for the "
                             "generated benchmark); default auto: synth for a folder 'tscam-explain synth' wrote, "
                             "ilsvrc for an ILSVRC metadata folder or a 1000-class folder, cub otherwise")
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, type=Path,
                      help="CUB_200_2011 folder, an ImageFolder (class sub-folders, e.g. ILSVRC train), or an "
                           "image root read through --train-metadata")
    data.add_argument("--format", choices=DATA_FORMATS, default="auto", dest="data_format",
                      help="how to read --data (default: auto-detect)")
    data.add_argument("--train-metadata", type=Path,
                      help="wsolevaluation metadata folder of the training split (e.g. metadata/CUB/train)")
    data.add_argument("--boxes", type=Path,
                      help="ground-truth boxes of an ImageFolder, for localisation metrics on the held-out split")
    data.add_argument("--val-metadata", type=Path,
                      help="wsolevaluation metadata folder of a validation split (CUBV2: metadata/CUB/val, "
                           "ImageNetV2: metadata/ILSVRC/val); its images are under --val-images")
    data.add_argument("--val-images", type=Path, help="image root of --val-metadata (default: --data)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="without --val-metadata: fraction of the training images held out (seeded) to pick "
                           "best.pt; 0 disables validation (default: %(default)s). The test split is never used")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="timm ViT name, e.g. deit_small_patch16_224 (not for trt-stage2)")
    model.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (needs the hub)")
    model.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                       help="extra timm.create_model arguments, e.g. depth=6 patch_size=8")
    model.add_argument("--stage1", type=Path, help="trt-stage2: the stage-1 run's model.pt / best.pt / last.pt")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", required=True, type=Path, help="output folder")
    run_group.add_argument("--resume", nargs="?", const="auto", type=str,
                           help="continue from a last.pt (no value: OUT/last.pt)")
    run_group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    run_group.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                           help="autocast precision (default auto: bf16 on a CUDA GPU that supports it, else fp32)")
    run_group.add_argument("--workers", type=int, help="data-loader workers per process (default: automatic)")
    run_group.add_argument("--accum-steps", type=int, default=1,
                           help="micro-batches per optimizer step; the recipe's batch stays the global batch")
    run_group.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                           help="also write last.pt every STEPS optimizer steps (default: epoch ends only)")
    run_group.add_argument("--stop-after-steps", type=int, metavar="STEPS",
                           help="write last.pt and stop after STEPS optimizer steps (time-limited jobs)")
    run_group.add_argument("--seed", type=int, default=0)
    run_group.add_argument("--deterministic", action="store_true",
                           help="deterministic CUDA kernels (bit-exact resume on GPU; slower)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_recipe_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {spec.name: getattr(args, spec.name) for spec in recipe_fields() if hasattr(args, spec.name)}
    resume: Optional[Path] = None
    if args.resume is not None:
        resume = args.out / "last.pt" if args.resume == "auto" else Path(args.resume)
    stage1_model = None
    if args.recipe == "trt-stage2":
        if args.stage1 is None:
            raise SystemExit("trt-stage2 trains the CAM branch of a stage-1 model: pass --stage1 PATH")
        stage1_model = load_stage1(args.stage1)
    elif args.model is None:
        raise SystemExit(f"--recipe {args.recipe} needs --model (a timm ViT name, e.g. deit_small_patch16_224)")
    defaults = args.defaults
    if defaults == "auto":
        defaults = detect_defaults(args.data, args.data_format, args.train_metadata)
    recipe = get_recipe(args.recipe, defaults, **overrides)
    dataset = build_data(
        recipe, args.data, data_format=args.data_format, normalization=data_normalization(stage1_model or args.model),
        train_metadata=args.train_metadata, boxes=args.boxes, val_metadata=args.val_metadata,
        val_images=args.val_images, val_fraction=args.val_fraction, seed=args.seed)
    seed_everything(args.seed)
    if stage1_model is not None:
        model = stage1_model
    else:
        # on resume the weights come from the checkpoint: no need to fetch the pretrained ones
        model = build_model(recipe, dataset.num_classes, args.model, pretrained=args.pretrained and resume is None,
                            model_kwargs=_model_kwargs(args.model_kwargs))
    options = RunOptions(
        out_dir=args.out, device=args.device, amp=args.amp, workers=args.workers, accum_steps=args.accum_steps,
        checkpoint_every=args.checkpoint_every, seed=args.seed, resume=resume, stop_after_steps=args.stop_after_steps,
        deterministic=args.deterministic, progress=not args.no_progress)
    result = train(recipe, model, dataset, options)
    if dist.is_initialized():  # launched by torchrun: leave the process group cleanly
        dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        if result.best is not None:
            print(f"best {result.best['metric']} = {result.best['value']:.4f} at epoch {result.best['epoch']}")
        print(("finished" if result.finished else "stopped") + f" at {result.position.as_dict()}; files in {args.out}")
    return 0
