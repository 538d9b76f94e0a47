"""The fast threshold sweep gives exactly the boxes' IoUs of the straightforward per-threshold loop.

The oracle is ``naive_box_ious`` of benchmarks/bench_wsol.py: ``cv2.threshold`` + ``cv2.findContours``
at every threshold, the largest ``contourArea`` or every ``boundingRect``, as wsolevaluation does.
Maps are built to reach every branch of the sweep: smooth blobs, speckle noise, rings (holes,
including thin ones whose hole contour nearly ties with the outer one), grids of equal squares (ties
for the largest contour), few grey levels, shapes on the image border, tiny and constant maps.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from tscam_explain.wsol import cam_thresholds, maxboxacc_scoremap, scoremaps_to_uint8, sweep_box_ious
from tscam_explain.wsol import sweep as sweep_module

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_wsol.py"
_spec = importlib.util.spec_from_file_location("bench_wsol", _BENCH)
bench_wsol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_wsol)

THRESHOLDS = cam_thresholds(0.01)


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


def _cases(rng: np.random.RandomState):
    """(map, gt boxes) pairs covering the sweep's branches."""
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
    maps.append(rng.uniform(size=(1, 9)).astype(np.float32))  # one row
    maps.append(rng.uniform(size=(7, 1)).astype(np.float32))  # one column
    maps.append(rng.uniform(size=(3, 3)).astype(np.float32))
    cases = []
    for scoremap in maps:
        height, width = scoremap.shape
        count = rng.randint(1, 4)
        x0, y0 = rng.randint(0, width, count), rng.randint(0, height, count)
        x1 = np.minimum(x0 + rng.randint(0, width, count), width + 3)  # GT may reach past the map
        y1 = np.minimum(y0 + rng.randint(0, height, count), height + 3)
        cases.append((scoremap, np.stack([x0, y0, x1, y1], axis=1)))
    cases.append((np.zeros((64, 64), np.float32), np.array([[0, 0, 2, 2]])))  # the empty box overlaps GT
    return cases


@pytest.fixture(scope="module")
def cases_and_oracle():
    cases = _cases(np.random.RandomState(3))
    oracle = [(bench_wsol.naive_box_ious(m, b, THRESHOLDS, False), bench_wsol.naive_box_ious(m, b, THRESHOLDS, True))
              for m, b in cases]
    return cases, oracle


@pytest.mark.parametrize("engine", ["auto", "always_trace", "always_label"])
def test_sweep_equals_per_threshold_loop(cases_and_oracle, engine, monkeypatch):
    """Each engine alone (tracing, labelling) and the automatic mix give the oracle's IoUs exactly."""
    contour_cost = {"auto": sweep_module._PIXELS_PER_CONTOUR, "always_trace": 0, "always_label": 10 ** 12}[engine]
    monkeypatch.setattr(sweep_module, "_PIXELS_PER_CONTOUR", contour_cost)
    cases, oracle = cases_and_oracle
    for (scoremap, boxes), (expected_largest, expected_all) in zip(cases, oracle):
        result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], THRESHOLDS)
        np.testing.assert_array_equal(result.largest[0], expected_largest)
        np.testing.assert_array_equal(result.all_contours[0], expected_all)


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


