"""Boxes, IoU and every metric on small cases whose answers are worked out by hand."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Dict

import cv2
import numpy as np
import pytest
import torch

from tscam_explain.wsol import (ERROR_TYPES, BoxAccuracy, ClassificationAccuracy, FixedThresholdBoxAccuracy,
                                LocalizationAccuracy, PixelAveragePrecision, as_boxes, box_iou, classify_error,
                                max_box_acc, paired_box_iou, pxap, resize_boxes_maxboxacc, resize_boxes_tscam, tscam_box,
                                tscam_scoremap)
from tscam_explain.wsol import sweep as sweep_module


def test_box_iou_counts_pixels_inclusively():
    a = np.array([[0, 0, 9, 9]])  # 10 x 10 pixels
    others = np.array([[5, 5, 14, 14], [0, 0, 9, 9], [10, 0, 19, 9], [9, 9, 20, 20]])
    # overlaps: 5x5 = 25 of 100 + 100; itself; touching edges share nothing; one corner pixel
    np.testing.assert_array_equal(box_iou(a, others), [[25 / 175, 1.0, 0.0, 1 / (100 + 144 - 1)]])


def test_box_iou_of_an_inverted_box_is_zero_not_an_error():
    assert box_iou(np.array([[5, 5, 0, 0]]), np.array([[0, 0, 3, 3]]))[0, 0] == 0.0


def test_as_boxes_names_the_problem():
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        as_boxes([1, 2, 3])
    with pytest.raises(ValueError, match="x0 <= x1"):
        as_boxes([[5, 0, 4, 3]])
    with pytest.raises(ValueError, match="integer"):
        as_boxes([[0.5, 0, 4, 3]])


def test_box_resizing_of_both_protocols():
    boxes = np.array([[10, 20, 110, 220], [0, 0, 200, 400]])
    # TS-CAM: x / W * 224 truncated, right/bottom clipped to 223
    np.testing.assert_array_equal(resize_boxes_tscam(boxes, (200, 400)), [[11, 11, 123, 123], [0, 0, 223, 223]])
    # wsolevaluation: x * 224 / W truncated, no clipping
    np.testing.assert_array_equal(resize_boxes_maxboxacc(boxes, (200, 400)), [[11, 11, 123, 123], [0, 0, 224, 224]])
    # the operation order decides truncation: 61 / 112 * 224 = 121.99999999999999, 61 * 224 / 112 = 122
    assert resize_boxes_tscam(np.array([[61, 0, 61, 0]]), (112, 112))[0, 0] == 121
    assert resize_boxes_maxboxacc(np.array([[61, 0, 61, 0]]), (112, 112))[0, 0] == 122


def test_tscam_box_takes_the_largest_contour_above_a_strict_threshold():
    scoremap = np.zeros((40, 40), np.uint8)
    scoremap[3:13, 5:25] = 200  # 20 wide, 10 high: contour area 19 * 9
    scoremap[30:32, 30:32] = 255  # brighter but small: area 1
    # threshold int(0.1 * 255) = 25; boundingRect [x, y, x + w, y + h], no clipping
    np.testing.assert_array_equal(tscam_box(scoremap, 0.1), [5, 3, 25, 13])
    # pixels equal to the cut level are background (THRESH_TOZERO keeps only values above it)
    scoremap[3:13, 5:25] = 25
    np.testing.assert_array_equal(tscam_box(scoremap, 0.1), [30, 30, 32, 32])
    np.testing.assert_array_equal(tscam_box(np.zeros((8, 8), np.uint8), 0.1), [0, 0, 1, 1])


def test_tscam_scoremap_min_max_to_uint8_and_constant_guard():
    cam = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    scoremap = tscam_scoremap(cam, (8, 8))
    assert scoremap.dtype == np.uint8 and scoremap.shape == (8, 8)
    assert scoremap.min() == 0 and scoremap.max() == 255
    np.testing.assert_array_equal(tscam_scoremap(np.full((2, 2), 3.0), (8, 8)), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        tscam_scoremap(np.array([[np.nan, 1.0], [0.0, 0.0]]), (4, 4))


def test_max_box_acc_by_hand():
    # a 4x4 block at 1.0 on 0.2: at t = 0 everything is foreground, at t = 0.5 only the block
    scoremap = np.full((10, 10), 0.2, np.float32)
    scoremap[2:6, 2:6] = 1.0
    gt = [np.array([[2, 2, 5, 5]])]  # 16 pixels
    # t = 0: box [0, 0, 9, 9] (x + w clipped to W - 1), IoU 16 / 100; t = 0.5: [2, 2, 6, 6], IoU 16 / 25
    result = max_box_acc(scoremap[None], gt, cam_curve_interval=0.5)
    assert result["curves"] == {30: [0.0, 100.0], 50: [0.0, 100.0], 70: [0.0, 0.0]}
    assert result["per_iou"] == {30: 100.0, 50: 100.0, 70: 0.0}
    assert result["mean"] == pytest.approx(200 / 3)
    assert result["best_threshold"] == {30: 0.5, 50: 0.5, 70: 0.0}
    # several GT boxes: the best one counts; all contours: the hole's box counts too
    ring = np.zeros((12, 12), np.float32)
    ring[1:11, 1:11] = 1.0
    ring[4:8, 4:8] = 0.0  # hole border box [3, 3, 9, 9] (its border pixels 3..8, + w)
    boxes = [np.array([[0, 0, 0, 0], [3, 3, 8, 8]])]
    assert max_box_acc(ring[None], boxes, cam_curve_interval=0.5, multi_contour=False)["per_iou"][70] == 0.0
    assert max_box_acc(ring[None], boxes, cam_curve_interval=0.5, multi_contour=True)["per_iou"][70] == 100.0


def test_ground_truth_boxes_outside_the_map_are_refused_not_clipped():
    scoremap = np.full((1, 10, 10), 0.2, np.float32)
    scoremap[0, 2:6, 2:6] = 1.0
    message = r"gt_boxes\[0\] has boxes outside the 10x10 score map: \[\[2, 2, 11, 5\]\]; expected .*\(0 … 10 for x"
    with pytest.raises(ValueError, match=message):
        max_box_acc(scoremap, [np.array([[2, 2, 11, 5], [0, 0, 3, 3]])])
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] has boxes outside the 10x10 score map: \[\[0, 0, 4, 12\]\]"):
        BoxAccuracy().update(np.concatenate([scoremap, scoremap]), [torch.tensor([[0, 0, 3, 3]]),
                                                                     torch.tensor([[0, 0, 4, 12]])])
    with pytest.raises(ValueError, match="outside the 10x10 score map"):
        FixedThresholdBoxAccuracy(0.1).update(np.zeros((1, 10, 10), np.uint8), [np.array([[0, 0, 30, 30]])])
    # one past the last pixel (wsolevaluation's unclipped resize of a box that ends at the image's edge) is
    # scored as it is: at t = 0 the box [0, 0, 9, 9] has IoU 100 / 121 with it, below 0.9; clipped it would be 1
    result = max_box_acc(scoremap, [np.array([[0, 0, 10, 10]])], cam_curve_interval=0.5, iou_thresholds=(80, 90))
    assert result["curves"] == {80: [100.0, 0.0], 90: [0.0, 0.0]}


def test_box_accuracy_rejects_images_without_boxes():
    with pytest.raises(ValueError, match="no ground-truth box"):
        BoxAccuracy().update(np.zeros((1, 8, 8)), [np.zeros((0, 4))])


def test_pxap_by_hand():
    scoremap = np.array([[[0.9, 0.6, 0.3, 0.1]]], np.float32)
    mask = np.array([[[1, 0, 1, 0]]])
    # bins [0, .5), [.5, 1), [1, 2), [2, 3); from the top: tp 0 0 1 2, fp 0 0 1 2
    # precision 1/2 at recall 1/2 and 1: AP = 0.5 * 0.5 + 0.5 * 0.5
    assert pxap(scoremap, mask, cam_curve_interval=0.5) == pytest.approx(50.0)
    # ignoring the background pixel 0.6: fp 0 0 0 1: AP = 1 * 0.5 + 2/3 * 0.5
    ignore = np.array([[[0, 1, 0, 0]]])
    assert pxap(scoremap, mask, ignore, cam_curve_interval=0.5) == pytest.approx(100 * (0.5 + 1 / 3))
    # an ignore mark on a foreground pixel does not drop it
    assert pxap(scoremap, mask, np.array([[[1, 0, 1, 0]]]), cam_curve_interval=0.5) == pytest.approx(50.0)
    perfect = np.array([[[0.9, 0.6, 0.3, 0.1]]], np.float32)
    assert pxap(perfect, np.array([[[1, 1, 0, 0]]]), cam_curve_interval=0.5) == pytest.approx(100.0)


def test_pxap_bins_equal_numpy_histogram_at_the_edges():
    accumulator = PixelAveragePrecision(0.01)
    values = np.concatenate([accumulator.edges[:101], np.nextafter(accumulator.edges[1:101], 0),
                             np.random.RandomState(0).uniform(size=1000)])
    expected, _ = np.histogram(values, bins=accumulator.edges)
    np.testing.assert_array_equal(np.bincount(accumulator._bins(values), minlength=len(expected)), expected)


def _hand_batch():
    """Six images, eight classes; the comments give each image's outcome."""
    logits = torch.full((6, 8), -1.0)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    top1 = [0, 2, 2, 3, 4, 5]  # image 1 predicts class 2 first, its label second
    for row, cls in enumerate(top1):
        logits[row, cls] = 5.0
    logits[1, 1] = 4.0
    gt = [np.array([[0, 0, 9, 9]]),                      # 0: exact box: IoU 1 -> correct
          np.array([[0, 0, 9, 9]]),                      # 1: exact box but wrong class -> Cls
          np.array([[0, 0, 99, 99]]),                    # 2: half the object: IoU 0.5 exactly -> Part
          np.array([[10, 10, 19, 19]]),                  # 3: box 16x the object: IoG 1 -> More
          np.array([[0, 0, 9, 9], [20, 0, 29, 9]]),      # 4: box across two objects: IoG 0.5 each -> M-Ins
          np.array([[0, 0, 9, 9]])]                      # 5: far away -> OT
    pred = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 49, 99], [0, 0, 39, 39], [5, 0, 24, 9], [50, 50, 60, 60]])
    return logits, labels, pred, gt


