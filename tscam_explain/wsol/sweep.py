"""wsolevaluation's boxes at every threshold of its sweep, and their IoUs with the ground truth (methods.md §4b).

Two engines give identical IoUs:

* :func:`per_threshold_box_ious`, **the definition**: for each map and threshold, ``cv2.threshold`` at
  ``int(t * max)`` and ``cv2.findContours`` (``RETR_TREE``), then the box of the largest contour
  (MaxBoxAcc) or of every contour (MaxBoxAccV2). It is the fallback where the extension is not built
  (no C compiler at install time) or a map's side exceeds its limit, and the reference that the tests
  and ``benchmarks/bench_wsol.py`` compare the compiled pass with.
* ``_levelsets.level_boxes``, **the compiled pass** (C; its source says how and why): every level set
  of a map built by union-find in one pass over the pixels in value order, giving for every cut level
  the box of each component and each hole (every contour) and of the largest contour. Its boxes are
  scored here, with :mod:`.boxes`.

:func:`sweep_box_ious` picks the engine.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from .boxes import MAXBOXACC_EMPTY_BOX, box_iou, maxboxacc_boxes, paired_box_iou

try:  # the compiled pass; without a C compiler at install time, the per-threshold loop
    from . import _levelsets
except ImportError:  # pragma: no cover - depends on the build
    _levelsets = None

# Images per call of the compiled pass: bounds the memory of its records on speckled maps.
_COMPILED_CHUNK = 16
# The longest side the compiled pass takes (it packs coordinates in 16 bits).
_COMPILED_MAX_SIDE = 32766


class SweepIoUs(NamedTuple):
    """Best IoU with any ground-truth box, per image (rows) and threshold (columns)."""

    largest: Optional[np.ndarray]
    """float64 (B, T): the box of the largest contour (MaxBoxAcc), or ``None`` if not asked for."""
    all_contours: Optional[np.ndarray]
    """float64 (B, T): the best box over all contours (MaxBoxAccV2), or ``None`` if not asked for."""


def scoremaps_to_uint8(scoremaps: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``(scoremap * 255).astype(np.uint8)``, after checking the maps.

    Args:
        scoremaps: float (B, H, W) maps in [0, 1].

    Raises:
        ValueError: not 3-D, not floating point, NaN, or values outside [0, 1].
    """
    if scoremaps.ndim != 3:
        raise ValueError(f"scoremaps must have shape (B, H, W); got shape {scoremaps.shape}")
    if scoremaps.dtype.kind != "f":
        raise ValueError(f"scoremaps must be floating point in [0, 1]; got dtype {scoremaps.dtype}")
    maps_u8 = np.empty(scoremaps.shape, dtype=np.uint8)
    if not scoremaps.size:
        return maps_u8
    # a few maps at a time (about 1 MB): multiplied, checked and converted while in cache; the
    # products and the truncation are the reference's own
    chunk = max(1, (1 << 20) // (scoremaps[0].nbytes or 1))
    product = np.empty((chunk,) + scoremaps.shape[1:], dtype=scoremaps.dtype)
    for start in range(0, len(scoremaps), chunk):
        maps = scoremaps[start:start + chunk]
        np.multiply(maps, 255, out=product[:len(maps)])
        low, high = maps.min(), maps.max()  # NaN if there is one
        if np.isnan(low) or np.isnan(high):
            raise ValueError("scoremaps contain NaN; normalise them first (wsolevaluation maps NaN maps to zeros)")
        if low < 0 or high > 1:
            low, high = scoremaps.min(), scoremaps.max()
            raise ValueError(f"scoremaps must lie in [0, 1]; got min {low} and max {high}")
        np.copyto(maps_u8[start:start + chunk], product[:len(maps)], casting="unsafe")
    return maps_u8


def _checked_thresholds(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    if len(gt_boxes) != len(maps_u8):
        raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {len(maps_u8)} maps")
    if maps_u8.ndim != 3 or maps_u8.dtype != np.uint8 or 0 in maps_u8.shape[1:]:
        raise ValueError(f"maps must be uint8 (B, H, W) with H, W >= 1; got {maps_u8.dtype} {maps_u8.shape}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or np.any(thresholds < 0) or np.any(thresholds >= 1):
        raise ValueError(f"thresholds must be a 1-D array of fractions in [0, 1); got {thresholds}")
    return thresholds


def sweep_box_ious(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, *,
                   largest: bool = True, all_contours: bool = True) -> SweepIoUs:
    """For every image and threshold, the IoU of wsolevaluation's box(es) with the ground truth.

    The compiled pass where it is built and takes the maps, else :func:`per_threshold_box_ious`;
    the results are identical.

    Args:
        maps_u8: uint8 (B, H, W) maps, from :func:`scoremaps_to_uint8`.
        gt_boxes: per image, int (k, 4) inclusive ground-truth boxes, k >= 1.
        thresholds: float64 (T,) fractions of each map's maximum, in [0, 1).
        largest: compute the largest-contour IoUs (MaxBoxAcc).
        all_contours: compute the all-contour IoUs (MaxBoxAccV2).

    Returns:
        :class:`SweepIoUs` of float64 (B, T) arrays.
    """
    thresholds = _checked_thresholds(maps_u8, gt_boxes, thresholds)
    if _levelsets is None or max(maps_u8.shape[1:]) > _COMPILED_MAX_SIDE:
        return per_threshold_box_ious(maps_u8, gt_boxes, thresholds, largest=largest, all_contours=all_contours)
    return _compiled_box_ious(np.ascontiguousarray(maps_u8), gt_boxes, thresholds, largest, all_contours)


def per_threshold_box_ious(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, *,
                           largest: bool = True, all_contours: bool = True) -> SweepIoUs:
    """The definition, one threshold at a time, as wsolevaluation's ``BoxEvaluator`` computes it.

    Per map and threshold ``t``: foreground ``u > int(t * max(u))`` (``cv2.threshold``), contours from
    ``cv2.findContours`` (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``; hole contours count), boxes from
    ``cv2.boundingRect``: of the first contour with the largest ``cv2.contourArea`` (MaxBoxAcc) or of
    every contour (MaxBoxAccV2); no contour: the box ``[0, 0, 0, 0]``. Arguments and result as
    :func:`sweep_box_ious`.
    """
    thresholds = _checked_thresholds(maps_u8, gt_boxes, thresholds)
    shape = (len(maps_u8), len(thresholds))
    result_largest = np.zeros(shape) if largest else None
    result_all = np.zeros(shape) if all_contours else None
    empty_rect = (0, 0, 0, 0)  # boundingRect form of MAXBOXACC_EMPTY_BOX
    for image, (u, gt) in enumerate(zip(maps_u8, gt_boxes)):
        largest_rects: List[tuple] = []
        all_rects: List[tuple] = []
        owners: List[int] = []
        for column, threshold in enumerate(thresholds):
            _, mask = cv2.threshold(u, int(threshold * np.max(u)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if largest:
                largest_rects.append(cv2.boundingRect(max(contours, key=cv2.contourArea)) if contours else empty_rect)
            if all_contours:
                rects = [cv2.boundingRect(contour) for contour in contours] or [empty_rect]
                all_rects += rects
                owners += [column] * len(rects)
        if largest:
            result_largest[image] = box_iou(maxboxacc_boxes(largest_rects, u.shape), gt).max(axis=1)
        if all_contours:
            np.maximum.at(result_all[image], owners, box_iou(maxboxacc_boxes(all_rects, u.shape), gt).max(axis=1))
    return SweepIoUs(largest=result_largest, all_contours=result_all)


def _compiled_box_ious(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, largest: bool,
                       all_contours: bool) -> SweepIoUs:
    """The IoUs from the compiled pass's boxes: per image and distinct cut, the box of each component
    (an outer contour) and of each hole (grown by one pixel: the hole contour runs through the
    foreground pixels around it), and the box of the largest contour, as inclusive pixel bounds."""
    count, height, width = maps_u8.shape
    n_thresholds = len(thresholds)
    order = np.argsort(thresholds, kind="stable")
    # wsolevaluation's cut int(t * max) (float64 product, truncated), rows nondecreasing as the pass requires
    peaks = maps_u8.reshape(count, -1).max(axis=1).astype(np.float64)
    cuts = (thresholds[order][None, :] * peaks[:, None]).astype(np.int32)
    # ground truth padded to one (count, k, 4) array by repeating a box: maxima unchanged
    most = max((len(gt) for gt in gt_boxes), default=1)
    gt = np.stack([np.concatenate([g, np.repeat(g[:1], most - len(g), axis=0)]) for g in gt_boxes]) if count else \
        np.zeros((0, most, 4), dtype=np.int64)
    best_largest = np.full((count, n_thresholds), -np.inf) if largest else None
    best_all = np.full((count, n_thresholds), -np.inf) if all_contours else None

    def raise_best(best: np.ndarray, start: int, *parts: Tuple[bytes, int]) -> None:
        """Raise ``best`` at each record's (image, column) to the IoU of its box, grown by its part's grow."""
        records = [np.frombuffer(raw, dtype=np.int32).reshape(-1, 6) for raw, _ in parts]
        grow = np.repeat([grow for _, grow in parts], [len(part) for part in records])
        records = np.concatenate(records).astype(np.int64)
        image = records[:, 0] + start
        x0, y0, x1, y1 = records[:, 2:].T
        rects = np.stack([x0 - grow, y0 - grow, x1 - x0 + 1 + 2 * grow, y1 - y0 + 1 + 2 * grow], axis=1)
        ious = paired_box_iou(maxboxacc_boxes(rects, (height, width))[:, None], gt[image]).max(axis=1)
        np.maximum.at(best, (image, records[:, 1]), ious)

    for start in range(0, count, _COMPILED_CHUNK):
        stop = min(start + _COMPILED_CHUNK, count)
        components, holes, largest_boxes = _levelsets.level_boxes(maps_u8[start:stop], cuts[start:stop],
                                                                  all_contours=all_contours, largest=largest)
        if all_contours:
            raise_best(best_all, start, (components, 0), (holes, 1))
        if largest:
            raise_best(best_largest, start, (largest_boxes, 0))

    # thresholds sharing a cut share its level (reported at its first column); a level without
    # foreground gets the empty box
    first = np.ones(cuts.shape, dtype=bool)
    first[:, 1:] = cuts[:, 1:] != cuts[:, :-1]
    level_column = np.maximum.accumulate(np.where(first, np.arange(n_thresholds), 0), axis=1)
    empty_iou = paired_box_iou(np.array(MAXBOXACC_EMPTY_BOX), gt).max(axis=1)

    def finish(best: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if best is None:
            return None
        best = np.take_along_axis(best, level_column, axis=1)
        best = np.where(np.isneginf(best), empty_iou[:, None], best)
        result = np.empty_like(best)
        result[:, order] = best
        return result

    return SweepIoUs(largest=finish(best_largest), all_contours=finish(best_all))
