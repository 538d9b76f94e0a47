"""The compiled sweep gives exactly the IoUs of the definition, the per-threshold OpenCV loop.

The oracle is ``per_threshold_box_ious`` (``cv2.threshold`` + ``cv2.findContours`` at every threshold,
the largest ``contourArea`` or every ``boundingRect``, as wsolevaluation does), which is also the
fallback where the extension is not built. Map families: smooth blobs, speckle noise, rings (holes,
including thin ones whose hole contour ties with the outer one), grids of equal squares (ties for the
largest contour), few grey levels, shapes on the image border, tiny and constant maps, saddles and
rings of peaks, and a thousand random maps of mixed kinds from 1x1 to 224x224.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tscam_explain.wsol import cam_thresholds, maxboxacc_scoremap, scoremaps_to_uint8, sweep_box_ious
from tscam_explain.wsol import sweep as sweep_module
from tscam_explain.wsol.sweep import per_threshold_box_ious

try:
    from tscam_explain.wsol import _levelsets
except ImportError:  # reported by test_compiled_sweep_is_built
    _levelsets = None

THRESHOLDS = cam_thresholds(0.01)


def _require_compiled() -> None:
    if _levelsets is None:
        pytest.fail("tscam_explain.wsol._levelsets is not built (was there a C compiler at install time?); "
                    "without it every sweep runs the per-threshold loop")


def _assert_sweep_equals_loop(maps_u8: np.ndarray, gt_boxes, thresholds: np.ndarray = THRESHOLDS) -> None:
    """Both metrics, compiled, against the loop; one batch (several images per call of the pass)."""
    _require_compiled()
    result = sweep_box_ious(maps_u8, gt_boxes, thresholds)
    expected = per_threshold_box_ious(maps_u8, gt_boxes, thresholds)
    for index in range(len(maps_u8)):
        np.testing.assert_array_equal(result.largest[index], expected.largest[index], err_msg=f"map {index}")
        np.testing.assert_array_equal(result.all_contours[index], expected.all_contours[index],
                                      err_msg=f"map {index}")


def _normalised(raw: np.ndarray) -> np.ndarray:
    raw = raw.astype(np.float64)
    if raw.max() == raw.min():
        return np.zeros(raw.shape, dtype=np.float32)
    return ((raw - raw.min()) / (raw.max() - raw.min())).astype(np.float32)


def _blobs(rng: np.random.RandomState, size: int, count: int, noise: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    raw = np.zeros((size, size))
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        sx, sy = rng.uniform(size / 20, size / 4, 2)
        raw += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 / (2 * sx ** 2) + (yy - cy) ** 2 / (2 * sy ** 2)))
    return _normalised(raw + rng.normal(0, noise, raw.shape))


def _rings(rng: np.random.RandomState, size: int) -> np.ndarray:
    raw = rng.uniform(0, 0.2, (size, size)) * (rng.uniform(size=(size, size)) < 0.3)
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randint(0, size - 12, 2)
        side = rng.randint(6, min(size - x, size - y))
        thickness = rng.randint(1, 3)
        cv2.rectangle(raw, (int(x), int(y)), (int(x + side - 1), int(y + side - 1)), float(rng.uniform(0.5, 1)),
                      thickness)
    return _normalised(raw)


def _square_grid(rng: np.random.RandomState, size: int) -> np.ndarray:
    raw = np.zeros((size, size))
    step = rng.randint(4, 9)
    side = rng.randint(1, step)
    level = rng.uniform(0.3, 1)
    for y in range(1, size - side, step):
        for x in range(1, size - side, step):
            raw[y:y + side, x:x + side] = level if rng.uniform() < 0.9 else rng.uniform(0.1, 1)
    return _normalised(raw + rng.uniform(0, 0.05) * rng.uniform(size=(size, size)))


def _few_levels(rng: np.random.RandomState, size: int) -> np.ndarray:
    coarse = rng.randint(0, 4, (size // 8 + 1, size // 8 + 1)).astype(np.float64)
    return _normalised(np.kron(coarse, np.ones((8, 8)))[:size, :size])


def _peaks(rng: np.random.RandomState, size: int) -> np.ndarray:
    """Smooth maps whose level sets split into several blobs at saddles, some cut by the border, some ringed."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    raw = np.zeros((size, size))
    for _ in range(rng.randint(2, 7)):
        cx, cy = rng.uniform(-size / 8, size * 9 / 8, 2)
        spread = rng.uniform(size / 16, size / 5)
        radius = rng.uniform(0, size / 6) if rng.uniform() < 0.3 else 0.0  # a ring: a hole at high levels
        distance = np.hypot(xx - cx, yy - cy) - radius
        raw += rng.uniform(0.3, 1) * np.exp(-distance ** 2 / (2 * spread ** 2))
    return _normalised(np.round(raw * rng.choice([8, 40, 255])))  # coarse steps: plateaus and ties


