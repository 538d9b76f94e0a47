"""How the shipped models are made: ``tscam-explain pretrained build NAME``, one command each.

Each build writes the generated training set (seed :data:`TRAIN_DATA`), runs the exact
``tscam-explain train`` command lines of :data:`SHIPPED` (the project's one training loop, with the
committed ``synth`` recipes), scores the selected checkpoint (``best.pt``) on a held-out generated test
set (seed :data:`TEST_DATA`, never used in training) next to the same architecture at random init, and
writes the float16 weights and the model card into the package (:func:`~tscam_explain.pretrained.save_pretrained`).
"""
from __future__ import annotations

import datetime
import json
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import synth
from ..checkpoint import PathLike
from ..explainers import make_explainer, release_explainer
from ..models import create_model, load_model
from ..vit import input_config
from ..wsol import evaluate
from ..wsol.harness import TSCAM_CAM_THRESHOLDS, package_versions
from . import PRETRAINED_DIR, save_pretrained

__all__ = ["SHIPPED", "ShippedModel", "TRAIN_DATA", "TEST_DATA", "build", "score_on_synth"]

#: the generated training set (the validation split that picks best.pt is held out of it)
TRAIN_DATA = {"seed": 1, "images": 6000, "size": 96}
#: the held-out generated test set of the model cards (the demo uses its first 300 images)
TEST_DATA = {"seed": 2, "images": 1000, "size": 96}
#: the tiny ViT all three share: 96 px, 8 px patches (a 12 × 12 grid), width 96, 6 blocks, 3 heads
BACKBONE = ("--model", "deit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=96", "depth=6",
            "num_heads=3")


@dataclass(frozen=True)
class ShippedModel:
    """A shipped model: what it is, the train commands that make it, the explainer its card scores.

    Args:
        description: one line for the card.
        stages: ``tscam-explain train`` arguments per stage (``--data``, ``--out`` and ``--device`` are
            added; ``{previous}`` is the previous stage's output folder).
        explainer: the explainer whose localisation the card reports.
    """

    description: str
    stages: Tuple[Tuple[str, ...], ...]
    explainer: str


SHIPPED: Dict[str, ShippedModel] = {
    "tscam-synth": ShippedModel("TS-CAM (conv2d head) on a tiny DeiT, trained from scratch on the generated benchmark",
                                (("--recipe", "tscam", *BACKBONE),), "tscam"),
    "trt-synth": ShippedModel("TRT (TPSM + CAM branch, both stages) on a tiny DeiT, trained from scratch on the "
                              "generated benchmark",
                              (("--recipe", "trt-stage1", *BACKBONE),
                               ("--recipe", "trt-stage2", "--stage1", "{previous}/best.pt")), "trt"),
    "vit-synth": ShippedModel("a plain timm ViT classifier (tiny DeiT) trained from scratch on the generated "
                              "benchmark; TS-CAM's training-free mode and pytorch-grad-cam's methods explain it",
                              (("--recipe", "vit", *BACKBONE),), "tscam"),
}


def score_on_synth(model: nn.Module, explainer_name: str, root: PathLike, images: int, seed: int, size: int,
                   batch_size: int = 64) -> Dict[str, float]:
    """Classification and localisation of ``model`` on a generated test set: Top-1 cls, the seeds'
    GT-known and Top-1 Loc (CUB's threshold 0.1), MaxBoxAcc, MaxBoxAccV2 and PxAP.

    Args:
        model: the model.
        explainer_name: the explainer that makes its maps.
        root: folder of the test set (written if absent).
        images: test images.
        seed: test set seed.
        size: image side.
        batch_size: images per forward pass.
    """
    from ..bench.data import synth_data

    data = synth_data(root, images=images, seed=seed, size=size)
    config = input_config(model.backbone if hasattr(model, "backbone") else model)
    side, mean, std = config["input_size"][-1], config["mean"], config["std"]
    explainer = make_explainer(explainer_name, model.eval())
    try:
        seeds = evaluate(explainer, data.make_reader("tscam", side, mean, std), "tscam",
                         cam_threshold=TSCAM_CAM_THRESHOLDS["CUB"], batch_size=batch_size, progress=False)
        boxes = evaluate(explainer, data.make_reader("maxboxacc", side, mean, std), "maxboxacc",
                         batch_size=batch_size, progress=False)
        pixels = evaluate(explainer, data.make_mask_reader("maxboxacc", side, mean, std), "maxboxacc",
                          batch_size=batch_size, progress=False)
    finally:
        release_explainer(explainer)
    localization = seeds.metrics["localization"]
    return {"top1_cls": localization["top1_cls"], "gt_known": localization["gt_known"],
            "top1_loc": localization["top1_loc"], "MaxBoxAcc": boxes.metrics["MaxBoxAcc"]["per_iou"][50],
            "MaxBoxAccV2": boxes.metrics["MaxBoxAccV2"]["mean"], "PxAP": pixels.metrics["PxAP"]}