def test_localization_accuracy_by_hand():
    logits, labels, pred, gt = _hand_batch()
    accumulator = LocalizationAccuracy()
    ious = accumulator.update(logits, labels, pred, gt)
    np.testing.assert_allclose(ious, [1, 1, 0.5, 100 / 1600, 50 / 250, 0])
    result = accumulator.compute()
    assert result["top1_cls"] == pytest.approx(500 / 6) and result["top5_cls"] == 100.0
    assert result["top1_loc"] == pytest.approx(100 / 6)  # IoU > 0.5 strictly: image 2 (0.5) misses
    assert result["top5_loc"] == pytest.approx(200 / 6)
    assert result["gt_known"] == pytest.approx(300 / 6)  # IoU >= 0.5
    assert result["gt_known_curve"] == pytest.approx({0.3: 50.0, 0.4: 50.0, 0.5: 50.0, 0.6: 100 / 3, 0.7: 100 / 3,
                                                      0.8: 100 / 3, 0.9: 100 / 3})
    expected_errors = {"correct": 1, "cls": 1, "multi_instance": 1, "part": 1, "more": 1, "other": 1}
    assert result["errors"] == pytest.approx({name: count * 100 / 6 for name, count in expected_errors.items()})


def test_error_rules_differ_where_the_paper_and_the_code_do():
    gt = np.array([[0, 0, 99, 99]])
    # IoU exactly 0.5: the official code calls it a Part error, the paper's IoU >= 0.5 calls it correct
    assert classify_error(True, np.array([0, 0, 49, 99]), gt, "official") == "part"
    assert classify_error(True, np.array([0, 0, 49, 99]), gt, "paper") == "correct"
    # IoG exactly 0.7: official More (>=), paper OT (> 0.7)
    wide = np.array([0, 0, 69, 199])  # inter 7000, IoG 0.7, IoP 0.5 (not > 0.5), IoU 7000 / 17000
    assert classify_error(True, wide, gt, "official") == "more"
    assert classify_error(True, wide, gt, "paper") == "other"
    # Part/More against the best-IoU box (official) or any box (paper)
    pred = np.array([0, 0, 9, 9])
    two = np.array([[5, 0, 14, 9], [0, 0, 99, 99]])  # best IoU: box 0 (50 / 150), IoP 0.5; box 1: IoP 1
    assert classify_error(True, pred, two, "official") == "other"
    assert classify_error(True, pred, two, "paper") == "part"
    assert classify_error(False, pred, two, "official") == "cls"
    assert set(ERROR_TYPES) == {"correct", "cls", "multi_instance", "part", "more", "other"}


