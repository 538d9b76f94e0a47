"""The bench's figures (PNG): the overlay grid, a bar chart per metric family, GT-known vs IoU, cost vs quality.

Overlays use pytorch-grad-cam's ``show_cam_on_image``; charts use matplotlib's non-interactive backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import cv2
import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402

from .report import COLUMNS, lookup  # noqa: E402

if TYPE_CHECKING:
    from .report import BenchReport

__all__ = ["draw_figures", "FAMILIES"]

#: the bar charts: file stem → (title, CSV columns)
FAMILIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "bars_localization": ("Localisation (%)", ("top1_cls", "gt_known", "top1_loc", "MaxBoxAcc", "MaxBoxAccV2", "PxAP")),
    "bars_faithfulness": ("Faithfulness", ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_combined",
                                           "pointing_game", "infidelity", "sensitivity_max")),
    "bars_sanity": ("Sanity: Spearman ρ (lower: maps depend on weights / class)",
                    ("randomization_spearman", "random_logit_spearman")),
    "bars_cost": ("Cost (× plain forward)", ("x_forward", "x_forward_memory")),
}
_PANEL = 128  # overlay panel side in pixels
_GT_COLOUR = (40, 220, 40)
_PRED_COLOUR = (240, 40, 40)


def _draw_box(image: np.ndarray, box: Sequence[int], colour: Tuple[int, int, int], scale: float) -> None:
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    cv2.rectangle(image, (x0, y0), (x1, y1), colour, 2)


def overlay_grid(report: "BenchReport", path: Path) -> Path:
    """Rows: images; columns: the input, then every (model, explainer) with its map, the GT boxes
    (green) and the box MaxBoxAcc draws at its best threshold (red)."""
    columns = [(model["model"], row["explainer"]) for model in report.models for row in model["rows"]
               if row["explainer"] in report.overlays.get(model["model"], {}).get("explainers", {})]
    first = next(iter(report.overlays.values()))
    count = min(len(overlay["images"]) for overlay in report.overlays.values())
    header = 34
    grid = np.full((header + count * (_PANEL + 4), (len(columns) + 1) * (_PANEL + 4), 3), 255, np.uint8)
    titles = [("input", "GT green")] + [(name, f"@{model}") for model, name in columns]
    for column, (title, subtitle) in enumerate(titles):
        x = column * (_PANEL + 4) + 2
        cv2.putText(grid, title[:18], (x, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(grid, subtitle[:20], (x, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (90, 90, 90), 1, cv2.LINE_AA)
    for index in range(count):
        y = header + index * (_PANEL + 4)
        image = first["images"][index]
        scale = _PANEL / image.shape[0]
        rgb = cv2.resize(image, (_PANEL, _PANEL), interpolation=cv2.INTER_LINEAR)
        panel = rgb.copy()
        for box in first["gt_boxes"][index]:
            _draw_box(panel, box, _GT_COLOUR, scale)
        grid[y:y + _PANEL, 2:2 + _PANEL] = panel
        for column, (model, name) in enumerate(columns, start=1):
            overlay = report.overlays[model]
            own = overlay["images"][index]
            own_scale = _PANEL / own.shape[0]
            explained = overlay["explainers"][name]
            cam = cv2.resize(explained["maps"][index], (_PANEL, _PANEL), interpolation=cv2.INTER_LINEAR)
            background = cv2.resize(own, (_PANEL, _PANEL), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
            panel = show_cam_on_image(background, np.clip(cam, 0, 1), use_rgb=True)
            for box in overlay["gt_boxes"][index]:
                _draw_box(panel, box, _GT_COLOUR, own_scale)
            if explained["boxes"] is not None:
                _draw_box(panel, explained["boxes"][index], _PRED_COLOUR, own_scale)
            x = column * (_PANEL + 4) + 2
            grid[y:y + _PANEL, x:x + _PANEL] = panel
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path


def _bars(report: "BenchReport", path: Path, title: str, keys: Sequence[str]) -> Path:
    """One horizontal bar chart per measured metric of the family, a bar per (model, explainer)."""
    rows = report.rows()
    columns = [column for column in COLUMNS if column[0] in keys]
    measured = [column for column in columns if any(lookup(row, column[2]) is not None for row in rows)]
    panels = max(len(measured), 1)
    per_row = min(panels, 3)
    lines = (panels + per_row - 1) // per_row
    figure, axes = plt.subplots(lines, per_row, figsize=(4.6 * per_row + 1.6, (0.24 * len(rows) + 1.1) * lines),
                                squeeze=False)
    labels = [f"{row['explainer']} @{row['model']}" for row in rows]
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(rows), 2)))
    positions = np.arange(len(rows))[::-1]  # first row on top
    for index, axis in enumerate(axes.flat):
        if index >= len(measured):
            axis.set_axis_off()
            continue
        key, heading, path_in_row, _, better = measured[index]
        scale = 100.0 if key == "pointing_game" else 1.0
        values = [lookup(row, path_in_row) for row in rows]
        widths = [np.nan if value is None else value * scale for value in values]
        axis.barh(positions, widths, color=colours[:len(rows)])
        axis.set_title(f"{heading} ({better} is better)", fontsize=9)
        axis.set_yticks(positions)
        axis.set_yticklabels(labels if index % per_row == 0 else [], fontsize=7)
        axis.axvline(0, color="black", linewidth=0.5)
        axis.tick_params(axis="x", labelsize=7)
        for position, width in zip(positions, widths):
            if not np.isnan(width):
                axis.text(width, position, f" {width:.3g}", va="center", ha="left" if width >= 0 else "right",
                          fontsize=6)
    if not measured:
        axes[0][0].set_axis_on()
        axes[0][0].text(0.5, 0.5, "not measured", ha="center", va="center")
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def _gt_known_curves(report: "BenchReport", path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    rows = report.rows()
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(rows), 2)))
    styles = {model["model"]: ("-", "--", ":", "-.")[index % 4] for index, model in enumerate(report.models)}
    for colour, row in zip(colours, rows):
        curve = row.get("localization", {}).get("tscam", {}).get("gt_known_curve")
        if not curve:
            continue
        ious = sorted(float(iou) for iou in curve)
        values = [curve[iou] if iou in curve else curve[str(iou)] for iou in sorted(curve, key=float)]
        axis.plot(ious, values, marker="o", markersize=3, color=colour, linestyle=styles[row["model"]],
                  label=f"{row['explainer']} @{row['model']}")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=7, loc="upper right")
    return _finish(figure, axis, path, "IoU threshold", "GT-known localisation accuracy (%)",
                   "GT-known Loc vs IoU (the seeds' protocol)")


def _cost_quality(report: "BenchReport", path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    points = []
    for row in report.rows():
        cost = lookup(row, ("cost", "x_forward"))
        quality = lookup(row, ("localization", "maxboxacc", "MaxBoxAccV2", "mean"))
        if cost is not None and quality is not None:
            axis.scatter([cost], [quality], s=30)
            points.append((cost, quality, f"{row['explainer']} @{row['model']}"))
    axis.set_xscale("log")
    _place_labels(figure, axis, points)
    return _finish(figure, axis, path, "time per image (× plain forward, log scale)", "MaxBoxAccV2 (%)",
                   "Cost against localisation quality")


def _place_labels(figure, axis, points: Sequence[Tuple[float, float, str]], fontsize: int = 7) -> None:
    """Label each point to its right, moving a label down below any label it would overlap (points that
    sit close together, as explainers of equal cost and quality do, would otherwise print over each other)."""
    axis.autoscale_view()
    to_points = 72.0 / figure.dpi
    line, char = fontsize + 2.0, 0.55 * fontsize  # a label's height and a character's mean width, in points
    placed: List[Tuple[float, float, float]] = []  # (left, right, baseline) of each label, in points
    located = [(axis.transData.transform((cost, quality)) * to_points, cost, quality, text)
               for cost, quality, text in points]
    for (x, y), cost, quality, text in sorted(located, key=lambda item: -item[0][1]):
        left, right, baseline = x + 4, x + 4 + char * len(text), y + 3
        moved = True
        while moved:
            moved = False
            for other_left, other_right, other_baseline in placed:
                if left < other_right and other_left < right and abs(baseline - other_baseline) < line:
                    baseline, moved = other_baseline - line, True
        placed.append((left, right, baseline))
        axis.annotate(text, (cost, quality), fontsize=fontsize, xytext=(4, baseline - y), textcoords="offset points")


def _finish(figure, axis, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def draw_figures(report: "BenchReport", directory: Path) -> List[Path]:
    """Write every figure into ``directory``; return their paths."""
    written = []
    if report.overlays:
        written.append(overlay_grid(report, directory / "overlays.png"))
    for stem, (title, keys) in FAMILIES.items():
        written.append(_bars(report, directory / f"{stem}.png", title, keys))
    written.append(_gt_known_curves(report, directory / "gt_known_vs_iou.png"))
    written.append(_cost_quality(report, directory / "cost_vs_quality.png"))
    return written
