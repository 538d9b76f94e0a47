"""The box protocols against what the official evaluation code computed (recorded in tests/data/official).

* crafted maps: TS-CAM's box (``get_bboxes`` after ``resize_cam``) and TRT's fixed-threshold all-contour
  accuracy (``BoxEvaluator`` of ``lib/cams_MaxBoxAccV2_deit.py`` at one ``CAM_THR``), case by case;
* a tiny CUB folder run through the official loaders, models and ``tools_cam/test_cam.py`` functions
  (``evaluate_cls_loc``, ``evaluate_maxbox_acc``): the same images through our reader, model, explainer,
  ``evaluate`` and the ``tscam-explain evaluate`` command.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tscam_explain import load_official
from tscam_explain.cli import main
from tscam_explain.explainers import TRTExplainer, TSCAMExplainer
from tscam_explain.wsol import (CUBDataset, FixedThresholdBoxAccuracy, box_iou, evaluate, explain_batch, tscam_box,
                                tscam_scoremap, wsol_collate)
from tscam_explain.wsol.harness import PROTOCOL_DESCRIPTIONS

DATA = Path(__file__).parent / "data" / "official"
CUB = DATA / "cub"
TSCAM_FILE, TRT_FILE = DATA / "tscam_tiny.pth", DATA / "trt_fuse_tiny.pth"
SIZE = 48  # the tiny models' input side
LOCALIZATION = {"top1_cls": "cls_top1", "top5_cls": "cls_top5", "top1_loc": "loc_top1", "top5_loc": "loc_top5",
                "gt_known": "loc_gt_known"}
# the official error analysis's per-image flags (test_cam.py's wrong_details) → our error types
ERRORS = {"correct": "right", "cls": "cls", "multi_instance": "mins", "part": "part", "more": "more", "other": "wrong"}


def recorded(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


def crafted_cases():
    """(raw map, inclusive GT boxes (k, 4)) of each crafted case, the boxes as the official strings give them."""
    crafted = np.load(DATA / "crafted.npz")
    for cam, (h, w), text in zip(crafted["maps"], crafted["shapes"], crafted["boxes"]):
        yield cam[:h, :w], np.array(str(text).split(" "), dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize("threshold", [0.1, 0.12, 0.3])
def test_tscam_box_equals_the_official_box_on_crafted_maps(threshold):
    expected = recorded("tscam_record.pt")["crafted"]
    boxes, ious = [], []
    for cam, gt in crafted_cases():
        box = tscam_box(tscam_scoremap(cam, (224, 224)), threshold)
        boxes.append(box.tolist())
        ious.append(box_iou(box[None], gt).max())
    assert boxes == expected["boxes"][threshold].tolist()
    np.testing.assert_array_equal(ious, expected["max_iou"][threshold].numpy())


@pytest.mark.parametrize("threshold", [0.1, 0.12, 0.3])
def test_fixed_threshold_box_accuracy_equals_trts_official_evaluator_on_crafted_maps(threshold):
    expected = recorded("trt_record.pt")["crafted"][threshold]
    cases = list(crafted_cases())
    maps_u8 = np.stack([tscam_scoremap(cam, (224, 224)) for cam, _ in cases])
    gt_boxes = [gt for _, gt in cases]
    accuracy = FixedThresholdBoxAccuracy(threshold)
    # two batches: the counts add up
    scores = np.concatenate([accuracy.update(maps_u8[:17], gt_boxes[:17]),
                             accuracy.update(maps_u8[17:], gt_boxes[17:])])
    np.testing.assert_array_equal(scores, expected["max_iou"].numpy())
    result = accuracy.compute()
    assert list(result["per_iou"].values()) == expected["per_iou"]
    assert result["mean"] == expected["mean"] and result["cam_threshold"] == threshold
    assert accuracy.correct.tolist() == [int(expected["num_correct"][iou].sum()) for iou in (30, 50, 70)]
    # the official code scores the FIRST ground-truth box only; some cases would score higher on any box
    any_box = [box_iou(boxes, gt).max() for boxes, gt in zip(expected["boxes"], gt_boxes)]
    assert any(theirs < best for theirs, best in zip(scores, any_box))


def test_fixed_threshold_box_accuracy_checks_its_input():
    with pytest.raises(ValueError, match=r"cam_threshold must lie in \[0, 1\)"):
        FixedThresholdBoxAccuracy(1.0)
    accuracy = FixedThresholdBoxAccuracy(0.1)
    with pytest.raises(ValueError, match="maps_u8 must be uint8"):
        accuracy.update(np.zeros((1, 8, 8), np.float32), [np.array([[0, 0, 3, 3]])])
    with pytest.raises(ValueError, match="no ground-truth box"):
        accuracy.update(np.zeros((1, 8, 8), np.uint8), [np.zeros((0, 4), np.int64)])
    with pytest.raises(ValueError, match="no image was accumulated"):
        accuracy.compute()


def _batch(protocol: str) -> dict:
    dataset = CUBDataset(CUB, "test", protocol, input_size=SIZE)
    return wsol_collate([dataset[index] for index in range(len(dataset))])


@pytest.mark.parametrize("method, threshold", [(m, t) for m in ("tscam", "trt") for t in (0.1, 0.5, 0.7)])
def test_official_maps_through_our_protocol_give_the_official_boxes(method, threshold):
    """The official models' own maps of the tiny CUB through our pipeline: bit-exact boxes and IoUs."""
    expected = recorded(f"{method}_record.pt")["cub"][threshold]
    batch = _batch("trt")
    assert [" ".join(map(str, boxes.reshape(-1).tolist())) for boxes in batch["boxes"]] == expected["gt_boxes"]
    assert batch["label"].tolist() == expected["labels"].tolist()
    maps = expected["cams"][torch.arange(len(batch["label"])), batch["label"]].numpy()
    maps_u8 = np.stack([tscam_scoremap(cam, (SIZE, SIZE)) for cam in maps])
    boxes = np.stack([tscam_box(scoremap, threshold) for scoremap in maps_u8])
    assert boxes.tolist() == expected["gt_known_boxes"].tolist()
    ious = [box_iou(box[None], gt.numpy()).max() for box, gt in zip(boxes, batch["boxes"])]
    np.testing.assert_array_equal(ious, expected["gt_known_iou"].numpy())
    if method == "trt":
        scores = FixedThresholdBoxAccuracy(threshold).update(maps_u8, batch["boxes"])
        np.testing.assert_array_equal(scores, expected["all_contour_iou"].numpy())


