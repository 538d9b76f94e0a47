"""Boxes and IoU: the one place in tscam-explain that defines them.

Conventions of both official evaluation codes (TS-CAM's and clovaai/wsolevaluation's, methods.md §4):

* a box is ``(x0, y0, x1, y1)`` in integer pixel coordinates; ground-truth boxes are inclusive;
* a box read off a contour is ``cv2.boundingRect``'s ``[x, y, x + w, y + h]`` (exclusive right and
  bottom edge), yet every IoU counts pixels inclusively: the intersection is
  ``(min x1 - max x0 + 1) * (min y1 - max y0 + 1)`` and a box's area ``(x1 - x0 + 1) * (y1 - y0 + 1)``.

Other modules (the trainers' validation, the harness) import these functions instead of writing their own.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

#: The box of the seeds' protocol when a map has no foreground at all.
TSCAM_EMPTY_BOX = (0, 0, 1, 1)
#: The box of wsolevaluation when a map has no foreground at a threshold.
MAXBOXACC_EMPTY_BOX = (0, 0, 0, 0)


def as_boxes(boxes: np.ndarray | list | tuple, name: str = "boxes") -> np.ndarray:
    """Check and convert boxes to an int64 (n, 4) array.

    Args:
        boxes: one box (4,) or several (n, 4), ``x0, y0, x1, y1`` integer-valued.
        name: what to call them in an error message.

    Returns:
        int64 array of shape (n, 4).

    Raises:
        ValueError: wrong shape, non-integer values or ``x1 < x0`` / ``y1 < y0``.
    """
    array = np.asarray(boxes)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) as x0, y0, x1, y1; got shape {np.shape(boxes)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.floor(array)):
            raise ValueError(f"{name} must hold integer pixel coordinates; got {array.tolist()}")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.int64)
    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise ValueError(f"{name} must satisfy x0 <= x1 and y0 <= y1; got {array.tolist()}")
    return array


def _overlaps(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """"+1" intersection and areas of int64 boxes ``(..., 4)``, broadcast against each other."""
    width = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    height = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return width * height, area_a, area_b


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    intersection, area_a, area_b = _overlaps(a, b)
    union = area_a + area_b - intersection
    degenerate = union <= 0
    iou = intersection / np.where(degenerate, 1, union)
    iou[degenerate] = 0.0
    return iou


def box_overlaps(boxes_a: np.ndarray, boxes_b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise "+1" intersections and areas.

    Args:
        boxes_a: int (na, 4) boxes.
        boxes_b: int (nb, 4) boxes.

    Returns:
        ``(intersection (na, nb), area_a (na, 1), area_b (1, nb))``, all int64.
    """
    return _overlaps(np.asarray(boxes_a, dtype=np.int64)[:, None, :], np.asarray(boxes_b, dtype=np.int64)[None, :, :])


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU with the "+1" convention, float64 (na, nb).

    A pair whose union is not positive (only possible with inverted boxes) gets IoU 0, as in
    wsolevaluation; the division is the same float64 division of integers, so values match it bit for bit.

    Args:
        boxes_a: int (na, 4) boxes (e.g. predicted).
        boxes_b: int (nb, 4) boxes (e.g. ground truth).
    """
    return _iou(np.asarray(boxes_a, dtype=np.int64)[:, None, :], np.asarray(boxes_b, dtype=np.int64)[None, :, :])


def paired_box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boxes, as :func:`box_iou` computes it, float64 ``(...)``.

    Args:
        boxes_a: int (..., 4) boxes.
        boxes_b: int (..., 4) boxes, broadcast against ``boxes_a``.
    """
    return _iou(np.asarray(boxes_a, dtype=np.int64), np.asarray(boxes_b, dtype=np.int64))


