"""Training data and the held-out validation split, from the WSOL harness's readers and torchvision.

What ``--data`` can be (:data:`DATA_FORMATS`):

* ``cub``: a ``CUB_200_2011`` folder, read by :class:`~tscam_explain.wsol.CUBDataset` (split
  ``train`` only; the test split is never touched);
* ``imagefolder``: one sub-folder per class (ILSVRC ``train/``, or your own data), read by
  torchvision's ``ImageFolder``; ``--boxes`` adds ground-truth boxes (a list file
  ``path label x0 y0 x1 y1 [x0 y0 x1 y1 …]`` with paths relative to the folder, read by
  :class:`~tscam_explain.wsol.ILSVRCListDataset`);
* ``wsol``: an image root with a wsolevaluation metadata folder of the training split
  (``--train-metadata metadata/CUB/train``), read by :class:`~tscam_explain.wsol.WSOLEvalDataset`.

Validation, which picks ``best.pt``, never uses the test split:

* with ``val_metadata`` (a wsolevaluation split folder such as CUBV2 ``metadata/CUB/val`` or
  ImageNetV2 ``metadata/ILSVRC/val``): that split, wsolevaluation's protocol, selected on MaxBoxAccV2;
* else a seeded, per-class ``val_fraction`` of the training images is held out (and not trained on):
  with boxes (CUB, ``--boxes``, wsol metadata) localisation through the harness's accumulators
  (TS-CAM's protocol, GT-known, for CUB and image folders; MaxBoxAccV2 for wsol metadata), without
  boxes Top-1 classification.

TRT stage 1 is always validated on Top-1 classification (its CAM branch, which the maps need, is
only trained in stage 2), and so is the plain ``vit`` classifier.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from ..explainers import make_explainer
from ..wsol import (TSCAM_CAM_THRESHOLDS, ClassificationAccuracy, CUBDataset, ILSVRCListDataset, WSOLEvalDataset,
                    evaluate, wsol_collate)
from ..wsol.datasets import WSOLDataset, eval_transform
from ..synth import SYNTH_MARKER
from .components import loader_options
from .distributed import DistContext
from .loop import TrainData
from .recipes import Recipe
from .transforms import train_transform

__all__ = ["DATA_FORMATS", "build_data", "detect_defaults", "detect_format", "holdout_split", "LabelledImages"]

DATA_FORMATS = ("auto", "cub", "imagefolder", "wsol")
#: images per validation forward pass and process (no gradients: small next to a training batch)
VAL_BATCH_SIZE = 32
_ILSVRC_CLASSES = 1000


class LabelledImages(Dataset):
    """``(transform(image), label)`` for a list of ``(path, label)``: the training view of any reader.

    Args:
        samples: image paths and 0-based labels.
        transform: PIL image → tensor.
    """

    def __init__(self, samples: Sequence[Tuple[Path, int]], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def detect_format(data: Path, data_format: str = "auto", train_metadata: Optional[Path] = None) -> str:
    """How to read ``data``: the given format, or ``wsol`` with metadata, ``cub`` for a CUB folder,
    ``imagefolder`` for a folder of class folders."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; expected one of {DATA_FORMATS}")
    if data_format != "auto":
        return data_format
    if train_metadata is not None:
        return "wsol"
    if not Path(data).is_dir():
        raise FileNotFoundError(f"training data folder not found: {data}")
    if (Path(data) / "images.txt").is_file() and (Path(data) / "train_test_split.txt").is_file():
        return "cub"
    if any(child.is_dir() for child in Path(data).iterdir()):
        return "imagefolder"
    raise ValueError(f"cannot tell how to read {data}: expected a CUB_200_2011 folder (images.txt, "
                     "train_test_split.txt, …), a folder with one sub-folder of images per class, or "
                     "--train-metadata with a wsolevaluation metadata folder")


def detect_defaults(data: Path, data_format: str = "auto", train_metadata: Optional[Path] = None) -> str:
    """Whose hyperparameters suit ``data``: ``synth`` for a folder :func:`tscam_explain.synth.write_dataset`
    wrote, ``ilsvrc`` for ILSVRC metadata or a folder of 1000 classes (ILSVRC train), ``cub`` otherwise
    (CUB, and small data of your own)."""
    if (Path(data) / SYNTH_MARKER).is_file():
        return "synth"
    kind = detect_format(data, data_format, train_metadata)
    if kind == "wsol":
        parts = {part.lower() for part in Path(train_metadata).resolve().parts}
        return "ilsvrc" if "ilsvrc" in parts else "cub"
    if kind == "imagefolder":
        classes = sum(1 for child in Path(data).iterdir() if child.is_dir())
        return "ilsvrc" if classes >= _ILSVRC_CLASSES else "cub"
    return "cub"