def _random_boxes(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    count = rng.randint(1, 4)
    x0, y0 = rng.randint(0, width, count), rng.randint(0, height, count)
    x1 = np.minimum(x0 + rng.randint(0, width, count), width + 3)  # GT may reach past the map
    y1 = np.minimum(y0 + rng.randint(0, height, count), height + 3)
    return np.stack([x0, y0, x1, y1], axis=1)


def _thin_ring() -> np.ndarray:
    ring = np.zeros((40, 40), np.float32)
    cv2.rectangle(ring, (5, 5), (30, 30), 1.0, 1)  # the hole contour's area equals the outer one's
    return ring


def _two_equal_squares() -> np.ndarray:
    squares = np.zeros((40, 40), np.float32)
    squares[20:24, 30:34] = 1  # equal areas: OpenCV lists the later one (raster order) first
    squares[2:6, 2:6] = 1
    return squares


def _hundred_dots() -> np.ndarray:
    dots = np.zeros((40, 40), np.float32)
    dots[1::4, 1::4] = 1  # 100 single-pixel components, all of area 0
    return dots


def _family_maps(rng: np.random.RandomState):
    """The maps of the sweep's earlier tests: every kind the numpy engine had a branch for."""
    maps = []
    for _ in range(6):
        maps.append(_blobs(rng, 64, rng.randint(1, 4), 0.0))
        maps.append(_blobs(rng, 64, rng.randint(1, 4), rng.uniform(0.01, 0.08)))
        maps.append(_rings(rng, 64))
        maps.append(_square_grid(rng, 64))
        maps.append(_few_levels(rng, 64))
    maps.append(np.zeros((64, 64), np.float32))  # empty at every threshold
    maps.append(np.full((64, 64), 0.004, np.float32))  # uint8 max 1: few cut levels
    edge = np.zeros((64, 64), np.float32)
    edge[:, :5] = 1.0
    edge[60:, :] = 0.6
    maps.append(edge)  # foreground on the image border
    maps += [_thin_ring(), _two_equal_squares(), _hundred_dots()]
    maps += [_peaks(rng, 48 if index % 2 else 96) for index in range(40)]
    return maps


def test_compiled_sweep_is_built():
    """The set-up builds the extension; without it both metrics silently run the slower loop."""
    _require_compiled()
    assert sweep_module._levelsets is _levelsets


def test_sweep_equals_the_loop_on_every_family():
    rng = np.random.RandomState(3)
    by_shape = {}
    for scoremap in _family_maps(rng):
        by_shape.setdefault(scoremap.shape, []).append((scoremap, _random_boxes(rng, *scoremap.shape)))
    by_shape[(64, 64)].append((np.zeros((64, 64), np.float32), np.array([[0, 0, 2, 2]])))  # empty box hits GT
    for (height, width), cases in by_shape.items():
        maps = scoremaps_to_uint8(np.stack([case[0] for case in cases]))
        _assert_sweep_equals_loop(maps, [case[1] for case in cases])


def _random_map(rng: np.random.RandomState, kind: str, height: int, width: int) -> np.ndarray:
    """A float map in [0, 1] of one kind, any size."""
    if kind == "peaks":
        raw = np.zeros((height, width))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        for _ in range(rng.randint(1, 5)):
            spread = rng.uniform(0.5, max(height, width) / 3 + 1)
            distance2 = (xx - rng.uniform(0, width)) ** 2 + (yy - rng.uniform(0, height)) ** 2
            raw += rng.uniform(0.2, 1) * np.exp(-distance2 / (2 * spread ** 2))
    elif kind == "rings":
        raw = rng.uniform(0, 0.3, (height, width)) * (rng.uniform(size=(height, width)) < 0.05)
        for _ in range(rng.randint(1, 4)):
            center = (int(rng.randint(0, width)), int(rng.randint(0, height)))
            radius = int(rng.randint(1, max(height, width) // 2 + 2))
            cv2.circle(raw, center, radius, float(rng.uniform(0.4, 1)), int(rng.randint(1, 3)))
    elif kind == "plateaus":
        cells = rng.randint(0, rng.randint(2, 6), (rng.randint(1, 6), rng.randint(1, 6))).astype(np.float64)
        raw = cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)
    elif kind == "noise":
        raw = rng.uniform(size=(height, width)) ** rng.uniform(0.3, 3)
        if rng.uniform() < 0.5:  # speckle on a blob
            raw += cv2.GaussianBlur(rng.uniform(size=(height, width)), (0, 0), max(height, width) / 6 + 0.1) * 2
    else:  # thin lines
        raw = np.zeros((height, width))
        for _ in range(rng.randint(1, 6)):
            ends = [int(v) for v in (rng.randint(0, width), rng.randint(0, height), rng.randint(0, width),
                                     rng.randint(0, height))]
            cv2.line(raw, tuple(ends[:2]), tuple(ends[2:]), float(rng.uniform(0.3, 1)), 1)
    return _normalised(raw)


def test_sweep_equals_the_loop_on_a_thousand_random_maps():
    """1,000 maps of five kinds, sides from 1 to 224, batched by size; a few at random thresholds too.
    Speckle (thousands of contours per threshold) only on small maps, so that the loop stays quick."""
    rng = np.random.RandomState(12)
    counts = {(1, 1): 40, (1, 7): 40, (9, 1): 40, (2, 2): 60, (3, 5): 80, (8, 8): 140, (13, 17): 140,
              (16, 16): 120, (24, 24): 100, (31, 20): 100, (48, 48): 100, (224, 224): 40}
    for (height, width), count in counts.items():
        area = height * width
        kinds = (("peaks", "rings", "plateaus", "noise", "lines") if area <= 300 else
                 ("peaks", "rings", "plateaus", "lines") if area <= 2500 else ("peaks", "plateaus", "lines"))
        maps_u8 = scoremaps_to_uint8(np.stack([_random_map(rng, kinds[index % len(kinds)], height, width)
                                               for index in range(count)]))
        gt_boxes = [_random_boxes(rng, height, width) for _ in range(count)]
        _assert_sweep_equals_loop(maps_u8, gt_boxes)
        subset = np.sort(rng.choice(THRESHOLDS, 7, replace=False))
        _assert_sweep_equals_loop(maps_u8[:10], gt_boxes[:10], subset)


def test_full_size_smooth_and_noisy_maps():
    """224x224 maps like the benchmark's: upsampled 14x14 CAMs and speckled blobs, in one batch."""
    rng = np.random.RandomState(5)
    smooth = [maxboxacc_scoremap(np.maximum(rng.normal(0, 1, (14, 14)), 0), (224, 224)) for _ in range(6)]
    noisy = [_blobs(rng, 224, 2, 0.01)]
    boxes = [np.array([[20, 30, 150, 200], [100, 10, 223, 90]])] * 7
    _assert_sweep_equals_loop(scoremaps_to_uint8(np.stack(smooth + noisy)), boxes)


def test_fine_threshold_grid_reuses_levels_exactly():
    """1000 thresholds (wsolevaluation's default interval) map to at most 256 levels, same results."""
    scoremap = _blobs(np.random.RandomState(8), 64, 2, 0.02)
    _assert_sweep_equals_loop(scoremaps_to_uint8(scoremap[None]), [np.array([[10, 10, 40, 50]])],
                              cam_thresholds(0.001))


def test_unsorted_thresholds_and_batches_split_across_calls(monkeypatch):
    monkeypatch.setattr(sweep_module, "_COMPILED_CHUNK", 2)
    rng = np.random.RandomState(6)
    maps = scoremaps_to_uint8(np.stack([_blobs(rng, 40, 3, 0.03) for _ in range(5)]))
    _assert_sweep_equals_loop(maps, [_random_boxes(rng, 40, 40) for _ in range(5)], rng.permutation(THRESHOLDS))


def test_each_metric_alone_equals_both_together():
    rng = np.random.RandomState(7)
    maps = scoremaps_to_uint8(np.stack([_rings(rng, 48) for _ in range(4)]))
    boxes = [_random_boxes(rng, 48, 48) for _ in range(4)]
    both = sweep_box_ious(maps, boxes, THRESHOLDS)
    largest = sweep_box_ious(maps, boxes, THRESHOLDS, all_contours=False)
    every = sweep_box_ious(maps, boxes, THRESHOLDS, largest=False)
    assert largest.all_contours is None and every.largest is None
    np.testing.assert_array_equal(largest.largest, both.largest)
    np.testing.assert_array_equal(every.all_contours, both.all_contours)


class _NoPass:
    """Stands in for the extension where it must not be called."""

    def level_boxes(self, *args, **kwargs):
        raise AssertionError("the compiled pass ran where the loop should")


def test_without_the_extension_or_beyond_its_side_limit_the_loop_runs(monkeypatch):
    rng = np.random.RandomState(10)
    maps = scoremaps_to_uint8(np.stack([_peaks(rng, 24) for _ in range(3)]))
    boxes = [_random_boxes(rng, 24, 24) for _ in range(3)]
    _require_compiled()
    compiled = sweep_box_ious(maps, boxes, THRESHOLDS)
    monkeypatch.setattr(sweep_module, "_levelsets", _NoPass())
    monkeypatch.setattr(sweep_module, "_COMPILED_MAX_SIDE", 23)
    beyond = sweep_box_ious(maps, boxes, THRESHOLDS)
    monkeypatch.setattr(sweep_module, "_levelsets", None)
    monkeypatch.setattr(sweep_module, "_COMPILED_MAX_SIDE", 32766)
    unbuilt = sweep_box_ious(maps, boxes, THRESHOLDS)
    for result in (beyond, unbuilt):
        np.testing.assert_array_equal(result.largest, compiled.largest)
        np.testing.assert_array_equal(result.all_contours, compiled.all_contours)


def test_scoremap_checks_name_the_problem():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoremaps_to_uint8(np.full((1, 4, 4), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        scoremaps_to_uint8(np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        scoremaps_to_uint8(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="floating point"):
        scoremaps_to_uint8(np.zeros((1, 4, 4), np.uint8))
    for sweep in (sweep_box_ious, per_threshold_box_ious):
        with pytest.raises(ValueError, match=r"fractions in \[0, 1\)"):
            sweep(np.zeros((1, 4, 4), np.uint8), [np.array([[0, 0, 1, 1]])], np.array([0.5, 1.0]))
        with pytest.raises(ValueError, match=r"uint8 \(B, H, W\)"):
            sweep(np.zeros((1, 4, 4), np.float32), [np.array([[0, 0, 1, 1]])], THRESHOLDS)
        with pytest.raises(ValueError, match="2 ground-truth box sets for 1 maps"):
            sweep(np.zeros((1, 4, 4), np.uint8), [np.array([[0, 0, 1, 1]])] * 2, THRESHOLDS)


def _components_and_holes(u: np.ndarray, cut: int):
    """Brute force: boxes (x0, y0, x1, y1 inclusive) of the 8-connected components of ``u > cut`` and
    of its holes (4-connected components of ``u <= cut`` not touching the image border)."""
    height, width = u.shape
    found = []
    for mask, connectivity in (((u > cut), 8), ((u <= cut), 4)):
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=connectivity)
        boxes = [(x, y, x + w - 1, y + h - 1) for x, y, w, h, _ in stats[1:].tolist()]
        if connectivity == 4:
            boxes = [b for b in boxes if b[0] > 0 and b[1] > 0 and b[2] < width - 1 and b[3] < height - 1]
        found.append(sorted(boxes))
    return found


def _largest_rect(u: np.ndarray, cut: int):
    contours = cv2.findContours((u > cut).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return x, y, x + w - 1, y + h - 1


def _records(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.int32).reshape(-1, 6)


def test_level_boxes_equal_labelled_components_holes_and_the_largest_contour():
    """Every level's component and hole boxes, from the one-pass kernel, equal a labelling per level,
    and its largest-contour box OpenCV's."""
    _require_compiled()
    rng = np.random.RandomState(2)
    maps = [scoremaps_to_uint8(scoremap[None])[0] for scoremap in _family_maps(np.random.RandomState(3))[::3]]
    maps += [rng.randint(0, 4, (rng.randint(1, 9), rng.randint(1, 9))).astype(np.uint8) for _ in range(300)]
    for u in maps:
        cuts = np.unique(np.r_[rng.randint(0, 256, 6), 0, u.max() - 1 if u.max() else 0]).astype(np.int32)
        # repeated columns: each distinct cut is reported once, at its first column
        columns = np.repeat(cuts, 2)[None]
        components, holes, largest = (_records(raw) for raw in
                                      _levelsets.level_boxes(u[None], columns, all_contours=True, largest=True))
        for index, cut in enumerate(cuts.tolist()):
            expected_components, expected_holes = _components_and_holes(u, cut)
            for records, expected in ((components, expected_components), (holes, expected_holes)):
                at_level = records[records[:, 1] == 2 * index]
                assert sorted(map(tuple, at_level[:, 2:].tolist())) == expected, (u.tolist(), cut)
            at_level = [tuple(row) for row in largest[largest[:, 1] == 2 * index, 2:].tolist()]
            expected_largest = _largest_rect(u, cut)
            assert at_level == ([expected_largest] if expected_largest else []), (u.tolist(), cut)
        for records in (components, holes, largest):
            assert set(records[:, 1].tolist()) <= set(range(0, columns.shape[1], 2))
            assert (records[:, 0] == 0).all()


def test_level_boxes_number_the_images_of_a_batch():
    _require_compiled()
    rng = np.random.RandomState(4)
    maps = rng.randint(0, 6, (5, 12, 10)).astype(np.uint8)
    cuts = np.tile(np.arange(6, dtype=np.int32), (5, 1))
    together = [_records(raw) for raw in _levelsets.level_boxes(maps, cuts, largest=True)]
    for image in range(5):
        alone = [_records(raw) for raw in _levelsets.level_boxes(maps[image:image + 1], cuts[image:image + 1],
                                                                 largest=True)]
        for batch_part, single in zip(together, alone):
            part = batch_part[batch_part[:, 0] == image]
            np.testing.assert_array_equal(part[:, 1:], single[:, 1:])
    components, holes, largest = _levelsets.level_boxes(maps, cuts, all_contours=False)
    assert components == holes == largest == b""  # nothing asked for


def test_level_boxes_reject_bad_arrays_by_name():
    _require_compiled()
    maps = np.zeros((2, 4, 4), np.uint8)
    cuts = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="maps must be a C-contiguous 3-D array of 1-byte"):
        _levelsets.level_boxes(maps.astype(np.float32), cuts)
    with pytest.raises(ValueError, match="maps must be a C-contiguous 3-D"):
        _levelsets.level_boxes(maps[0], cuts)
    with pytest.raises(ValueError, match="cuts must be a C-contiguous 2-D array of 4-byte"):
        _levelsets.level_boxes(maps, cuts.astype(np.int64))
    with pytest.raises(ValueError, match=r"maps \(B, H, W\) .* and cuts \(B, T\)"):
        _levelsets.level_boxes(maps, cuts[:1])
    with pytest.raises(ValueError, match=r"nondecreasing values in \[0, 255\]"):
        _levelsets.level_boxes(maps, np.array([[0, 2, 1], [0, 0, 0]], np.int32))
    with pytest.raises(ValueError, match=r"nondecreasing values in \[0, 255\]"):
        _levelsets.level_boxes(maps, np.array([[0, 2, 256], [0, 0, 0]], np.int32))
    with pytest.raises(ValueError, match="not C-contiguous"):
        _levelsets.level_boxes(np.zeros((2, 4, 8), np.uint8)[:, :, ::2], cuts)
    with pytest.raises(ValueError, match=r"sides in \[1, 32766\]"):
        _levelsets.level_boxes(np.zeros((1, 1, 32767), np.uint8), np.zeros((1, 1), np.int32))
    with pytest.raises(TypeError):
        _levelsets.level_boxes(maps, cuts, True)  # the options are keyword-only


def test_scoremaps_to_uint8_over_several_chunks_is_the_reference_conversion():
    rng = np.random.RandomState(9)
    maps = rng.uniform(size=(40, 64, 64))  # 32 KiB each: two chunks of about 1 MiB
    np.testing.assert_array_equal(scoremaps_to_uint8(maps), (maps * 255).astype(np.uint8))
    maps32 = maps.astype(np.float32)
    np.testing.assert_array_equal(scoremaps_to_uint8(maps32), (maps32 * 255).astype(np.uint8))
    maps[37, 5, 5] = np.nan  # in the second chunk
    with pytest.raises(ValueError, match="NaN"):
        scoremaps_to_uint8(maps)
    maps[37, 5, 5] = 1.0000001
    with pytest.raises(ValueError, match=r"\[0, 1\]; got min \S+ and max 1\.0000001"):
        scoremaps_to_uint8(maps)
