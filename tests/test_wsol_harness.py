"""evaluate(): exact plumbing with a deterministic explainer, shards merged over two gloo ranks, a
real run with pytorch-grad-cam on a tiny timm ViT, the report files, and the ``tscam-explain
evaluate`` command end to end."""
from __future__ import annotations

import json
import multiprocessing
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch.utils.data import Subset

from conftest import tiny_vit
from tscam_explain.cli import main
from tscam_explain.vit import ViTReshapeTransform
from tscam_explain.wsol import ILSVRCListDataset, WSOLEvalDataset, evaluate
from tscam_explain.wsol import cli as wsol_cli

# Class c's map is 1 inside BLOCKS[c] (inclusive x0, y0, x1, y1), 0 elsewhere.
BLOCKS = {0: (20, 20, 119, 119), 1: (100, 100, 199, 199), 2: (150, 0, 199, 49)}
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0)]  # the explainer predicts the brightest channel
LABELS = [0, 1, 2, 1]
GT_BOXES = [[20, 20, 119, 119], [0, 0, 50, 50], [150, 0, 199, 49, 0, 180, 10, 190], [100, 100, 199, 199]]


class BlockExplainer:
    """pytorch-grad-cam's contract with known outputs: block maps of the target class, logits from colour."""

    def __init__(self) -> None:
        self.outputs = None
        self.device = torch.device("cpu")

    def __call__(self, input_tensor: torch.Tensor, targets: List) -> np.ndarray:
        self.outputs = input_tensor.mean(dim=(2, 3))  # (B, 3): class = brightest channel
        maps = np.zeros((len(input_tensor), *input_tensor.shape[-2:]), np.float32)
        for index, target in enumerate(targets):
            x0, y0, x1, y1 = BLOCKS[target.category]
            maps[index, y0:y1 + 1, x0:x1 + 1] = 1.0
        return maps


def block_dataset(root: Path, protocol: str, input_size: int = 224) -> ILSVRCListDataset:
    lines = []
    for index, (color, label, boxes) in enumerate(zip(COLORS, LABELS, GT_BOXES)):
        Image.new("RGB", (224, 224), color).save(root / f"{index}.png")
        lines.append(" ".join(map(str, [f"{index}.png", label, *boxes])))
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return block_reader(root, protocol, input_size)


def block_reader(root: Path, protocol: str, input_size: int = 224) -> ILSVRCListDataset:
    """A reader of the files :func:`block_dataset` wrote."""
    return ILSVRCListDataset(root / "list.txt", root, num_classes=3, protocol=protocol, input_size=input_size)


def test_tscam_protocol_plumbing_gives_the_hand_computed_numbers(tmp_path):
    # boxes [x0, y0, x1 + 1, y1 + 1]: IoU 100² / 101² with an equal GT block
    # image 0: right class, IoU 0.98: correct; 1: right class, box far from GT: OT;
    # 2: right class, best of two GT boxes; 3: top-1 wrong (red -> class 0), label's box right
    report = evaluate(BlockExplainer(), block_dataset(tmp_path, "tscam"), "tscam", batch_size=3, progress=False)
    metrics = report.metrics["localization"]
    assert metrics["top1_cls"] == 75.0 and metrics["top5_cls"] == 100.0
    assert metrics["top1_loc"] == 50.0 and metrics["top5_loc"] == 75.0 and metrics["gt_known"] == 75.0
    assert metrics["errors"] == {"correct": 50.0, "cls": 25.0, "multi_instance": 0.0, "part": 0.0, "more": 0.0,
                                 "other": 25.0}
    assert metrics["gt_known_curve"][0.9] == 75.0
    assert report.settings["cam_threshold"] == 0.12  # ILSVRC's default
    assert report.dataset["images"] == 4 and report.dataset["fixes"] == 0


