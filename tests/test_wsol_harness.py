"""evaluate(): exact plumbing with a deterministic explainer, a real run with pytorch-grad-cam on a
tiny timm ViT, the report files, and the ``tscam-explain evaluate`` command end to end."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM

from tscam_explain.cli import main
from tscam_explain.vit import ViTReshapeTransform
from tscam_explain.wsol import ILSVRCListDataset, WSOLEvalDataset, evaluate

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
    dataset.benchmark = None
    with pytest.raises(ValueError, match="pass cam_threshold"):
        evaluate(BlockExplainer(), dataset, "tscam", progress=False)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64, depth=2,
                             embed_dim=64, num_heads=2).eval()


def test_gradcam_on_a_tiny_vit_and_the_report_files(tmp_path):
    dataset = block_dataset(tmp_path, "maxboxacc", input_size=64)
    model = tiny_vit()
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
