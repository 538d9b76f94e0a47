"""Training recipes as data: one frozen record per recipe and dataset.

A :class:`Recipe` holds everything the training loop needs to know that is not about the run
(paths, devices): the model it builds, what it trains, optimizer, weight-decay rule, schedule,
epochs, global batch, augmentation and TRT's ``u``. Values come from ``methods.md`` §2–3 (the
official TS-CAM / TRT code where it differs from the papers); ``source`` says where each record's
values come from. :func:`get_recipe` applies overrides (every hyperparameter field can be
overridden, from Python or the CLI).

Learning-rate schedule. Both official codes call ``adjust_learning_rate_normal`` at the start of
each 1-based epoch ``e`` and multiply the lr by ``LR_FACTOR`` whenever ``e`` is a multiple of one
of ``LR_STEPS``. So ``LR_STEPS: [30]`` over 60 epochs decays at epochs 30 *and* 60.
``lr_decay_epochs`` lists those 1-based epochs explicitly (the multiples spelled out), which is
also timm's ``MultiStepLRScheduler`` convention: milestone ``m`` applies from 0-based epoch ``m - 1``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

__all__ = ["Recipe", "RECIPES", "DATASET_DEFAULTS", "TRAINABLE", "get_recipe", "list_recipes", "recipe_fields"]

#: What a recipe trains: ``all`` (backbone and head, or the whole ``vit`` classifier), ``head`` (TS-CAM head, backbone frozen),
#: ``stage1`` (TRT backbone + TPSM), ``stage2`` (TRT CAM branch, stage-1 frozen).
TRAINABLE = ("all", "head", "stage1", "stage2")
#: Whose hyperparameters a record carries: the official CUB or ILSVRC values, or ours for the
#: generated benchmark (``tscam_explain.synth``: tiny ViTs trained from scratch on 2 CPU cores).
DATASET_DEFAULTS = ("cub", "ilsvrc", "synth")
#: Fields that define a recipe rather than tune it: not overridable.
_IDENTITY_FIELDS = ("name", "dataset", "arch", "trainable", "source")


@dataclass(frozen=True)
class Recipe:
    """One training recipe for one dataset's defaults.

    Args:
        name: recipe name (``tscam``, ``tscam-head``, ``trt-stage1``, ``trt-stage2``, ``vit``).
        dataset: whose defaults these are: ``cub`` or ``ilsvrc`` (official values) or ``synth`` (ours).
        arch: the model architecture it builds (``tscam``, ``trt`` or ``vit``).
        trainable: what is trained, one of :data:`TRAINABLE`.
        source: where the values come from.
        epochs: number of epochs.
        batch_size: global batch size (over all processes and accumulation steps), as the official
            single-node DataParallel batch.
        lr: learning rate (one for all trained parameters).
        lr_decay_epochs: 1-based epochs at whose start the lr is multiplied by ``lr_decay_rate``.
        lr_decay_rate: the multiplier.
        opt: timm optimizer name.
        opt_eps: optimizer epsilon.
        opt_betas: Adam betas.
        weight_decay: decoupled weight decay.
        no_weight_decay: parameter leaf names without weight decay (besides every 1-D parameter and
            bias, which timm's rule always exempts).
        drop_path: stochastic depth rate of the backbone.
        label_smoothing: cross-entropy label smoothing.
        img_size: training and evaluation input size (square).
        train_transform: ``resize_crop`` (official TS-CAM: Resize(resize, resize) → RandomCrop(img) →
            flip) or ``timm`` (timm's ``create_transform``: RandomResizedCrop, flip, RandAugment, …).
        resize_size: the square resize before the random crop of ``resize_crop``.
        crop_scale: RandomResizedCrop area range (``timm`` transform).
        color_jitter: colour jitter strength (``timm`` transform; timm skips it when RandAugment is on).
        auto_augment: timm RandAugment / AutoAugment spec, e.g. ``rand-m9-mstd0.5-inc1`` (``timm``).
        interpolation: resize interpolation of the ``timm`` transform.
        re_prob: random-erasing probability (``timm``).
        re_mode: random-erasing fill mode (``timm``).
        u: TRT's cumulative-mass threshold of the token selection, set in stage 1 (``None`` for
            TS-CAM and for TRT stage 2, which keeps the u its stage-1 model was built with).
        head: TS-CAM head type: ``conv2d``, ``conv1d`` or ``fc``.
    """

    name: str
    dataset: str
    arch: str
    trainable: str
    source: str
    epochs: int
    batch_size: int
    lr: float
    lr_decay_epochs: Tuple[int, ...]
    lr_decay_rate: float = 0.1
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    # dist_token / reg_token play cls_token's role in distilled / register ViTs; the official
    # DeiT backbones have neither, so for them the rule is exactly the official one
    no_weight_decay: Tuple[str, ...] = ("pos_embed", "cls_token", "dist_token", "reg_token")
    drop_path: float = 0.1
    label_smoothing: float = 0.0
    img_size: int = 224
    train_transform: str = "resize_crop"
    resize_size: int = 256
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.4
    auto_augment: Optional[str] = None
    interpolation: str = "bilinear"
    re_prob: float = 0.0
    re_mode: str = "pixel"
    u: Optional[float] = None
    head: str = "conv2d"

    def __post_init__(self) -> None:
        problems = []
        if self.trainable not in TRAINABLE:
            problems.append(f"trainable={self.trainable!r} (expected one of {TRAINABLE})")
        if self.dataset not in DATASET_DEFAULTS:
            problems.append(f"dataset={self.dataset!r} (expected one of {DATASET_DEFAULTS})")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (expected >= 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (expected >= 1)")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} (expected > 0)")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay} (expected >= 0)")
        if any(epoch < 1 for epoch in self.lr_decay_epochs) or list(self.lr_decay_epochs) != sorted(self.lr_decay_epochs):
            problems.append(f"lr_decay_epochs={self.lr_decay_epochs} (expected sorted 1-based epochs)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} (expected in [0, 1))")
        if self.train_transform not in ("resize_crop", "timm"):
            problems.append(f"train_transform={self.train_transform!r} (expected 'resize_crop' or 'timm')")
        if self.train_transform == "resize_crop" and self.resize_size < self.img_size:
            problems.append(f"resize_size={self.resize_size} < img_size={self.img_size} (the crop must fit)")
        if self.trainable == "stage1" and (self.u is None or not 0 < self.u <= 1):
            problems.append(f"u={self.u} (TRT stage 1 needs a threshold in (0, 1])")
        if self.trainable != "stage1" and self.u is not None:
            problems.append(f"u={self.u} (only trt-stage1 takes u; stage 2 keeps its stage-1 model's u)")
        if problems:
            raise ValueError(f"invalid recipe {self.name!r}: " + "; ".join(problems))


# --- the records ---------------------------------------------------------------------------------
_TSCAM_CUB = Recipe(
    name="tscam", dataset="cub", arch="tscam", trainable="all",
    source="methods.md §2; TS-CAM configs/CUB/deit_tscam_*.yaml (LR_STEPS [30], 60 epochs) and train_val_cub.sh",
    epochs=60, batch_size=128, lr=5e-5, lr_decay_epochs=(30, 60),
)
_TSCAM_ILSVRC = replace(
    _TSCAM_CUB, dataset="ilsvrc", epochs=20, batch_size=256, lr=5e-4, lr_decay_epochs=(10, 12, 20),
    source="methods.md §2; TS-CAM configs/ILSVRC/deit_tscam_*.yaml (LR_STEPS [10, 12], 20 epochs)",
)
# Not an official recipe: the cheap path for a user's own ViT. It keeps the official values,
# which already train the (randomly initialised) head from scratch within the official run.
_HEAD_CUB = replace(_TSCAM_CUB, name="tscam-head", trainable="head",
                    source="ours: tscam (CUB) values with the backbone frozen")
_HEAD_ILSVRC = replace(_TSCAM_ILSVRC, name="tscam-head", trainable="head",
                       source="ours: tscam (ILSVRC) values with the backbone frozen")
_TRT1_CUB = replace(
    _TSCAM_CUB, name="trt-stage1", arch="trt", trainable="stage1", epochs=30, lr_decay_epochs=(15, 30), u=0.6,
    source="methods.md §3; TRT configs/CUB/deit_trt_base_patch16_224_0.6.yaml (LR_STEPS [15], 30 epochs, u 0.6)",
)
_TRT1_ILSVRC = replace(
    _TRT1_CUB, dataset="ilsvrc", epochs=12, batch_size=512, lr=5e-4, lr_decay_epochs=(2, 4, 6, 8, 10, 12),
    lr_decay_rate=0.4, label_smoothing=0.1, u=0.95, train_transform="timm", crop_scale=(0.8, 1.0),
    auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25, re_mode="pixel",
    source="methods.md §3; TRT configs/ILSVRC/deit_trt_base_patch16_224_0.95.yaml (LR_STEPS [2,4,6,8] × 0.4, "
           "12 epochs, smoothing 0.1) and its ImageNet create_transform",
)
_TRT2_CUB = replace(
    _TRT1_CUB, name="trt-stage2", trainable="stage2", epochs=20, lr_decay_epochs=(10, 20), u=None,
    source="methods.md §3; TRT configs/CUB/deit_trt_fuse_base_patch16_224_0.6.yaml (LR_STEPS [10], 20 epochs)",
)
_TRT2_ILSVRC = replace(
    _TRT1_ILSVRC, name="trt-stage2", trainable="stage2", u=None,
    source="methods.md §3; TRT configs/ILSVRC/deit_trt_fuse_base_patch16_224_0.95.yaml (as stage 1)",
)

# A plain timm classifier (what pytorch-grad-cam's methods and training-free TS-CAM explain): TS-CAM's
# fine-tuning values, which are DeiT's usual fine-tuning values too.
_VIT_CUB = replace(_TSCAM_CUB, name="vit", arch="vit",
                   source="ours: a plain timm ViT classifier with the tscam (CUB) values")
_VIT_ILSVRC = replace(_TSCAM_ILSVRC, name="vit", arch="vit",
                      source="ours: a plain timm ViT classifier with the tscam (ILSVRC) values")

# The generated benchmark (docs/synth.md): tiny ViTs from scratch, so a larger lr than fine-tuning,
# 96 px images (the generator's default) and a crop from 108 px (TS-CAM's 256 → 224 ratio).
_SYNTH = dict(dataset="synth", batch_size=64, lr=1e-3, img_size=96, resize_size=108)
_TSCAM_SYNTH = replace(_TSCAM_CUB, **_SYNTH, epochs=20, lr_decay_epochs=(14, 18),
                       source="ours (docs/synth.md): tscam from scratch on the generated benchmark")
_HEAD_SYNTH = replace(_TSCAM_SYNTH, name="tscam-head", trainable="head",
                      source="ours: tscam (synth) values with the backbone frozen")
_VIT_SYNTH = replace(_TSCAM_SYNTH, name="vit", arch="vit",
                     source="ours (docs/synth.md): a plain ViT classifier from scratch on the generated benchmark")
_TRT1_SYNTH = replace(_TSCAM_SYNTH, name="trt-stage1", arch="trt", trainable="stage1", u=0.6,
                      source="ours (docs/synth.md): TRT stage 1 from scratch; u 0.6 as the official CUB-224 config")
_TRT2_SYNTH = replace(_TRT1_SYNTH, name="trt-stage2", trainable="stage2", u=None, epochs=8, lr_decay_epochs=(6,),
                      source="ours (docs/synth.md): TRT stage 2 on the synth stage-1 model")

#: recipe name → dataset defaults → record.
RECIPES: Dict[str, Dict[str, Recipe]] = {
    "tscam": {"cub": _TSCAM_CUB, "ilsvrc": _TSCAM_ILSVRC, "synth": _TSCAM_SYNTH},
    "tscam-head": {"cub": _HEAD_CUB, "ilsvrc": _HEAD_ILSVRC, "synth": _HEAD_SYNTH},
    "trt-stage1": {"cub": _TRT1_CUB, "ilsvrc": _TRT1_ILSVRC, "synth": _TRT1_SYNTH},
    "trt-stage2": {"cub": _TRT2_CUB, "ilsvrc": _TRT2_ILSVRC, "synth": _TRT2_SYNTH},
    "vit": {"cub": _VIT_CUB, "ilsvrc": _VIT_ILSVRC, "synth": _VIT_SYNTH},
}

_DESCRIPTIONS = {
    "tscam": "TS-CAM, full fine-tuning (official hyperparameters)",
    "tscam-head": "TS-CAM head only, backbone frozen (cheap path for your own ViT)",
    "trt-stage1": "TRT stage 1: backbone + token priority scoring module",
    "trt-stage2": "TRT stage 2: CAM branch only, stage 1 frozen (needs a stage-1 checkpoint)",
    "vit": "a plain timm ViT classifier (for pytorch-grad-cam's methods and training-free TS-CAM)",
}


def list_recipes() -> Dict[str, str]:
    """Recipe name → one-line description."""
    return dict(_DESCRIPTIONS)


def recipe_fields() -> Tuple[dataclasses.Field, ...]:
    """The overridable fields of :class:`Recipe` (every field but its identity)."""
    return tuple(f for f in dataclasses.fields(Recipe) if f.name not in _IDENTITY_FIELDS)


def get_recipe(name: str, dataset: str = "cub", **overrides: Any) -> Recipe:
    """The record of recipe ``name`` with ``dataset``'s defaults, with ``overrides`` applied.

    Args:
        name: one of :data:`RECIPES`.
        dataset: ``cub``, ``ilsvrc`` (official values) or ``synth`` (ours, for the generated benchmark).
        **overrides: field values replacing the defaults (``None`` values are ignored, so CLI
            options left unset keep the recipe's value).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    if dataset not in RECIPES[name]:
        raise ValueError(f"recipe {name!r} has no {dataset!r} defaults; expected one of {sorted(RECIPES[name])}")
    allowed = {f.name for f in recipe_fields()}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"cannot override {unknown} of a recipe; overridable fields: {sorted(allowed)}")
    changes = {key: value for key, value in overrides.items() if value is not None}
    for key in ("lr_decay_epochs", "opt_betas", "no_weight_decay", "crop_scale"):
        if key in changes:
            changes[key] = tuple(changes[key])
    return replace(RECIPES[name][dataset], **changes)