def test_maxboxacc_protocol_plumbing_gives_the_hand_computed_numbers(tmp_path):
    report = evaluate(BlockExplainer(), block_dataset(tmp_path, "maxboxacc"), "maxboxacc", batch_size=4,
                      progress=False, limit=3)
    # the block is the foreground at every threshold: IoUs 0.98, 0, 0.96 on the first three images
    assert report.metrics["classification"] == {"top1": 100.0, "top5": 100.0}
    for name in ("MaxBoxAcc", "MaxBoxAccV2"):
        result = report.metrics[name]
        assert result["per_iou"] == {30: pytest.approx(200 / 3), 50: pytest.approx(200 / 3),
                                     70: pytest.approx(200 / 3)}
        assert result["curves"][50] == [pytest.approx(200 / 3)] * 100
        assert result["best_threshold"][50] == 0.0
    assert "PxAP" not in report.metrics


class SpeckledBlockExplainer(BlockExplainer):
    """Block maps plus smoothed noise, drawn afresh for each batch: many contours, holes and ties."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.RandomState(0)

    def __call__(self, input_tensor: torch.Tensor, targets: List) -> np.ndarray:
        maps = super().__call__(input_tensor, targets)
        noise = self.rng.uniform(size=maps.shape).astype(np.float32)
        return maps + np.stack([cv2.GaussianBlur(layer, (0, 0), 2) for layer in noise])


def test_metric_threads_give_the_metrics_of_one_thread(tmp_path):
    dataset = block_dataset(tmp_path, "maxboxacc")
    alone = evaluate(SpeckledBlockExplainer(), dataset, "maxboxacc", batch_size=3, progress=False)
    threads = evaluate(SpeckledBlockExplainer(), dataset, "maxboxacc", batch_size=3, progress=False, metric_workers=3)
    assert threads.metrics == alone.metrics
    assert 0 < alone.metrics["MaxBoxAcc"]["per_iou"][30] < 100  # the noise matters


def test_trt_protocol_plumbing_gives_the_hand_computed_numbers(tmp_path):
    # TRT's one-threshold all-contour accuracy: each block is the map's only contour, box [x0, y0, x1 + 1, y1 + 1];
    # IoU with each image's first GT box: 0.98, 0 (far away), 0.96, 0.98 -> 75 % at IoU 30, 50 and 70
    (tmp_path / "tscam").mkdir()
    report = evaluate(BlockExplainer(), block_dataset(tmp_path, "trt"), "trt", batch_size=3, progress=False)
    boxes = report.metrics["FixedThresholdBoxAccV2"]
    assert boxes == {"per_iou": {30: 75.0, 50: 75.0, 70: 75.0}, "mean": 75.0, "cam_threshold": 0.12}
    # beside it, the seeds' metrics of the same maps and boxes (TRT's test_cam.py reports both)
    seeds = evaluate(BlockExplainer(), block_dataset(tmp_path / "tscam", "tscam"), "tscam", progress=False)
    assert report.metrics["localization"] == seeds.metrics["localization"]
    assert report.settings["cam_threshold"] == 0.12 and report.settings["iou_thresholds"] == [30, 50, 70]


def test_pxap_on_mask_annotations(tmp_path):
    metadata, images, masks = tmp_path / "OpenImages/test", tmp_path / "images", tmp_path / "masks"
    for folder in (metadata, images, masks):
        folder.mkdir(parents=True)
    Image.new("RGB", (224, 224), COLORS[0]).save(images / "a.png")
    mask = np.zeros((224, 224), np.uint8)
    x0, y0, x1, y1 = BLOCKS[0]
    mask[y0:y1 + 1, x0:x1 + 1] = 255
    Image.fromarray(mask).save(masks / "a_mask.png")
    Image.fromarray(np.zeros((224, 224), np.uint8)).save(masks / "a_ignore.png")
    (metadata / "image_ids.txt").write_text("a.png\n")
    (metadata / "class_labels.txt").write_text("a.png,0\n")
    (metadata / "localization.txt").write_text("a.png,a_mask.png,a_ignore.png\n")
    report = evaluate(BlockExplainer(), WSOLEvalDataset(metadata, images, masks), "maxboxacc", progress=False)
    assert report.metrics["PxAP"] == 100.0  # the map is exactly the mask
    assert "MaxBoxAcc" not in report.metrics


def test_protocol_mismatch_and_missing_threshold_fail_clearly(tmp_path):
    dataset = block_dataset(tmp_path, "tscam")
    with pytest.raises(ValueError, match="maps boxes for the 'tscam' protocol"):
        evaluate(BlockExplainer(), dataset, "maxboxacc", progress=False)
    with pytest.raises(ValueError, match="maps boxes for the 'tscam' protocol"):  # a shard is checked too
        evaluate(BlockExplainer(), Subset(dataset, [0, 1]), "maxboxacc", progress=False)
    with pytest.raises(ValueError, match="pass sync=True"):
        evaluate(BlockExplainer(), dataset, "tscam", progress=False, process_group=object())
    dataset.benchmark = None
    with pytest.raises(ValueError, match="pass cam_threshold"):
        evaluate(BlockExplainer(), dataset, "tscam", progress=False)
    trt = block_reader(tmp_path, "trt")
    trt.benchmark = None
    with pytest.raises(ValueError, match="pass cam_threshold .the trt protocol uses"):
        evaluate(BlockExplainer(), trt, "trt", progress=False)


def _evaluate_half(rank: int, root: str, init_file: str) -> Dict[str, Any]:
    """Rank ``rank`` of two evaluates its half of the block images with ``sync``, both protocols."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=120))
    try:
        half = [[0], [1, 2, 3]][rank]  # unequal shards: the counts, not the per-rank percentages, add up
        reports = {}
        for protocol in ("tscam", "maxboxacc"):
            shard = Subset(block_reader(Path(root) / protocol, protocol), half)
            reports[protocol] = evaluate(BlockExplainer(), shard, protocol, batch_size=2, progress=False, sync=True)
        # an explicit group: the same merge over a group of both ranks
        group = torch.distributed.new_group([0, 1])
        shard = Subset(block_reader(Path(root) / "maxboxacc", "maxboxacc"), half)
        reports["group"] = evaluate(BlockExplainer(), shard, "maxboxacc", progress=False, sync=True,
                                    process_group=group)
    finally:
        torch.distributed.destroy_process_group()
    return {name: (report.metrics, report.dataset["images"]) for name, report in reports.items()}


