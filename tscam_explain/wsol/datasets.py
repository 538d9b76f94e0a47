"""Dataset readers for WSOL evaluation: CUB-200-2011, ILSVRC validation, wsolevaluation metadata.

Every reader is a ``torch.utils.data.Dataset`` whose items are dicts::

    {"image": float (3, S, S), "label": int, "boxes": int64 (k, 4), "image_id": str,
     "fixes": [str, …],  # + "mask", "ignore": bool (S, S) for mask annotations}

The image is resized straight to ``S × S`` (``S = input_size``, default 224; both official codes'
test transform, :func:`eval_transform`) and normalised with the given ``mean`` and ``std`` (default
ImageNet's; pass the model's own, e.g. timm's ``resolve_data_config({}, model=vit)``). ``boxes`` are inclusive
``x0, y0, x1, y1`` in that resized image, transformed as the chosen protocol does it:

* ``"tscam"``: ``int(max(x0 / W * S, 0))``, ``int(min(x1 / W * S, S - 1))`` (TS-CAM's loaders);
* ``"trt"``: the same (TRT's loaders, ``lib/datasets/cub.py`` and ``imagenet.py``, are TS-CAM's);
* ``"maxboxacc"``: ``int(x * S / W)`` for every coordinate, no clipping (wsolevaluation's ``resize_bbox``).

Batch them with :func:`wsol_collate` (box counts differ between images).

Error policy: bad data is never skipped silently.

* A malformed line, an unknown class, an id missing from (or repeated in) one of the files, a
  missing image or mask file, or a box with ``x1 < x0`` raise :class:`DatasetFormatError` naming the
  file and its 1-based line, when the dataset is built.
* Boxes are checked against the image size when the image is read: a box reaching past the image by
  at most ``max(2 px, 2 %)`` of its side is clipped to the image and the fix is reported (item's
  ``fixes`` list, and ``dataset.fixes`` in the process that read it); farther out raises
  :class:`DatasetFormatError`. An ``x1 == W`` (CUB's ``x + w`` convention) is inside the image.
* An image whose size differs from the size written in the annotations raises
  :class:`DatasetFormatError`.
"""
from __future__ import annotations

import os
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import transforms

from .boxes import resize_boxes_maxboxacc, resize_boxes_tscam

PathLike = Union[str, os.PathLike]
Protocol = Literal["tscam", "maxboxacc", "trt"]
PROTOCOLS = ("tscam", "maxboxacc", "trt")


class DatasetFormatError(ValueError):
    """A problem in a dataset file: ``path:line: message`` (line 1-based, omitted when not known)."""

    def __init__(self, path: PathLike, line: Optional[int], message: str) -> None:
        location = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{location}: {message}")
        self.path = Path(path)
        self.line = line


@dataclass
class Source:
    """Where a record was written: a file and a 1-based line."""

    path: Path
    line: Optional[int] = None

    def error(self, message: str) -> DatasetFormatError:
        return DatasetFormatError(self.path, self.line, message)


@dataclass
class Record:
    """One annotated image, in original pixel coordinates."""

    image_id: str
    image_path: Path
    label: int
    boxes: np.ndarray  # float64 (k, 4): x0, y0, x1, y1
    source: Source
    box_sources: List[Source] = field(default_factory=list)
    size: Optional[Tuple[int, int]] = None  # (width, height) written in the annotations
    size_source: Optional[Source] = None
    mask_paths: List[Path] = field(default_factory=list)
    ignore_path: Optional[Path] = None


def _numbered_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """``(line number, stripped text)`` of the non-blank lines of a text file."""
    if not path.is_file():
        raise DatasetFormatError(path, None, "file not found")
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            text = text.strip()
            if text:
                yield number, text


