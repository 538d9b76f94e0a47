"""Explain a timm ViT with TS-CAM (training-free) beside Grad-CAM, the pytorch-grad-cam way.

    python examples/explain_timm_vit.py [--image cat.jpg] [--model deit_small_patch16_224] [--pretrained]

Without --pretrained the weights are random (offline); with it timm downloads them once.
"""
import argparse

import numpy as np
import timm
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.data import create_transform, resolve_data_config

from tscam_explain import TSCAMExplainer, make_explainer
from tscam_explain.synth import generate

parser = argparse.ArgumentParser()
parser.add_argument("--image")
parser.add_argument("--model", default="deit_small_patch16_224")
parser.add_argument("--pretrained", action="store_true")
parser.add_argument("--out", default="example.png")
args = parser.parse_args()

model = timm.create_model(args.model, pretrained=args.pretrained).eval()
config = resolve_data_config({}, model=model)
image = Image.open(args.image).convert("RGB") if args.image else Image.fromarray(generate(0, 0, 224).image)
input_tensor = create_transform(**config)(image)[None]

with TSCAMExplainer(model) as cam:
    tscam_maps = cam(input_tensor)                      # top-1 class
    top1 = int(cam.outputs.argmax())
targets = [ClassifierOutputTarget(top1)]
with make_explainer("gradcam", model) as cam:            # pytorch-grad-cam's own GradCAM
    gradcam_maps = cam(input_tensor, targets)

mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
rgb = (input_tensor[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
panels = [show_cam_on_image(rgb, m[0], use_rgb=True) for m in (tscam_maps, gradcam_maps)]
Image.fromarray(np.concatenate(panels, axis=1)).save(args.out)
print(f"class {top1}: TS-CAM | Grad-CAM overlays written to {args.out}")
