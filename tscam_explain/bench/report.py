"""The bench's report: ``report.json``, ``report.md``, ``results.csv`` (figures: :mod:`.figures`)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..wsol import ERROR_TYPES

__all__ = ["BenchReport", "COLUMNS"]

_COUNT_LABELS = {"deletion_insertion": "deletion/insertion", "road": "ROAD", "captum": "infidelity/sensitivity",
                 "pointing_game": "pointing game"}

#: (column, heading, path into a row, format, better) of results.csv and the printed table
COLUMNS: Tuple[Tuple[str, str, Tuple[str, ...], str, str], ...] = (
    ("seconds_per_image", "s / img", ("cost", "seconds_per_image"), ".4f", "lower"),
    ("x_forward", "× fwd", ("cost", "x_forward"), ".2f", "lower"),
    ("x_forward_memory", "mem × fwd", ("cost", "x_forward_memory"), ".2f", "lower"),
    ("top1_cls", "Top-1 cls", ("localization", "tscam", "top1_cls"), ".1f", "higher"),
    ("top1_loc", "Top-1 Loc", ("localization", "tscam", "top1_loc"), ".1f", "higher"),
    ("gt_known", "GT-known", ("localization", "tscam", "gt_known"), ".1f", "higher"),
    ("MaxBoxAcc", "MaxBoxAcc", ("localization", "maxboxacc", "MaxBoxAcc", "per_iou", 50), ".1f", "higher"),
    ("MaxBoxAccV2", "MaxBoxAccV2", ("localization", "maxboxacc", "MaxBoxAccV2", "mean"), ".1f", "higher"),
    ("PxAP", "PxAP", ("localization", "PxAP"), ".1f", "higher"),
    ("deletion_auc", "Deletion", ("faithfulness", "deletion_auc"), ".3f", "lower"),
    ("insertion_auc", "Insertion", ("faithfulness", "insertion_auc"), ".3f", "higher"),
    ("road_morf", "ROAD MoRF", ("faithfulness", "road_morf"), ".3f", "lower"),
    ("road_lerf", "ROAD LeRF", ("faithfulness", "road_lerf"), ".3f", "higher"),
    ("road_combined", "ROAD comb.", ("faithfulness", "road_combined"), ".3f", "higher"),
    ("pointing_game", "Pointing %", ("faithfulness", "pointing_game"), ".1%", "higher"),
    ("infidelity", "Infidelity", ("faithfulness", "infidelity"), ".3g", "lower"),
    ("sensitivity_max", "Sens. max", ("faithfulness", "sensitivity_max"), ".3f", "lower"),
    ("randomization_spearman", "ρ rand. model", ("sanity", "randomization_spearman"), ".2f", "lower"),
    ("random_logit_spearman", "ρ rand. logit", ("sanity", "random_logit_spearman"), ".2f", "lower"),
)

_PROTOCOLS = (
    "**The seeds' protocol** (TS-CAM's code, methods.md §4a): map resized bilinearly to the input, min-max, one fixed "
    "CAM threshold (`cam_threshold` below), the largest contour's box. GT-known Loc: box of the true class with "
    "IoU ≥ 0.5; Top-1 Loc: top-1 class right and IoU > 0.5.",
    "**wsolevaluation's protocol** (Choe et al., CVPR 2020, methods.md §4b): bicubic resize, min-max, 100 thresholds; "
    "MaxBoxAcc = best accuracy at IoU 50 over the thresholds with the largest contour; MaxBoxAccV2 = mean over IoU "
    "30/50/70 with every contour; PxAP = pixel average precision against the masks.",
    "**Faithfulness** (methods.md §8): deletion / insertion AUC of the target's softmax probability (pixels removed "
    "to 0 in the model's input space, or inserted onto a blurred copy, most relevant first); ROAD with "
    "pytorch-grad-cam's own `ROADMostRelevantFirst`, `ROADLeastRelevantFirst`, `ROADCombined` (change of the "
    "softmax probability; percentiles below); energy-based pointing game (share of the map's energy inside the "
    "GT boxes); Captum's own `infidelity` (normalised; Gaussian perturbations, σ = 0.1 in the model's input space) "
    "and `sensitivity_max` (uniform L∞ perturbations of radius 0.02), through `ExplainerAttribution`, with "
    "`captum_perturbations` perturbations per image.",
    "**Sanity** (Adebayo et al., 2018): Spearman correlation of the maps with those of the same model with every "
    "weight re-initialised, and with the maps of another, random class. Low is good: the maps depend on the weights "
    "and on the class. TransAttention is class-agnostic by design, so its random-logit correlation is 1.",
    "**Cost**: seconds per image and peak memory of one call, each over the plain forward pass of the same model on "
    "the same batches in the same run. TS-CAM, TransAttention and TransCAM share one pass (charged to each).",
)


def lookup(row: Dict[str, Any], path: Sequence[Any]) -> Optional[float]:
    """The value at ``path`` of a row, or ``None`` where it was not measured."""
    value: Any = row
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key, value.get(str(key)) if not isinstance(key, str) else None)
        if value is None:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class BenchReport:
    """Everything ``bench`` measured, and how.

    Args:
        models: per model: label, forward cost, and one row per explainer (see ``bench_model``).
        settings: the :class:`~tscam_explain.bench.BenchSettings` used, as a dict.
        data: the dataset's description.
        environment: device, threads, package versions, date.
        seconds: wall time of the whole run.
        overlays: per model, what the overlay figure shows (arrays; not written to JSON).
    """

    models: List[Dict[str, Any]]
    settings: Dict[str, Any]
    data: str
    environment: Dict[str, Any]
    seconds: float
    overlays: Dict[str, Dict[str, Any]] = field(default_factory=dict, repr=False)

    def rows(self) -> List[Dict[str, Any]]:
        """Every (model, explainer) row, with its model's label under ``"model"``."""
        return [{"model": model["model"], **row} for model in self.models for row in model["rows"]]

    def to_dict(self) -> Dict[str, Any]:
        return {"data": self.data, "settings": self.settings, "environment": self.environment,
                "seconds": self.seconds, "models": self.models}

    def table(self) -> str:
        """The side-by-side table in markdown (measured columns only)."""
        rows = self.rows()
        columns = [column for column in COLUMNS if any(lookup(row, column[2]) is not None for row in rows)]
        arrows = {"lower": "↓", "higher": "↑"}
        lines = ["| model | explainer | " + " | ".join(f"{c[1]} {arrows[c[4]]}" for c in columns) + " |",
                 "|---|---|" + "---:|" * len(columns)]
        for row in rows:
            cells = []
            for _, _, path, fmt, _ in columns:
                value = lookup(row, path)
                cells.append("–" if value is None else format(value, fmt))
            shared = " (shared pass)" if lookup(row, ("cost", "shared_pass")) else ""
            lines.append(f"| {row['model']} | {row['explainer']}{shared} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self, figures: Sequence[str] = ()) -> str:
        settings = self.settings
        lines = ["# Explainers side by side", "",
                 f"Data: {self.data}. Device: {self.environment.get('device')}, "
                 f"{self.environment.get('threads')} CPU threads; {self.seconds:.0f} s in all.", "",
                 self.table(), "",
                 "↓ lower is better, ↑ higher is better; – not measured. Localisation and classification in %.", ""]
        lines += ["## What each number is", ""] + [f"- {text}" for text in _PROTOCOLS]
        lines += ["", "## Images per measurement", ""]
        for model in self.models:
            lines.append(f"- {model['model']} ({model['model_class']}, input {model['input_size'][0]} px): "
                         f"{model['images']} images; forward {model['forward']['seconds_per_image'] * 1000:.2f} ms "
                         "per image" + (f", peak {model['forward']['peak_mib']:.1f} MiB per batch"
                                        if model['forward']['peak_mib'] is not None else ""))
            for row in model["rows"]:
                counts = [f"explained {row['images']}"]
                if "faithfulness" in row:
                    counts += [f"{_COUNT_LABELS.get(key, key)} {value}" for key, value in row["faithfulness"]["images"].items()]
                if "sanity" in row:
                    counts.append(f"sanity {row['sanity']['images']}")
                    undefined = sum(row["sanity"]["undefined"].values())
                    if undefined:
                        counts.append(f"{undefined} correlation(s) undefined (constant map), left out")
                lines.append(f"  - {row['explainer']}: " + ", ".join(counts))
        lines += ["", "## Best thresholds and errors", "",
                  "| model | explainer | cam threshold (seeds) | MaxBoxAcc best threshold | MaxBoxAccV2 @30/50/70 "
                  "| correct / Cls / M-Ins / Part / More / OT (% of images, the seeds' error analysis) |",
                  "|---|---|---:|---:|---|---|"]
        for row in self.rows():
            seeds = row.get("localization", {}).get("tscam", {})
            boxes = row.get("localization", {}).get("maxboxacc", {})
            if not seeds and not boxes:
                continue
            v2 = boxes.get("MaxBoxAccV2", {})
            per_iou = " / ".join(f"{v2['per_iou'][iou]:.1f}" for iou in v2.get("per_iou", {}))
            errors = seeds.get("errors", {})
            error_text = " / ".join(f"{errors[key]:.1f}" for key in ERROR_TYPES if key in errors)
            threshold = lookup(row, ("localization", "maxboxacc", "MaxBoxAcc", "best_threshold", 50))
            lines.append(f"| {row['model']} | {row['explainer']} | {seeds.get('cam_threshold', '–')} | "
                         f"{'–' if threshold is None else f'{threshold:.2f}'} | {per_iou or '–'} | {error_text or '–'} |")
        lines += ["", "## Settings", ""] + [f"- {key}: {value}" for key, value in settings.items()]
        lines += ["", "## Environment", ""] + [f"- {key}: {value}" for key, value in self.environment.items()]
        if figures:
            lines += ["", "## Figures", ""] + [f"![{Path(name).stem}]({name})" for name in figures]
        return "\n".join(lines) + "\n"

    def save(self, directory: Union[str, Path], figures: bool = True) -> List[Path]:
        """Write ``report.json``, ``report.md``, ``results.csv`` and (``figures``) the PNG figures.

        Args:
            directory: the output folder (created; must not be a file).
            figures: also draw the figures (:mod:`.figures`).

        Returns:
            The files written.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"the output folder {directory} exists and is not a folder")
        directory.mkdir(parents=True, exist_ok=True)
        written: List[Path] = []
        if figures:
            from .figures import draw_figures
            written += draw_figures(self, directory)
        json_path = directory / "report.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=1, default=_jsonable) + "\n", encoding="utf-8")
        csv_path = directory / "results.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["model", "explainer", "images"] + [column[0] for column in COLUMNS])
            for row in self.rows():
                writer.writerow([row["model"], row["explainer"], row["images"]]
                                + ["" if lookup(row, c[2]) is None else f"{lookup(row, c[2]):.6g}" for c in COLUMNS])
        markdown_path = directory / "report.md"
        markdown_path.write_text(self.markdown([path.name for path in written]), encoding="utf-8")
        return [json_path, markdown_path, csv_path] + written


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
