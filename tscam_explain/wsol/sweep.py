"""Boxes at every threshold of a sweep, as wsolevaluation finds them, without one OpenCV call per threshold.

wsolevaluation thresholds the uint8 map at ``int(t * max)`` for each ``t`` of the sweep and runs
``cv2.findContours`` (``RETR_TREE``) on every binary mask. The results here are identical, obtained
with far less work (methods.md §4b).

**Every contour (MaxBoxAccV2): the compiled sweep.** A contour's box is either the box of an
8-connected component of the mask (its outer contour) or the box of a hole, a 4-connected set of
background pixels not reaching the image border, grown by one pixel (the hole contour runs through
the foreground pixels around it). ``_levelsets.level_boxes`` (C, see its source for why) builds all
level sets of a map in one union-find pass per kind, band by band between cuts, and reports every
component's and hole's box at every cut; the IoUs are then scored here, with :mod:`.boxes`.

**The largest contour (MaxBoxAcc), and every contour where the extension is not built (no C
compiler at install time): numpy and OpenCV**, in these steps:

1. **Distinct masks only.** The mask ``u > c`` changes only when a map value lies in between two cut
   levels, so thresholds whose cuts enclose no map value share one mask (and one set of boxes).
2. **Cropped tiles, one OpenCV call.** Each distinct mask is cropped to the bounding box of its
   foreground and the crops are packed, with one-pixel zero gaps, into one mosaic image. OpenCV pads
   images with zeros, so a crop has exactly the contours of the full mask; the gaps keep tiles apart,
   and the relative order of one tile's contours is unchanged. One ``findContours`` call then replaces
   a hundred, and only the foreground's bounding box is scanned.
3. **No tracing where the topology is known.** Adding the pixels one at a time in decreasing
   (value, raster index) order builds every level set ``u > c`` in turn, and each pixel changes the
   Euler number ``E = components - holes`` (8-connected foreground, 4-connected background) by an
   amount read from a table indexed by which of its 8 neighbours came earlier (Gray's 2×2 bit quads).
   The pixels with a nonzero change (a few percent on smooth maps) give ``E`` of every level by one
   small histogram. A hole's lowest pixel is a local minimum among its 4 neighbours, off the image
   border, with foreground on all four sides in its row and column: only levels from such a
   minimum's value up to (not including) the least of its four ray maxima can have holes. A level
   with ``E = 1`` and no such minimum is one component without holes: one contour, whose box is the
   foreground's bounding box, already known.
4. **Labelling instead of tracing for speckled masks.** OpenCV spends microseconds per contour, so
   a noisy mask with thousands of specks is slow to trace. For those, boxes come from connected
   components: an outer contour's box is its 8-connected component's box; a hole contour's box is its
   4-connected background component's box grown by one pixel (the hole's border pixels), for holes
   that do not touch the tile's edge. The largest contour is found by tracing only the components
   whose area could still win (a contour's area is at most ``(w - 1)(h - 1)`` of its box); where two
   contours tie for the largest area, or a hole could reach it, the tile is traced in full so that
   OpenCV's own order breaks the tie.
5. **Labelling instead of tracing for several blobs (MaxBoxAccV2 on this path).** A hole-free level with
   ``E >= 2`` is several components. Labelling the components of the lowest such level gives regions
   that contain every higher level's components; a region's Euler number at each level is the sum of
   its own pixels' changes (step 3). Where every region holds at most one component, each component's
   box is the bounding box of its region's pixels above the level, read for all levels at once from
   the region's per-row and per-column maxima. Levels that split further get another labelling, a few
   at most. The largest contour (MaxBoxAcc) needs contour areas, so with it these levels are traced.

The equivalences of both paths and of steps 3 to 5 are checked against the straightforward
per-threshold loop in the tests.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from .boxes import MAXBOXACC_EMPTY_BOX, box_iou, paired_box_iou

try:  # the compiled all-contour sweep; without a C compiler at install time, the numpy path below
    from . import _levelsets
except ImportError:  # pragma: no cover - depends on the build
    _levelsets = None

# OpenCV spends ~7 µs per traced contour, labelling ~6 ns per pixel (both components and holes):
# a tile is labelled when a lower bound on its contours exceeds area / this.
_PIXELS_PER_CONTOUR = 1024
# More candidates than this for the largest contour of one labelled tile: trace the tile in full.
_MAX_LARGEST_CANDIDATES = 64
# Labellings per image for levels of several hole-free components; later ones are traced.
_MAX_REGION_ROUNDS = 4
# Images per call of the compiled sweep: bounds the memory of its records on speckled maps.
_COMPILED_CHUNK = 16
# The longest side the compiled sweep takes.
_COMPILED_MAX_SIDE = 32766


class SweepIoUs(NamedTuple):
    """Best IoU with any ground-truth box, per image (rows) and threshold (columns)."""

    largest: Optional[np.ndarray]
    """float64 (B, T): the box of the largest contour (MaxBoxAcc), or ``None`` if not asked for."""
    all_contours: Optional[np.ndarray]
    """float64 (B, T): the best box over all contours (MaxBoxAccV2), or ``None`` if not asked for."""


class _Tiles(NamedTuple):
    """Distinct non-empty masks of one map: cut level and foreground bounding box (inclusive)."""

    cut: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray

    def subset(self, index: np.ndarray) -> "_Tiles":
        return _Tiles(*(field[index] for field in self))


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


def sweep_box_ious(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray, *,
                   largest: bool = True, all_contours: bool = True) -> SweepIoUs:
    """For every image and threshold, the IoU of wsolevaluation's box(es) with the ground truth.

    Args:
        maps_u8: uint8 (B, H, W) maps, from :func:`scoremaps_to_uint8`.
        gt_boxes: per image, int (k, 4) inclusive ground-truth boxes, k >= 1.
        thresholds: float64 (T,) fractions of each map's maximum, in [0, 1).
        largest: compute the largest-contour IoUs (MaxBoxAcc).
        all_contours: compute the all-contour IoUs (MaxBoxAccV2).

    Returns:
        :class:`SweepIoUs` of float64 (B, T) arrays.
    """
    if len(gt_boxes) != len(maps_u8):
        raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {len(maps_u8)} maps")
    if maps_u8.ndim != 3 or 0 in maps_u8.shape[1:]:
        raise ValueError(f"maps must have shape (B, H, W) with H, W >= 1; got shape {maps_u8.shape}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or np.any(thresholds < 0) or np.any(thresholds >= 1):
        raise ValueError(f"thresholds must be a 1-D array of fractions in [0, 1); got {thresholds}")
    # the extension packs coordinates in 16 bits; larger maps take the numpy path
    compiled = all_contours and _levelsets is not None and max(maps_u8.shape[1:]) <= _COMPILED_MAX_SIDE
    rows_largest, rows_all = [], []
    if largest or not compiled:
        for u, gt in zip(maps_u8, gt_boxes):
            image_largest, image_all = _image_sweep(u, gt, thresholds, largest, all_contours and not compiled)
            rows_largest.append(image_largest)
            rows_all.append(image_all)
    shape = (0, len(thresholds))
    if compiled:
        result_all = _compiled_all_contour_ious(np.ascontiguousarray(maps_u8, dtype=np.uint8), gt_boxes, thresholds)
    else:
        result_all = (np.stack(rows_all) if rows_all else np.zeros(shape)) if all_contours else None
    return SweepIoUs(largest=(np.stack(rows_largest) if rows_largest else np.zeros(shape)) if largest else None,
                     all_contours=result_all)


def _cut_levels(thresholds: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """wsolevaluation's cut ``int(t * max)`` (float64 product, truncated), broadcast; int64."""
    return (thresholds * np.asarray(peaks, dtype=np.float64)).astype(np.int64)