def _parse_number(text: str, source: Source, what: str, kind: type = float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise source.error(f"{what} must be {'an integer' if kind is int else 'a number'}; got {text!r}") from None
    if kind is float and not np.isfinite(value):
        raise source.error(f"{what} must be finite; got {text!r}")
    return value


def _check_box(box: Sequence[float], source: Source) -> None:
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise source.error(f"box {list(box)} has x1 < x0 or y1 < y0; expected x0, y0, x1, y1 with x0 <= x1, y0 <= y1")


def _index_by_id(path: Path, expected_fields: int, separator: Optional[str] = None
                 ) -> Dict[str, Tuple[List[str], Source]]:
    """``{id: (other fields, source)}`` of a file of ``id field…`` lines; duplicates are errors."""
    table: Dict[str, Tuple[List[str], Source]] = {}
    for number, text in _numbered_lines(path):
        source = Source(path, number)
        fields = text.split(separator)
        if len(fields) != expected_fields:
            raise source.error(f"expected {expected_fields} {'comma-separated' if separator else 'space-separated'} "
                               f"fields; got {len(fields)}: {text!r}")
        key = fields[0].strip()
        if key in table:
            raise source.error(f"id {key!r} repeated (first at line {table[key][1].line})")
        table[key] = ([value.strip() for value in fields[1:]], source)
    return table


def _require_same_ids(reference: Dict[str, Any], reference_path: Path, other: Dict[str, Tuple[Any, Source]],
                      other_path: Path) -> None:
    """Both files must list the same ids: name the first id missing on either side, with its line."""
    for key, (_, source) in other.items():
        if key not in reference:
            raise source.error(f"id {key!r} is not in {reference_path.name}")
    for key, value in reference.items():
        if key not in other:
            where = value[1] if isinstance(value, tuple) and isinstance(value[1], Source) else Source(reference_path)
            raise where.error(f"id {key!r} has no entry in {other_path}")


def eval_transform(input_size: int, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                   std: Sequence[float] = IMAGENET_DEFAULT_STD) -> transforms.Compose:
    """Both official codes' test transform: resize straight to ``input_size``², to tensor, normalise.

    Args:
        input_size: side of the square network input.
        mean: per-channel mean the model was trained with.
        std: per-channel standard deviation the model was trained with.
    """
    return transforms.Compose([
        transforms.Resize((input_size, input_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class WSOLDataset(Dataset):
    """Base of the readers: records → resized, normalised images and protocol-transformed boxes.

    Args:
        records: the annotated images.
        protocol: ``"tscam"``, ``"maxboxacc"`` or ``"trt"`` (how boxes are mapped to the input size).
        input_size: side of the square network input.
        benchmark: ``"CUB"``, ``"ILSVRC"`` or ``"OpenImages"`` (sets default CAM thresholds in the harness).
        num_classes: number of classes, when the annotations say it.
        mean: per-channel normalisation mean (default ImageNet's); use the model's own.
        std: per-channel normalisation standard deviation (default ImageNet's); use the model's own.
    """

    def __init__(self, records: List[Record], protocol: Protocol = "tscam", input_size: int = 224,
                 benchmark: Optional[str] = None, num_classes: Optional[int] = None, *,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
        if not records:
            raise ValueError("the dataset has no image (check the split and the annotation files)")
        self.records = records
        self.protocol = protocol
        self.input_size = int(input_size)
        self.benchmark = benchmark
        self.num_classes = num_classes if num_classes is not None else 1 + max(record.label for record in records)
        self.has_masks = any(record.mask_paths for record in records)
        self.has_boxes = all(len(record.boxes) for record in records)
        self.fixes: List[str] = []
        self.transform = eval_transform(self.input_size, mean, std)

    def __len__(self) -> int:
        return len(self.records)

    def _fit_boxes(self, record: Record, width: int, height: int, fixes: List[str]) -> np.ndarray:
        """Clip boxes slightly outside the image (reported), reject boxes far outside."""
        boxes = record.boxes.copy()
        limits = np.array([width, height, width, height], dtype=np.float64)
        tolerance = np.maximum(2.0, 0.02 * limits)
        for index, box in enumerate(boxes):
            source = record.box_sources[index] if index < len(record.box_sources) else record.source
            below, above = -box, box - limits
            if np.any(below > tolerance) or np.any(above > tolerance):
                raise source.error(f"box {box.tolist()} lies outside the {width}x{height} image")
            if np.any(below > 0) or np.any(above > 0):
                clipped = np.clip(box, 0, limits)
                fixes.append(f"{source.path}:{source.line}: box {box.tolist()} clipped to the {width}x{height} "
                             f"image: {clipped.tolist()}")
                boxes[index] = clipped
        return boxes

    def _transform_boxes(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        if len(boxes) == 0:
            return np.zeros((0, 4), dtype=np.int64)
        if self.protocol in ("tscam", "trt"):
            return resize_boxes_tscam(boxes, (width, height), self.input_size)
        # wsolevaluation reads integer boxes
        return resize_boxes_maxboxacc(np.trunc(boxes), (width, height), self.input_size)

    def _load_mask(self, path: Path, source: Source) -> np.ndarray:
        """wsolevaluation's mask reading: grayscale, nearest resize to the input size, > 0.5."""
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise source.error(f"cannot read mask image {path}")
        size = (self.input_size, self.input_size)
        return cv2.resize(np.float32(mask), size, interpolation=cv2.INTER_NEAREST) > 0.5

    def __getitem__(self, index: int) -> Dict[str, Any]:
        record = self.records[index]
        try:
            with Image.open(record.image_path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise record.source.error(f"cannot read image {record.image_path}: {error}") from None
        width, height = image.size
        if record.size is not None and tuple(record.size) != (width, height):
            where = record.size_source or record.source
            raise where.error(f"image {record.image_path} is {width}x{height}, the annotations say "
                              f"{record.size[0]}x{record.size[1]}")
        fixes: List[str] = []
        boxes = self._fit_boxes(record, width, height, fixes)
        self.fixes.extend(fixes)
        item = {
            "image": self.transform(image),
            "label": record.label,
            "boxes": torch.from_numpy(self._transform_boxes(boxes, width, height)),
            "image_id": record.image_id,
            "fixes": fixes,
        }
        if record.mask_paths:
            foreground = np.any([self._load_mask(path, record.source) for path in record.mask_paths], axis=0)
            ignore_region = self._load_mask(record.ignore_path, record.source)
            item["mask"] = torch.from_numpy(foreground)
            item["ignore"] = torch.from_numpy(ignore_region & ~foreground)
        return item


def wsol_collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch dataset items: stacked images (and masks), a label tensor, per-image box tensors."""
    batch = {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "boxes": [item["boxes"] for item in items],
        "image_id": [item["image_id"] for item in items],
        "fixes": [fix for item in items for fix in item["fixes"]],
    }
    if all("mask" in item for item in items):
        batch["mask"] = torch.stack([item["mask"] for item in items])
        batch["ignore"] = torch.stack([item["ignore"] for item in items])
    return batch


def _existing_image(root: Path, relative: str, source: Source) -> Path:
    path = root / relative
    if not path.is_file():
        raise source.error(f"image file not found: {path}")
    return path


class CUBDataset(WSOLDataset):
    """CUB-200-2011 in its official layout, joined by image id (not by line order).

    ``root`` holds ``images.txt`` (``id path``), ``image_class_labels.txt`` (``id label``, 1-based),
    ``train_test_split.txt`` (``id is_train``), ``bounding_boxes.txt`` (``id x y w h``), ``images/``,
    and optionally ``classes.txt`` (``label name``, which then bounds the labels). Labels become
    0-based. A box is ``x, y, x + w, y + h`` after truncating each value to int, as TS-CAM reads it.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``"test"`` (is_train 0), ``"train"`` (is_train 1) or ``"all"``.
        protocol: see :class:`WSOLDataset`.
        input_size: see :class:`WSOLDataset`.
        mean: see :class:`WSOLDataset`.
        std: see :class:`WSOLDataset`.
    """

    def __init__(self, root: PathLike, split: Literal["train", "test", "all"] = "test", protocol: Protocol = "tscam",
                 input_size: int = 224, *,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
        root = Path(root)
        paths = {name: root / f"{name}.txt" for name in
                 ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
        images = _index_by_id(paths["images"], 2)
        labels = _index_by_id(paths["image_class_labels"], 2)
        splits = _index_by_id(paths["train_test_split"], 2)
        boxes = _index_by_id(paths["bounding_boxes"], 5)
        for name, table in (("image_class_labels", labels), ("train_test_split", splits), ("bounding_boxes", boxes)):
            _require_same_ids(images, paths["images"], table, paths[name])
        class_ids = None
        if (root / "classes.txt").is_file():
            class_ids = set()
            for number, text in _numbered_lines(root / "classes.txt"):
                class_ids.add(_parse_number(text.split()[0], Source(root / "classes.txt", number), "class id", int))
        records = []
        for image_id, ([relative], image_source) in images.items():
            (split_text,), split_source = splits[image_id]
            if split_text not in ("0", "1"):
                raise split_source.error(f"is_train must be 0 or 1; got {split_text!r}")
            if split != "all" and (split_text == "1") != (split == "train"):
                continue
            (label_text,), label_source = labels[image_id]
            label = _parse_number(label_text, label_source, "class label", int)
            if label < 1 or (class_ids is not None and label not in class_ids):
                raise label_source.error(f"unknown class {label}; expected "
                                         + (f"one of the ids in classes.txt (1 … {max(class_ids)})"
                                            if class_ids else "a 1-based class id"))
            box_fields, box_source = boxes[image_id]
            x, y, w, h = (int(_parse_number(value, box_source, name)) for value, name in zip(box_fields, "xywh"))
            if w < 0 or h < 0:
                raise box_source.error(f"box width and height must be >= 0; got w={w}, h={h}")
            box = [x, y, x + w, y + h]
            records.append(Record(image_id, _existing_image(root / "images", relative, image_source), label - 1,
                                  np.array([box], dtype=np.float64), image_source, [box_source]))
        num_classes = max(class_ids) if class_ids else None
        super().__init__(records, protocol, input_size, benchmark="CUB", num_classes=num_classes, mean=mean, std=std)


def _read_synsets(synsets: Union[Sequence[str], PathLike]) -> List[str]:
    """A synset list, or a file whose lines start with one (``LOC_synset_mapping.txt`` style)."""
    if isinstance(synsets, (str, os.PathLike)) and Path(synsets).is_file():
        names = [text.split()[0] for _, text in _numbered_lines(Path(synsets))]
    elif isinstance(synsets, (str, os.PathLike)):
        raise DatasetFormatError(synsets, None, "synset list file not found")
    else:
        names = [str(name) for name in synsets]
    if len(set(names)) != len(names):
        raise ValueError("the synset list repeats a synset")
    return names


@dataclass
class _XMLElement:
    name: str
    line: int
    text: str = ""
    children: List["_XMLElement"] = field(default_factory=list)

    def find(self, name: str) -> Optional["_XMLElement"]:
        return next((child for child in self.children if child.name == name), None)


def _parse_xml(path: Path) -> _XMLElement:
    """A small element tree with line numbers (``xml.etree`` keeps none), for precise errors."""
    parser = xml.parsers.expat.ParserCreate()
    root = _XMLElement("", 0)
    stack = [root]

    def start(name: str, _attributes: Dict[str, str]) -> None:
        element = _XMLElement(name, parser.CurrentLineNumber)
        stack[-1].children.append(element)
        stack.append(element)

    def end(_name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        with open(path, "rb") as handle:
            parser.ParseFile(handle)
    except xml.parsers.expat.ExpatError as error:
        raise DatasetFormatError(path, error.lineno, f"malformed XML: {xml.parsers.expat.ErrorString(error.code)}")
    if not root.children:
        raise DatasetFormatError(path, None, "empty XML file")
    return root.children[0]


def _xml_value(parent: _XMLElement, name: str, path: Path, kind: type = float) -> Any:
    element = parent.find(name)
    if element is None:
        raise DatasetFormatError(path, parent.line, f"<{parent.name}> has no <{name}>")
    return _parse_number(element.text.strip(), Source(path, element.line), f"<{name}>", kind)


class ILSVRCXMLDataset(WSOLDataset):
    """ILSVRC validation images with their per-image XML boxes (``Annotations/CLS-LOC/val/*.xml``).

    Each XML gives ``<filename>``, ``<size>`` and one or more ``<object>`` with a synset ``<name>``
    and a ``<bndbox>``; all objects of an image must share its class. Images are
    ``image_dir / (filename + extension)``.

    Args:
        annotation_dir: folder of the XML files.
        image_dir: folder of the images.
        synsets: the class order: a list of synset ids, or a file whose lines start with one
            (e.g. ``LOC_synset_mapping.txt``; the sorted training folder names give the usual order).
        protocol: see :class:`WSOLDataset`.
        input_size: see :class:`WSOLDataset`.
        extension: image file extension.
        mean: see :class:`WSOLDataset`.
        std: see :class:`WSOLDataset`.
    """

    def __init__(self, annotation_dir: PathLike, image_dir: PathLike, synsets: Union[Sequence[str], PathLike],
                 protocol: Protocol = "tscam", input_size: int = 224, extension: str = ".JPEG", *,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        annotation_dir, image_dir = Path(annotation_dir), Path(image_dir)
        names = _read_synsets(synsets)
        index = {name: position for position, name in enumerate(names)}
        xml_files = sorted(annotation_dir.glob("*.xml"))
        if not xml_files:
            raise DatasetFormatError(annotation_dir, None, "no .xml annotation file in this folder")
        records = []
        for path in xml_files:
            root = _parse_xml(path)
            filename = root.find("filename")
            if filename is None or not filename.text.strip():
                raise DatasetFormatError(path, root.line, "<annotation> has no <filename>")
            size = root.find("size")
            if size is None:
                raise DatasetFormatError(path, root.line, "<annotation> has no <size>")
            image_size = (_xml_value(size, "width", path, int), _xml_value(size, "height", path, int))
            objects = [child for child in root.children if child.name == "object"]
            if not objects:
                raise DatasetFormatError(path, root.line, "no <object> in the annotation")
            boxes, box_sources, labels = [], [], set()
            for obj in objects:
                name_element = obj.find("name")
                synset = name_element.text.strip() if name_element is not None else ""
                if synset not in index:
                    raise DatasetFormatError(path, obj.line if name_element is None else name_element.line,
                                             f"unknown synset {synset!r}; expected one of the {len(names)} "
                                             "synsets of the given list")
                labels.add(index[synset])
                bndbox = obj.find("bndbox")
                if bndbox is None:
                    raise DatasetFormatError(path, obj.line, "<object> has no <bndbox>")
                box = [_xml_value(bndbox, name, path) for name in ("xmin", "ymin", "xmax", "ymax")]
                box_source = Source(path, bndbox.line)
                _check_box(box, box_source)
                boxes.append(box)
                box_sources.append(box_source)
            if len(labels) > 1:
                raise DatasetFormatError(path, root.line, f"objects of several classes {sorted(labels)} in one image; "
                                                          "expected one class per validation image")
            source = Source(path, filename.line)
            image_path = _existing_image(image_dir, filename.text.strip() + extension, source)
            records.append(Record(path.stem, image_path, labels.pop(), np.array(boxes, dtype=np.float64), source,
                                  box_sources, size=image_size, size_source=Source(path, size.line)))
        super().__init__(records, protocol, input_size, benchmark="ILSVRC", num_classes=len(names), mean=mean, std=std)


class ILSVRCListDataset(WSOLDataset):
    """A list file of ``path label x1 y1 x2 y2 [x1 y1 x2 y2 …]`` lines (TS-CAM's ``val_folder_new.txt``).

    Args:
        list_file: the list.
        image_dir: root the image paths are relative to.
        num_classes: if given, labels must lie in ``0 … num_classes - 1``.
        protocol: see :class:`WSOLDataset`.
        input_size: see :class:`WSOLDataset`.
        mean: see :class:`WSOLDataset`.
        std: see :class:`WSOLDataset`.
    """

    def __init__(self, list_file: PathLike, image_dir: PathLike, num_classes: Optional[int] = None,
                 protocol: Protocol = "tscam", input_size: int = 224, *,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        list_file, image_dir = Path(list_file), Path(image_dir)
        records, seen = [], {}
        for number, text in _numbered_lines(list_file):
            source = Source(list_file, number)
            fields = text.split()
            if len(fields) < 6 or (len(fields) - 2) % 4:
                raise source.error(f"expected 'path label x1 y1 x2 y2 [x1 y1 x2 y2 ...]'; got {len(fields)} fields")
            relative = fields[0]
            if relative in seen:
                raise source.error(f"image {relative!r} repeated (first at line {seen[relative]})")
            seen[relative] = number
            label = _parse_number(fields[1], source, "label", int)
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise source.error(f"unknown class {label}; expected 0 … "
                                   f"{num_classes - 1 if num_classes is not None else 'num_classes - 1'}")
            values = [_parse_number(value, source, "box coordinate") for value in fields[2:]]
            boxes = np.array(values, dtype=np.float64).reshape(-1, 4)
            for box in boxes:
                _check_box(box.tolist(), source)
            records.append(Record(relative, _existing_image(image_dir, relative, source), label, boxes, source,
                                  [source] * len(boxes)))
        super().__init__(records, protocol, input_size, benchmark="ILSVRC", num_classes=num_classes, mean=mean,
                         std=std)


class WSOLEvalDataset(WSOLDataset):
    """wsolevaluation metadata: one split folder with ``image_ids.txt``, ``class_labels.txt``,
    ``image_sizes.txt`` and ``localization.txt`` (boxes ``id,x0,y0,x1,y1`` or masks ``id,mask,ignore``).

    Boxes (CUB, ILSVRC): several lines per image for several boxes; the sizes of ``image_sizes.txt``
    scale them, as in wsolevaluation, and must match the image files. Masks (OpenImages): the first
    line of an image names its ignore mask, later lines leave it empty; ``image_sizes.txt`` may be
    absent.

    Args:
        metadata_dir: the split folder (e.g. ``metadata/CUB/test``).
        image_dir: root the image ids are relative to.
        mask_dir: root of the mask paths (mask annotations only).
        protocol: see :class:`WSOLDataset` (wsolevaluation's own is ``"maxboxacc"``).
        input_size: see :class:`WSOLDataset`.
        benchmark: ``"CUB"``, ``"ILSVRC"`` or ``"OpenImages"``; default: guessed from the folder names.
        mean: see :class:`WSOLDataset`.
        std: see :class:`WSOLDataset`.
    """

    def __init__(self, metadata_dir: PathLike, image_dir: PathLike, mask_dir: Optional[PathLike] = None,
                 protocol: Protocol = "maxboxacc", input_size: int = 224, benchmark: Optional[str] = None, *,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        metadata_dir, image_dir = Path(metadata_dir), Path(image_dir)
        ids_path = metadata_dir / "image_ids.txt"
        labels_path = metadata_dir / "class_labels.txt"
        sizes_path = metadata_dir / "image_sizes.txt"
        localization_path = metadata_dir / "localization.txt"
        ids: Dict[str, Source] = {}
        for number, text in _numbered_lines(ids_path):
            if text in ids:
                raise DatasetFormatError(ids_path, number, f"id {text!r} repeated (first at line {ids[text].line})")
            ids[text] = Source(ids_path, number)
        id_table = {key: ([], source) for key, source in ids.items()}
        labels = _index_by_id(labels_path, 2, ",")
        _require_same_ids(id_table, ids_path, labels, labels_path)
        sizes = None
        if sizes_path.is_file():
            sizes = _index_by_id(sizes_path, 3, ",")
            _require_same_ids(id_table, ids_path, sizes, sizes_path)
        localization = self._read_localization(localization_path, ids, ids_path, mask_dir)
        if sizes is None and any(entry["boxes"] for entry in localization.values()):
            raise DatasetFormatError(sizes_path, None, "file not found; box annotations need the image sizes")
        records = []
        for image_id, source in ids.items():
            (label_text,), label_source = labels[image_id]
            label = _parse_number(label_text, label_source, "class label", int)
            if label < 0:
                raise label_source.error(f"unknown class {label}; expected a 0-based class id")
            size = size_source = None
            if sizes is not None:
                size_fields, size_source = sizes[image_id]
                size = tuple(_parse_number(value, size_source, name, int) for value, name in zip(size_fields, "wh"))
                if min(size) <= 0:
                    raise size_source.error(f"image size must be positive; got {size}")
            entry = localization[image_id]
            records.append(Record(image_id, _existing_image(image_dir, image_id, source), label,
                                  np.array(entry["boxes"], dtype=np.float64).reshape(-1, 4), source,
                                  entry["box_sources"], size, size_source, entry["masks"], entry["ignore"]))
        if benchmark is None:
            parts = {part.lower() for part in metadata_dir.resolve().parts}
            benchmark = next((name for name in ("CUB", "ILSVRC", "OpenImages") if name.lower() in parts), None)
        super().__init__(records, protocol, input_size, benchmark=benchmark, mean=mean, std=std)

    @staticmethod
    def _read_localization(path: Path, ids: Dict[str, Source], ids_path: Path,
                           mask_dir: Optional[PathLike]) -> Dict[str, Dict[str, Any]]:
        entries = {key: {"boxes": [], "box_sources": [], "masks": [], "ignore": None} for key in ids}
        kind = None
        for number, text in _numbered_lines(path):
            source = Source(path, number)
            fields = [value.strip() for value in text.split(",")]
            line_kind = {5: "boxes", 3: "masks"}.get(len(fields))
            if line_kind is None or (kind is not None and line_kind != kind):
                raise source.error(f"expected 'id,x0,y0,x1,y1' (boxes) or 'id,mask,ignore' (masks)"
                                   f"{' like the lines above' if kind else ''}; got {len(fields)} fields")
            kind = line_kind
            if fields[0] not in entries:
                raise source.error(f"id {fields[0]!r} is not in {ids_path.name}")
            entry = entries[fields[0]]
            if kind == "boxes":
                box = [_parse_number(value, source, "box coordinate", int) for value in fields[1:]]
                _check_box(box, source)
                if min(box) < 0:
                    raise source.error(f"box coordinates must be >= 0; got {box}")
                entry["boxes"].append(box)
                entry["box_sources"].append(source)
                continue
            if mask_dir is None:
                raise source.error("mask annotations need mask_dir (the folder the mask paths are relative to)")
            first = not entry["masks"]
            if first and not fields[2]:
                raise source.error("the first line of an image must name its ignore mask")
            if not first and fields[2]:
                raise source.error("only the first line of an image names the ignore mask; leave it empty here")
            for relative in fields[1:] if first else fields[1:2]:
                mask_path = Path(mask_dir) / relative
                if not mask_path.is_file():
                    raise source.error(f"mask file not found: {mask_path}")
            entry["masks"].append(Path(mask_dir) / fields[1])
            if first:
                entry["ignore"] = Path(mask_dir) / fields[2]
        for key, entry in entries.items():
            if not entry["boxes"] and not entry["masks"]:
                raise ids[key].error(f"id {key!r} has no line in {path}")
        return entries


#: the on-disk formats :func:`open_dataset` reads
DATASET_FORMATS = ("cub", "ilsvrc-xml", "ilsvrc-list", "wsolevaluation")
#: the options each format needs besides its path
FORMAT_OPTIONS = {"ilsvrc-xml": ("image_dir", "synsets"), "ilsvrc-list": ("image_dir",), "wsolevaluation": ("image_dir",)}


def open_dataset(dataset_format: str, data: PathLike, protocol: Protocol = "tscam", *,
                 image_dir: Optional[PathLike] = None, mask_dir: Optional[PathLike] = None,
                 synsets: Optional[PathLike] = None, split: Literal["train", "test", "all"] = "test",
                 input_size: int = 224, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> WSOLDataset:
    """The reader of one of :data:`DATASET_FORMATS`, by name (what ``evaluate`` and ``bench`` open).

    Args:
        dataset_format: ``cub``, ``ilsvrc-xml``, ``ilsvrc-list`` or ``wsolevaluation``.
        data: the CUB folder, the XML folder, the list file or the metadata split folder.
        protocol: see :class:`WSOLDataset`.
        image_dir: image root (every format but ``cub``).
        mask_dir: mask root (wsolevaluation masks: OpenImages).
        synsets: class order (``ilsvrc-xml``).
        split: CUB split.
        input_size: see :class:`WSOLDataset`.
        mean: see :class:`WSOLDataset`.
        std: see :class:`WSOLDataset`.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {dataset_format!r}; expected one of {DATASET_FORMATS}")
    given = {"image_dir": image_dir, "synsets": synsets}
    missing = [name for name in FORMAT_OPTIONS.get(dataset_format, ()) if given[name] is None]
    if missing:
        raise ValueError(f"dataset format {dataset_format} needs {' and '.join(missing)}")
    common = dict(input_size=input_size, mean=mean, std=std)
    if dataset_format == "cub":
        return CUBDataset(data, split, protocol, **common)
    if dataset_format == "ilsvrc-xml":
        return ILSVRCXMLDataset(data, image_dir, synsets, protocol, **common)
    if dataset_format == "ilsvrc-list":
        return ILSVRCListDataset(data, image_dir, protocol=protocol, **common)
    return WSOLEvalDataset(data, image_dir, mask_dir, protocol, **common)
