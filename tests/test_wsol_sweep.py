"""The fast threshold sweep gives exactly the boxes' IoUs of the straightforward per-threshold loop.

The oracle is ``naive_box_ious`` of benchmarks/bench_wsol.py: ``cv2.threshold`` + ``cv2.findContours``
at every threshold, the largest ``contourArea`` or every ``boundingRect``, as wsolevaluation does.
The all-contour IoUs have two engines, the compiled one (``_levelsets``, the default) and the
numpy/OpenCV fallback used where the extension is not built; both are checked.
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

try:
    from tscam_explain.wsol import _levelsets
except ImportError:  # reported by test_compiled_sweep_is_built; the fallback tests still run
    _levelsets = None

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


def _use_numpy_sweep(monkeypatch) -> None:
    """Run the all-contour sweep through the numpy/OpenCV fallback, as without the extension."""
    monkeypatch.setattr(sweep_module, "_levelsets", None)


def _require_compiled() -> None:
    if _levelsets is None:
        pytest.fail("tscam_explain.wsol._levelsets is not built (was there a C compiler at install time?); "
                    "the numpy fallback is tested on its own, the compiled sweep cannot be")


@pytest.fixture(params=["compiled", "numpy"])
def sweep_engine(request, monkeypatch) -> str:
    """The all-contour sweep's engine for one test: the extension, or the numpy/OpenCV fallback."""
    if request.param == "compiled":
        _require_compiled()
    else:
        _use_numpy_sweep(monkeypatch)
    return request.param


def test_compiled_sweep_is_built():
    """The set-up builds the extension; without it MaxBoxAccV2 silently runs the slower fallback."""
    _require_compiled()
    assert sweep_module._levelsets is _levelsets


@pytest.mark.parametrize("engine", ["compiled", "auto", "always_trace", "always_label"])
def test_sweep_equals_per_threshold_loop(cases_and_oracle, engine, monkeypatch):
    """The compiled sweep, and each numpy engine alone (tracing, labelling) or mixed, give the oracle's IoUs."""
    if engine == "compiled":
        _require_compiled()
    else:
        _use_numpy_sweep(monkeypatch)
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
    """Without the extension, MaxBoxAccV2 alone takes the region labelling for several blobs; any rounds, same IoUs."""
    _use_numpy_sweep(monkeypatch)
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
    _use_numpy_sweep(monkeypatch)
    monkeypatch.setattr(sweep_module, "_PIXELS_PER_CONTOUR", 10 ** 12)
    boxes = np.array([[0, 0, 10, 10], [20, 2, 35, 30]])
    result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], THRESHOLDS)
    np.testing.assert_array_equal(result.largest[0], bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, False))
    np.testing.assert_array_equal(result.all_contours[0], bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, True))


def test_full_size_smooth_and_noisy_maps(sweep_engine):
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


def test_fine_threshold_grid_reuses_masks_exactly(sweep_engine):
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


def _records(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.int32).reshape(-1, 6)


def test_level_boxes_equal_labelled_components_and_holes(peak_cases, cases_and_oracle):
    """Every level's component and hole boxes, from the one-pass kernel, equal a labelling per level."""
    _require_compiled()
    rng = np.random.RandomState(2)
    maps = [scoremaps_to_uint8(case[0][None])[0] for case in peak_cases[:12]]
    maps += [scoremaps_to_uint8(case[0][None])[0] for case in cases_and_oracle[0]]
    maps += [rng.randint(0, 4, (rng.randint(1, 9), rng.randint(1, 9))).astype(np.uint8) for _ in range(300)]
    for u in maps:
        cuts = np.unique(np.r_[rng.randint(0, 256, 6), 0, u.max() - 1 if u.max() else 0]).astype(np.int32)
        # repeated columns: each distinct cut is reported once, at its first column
        columns = np.repeat(cuts, 2)[None]
        components, holes = (_records(raw) for raw in _levelsets.level_boxes(u[None], columns))
        for index, cut in enumerate(cuts.tolist()):
            expected_components, expected_holes = _components_and_holes(u, cut)
            for records, expected in ((components, expected_components), (holes, expected_holes)):
                at_level = records[records[:, 1] == 2 * index]
                assert sorted(map(tuple, at_level[:, 2:].tolist())) == expected, (u.tolist(), cut)
        assert set(components[:, 1].tolist()) <= set(range(0, columns.shape[1], 2))
        assert (components[:, 0] == 0).all() and (holes[:, 0] == 0).all()


def test_level_boxes_number_the_images_of_a_batch():
    _require_compiled()
    rng = np.random.RandomState(4)
    maps = rng.randint(0, 6, (5, 12, 10)).astype(np.uint8)
    cuts = np.tile(np.arange(6, dtype=np.int32), (5, 1))
    together = [_records(raw) for raw in _levelsets.level_boxes(maps, cuts)]
    for image in range(5):
        alone = [_records(raw) for raw in _levelsets.level_boxes(maps[image:image + 1], cuts[image:image + 1])]
        for batch_part, single in zip(together, alone):
            part = batch_part[batch_part[:, 0] == image]
            np.testing.assert_array_equal(part[:, 1:], single[:, 1:])


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


def test_compiled_sweep_handles_unsorted_thresholds_and_chunks(cases_and_oracle, monkeypatch):
    """Thresholds in any order, and batches split across kernel calls, give the oracle's IoUs."""
    _require_compiled()
    monkeypatch.setattr(sweep_module, "_COMPILED_CHUNK", 2)
    rng = np.random.RandomState(6)
    shuffled = rng.permutation(THRESHOLDS)
    cases = [case for case in cases_and_oracle[0] if case[0].shape == (64, 64)][:5]
    maps = scoremaps_to_uint8(np.stack([case[0] for case in cases]))
    result = sweep_box_ious(maps, [case[1] for case in cases], shuffled, largest=False)
    for index, (scoremap, boxes) in enumerate(cases):
        np.testing.assert_array_equal(result.all_contours[index],
                                      bench_wsol.naive_box_ious(scoremap, boxes, shuffled, True))


def test_maps_too_long_for_the_extension_take_the_numpy_path():
    """A side over 32766 pixels (the kernel's coordinate range): same IoUs, through the fallback."""
    _require_compiled()
    scoremap = (np.sin(np.arange(32767) / 500.0)[None] ** 2).astype(np.float32)
    boxes = np.array([[100, 0, 2000, 0], [5000, 0, 9000, 0]])
    result = sweep_box_ious(scoremaps_to_uint8(scoremap[None]), [boxes], THRESHOLDS, largest=False)
    np.testing.assert_array_equal(result.all_contours[0], bench_wsol.naive_box_ious(scoremap, boxes, THRESHOLDS, True))
    with pytest.raises(ValueError, match=r"sides in \[1, 32766\]"):
        _levelsets.level_boxes(scoremaps_to_uint8(scoremap[None]), np.zeros((1, 1), np.int32))


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
