"""Dataset readers on tiny datasets written on the fly in the real formats (a few generated images)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from tscam_explain.wsol import (CUBDataset, DatasetFormatError, ILSVRCListDataset, ILSVRCXMLDataset,
                                WSOLEvalDataset, wsol_collate)


def write_image(path: Path, size: Tuple[int, int], color=(255, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_lines(path: Path, lines: List[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def make_cub(root: Path) -> Path:
    """Three images, ids listed in different orders in the four files (joined by id, not line)."""
    write_image(root / "images/001.Albatross/a.jpg", (40, 30))
    write_image(root / "images/001.Albatross/b.jpg", (40, 30))
    write_image(root / "images/002.Wren/c.jpg", (50, 60), (0, 0, 255))
    write_lines(root / "images.txt", ["1 001.Albatross/a.jpg", "2 001.Albatross/b.jpg", "3 002.Wren/c.jpg"])
    write_lines(root / "image_class_labels.txt", ["3 2", "1 1", "2 1"])
    write_lines(root / "train_test_split.txt", ["2 1", "3 0", "1 0"])
    write_lines(root / "bounding_boxes.txt", ["2 1.0 1.0 5.0 5.0", "1 4.7 3.0 20.0 15.0", "3 0.0 0.0 50.0 60.0"])
    write_lines(root / "classes.txt", ["1 001.Albatross", "2 002.Wren"])
    return root


def test_cub_joins_by_id_and_maps_boxes_per_protocol(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    tscam = CUBDataset(root, "test", "tscam")
    assert [record.image_id for record in tscam.records] == ["1", "3"] and tscam.num_classes == 2
    first, second = tscam[0], tscam[1]
    assert first["label"] == 0 and second["label"] == 1
    # image 1 (40x30): box 4.7 -> 4 (truncated), x + w = 24, y + h = 18; 4 / 40 * 224 = 22.4 ...
    assert first["boxes"].tolist() == [[22, 22, 134, 134]]
    # image 3 covers its whole 50x60 image: right/bottom clipped to 223 by TS-CAM, not by wsolevaluation
    assert second["boxes"].tolist() == [[0, 0, 223, 223]]
    assert CUBDataset(root, "test", "maxboxacc")[1]["boxes"].tolist() == [[0, 0, 224, 224]]
    assert [record.image_id for record in CUBDataset(root, "train").records] == ["2"]
    assert len(CUBDataset(root, "all")) == 3
    image = first["image"]
    assert image.shape == (3, 224, 224)
    # pure red, normalised with the ImageNet mean and std (JPEG leaves a little error)
    assert image[:, 100, 100].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                                                        abs=0.1)


@pytest.mark.parametrize("file_name, line, replacement, message", [
    ("bounding_boxes.txt", 2, "1 4.7 3.0 20.0", r"bounding_boxes.txt:2: expected 5 space-separated fields"),
    ("image_class_labels.txt", 1, "3 7", r"image_class_labels.txt:1: unknown class 7"),
    ("image_class_labels.txt", 2, "1 x", r"image_class_labels.txt:2: class label must be an integer"),
    ("train_test_split.txt", 3, "4 0", r"train_test_split.txt:3: id '4' is not in images.txt"),
    ("images.txt", 2, "1 001.Albatross/b.jpg", r"images.txt:2: id '1' repeated \(first at line 1\)"),
    ("images.txt", 1, "1 001.Albatross/missing.jpg", r"images.txt:1: image file not found: .*missing.jpg"),
    ("train_test_split.txt", 3, "1 2", r"train_test_split.txt:3: is_train must be 0 or 1"),
    ("bounding_boxes.txt", 2, "1 4.0 3.0 -2.0 15.0", r"bounding_boxes.txt:2: box width and height must be >= 0"),
])
def test_cub_errors_name_file_and_line(tmp_path, file_name, line, replacement, message):
    root = make_cub(tmp_path / "CUB")
    path = root / file_name
    lines = path.read_text().splitlines()
    lines[line - 1] = replacement
    write_lines(path, lines)
    with pytest.raises(DatasetFormatError, match=message):
        CUBDataset(root, "all")


def test_cub_missing_entry_names_the_id(tmp_path):
    root = make_cub(tmp_path / "CUB")
    write_lines(root / "bounding_boxes.txt", ["2 1 1 5 5", "1 4 3 20 15"])
    with pytest.raises(DatasetFormatError, match=r"images.txt:3: id '3' has no entry in .*bounding_boxes.txt"):
        CUBDataset(root)


def test_boxes_slightly_outside_are_clipped_and_reported_far_outside_rejected(tmp_path):
    root = make_cub(tmp_path / "CUB")
    # image 1 is 40x30: a box reaching x = 41 (1 px beyond the tolerance of 2 px) is clipped
    write_lines(root / "bounding_boxes.txt", ["2 1 1 5 5", "1 4 3 37 15", "3 0 0 50 60"])
    dataset = CUBDataset(root)
    item = dataset[0]
    assert item["boxes"].tolist() == [[22, 22, 223, 134]]
    assert len(item["fixes"]) == 1 and "bounding_boxes.txt:2" in item["fixes"][0] and "clipped" in item["fixes"][0]
    assert dataset.fixes == item["fixes"]
    write_lines(root / "bounding_boxes.txt", ["2 1 1 5 5", "1 4 3 60 15", "3 0 0 50 60"])
    with pytest.raises(DatasetFormatError, match=r"bounding_boxes.txt:2: box .* lies outside the 40x30 image"):
        CUBDataset(root)[0]


SYNSETS = ["n01440764", "n01443537", "n01484850"]


def write_xml(path: Path, filename: str, size: Tuple[int, int], objects: List[Tuple[str, Tuple[int, ...]]]) -> None:
    parts = [f"<annotation>\n<filename>{filename}</filename>\n<size><width>{size[0]}</width>"
             f"<height>{size[1]}</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"<object>\n<name>{name}</name>\n<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n</object>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n</annotation>\n")


def make_ilsvrc_xml(root: Path) -> Tuple[Path, Path, Path]:
    annotations, images = root / "Annotations/CLS-LOC/val", root / "Data/CLS-LOC/val"
    write_image(images / "ILSVRC2012_val_00000001.JPEG", (64, 32))
    write_image(images / "ILSVRC2012_val_00000002.JPEG", (32, 32))
    write_xml(annotations / "ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001", (64, 32),
              [("n01484850", (8, 4, 40, 20)), ("n01484850", (44, 0, 63, 31))])
    write_xml(annotations / "ILSVRC2012_val_00000002.xml", "ILSVRC2012_val_00000002", (32, 32),
              [("n01440764", (0, 0, 16, 16))])
    synsets = root / "LOC_synset_mapping.txt"
    write_lines(synsets, [f"{name} some class, description" for name in SYNSETS])
    return annotations, images, synsets


def test_ilsvrc_xml_reads_several_objects_and_maps_synsets(tmp_path):
    annotations, images, synsets = make_ilsvrc_xml(tmp_path)
    dataset = ILSVRCXMLDataset(annotations, images, synsets, "tscam")
    assert len(dataset) == 2 and dataset.num_classes == 3 and dataset.benchmark == "ILSVRC"
    item = dataset[0]
    assert item["label"] == 2 and item["image_id"] == "ILSVRC2012_val_00000001"
    # 8 / 64 * 224 = 28, 4 / 32 * 224 = 28, 40 / 64 * 224 = 140, 20 / 32 * 224 = 140; x1 = 63 -> 220.5 -> 220
    assert item["boxes"].tolist() == [[28, 28, 140, 140], [154, 0, 220, 217]]
    assert ILSVRCXMLDataset(annotations, images, SYNSETS)[1]["label"] == 0


def test_ilsvrc_xml_errors(tmp_path):
    annotations, images, synsets = make_ilsvrc_xml(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"00000002.xml:5: unknown synset 'n01440764'"):
        ILSVRCXMLDataset(annotations, images, SYNSETS[1:])
    write_xml(annotations / "ILSVRC2012_val_00000002.xml", "ILSVRC2012_val_00000002", (32, 32),
              [("n01440764", (0, 0, 16, 16)), ("n01443537", (0, 0, 8, 8))])
    with pytest.raises(DatasetFormatError, match="objects of several classes"):
        ILSVRCXMLDataset(annotations, images, synsets)
    (annotations / "ILSVRC2012_val_00000002.xml").write_text("<annotation>\n<filename>x</filename>\n<size>\n")
    with pytest.raises(DatasetFormatError, match=r"00000002.xml:4: malformed XML"):
        ILSVRCXMLDataset(annotations, images, synsets)
    write_xml(annotations / "ILSVRC2012_val_00000002.xml", "ILSVRC2012_val_00000002", (33, 32),
              [("n01440764", (0, 0, 16, 16))])
    dataset = ILSVRCXMLDataset(annotations, images, synsets)
    with pytest.raises(DatasetFormatError, match=r"00000002.xml:3: image .* is 32x32, the annotations say 33x32"):
        dataset[1]


def test_ilsvrc_list_format_with_several_boxes(tmp_path):
    write_image(tmp_path / "val/a.JPEG", (100, 50))
    write_image(tmp_path / "val/b.JPEG", (20, 20))
    write_lines(tmp_path / "val.txt", ["val/a.JPEG 3 10 5 60.5 25 70 0 99 49", "val/b.JPEG 0 0 0 19 19"])
    dataset = ILSVRCListDataset(tmp_path / "val.txt", tmp_path, num_classes=5, protocol="tscam")
    item = dataset[0]
    assert item["label"] == 3
    # 10 / 100 * 224 = 22.4, 5 / 50 * 224 = 22.4, 60.5 / 100 * 224 = 135.52, 25 / 50 * 224 = 112
    assert item["boxes"].tolist() == [[22, 22, 135, 112], [156, 0, 221, 219]]
    batch = wsol_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 224, 224) and batch["label"].tolist() == [3, 0]
    assert [boxes.shape[0] for boxes in batch["boxes"]] == [2, 1] and batch["image_id"] == ["val/a.JPEG", "val/b.JPEG"]
    write_lines(tmp_path / "bad.txt", ["val/a.JPEG 3 10 5 60"])
    with pytest.raises(DatasetFormatError, match=r"bad.txt:1: expected 'path label x1 y1 x2 y2"):
        ILSVRCListDataset(tmp_path / "bad.txt", tmp_path)
    write_lines(tmp_path / "bad.txt", ["val/a.JPEG 5 10 5 60 25"])
    with pytest.raises(DatasetFormatError, match=r"bad.txt:1: unknown class 5; expected 0 … 4"):
        ILSVRCListDataset(tmp_path / "bad.txt", tmp_path, num_classes=5)
    write_lines(tmp_path / "bad.txt", ["val/a.JPEG 1 60 5 10 25"])
    with pytest.raises(DatasetFormatError, match=r"bad.txt:1: box .* has x1 < x0"):
        ILSVRCListDataset(tmp_path / "bad.txt", tmp_path)


def make_wsolevaluation_boxes(root: Path) -> Tuple[Path, Path]:
    metadata, images = root / "metadata/CUB/test", root / "images"
    metadata.mkdir(parents=True)
    write_image(images / "001.A/a.jpg", (112, 56))
    write_image(images / "002.B/b.jpg", (56, 56))
    write_lines(metadata / "image_ids.txt", ["001.A/a.jpg", "002.B/b.jpg"])
    write_lines(metadata / "class_labels.txt", ["001.A/a.jpg,0", "002.B/b.jpg,1"])
    write_lines(metadata / "image_sizes.txt", ["001.A/a.jpg,112,56", "002.B/b.jpg,56,56"])
    write_lines(metadata / "localization.txt", ["001.A/a.jpg,61,0,112,56", "002.B/b.jpg,1,2,3,4",
                                                "001.A/a.jpg,0,0,10,10"])
    return metadata, images


def test_wsolevaluation_boxes_use_its_rescaling(tmp_path):
    metadata, images = make_wsolevaluation_boxes(tmp_path)
    dataset = WSOLEvalDataset(metadata, images)
    assert dataset.protocol == "maxboxacc" and dataset.benchmark == "CUB" and dataset.num_classes == 2
    # int(x * 224 / W): 61 * 224 / 112 = 122 (TS-CAM's order would give 121), 112 -> 224 (no clipping)
    assert dataset[0]["boxes"].tolist() == [[122, 0, 224, 224], [0, 0, 20, 40]]
    assert WSOLEvalDataset(metadata, images, protocol="tscam")[0]["boxes"].tolist() == \
        [[121, 0, 223, 223], [0, 0, 20, 40]]
    write_lines(metadata / "class_labels.txt", ["001.A/a.jpg,0"])
    with pytest.raises(DatasetFormatError, match=r"image_ids.txt:2: id '002.B/b.jpg' has no entry in .*class_labels"):
        WSOLEvalDataset(metadata, images)
    write_lines(metadata / "class_labels.txt", ["001.A/a.jpg,0", "002.B/b.jpg,1"])
    write_lines(metadata / "localization.txt", ["001.A/a.jpg,61,0,112,56", "002.B/b.jpg,1,2,3"])
    with pytest.raises(DatasetFormatError, match=r"localization.txt:2: expected 'id,x0,y0,x1,y1' \(boxes\)"):
        WSOLEvalDataset(metadata, images)
    write_lines(metadata / "localization.txt", ["001.A/a.jpg,61,0,112,56"])
    with pytest.raises(DatasetFormatError, match=r"image_ids.txt:2: id '002.B/b.jpg' has no line in"):
        WSOLEvalDataset(metadata, images)


def make_openimages(root: Path) -> Tuple[Path, Path, Path]:
    metadata, images, masks = root / "metadata/OpenImages/test", root / "images", root / "masks"
    metadata.mkdir(parents=True)
    write_image(images / "c1/x.jpg", (30, 20))
    first, second, ignore = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
    first[:10, :10] = 255
    second[10:, 20:] = 255
    ignore[:, :15] = 255  # overlaps the first instance: the foreground wins
    masks.mkdir()
    for name, array in (("x_m1.png", first), ("x_m2.png", second), ("x_ignore.png", ignore)):
        Image.fromarray(array).save(masks / name)
    write_lines(metadata / "image_ids.txt", ["c1/x.jpg"])
    write_lines(metadata / "class_labels.txt", ["c1/x.jpg,4"])
    write_lines(metadata / "localization.txt", ["c1/x.jpg,x_m1.png,x_ignore.png", "c1/x.jpg,x_m2.png,"])
    return metadata, images, masks


def test_openimages_masks_union_and_ignore_minus_foreground(tmp_path):
    metadata, images, masks = make_openimages(tmp_path)
    dataset = WSOLEvalDataset(metadata, images, masks)
    assert dataset.has_masks and not dataset.has_boxes and dataset.benchmark == "OpenImages"
    item = dataset[0]
    mask, ignore = item["mask"].numpy(), item["ignore"].numpy()
    assert mask.shape == (224, 224) and item["boxes"].shape == (0, 4)
    # nearest resize: the first instance covers the top-left 10/30 x 10/20 of the image
    assert mask[0, 0] and mask[223, 223] and not mask[0, 223]
    assert not ignore[0, 0] and ignore[150, 10] and not ignore[150, 200]
    assert not (mask & ignore).any()
    batch = wsol_collate([item, item])
    assert batch["mask"].shape == (2, 224, 224) and batch["mask"].dtype == torch.bool
    write_lines(metadata / "localization.txt", ["c1/x.jpg,x_m1.png,", "c1/x.jpg,x_m2.png,"])
    with pytest.raises(DatasetFormatError, match=r"localization.txt:1: the first line of an image must name"):
        WSOLEvalDataset(metadata, images, masks)
    write_lines(metadata / "localization.txt", ["c1/x.jpg,x_m1.png,x_ignore.png", "c1/x.jpg,missing.png,"])
    with pytest.raises(DatasetFormatError, match=r"localization.txt:2: mask file not found"):
        WSOLEvalDataset(metadata, images, masks)


# not ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): a reader that ignored them would show
MEAN, STD = (0.25, 0.5, 0.75), (0.5, 0.25, 0.2)


def _list_reader(root: Path, **normalization) -> ILSVRCListDataset:
    write_image(root / "val/a.JPEG", (100, 50))
    write_lines(root / "val.txt", ["val/a.JPEG 0 10 5 60 25"])
    return ILSVRCListDataset(root / "val.txt", root, **normalization)


@pytest.mark.parametrize("make_reader", [
    lambda root, **kw: CUBDataset(make_cub(root / "CUB_200_2011"), "test", **kw),
    lambda root, **kw: ILSVRCXMLDataset(*make_ilsvrc_xml(root), **kw),
    _list_reader,
    lambda root, **kw: WSOLEvalDataset(*make_wsolevaluation_boxes(root), **kw),
], ids=["cub", "ilsvrc-xml", "ilsvrc-list", "wsolevaluation"])
def test_every_reader_normalises_with_the_given_mean_and_std(tmp_path, make_reader):
    image = make_reader(tmp_path, mean=MEAN, std=STD)[0]["image"]
    # the first image of each is pure red: ToTensor gives (1, 0, 0) (JPEG leaves a little error)
    expected = [(value - mean) / std for value, mean, std in zip((1, 0, 0), MEAN, STD)]
    assert image[:, 100, 100].tolist() == pytest.approx(expected, abs=0.1)