def _stage_seconds(run_dir: Path) -> Dict[str, float]:
    """Training and validation seconds of a run, from its log (start-up and checkpoint writes excluded)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    train = sum(record.get("train_seconds", 0.0) for record in records)
    validation = sum(record.get("val_seconds", 0.0) for record in records)
    return {"train_seconds": round(train, 1), "validation_seconds": round(validation, 1),
            "epochs": len(records), "img_per_s_last_epoch": round(records[-1]["img_per_s"], 1)}


def build(name: str, *, data_dir: PathLike = "data", runs_dir: PathLike = "runs",
          out_dir: PathLike = PRETRAINED_DIR, device: str = "auto", extra: Sequence[str] = ()) -> Path:
    """Train shipped model ``name`` with its committed commands and write its weights and card.

    Args:
        name: one of :data:`SHIPPED`.
        data_dir: where the generated training and test sets go.
        runs_dir: where the training runs go (``runs_dir/name``, ``…-stage1`` for TRT).
        out_dir: where the weights and the card go (default: inside the package, to ship them).
        device: training device (``auto``: CUDA if present).
        extra: more ``tscam-explain train`` options for every stage (e.g. ``--amp fp32``).

    Returns:
        The weights file.
    """
    from ..cli import main

    if name not in SHIPPED:
        raise ValueError(f"unknown shipped model {name!r}; expected one of {sorted(SHIPPED)}")
    spec = SHIPPED[name]
    data_dir, runs_dir = Path(data_dir), Path(runs_dir)
    train_dir = synth.ensure_dataset(data_dir / "synth-train", TRAIN_DATA["images"], TRAIN_DATA["seed"],
                                     TRAIN_DATA["size"], split="train")
    commands: List[str] = [shlex.join(["tscam-explain", "synth", "--out", str(train_dir), "--images",
                                       str(TRAIN_DATA["images"]), "--seed", str(TRAIN_DATA["seed"]), "--size",
                                       str(TRAIN_DATA["size"]), "--split", "train"])]
    stages: List[Dict[str, Any]] = []
    previous: Optional[Path] = None
    for index, stage in enumerate(spec.stages, start=1):
        run_dir = runs_dir / (name if index == len(spec.stages) else f"{name}-stage{index}")
        arguments = [part.format(previous=previous) for part in stage]
        argv = ["train", *arguments, "--data", str(train_dir), "--out", str(run_dir), "--device", device,
                "--no-progress", *extra]
        commands.append(shlex.join(["tscam-explain", *argv]))
        main(argv)
        run = json.loads((run_dir / "run.json").read_text())
        stages.append({"recipe": run["recipe"], "device": run["device"], "amp": run["amp"],
                       **_stage_seconds(run_dir)})
        previous = run_dir
    model = load_model(previous / "best.pt")
    selection = torch.load(previous / "best.pt", map_location="cpu", weights_only=True).get("selection")
    test_root = data_dir / "synth-test"
    scores = score_on_synth(model, spec.explainer, test_root, **TEST_DATA)
    torch.manual_seed(0)
    random_init = create_model(model.arch, **{**model.config, "pretrained": False})
    random_scores = score_on_synth(random_init, spec.explainer, test_root, **TEST_DATA)
    card = {
        "name": name, "description": spec.description, "arch": model.arch, "config": model.config,
        "explainer": spec.explainer,
        "train_data": {**TRAIN_DATA, "split": "train", "generator_version": synth.GENERATOR_VERSION,
                       "validation": "10% of the training images held out per class (seed 0) to pick best.pt"},
        "test_data": {**TEST_DATA, "generator_version": synth.GENERATOR_VERSION},
        "commands": commands, "build_command": f"tscam-explain pretrained build {name}",
        "stages": stages, "selection": selection,
        "metrics": {"test": scores, "random_init_test": random_scores,
                    "protocols": "top1_cls, gt_known, top1_loc: the seeds' protocol at CAM threshold 0.1; MaxBoxAcc, "
                                 "MaxBoxAccV2, PxAP: wsolevaluation's (percent)"},
        "environment": {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                        **package_versions()},
    }
    return save_pretrained(model, card, out_dir, name)