def _float_boxes_and_extent(boxes: np.ndarray, image_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes as float64 (n, 4) and the image's ``[W, H, W, H]`` to divide them by."""
    width, height = float(image_size[0]), float(image_size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be a positive (width, height); got {tuple(image_size)}")
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.array([width, height, width, height])


def resize_boxes_tscam(boxes: np.ndarray, image_size: Tuple[int, int], size: int = 224) -> np.ndarray:
    """The seeds' test-time box transform: scale to ``size``², truncate, clip to ``0 … size - 1``.

    TS-CAM computes ``int(max(x0 / W * size, 0))`` and ``int(min(x1 / W * size, size - 1))``; the
    operation order (divide, then multiply) is kept because it decides the truncation at exact integers.

    Args:
        boxes: (n, 4) ``x0, y0, x1, y1`` in original image pixels (floats allowed).
        image_size: original ``(width, height)``.
        size: side of the square network input.

    Returns:
        int64 (n, 4) boxes in the resized image.
    """
    boxes, extent = _float_boxes_and_extent(boxes, image_size)
    scaled = boxes / extent * size
    scaled[:, :2] = np.maximum(scaled[:, :2], 0)
    scaled[:, 2:] = np.minimum(scaled[:, 2:], size - 1)
    return scaled.astype(np.int64)


def resize_boxes_maxboxacc(boxes: np.ndarray, image_size: Tuple[int, int], size: int = 224) -> np.ndarray:
    """wsolevaluation's box transform: ``int(x * size / W)`` for every coordinate, no clipping.

    Args:
        boxes: (n, 4) integer ``x0, y0, x1, y1`` in original image pixels.
        image_size: original ``(width, height)`` (wsolevaluation takes it from ``image_sizes.txt``).
        size: side of the square network input.

    Returns:
        int64 (n, 4) boxes in the resized image.
    """
    boxes, extent = _float_boxes_and_extent(boxes, image_size)
    return (boxes * float(size) / extent).astype(np.int64)


def largest_contour_rect(binary: np.ndarray) -> Tuple[int, int, int, int] | None:
    """``cv2.boundingRect`` of the contour with the largest ``cv2.contourArea`` (first on ties).

    Contours come from ``RETR_TREE`` + ``CHAIN_APPROX_SIMPLE`` as in both official codes, so hole
    contours compete too.

    Args:
        binary: uint8 (H, W) image, nonzero = foreground.

    Returns:
        ``(x, y, w, h)``, or ``None`` when there is no foreground.
    """
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return None
    return cv2.boundingRect(max(contours, key=cv2.contourArea))


def maxboxacc_boxes(rects: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """wsolevaluation's boxes from ``cv2.boundingRect`` rectangles: ``[x, y, x + w, y + h]`` with the
    right and bottom edges clipped to ``W - 1``, ``H - 1``.

    Args:
        rects: int (n, 4) ``x, y, w, h``.
        size: ``(H, W)`` of the map.

    Returns:
        int64 (n, 4) boxes.
    """
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    height, width = size
    return np.stack([rects[:, 0], rects[:, 1], np.minimum(rects[:, 0] + rects[:, 2], width - 1),
                     np.minimum(rects[:, 1] + rects[:, 3], height - 1)], axis=1)


def tscam_scoremap(cam: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The seeds' map pipeline: bilinear resize, min-max normalise, ``× 255`` truncated to uint8.

    OpenCV's bilinear resize is used (not torch's) because that is what TS-CAM runs; its output
    differs from ``F.interpolate`` in the last bits, which can move a pixel across the threshold.
    A constant map (which the official code turns into NaNs) becomes all zeros.

    Args:
        cam: float (h, w) raw class map (e.g. the patch grid).
        size: ``(height, width)`` of the network input.

    Returns:
        uint8 (height, width) map.
    """
    cam = np.ascontiguousarray(cam, dtype=np.float32)
    resized = cv2.resize(cam, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    low, high = resized.min(), resized.max()
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("the class map contains NaN or Inf; cannot read a box from it")
    if high == low:
        return np.zeros(resized.shape, dtype=np.uint8)
    normalised = (resized - low) / (high - low)
    return (normalised * 255.0).astype(np.uint8)


def tscam_box(scoremap: np.ndarray, cam_threshold: float) -> np.ndarray:
    """The seeds' box: one fixed threshold (``THRESH_TOZERO``), the largest contour, no clipping.

    Args:
        scoremap: uint8 (H, W) map from :func:`tscam_scoremap`.
        cam_threshold: fraction of the map's maximum (TS-CAM: 0.1 on CUB, 0.12 on ILSVRC).

    Returns:
        int64 (4,) box ``[x, y, x + w, y + h]``; ``[0, 0, 1, 1]`` when nothing is above the threshold.
    """
    if scoremap.dtype != np.uint8 or scoremap.ndim != 2:
        raise ValueError(f"scoremap must be a 2-D uint8 map; got {scoremap.dtype} with shape {scoremap.shape}")
    cut = int(cam_threshold * np.max(scoremap))
    _, kept = cv2.threshold(scoremap, cut, 255, cv2.THRESH_TOZERO)
    rect = largest_contour_rect(kept)
    if rect is None:
        return np.array(TSCAM_EMPTY_BOX, dtype=np.int64)
    x, y, w, h = rect
    return np.array([x, y, x + w, y + h], dtype=np.int64)


def _normalize_in_place(cams: np.ndarray) -> np.ndarray:
    """wsolevaluation's normalisation of each map of a float (B, H, W) batch, in place.

    The reference's ``cam -= cam.min(); cam /= cam.max()``: the maximum after the subtraction is
    ``max - min`` rounded (subtracting one number is monotonic), so one min and one max per map suffice;
    a NaN shows as a NaN minimum.
    """
    if not cams.size:
        return cams
    low, high = cams.min(axis=(1, 2)), cams.max(axis=(1, 2))
    zero = np.isnan(low) | (low == high)
    cams -= low[:, None, None]
    cams /= np.where(zero, 1, high - low)[:, None, None]
    cams[zero] = 0
    return cams


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation's normalisation: NaN or constant map → zeros, else ``(x - min) / max(x - min)``.

    Computed in the map's own float type with the reference's two steps (subtract, then divide), so
    float32 maps give the reference's float32 values exactly.

    Args:
        cam: float (H, W) map.
    """
    return _normalize_in_place(np.array(cam, copy=True)[None])[0]


def maxboxacc_scoremaps(cams: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """wsolevaluation's map pipeline for a batch: OpenCV bicubic resize to the input size, then normalise.

    The reference converts the model's map to float64 first (its ``t2n``) and resizes and normalises
    in float64; so does this function, one map after another into one array.

    Args:
        cams: float (B, h, w) raw class maps.
        size: ``(height, width)`` of the network input.

    Returns:
        float64 (B, height, width) maps in [0, 1].
    """
    cams = np.asarray(cams)
    if cams.ndim != 3 or 0 in cams.shape[1:]:
        raise ValueError(f"cams must have shape (B, h, w) with h, w >= 1; got shape {cams.shape}")
    height, width = int(size[0]), int(size[1])
    scoremaps = np.empty((len(cams), height, width), dtype=np.float64)
    for cam, scoremap in zip(cams, scoremaps):
        resized = cv2.resize(np.ascontiguousarray(cam, dtype=np.float64), (width, height), dst=scoremap,
                             interpolation=cv2.INTER_CUBIC)
        if resized is not scoremap:  # OpenCV allocated a new array instead of writing into dst
            scoremap[...] = resized
    return _normalize_in_place(scoremaps)


def maxboxacc_scoremap(cam: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """wsolevaluation's map pipeline for one map (see :func:`maxboxacc_scoremaps`).

    Args:
        cam: float (h, w) raw class map.
        size: ``(height, width)`` of the network input.

    Returns:
        float64 (height, width) map in [0, 1].
    """
    return maxboxacc_scoremaps(np.asarray(cam)[None], size)[0]


def maxboxacc_box(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """MaxBoxAcc's box at one threshold: the largest contour of ``uint8 map > int(threshold · max)``.

    Args:
        scoremap: float (H, W) map in [0, 1] from :func:`maxboxacc_scoremap`.
        threshold: a CAM threshold in [0, 1).

    Returns:
        int64 (4,) ``[x, y, x + w, y + h]`` with ``x + w``, ``y + h`` clipped to ``W - 1``, ``H - 1``;
        ``[0, 0, 0, 0]`` when nothing is above the threshold.
    """
    maps_u8 = (scoremap * 255).astype(np.uint8)
    binary = (maps_u8 > int(threshold * np.max(maps_u8))).astype(np.uint8)
    rect = largest_contour_rect(binary)
    return maxboxacc_boxes(rect if rect is not None else MAXBOXACC_EMPTY_BOX, scoremap.shape)[0]