def test_classification_accuracy_top1_top5():
    logits, labels, _, _ = _hand_batch()
    accumulator = ClassificationAccuracy()
    accumulator.update(logits[:3], labels[:3])
    accumulator.update(logits[3:], labels[3:])
    assert accumulator.compute() == {"top1": pytest.approx(500 / 6), "top5": 100.0}
    with pytest.raises(ValueError, match="labels must lie in 0"):
        accumulator.update(logits, torch.tensor([0, 1, 2, 3, 4, 9]))


def _box_batches():
    rng = np.random.RandomState(1)
    maps = rng.uniform(size=(6, 16, 16)).astype(np.float32)
    boxes = [np.array([[2, 2, 9, 9]]), np.array([[0, 0, 15, 15], [4, 4, 6, 6]])] * 3
    return maps, boxes


def test_states_merge_exactly_and_round_trip():
    maps, boxes = _box_batches()
    whole = BoxAccuracy()
    whole.update(maps, boxes)
    first, second = BoxAccuracy(), BoxAccuracy()
    first.update(maps[:2], boxes[:2])
    second.update(maps[2:], boxes[2:])
    assert first.merge(second).compute() == whole.compute()
    restored = BoxAccuracy()
    restored.load_state_dict(whole.state_dict())
    assert restored.compute() == whole.compute()
    with pytest.raises(ValueError, match="different settings"):
        BoxAccuracy(0.05).merge(whole)
    with pytest.raises(TypeError, match="cannot merge"):
        PixelAveragePrecision().merge(whole)
    with pytest.raises(ValueError, match="shape"):
        BoxAccuracy(0.05).load_state_dict(whole.state_dict())