@pytest.fixture(scope="module")
def peak_cases():
    rng = np.random.RandomState(11)
    cases = []
    for index in range(40):
        scoremap = _peaks(rng, 48 if index % 2 else 96)
        height, width = scoremap.shape
        x0, y0 = rng.randint(0, width // 2, 3), rng.randint(0, height // 2, 3)
        boxes = np.stack([x0, y0, x0 + rng.randint(1, width // 2, 3), y0 + rng.randint(1, height // 2, 3)], axis=1)
        cases.append((scoremap, boxes, bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, True)))
    return cases


@pytest.mark.parametrize("rounds", [0, 1, 4, 1000])
def test_all_contour_boxes_from_regions_equal_per_threshold_loop(peak_cases, cases_and_oracle, rounds, monkeypatch):
    """MaxBoxAccV2 alone takes the region labelling for several blobs; any number of rounds, same IoUs."""
    monkeypatch.setattr(sweep_module, "_MAX_REGION_ROUNDS", rounds)
    cases, oracle = cases_and_oracle
    for scoremap, boxes, expected in peak_cases + [(m, b, o[1]) for (m, b), o in zip(cases, oracle)]:
        result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], THRESHOLDS, largest=False)
        assert result.largest is None
        np.testing.assert_array_equal(result.all_contours[0], expected)


def test_level_topology_matches_components_and_holes(peak_cases, cases_and_oracle):
    """At every level: 4 E = 4 (8-connected components - holes), and no hole where no minimum is suspect."""
    maps = [case[0] for case in peak_cases] + [case[0] for case in cases_and_oracle[0]]
    for scoremap in maps:
        u = scoremaps_to_uint8(scoremap[None])[0]
        topology = sweep_module._level_topology(u)
        for cut in range(int(u.max())):
            mask = (u > cut).view(np.uint8)
            components = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            holes = 0 if hierarchy is None else int(np.count_nonzero(hierarchy[0, :, 3] >= 0))
            assert topology.euler4[cut] == 4 * (components - holes)
            if topology.hole_suspects[cut] == 0:
                assert holes == 0


def _thin_ring() -> np.ndarray:
    ring = np.zeros((40, 40), np.float32)
    cv2.rectangle(ring, (5, 5), (30, 30), 1.0, 1)  # the hole contour's area bound reaches the outer area
    return ring


def _two_equal_squares() -> np.ndarray:
    squares = np.zeros((40, 40), np.float32)
    squares[20:24, 30:34] = 1  # the later square in raster order comes first in the grid below
    squares[2:6, 2:6] = 1
    return squares


def _hundred_dots() -> np.ndarray:
    dots = np.zeros((40, 40), np.float32)
    dots[1::4, 1::4] = 1  # 100 equal single-pixel components: more candidates than worth tracing alone
    return dots


@pytest.mark.parametrize("scoremap", [_thin_ring(), _two_equal_squares(), _hundred_dots()],
                         ids=["hole-may-be-largest", "tie-for-largest", "too-many-candidates"])
def test_labelled_tiles_fall_back_to_tracing_for_the_largest_contour(scoremap, monkeypatch):
    """Where labelling cannot decide the largest contour, the full trace gives OpenCV's own choice."""
    monkeypatch.setattr(sweep_module, "_PIXELS_PER_CONTOUR", 10 ** 12)
    boxes = np.array([[0, 0, 10, 10], [20, 2, 35, 30]])
    result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], THRESHOLDS)
    np.testing.assert_array_equal(result.largest[0], bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, False))
    np.testing.assert_array_equal(result.all_contours[0], bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, True))


def test_full_size_smooth_and_noisy_maps():
    """224x224 maps like the benchmark's: upsampled 14x14 CAMs and speckled blobs, in one batch."""
    rng = np.random.RandomState(5)
    smooth = [maxboxacc_scoremap(np.maximum(rng.normal(0, 1, (14, 14)), 0), (224, 224)) for _ in range(6)]
    noisy = [_blobs(rng, 224, 2, 0.01)]
    maps = np.stack(smooth + noisy)
    boxes = [np.array([[20, 30, 150, 200], [100, 10, 223, 90]])] * len(maps)
    result = sweep_box_ious(scoremaps_to_uint8(maps), boxes, THRESHOLDS)
    for index, scoremap in enumerate(maps):
        np.testing.assert_array_equal(result.largest[index],
                                      bench_wsol.naive_box_ious(scoremap, boxes[index], THRESHOLDS, False))
        np.testing.assert_array_equal(result.all_contours[index],
                                      bench_wsol.naive_box_ious(scoremap, boxes[index], THRESHOLDS, True))


def test_fine_threshold_grid_reuses_masks_exactly():
    """1000 thresholds (wsolevaluation's default interval) map to at most 256 masks, same results."""
    thresholds = cam_thresholds(0.001)
    scoremap = _blobs(np.random.RandomState(8), 64, 2, 0.02)
    boxes = np.array([[10, 10, 40, 50]])
    result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], thresholds)
    np.testing.assert_array_equal(result.all_contours[0], bench_wsol.naive_box_ious(scoremap, boxes, thresholds, True))


def test_scoremap_checks_name_the_problem():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoremaps_to_uint8(np.full((1, 4, 4), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        scoremaps_to_uint8(np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        scoremaps_to_uint8(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="floating point"):
        scoremaps_to_uint8(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\)"):
        sweep_box_ious(np.zeros((1, 4, 4), np.uint8), [np.array([[0, 0, 1, 1]])], np.array([0.5, 1.0]))
