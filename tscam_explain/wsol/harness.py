"""The evaluation harness: run any explainer over a WSOL dataset and report the protocol's metrics.

``evaluate(explainer, dataset, protocol)`` works with tscam-explain's explainers and with
pytorch-grad-cam's (``GradCAM(model=…, target_layers=…, reshape_transform=…)``): both are called as
``explainer(input_tensor, targets)`` with one ``ClassifierOutputTarget`` per image (the ground-truth
class) and leave the logits in ``explainer.outputs``. When the explainer has the tensor path
``attribute(…, upsample=False)`` (ours), the raw patch-grid maps are taken instead, so that the
protocol resizes and normalises them exactly as the official code does; pytorch-grad-cam's maps come
at input size already (the protocol's resize to the same size leaves them unchanged).

Under ``torch.distributed``, ``evaluate(…, sync=True)`` on each process's shard of the images sums the
metric counts over the processes, so every process gets the metrics of the whole dataset.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Literal, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import timm
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..explainers.base import cast_input
from .boxes import maxboxacc_scoremaps, tscam_box, tscam_scoremap
from .datasets import PROTOCOLS, wsol_collate
from .metrics import (DEFAULT_IOU_THRESHOLDS, GT_KNOWN_CURVE_IOUS, BoxAccuracy, ClassificationAccuracy,
                      FixedThresholdBoxAccuracy, LocalizationAccuracy, MetricAccumulator, PixelAveragePrecision)

#: TS-CAM's fixed CAM thresholds per benchmark (its configs).
TSCAM_CAM_THRESHOLDS = {"CUB": 0.1, "ILSVRC": 0.12}
#: TRT's, as its published evaluation commands set ``MODEL.CAM_THR`` (its ILSVRC config file says 0.1,
#: the README's ILSVRC command overrides it with 0.12).
TRT_CAM_THRESHOLDS = {"CUB": 0.1, "ILSVRC": 0.12}
_FIXED_THRESHOLDS = {"tscam": TSCAM_CAM_THRESHOLDS, "trt": TRT_CAM_THRESHOLDS}
#: What each protocol computes, in words: every report states it beside its numbers.
PROTOCOL_DESCRIPTIONS = {
    "tscam": "the seeds' protocol (TS-CAM's official evaluation): each ground-truth-class map resized bilinearly "
             "to the input, min-max normalised and cut at ONE CAM threshold (a fraction of its maximum); the largest "
             "contour's box; Top-1 / Top-5 Loc = class among the top 1 / 5 and IoU > 0.5, GT-known Loc = IoU >= 0.5.",
    "maxboxacc": "wsolevaluation's protocol: maps resized bicubically and normalised, the CAM threshold swept over "
                 "0 ... 0.99 and the best threshold taken per IoU level over the whole dataset; MaxBoxAcc = IoU 0.5 "
                 "with the largest contour, MaxBoxAccV2 = mean over IoU 0.3 / 0.5 / 0.7 with every contour's box; "
                 "PxAP for mask annotations.",
    "trt": "TRT's official evaluation (tools_cam/test_cam.py): the seeds' Top-1 / Top-5 / GT-known Loc, and its "
           "'MaxBoxAccV2' column, which is NOT wsolevaluation's: every contour's box at the same ONE CAM threshold "
           "(no sweep), scored against each image's first ground-truth box, accuracy at IoU 0.3 / 0.5 / 0.7 and "
           "their mean; on the same maps at most the swept MaxBoxAccV2.",
}
_MAX_PENDING_BATCHES = 2
_SHOWN_FIXES = 20


def package_versions() -> Dict[str, str]:
    """Versions of the packages a result depends on."""
    import tscam_explain

    versions = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                "numpy": np.__version__, "opencv": cv2.__version__, "tscam_explain": tscam_explain.__version__}
    try:
        versions["grad-cam"] = importlib.metadata.version("grad-cam")
    except importlib.metadata.PackageNotFoundError:
        versions["grad-cam"] = "not installed"
    return versions


@dataclass
class EvaluationReport:
    """Metrics, the settings that produced them and the package versions."""

    metrics: Dict[str, Any]
    settings: Dict[str, Any]
    versions: Dict[str, str]
    dataset: Dict[str, Any]
    seconds: float
    fixes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """A human summary: headline metrics, settings, data fixes, versions."""
        protocol = self.settings["protocol"]
        lines = [f"# WSOL evaluation ({protocol} protocol)", "",
                 f"Protocol {protocol}: {PROTOCOL_DESCRIPTIONS[protocol]}", "",
                 f"{self.dataset['images']} images of {self.dataset['name']}, explainer "
                 f"{self.settings['explainer']}, {self.seconds:.1f} s.", "", "| metric | value |", "|---|---:|"]
        for name, value in _headline(self.metrics):
            lines.append(f"| {name} | {value:.2f} |")
        lines += ["", "## Settings", ""] + [f"- {key}: {value}" for key, value in self.settings.items()]
        lines += ["", "## Data fixes", "", f"{len(self.fixes)} fix(es) applied (boxes clipped to their image)."]
        lines += [f"- {fix}" for fix in self.fixes[:_SHOWN_FIXES]]
        if len(self.fixes) > _SHOWN_FIXES:
            lines.append(f"- … {len(self.fixes) - _SHOWN_FIXES} more in report.json")
        lines += ["", "## Versions", ""] + [f"- {name}: {version}" for name, version in self.versions.items()]
        return "\n".join(lines) + "\n"

    def save(self, directory: Union[str, Path]) -> Tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        markdown_path.write_text(self.markdown(), encoding="utf-8")
        return json_path, markdown_path


def _headline(metrics: Dict[str, Any]) -> List[Tuple[str, float]]:
    rows = []
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known"):
        if key in metrics.get("localization", {}):
            rows.append((key.replace("_", " "), metrics["localization"][key]))
    for key, value in metrics.get("classification", {}).items():
        rows.append((f"{key} cls", value))
    for name in ("MaxBoxAcc", "MaxBoxAccV2"):
        if name in metrics:
            result = metrics[name]
            rows.append((name, result["per_iou"][50] if name == "MaxBoxAcc" else result["mean"]))
            rows += [(f"{name} @ IoU {iou} (best CAM threshold {result['best_threshold'][iou]:.2f})", value)
                     for iou, value in result["per_iou"].items()]
    if "FixedThresholdBoxAccV2" in metrics:
        result = metrics["FixedThresholdBoxAccV2"]
        label = f"BoxAccV2 at CAM threshold {result['cam_threshold']:.2f} (TRT's \"MaxBoxAccV2\", not swept)"
        rows.append((label, result["mean"]))
        rows += [(f"{label} @ IoU {iou}", value) for iou, value in result["per_iou"].items()]
    if "PxAP" in metrics:
        rows.append(("PxAP", metrics["PxAP"]))
    return rows


def explain_batch(explainer: Any, images: torch.Tensor, labels: torch.Tensor) -> Tuple[np.ndarray, torch.Tensor]:
    """Maps of the ground-truth classes and the logits.

    Returns:
        ``(maps, logits)``: float32 (B, h, w) raw grid maps from ``attribute(upsample=False)`` when the
        explainer has it, else the (B, H, W) maps of ``explainer(input_tensor, targets)``; (B, C) float32 logits.
    """
    targets = [ClassifierOutputTarget(int(label)) for label in labels]
    if hasattr(explainer, "attribute"):
        maps = explainer.attribute(images, targets, upsample=False).detach().float().cpu().numpy()
    else:
        maps = np.asarray(explainer(input_tensor=images, targets=targets), dtype=np.float32)
    logits = getattr(explainer, "outputs", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{type(explainer).__name__} left no logits tensor in .outputs after the call; "
                        "the harness needs them for classification and Top-1/Top-5 localisation")
    if maps.ndim != 3 or len(maps) != len(images):
        raise ValueError(f"{type(explainer).__name__} returned maps of shape {maps.shape}; expected (B, H, W) "
                         f"with B = {len(images)}")
    return maps, logits.detach().float()


class _ProtocolMetrics:
    """The accumulators of one protocol and how a batch feeds them (runs in a worker thread)."""

    def __init__(self, protocol: str, cam_threshold: Optional[float], cam_curve_interval: float,
                 iou_thresholds: Sequence[int], error_rule: str, has_boxes: bool, has_masks: bool,
                 executor: Optional[Executor]) -> None:
        self.protocol = protocol
        self.cam_threshold = cam_threshold
        fixed = protocol in _FIXED_THRESHOLDS
        self.localization = LocalizationAccuracy(GT_KNOWN_CURVE_IOUS, error_rule) if fixed else None
        self.fixed_boxes = FixedThresholdBoxAccuracy(cam_threshold, iou_thresholds) if protocol == "trt" else None
        self.classification = ClassificationAccuracy() if protocol == "maxboxacc" else None
        self.boxes = (BoxAccuracy(cam_curve_interval, iou_thresholds, executor=executor)
                      if protocol == "maxboxacc" and has_boxes else None)
        self.pixels = PixelAveragePrecision(cam_curve_interval) if protocol == "maxboxacc" and has_masks else None

    def update(self, maps: np.ndarray, logits: torch.Tensor, batch: Dict[str, Any], size: Tuple[int, int]) -> None:
        labels, gt_boxes = batch["label"], batch["boxes"]
        if self.localization is not None:
            maps_u8 = np.stack([tscam_scoremap(cam, size) for cam in maps])
            pred_boxes = np.stack([tscam_box(scoremap, self.cam_threshold) for scoremap in maps_u8])
            self.localization.update(logits, labels, pred_boxes, gt_boxes)
            if self.fixed_boxes is not None:
                self.fixed_boxes.update(maps_u8, gt_boxes)
            return
        self.classification.update(logits, labels)
        scoremaps = maxboxacc_scoremaps(maps, size)
        if self.boxes is not None:
            self.boxes.update(scoremaps, gt_boxes)
        if self.pixels is not None:
            self.pixels.update(scoremaps, batch["mask"], batch["ignore"])

    def _accumulators(self) -> List[MetricAccumulator]:
        return [accumulator for accumulator in (self.localization, self.fixed_boxes, self.classification, self.boxes,
                                                self.pixels) if accumulator is not None]

    @property
    def num_images(self) -> int:
        """Images accumulated (every protocol counts them in its first accumulator)."""
        return int(self._accumulators()[0].num_images)

    def sync(self, process_group: Optional[Any] = None) -> None:
        """Sum every accumulator's counts over the processes of ``process_group`` (default: the world)."""
        for accumulator in self._accumulators():
            accumulator.sync(process_group)

    def compute(self) -> Dict[str, Any]:
        if self.localization is not None:
            metrics = {"localization": self.localization.compute()}
            if self.fixed_boxes is not None:
                metrics["FixedThresholdBoxAccV2"] = self.fixed_boxes.compute()
            return metrics
        metrics: Dict[str, Any] = {"classification": self.classification.compute()}
        if self.boxes is not None:
            metrics.update(self.boxes.compute())
        if self.pixels is not None:
            metrics["PxAP"] = self.pixels.compute()
        return metrics


