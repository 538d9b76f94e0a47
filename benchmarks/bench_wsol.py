"""Speed of MaxBoxAccV2 (100 thresholds, all contours) against a straightforward implementation.

``--largest`` measures MaxBoxAcc instead (the largest contour at each threshold).

Two sets of 224x224 maps from ``shared/wsol_reference/cases.py`` (beside the repository):

* smooth: the 20 ``lowres_cams`` (14x14) bicubic-upsampled and normalised as wsolevaluation does,
  tiled to ``--smooth-count`` maps;
* noisy: the reference cases themselves (blobs plus pixel noise), ``--noisy-count`` of them.

For each set it times :func:`naive_max_box_acc` (one threshold, one ``findContours`` at a time, in the
spirit of wsolevaluation's ``BoxEvaluator``) and ``tscam_explain.wsol.BoxAccuracy`` (one thread; then
``--workers`` threads, which the compiled sweep allows since it releases the GIL; then ``--workers``
processes), checks that all results are identical, and prints a markdown table.

Run: ``.venv/bin/python benchmarks/bench_wsol.py``
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from tscam_explain.wsol import BoxAccuracy, box_iou, cam_thresholds, maxboxacc_scoremap
from tscam_explain.wsol import sweep as sweep_module

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IOU_THRESHOLDS = (30, 50, 70)


def naive_box_ious(scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray,
                   multi_contour: bool) -> np.ndarray:
    """Best IoU per threshold of one map: threshold, find contours, read boxes, one threshold at a time."""
    scoremap_image = (scoremap * 255).astype(np.uint8)
    height, width = scoremap_image.shape
    boxes: List[List[int]] = []
    boxes_per_threshold: List[int] = []
    for threshold in thresholds:
        _, binary = cv2.threshold(scoremap_image, int(threshold * np.max(scoremap_image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            boxes.append([0, 0, 0, 0])
            boxes_per_threshold.append(1)
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        boxes_per_threshold.append(len(contours))
    best_per_box = box_iou(np.array(boxes), gt_boxes).max(axis=1)
    best, start = [], 0
    for count in boxes_per_threshold:
        best.append(best_per_box[start:start + count].max())
        start += count
    return np.array(best)


def naive_max_box_acc(scoremaps: np.ndarray, gt_boxes: Sequence[np.ndarray], *, multi_contour: bool,
                      cam_curve_interval: float = 0.01) -> Dict[int, List[float]]:
    """Accuracy curves {IoU %: [% per threshold]} by the straightforward loop."""
    thresholds = cam_thresholds(cam_curve_interval)
    correct = {iou: np.zeros(len(thresholds)) for iou in IOU_THRESHOLDS}
    for scoremap, boxes in zip(scoremaps, gt_boxes):
        best = naive_box_ious(scoremap, boxes, thresholds, multi_contour)
        for iou in IOU_THRESHOLDS:
            correct[iou][best >= iou / 100] += 1
    return {iou: (counts * 100.0 / float(len(scoremaps))).tolist() for iou, counts in correct.items()}


def load_cases():
    """``cases.load(7)`` from the shared reference folder beside the repository."""
    path = SHARED / "wsol_reference" / "cases.py"
    if not path.exists():
        sys.exit(f"benchmark data not found: {path} (the shared/ folder must sit beside the repository)")
    spec = importlib.util.spec_from_file_location("wsol_reference_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(7)


def benchmark_sets(smooth_count: int, noisy_count: int) -> Dict[str, Tuple[np.ndarray, List[np.ndarray]]]:
    cases = load_cases()
    gt = [cases["boxes"][i, :cases["box_counts"][i]] for i in range(len(cases["boxes"]))]
    smooth = np.stack([maxboxacc_scoremap(cam, (224, 224)) for cam in cases["lowres_cams"]])
    smooth_index = np.arange(smooth_count) % len(smooth)
    return {
        "smooth (upsampled 14x14 CAMs)": (smooth[smooth_index], [gt[i % len(gt)] for i in range(smooth_count)]),
        "noisy (reference cases)": (cases["scoremaps"][:noisy_count], gt[:noisy_count]),
    }


def best_time(function: Callable[[], object], repeats: int) -> Tuple[float, object]:
    """The fastest of ``repeats`` runs (the machine may be shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def fast_curves(scoremaps: np.ndarray, gt_boxes: List[np.ndarray], executor=None,
                largest: bool = False) -> Dict[int, List[float]]:
    accumulator = BoxAccuracy(0.01, IOU_THRESHOLDS, largest_contour=largest, all_contours=not largest,
                              executor=executor)
    accumulator.update(scoremaps, gt_boxes)
    return accumulator.compute()["MaxBoxAcc" if largest else "MaxBoxAccV2"]["curves"]


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smooth-count", type=int, default=300)
    parser.add_argument("--noisy-count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2,
                        help="threads, then processes, for the parallel runs (default: %(default)s)")
    parser.add_argument("--largest", action="store_true", help="measure MaxBoxAcc (largest contour) instead")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of every run, the fastest counts (default: %(default)s)")
    args = parser.parse_args()

    sets = benchmark_sets(args.smooth_count, args.noisy_count)
    threads = ThreadPoolExecutor(args.workers)
    processes = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    warm_up = sets["smooth (upsampled 14x14 CAMs)"]
    fast_curves(warm_up[0][:8], warm_up[1][:8], processes)  # start the workers outside the timings
    rows = []
    for name, (scoremaps, gt_boxes) in sets.items():
        naive_seconds, naive = best_time(
            lambda: naive_max_box_acc(scoremaps, gt_boxes, multi_contour=not args.largest), args.repeats)
        rates = []
        for executor in (None, threads, processes):
            seconds, curves = best_time(lambda: fast_curves(scoremaps, gt_boxes, executor, args.largest),
                                        args.repeats)
            if curves != naive:
                sys.exit(f"results differ from the straightforward loop on the {name} maps")
            rates.append(len(scoremaps) / seconds)
        rows.append((name, len(scoremaps), len(scoremaps) / naive_seconds, rates))
    threads.shutdown()
    processes.shutdown()

    engine = "compiled (_levelsets)" if sweep_module._levelsets is not None else "numpy fallback (extension not built)"
    print(f"CPU: {cpu_model()} ({multiprocessing.cpu_count()} cores), OpenCV {cv2.__version__}, numpy {np.__version__}")
    metric = ("MaxBoxAcc, largest contour, numpy/OpenCV sweep" if args.largest
              else f"MaxBoxAccV2, all contours, {engine} sweep")
    print(f"{metric}; 224x224 maps, 100 thresholds; identical curves in every run.\n")
    print(f"| maps | count | straightforward (img/s) | tscam_explain, 1 thread (img/s) | ratio "
          f"| {args.workers} threads (img/s) | ratio | {args.workers} processes (img/s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, count, naive_rate, rates in rows:
        cells = " | ".join(f"{rate:.0f} | {rate / naive_rate:.1f}x" for rate in rates)
        print(f"| {name} | {count} | {naive_rate:.0f} | {cells} |")


if __name__ == "__main__":
    main()
