"""``tscam-explain explain``: explain one image with several explainers and write an overlay grid."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np
import timm
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image
from timm.data import create_transform

from .explainers import list_explainers, make_explainer
from .models import backbone_of
from .pretrained import open_model
from .synth import generate
from .vit import input_config

DEFAULT_EXPLAINERS = ("tscam", "transattention", "transcam", "rollout", "chefer", "legrad", "gradcam", "layercam",
                      "scorecam")


def overlay_grid(rgb: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """The image followed by one ``show_cam_on_image`` panel per map, titled, in one row."""
    panels = [(rgb * 255).astype(np.uint8)] + [show_cam_on_image(rgb, cam, use_rgb=True) for cam in maps]
    titled = []
    for panel, title in zip(panels, ["input", *titles]):
        header = np.full((24, panel.shape[1], 3), 255, np.uint8)
        cv2.putText(header, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        titled.append(np.concatenate([header, panel], axis=0))
    return np.concatenate(titled, axis=1)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="explain an image with several explainers and write an overlay PNG grid",
        description="Explain an image (default: one of the generated benchmark) with TS-CAM and baselines; "
                    "write one overlay panel per explainer. Offline by default: the shipped vit-synth model.")
    parser.add_argument("--image", type=Path, help="image file (default: a generated benchmark image, docs/synth.md)")
    parser.add_argument("--model", help="timm ViT name, random weights unless --pretrained")
    parser.add_argument("--checkpoint", default=None,
                        help="a shipped model name (tscam-synth, trt-synth, vit-synth), a tscam-explain model file or "
                             "an official TS-CAM / TRT checkpoint (default: vit-synth unless --model is given)")
    parser.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (needs the hub)")
    parser.add_argument("--explainers", default=",".join(DEFAULT_EXPLAINERS),
                        help=f"comma-separated names (default: %(default)s); any of {', '.join(list_explainers())}")
    parser.add_argument("--target", type=int, help="class to explain (default: the top-1 prediction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init model and generated image")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.model is not None and args.checkpoint is None:
        model = timm.create_model(args.model, pretrained=args.pretrained)
    else:
        model = open_model(args.checkpoint or "vit-synth")
        if hasattr(model, "official"):
            print(model.official.describe())
    model.eval()
    vit = backbone_of(model)
    config = input_config(vit)
    transform = create_transform(**config)
    image = (Image.open(args.image).convert("RGB") if args.image
             else Image.fromarray(generate(args.seed, 0, config["input_size"][-1]).image))
    input_tensor = transform(image)[None]
    # the panel background is exactly what the model saw (after timm's resize and crop)
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    rgb = (input_tensor[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()

    names: List[str] = [name.strip() for name in args.explainers.split(",") if name.strip()]
    targets: Optional[list] = None if args.target is None else [args.target]
    maps, titles = [], []
    for name in names:
        with make_explainer(name, model) as explainer:
            start = time.perf_counter()
            cam = explainer(input_tensor, targets)[0]
            seconds = time.perf_counter() - start
        maps.append(cam)
        titles.append(f"{name} {seconds:.2f}s")
        print(f"{name:>16}: {seconds:7.3f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "explain.png"
    Image.fromarray(overlay_grid(rgb, maps, titles)).save(path)
    print(f"wrote {path}")
    return 0