def _model_of(explainer: Any) -> Optional[torch.nn.Module]:
    return getattr(explainer, "model", None)


def _reader_of(dataset: Dataset) -> Dataset:
    """The reader under ``Subset`` wrappers (a shard of a reader keeps its protocol and benchmark)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _default_device(explainer: Any) -> torch.device:
    device = getattr(explainer, "device", None)
    if device is not None:
        return torch.device(device)
    model = _model_of(explainer)
    return next(model.parameters()).device if model is not None else torch.device("cpu")


def evaluate(explainer: Any, dataset: Dataset, protocol: Literal["tscam", "maxboxacc", "trt"] = "tscam", *,
             batch_size: int = 32, device: Optional[Union[str, torch.device]] = None, num_workers: int = 0,
             cam_threshold: Optional[float] = None, cam_curve_interval: float = 0.01,
             iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS,
             error_rule: Literal["official", "paper"] = "official", limit: Optional[int] = None,
             metric_workers: int = 0, progress: bool = True, sync: bool = False,
             process_group: Optional[Any] = None) -> EvaluationReport:
    """Explain every image of ``dataset`` for its ground-truth class and compute the protocol's metrics.

    Args:
        explainer: one of ours (``make_explainer``) or a pytorch-grad-cam CAM object.
        dataset: a :mod:`~tscam_explain.wsol.datasets` reader built for the same ``protocol``, or a
            ``Subset`` of one (e.g. this process's shard, with ``sync``).
        protocol: ``"tscam"``: Top-1/Top-5/GT-known localisation at one CAM threshold, the GT-known
            curve and the error analysis; ``"maxboxacc"``: classification, MaxBoxAcc, MaxBoxAccV2
            (with curves and best thresholds) and, for mask annotations, PxAP; ``"trt"``: what TRT's
            official evaluation reports: the ``tscam`` metrics and, under ``FixedThresholdBoxAccV2``, its
            "MaxBoxAccV2" column (every contour at the same one CAM threshold, IoU 30/50/70 and their
            mean; :class:`~tscam_explain.wsol.metrics.FixedThresholdBoxAccuracy`).
            :data:`PROTOCOL_DESCRIPTIONS` says each in words.
        batch_size: images per forward pass.
        device: where images go (default: the explainer's device); the model must already be there.
            Images are cast to the model's dtype (:func:`~tscam_explain.explainers.cast_input`: a bf16 or
            fp16 model gets bf16 / fp16 images), as the explainers themselves do; ``evaluate`` also runs
            under ``torch.autocast``.
        num_workers: ``DataLoader`` worker processes.
        cam_threshold: the ``tscam`` / ``trt`` threshold; default from the dataset's benchmark (0.1 CUB,
            0.12 ILSVRC, for both).
        cam_curve_interval: the ``maxboxacc`` threshold spacing.
        iou_thresholds: the ``maxboxacc`` and ``trt`` box-accuracy IoU thresholds, in percent.
        error_rule: the error-analysis rule (see :func:`~tscam_explain.wsol.metrics.classify_error`).
        limit: evaluate only the first ``limit`` images.
        metric_workers: threads that share each batch's threshold sweeps (0 or 1: the metric thread
            alone). The compiled sweep releases the GIL, so threads scale without copying maps. Metrics
            always run in a background thread, overlapping the next batch's forward pass.
        progress: show a tqdm progress bar.
        sync: sum the metric counts over the processes of ``torch.distributed`` before computing the
            metrics (no-op when it is not initialised). Every process must call ``evaluate`` with its
            own disjoint shard; each gets the metrics (and ``dataset["images"]``) of all shards
            together, exactly those of one pass over them, since the counts are integers. ``fixes``
            stay this process's.
        process_group: the group ``sync`` reduces over (default: the world).

    Returns:
        The :class:`EvaluationReport`; ``report.save(directory)`` writes it as JSON and markdown.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    if process_group is not None and not sync:
        raise ValueError("process_group is the group of sync=True; pass sync=True to merge over it")
    reader = _reader_of(dataset)
    dataset_protocol = getattr(reader, "protocol", protocol)
    if dataset_protocol != protocol:
        raise ValueError(f"the dataset maps boxes for the {dataset_protocol!r} protocol, not {protocol!r}; "
                         f"build it with protocol={protocol!r}")
    benchmark = getattr(reader, "benchmark", None)
    if protocol in _FIXED_THRESHOLDS and cam_threshold is None:
        defaults = _FIXED_THRESHOLDS[protocol]
        if benchmark not in defaults:
            raise ValueError(f"no default CAM threshold for benchmark {benchmark!r}; pass cam_threshold "
                             f"(the {protocol} protocol uses {defaults})")
        cam_threshold = defaults[benchmark]
    has_boxes = getattr(reader, "has_boxes", True)
    has_masks = getattr(reader, "has_masks", False)
    if protocol in _FIXED_THRESHOLDS and not has_boxes:
        raise ValueError(f"the {protocol} protocol needs box annotations; this dataset has masks only")
    device = torch.device(device) if device is not None else _default_device(explainer)
    subset = Subset(dataset, range(min(limit, len(dataset)))) if limit is not None else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=wsol_collate, pin_memory=device.type == "cuda")

    sweep_threads = (ThreadPoolExecutor(metric_workers, thread_name_prefix="wsol-sweep") if metric_workers > 1
                     else None)
    metrics = _ProtocolMetrics(protocol, cam_threshold, cam_curve_interval, iou_thresholds, error_rule, has_boxes,
                               has_masks, sweep_threads)
    fixes: List[str] = []
    model = _model_of(explainer)
    pending: Deque[Future] = deque()
    input_size: Optional[List[int]] = None
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="wsol-metrics") as metric_thread, \
                tqdm(total=len(subset), unit="img", disable=not progress, desc=f"evaluate ({protocol})") as bar:
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                if model is not None:  # the explainers' dtype policy, for explainers that call the model as it is
                    images = cast_input(model, images)
                input_size = list(images.shape[-2:])
                maps, logits = explain_batch(explainer, images, batch["label"])
                pending.append(metric_thread.submit(metrics.update, maps, logits.cpu(), batch,
                                                    tuple(images.shape[-2:])))
                while len(pending) > _MAX_PENDING_BATCHES:
                    pending.popleft().result()
                fixes.extend(batch["fixes"])
                bar.update(len(images))
            while pending:
                pending.popleft().result()
    finally:
        if sweep_threads is not None:
            sweep_threads.shutdown(cancel_futures=True)
    if sync:
        metrics.sync(process_group)
    seconds = time.perf_counter() - start

    settings = {
        "protocol": protocol, "explainer": type(explainer).__name__,
        "model": type(model).__name__ if model is not None else None,
        "batch_size": batch_size, "device": str(device), "limit": limit,
        "input_size": input_size,
    }
    if protocol in _FIXED_THRESHOLDS:
        settings.update(cam_threshold=cam_threshold, error_rule=error_rule, gt_known_curve_ious=list(GT_KNOWN_CURVE_IOUS))
        if protocol == "trt":
            settings.update(iou_thresholds=list(iou_thresholds))
    else:
        settings.update(cam_curve_interval=cam_curve_interval, iou_thresholds=list(iou_thresholds))
    dataset_info = {"name": benchmark or type(reader).__name__, "reader": type(reader).__name__,
                    "images": metrics.num_images, "fixes": len(fixes)}
    return EvaluationReport(metrics.compute(), settings, package_versions(), dataset_info, seconds, fixes)
