"""Speed of wsolevaluation's box metrics: compiled sweep against per-threshold loop, and evaluate()'s metric path.

Maps, 224x224, from ``shared/wsol_reference/cases.py`` (beside the repository):

* smooth: the 20 ``lowres_cams`` (14x14) bicubic-upsampled and normalised as wsolevaluation does,
  tiled to ``--smooth-count`` maps;
* noisy: the reference cases themselves (blobs plus pixel noise), ``--noisy-count`` of them.

**The sweep.** For each set and each metric (MaxBoxAcc: the largest contour; MaxBoxAccV2: every
contour; and both together), ``BoxAccuracy`` (the float-to-uint8 conversion, the input checks, the
sweep and the counting) runs with the per-threshold loop (``per_threshold_box_ious``, the definition
and the fallback without the extension: one ``cv2.threshold`` + ``cv2.findContours`` per threshold),
with the compiled pass in one thread, and with the compiled pass over ``--workers`` threads: the
three in turn, ``--repeats`` rounds, the fastest of each counts. Every run's curves must equal the loop's.

**evaluate().** ``evaluate(protocol="maxboxacc")`` on ``--eval-count`` images with an explainer that
replays stored 14x14 maps and logits (``tscam_explain.bench.runner.StoredMaps``), so that only the
harness and its metrics cost (map resize and
normalisation, classification, MaxBoxAcc and MaxBoxAccV2): images per second of wall time and per
CPU second of the process (all its threads: the rate per core), with the one metric thread and with
``metric_workers=--workers``. torch runs one thread: here it only batches blank images.

Run: ``.venv/bin/python benchmarks/bench_wsol.py``
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tscam_explain.bench.runner import StoredMaps
from tscam_explain.wsol import BoxAccuracy, evaluate, maxboxacc_scoremaps
from tscam_explain.wsol import sweep as sweep_module

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
METRICS = {"MaxBoxAcc": (True, False), "MaxBoxAccV2": (False, True), "both": (True, True)}


def load_cases():
    """``cases.load(7)`` from the shared reference folder beside the repository."""
    path = SHARED / "wsol_reference" / "cases.py"
    if not path.exists():
        sys.exit(f"benchmark data not found: {path} (the shared/ folder must sit beside the repository)")
    spec = importlib.util.spec_from_file_location("wsol_reference_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(7)


@contextlib.contextmanager
def per_threshold_loop() -> Iterator[None]:
    """Sweeps as without the extension: every one runs the per-threshold loop."""
    compiled = sweep_module._levelsets
    sweep_module._levelsets = None
    try:
        yield
    finally:
        sweep_module._levelsets = compiled


def fastest(functions: Sequence[Callable[[], object]], repeats: int) -> Tuple[List[float], List[object]]:
    """Each function's fastest of ``repeats`` runs, taken in turn (round after round, so that a busy
    moment of the shared machine hits all of them), and its last result."""
    seconds, results = [float("inf")] * len(functions), [None] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            results[index] = function()
            seconds[index] = min(seconds[index], time.perf_counter() - start)
    return seconds, results


def box_accuracy(scoremaps: np.ndarray, gt_boxes: List[np.ndarray], metric: str, executor=None,
                 loop: bool = False) -> Dict:
    """``BoxAccuracy``'s curves of one metric (or both), by the compiled pass or by the per-threshold loop."""
    largest, every = METRICS[metric]
    accumulator = BoxAccuracy(0.01, largest_contour=largest, all_contours=every, executor=executor)
    with per_threshold_loop() if loop else contextlib.nullcontext():
        accumulator.update(scoremaps, gt_boxes)
    return {name: result["curves"] for name, result in accumulator.compute().items()}