def _evaluate_half_child(root: str, init_file: str, out_file: str) -> None:
    Path(out_file).write_bytes(pickle.dumps(_evaluate_half(1, root, init_file)))


def test_sync_over_two_gloo_ranks_gives_the_single_process_metrics(tmp_path):
    """This process and a spawned one each evaluate a disjoint part of the 4 images with sync=True:
    both get exactly the report metrics of one process over all 4."""
    singles = {}
    for protocol in ("tscam", "maxboxacc"):
        (tmp_path / protocol).mkdir()  # written once, before the ranks read them
        singles[protocol] = evaluate(BlockExplainer(), block_dataset(tmp_path / protocol, protocol), protocol,
                                     progress=False).metrics
    child = multiprocessing.get_context("spawn").Process(
        target=_evaluate_half_child, args=(str(tmp_path), str(tmp_path / "init"), str(tmp_path / "rank1.pkl")))
    child.start()
    try:
        mine = _evaluate_half(0, str(tmp_path), str(tmp_path / "init"))
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    theirs = pickle.loads((tmp_path / "rank1.pkl").read_bytes())
    for name, protocol in (("tscam", "tscam"), ("maxboxacc", "maxboxacc"), ("group", "maxboxacc")):
        assert mine[name] == theirs[name] == (singles[protocol], 4)
    # the merge is not vacuous: one rank's part alone scores differently
    alone = evaluate(BlockExplainer(), Subset(block_reader(tmp_path / "tscam", "tscam"), [1, 2, 3]), "tscam",
                     progress=False)
    assert alone.metrics != mine["tscam"][0]


