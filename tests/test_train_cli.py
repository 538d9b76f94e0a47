"""``tscam-explain train`` end to end on a generated CUB-format folder, data readers and splits,
and a run killed with SIGKILL that resumes to the uninterrupted run's exact weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tscam_explain.checkpoint import load_file
from tscam_explain.cli import main
from tscam_explain.models import load_model
from tscam_explain.train import data_normalization, get_recipe
from tscam_explain.train.data import build_data, detect_defaults, holdout_split

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
MODEL_ARGS = ["--model", "deit_tiny_patch16_224", "--model-kwargs", "depth=2", "embed_dim=64", "num_heads=2"]
RECIPE_ARGS = ["--img-size", "32", "--resize-size", "40", "--lr", "2e-3", "--no-progress"]
TINY_ARGS = MODEL_ARGS + RECIPE_ARGS + ["--batch-size", "4"]


def make_cub(root: Path, per_class: int = 6, test_per_class: int = 2) -> Path:
    """A CUB_200_2011-format folder: 3 classes (the colour of a box on a noisy background)."""
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    image_id = 0
    for label, colour in enumerate(COLOURS):
        folder = root / "images" / f"{label + 1:03d}.class{label}"
        folder.mkdir(parents=True)
        for k in range(per_class + test_per_class):
            image_id += 1
            rng = np.random.default_rng(image_id)
            pixels = rng.integers(0, 80, (40, 48, 3)).astype(np.uint8)
            x, y, w, h = (int(v) for v in (rng.integers(0, 24), rng.integers(0, 20), rng.integers(12, 24),
                                           rng.integers(10, 20)))
            pixels[y:y + h, x:x + w] = colour
            name = f"{folder.name}/img_{image_id:04d}.jpg"
            Image.fromarray(pixels).save(root / "images" / name, quality=95)
            lines["images.txt"].append(f"{image_id} {name}")
            lines["image_class_labels.txt"].append(f"{image_id} {label + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {int(k < per_class)}")
            lines["bounding_boxes.txt"].append(f"{image_id} {x}.0 {y}.0 {w}.0 {h}.0")
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    return make_cub(tmp_path_factory.mktemp("data") / "CUB_200_2011")


def cli(*args) -> int:
    return main(["train", *map(str, args)])


def test_help_lists_the_recipes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("tscam", "tscam-head", "trt-stage1", "trt-stage2"):
        assert f"  {name} " in text
    assert "--lr-decay-epochs" in text and "--u FLOAT|none" in text


def test_every_recipe_trains_from_the_cli_on_a_cub_folder(cub, tmp_path):
    assert cli("--recipe", "tscam", "--data", cub, "--out", tmp_path / "tscam", "--epochs", 2, *TINY_ARGS) == 0
    out = tmp_path / "tscam"
    assert {"last.pt", "best.pt", "model.pt", "log.jsonl", "run.json"} <= {p.name for p in out.iterdir()}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and {"gt_known", "top1_loc", "top1_cls"} <= set(log[0]["val"])
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["name"] == "tscam" and run["recipe"]["dataset"] == "cub"  # auto defaults for CUB
    # 18 images in the train split, one per class held out (round(0.1 × 6)), the test split unused
    assert "3 training images held out" in run["data"] and "15 training images" in run["data"]
    best = load_file(out / "best.pt")
    assert best["selection"]["metric"] == "gt_known" and best["selection"]["epoch"] in (1, 2)
    assert load_model(out / "best.pt").arch == "tscam"

    assert cli("--recipe", "tscam-head", "--data", cub, "--out", tmp_path / "head", "--epochs", 1, *TINY_ARGS) == 0
    assert cli("--recipe", "trt-stage1", "--data", cub, "--out", tmp_path / "trt1", "--epochs", 2, "--u", 0.7,
               *TINY_ARGS) == 0
    log = [json.loads(line) for line in (tmp_path / "trt1" / "log.jsonl").read_text().splitlines()]
    assert set(log[0]["val"]) == {"top1", "top5"}  # stage 1: classification
    assert cli("--recipe", "trt-stage2", "--data", cub, "--out", tmp_path / "trt2", "--epochs", 2,
               "--stage1", tmp_path / "trt1" / "model.pt", *RECIPE_ARGS, "--batch-size", 4) == 0
    stage2 = load_model(tmp_path / "trt2" / "model.pt")
    stage1 = load_model(tmp_path / "trt1" / "model.pt")
    assert stage2.u == 0.7 and torch.equal(stage2.head.weight, stage1.head.weight)
    assert not torch.equal(stage2.cam_head.conv.weight, stage1.cam_head.conv.weight)
    log = [json.loads(line) for line in (tmp_path / "trt2" / "log.jsonl").read_text().splitlines()]
    assert "gt_known" in log[0]["val"]  # stage 2: TRT maps through the harness


def test_cli_errors_say_what_does_not_fit(cub, tmp_path):
    with pytest.raises(SystemExit, match="pass --stage1"):
        cli("--recipe", "trt-stage2", "--data", cub, "--out", tmp_path / "x")
    with pytest.raises(SystemExit, match="needs --model"):
        cli("--recipe", "tscam", "--data", cub, "--out", tmp_path / "x")
    assert cli("--recipe", "tscam", "--data", cub, "--out", tmp_path / "t", "--epochs", 1, "--val-fraction", 0,
               *TINY_ARGS) == 0
    with pytest.raises(ValueError, match="trt-stage2 needs the checkpoint of a trt-stage1 run"):
        cli("--recipe", "trt-stage2", "--data", cub, "--out", tmp_path / "x", "--stage1", tmp_path / "t" / "model.pt")
    with pytest.raises(ValueError, match=r"the checkpoint's recipe differs \(epochs: checkpoint 1 vs now 3\)"):
        cli("--recipe", "tscam", "--data", cub, "--out", tmp_path / "t", "--epochs", 3, "--val-fraction", 0,
            "--resume", *TINY_ARGS)
    with pytest.raises(FileNotFoundError, match="training data folder not found"):
        cli("--recipe", "tscam", "--data", tmp_path / "missing", "--out", tmp_path / "x", *TINY_ARGS)
    with pytest.raises(ValueError, match="--model-kwargs takes KEY=VALUE pairs"):
        cli("--recipe", "tscam", "--data", cub, "--out", tmp_path / "x", *TINY_ARGS, "--model-kwargs", "depth")
    # a 4-class folder against the 3-class stage-1 model
    folder = tmp_path / "four"
    for label in range(4):
        (folder / f"c{label}").mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40, 40), COLOURS[label % 3]).save(folder / f"c{label}" / f"{k}.png")
    assert cli("--recipe", "trt-stage1", "--data", cub, "--out", tmp_path / "s1", "--epochs", 1, "--val-fraction", 0,
               *TINY_ARGS) == 0
    with pytest.raises(ValueError, match="the model has 3 classes but the training data has 4"):
        cli("--recipe", "trt-stage2", "--data", folder, "--out", tmp_path / "x", "--stage1", tmp_path / "s1" / "last.pt",
            "--val-fraction", 0, *RECIPE_ARGS, "--batch-size", 4)


def test_image_folder_with_boxes_and_the_holdout_split(tmp_path):
    folder = tmp_path / "folder"
    box_lines = []
    for label, colour in enumerate(COLOURS[:2]):
        (folder / f"class{label}").mkdir(parents=True)
        for k in range(5):
            pixels = np.full((40, 40, 3), 30, np.uint8)
            pixels[5:25, 8:30] = colour
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{k}.png")
            box_lines.append(f"class{label}/{k}.png {label} 8 5 29 24")
    (tmp_path / "boxes.txt").write_text("\n".join(box_lines) + "\n")
    recipe = get_recipe("tscam", img_size=32, resize_size=40)
    normalization = data_normalization("deit_tiny_patch16_224")
    data = build_data(recipe, folder, normalization=normalization, boxes=tmp_path / "boxes.txt", val_fraction=0.4)
    assert data.num_classes == 2 and len(data.train) == 6 and data.select_metric == "gt_known"
    image, label = data.train[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert detect_defaults(folder) == "cub"
    no_boxes = build_data(recipe, folder, normalization=normalization, val_fraction=0.2)
    assert no_boxes.select_metric == "top1" and len(no_boxes.train) == 8
    (tmp_path / "bad.txt").write_text("class0/0.png 1 8 5 29 24\n")
    with pytest.raises(ValueError, match="has label 1 but its folder is class 0"):
        build_data(recipe, folder, normalization=normalization, boxes=tmp_path / "bad.txt")

    train_idx, val_idx = holdout_split([0] * 10 + [1] * 20, 0.1, seed=3)
    assert len(val_idx) == 3 and sum(i < 10 for i in val_idx) == 1  # per class: 1 of 10, 2 of 20
    assert sorted(train_idx + val_idx) == list(range(30))
    assert holdout_split([0] * 10 + [1] * 20, 0.1, seed=3) == (train_idx, val_idx)
    assert holdout_split([0] * 10 + [1] * 20, 0.1, seed=4)[1] != val_idx
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        holdout_split([0, 1], 1.0, 0)


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(cub, tmp_path):
    args = ["--recipe", "tscam", "--data", cub, "--epochs", 2, "--checkpoint-every", 1, "--val-fraction", 0,
            *MODEL_ARGS, *RECIPE_ARGS, "--batch-size", 2]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen([sys.executable, "-m", "tscam_explain.cli", "train", *map(str, args),
                                "--out", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    position = None
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if (killed / "last.pt").exists():
            position = load_file(killed / "last.pt")["position"]
            if position["step"] >= 3:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    saved = load_file(killed / "last.pt")["position"]
    # 18 images in batches of 2: 9 steps per epoch, 18 in all; killed before the end
    assert 3 <= saved["step"] < 18 and not (killed / "model.pt").exists()
    assert cli(*args, "--out", killed, "--resume") == 0
    assert cli(*args, "--out", tmp_path / "whole") == 0
    resumed, whole = load_model(killed / "model.pt").state_dict(), load_model(tmp_path / "whole" / "model.pt").state_dict()
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)
    losses = [[json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
              for out in (killed, tmp_path / "whole")]
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def write_wsol_metadata(cub: Path, split_dir: Path, is_train: str) -> Path:
    """wsolevaluation metadata (image_ids, class_labels, image_sizes, localization) for one CUB split."""
    split_dir.mkdir(parents=True)
    paths = dict(line.split() for line in (cub / "images.txt").read_text().splitlines())
    labels = dict(line.split() for line in (cub / "image_class_labels.txt").read_text().splitlines())
    boxes = {line.split()[0]: line.split()[1:] for line in (cub / "bounding_boxes.txt").read_text().splitlines()}
    files = {"image_ids.txt": [], "class_labels.txt": [], "image_sizes.txt": [], "localization.txt": []}
    for line in (cub / "train_test_split.txt").read_text().splitlines():
        image_id, flag = line.split()
        if flag != is_train:
            continue
        path = paths[image_id]
        x, y, w, h = (int(float(v)) for v in boxes[image_id])
        files["image_ids.txt"].append(path)
        files["class_labels.txt"].append(f"{path},{int(labels[image_id]) - 1}")
        files["image_sizes.txt"].append(f"{path},48,40")
        files["localization.txt"].append(f"{path},{x},{y},{x + w - 1},{y + h - 1}")
    for name, lines in files.items():
        (split_dir / name).write_text("\n".join(lines) + "\n")
    return split_dir


def test_validation_readers_normalise_with_the_backbones_statistics(cub, tmp_path):
    """The validation images of a held-out CUB split and of a wsolevaluation split are normalised
    with the given (mean, std), here not ImageNet's."""
    recipe = get_recipe("tscam", img_size=32, resize_size=40)
    mean, std = (0.5, 0.25, 0.75), (0.25, 0.5, 0.125)
    val_meta = write_wsol_metadata(cub, tmp_path / "metadata" / "CUB" / "val", "0")
    for options in (dict(val_fraction=0.2), dict(val_metadata=val_meta, val_images=cub / "images")):
        ours = build_data(recipe, cub, normalization=(mean, std), **options).validate.dataset[0]["image"]
        imagenet = build_data(recipe, cub, normalization=data_normalization("deit_tiny_patch16_224"),
                              **options).validate.dataset[0]["image"]
        # the same pixels (ToTensor) under both normalisations
        column = lambda values: torch.tensor(values)[:, None, None]  # noqa: E731
        pixels = imagenet * column(IMAGENET_DEFAULT_STD) + column(IMAGENET_DEFAULT_MEAN)
        torch.testing.assert_close(ours, (pixels - column(mean)) / column(std))