def _compiled_all_contour_ious(maps_u8: np.ndarray, gt_boxes: Sequence[np.ndarray], thresholds: np.ndarray
                               ) -> np.ndarray:
    """The all-contour IoUs from the compiled sweep: every contour's box at every level in one pass.

    ``_levelsets.level_boxes`` returns, per image and distinct cut, the box of each 8-connected
    component (an outer contour's box) and of each 4-connected hole (grown by one pixel: the hole
    contour runs through the foreground pixels around it), in pixel bounds; here they become
    wsolevaluation's boxes and are scored against the ground truth.
    """
    count, height, width = maps_u8.shape
    n_thresholds = len(thresholds)
    order = np.argsort(thresholds, kind="stable")
    # rows nondecreasing (sorted thresholds), as the extension requires
    cuts = _cut_levels(thresholds[order][None, :], maps_u8.reshape(count, -1).max(axis=1)[:, None]).astype(np.int32)
    # ground truth padded to one (count, k, 4) array by repeating a box: maxima unchanged
    most = max((len(gt) for gt in gt_boxes), default=1)
    gt = np.stack([np.concatenate([g, np.repeat(g[:1], most - len(g), axis=0)]) for g in gt_boxes]) if count else \
        np.zeros((0, most, 4), dtype=np.int64)
    best = np.full(count * n_thresholds, -np.inf)
    for start in range(0, count, _COMPILED_CHUNK):
        stop = min(start + _COMPILED_CHUNK, count)
        for records, grow in zip(_levelsets.level_boxes(maps_u8[start:stop], cuts[start:stop]), (0, 1)):
            records = np.frombuffer(records, dtype=np.int32).reshape(-1, 6)
            if not len(records):
                continue
            image = records[:, 0].astype(np.int64) + start
            boxes = _to_image_boxes(records[:, 2:].astype(np.int64), 0, 0, grow, (height, width))
            ious = paired_box_iou(boxes, gt[image, 0])
            for column in range(1, most):
                np.maximum(ious, paired_box_iou(boxes, gt[image, column]), out=ious)
            # one (image, level) group of records after another: the best of each group at once
            key = image * n_thresholds + records[:, 1]
            group = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            best[key[group]] = np.maximum(best[key[group]], np.maximum.reduceat(ious, group))
    best = best.reshape(count, n_thresholds)
    # thresholds sharing a cut share its level; a level without foreground gets the empty box
    first = np.ones(cuts.shape, dtype=bool)
    first[:, 1:] = cuts[:, 1:] != cuts[:, :-1]
    best = np.take_along_axis(best, np.maximum.accumulate(np.where(first, np.arange(n_thresholds), 0), axis=1),
                              axis=1)
    empty_iou = paired_box_iou(np.array(MAXBOXACC_EMPTY_BOX), gt).max(axis=1)
    best = np.where(np.isneginf(best), empty_iou[:, None], best)
    result = np.empty_like(best)
    result[:, order] = best
    return result


