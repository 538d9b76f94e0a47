"""The bench's data: the generated benchmark (default) or any dataset the WSOL readers know."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .. import synth
from ..checkpoint import PathLike
from ..wsol import WSOLEvalDataset
from ..wsol.datasets import WSOLDataset, open_dataset
from ..wsol.harness import TSCAM_CAM_THRESHOLDS
from .runner import BenchData

__all__ = ["synth_data", "dataset_data"]


def synth_data(root: PathLike, images: int = 300, seed: int = 2, size: int = synth.DEFAULT_SIZE) -> BenchData:
    """The generated benchmark, written to ``root`` unless a set with the same settings is there already.

    It is read back through the wsolevaluation readers: boxes (one per creature) from
    ``metadata/test``, masks from ``metadata_masks/test``. The seeds' protocol uses CUB's threshold (0.1).

    Args:
        root: folder for the images and metadata.
        images: number of images.
        seed: benchmark seed (the shipped models were trained on seed 1: keep them apart).
        size: image side in pixels.
    """
    root = synth.ensure_dataset(root, images, seed, size, split="test")

    def boxes(protocol: str, input_size: int, mean: Sequence[float], std: Sequence[float]) -> WSOLEvalDataset:
        return WSOLEvalDataset(root / "metadata" / "test", root / "images", protocol=protocol, input_size=input_size,
                               benchmark="synth", mean=mean, std=std)

    def masks(protocol: str, input_size: int, mean: Sequence[float], std: Sequence[float]) -> WSOLEvalDataset:
        return WSOLEvalDataset(root / "metadata_masks" / "test", root / "images", root / "masks", protocol=protocol,
                               input_size=input_size, benchmark="synth", mean=mean, std=std)

    return BenchData(f"generated benchmark (seed {seed}, {images} images, {size} px)", boxes, masks,
                     cam_threshold=TSCAM_CAM_THRESHOLDS["CUB"])


def dataset_data(dataset_format: str, data: PathLike, *, image_dir: Optional[PathLike] = None,
                 mask_dir: Optional[PathLike] = None, synsets: Optional[PathLike] = None,
                 split: str = "test") -> BenchData:
    """A dataset on disk in one of :data:`~tscam_explain.wsol.datasets.DATASET_FORMATS` (what ``evaluate`` reads).

    Args:
        dataset_format: ``cub``, ``ilsvrc-xml``, ``ilsvrc-list`` or ``wsolevaluation``.
        data: the CUB folder, the XML folder, the list file or the metadata split folder.
        image_dir: image root (every format but ``cub``).
        mask_dir: mask root (wsolevaluation with masks: OpenImages).
        synsets: class order (``ilsvrc-xml``).
        split: CUB split.
    """
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")

    def reader(protocol: str, input_size: int, mean: Sequence[float], std: Sequence[float]) -> WSOLDataset:
        return open_dataset(dataset_format, path, protocol, image_dir=image_dir, mask_dir=mask_dir, synsets=synsets,
                            split=split, input_size=input_size, mean=mean, std=std)

    probe = reader("maxboxacc", 224, (0.5,) * 3, (0.5,) * 3)  # checks the files now, and tells boxes from masks
    return BenchData(f"{path} ({dataset_format})", reader if probe.has_boxes else None,
                     reader if probe.has_masks else None)