def _synced_states(rank: int, world_size: int, init_file: str) -> Dict[str, np.ndarray]:
    """Accumulate this rank's share of the hand-made images, sync, return the states."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size, timeout=timedelta(seconds=120))
    try:
        maps, boxes = _box_batches()
        logits, labels, pred, gt = _hand_batch()
        part = slice(rank * 3, rank * 3 + 3)
        box_accuracy, localization = BoxAccuracy(), LocalizationAccuracy()
        box_accuracy.update(maps[part], boxes[part])
        localization.update(logits[part], labels[part], pred[part], gt[part])
        box_accuracy.sync()
        localization.sync()
    finally:
        torch.distributed.destroy_process_group()
    return {**{f"box_{k}": v for k, v in box_accuracy.state_dict().items()},
            **{f"loc_{k}": v for k, v in localization.state_dict().items()}}


def _sync_child(init_file: str, out_file: str) -> None:
    np.savez(out_file, **_synced_states(1, 2, init_file))


def test_sync_sums_counts_over_torch_distributed(tmp_path):
    """Two gloo ranks (this process and a spawned one), each with half the images: after sync both
    hold the single-process totals."""
    child = multiprocessing.get_context("spawn").Process(
        target=_sync_child, args=(str(tmp_path / "init"), str(tmp_path / "rank1.npz")))
    child.start()
    try:
        mine = _synced_states(0, 2, str(tmp_path / "init"))
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    theirs = dict(np.load(tmp_path / "rank1.npz"))
    maps, boxes = _box_batches()
    logits, labels, pred, gt = _hand_batch()
    box_accuracy, localization = BoxAccuracy(), LocalizationAccuracy()
    box_accuracy.update(maps, boxes)
    localization.update(logits, labels, pred, gt)
    expected = {**{f"box_{k}": v for k, v in box_accuracy.state_dict().items()},
                **{f"loc_{k}": v for k, v in localization.state_dict().items()}}
    for name, value in expected.items():
        np.testing.assert_array_equal(mine[name], value)
        np.testing.assert_array_equal(theirs[name], value)


def test_sync_without_distributed_is_a_no_op():
    maps, boxes = _box_batches()
    accumulator = BoxAccuracy()
    accumulator.update(maps, boxes)
    before = accumulator.state_dict()
    accumulator.sync()
    for name, value in accumulator.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_paired_box_iou_is_the_diagonal_of_box_iou():
    rng = np.random.RandomState(0)
    corners = rng.randint(0, 50, (30, 2, 2))
    boxes_a = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    corners = rng.randint(0, 50, (30, 2, 2))
    boxes_b = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    boxes_b[0] = [10, 10, 5, 5]  # inverted: IoU 0 in both
    np.testing.assert_array_equal(paired_box_iou(boxes_a, boxes_b), np.diag(box_iou(boxes_a, boxes_b)))
    # broadcasting: one box against a set
    np.testing.assert_array_equal(paired_box_iou(boxes_a[:1], boxes_b), box_iou(boxes_a[:1], boxes_b)[0])


def test_box_accuracy_over_threads_equals_one_thread():
    """Sweeps spread over a thread pool (the compiled sweep releases the GIL) give the same counts as one
    thread, for both metrics, with and without the extension."""
    rng = np.random.RandomState(1)
    maps = np.stack([cv2.GaussianBlur(rng.uniform(size=(48, 48)), (0, 0), 4) for _ in range(9)])
    maps = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    boxes = [np.array([[x, x, x + 20, x + 25]]) for x in rng.randint(0, 20, len(maps))]

    def counts(executor):
        accumulator = BoxAccuracy(0.01, (30, 50, 70), executor=executor)
        accumulator.update(maps, boxes)
        return accumulator.compute()

    alone = counts(None)
    with ThreadPoolExecutor(3) as threads:
        assert counts(threads) == alone
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep_module, "_levelsets", None)  # the per-threshold loop
            assert counts(threads) == alone
    assert alone["MaxBoxAccV2"]["mean"] > 0 and alone["MaxBoxAcc"]["mean"] > 0
