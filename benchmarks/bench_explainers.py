"""Explainer cost as a multiple of a plain forward pass (time and peak memory), in one run.

    python benchmarks/bench_explainers.py [--model deit_small_patch16_224] [--batch 8] [--rounds 9]

Random-init weights (the cost does not depend on them). Timings are interleaved round-robin so the
machine's noise hits every method alike; each method's time is its median over the rounds, and ratios
are taken against the plain forward of the same run. Peak memory is measured per method in a fresh
subprocess (Linux, glibc mmap threshold fixed at 64 KiB): peak RSS during two calls minus the RSS just
before them, median of three processes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict

import timm
import torch

from tscam_explain import create_tscam, make_explainer

# name -> (what is explained, explainer name or None for the plain forward, batch size override)
METHODS = {
    "forward": ("vit", None),
    "tscam (training-free)": ("vit", "tscam"),
    "transattention": ("vit", "transattention"),
    "forward (TS-CAM model)": ("tscam", None),
    "tscam (TS-CAM model)": ("tscam", "tscam"),
    "gradcam": ("vit", "gradcam"),
    "layercam": ("vit", "layercam"),
}
TRT_METHODS = {"trt": ("trt", "trt")}
SCORECAM = {"scorecam (batch 1)": ("vit", "scorecam")}


def build(kind: str, model_name: str, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return timm.create_model(model_name, num_classes=num_classes).eval()
    if kind == "tscam":
        return create_tscam(model_name, num_classes=num_classes).eval()
    from tscam_explain.models import create_trt
    return create_trt(model_name, num_classes=num_classes).eval()


def runner(kind: str, explainer_name, model_name: str, num_classes: int, x: torch.Tensor) -> Callable[[], None]:
    model = build(kind, model_name, num_classes)
    if explainer_name is None:
        def forward() -> None:
            with torch.no_grad():
                model(x)
        return forward
    explainer = make_explainer(explainer_name, model)
    return lambda: explainer(x, None)


def available_methods() -> Dict[str, tuple]:
    methods = dict(METHODS)
    try:
        from tscam_explain.models import create_trt  # noqa: F401
        methods.update(TRT_METHODS)
    except ImportError:
        pass
    return methods


def memory_probe(name: str, model_name: str, batch: int, num_classes: int) -> float:
    """Peak RSS increase (MiB) of two calls of one method, in this (fresh) process."""
    kind, explainer_name = {**available_methods(), **SCORECAM}[name]
    x = torch.randn(batch, 3, 224, 224)
    call = runner(kind, explainer_name, model_name, num_classes, x)
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")  # Linux: reset the peak-RSS mark (VmHWM) to the current RSS
    call()
    call()
    return _status_mib("VmHWM") - before


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as stream:
        line = next(line for line in stream if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.model, args.batch, args.num_classes)))
        return

    methods = available_methods()
    x = torch.randn(args.batch, 3, 224, 224)
    calls = {name: runner(kind, ex, args.model, args.num_classes, x) for name, (kind, ex) in methods.items()}
    for call in calls.values():  # warm-up
        call()
    times: Dict[str, list] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    if not args.skip_scorecam:
        x1 = x[:1]
        call = runner("vit", "scorecam", args.model, args.num_classes, x1)
        start = time.perf_counter()
        call()
        seconds["scorecam (batch 1)"] = time.perf_counter() - start

    def probe(name: str, batch: int) -> float:
        # a fixed glibc mmap threshold returns every freed tensor to the OS at once, so RSS follows
        # the live tensors instead of the allocator's heap growth (which made readings jump by ±15 %)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "--memory-probe", name, "--model", args.model,
                              "--batch", str(batch), "--num-classes", str(args.num_classes)],
                             check=True, capture_output=True, text=True, env=env).stdout
        return float(out.strip().splitlines()[-1])

    memory = {name: statistics.median(probe(name, args.batch) for _ in range(3)) for name in calls}
    baseline = {"vit": "forward", "tscam": "forward (TS-CAM model)", "trt": "forward"}
    print(f"model {args.model}, batch {args.batch}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| method | seconds / call | × forward | peak memory (MiB) | × forward memory |")
    print("|---|---|---|---|---|")
    for name, value in seconds.items():
        kind = {**methods, **SCORECAM}[name][0]
        base = baseline[kind]
        per_image = " (per image)" if name.startswith("scorecam") else ""
        ratio = value / (seconds[base] / (args.batch if per_image else 1))
        mem = f"{memory[name]:.0f} | {memory[name] / memory[base]:.2f}" if name in memory else "– | –"
        print(f"| {name} | {value:.3f} | {ratio:.2f}{per_image} | {mem} |")


if __name__ == "__main__":
    main()