class StoredBoxes(Dataset):
    """What evaluate() reads from a reader: a (blank) 224x224 image, a label and the boxes of each item."""

    protocol = "maxboxacc"

    def __init__(self, labels: np.ndarray, boxes: List[np.ndarray]) -> None:
        self.labels, self.boxes = labels, boxes
        self.image = torch.zeros(1, 224, 224, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Dict:
        return {"image": self.image, "label": int(self.labels[index]), "boxes": torch.from_numpy(self.boxes[index]),
                "image_id": str(index), "fixes": []}


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
    parser.add_argument("--noisy-count", type=int, default=30)
    parser.add_argument("--eval-count", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2, help="threads for the parallel runs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing rounds, every run once per round; the fastest counts (default: %(default)s)")
    args = parser.parse_args()
    if sweep_module._levelsets is None:
        sys.exit("the compiled sweep (tscam_explain.wsol._levelsets) is not built: nothing to compare")
    # torch only batches the blank images here; its thread pool would just wait for cores the metrics use
    torch.set_num_threads(1)

    cases = load_cases()
    gt = [cases["boxes"][i, :cases["box_counts"][i]] for i in range(len(cases["boxes"]))]
    cams = cases["lowres_cams"]
    smooth = maxboxacc_scoremaps(cams, (224, 224))
    sets = {
        "smooth": (smooth[np.arange(args.smooth_count) % len(smooth)],
                   [gt[i % len(gt)] for i in range(args.smooth_count)]),
        "noisy": (cases["scoremaps"][:args.noisy_count], gt[:args.noisy_count]),
    }
    threads = ThreadPoolExecutor(args.workers)
    rows = []
    for set_name, (scoremaps, gt_boxes) in sets.items():
        for metric in METRICS:
            runs = [lambda: box_accuracy(scoremaps, gt_boxes, metric, loop=True),
                    lambda: box_accuracy(scoremaps, gt_boxes, metric),
                    lambda: box_accuracy(scoremaps, gt_boxes, metric, threads)]
            seconds, curves = fastest(runs, args.repeats)
            if any(result != curves[0] for result in curves[1:]):
                sys.exit(f"{metric} differs from the per-threshold loop on the {set_name} maps")
            rates = [len(scoremaps) / run_seconds for run_seconds in seconds]
            rows.append((set_name, metric, len(scoremaps), rates[0], rates[1:]))

    # evaluate(): the stored 14x14 maps of the smooth set, replayed
    count = args.eval_count
    index = np.arange(count) % len(cams)
    labels = np.random.RandomState(0).randint(0, 200, count)
    logits = torch.from_numpy(np.random.RandomState(1).normal(size=(count, 200)).astype(np.float32))
    boxes = [gt[i % len(gt)] for i in range(count)]
    expected = box_accuracy(smooth[index], boxes, "both")
    best = {workers: (float("inf"), float("inf")) for workers in (0, args.workers)}
    for _ in range(args.repeats):
        for workers in best:
            wall, cpu = time.perf_counter(), time.process_time()
            replay = StoredMaps(cams[index], logits, torch.from_numpy(labels))
            report = evaluate(replay, StoredBoxes(labels, boxes), "maxboxacc",
                              batch_size=64, progress=False, metric_workers=workers)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if {name: report.metrics[name]["curves"] for name in expected} != expected:
                sys.exit("evaluate() gives other curves than BoxAccuracy on the same maps")
            best[workers] = min(best[workers], (wall, cpu))
    eval_rows = [(workers, count / wall, count / cpu) for workers, (wall, cpu) in best.items()]
    threads.shutdown()

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"CPU: {cpu_model()} ({multiprocessing.cpu_count()} cores), load average {load} (1, 5, 15 min); "
          f"OpenCV {cv2.__version__}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print("224x224 maps, 100 thresholds; every run's curves equal the per-threshold loop's.\n")
    print(f"| maps | metric | count | per-threshold loop (img/s) | compiled, 1 thread (img/s) | ratio "
          f"| {args.workers} threads (img/s) | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for set_name, metric, count_, loop_rate, rates in rows:
        cells = " | ".join(f"{rate:.0f} | {rate / loop_rate:.1f}x" for rate in rates)
        print(f"| {set_name} | {metric} | {count_} | {loop_rate:.0f} | {cells} |")
    print(f"\nevaluate(protocol=\"maxboxacc\"), {count} replayed 14x14 maps (smooth set), batch 64, "
          "MaxBoxAcc + MaxBoxAccV2 + classification:\n")
    print("| metric threads | img/s (wall) | img per CPU second |")
    print("|---|---:|---:|")
    for workers, wall_rate, cpu_rate in eval_rows:
        print(f"| {'1 (metric_workers=0)' if workers == 0 else f'{workers} (metric_workers={workers})'} "
              f"| {wall_rate:.0f} | {cpu_rate:.0f} |")


if __name__ == "__main__":
    main()