def test_gradcam_on_a_tiny_vit_and_the_report_files(tmp_path):
    dataset = block_dataset(tmp_path, "maxboxacc", input_size=64)
    model = tiny_vit("vit_tiny_patch16_224", num_classes=3, patch_size=16)
    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                 reshape_transform=ViTReshapeTransform(model)) as cam:
        report = evaluate(cam, dataset, "maxboxacc", batch_size=2, progress=True)
    assert report.settings["explainer"] == "GradCAM" and report.settings["input_size"] == [64, 64]
    for name in ("MaxBoxAcc", "MaxBoxAccV2"):
        assert all(0.0 <= value <= 100.0 for value in report.metrics[name]["per_iou"].values())
        assert len(report.metrics[name]["curves"][30]) == 100
    assert {"torch", "timm", "grad-cam", "numpy", "opencv", "tscam_explain"} <= set(report.versions)
    json_path, markdown_path = report.save(tmp_path / "report")
    saved = json.loads(json_path.read_text())
    assert saved["metrics"]["MaxBoxAccV2"]["mean"] == report.metrics["MaxBoxAccV2"]["mean"]
    assert saved["settings"]["protocol"] == "maxboxacc" and saved["versions"]["torch"] == torch.__version__
    summary = markdown_path.read_text()
    assert "| MaxBoxAccV2 |" in summary and "grad-cam" in summary


def make_cub(root: Path) -> Path:
    (root / "images").mkdir()
    for index in range(3):
        Image.new("RGB", (48, 32), COLORS[index]).save(root / "images" / f"{index}.jpg")
    (root / "images.txt").write_text("".join(f"{i + 1} {i}.jpg\n" for i in range(3)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {i % 2 + 1}\n" for i in range(3)))
    (root / "train_test_split.txt").write_text("".join(f"{i + 1} 0\n" for i in range(3)))
    (root / "bounding_boxes.txt").write_text("".join(f"{i + 1} 4 4 30 20\n" for i in range(3)))
    return root


@pytest.mark.parametrize("protocol, metric", [("tscam", "gt known"), ("maxboxacc", "MaxBoxAccV2")])
def test_evaluate_command_end_to_end(tmp_path, capsys, protocol, metric):
    """A saved tiny TS-CAM model, a CUB folder, our TS-CAM explainer (tensor path), both protocols."""
    from tscam_explain import create_tscam, save_model

    torch.manual_seed(0)
    save_model(create_tscam("deit_tiny_patch16_224", num_classes=2, depth=1, embed_dim=64, num_heads=2),
               tmp_path / "model.pt")
    out = tmp_path / "out"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(make_cub(tmp_path)),
                 "--dataset-format", "cub", "--explainer", "tscam", "--protocol", protocol, "--batch-size", "2",
                 "--device", "cpu", "--num-workers", "0", "--limit", "3", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["images"] == 3 and report["settings"]["explainer"] == "TSCAMExplainer"
    printed = capsys.readouterr().out
    assert f"| {metric} |" in printed and "report.json" in printed


class _Stop(Exception):
    pass


def test_evaluate_command_normalises_images_as_the_model_was_trained(tmp_path, monkeypatch):
    """timm's vit_tiny_patch16_224 was trained with mean = std = 0.5 (not ImageNet's): the reader
    gets the model's own normalisation, and the head is sized to the data's 2 classes."""
    seen = {}

    def capture(explainer, dataset, *args, **kwargs):
        seen.update(explainer=explainer, dataset=dataset)
        raise _Stop

    monkeypatch.setattr(wsol_cli, "evaluate", capture)
    with pytest.raises(_Stop):
        main(["evaluate", "--model", "vit_tiny_patch16_224", "--data", str(make_cub(tmp_path)), "--explainer",
              "gradcam", "--device", "cpu", "--out", str(tmp_path / "out")])
    # image 0 is pure red: ToTensor gives (1, 0, 0), then (x - 0.5) / 0.5 (JPEG leaves a little error)
    assert seen["dataset"][0]["image"][:, 10, 10].tolist() == pytest.approx([1.0, -1.0, -1.0], abs=0.05)
    assert seen["explainer"].model.num_classes == 2