def _image_sweep(u: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, want_largest: bool,
                 want_all: bool) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    height, width = u.shape
    cuts = _cut_levels(thresholds, u.max())
    topology = _level_topology(u)
    present = topology.value_counts > 0
    # masks u > c1 and u > c2 are equal iff no map value lies in (c1, c2]: key = #values <= c
    keys = np.cumsum(present)[cuts]
    unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    nonempty = unique_keys < np.count_nonzero(present)
    tile_cuts = cuts[first[nonempty]]

    rows = u.max(axis=1)[None, :] > tile_cuts[:, None]
    cols = u.max(axis=0)[None, :] > tile_cuts[:, None]
    tiles = _Tiles(tile_cuts, rows.argmax(1), height - 1 - rows[:, ::-1].argmax(1),
                   cols.argmax(1), width - 1 - cols[:, ::-1].argmax(1))
    single = (topology.euler4[tile_cuts] == 4) & (topology.hole_suspects[tile_cuts] == 0)
    tile_area = (tiles.y1 - tiles.y0 + 1) * (tiles.x1 - tiles.x0 + 1)
    # max(|components - holes|, 1) bounds the contour count from below: speckled masks
    contours_at_least = np.maximum(np.abs(topology.euler4[tile_cuts]) // 4, 1)
    speckled = ~single & (contours_at_least * _PIXELS_PER_CONTOUR > tile_area)

    n_tiles = len(tile_cuts)
    simple = np.flatnonzero(single)
    largest_box = np.zeros((n_tiles, 4), dtype=np.int64)
    fg_bounds = np.stack([tiles.x0, tiles.y0, tiles.x1, tiles.y1], axis=1)[simple]
    largest_box[simple] = _to_image_boxes(fg_bounds, 0, 0, 0, u.shape)
    boxes, box_tile = [largest_box[simple]], [simple]
    untraced = single | speckled
    if not want_largest:
        # hole-free levels of several components: boxes without contour areas, enough for MaxBoxAccV2
        several = ~untraced & (topology.euler4[tile_cuts] > 4) & (topology.hole_suspects[tile_cuts] == 0)
        region_boxes, region_tile, certified = _certify_by_regions(u, tiles, topology.critical,
                                                                   np.flatnonzero(several))
        boxes.append(region_boxes)
        box_tile.append(region_tile)
        untraced[certified] = True
    traced = np.flatnonzero(~untraced)
    labelled = np.flatnonzero(speckled)
    if len(traced):
        contour_boxes, contour_tile, contour_area2 = _trace_tiles(u, tiles.subset(traced))
        boxes.append(contour_boxes)
        box_tile.append(traced[contour_tile])
        if want_largest:
            largest_box[traced] = contour_boxes[_first_largest(contour_tile, contour_area2)]
    if len(labelled):
        label_boxes, label_tile, label_largest, retrace = _label_tiles(u, tiles.subset(labelled), want_largest)
        boxes.append(label_boxes)
        box_tile.append(labelled[label_tile])
        if want_largest:
            largest_box[labelled] = label_largest
            if retrace.any():
                again = labelled[retrace]
                contour_boxes, contour_tile, contour_area2 = _trace_tiles(u, tiles.subset(again))
                largest_box[again] = contour_boxes[_first_largest(contour_tile, contour_area2)]

    empty_iou = box_iou(np.array([MAXBOXACC_EMPTY_BOX]), gt).max()
    result_largest = result_all = None
    if want_largest:
        per_key = np.full(len(unique_keys), empty_iou)
        per_key[nonempty] = box_iou(largest_box, gt).max(axis=1)
        result_largest = per_key[inverse]
    if want_all:
        per_tile = np.zeros(n_tiles)
        if boxes:
            np.maximum.at(per_tile, np.concatenate(box_tile), box_iou(np.concatenate(boxes), gt).max(axis=1))
        per_key = np.full(len(unique_keys), empty_iou)
        per_key[nonempty] = per_tile
        result_all = per_key[inverse]
    return result_largest, result_all


def _histogram(values: np.ndarray) -> np.ndarray:
    """Counts of each uint8 value (OpenCV's histogram is several times faster than ``np.bincount``)."""
    return cv2.calcHist([values], [0], None, [256], [0, 256])[:, 0].astype(np.int64)


def _distinct(indices: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """``np.unique(indices, return_inverse=True)`` for indices in [0, size), without sorting."""
    used = np.bincount(indices, minlength=size) > 0
    return np.flatnonzero(used), (np.cumsum(used) - 1)[indices]


def _ray_maxima(u: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Per point (not on the border), the least of the maxima along its row and column to the four edges."""
    if not len(ys):
        return np.zeros(0, dtype=u.dtype)  # OpenCV does not take empty images
    running = np.maximum.accumulate
    height, width = u.shape
    # only the rows and columns through the points; accumulate along contiguous rows (fastest in numpy),
    # flipped (OpenCV) rather than read backwards
    rows, row_of = _distinct(ys, height)
    lines = u[rows]
    from_left, from_right = running(lines, axis=1), running(cv2.flip(lines, 1), axis=1)
    columns, column_of = _distinct(xs, width)
    lines = cv2.transpose(u)[columns]
    from_top, from_bottom = running(lines, axis=1), running(cv2.flip(lines, 1), axis=1)
    return np.minimum(np.minimum(from_left[row_of, xs - 1], from_right[row_of, width - 2 - xs]),
                      np.minimum(from_top[column_of, ys - 1], from_bottom[column_of, height - 2 - ys]))


# The 8 neighbours of a pixel, (dy, dx), in the bit order of _euler_change codes.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _quad_euler4(cells: Sequence[Tuple[int, int]]) -> int:
    """One 2x2 window's share of 4 E (8-connected foreground): 1 pixel +1, 3 pixels -1, diagonal pair -2."""
    if len(cells) == 1:
        return 1
    if len(cells) == 3:
        return -1
    if len(cells) == 2 and cells[0][0] != cells[1][0] and cells[0][1] != cells[1][1]:
        return -2
    return 0


def _euler_change_table() -> np.ndarray:
    """int8 (256,): the change of 4 E when a pixel joins the foreground, by its foreground neighbours' code."""
    table = np.zeros(256, dtype=np.int8)
    for code in range(256):
        foreground = {offset for bit, offset in enumerate(_NEIGHBOURS) if code >> bit & 1}
        for top, left in ((-1, -1), (-1, 0), (0, -1), (0, 0)):  # the four windows holding the pixel
            before = [(top + dy, left + dx) for dy in (0, 1) for dx in (0, 1) if (top + dy, left + dx) in foreground]
            table[code] += _quad_euler4(before + [(0, 0)]) - _quad_euler4(before)
    return table


_EULER_CHANGE = _euler_change_table()


class _Topology(NamedTuple):
    """Per level c = 0 … 255 of a uint8 map, int64 (256,) each, and the pixels that change 4 E."""

    value_counts: np.ndarray
    """pixels with value c"""
    euler4: np.ndarray
    """four times the Euler number of ``u > c``: 8-connected components minus 4-connected holes"""
    hole_suspects: np.ndarray
    """local minima that may lie in a hole of ``u > c`` (0: no hole)"""
    critical: Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    """``(y, x, value, change)`` of the nonzero pixels whose joining changes 4 E (by ``change``)"""


def _level_topology(u: np.ndarray) -> _Topology:
    """Topology of every level set ``u > c``, c = 0 … 255, from local changes and a histogram.

    Adding the pixels one at a time in decreasing (value, raster index) order builds every level set
    ``u > c`` in turn; the Euler number then changes by a local amount that depends only on which of
    the pixel's 8 neighbours come earlier in that order (the four 2x2 windows holding it, Gray's bit
    quads). Summing those changes over the pixels above c gives ``E(u > c)``, and over one region's
    pixels, that region's share (used by :func:`_certify_by_regions`).
    """
    height, width = u.shape
    padded_width = width + 2
    padded = np.zeros((height + 2, padded_width), dtype=np.uint8)
    padded[1:-1, 1:-1] = u
    # flat 1-D slices keep every neighbour comparison contiguous; the zero padding never counts as
    # earlier (it is not above any nonzero value) and pixels of value 0 are never foreground
    flat = padded.ravel()
    start, count = padded_width + 1, height * padded_width - 2
    centre = flat[start:start + count]
    code = np.zeros(count, dtype=np.uint8)
    earlier = np.empty(count, dtype=bool)
    # code = sum of earlier << bit, built high bit first as code = 2 code + earlier (fast uint8 adds)
    for bit in reversed(range(len(_NEIGHBOURS))):
        dy, dx = _NEIGHBOURS[bit]
        offset = dy * padded_width + dx
        # ties go to the raster order: a later neighbour of equal value comes earlier in the order
        compare = np.greater_equal if offset > 0 else np.greater
        compare(flat[start + offset:start + offset + count], centre, out=earlier)
        np.add(code, code, out=code)
        np.add(code, earlier, out=code)
    change = cv2.LUT(code, _EULER_CHANGE).reshape(count)  # OpenCV returns an (n, 1) column
    position = np.flatnonzero((change != 0) & (centre > 0))
    value, change = centre[position], change[position].astype(np.int64)
    position += start
    per_value = np.bincount(value, weights=change, minlength=256).astype(np.int64)
    euler4 = per_value.sum() - np.cumsum(per_value)

    value_counts = _histogram(u)
    # The lowest pixel (in the same order, ascending) of a hole is a local minimum among its 4
    # neighbours, not on the image border, and enclosed in its row and column: at levels
    # u[m] <= c < min of the four ray maxima from m to the edges. No such minimum, no hole.
    later, earlier_neighbour = (1, padded_width), (-1, -padded_width)
    minimum = np.ones(count, dtype=bool)
    for offsets, compare in ((later, np.greater_equal), (earlier_neighbour, np.greater)):
        for offset in offsets:
            minimum &= compare(flat[start + offset:start + offset + count], centre)
    minima = np.flatnonzero(minimum) + start
    min_y, min_x = minima // padded_width - 1, minima % padded_width - 1
    interior = (min_y > 0) & (min_y < height - 1) & (min_x > 0) & (min_x < width - 1)
    min_y, min_x = min_y[interior], min_x[interior]
    enclosed_below = _ray_maxima(u, min_y, min_x)
    min_value = u[min_y, min_x]
    hole_suspects = np.cumsum(np.bincount(min_value, minlength=256)
                              - np.bincount(np.maximum(enclosed_below, min_value), minlength=256))

    critical = (position // padded_width - 1, position % padded_width - 1, value.astype(np.int64), change)
    return _Topology(value_counts, euler4, hole_suspects, critical)


def _certify_by_regions(u: np.ndarray, tiles: _Tiles, critical: Tuple[np.ndarray, ...], candidates: np.ndarray
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of hole-free levels with several components, from a few labellings instead of tracing.

    The components of ``u > c`` are labelled at the lowest candidate level c; every higher level's
    components lie inside those regions. A region's Euler number at each level is the sum of the 4 E
    changes of its pixels above that level (``critical``), so where no level has holes and every region
    holds at most one component (E <= 1), each nonempty region is one component whose box is the
    bounding box of the region's pixels above the level: from per-row and per-column maxima, for
    all levels at once. Levels left over get the next labelling, up to ``_MAX_REGION_ROUNDS``.

    Args:
        candidates: indices of tiles (ascending cut) whose level has no hole and E >= 2.

    Returns:
        ``(boxes (n, 4), tile (n,), certified tile indices)``.
    """
    crit_y, crit_x, crit_value, crit_change = critical
    boxes, box_tile, certified = [np.zeros((0, 4), dtype=np.int64)], [np.zeros(0, dtype=np.int64)], []
    remaining = candidates
    for _ in range(_MAX_REGION_ROUNDS):
        if not len(remaining):
            break
        lowest = remaining[0]
        cut = int(tiles.cut[lowest])
        y0, y1, x0, x1 = (int(tiles.y0[lowest]), int(tiles.y1[lowest]) + 1, int(tiles.x0[lowest]),
                          int(tiles.x1[lowest]) + 1)
        crop = u[y0:y1, x0:x1]
        n_labels, labels = cv2.connectedComponents((crop > cut).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        above = crit_value > cut  # all inside the crop, on foreground of the labelled level
        region = labels[crit_y[above] - y0, crit_x[above] - x0]
        per_value = np.bincount(region * 256 + crit_value[above], weights=crit_change[above],
                                minlength=n_labels * 256).astype(np.int64).reshape(n_labels, 256)
        region_euler4 = per_value.sum(axis=1, keepdims=True) - np.cumsum(per_value, axis=1)
        cuts = tiles.cut[remaining]
        one_each = (region_euler4[1:, cuts] <= 4).all(axis=0)
        done, remaining = remaining[one_each], remaining[~one_each]
        certified.append(done)
        done_cuts = tiles.cut[done]
        used = np.flatnonzero((region_euler4[:, done_cuts] == 4).any(axis=1))
        if not len(used):
            continue
        row_max = np.empty((len(used), crop.shape[0]), dtype=np.uint8)
        col_max = np.empty((len(used), crop.shape[1]), dtype=np.uint8)
        for index, label in enumerate(used.tolist()):
            pixels = crop * (labels == label)
            pixels.max(axis=1, out=row_max[index])
            pixels.max(axis=0, out=col_max[index])
        # every (region, level) pair where the region is not empty
        which, level_index = np.nonzero(done_cuts[None, :] < row_max.max(axis=1)[:, None])
        level = done_cuts[level_index]
        bounds = np.stack([_first_above(col_max, which, level), _first_above(row_max, which, level),
                           crop.shape[1] - 1 - _first_above(col_max[:, ::-1], which, level),
                           crop.shape[0] - 1 - _first_above(row_max[:, ::-1], which, level)], axis=1)
        boxes.append(_to_image_boxes(bounds, x0, y0, 0, u.shape))
        box_tile.append(done[level_index])
    certified = np.concatenate(certified) if certified else np.zeros(0, dtype=np.int64)
    return np.concatenate(boxes), np.concatenate(box_tile), certified


def _first_above(profiles: np.ndarray, which: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Per pair, the first index i with ``profiles[which, i] > level`` (there is one), for all pairs at once.

    Running maxima make each uint8 row nondecreasing; adding 256 per row makes the whole flattened
    array nondecreasing, so one ``searchsorted`` answers every pair.
    """
    count, length = profiles.shape
    running = np.maximum.accumulate(profiles, axis=1).astype(np.int64) + 256 * np.arange(count)[:, None]
    return np.searchsorted(running.ravel(), level + 256 * which, side="right") - which * length


def _shelf_pack(heights: np.ndarray, widths: np.ndarray, mosaic_width: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Top-left corners of tiles placed left to right on shelves, with one-pixel zero gaps and margins.

    Returns:
        ``(tops, lefts, mosaic_height)``; tiles come out ordered by (top, left).
    """
    count = len(heights)
    tops = np.empty(count, dtype=np.int64)
    lefts = np.empty(count, dtype=np.int64)
    shelf_top, shelf_height, left = 1, 0, 1
    for index, (tile_height, tile_width) in enumerate(zip(heights.tolist(), widths.tolist())):
        if left + tile_width + 1 > mosaic_width:
            shelf_top += shelf_height + 1
            shelf_height, left = 0, 1
        tops[index], lefts[index] = shelf_top, left
        left += tile_width + 1
        shelf_height = max(shelf_height, tile_height)
    return tops, lefts, shelf_top + shelf_height + 1


def _locate(xs: np.ndarray, ys: np.ndarray, tops: np.ndarray, lefts: np.ndarray, mosaic_width: int) -> np.ndarray:
    """Index of the packed tile holding each mosaic point (every point lies inside a tile)."""
    shelf_tops = np.unique(tops)
    point_shelf = shelf_tops[np.searchsorted(shelf_tops, ys, side="right") - 1]
    tile_keys = tops * mosaic_width + lefts
    return np.searchsorted(tile_keys, point_shelf * mosaic_width + xs, side="right") - 1


class _Mosaic(NamedTuple):
    image: np.ndarray  # bool (height, width)
    tops: np.ndarray
    lefts: np.ndarray

    def locate(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return _locate(xs, ys, self.tops, self.lefts, self.image.shape[1])


def _tile_mosaic(u: np.ndarray, tiles: _Tiles) -> _Mosaic:
    """The foreground crops ``u[y0:y1+1, x0:x1+1] > cut`` packed into one zero-separated image."""
    heights = tiles.y1 - tiles.y0 + 1
    widths = tiles.x1 - tiles.x0 + 1
    mosaic_width = u.shape[1] + 2
    tops, lefts, mosaic_height = _shelf_pack(heights, widths, mosaic_width)
    image = np.zeros((mosaic_height, mosaic_width), dtype=bool)
    for cut, y0, x0, top, left, tile_height, tile_width in zip(
            tiles.cut.tolist(), tiles.y0.tolist(), tiles.x0.tolist(), tops.tolist(), lefts.tolist(),
            heights.tolist(), widths.tolist()):
        np.greater(u[y0:y0 + tile_height, x0:x0 + tile_width], cut,
                   out=image[top:top + tile_height, left:left + tile_width])
    return _Mosaic(image, tops, lefts)


def _contour_geometry(contours: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First point, bounding box and twice the ``cv2.contourArea`` of each contour, vectorised.

    Returns:
        ``(first (n, 2), bounds (n, 4) as xmin, ymin, xmax, ymax, area2 (n,))``; ``area2`` is the
        shoelace sum's absolute value, an exact integer (OpenCV's double area is ``area2 / 2``).
    """
    lengths = np.fromiter((len(contour) for contour in contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    xs, ys = points[:, 0], points[:, 1]
    following = np.arange(1, len(points) + 1)
    following[starts + lengths - 1] = starts
    area2 = np.abs(np.add.reduceat(xs * ys[following] - xs[following] * ys, starts))
    bounds = np.stack([np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                       np.maximum.reduceat(xs, starts), np.maximum.reduceat(ys, starts)], axis=1)
    return points[starts], bounds, area2


def _to_image_boxes(bounds: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray, grow: int,
                    shape: Tuple[int, int]) -> np.ndarray:
    """Mosaic point bounds → wsolevaluation boxes ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]``.

    ``grow`` widens the point bounds on every side first (1 for hole borders from hole pixels).
    """
    height, width = shape
    x0 = bounds[:, 0] - grow + shift_x
    y0 = bounds[:, 1] - grow + shift_y
    x1 = np.minimum(bounds[:, 2] + grow + 1 + shift_x, width - 1)
    y1 = np.minimum(bounds[:, 3] + grow + 1 + shift_y, height - 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def _trace_tiles(u: np.ndarray, tiles: _Tiles) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All contours of the tiles' masks, by one ``findContours`` call on their mosaic.

    Returns:
        ``(boxes (n, 4), tile (n,), area2 (n,))`` in OpenCV's output order.
    """
    mosaic = _tile_mosaic(u, tiles)
    contours = cv2.findContours(mosaic.image.view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    first, bounds, area2 = _contour_geometry(contours)
    tile = mosaic.locate(first[:, 0], first[:, 1])
    boxes = _to_image_boxes(bounds, tiles.x0[tile] - mosaic.lefts[tile], tiles.y0[tile] - mosaic.tops[tile], 0,
                            u.shape)
    return boxes, tile, area2


def _first_largest(tile: np.ndarray, area2: np.ndarray) -> np.ndarray:
    """Per tile (in tile order), the index of the first contour with the largest area."""
    order = np.lexsort((np.arange(len(tile)), -area2, tile))
    _, group_start = np.unique(tile[order], return_index=True)
    return order[group_start]


def _label_tiles(u: np.ndarray, tiles: _Tiles, want_largest: bool
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contour boxes of the tiles' masks from connected components.

    Returns:
        ``(boxes (n, 4), tile (n,), largest (K, 4), retrace (K,))``: every contour's box and tile, the
        largest contour's box per tile, and the tiles whose largest contour needs a full trace.
    """
    mosaic = _tile_mosaic(u, tiles)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mosaic.image.view(np.uint8), connectivity=8,
                                                           ltype=cv2.CV_32S)
    outer = stats[1:, :4].astype(np.int64)
    outer_tile = mosaic.locate(outer[:, 0], outer[:, 1])
    outer_bounds = np.stack([outer[:, 0], outer[:, 1], outer[:, 0] + outer[:, 2] - 1,
                             outer[:, 1] + outer[:, 3] - 1], axis=1)

    _, background_labels, background_stats, _ = cv2.connectedComponentsWithStats(
        np.logical_not(mosaic.image).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    # every zero pixel joined to the gaps and margins (label of the corner) is outside: not a hole
    hole_ids = np.setdiff1d(np.arange(1, len(background_stats)), [background_labels[0, 0]])
    holes = background_stats[hole_ids, :4].astype(np.int64)
    hole_tile = mosaic.locate(holes[:, 0], holes[:, 1])
    hole_bounds = np.stack([holes[:, 0], holes[:, 1], holes[:, 0] + holes[:, 2] - 1,
                            holes[:, 1] + holes[:, 3] - 1], axis=1)

    def image_boxes(bounds: np.ndarray, tile: np.ndarray, grow: int) -> np.ndarray:
        return _to_image_boxes(bounds, tiles.x0[tile] - mosaic.lefts[tile], tiles.y0[tile] - mosaic.tops[tile],
                               grow, u.shape)

    outer_boxes = image_boxes(outer_bounds, outer_tile, 0)
    boxes = np.concatenate([outer_boxes, image_boxes(hole_bounds, hole_tile, 1)])
    tile = np.concatenate([outer_tile, hole_tile])
    n_tiles = len(tiles.cut)
    largest = np.zeros((n_tiles, 4), dtype=np.int64)
    retrace = np.zeros(n_tiles, dtype=bool)
    if want_largest:
        winner, retrace = _largest_components(labels, outer, outer_tile, holes, hole_tile, n_tiles)
        found = winner >= 0
        largest[found] = outer_boxes[winner[found]]
    return boxes, tile, largest, retrace


def _largest_components(labels: np.ndarray, outer: np.ndarray, outer_tile: np.ndarray, holes: np.ndarray,
                        hole_tile: np.ndarray, n_tiles: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per tile, the component whose outer contour has the largest ``contourArea``.

    Traces only the components whose bound ``(w - 1)(h - 1)`` can still reach the best area traced so
    far. Returns ``(winner (K,) component index or -1, retrace (K,))``; ``retrace`` marks tiles where
    the largest contour is not decided here (a tie, a hole that could reach it, too many candidates).
    """
    bound2 = 2 * np.maximum(outer[:, 2] - 1, 0) * np.maximum(outer[:, 3] - 1, 0)
    area2 = np.full(len(outer), -1, dtype=np.int64)
    best2 = np.full(n_tiles, -1, dtype=np.int64)
    retrace = np.zeros(n_tiles, dtype=bool)
    # first round: the component with the largest bound in each tile
    order = np.lexsort((-bound2, outer_tile))
    _, group_start = np.unique(outer_tile[order], return_index=True)
    candidates = order[group_start]
    while len(candidates):
        area2[candidates] = _component_area2(labels, outer, candidates)
        np.maximum.at(best2, outer_tile[candidates], area2[candidates])
        open_ = (area2 < 0) & (bound2 >= best2[outer_tile]) & ~retrace[outer_tile]
        per_tile = np.bincount(outer_tile[open_], minlength=n_tiles)
        retrace |= per_tile > _MAX_LARGEST_CANDIDATES
        candidates = np.flatnonzero(open_ & ~retrace[outer_tile])
    at_best = (area2 == best2[outer_tile]) & (area2 >= 0)
    retrace |= np.bincount(outer_tile[at_best], minlength=n_tiles) > 1
    hole_bound2 = 2 * (holes[:, 2] + 1) * (holes[:, 3] + 1)
    retrace[hole_tile[hole_bound2 >= best2[hole_tile]]] = True
    winner = np.full(n_tiles, -1, dtype=np.int64)
    decided = at_best & ~retrace[outer_tile]
    winner[outer_tile[decided]] = np.flatnonzero(decided)
    return winner, retrace


def _component_area2(labels: np.ndarray, outer: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Twice the outer-contour area of each given component (0-based index into ``outer``), traced alone."""
    heights, widths = outer[components, 3], outer[components, 2]
    tops, lefts, mosaic_height = _shelf_pack(heights, widths, int(widths.max()) + 2)
    image = np.zeros((mosaic_height, int(widths.max()) + 2), dtype=bool)
    for component, top, left in zip(components.tolist(), tops.tolist(), lefts.tolist()):
        x, y, w, h = outer[component].tolist()
        np.equal(labels[y:y + h, x:x + w], component + 1, out=image[top:top + h, left:left + w])
    contours = cv2.findContours(image.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    first, _, contour_area2 = _contour_geometry(contours)
    area2 = np.empty(len(components), dtype=np.int64)
    area2[_locate(first[:, 0], first[:, 1], tops, lefts, image.shape[1])] = contour_area2
    return area2