@pytest.mark.parametrize("method", ["tscam", "trt"])
def test_our_maps_of_the_tiny_cub_equal_the_official_maps(method):
    expected = recorded(f"{method}_record.pt")["cub"][0.1]
    model = load_official(TSCAM_FILE if method == "tscam" else TRT_FILE)
    batch = _batch(method if method == "tscam" else "trt")
    with (TSCAMExplainer if method == "tscam" else TRTExplainer)(model) as explainer:
        maps, logits = explain_batch(explainer, batch["image"], batch["label"])
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=2e-5)
    official = expected["cams"][torch.arange(len(maps)), batch["label"]]
    torch.testing.assert_close(torch.from_numpy(maps), official, rtol=1e-5, atol=2e-5)


def _check_localization(metrics: dict, expected: dict) -> None:
    """Our seeds' metrics (percent) against the official per-image flags of the same images."""
    for ours, theirs in LOCALIZATION.items():
        assert metrics["localization"][ours] == pytest.approx(100 * expected["accuracy"][theirs], abs=1e-9)
    flags = expected["per_image"]
    for ours, theirs in ERRORS.items():
        share = 100 * sum(flags[theirs]) / len(flags[theirs])
        assert metrics["localization"]["errors"][ours] == pytest.approx(share, abs=1e-9), ours


def _evaluate_command(tmp_path: Path, checkpoint: Path, explainer: str, protocol: str, threshold: float) -> dict:
    out = tmp_path / f"{protocol}-{threshold}"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(CUB), "--dataset-format", "cub",
            "--explainer", explainer, "--protocol", protocol, "--batch-size", "5", "--device", "cpu",
            "--num-workers", "0", "--out", str(out), "--no-progress"]
    if threshold != 0.1:  # 0.1 is the CUB default of both protocols
        argv += ["--cam-threshold", str(threshold)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["cam_threshold"] == threshold and report["settings"]["input_size"] == [SIZE, SIZE]
    assert PROTOCOL_DESCRIPTIONS[protocol] in (out / "report.md").read_text()
    return report["metrics"]


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.7])
def test_evaluate_protocol_trt_equals_trts_official_test_script(tmp_path, threshold):
    """``tscam-explain evaluate --protocol trt`` on an official TRT file = test_cam.py's gt_top and maxboxaccv2."""
    expected = recorded("trt_record.pt")["cub"][threshold]
    metrics = _evaluate_command(tmp_path, TRT_FILE, "trt", "trt", threshold)
    _check_localization(metrics, expected)
    boxes = metrics["FixedThresholdBoxAccV2"]
    assert [boxes["per_iou"][str(iou)] for iou in (30, 50, 70)] == expected["maxboxaccv2_per_iou"]
    assert boxes["mean"] == expected["maxboxaccv2"]


@pytest.mark.parametrize("threshold", [0.1, 0.7])
def test_evaluate_protocol_tscam_equals_tscams_official_test_script(tmp_path, threshold):
    expected = recorded("tscam_record.pt")["cub"][threshold]
    metrics = _evaluate_command(tmp_path, TSCAM_FILE, "tscam", "tscam", threshold)
    _check_localization(metrics, expected)
    assert "FixedThresholdBoxAccV2" not in metrics


def test_trt_protocol_reports_say_what_the_numbers_are():
    model = load_official(TRT_FILE)
    with TRTExplainer(model) as explainer:
        report = evaluate(explainer, CUBDataset(CUB, "test", "trt", input_size=SIZE), "trt", batch_size=6,
                          progress=False)
    assert report.settings["cam_threshold"] == 0.1 and report.settings["iou_thresholds"] == [30, 50, 70]
    text = report.markdown()
    assert "Protocol trt: TRT's official evaluation" in text and "NOT wsolevaluation's" in text
    assert "| BoxAccV2 at CAM threshold 0.10 (TRT's \"MaxBoxAccV2\", not swept) |" in text
    with pytest.raises(ValueError, match="maps boxes for the 'tscam' protocol, not 'trt'"):
        evaluate(explainer, CUBDataset(CUB, "test", "tscam", input_size=SIZE), "trt", progress=False)