def test_wsolevaluation_metadata_for_training_and_a_validation_split(cub, tmp_path):
    train_meta = write_wsol_metadata(cub, tmp_path / "metadata" / "CUB" / "train", "1")
    # a stand-in for CUBV2: a separate validation split (here CUB's test images, only for this test)
    val_meta = write_wsol_metadata(cub, tmp_path / "metadata" / "CUB" / "val", "0")
    recipe = get_recipe("tscam", img_size=32, resize_size=40)
    data = build_data(recipe, cub / "images", normalization=data_normalization("deit_tiny_patch16_224"),
                      train_metadata=train_meta, val_metadata=val_meta)
    assert len(data.train) == 18 and data.num_classes == 3 and data.select_metric == "MaxBoxAccV2"
    assert detect_defaults(cub / "images", train_metadata=train_meta) == "cub"
    assert cli("--recipe", "tscam", "--data", cub / "images", "--train-metadata", train_meta, "--val-metadata",
               val_meta, "--out", tmp_path / "out", "--epochs", 1, *TINY_ARGS) == 0
    entry = json.loads((tmp_path / "out" / "log.jsonl").read_text())
    assert {"top1", "MaxBoxAcc", "MaxBoxAccV2"} <= set(entry["val"])
    assert load_file(tmp_path / "out" / "best.pt")["selection"]["metric"] == "MaxBoxAccV2"
