"""A generated WSOL benchmark built around partial activation (see ``docs/synth.md`` for the design).

Every image shows one or two *creatures* of its class on a textured, cluttered background, and
sometimes decoys. A creature is a large textured body (an ellipse with a tail and legs) and a small
head; **only the head's colour decides the class**, while the ground-truth box and mask cover the
whole creature. A classifier can therefore be right by looking at the head alone — the partial
activation that WSOL methods exist to overcome (CUB's birds are told apart by small parts too).

Decoys make looking at "any object" or "any bright part" wrong:

* ``headless``: a creature body without a head (an object without the discriminative part);
* ``off-colour``: a whole creature whose head has a colour no class uses;
* ``loose part``: a head-like disk, with its eye, in a colour no class uses, lying on its own.

Bodies, background and clutter use muted colours (low saturation); heads use saturated ones. The six
class hues are 0°, 60°, …, 300° (±8° jitter); off-colour parts are saturated hues half-way between
them (±6°) or achromatic. Nothing else depends on the class: size, pose, position, body colour and
texture, background, clutter and decoys are drawn independently of it.

Everything is a function of ``(seed, index)``, at any image size: ``generate(seed, index, size)``
gives the same sample in every process and on every machine. :func:`write_dataset` writes a set as
wsolevaluation metadata (boxes, and masks in a second metadata folder) and as a CUB-style folder, so
the existing readers, ``evaluate`` and ``train`` read it unchanged.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

__all__ = ["CLASS_NAMES", "SynthSample", "generate", "iterate", "write_dataset", "DEFAULT_SIZE", "SYNTH_MARKER",
           "GENERATOR_VERSION", "ensure_dataset"]

#: class names, by label (the head's hue: 0°, 60°, …, 300°)
CLASS_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
#: default image side in pixels
DEFAULT_SIZE = 96
#: the file :func:`write_dataset` leaves in its folder, with the settings that made it
SYNTH_MARKER = "synth.json"
#: bumped whenever a change to the generator changes any sample
GENERATOR_VERSION = 2

_CLASS_HUE_JITTER = 8.0       # degrees around a class hue
_OFF_HUE_JITTER = 6.0         # degrees around a half-way (non-class) hue
_HEAD_SATURATION = (0.75, 1.0)
_HEAD_VALUE = (0.75, 1.0)
_MUTED_SATURATION = (0.05, 0.4)  # bodies, background, clutter
_MUTED_VALUE = (0.3, 0.85)
_P_TWO_INSTANCES = 0.2
_DECOY_COUNTS = (0, 1, 2)
_DECOY_COUNT_PROBS = (0.4, 0.4, 0.2)
_DECOY_KINDS = ("headless", "off-colour", "loose part")
_CLUTTER_RANGE = (3, 9)
#: body patterns; class k's creatures wear pattern k with probability _P_CLASS_PATTERN
BODY_PATTERNS = ("plain", "bars", "stripes", "checks", "chevrons", "spots")
_P_CLASS_PATTERN = 0.6

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SynthSample:
    """One generated image and its annotations.

    Args:
        image: uint8 (size, size, 3) RGB.
        label: class index (see :data:`CLASS_NAMES`).
        boxes: int64 (k, 4) inclusive ``x0, y0, x1, y1``, one per creature of the class (k = 1 or 2).
        mask: bool (size, size): the pixels of the class's creatures (bodies, tails, legs and heads).
        head_mask: bool (size, size): the pixels of their heads only (the discriminative part).
    """

    image: np.ndarray
    label: int
    boxes: np.ndarray
    mask: np.ndarray
    head_mask: np.ndarray


def _rgb(hue_degrees: float, saturation: float, value: float) -> Tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb((hue_degrees % 360.0) / 360.0, saturation, value)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def _muted(rng: np.random.Generator) -> Tuple[int, int, int]:
    return _rgb(rng.uniform(0, 360), rng.uniform(*_MUTED_SATURATION), rng.uniform(*_MUTED_VALUE))


def _class_colour(rng: np.random.Generator, label: int) -> Tuple[int, int, int]:
    hue = 60.0 * label + rng.uniform(-_CLASS_HUE_JITTER, _CLASS_HUE_JITTER)
    return _rgb(hue, rng.uniform(*_HEAD_SATURATION), rng.uniform(*_HEAD_VALUE))


def _off_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    """A colour no class uses: a saturated half-way hue, or white / grey / black."""
    if rng.random() < 0.75:
        hue = 30.0 + 60.0 * rng.integers(6) + rng.uniform(-_OFF_HUE_JITTER, _OFF_HUE_JITTER)
        return _rgb(hue, rng.uniform(*_HEAD_SATURATION), rng.uniform(*_HEAD_VALUE))
    return _rgb(0.0, 0.0, float(rng.choice([0.95, 0.6, 0.12])))


# --- background -------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted base colour, a smooth colour field, optional stripes or blotches, then clutter shapes."""
    base = np.array(_muted(rng), dtype=np.float32) / 255.0
    coarse = rng.normal(0.0, 0.08, (4, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image = base[None, None, :] + field
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    texture = rng.integers(3)
    if texture == 1:  # stripes at a random angle and frequency
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(3, 10)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * frequency * 2 * np.pi
        image += (rng.uniform(0.03, 0.08) * np.sin(phase))[..., None]
    elif texture == 2:  # blotches: thresholded smooth noise
        blobs = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        image += (rng.uniform(0.04, 0.1) * (blobs > 0.5))[..., None]
    image = np.clip(image, 0, 1)
    canvas = (image * 255).astype(np.uint8)
    for _ in range(rng.integers(*_CLUTTER_RANGE)):
        _clutter_shape(rng, canvas, size)
    return canvas


def _clutter_shape(rng: np.random.Generator, canvas: np.ndarray, size: int) -> None:
    colour = _muted(rng)
    kind = rng.integers(4)
    centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
    extent = max(1, int(rng.uniform(0.03, 0.12) * size))
    if kind == 0:
        end = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        cv2.line(canvas, centre, end, colour, max(1, int(rng.uniform(0.005, 0.02) * size)))
    elif kind == 1:
        cv2.rectangle(canvas, centre, (centre[0] + extent, centre[1] + int(extent * rng.uniform(0.5, 1.5))), colour, -1)
    elif kind == 2:
        cv2.circle(canvas, centre, extent // 2 + 1, colour, -1)
    else:
        cv2.ellipse(canvas, centre, (extent, max(1, extent // 3)), float(rng.uniform(0, 180)), 0, 360, colour, -1)


# --- creatures --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pose:
    centre: Tuple[float, float]
    half_length: float  # a: the body's semi-major axis
    half_width: float   # b: the body's semi-minor axis
    angle: float        # radians; the head points along (cos, sin)
    head_radius: float

    @property
    def reach(self) -> float:
        """Radius of a disk around the centre that holds the whole creature."""
        return self.half_length + 2.0 * self.head_radius + 0.6 * self.half_width


def _pose(rng: np.random.Generator, size: int, scale: float = 1.0) -> _Pose:
    half_length = rng.uniform(0.17, 0.3) * size * scale
    half_width = rng.uniform(0.45, 0.65) * half_length
    head_radius = max(rng.uniform(0.45, 0.6) * half_width, 0.045 * size)
    pose = _Pose((0.0, 0.0), half_length, half_width, rng.uniform(0, 2 * np.pi), head_radius)
    margin = min(pose.reach, 0.49 * size)
    centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    return _Pose(centre, half_length, half_width, pose.angle, head_radius)


def _point(pose: _Pose, along: float, across: float) -> Tuple[float, float]:
    """A point at ``along`` the head direction and ``across`` it, from the body's centre."""
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    return pose.centre[0] + along * cos - across * sin, pose.centre[1] + along * sin + across * cos


def _fill(canvas: np.ndarray, mask: np.ndarray, polygon: np.ndarray, colour) -> None:
    """Fill one polygon into the image and the mask alike (the same pixels: the mask is exact)."""
    cv2.fillPoly(canvas, [polygon], colour, lineType=cv2.LINE_8)
    cv2.fillPoly(mask, [polygon], 1, lineType=cv2.LINE_8)


def _body_polygons(pose: _Pose, rng: np.random.Generator) -> List[np.ndarray]:
    """Body ellipse, tail triangle and legs as integer polygons."""
    (cx, cy), a, b = pose.centre, pose.half_length, pose.half_width
    body = cv2.ellipse2Poly((int(round(cx)), int(round(cy))), (max(1, int(round(a))), max(1, int(round(b)))),
                            int(round(np.degrees(pose.angle))), 0, 360, 10)
    tail_length = rng.uniform(0.3, 0.6) * a
    tail = np.array([_point(pose, -0.8 * a, -0.35 * b), _point(pose, -0.8 * a, 0.35 * b),
                     _point(pose, -a - tail_length, rng.uniform(-0.5, 0.5) * b)])
    polygons = [body, np.round(tail).astype(np.int32)]
    leg_width = max(0.6, 0.1 * b)
    for offset in rng.choice([-0.45, -0.1, 0.25], size=rng.integers(0, 3), replace=False):
        for side in (-1.0, 1.0) if rng.random() < 0.5 else (1.0,):
            top = offset * a
            leg = np.array([_point(pose, top - leg_width, side * 0.8 * b), _point(pose, top + leg_width, side * 0.8 * b),
                            _point(pose, top + leg_width + 0.15 * b, side * 1.5 * b),
                            _point(pose, top - leg_width + 0.15 * b, side * 1.5 * b)])
            polygons.append(np.round(leg).astype(np.int32))
    return polygons


def _body_texture(canvas: np.ndarray, body_mask: np.ndarray, pose: _Pose, colour, pattern: int,
                  rng: np.random.Generator) -> None:
    """One of :data:`BODY_PATTERNS`, darker than the body colour, drawn only inside the body's own pixels."""
    ys, xs = np.nonzero(body_mask)
    if len(xs) == 0 or BODY_PATTERNS[pattern] == "plain":
        return
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    along = (xs - pose.centre[0]) * cos + (ys - pose.centre[1]) * sin
    across = -(xs - pose.centre[0]) * sin + (ys - pose.centre[1]) * cos
    period = max(2.0, rng.uniform(0.3, 0.5) * pose.half_width)
    kind = BODY_PATTERNS[pattern]
    if kind == "bars":
        keep = np.floor(along / period) % 2 == 0
    elif kind == "stripes":
        keep = np.floor(across / period) % 2 == 0
    elif kind == "checks":
        keep = (np.floor(along / period) + np.floor(across / period)) % 2 == 0
    elif kind == "chevrons":
        keep = np.floor((along + np.abs(across)) / period) % 2 == 0
    else:  # spots
        spots = np.zeros_like(body_mask)
        for _ in range(rng.integers(4, 9)):
            index = rng.integers(len(xs))
            cv2.circle(spots, (int(xs[index]), int(ys[index])), max(1, int(0.22 * pose.half_width)), 1, -1)
        keep = spots[ys, xs] > 0
    darker = (np.array(colour, dtype=np.float32) * rng.uniform(0.5, 0.75)).astype(np.uint8)
    canvas[ys[keep], xs[keep]] = darker


def _head(canvas: np.ndarray, mask: np.ndarray, head_mask: Optional[np.ndarray], centre: Tuple[float, float],
          radius: float, angle: float, colour) -> None:
    """A disk with a dark eye: the creature's discriminative part."""
    polygon = cv2.ellipse2Poly((int(round(centre[0])), int(round(centre[1]))),
                               (max(1, int(round(radius))), max(1, int(round(radius)))), 0, 0, 360, 15)
    _fill(canvas, mask, polygon, colour)
    if head_mask is not None:
        cv2.fillPoly(head_mask, [polygon], 1, lineType=cv2.LINE_8)
    eye = (int(round(centre[0] + 0.35 * radius * np.cos(angle))), int(round(centre[1] + 0.35 * radius * np.sin(angle))))
    # the eye is drawn inside the head's pixels only, so it never changes the mask
    eye_layer = np.zeros_like(mask)
    cv2.circle(eye_layer, eye, max(1, int(round(0.25 * radius))), 1, -1)
    inside = (eye_layer > 0) & (mask > 0)
    canvas[inside] = (20, 20, 20)


def _creature(canvas: np.ndarray, pose: _Pose, head_colour, pattern: int, rng: np.random.Generator,
              with_head: bool = True, head_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Draw one creature with body pattern ``pattern``; return its pixel mask (uint8)."""
    size = canvas.shape[0]
    mask = np.zeros((size, size), np.uint8)
    body_colour = _muted(rng)
    body_mask = np.zeros_like(mask)
    for polygon in _body_polygons(pose, rng):
        _fill(canvas, mask, polygon, body_colour)
        cv2.fillPoly(body_mask, [polygon], 1, lineType=cv2.LINE_8)
    _body_texture(canvas, body_mask, pose, body_colour, pattern, rng)
    if with_head:
        head_centre = _point(pose, pose.half_length + 0.6 * pose.head_radius, 0.0)
        _head(canvas, mask, head_mask, head_centre, pose.head_radius, pose.angle, head_colour)
    return mask


def _class_pattern(rng: np.random.Generator, label: int) -> int:
    """The class's own body pattern with probability :data:`_P_CLASS_PATTERN`, else any pattern."""
    return label if rng.random() < _P_CLASS_PATTERN else int(rng.integers(len(BODY_PATTERNS)))


def _box(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _disjoint(box: Sequence[int], others: Sequence[Sequence[int]]) -> bool:
    return all(box[2] < other[0] or other[2] < box[0] or box[3] < other[1] or other[3] < box[1] for other in others)


def generate(seed: int, index: int, size: int = DEFAULT_SIZE) -> SynthSample:
    """The sample ``index`` of the benchmark ``seed``, at ``size`` × ``size`` pixels.

    Args:
        seed: the benchmark's seed (different seeds give independent sets: train on one, test on another).
        index: the image's position in the set, >= 0.
        size: image side in pixels, >= 32.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    size = int(size)
    label = int(rng.integers(len(CLASS_NAMES)))
    canvas = _background(rng, size)
    # decoys first, so that the class's creatures are drawn over them and their masks stay whole
    for _ in range(rng.choice(_DECOY_COUNTS, p=_DECOY_COUNT_PROBS)):
        kind = _DECOY_KINDS[rng.integers(len(_DECOY_KINDS))]
        pose = _pose(rng, size, scale=rng.uniform(0.7, 1.0))
        if kind == "loose part":
            _head(canvas, np.zeros((size, size), np.uint8), None, pose.centre, pose.head_radius, pose.angle,
                  _off_colour(rng))
        else:
            _creature(canvas, pose, _off_colour(rng), int(rng.integers(len(BODY_PATTERNS))), rng,
                      with_head=kind == "off-colour")
    instances = 2 if rng.random() < _P_TWO_INSTANCES else 1
    scale = 0.75 if instances == 2 else 1.0
    mask = np.zeros((size, size), np.uint8)
    head_mask = np.zeros_like(mask)
    boxes: List[List[int]] = []
    for _ in range(instances):
        for _attempt in range(20):
            pose = _pose(rng, size, scale)
            trial = canvas.copy()
            trial_head = head_mask.copy()
            creature = _creature(trial, pose, _class_colour(rng, label), _class_pattern(rng, label), rng,
                                 head_mask=trial_head)
            box = _box(creature)
            if _disjoint(box, boxes):
                canvas, head_mask = trial, trial_head
                mask |= creature
                boxes.append(box)
                break
    grain = rng.normal(0.0, 4.0, canvas.shape)
    image = np.clip(canvas.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    return SynthSample(image, label, np.array(boxes, dtype=np.int64), mask > 0, head_mask > 0)


def iterate(seed: int, count: int, size: int = DEFAULT_SIZE, start: int = 0) -> Iterator[SynthSample]:
    """Samples ``start`` … ``start + count - 1`` of benchmark ``seed``."""
    for index in range(start, start + count):
        yield generate(seed, index, size)


def write_dataset(out: PathLike, images: int, seed: int, size: int = DEFAULT_SIZE,
                  split: Literal["train", "test"] = "test", progress: bool = False) -> Path:
    """Write ``images`` samples of benchmark ``seed`` in the formats the readers know.

    Layout of ``out``::

        images/<class>/<seed>_<index>.png       the images
        masks/<class>/<seed>_<index>.png        the class's creatures (255) for PxAP
        masks/ignore.png                        an all-zero ignore mask (no pixel is ignored)
        images.txt, image_class_labels.txt,     a CUB-200-2011-style folder (``CUBDataset``, ``train``);
        train_test_split.txt, classes.txt,      CUB has one box per image: a two-creature image lists
        bounding_boxes.txt                      the box around both creatures (see docs/synth.md)
        metadata/<split>/                       wsolevaluation metadata with one box per creature
        metadata_masks/<split>/                 wsolevaluation metadata with the masks (OpenImages style)
        synth.json                              the settings (seed, images, size, split, generator version)

    Args:
        out: the folder (created; it must not already hold a different dataset's files).
        images: number of images, >= 1.
        seed: the benchmark's seed.
        size: image side in pixels.
        split: ``train`` or ``test``: the CUB split flag and the metadata folder name.
        progress: show a progress bar.

    Returns:
        ``out``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 1:
        raise ValueError(f"images must be an integer >= 1, got {images!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    box_meta, mask_meta = out / "metadata" / split, out / "metadata_masks" / split
    for folder in (box_meta, mask_meta, out / "masks"):
        folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "masks" / "ignore.png"), np.zeros((size, size), np.uint8))
    cub = {name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    meta = {name: [] for name in ("image_ids", "class_labels", "image_sizes", "localization", "mask_localization")}
    samples = iterate(seed, images, size)
    if progress:
        from tqdm.auto import tqdm
        samples = tqdm(samples, total=images, unit="img", desc="synth")
    for number, sample in enumerate(samples, start=1):
        name = f"{CLASS_NAMES[sample.label]}/{seed}_{number - 1}.png"
        for folder in (out / "images" / CLASS_NAMES[sample.label], out / "masks" / CLASS_NAMES[sample.label]):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(out / "images" / name)
        cv2.imwrite(str(out / "masks" / name), sample.mask.astype(np.uint8) * 255)
        x0, y0 = sample.boxes[:, :2].min(axis=0).tolist()
        x1, y1 = sample.boxes[:, 2:].max(axis=0).tolist()
        cub["images"].append(f"{number} {name}")
        cub["image_class_labels"].append(f"{number} {sample.label + 1}")
        cub["train_test_split"].append(f"{number} {int(split == 'train')}")
        # CUB's x, y, w, h: the readers (and the official codes) take x + w as the inclusive right edge
        cub["bounding_boxes"].append(f"{number} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0")
        meta["image_ids"].append(name)
        meta["class_labels"].append(f"{name},{sample.label}")
        meta["image_sizes"].append(f"{name},{size},{size}")
        meta["localization"] += [f"{name},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in sample.boxes.tolist()]
        meta["mask_localization"].append(f"{name},{name},ignore.png")
    _write_lines(out / "classes.txt", [f"{label + 1} {label + 1:03d}.{name}" for label, name in enumerate(CLASS_NAMES)])
    for name, lines in cub.items():
        _write_lines(out / f"{name}.txt", lines)
    for folder in (box_meta, mask_meta):
        for name in ("image_ids", "class_labels", "image_sizes"):
            _write_lines(folder / f"{name}.txt", meta[name])
    _write_lines(box_meta / "localization.txt", meta["localization"])
    _write_lines(mask_meta / "localization.txt", meta["mask_localization"])
    settings = {"generator": "tscam_explain.synth", "version": GENERATOR_VERSION, "seed": int(seed),
                "images": int(images), "size": int(size), "split": split, "classes": list(CLASS_NAMES)}
    (out / SYNTH_MARKER).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return out


def ensure_dataset(out: PathLike, images: int, seed: int, size: int = DEFAULT_SIZE,
                   split: Literal["train", "test"] = "test", progress: bool = False) -> Path:
    """:func:`write_dataset`, unless ``out`` already holds a set written with the same settings."""
    marker = Path(out) / SYNTH_MARKER
    wanted = {"version": GENERATOR_VERSION, "seed": seed, "images": images, "size": size, "split": split}
    current = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if any(current.get(key) != value for key, value in wanted.items()):
        write_dataset(out, images, seed, size, split, progress)
    return Path(out)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` command to the ``tscam-explain`` parser."""
    parser = subparsers.add_parser(
        "synth", help="write the generated WSOL benchmark (CUB-style folder + wsolevaluation metadata)",
        description="Write N images of the generated WSOL benchmark (see docs/synth.md) with boxes and masks, "
                    "readable by evaluate (--dataset-format cub or wsolevaluation) and train (--data OUT).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=int, default=1000, help="number of images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed; use different seeds for training "
                                                            "and testing (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--split", choices=("train", "test"), default="test",
                        help="CUB split flag and metadata folder name (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = write_dataset(args.out, args.images, args.seed, args.size, args.split, progress=not args.no_progress)
    print(f"wrote {args.images} images (seed {args.seed}, {args.size} px, split {args.split}) to {out}")
    return 0
