"""WSOL evaluation: boxes from maps, the seeds' and wsolevaluation's metrics, dataset readers, the harness.

Array-level entry points: :func:`max_box_acc` (MaxBoxAcc / MaxBoxAccV2) and :func:`pxap` (PxAP).
Streaming accumulators: :class:`BoxAccuracy`, :class:`PixelAveragePrecision`,
:class:`LocalizationAccuracy`, :class:`ClassificationAccuracy`, :class:`FixedThresholdBoxAccuracy` (TRT's
one-threshold "MaxBoxAccV2"). Readers: :class:`CUBDataset`,
:class:`ILSVRCXMLDataset`, :class:`ILSVRCListDataset`, :class:`WSOLEvalDataset`. The harness:
:func:`evaluate`. See ``docs/wsol.md``.
"""
from .boxes import (as_boxes, box_iou, box_overlaps, largest_contour_rect, maxboxacc_box, maxboxacc_boxes,
                    maxboxacc_scoremap, maxboxacc_scoremaps, normalize_scoremap, paired_box_iou, resize_boxes_maxboxacc,
                    resize_boxes_tscam, tscam_box, tscam_scoremap)
from .datasets import (DATASET_FORMATS, CUBDataset, DatasetFormatError, ILSVRCListDataset, ILSVRCXMLDataset,
                       WSOLDataset, WSOLEvalDataset, open_dataset, wsol_collate)
from .harness import (PROTOCOL_DESCRIPTIONS, TRT_CAM_THRESHOLDS, TSCAM_CAM_THRESHOLDS, EvaluationReport, evaluate,
                      explain_batch, package_versions)
from .metrics import (ERROR_TYPES, GT_KNOWN_CURVE_IOUS, BoxAccuracy, ClassificationAccuracy, FixedThresholdBoxAccuracy,
                      LocalizationAccuracy, MetricAccumulator, PixelAveragePrecision, cam_thresholds, classify_error,
                      max_box_acc, pxap)
from .sweep import SweepIoUs, per_threshold_box_ious, scoremaps_to_uint8, sweep_box_ious

__all__ = [
    "as_boxes", "box_iou", "box_overlaps", "largest_contour_rect", "maxboxacc_box", "maxboxacc_boxes",
    "maxboxacc_scoremap", "maxboxacc_scoremaps", "normalize_scoremap", "paired_box_iou", "resize_boxes_maxboxacc",
    "resize_boxes_tscam", "tscam_box", "tscam_scoremap",
    "ERROR_TYPES", "GT_KNOWN_CURVE_IOUS", "BoxAccuracy", "ClassificationAccuracy", "FixedThresholdBoxAccuracy",
    "LocalizationAccuracy",
    "MetricAccumulator", "PixelAveragePrecision", "cam_thresholds", "classify_error", "max_box_acc", "pxap",
    "SweepIoUs", "per_threshold_box_ious", "scoremaps_to_uint8", "sweep_box_ious",
    "CUBDataset", "DatasetFormatError", "ILSVRCListDataset", "ILSVRCXMLDataset", "WSOLDataset", "WSOLEvalDataset",
    "wsol_collate", "open_dataset", "DATASET_FORMATS", "TSCAM_CAM_THRESHOLDS", "TRT_CAM_THRESHOLDS", "PROTOCOL_DESCRIPTIONS", "EvaluationReport", "evaluate", "explain_batch", "package_versions",
]
