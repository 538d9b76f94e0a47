"""Training transforms of the recipes, built from timm's data utilities.

``timm`` recipes (TRT on ILSVRC) go straight to ``timm.data.create_transform`` (RandomResizedCrop,
flip, RandAugment, random erasing). The official TS-CAM / TRT-on-CUB transform is
Resize((256, 256)) → RandomCrop(224) → flip → normalise; timm's training pipeline always starts
with a random-resized crop and cannot express a fixed squash-resize followed by a plain random
crop, so that one is a four-step torchvision ``Compose``.
"""
from __future__ import annotations

from typing import Callable, Tuple

from timm.data import create_transform
from torchvision import transforms as T

from .recipes import Recipe

__all__ = ["train_transform"]


def train_transform(recipe: Recipe, mean: Tuple[float, ...], std: Tuple[float, ...]) -> Callable:
    """The recipe's training transform (PIL image → normalised tensor).

    Args:
        recipe: ``train_transform`` picks ``resize_crop`` (official TS-CAM) or ``timm``; the other
            augmentation fields parameterise it.
        mean: normalisation mean.
        std: normalisation std.
    """
    if recipe.train_transform == "resize_crop":
        return T.Compose([
            T.Resize((recipe.resize_size, recipe.resize_size)),
            T.RandomCrop(recipe.img_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])
    return create_transform(
        input_size=recipe.img_size, is_training=True, scale=recipe.crop_scale, color_jitter=recipe.color_jitter,
        auto_augment=recipe.auto_augment, interpolation=recipe.interpolation, re_prob=recipe.re_prob,
        re_mode=recipe.re_mode, re_count=1, mean=mean, std=std,
    )