def holdout_split(labels: Sequence[int], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Seeded per-class hold-out: ``(train indices, validation indices)``, both sorted.

    Each class gives ``round(fraction × its size)`` images to validation (so the split keeps the
    class balance); with ``fraction > 0`` at least one image overall is held out.

    Args:
        labels: label of every image.
        fraction: share of each class to hold out, in [0, 1).
        seed: the split's seed.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    by_class: Dict[int, List[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    generator = torch.Generator().manual_seed(seed)
    held: List[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        held += [members[i] for i in order[:round(fraction * len(members))]]
    if fraction > 0 and not held:
        held = [torch.randint(len(labels), (1,), generator=generator).item()]
    if len(held) >= len(labels):
        raise ValueError(f"val_fraction {fraction} leaves no training image out of {len(labels)}")
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


@dataclass
class _Validation:
    """A validation set and how the trainer scores a model on it (see :meth:`__call__`)."""

    dataset: Dataset
    protocol: str  # "tscam", "maxboxacc" or "classification"
    cam_threshold: Optional[float] = None

    def __call__(self, model: nn.Module, ctx: DistContext) -> Dict[str, float]:
        """Score ``model`` on this rank's shard, merge the metric counts over ranks, return the metrics.

        The metrics keep integer counts, so merging the shards (one all-reduce) gives exactly the
        metrics of one pass over the whole split.
        """
        shard = Subset(self.dataset, range(ctx.rank, len(self.dataset), ctx.world_size))
        if self.protocol == "classification":
            return self._classification(model, shard, ctx)
        explainer = make_explainer(getattr(model, "arch", "tscam"), model)
        try:
            report = evaluate(explainer, shard, self.protocol, batch_size=VAL_BATCH_SIZE, device=ctx.device,
                              num_workers=loader_options(ctx.device, None)["num_workers"],
                              cam_threshold=self.cam_threshold, progress=False, sync=True)
        finally:
            explainer.release()
        return _flatten(report.metrics)

    @staticmethod
    def _classification(model: nn.Module, shard: Dataset, ctx: DistContext) -> Dict[str, float]:
        """Top-1/Top-5 of the model's own logits (no maps: no boxes, or a TRT stage-1 CAM branch)."""
        loader = DataLoader(shard, batch_size=VAL_BATCH_SIZE, shuffle=False, collate_fn=_collate,
                            **loader_options(ctx.device, None, persistent=False))
        accuracy = ClassificationAccuracy()
        for batch in loader:
            accuracy.update(model(batch["image"].to(ctx.device, non_blocking=True)), batch["label"])
        accuracy.sync()
        return accuracy.compute()


def _collate(items: List[Any]) -> Dict[str, Any]:
    """Reader items (dicts) through the harness's collate; ``(image, label)`` pairs into the same dict."""
    if isinstance(items[0], dict):
        return wsol_collate(items)
    images, labels = zip(*items)
    return {"image": torch.stack(images), "label": torch.tensor(labels, dtype=torch.long)}


def _flatten(results: Dict[str, Any]) -> Dict[str, float]:
    """The headline numbers of the harness's metrics, as flat ``name: value`` for the log."""
    if "localization" in results:
        return {key: value for key, value in results["localization"].items() if isinstance(value, float)}
    return {**results["classification"], "MaxBoxAcc": results["MaxBoxAcc"]["per_iou"][50],
            "MaxBoxAccV2": results["MaxBoxAccV2"]["mean"]}


_SELECT = {"tscam": "gt_known", "maxboxacc": "MaxBoxAccV2", "classification": "top1"}


def build_data(recipe: Recipe, data: Path, *, normalization: Tuple[Sequence[float], Sequence[float]],
               data_format: str = "auto", train_metadata: Optional[Path] = None, boxes: Optional[Path] = None,
               val_metadata: Optional[Path] = None, val_images: Optional[Path] = None, val_fraction: float = 0.1,
               seed: int = 0) -> TrainData:
    """The training set (with the recipe's transform) and the validation split for :func:`~tscam_explain.train.train`.

    Args:
        recipe: gives the transform, the input size and the CAM threshold (0.1 CUB, 0.12 ILSVRC).
        data: the dataset folder (see the module docstring).
        normalization: ``(mean, std)`` of the backbone (:func:`~tscam_explain.train.data_normalization`).
        data_format: one of :data:`DATA_FORMATS`.
        train_metadata: wsolevaluation metadata folder of the training split (format ``wsol``).
        boxes: list file of boxes for an image folder (``path label x0 y0 x1 y1 …``).
        val_metadata: wsolevaluation metadata folder of a validation split (CUBV2, ImageNetV2).
        val_images: image root of ``val_metadata`` (default: ``data``).
        val_fraction: share of the training images held out when ``val_metadata`` is not given; 0: none.
        seed: seed of the hold-out split.
    """
    data = Path(data)
    kind = detect_format(data, data_format, train_metadata)
    mean, std = normalization
    size = recipe.img_size
    if boxes is not None and kind != "imagefolder":
        raise ValueError(f"--boxes goes with an image folder; {data} is read as {kind!r}, which has its own boxes")
    # every source gives (path, label) samples and, where boxes exist, a reader of the same images
    reader: Optional[WSOLDataset] = None
    if kind == "cub":
        reader = CUBDataset(data, split="train", protocol="tscam", input_size=size, mean=mean, std=std)
        samples = [(record.image_path, record.label) for record in reader.records]
        num_classes = reader.num_classes
    elif kind == "wsol":
        if train_metadata is None:
            raise ValueError("format 'wsol' needs --train-metadata (the training split's metadata folder)")
        reader = WSOLEvalDataset(train_metadata, data, protocol="maxboxacc", input_size=size, mean=mean, std=std)
        samples = [(record.image_path, record.label) for record in reader.records]
        num_classes = reader.num_classes
    else:
        if not data.is_dir():
            raise FileNotFoundError(f"training data folder not found: {data}")
        folder = ImageFolder(data)
        samples = [(Path(path), label) for path, label in folder.samples]
        num_classes = len(folder.classes)
        if boxes is not None:
            reader = ILSVRCListDataset(boxes, data, num_classes=num_classes, protocol="tscam", input_size=size,
                                       mean=mean, std=std)
            _check_box_labels(reader, data, dict(samples))
    if num_classes < 2:
        raise ValueError(f"{data} has {num_classes} class(es); training a classifier needs at least 2")

    validation: Optional[_Validation] = None
    description = f"{kind} data at {data}, {num_classes} classes"
    if val_metadata is not None:
        val_reader = WSOLEvalDataset(val_metadata, val_images or data, protocol="maxboxacc", input_size=size,
                                     mean=mean, std=std)
        _check_classes(val_reader, num_classes, val_metadata)
        validation = _Validation(val_reader, "maxboxacc")
        description += f"; validation: {len(val_reader)} images of {val_metadata}"
    elif val_fraction > 0:
        if reader is not None:
            # hold out among the images that have boxes (with --boxes: the listed ones)
            held = holdout_split([record.label for record in reader.records], val_fraction, seed)[1]
            held_paths = {reader.records[i].image_path.resolve() for i in held}
            val_set: Dataset = Subset(reader, held)
            protocol = reader.protocol
            samples_kept = [sample for sample in samples if sample[0].resolve() not in held_paths]
        else:
            train_indices, held = holdout_split([label for _, label in samples], val_fraction, seed)
            val_set = LabelledImages([samples[i] for i in held], eval_transform(size, mean, std))
            protocol = "classification"
            samples_kept = [samples[i] for i in train_indices]
        description += f"; validation: {len(samples) - len(samples_kept)} training images held out (seed {seed})"
        samples = samples_kept
        cam_threshold = TSCAM_CAM_THRESHOLDS["ILSVRC" if recipe.dataset == "ilsvrc" else "CUB"]
        validation = _Validation(val_set, protocol, cam_threshold)
    if validation is not None and (recipe.trainable == "stage1" or recipe.arch == "vit"):
        # TRT's maps need the CAM branch, which stage 1 does not train; a plain classifier is chosen
        # as a classifier: score them on classification
        validation = _Validation(validation.dataset, "classification")
    train_set = LabelledImages(samples, train_transform(recipe, mean, std))
    description += f"; {len(train_set)} training images"
    select = _SELECT[validation.protocol] if validation is not None else None
    return TrainData(train_set, num_classes, validation, select, description)


def _check_box_labels(reader: ILSVRCListDataset, root: Path, folder_labels: Dict[Path, int]) -> None:
    """The boxes file's labels must be the image folder's (sorted class folders)."""
    for record in reader.records:
        label = folder_labels.get(record.image_path)
        if label is None:
            raise ValueError(f"{record.source.path}:{record.source.line}: {record.image_id} is not an image of the "
                             f"class folders of {root}")
        if label != record.label:
            raise ValueError(f"{record.source.path}:{record.source.line}: {record.image_id} has label {record.label} "
                             f"but its folder is class {label} (classes are the sorted folder names, from 0)")


def _check_classes(reader: WSOLDataset, num_classes: int, where: Path) -> None:
    labels = {record.label for record in reader.records}
    if max(labels) >= num_classes:
        raise ValueError(f"the validation split {where} has class {max(labels)}, but the training data has "
                         f"{num_classes} classes (0 … {num_classes - 1})")
