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
from .models import backbone_of, load_model
from .vit import input_config

DEFAULT_EXPLAINERS = ("tscam", "transattention", "transcam", "gradcam", "layercam", "scorecam")


def generated_image(size: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic synthetic scene (textured background, two objects) for offline demos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([0.35 + 0.3 * xx, 0.45 + 0.2 * yy, 0.55 - 0.25 * xx], axis=-1)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    cv2.ellipse(image, (int(0.35 * size), int(0.55 * size)), (int(0.2 * size), int(0.13 * size)), 20, 0, 360,
                (200, 60, 40), -1)
    cv2.rectangle(image, (int(0.62 * size), int(0.15 * size)), (int(0.85 * size), int(0.4 * size)), (40, 90, 200), -1)
    return Image.fromarray(image)


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
        description="Explain an image (default: a generated one) with TS-CAM and baselines; "
                    "write one overlay panel per explainer. Runs offline with a random-init model by default.")
    parser.add_argument("--image", type=Path, help="image file (default: a generated synthetic scene)")
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="a tscam-explain model file (TS-CAM or TRT) or an official "
                        "TS-CAM / TRT checkpoint; overrides --model")
    parser.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (needs the hub)")
    parser.add_argument("--explainers", default=",".join(DEFAULT_EXPLAINERS),
                        help=f"comma-separated names (default: %(default)s); any of {', '.join(list_explainers())}")
    parser.add_argument("--target", type=int, help="class to explain (default: the top-1 prediction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init model and generated image")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.checkpoint is not None:
        model = load_model(args.checkpoint)
        if hasattr(model, "official"):
            print(model.official.describe())
    else:
        model = timm.create_model(args.model, pretrained=args.pretrained)
    model.eval()
    vit = backbone_of(model)
    config = input_config(vit)
    transform = create_transform(**config)
    image = Image.open(args.image).convert("RGB") if args.image else generated_image(config["input_size"][-1], args.seed)
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
