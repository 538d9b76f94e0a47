"""The generated WSOL benchmark: deterministic, tight annotations, readable by the existing readers."""
import colorsys
import json

import numpy as np
import pytest
import torch

from tscam_explain.cli import main
from tscam_explain.synth import CLASS_NAMES, SYNTH_MARKER, generate, write_dataset
from tscam_explain.train.data import detect_defaults
from tscam_explain.wsol import CUBDataset, WSOLEvalDataset


def test_a_sample_is_a_function_of_seed_index_and_size():
    first, again = generate(3, 17, 64), generate(3, 17, 64)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert np.array_equal(first.boxes, again.boxes) and first.label == again.label
    assert not np.array_equal(first.image, generate(3, 18, 64).image)
    assert not np.array_equal(first.image, generate(4, 17, 64).image)
    for size in (32, 57, 160):
        sample = generate(0, 1, size)
        assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (size, size) and sample.mask.dtype == bool


@pytest.mark.parametrize("size", [48, 96])
def test_boxes_and_masks_are_tight(size):
    for index in range(60):
        sample = generate(11, index, size)
        assert 0 <= sample.label < len(CLASS_NAMES)
        assert 1 <= len(sample.boxes) <= 2
        covered = np.zeros_like(sample.mask)
        for x0, y0, x1, y1 in sample.boxes:
            assert 0 <= x0 <= x1 < size and 0 <= y0 <= y1 < size
            inside = sample.mask[y0:y1 + 1, x0:x1 + 1]
            # every edge of the box touches the object: no slack
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1 + 1, x0:x1 + 1] = True
        assert not (sample.mask & ~covered).any(), "a mask pixel lies outside every box"
        if len(sample.boxes) == 2:  # two creatures never share a box
            (a0, b0, a1, b1), (c0, d0, c1, d1) = sample.boxes
            assert a1 < c0 or c1 < a0 or b1 < d0 or d1 < b0
        # the head (discriminative part) is a small part of the object
        assert sample.head_mask.any() and not (sample.head_mask & ~sample.mask).any()
        assert sample.head_mask.sum() < 0.4 * sample.mask.sum()


def test_classes_are_balanced_and_decided_by_the_head_colour():
    labels = [generate(5, index, 48).label for index in range(600)]
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert counts.min() > 60  # 100 expected per class
    hues = {}
    for index in range(120):
        sample = generate(5, index, 96)
        head = sample.image[sample.head_mask].astype(np.float64)
        red, green, blue = np.median(head, axis=0) / 255
        hue = colorsys.rgb_to_hsv(red, green, blue)[0] * 360
        hues.setdefault(sample.label, []).append(hue)
    for label, values in hues.items():
        centre = 60 * label
        distance = [min(abs(h - centre), 360 - abs(h - centre)) for h in values]
        assert np.median(distance) < 12, (CLASS_NAMES[label], np.median(distance))


def test_bad_arguments_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="size must be an integer >= 32"):
        generate(0, 0, 16)
    with pytest.raises(ValueError, match="seed must be"):
        generate(-1, 0)
    with pytest.raises(ValueError, match="images must be"):
        write_dataset(tmp_path / "x", 0, 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        write_dataset(tmp_path / "file", 2, 0)


def test_written_folders_read_back_through_the_readers(tmp_path):
    out = write_dataset(tmp_path / "set", 12, seed=9, size=64, split="test")
    samples = [generate(9, index, 64) for index in range(12)]
    settings = json.loads((out / SYNTH_MARKER).read_text())
    assert (settings["seed"], settings["images"], settings["size"], settings["split"]) == (9, 12, 64, "test")
    # wsolevaluation metadata: one box per creature, exactly (the maxboxacc transform is the identity at 64 px)
    boxes = WSOLEvalDataset(out / "metadata" / "test", out / "images", protocol="maxboxacc", input_size=64)
    masks = WSOLEvalDataset(out / "metadata_masks" / "test", out / "images", out / "masks", protocol="maxboxacc",
                            input_size=64)
    cub = CUBDataset(out, split="test", protocol="maxboxacc", input_size=64)
    assert len(boxes) == len(masks) == len(cub) == 12 and cub.num_classes == len(CLASS_NAMES)
    for index, sample in enumerate(samples):
        item, mask_item, cub_item = boxes[index], masks[index], cub[index]
        assert item["label"] == mask_item["label"] == cub_item["label"] == sample.label
        assert item["boxes"].tolist() == sample.boxes.tolist()
        assert torch.equal(mask_item["mask"], torch.from_numpy(sample.mask))
        assert not mask_item["ignore"].any()
        # CUB holds one box per image: the tight box of every creature of the class together
        union = [sample.boxes[:, 0].min(), sample.boxes[:, 1].min(), sample.boxes[:, 2].max(), sample.boxes[:, 3].max()]
        assert cub_item["boxes"].tolist() == [union]
        image = (item["image"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
                 + torch.tensor([0.485, 0.456, 0.406])[:, None, None])
        assert np.abs(image.permute(1, 2, 0).numpy() * 255 - sample.image).max() < 1.0


def test_train_split_and_defaults(tmp_path):
    out = write_dataset(tmp_path / "train", 6, seed=1, size=48, split="train")
    assert len(CUBDataset(out, split="train", input_size=48)) == 6
    with pytest.raises(ValueError, match="no image"):
        CUBDataset(out, split="test", input_size=48)
    assert detect_defaults(out) == "synth"


def test_synth_command(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "cli"), "--images", "3", "--seed", "4", "--size", "40",
                 "--no-progress"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "images").rglob("*.png"))) == 3
    assert len(WSOLEvalDataset(tmp_path / "cli" / "metadata" / "test", tmp_path / "cli" / "images",
                               input_size=40)) == 3
