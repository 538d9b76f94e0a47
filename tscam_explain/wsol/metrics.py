"""WSOL metrics as accumulators: update batch by batch, merge across workers, compute at the end.

Every accumulator keeps only integer counts (per-threshold hits, histograms), so its memory does not
grow with the dataset and partial states add up exactly: :meth:`MetricAccumulator.merge` for
states from other processes, :meth:`MetricAccumulator.sync` for ``torch.distributed`` (one
``all_reduce`` of the counts).

* :class:`BoxAccuracy`: wsolevaluation's MaxBoxAcc (largest contour) and MaxBoxAccV2 (all contours).
* :class:`FixedThresholdBoxAccuracy`: TRT's "MaxBoxAccV2" column: all contours at one CAM threshold.
* :class:`PixelAveragePrecision`: wsolevaluation's PxAP, with optional ignore regions.
* :class:`LocalizationAccuracy`: the seeds' Top-1 / Top-5 / GT-known localisation, the GT-known
  curve over IoU thresholds and the error analysis (Cls, M-Ins, Part, More, OT).
* :class:`ClassificationAccuracy`: Top-1 / Top-5 classification.
"""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .boxes import as_boxes, box_iou, box_overlaps
from .sweep import scoremaps_to_uint8, sweep_box_ious

DEFAULT_IOU_THRESHOLDS = (30, 50, 70)
#: The IoU thresholds of TS-CAM's Fig. 7 (GT-known accuracy against IoU).
GT_KNOWN_CURVE_IOUS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ERROR_TYPES = ("correct", "cls", "multi_instance", "part", "more", "other")


def cam_thresholds(cam_curve_interval: float) -> np.ndarray:
    """wsolevaluation's threshold list ``np.arange(0, 1, cam_curve_interval)``."""
    if not 0 < cam_curve_interval < 1:
        raise ValueError(f"cam_curve_interval must lie in (0, 1); got {cam_curve_interval}")
    return np.arange(0, 1, cam_curve_interval)


