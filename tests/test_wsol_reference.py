"""The wsolevaluation protocol reproduces the reference values of shared/wsol_reference exactly."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tscam_explain.wsol import BoxAccuracy, PixelAveragePrecision, max_box_acc, pxap

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "wsol_reference"


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "cases.py").exists():
        message = f"reference cases not found at {REFERENCE} (shared/ must sit beside the repository)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    spec = importlib.util.spec_from_file_location("wsol_reference_cases", REFERENCE / "cases.py")
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    data = cases.load(7)
    expected = json.loads((REFERENCE / "public_seed7.json").read_text())
    gt_boxes = [data["boxes"][i, :data["box_counts"][i]] for i in range(len(data["boxes"]))]
    return data, gt_boxes, expected


@pytest.fixture(scope="module")
def box_results(reference):
    """MaxBoxAcc and MaxBoxAccV2 from one sweep over the 200 cases (both contour rules at once)."""
    data, gt_boxes, _ = reference
    accumulator = BoxAccuracy(cam_curve_interval=0.01, iou_thresholds=(30, 50, 70))
    accumulator.update(data["scoremaps"], gt_boxes)
    return accumulator.compute()


def test_max_box_acc_largest_contour_matches_reference(reference, box_results):
    _, _, expected = reference
    result = box_results["MaxBoxAcc"]
    assert result["per_iou"][50] == expected["MaxBoxAcc"]
    assert {str(iou): value for iou, value in result["per_iou"].items()} == \
        expected["MaxBoxAcc_per_iou_largest_contour"]
    for iou, curve in expected["box_acc_curve_percent"]["largest_contour"].items():
        assert result["curves"][int(iou)] == curve
        assert result["best_threshold"][int(iou)] == pytest.approx(0.01 * int(np.argmax(curve)))


def test_max_box_acc_v2_all_contours_matches_reference(reference, box_results):
    _, _, expected = reference
    result = box_results["MaxBoxAccV2"]
    assert result["mean"] == expected["MaxBoxAccV2"]
    assert {str(iou): value for iou, value in result["per_iou"].items()} == expected["MaxBoxAccV2_per_iou"]
    for iou, curve in expected["box_acc_curve_percent"]["all_contours"].items():
        assert result["curves"][int(iou)] == curve


def test_array_function_equals_accumulator(reference):
    """``max_box_acc`` on a subset: the same numbers as an accumulator fed in two batches."""
    data, gt_boxes, _ = reference
    maps, boxes = data["scoremaps"][::20], gt_boxes[::20]
    for multi_contour, name in ((False, "MaxBoxAcc"), (True, "MaxBoxAccV2")):
        accumulator = BoxAccuracy(largest_contour=not multi_contour, all_contours=multi_contour)
        accumulator.update(maps[:4], boxes[:4])
        accumulator.update(maps[4:], boxes[4:])
        assert max_box_acc(maps, boxes, multi_contour=multi_contour) == accumulator.compute()[name]


def test_pxap_matches_reference_to_the_last_digit(reference):
    data, _, expected = reference
    assert pxap(data["scoremaps"], data["masks"]) == expected["PxAP"]
    assert pxap(data["scoremaps"], data["masks"], data["ignore_boxes"]) == expected["PxAP_with_ignore_boxes"]


def test_pxap_of_batches_equals_pxap_of_the_whole(reference):
    data, _, expected = reference
    accumulator = PixelAveragePrecision()
    for start in range(0, len(data["scoremaps"]), 37):
        part = slice(start, start + 37)
        accumulator.update(data["scoremaps"][part], data["masks"][part], data["ignore_boxes"][part])
    assert accumulator.compute() == expected["PxAP_with_ignore_boxes"]