def _as_numpy(array: Any, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor; got {type(array).__name__}")
    return array


class MetricAccumulator:
    """Counts that add up: the base of every accumulator here.

    Subclasses keep their state as int64 numpy arrays named in ``_state_names`` and their settings in
    :meth:`config`; two accumulators merge only when their configs are equal.
    """

    _state_names: Tuple[str, ...] = ()

    def config(self) -> Dict[str, Any]:
        """The settings that must match for states to be merged."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the counts, plain int64 arrays (picklable, ``np.savez``-able)."""
        return {name: getattr(self, name).copy() for name in self._state_names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the counts with ``state`` (numpy arrays or tensors of the same shapes)."""
        for name in self._state_names:
            if name not in state:
                raise KeyError(f"state has no entry {name!r}; expected {list(self._state_names)}")
            value = np.asarray(_as_numpy(state[name], name) if isinstance(state[name], torch.Tensor) else state[name])
            current = getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(f"state entry {name!r} has shape {value.shape}; expected {current.shape}")
            setattr(self, name, value.astype(np.int64))

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Add another accumulator's counts to these (exact); returns ``self``."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other.config() != self.config():
            raise ValueError(f"cannot merge accumulators with different settings: {other.config()} vs {self.config()}")
        for name in self._state_names:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def sync(self, process_group: Optional[Any] = None, device: Optional[torch.device] = None) -> None:
        """Sum the counts over all processes of ``torch.distributed`` (no-op when it is not initialised).

        Every process must call it; afterwards every process holds the totals.

        Args:
            process_group: the group to reduce over (default: the world).
            device: where the counts travel; default: the current CUDA device for the NCCL backend,
                else the CPU.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if device is None:
            backend = torch.distributed.get_backend(process_group)
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        arrays = [getattr(self, name) for name in self._state_names]
        flat = torch.from_numpy(np.concatenate([array.ravel() for array in arrays])).to(device)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=process_group)
        totals = flat.cpu().numpy()
        offset = 0
        for name, array in zip(self._state_names, arrays):
            setattr(self, name, totals[offset:offset + array.size].reshape(array.shape).copy())
            offset += array.size


def _box_accuracy_result(correct: np.ndarray, num_images: int, thresholds: np.ndarray,
                         iou_thresholds: Sequence[int]) -> Dict[str, Any]:
    # the reference's arithmetic: counts * 100. / float(cnt), max over the dataset-level curve
    curves = correct * 100.0 / float(num_images)
    per_iou = curves.max(axis=1)
    best = curves.argmax(axis=1)
    return {
        "per_iou": {iou: float(value) for iou, value in zip(iou_thresholds, per_iou)},
        "mean": float(np.mean(per_iou)),
        "curves": {iou: curve.tolist() for iou, curve in zip(iou_thresholds, curves)},
        "best_threshold": {iou: float(thresholds[index]) for iou, index in zip(iou_thresholds, best)},
    }


def _checked_gt_boxes(gt_boxes: Sequence[Any], size: Tuple[int, int]) -> List[np.ndarray]:
    """Per image, int64 (k, 4) ground-truth boxes, k >= 1, not inverted, inside the (H, W) score map.

    Inside means 0 <= x <= W and 0 <= y <= H: the boxes are in the map's own pixel coordinates (the protocol
    resizes them to it). One past the last pixel is accepted: wsolevaluation's unclipped resize
    ``int(x * W / width)`` gives ``W`` for a box that ends at the image's edge, and scores it as it is.
    Farther out is refused, not clipped: such a box is in another coordinate frame (e.g. the original
    image's), and clipping it would score the wrong box silently. (The dataset readers resize and clip
    boxes that stick out of their image by at most 2 % and report each fix.)

    The usual input (integer (k, 4) arrays) is checked in one pass over all images; anything else,
    or a failed check, goes through :func:`as_boxes` image by image for a precise error.
    """
    height, width = size
    arrays = [_as_numpy(boxes, "gt_boxes") if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
              for boxes in gt_boxes]
    if arrays and all(a.ndim == 2 and a.shape[1] == 4 and len(a) and a.dtype.kind in "iu" for a in arrays):
        flat = np.concatenate(arrays)
        if (flat.min() >= 0 and (flat[:, 2] >= flat[:, 0]).all() and (flat[:, 3] >= flat[:, 1]).all()
                and flat[:, 2].max() <= width and flat[:, 3].max() <= height):
            return [a.astype(np.int64, copy=False) for a in arrays]
    checked_sets = []
    for index, boxes in enumerate(arrays):
        checked = as_boxes(boxes, name=f"gt_boxes[{index}]")
        if len(checked) == 0:
            raise ValueError(f"image {index} of the batch has no ground-truth box; box metrics need at least one")
        if np.any(checked < 0):
            raise ValueError(f"gt_boxes[{index}] has negative coordinates: {checked.tolist()}")
        outside = checked[(checked[:, 2] > width) | (checked[:, 3] > height)]
        if len(outside):
            raise ValueError(f"gt_boxes[{index}] has boxes outside the {width}x{height} score map: "
                             f"{outside.tolist()}; expected x0, y0, x1, y1 in the map's pixels (0 … {width} for x, "
                             f"0 … {height} for y): resize the boxes to the map first, as the dataset readers do")
        checked_sets.append(checked)
    return checked_sets


class BoxAccuracy(MetricAccumulator):
    """MaxBoxAcc and MaxBoxAccV2 of wsolevaluation (methods.md §4b), exact and streaming.

    Per image and threshold, the best IoU of the threshold's box(es) with any ground-truth box is
    compared with each IoU threshold; only the hit counts per (IoU threshold, CAM threshold) are kept.

    Args:
        cam_curve_interval: spacing of the CAM thresholds ``np.arange(0, 1, interval)``.
        iou_thresholds: IoU thresholds in percent.
        largest_contour: count the largest-contour boxes (MaxBoxAcc).
        all_contours: count the all-contour boxes (MaxBoxAccV2).
        executor: optional ``concurrent.futures`` executor that computes the boxes of chunks of a
            batch in parallel, e.g. a ``ThreadPoolExecutor`` (the compiled sweep releases the GIL);
            results are identical.
    """

    _state_names = ("num_images", "correct_largest", "correct_all")

    def __init__(self, cam_curve_interval: float = 0.01, iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS, *,
                 largest_contour: bool = True, all_contours: bool = True,
                 executor: Optional[Executor] = None) -> None:
        if not (largest_contour or all_contours):
            raise ValueError("enable at least one of largest_contour (MaxBoxAcc) and all_contours (MaxBoxAccV2)")
        if not iou_thresholds or any(not 0 < int(iou) <= 100 for iou in iou_thresholds):
            raise ValueError(f"iou_thresholds must be percentages in (0, 100]; got {list(iou_thresholds)}")
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds = cam_thresholds(cam_curve_interval)
        self.iou_thresholds = tuple(int(iou) for iou in iou_thresholds)
        self.largest_contour = largest_contour
        self.all_contours = all_contours
        self.executor = executor
        shape = (len(self.iou_thresholds), len(self.thresholds))
        self.num_images = np.zeros((), dtype=np.int64)
        self.correct_largest = np.zeros(shape, dtype=np.int64)
        self.correct_all = np.zeros(shape, dtype=np.int64)

    def config(self) -> Dict[str, Any]:
        return {"cam_curve_interval": self.cam_curve_interval, "iou_thresholds": self.iou_thresholds,
                "largest_contour": self.largest_contour, "all_contours": self.all_contours}

    def update(self, scoremaps: Any, gt_boxes: Sequence[Any]) -> None:
        """Add a batch.

        Args:
            scoremaps: float (B, H, W) maps in [0, 1] (numpy or tensor), normalised as the protocol says.
            gt_boxes: per image, (k, 4) inclusive ``x0, y0, x1, y1`` ground-truth boxes in the map's pixels,
                k >= 1. A box outside the map (x1 > W or y1 > H) raises ``ValueError``: it is not clipped.
        """
        maps = scoremaps_to_uint8(_as_numpy(scoremaps, "scoremaps"))
        if len(gt_boxes) != len(maps):
            raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {len(maps)} score maps")
        largest, every = self._sweep(maps, _checked_gt_boxes(gt_boxes, maps.shape[1:]))
        limits = np.array(self.iou_thresholds, dtype=np.float64)[:, None, None] / 100
        if largest is not None:
            self.correct_largest += (largest[None] >= limits).sum(axis=1)
        if every is not None:
            self.correct_all += (every[None] >= limits).sum(axis=1)
        self.num_images += len(maps)

    def _sweep(self, maps: np.ndarray, boxes: List[np.ndarray]) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        options = dict(largest=self.largest_contour, all_contours=self.all_contours)
        if self.executor is None or len(maps) < 2:
            result = sweep_box_ious(maps, boxes, self.thresholds, **options)
            return result.largest, result.all_contours
        chunks = np.array_split(np.arange(len(maps)), min(len(maps), 4 * getattr(self.executor, "_max_workers", 2)))
        futures = [self.executor.submit(sweep_box_ious, maps[chunk], [boxes[i] for i in chunk], self.thresholds,
                                        **options) for chunk in chunks if len(chunk)]
        results = [future.result() for future in futures]
        stack = lambda parts: None if parts[0] is None else np.concatenate(parts)  # noqa: E731
        return stack([r.largest for r in results]), stack([r.all_contours for r in results])

    def compute(self) -> Dict[str, Dict[str, Any]]:
        """MaxBoxAcc and/or MaxBoxAccV2.

        Returns:
            ``{"MaxBoxAcc": …, "MaxBoxAccV2": …}`` (the enabled ones), each a dict with ``per_iou``
            ({IoU %: accuracy %}), ``mean`` (their average; MaxBoxAccV2's value), ``curves``
            ({IoU %: accuracy % per CAM threshold}) and ``best_threshold`` ({IoU %: CAM threshold}).
            The MaxBoxAcc value itself is ``per_iou[50]`` of the largest-contour result.
        """
        if self.num_images == 0:
            raise ValueError("no image was accumulated; call update() first")
        results = {}
        if self.largest_contour:
            results["MaxBoxAcc"] = _box_accuracy_result(self.correct_largest, int(self.num_images), self.thresholds,
                                                        self.iou_thresholds)
        if self.all_contours:
            results["MaxBoxAccV2"] = _box_accuracy_result(self.correct_all, int(self.num_images), self.thresholds,
                                                          self.iou_thresholds)
        return results


def max_box_acc(scoremaps: Any, gt_boxes: Sequence[Any], *, multi_contour: bool = False,
                cam_curve_interval: float = 0.01, iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS
                ) -> Dict[str, Any]:
    """Box accuracy over a threshold sweep, as wsolevaluation computes it.

    Args:
        scoremaps: float (N, H, W) maps in [0, 1].
        gt_boxes: per image, an int (k, 4) array of inclusive ``x0, y0, x1, y1`` boxes in the map's pixels;
            a box outside the map (x1 > W or y1 > H) raises ``ValueError`` (it is not clipped).
        multi_contour: ``False``: the largest contour's box (MaxBoxAcc is ``per_iou[50]``);
            ``True``: every contour's box (MaxBoxAccV2 is ``mean``).
        cam_curve_interval: spacing of the thresholds ``np.arange(0, 1, interval)``.
        iou_thresholds: IoU thresholds in percent.

    Returns:
        ``{"per_iou": {iou: %}, "mean": %, "curves": {iou: [% per threshold]},
        "best_threshold": {iou: threshold}}``.
    """
    accumulator = BoxAccuracy(cam_curve_interval, iou_thresholds, largest_contour=not multi_contour,
                              all_contours=multi_contour)
    accumulator.update(scoremaps, gt_boxes)
    return accumulator.compute()["MaxBoxAccV2" if multi_contour else "MaxBoxAcc"]


class FixedThresholdBoxAccuracy(MetricAccumulator):
    """TRT's "MaxBoxAccV2" as its official evaluation computes it: every contour's box at ONE CAM threshold.

    TRT's ``tools_cam/test_cam.py`` (``TEST.METRICS maxboxaccv2``) runs ``lib/cams_MaxBoxAccV2_deit.py``, a
    copy of wsolevaluation's box evaluator, with a single threshold ``cfg.MODEL.CAM_THR``. Per image, on
    the uint8 map of the seeds' pipeline (:func:`~tscam_explain.wsol.boxes.tscam_scoremap`: bilinear
    resize, min-max, ``× 255``): foreground = pixels ``> int(t · max)``; every contour (``RETR_TREE``) gives
    a box ``[x, y, x + w, y + h]`` clipped to ``W - 1, H - 1`` (no contour: ``[0, 0, 0, 0]``); the image's
    score is the best IoU of those boxes with its **first** ground-truth box (the official code passes an
    image's boxes as one flat list, of which its IoU helper reads the first four numbers; CUB images
    have one box). Accuracy at IoU δ = % of images with score >= δ / 100; the value is the mean over δ.
    With one threshold there is nothing to maximise: on the same maps it is at most wsolevaluation's
    swept MaxBoxAccV2 (:class:`BoxAccuracy`) and not comparable with it.

    Args:
        cam_threshold: the one CAM threshold, a fraction of the map's maximum in [0, 1) (TRT: 0.1 on CUB,
            0.12 on ILSVRC in its published evaluation commands).
        iou_thresholds: IoU thresholds in percent.
    """

    _state_names = ("num_images", "correct")

    def __init__(self, cam_threshold: float, iou_thresholds: Sequence[int] = DEFAULT_IOU_THRESHOLDS) -> None:
        if not 0 <= cam_threshold < 1:
            raise ValueError(f"cam_threshold must lie in [0, 1); got {cam_threshold}")
        if not iou_thresholds or any(not 0 < int(iou) <= 100 for iou in iou_thresholds):
            raise ValueError(f"iou_thresholds must be percentages in (0, 100]; got {list(iou_thresholds)}")
        self.cam_threshold = float(cam_threshold)
        self.iou_thresholds = tuple(int(iou) for iou in iou_thresholds)
        self.num_images = np.zeros((), dtype=np.int64)
        self.correct = np.zeros(len(self.iou_thresholds), dtype=np.int64)

    def config(self) -> Dict[str, Any]:
        return {"cam_threshold": self.cam_threshold, "iou_thresholds": self.iou_thresholds}

    def update(self, maps_u8: np.ndarray, gt_boxes: Sequence[Any]) -> np.ndarray:
        """Add a batch.

        Args:
            maps_u8: uint8 (B, H, W) maps (:func:`~tscam_explain.wsol.boxes.tscam_scoremap` of each class map).
            gt_boxes: per image, (k, 4) inclusive ``x0, y0, x1, y1`` ground-truth boxes, k >= 1; only the
                first is scored, as in the official code.

        Returns:
            float64 (B,) each image's best all-contour IoU with its first ground-truth box.
        """
        maps_u8 = _as_numpy(maps_u8, "maps_u8")
        if maps_u8.dtype != np.uint8 or maps_u8.ndim != 3:
            raise ValueError(f"maps_u8 must be uint8 (B, H, W); got {maps_u8.dtype} with shape {maps_u8.shape}")
        if len(gt_boxes) != len(maps_u8):
            raise ValueError(f"got {len(gt_boxes)} ground-truth box sets for {len(maps_u8)} score maps")
        first_boxes = [boxes[:1] for boxes in _checked_gt_boxes(gt_boxes, maps_u8.shape[1:])]
        scores = sweep_box_ious(maps_u8, first_boxes, np.array([self.cam_threshold]), largest=False,
                                all_contours=True).all_contours[:, 0]
        self.correct += (scores[None] >= np.array(self.iou_thresholds)[:, None] / 100).sum(axis=1)
        self.num_images += len(scores)
        return scores

    def compute(self) -> Dict[str, Any]:
        """``{"per_iou": {IoU %: accuracy %}, "mean": %, "cam_threshold": t}``."""
        if self.num_images == 0:
            raise ValueError("no image was accumulated; call update() first")
        # the official arithmetic: counts * 100. / float(cnt), then np.average over the IoU thresholds
        per_iou = self.correct * 100.0 / float(self.num_images)
        return {"per_iou": {iou: float(value) for iou, value in zip(self.iou_thresholds, per_iou)},
                "mean": float(np.average(per_iou)), "cam_threshold": self.cam_threshold}


class PixelAveragePrecision(MetricAccumulator):
    """wsolevaluation's PxAP: the area under the dataset-wide pixel precision-recall curve.

    Keeps two histograms (foreground and background pixels) over the bins ``[t_k, t_k+1)`` of the
    thresholds, plus ``[1, 2)`` and ``[2, 3)``; pixels marked "ignore" that are not foreground are
    dropped, as in the reference (its ignore mask is the ignore region minus the foreground).

    Args:
        cam_curve_interval: spacing of the thresholds ``np.arange(0, 1, interval)``.
    """

    _state_names = ("foreground_histogram", "background_histogram")

    def __init__(self, cam_curve_interval: float = 0.01) -> None:
        self.cam_curve_interval = float(cam_curve_interval)
        self.edges = np.append(cam_thresholds(cam_curve_interval), [1.0, 2.0, 3.0])
        self.foreground_histogram = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.background_histogram = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def config(self) -> Dict[str, Any]:
        return {"cam_curve_interval": self.cam_curve_interval}

    def _bins(self, values: np.ndarray) -> np.ndarray:
        """``np.histogram``'s bin of each value in [0, 1] (left-closed bins, float64 comparisons).

        A first guess from the bin width, then exact one-step corrections against the edges: the
        same bins as ``np.searchsorted(edges, v, "right") - 1`` at a fraction of the cost.
        """
        values = values.astype(np.float64, copy=False)
        last = len(self.edges) - 2
        bins = np.clip((values / self.cam_curve_interval).astype(np.int64), 0, last)
        while True:
            too_high = self.edges[bins] > values
            too_low = self.edges[bins + 1] <= values
            if not (too_high.any() or too_low.any()):
                return bins
            bins = np.clip(bins - too_high + too_low, 0, last)

    def update(self, scoremaps: Any, gt_masks: Any, ignore_masks: Optional[Any] = None) -> None:
        """Add a batch.

        Args:
            scoremaps: float (B, H, W) maps in [0, 1].
            gt_masks: (B, H, W) foreground masks (nonzero = object).
            ignore_masks: optional (B, H, W) masks of pixels to leave out (nonzero = ignore), except
                where they are foreground.
        """
        maps = _as_numpy(scoremaps, "scoremaps")
        masks = _as_numpy(gt_masks, "gt_masks").astype(bool)
        if maps.ndim != 3 or masks.shape != maps.shape:
            raise ValueError(f"scoremaps {maps.shape} and gt_masks {masks.shape} must both be (B, H, W)")
        if np.isnan(maps).any() or (maps.size and (maps.min() < 0 or maps.max() > 1)):
            raise ValueError("scoremaps must lie in [0, 1] without NaN")
        background = ~masks
        if ignore_masks is not None:
            ignore = _as_numpy(ignore_masks, "ignore_masks").astype(bool)
            if ignore.shape != maps.shape:
                raise ValueError(f"ignore_masks {ignore.shape} must have the maps' shape {maps.shape}")
            background &= ~ignore
        bins = self._bins(maps.ravel())
        size = len(self.foreground_histogram)
        self.foreground_histogram += np.bincount(bins[masks.ravel()], minlength=size)
        self.background_histogram += np.bincount(bins[background.ravel()], minlength=size)

    def compute(self) -> float:
        """PxAP in percent."""
        # tp, fp: pixels at or above each bin, from the top bin down (the reference's cumsum order)
        true_positive = self.foreground_histogram[::-1].cumsum().astype(np.float64)
        false_positive = self.background_histogram[::-1].cumsum().astype(np.float64)
        positives = float(self.foreground_histogram.sum())
        if positives <= 0:
            raise ValueError("no foreground pixel was accumulated; PxAP needs ground-truth masks with objects")
        predicted = true_positive + false_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = true_positive / predicted
        recall = true_positive / positives
        valid = predicted[1:] != 0
        return float((precision[1:] * np.diff(recall))[valid].sum() * 100)


def pxap(scoremaps: Any, gt_masks: Any, ignore_masks: Optional[Any] = None, cam_curve_interval: float = 0.01) -> float:
    """PxAP (percent) of a set of maps against foreground masks.

    Args:
        scoremaps: float (N, H, W) maps in [0, 1].
        gt_masks: (N, H, W) foreground masks.
        ignore_masks: optional (N, H, W) masks of pixels to drop (foreground pixels are kept).
        cam_curve_interval: spacing of the thresholds ``np.arange(0, 1, interval)``.
    """
    accumulator = PixelAveragePrecision(cam_curve_interval)
    accumulator.update(scoremaps, gt_masks, ignore_masks)
    return accumulator.compute()


def _topk_hits(logits: Any, labels: Any, ks: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Per image, whether the label is among the top-k logits for each k; and the top-1 class."""
    logits = torch.as_tensor(logits).detach().float().cpu()
    labels = torch.as_tensor(labels).detach().long().cpu().view(-1)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (B, C) for B = {len(labels)} labels; got shape {tuple(logits.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in 0 … {logits.shape[1] - 1}; got {labels.tolist()}")
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = np.stack([(ranked[:, :k] == labels[:, None]).any(dim=1).numpy() for k in ks], axis=0)
    return hits, ranked[:, 0].numpy()


class ClassificationAccuracy(MetricAccumulator):
    """Top-k classification accuracy (default Top-1 and Top-5).

    Args:
        topk: the k values.
    """

    _state_names = ("num_images", "correct")

    def __init__(self, topk: Sequence[int] = (1, 5)) -> None:
        self.topk = tuple(int(k) for k in topk)
        self.num_images = np.zeros((), dtype=np.int64)
        self.correct = np.zeros(len(self.topk), dtype=np.int64)

    def config(self) -> Dict[str, Any]:
        return {"topk": self.topk}

    def update(self, logits: Any, labels: Any) -> None:
        """Add a batch of (B, C) logits and (B,) labels."""
        hits, _ = _topk_hits(logits, labels, self.topk)
        self.correct += hits.sum(axis=1)
        self.num_images += hits.shape[1]

    def compute(self) -> Dict[str, float]:
        """``{"top1": %, "top5": %}``."""
        if self.num_images == 0:
            raise ValueError("no image was accumulated; call update() first")
        return {f"top{k}": float(count * 100.0 / self.num_images) for k, count in zip(self.topk, self.correct)}


def classify_error(correct_class: bool, pred_box: np.ndarray, gt_boxes: np.ndarray,
                   rule: Literal["official", "paper"] = "official") -> str:
    """TS-CAM's error analysis of one image's top-1 prediction (appendix, Algorithm 1).

    Args:
        correct_class: whether the top-1 class is the ground truth.
        pred_box: (4,) predicted box of that class.
        gt_boxes: (k, 4) ground-truth boxes.
        rule: ``"official"`` (TS-CAM's code, the default): correct iff IoU > 0.5; Part and More
            compare with the GT box of the highest IoU (the first on ties), More with IoG >= 0.7.
            ``"paper"`` (methods.md §4a): correct iff IoU >= 0.5; Part is max IoP > 0.5, More is
            max IoG > 0.7 over all GT boxes.

    Returns:
        One of :data:`ERROR_TYPES`.
    """
    if not correct_class:
        return "cls"
    intersection, pred_area, gt_area = box_overlaps(pred_box[None], gt_boxes)
    intersection, gt_area = intersection[0], gt_area[0]
    iou = intersection / (pred_area[0] + gt_area - intersection)
    best = int(np.argmax(iou))
    if (iou[best] > 0.5) if rule == "official" else (iou[best] >= 0.5):
        return "correct"
    iog = intersection / gt_area
    iop = intersection / pred_area[0, 0]
    if len(gt_boxes) > 1 and np.count_nonzero(iog > 0.3) > 1:
        return "multi_instance"
    if rule == "official":
        part, more = iop[best] > 0.5, iog[best] >= 0.7
    else:
        part, more = iop.max() > 0.5, iog.max() > 0.7
    if part:
        return "part"
    if more:
        return "more"
    return "other"


class LocalizationAccuracy(MetricAccumulator):
    """The seeds' protocol (methods.md §4a): Top-1 / Top-5 / GT-known localisation and their analysis.

    Per image it needs the logits, the label, the box read off the ground-truth class's map (see
    :func:`~tscam_explain.wsol.boxes.tscam_box`) and the ground-truth boxes. When the top-1 class is
    the label, that box is the top-1 box, so Top-1 Loc = top-1 correct and IoU > 0.5; Top-5 Loc = label
    in the top 5 and IoU > 0.5; GT-known = IoU >= 0.5 (the official code's comparisons).

    Args:
        curve_ious: IoU thresholds of the GT-known curve (IoU >= threshold).
        error_rule: rule of :func:`classify_error`.
    """

    _state_names = ("num_images", "top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known", "gt_known_curve",
                    "errors")

    def __init__(self, curve_ious: Sequence[float] = GT_KNOWN_CURVE_IOUS,
                 error_rule: Literal["official", "paper"] = "official") -> None:
        if error_rule not in ("official", "paper"):
            raise ValueError(f"error_rule must be 'official' or 'paper'; got {error_rule!r}")
        self.curve_ious = tuple(float(iou) for iou in curve_ious)
        self.error_rule = error_rule
        for name in self._state_names:
            setattr(self, name, np.zeros((), dtype=np.int64))
        self.gt_known_curve = np.zeros(len(self.curve_ious), dtype=np.int64)
        self.errors = np.zeros(len(ERROR_TYPES), dtype=np.int64)

    def config(self) -> Dict[str, Any]:
        return {"curve_ious": self.curve_ious, "error_rule": self.error_rule}

    def update(self, logits: Any, labels: Any, pred_boxes: Any, gt_boxes: Sequence[Any]) -> np.ndarray:
        """Add a batch.

        Args:
            logits: (B, C) class scores.
            labels: (B,) ground-truth classes.
            pred_boxes: (B, 4) boxes from each image's ground-truth-class map.
            gt_boxes: per image, (k, 4) inclusive ground-truth boxes, k >= 1.

        Returns:
            float64 (B,) IoU of each predicted box with its best ground-truth box.
        """
        (top1, top5), predicted = _topk_hits(logits, labels, (1, 5))
        pred_boxes = as_boxes(_as_numpy(pred_boxes, "pred_boxes") if isinstance(pred_boxes, torch.Tensor)
                              else pred_boxes, name="pred_boxes")
        if len(pred_boxes) != len(top1) or len(gt_boxes) != len(top1):
            raise ValueError(f"got {len(pred_boxes)} predicted boxes and {len(gt_boxes)} ground-truth box sets "
                             f"for {len(top1)} images")
        ious = np.empty(len(top1))
        for index, (pred, image_boxes) in enumerate(zip(pred_boxes, gt_boxes)):
            gt = as_boxes(_as_numpy(image_boxes, "gt_boxes") if isinstance(image_boxes, torch.Tensor) else image_boxes,
                          name=f"gt_boxes[{index}]")
            if len(gt) == 0:
                raise ValueError(f"image {index} of the batch has no ground-truth box")
            ious[index] = box_iou(pred[None], gt).max()
            self.errors[ERROR_TYPES.index(classify_error(bool(top1[index]), pred, gt, self.error_rule))] += 1
        located = ious > 0.5
        self.num_images += len(ious)
        self.top1_cls += int(top1.sum())
        self.top5_cls += int(top5.sum())
        self.top1_loc += int((top1 & located).sum())
        self.top5_loc += int((top5 & located).sum())
        self.gt_known += int((ious >= 0.5).sum())
        self.gt_known_curve += (ious[None] >= np.array(self.curve_ious)[:, None]).sum(axis=1)
        return ious

    def compute(self) -> Dict[str, Any]:
        """Percentages: ``top1_cls``, ``top5_cls``, ``top1_loc``, ``top5_loc``, ``gt_known``,
        ``gt_known_curve`` ({IoU: %}) and ``errors`` ({type: % of all images})."""
        if self.num_images == 0:
            raise ValueError("no image was accumulated; call update() first")
        percent = lambda count: float(count * 100.0 / self.num_images)  # noqa: E731
        return {
            "top1_cls": percent(self.top1_cls), "top5_cls": percent(self.top5_cls),
            "top1_loc": percent(self.top1_loc), "top5_loc": percent(self.top5_loc),
            "gt_known": percent(self.gt_known),
            "gt_known_curve": {iou: percent(count) for iou, count in zip(self.curve_ious, self.gt_known_curve)},
            "errors": {name: percent(count) for name, count in zip(ERROR_TYPES, self.errors)},
        }
