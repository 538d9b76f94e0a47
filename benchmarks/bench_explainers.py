"""Explainer cost as a multiple of a plain forward pass (time and peak memory), in one run.

    python benchmarks/bench_explainers.py [--model deit_small_patch16_224] [--batch 8] [--rounds 9] [--threads N]
                                          [--methods a,b] [--memory-processes 3]

Random-init weights (the cost does not depend on them). ``rollout``, ``chefer`` and ``legrad`` are measured
beside an eager reference implementation of each (``tests/eager_baselines.py``: a copy of the model with
``fused_attn=False``, attention read at ``attn_drop``, autograd gradients, full N × N matrices; made once,
then each call computes the maps and upsamples and normalises them as our explainers do).
``--methods`` picks among every method below, including pytorch-grad-cam's and Captum's other methods
(:data:`EXTRA`, in the rounds) and the costly ones run once at batch 1 (:data:`PER_IMAGE`); by default
:data:`METHODS` and Score-CAM run. Timings are interleaved round-robin so the
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
from pathlib import Path
from typing import Callable, Dict

import timm
import torch

from tscam_explain import create_tscam, make_explainer
from tscam_explain.explainers import upsample_maps
from tscam_explain.vit import token_layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import eager_baselines  # noqa: E402  (the tests' eager references)

# name -> (what is explained, explainer name or None for the plain forward, batch size override)
METHODS = {
    "forward": ("vit", None),
    "tscam (training-free)": ("vit", "tscam"),
    "transattention": ("vit", "transattention"),
    "forward (TS-CAM model)": ("tscam", None),
    "tscam (TS-CAM model)": ("tscam", "tscam"),
    "gradcam": ("vit", "gradcam"),
    "layercam": ("vit", "layercam"),
    "rollout": ("vit", "rollout"),
    "rollout (eager reference)": ("vit", "eager:rollout"),
    "chefer": ("vit", "chefer"),
    "chefer (eager reference)": ("vit", "eager:chefer"),
    "legrad": ("vit", "legrad"),
    "legrad (eager reference)": ("vit", "eager:legrad"),
}
TRT_METHODS = {"trt": ("trt", "trt")}
#: pytorch-grad-cam's other methods that run on a timm ViT, and Captum's cheaper ones: in the rounds when chosen
EXTRA = {name: ("vit", name) for name in (
    "gradcamplusplus", "xgradcam", "hirescam", "gradcamelementwise", "eigencam", "eigengradcam", "fem", "randomcam",
    "segeigencam", "kpcacam", "shapleycam", "saliency", "inputxgradient", "gradientshap", "noisetunnel-saliency", "noisetunnel-inputxgradient")}
#: tens to hundreds of model runs per image: timed once, at batch 1, compared per image
PER_IMAGE = {f"{name} (batch 1)": ("vit", name) for name in (
    "scorecam", "ablationcam", "integratedgradients", "occlusion", "noisetunnel-integratedgradients")}


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
    if explainer_name.startswith("eager:"):
        eager = eager_baselines.eager_copy(model)
        reference = getattr(eager_baselines, explainer_name.split(":")[1])
        layout = token_layout(eager, tuple(x.shape[-2:]))

        def eager_reference() -> None:
            row = reference(eager, x)
            upsample_maps(row.reshape(len(x), *layout.grid), tuple(x.shape[-2:])).numpy()
        return eager_reference
    explainer = make_explainer(explainer_name, model)
    return lambda: explainer(x, None)


def available_methods() -> Dict[str, tuple]:
    """The methods timed in the rounds by default."""
    return {**METHODS, **TRT_METHODS}


def memory_probe(name: str, model_name: str, batch: int, num_classes: int) -> float:
    """Peak RSS increase (MiB) of two calls of one method, in this (fresh) process."""
    kind, explainer_name = {**available_methods(), **EXTRA, **PER_IMAGE}[name]
    x = torch.randn(1 if name in PER_IMAGE else batch, 3, 224, 224)
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
    parser.add_argument("--skip-scorecam", action="store_true", help="without --methods: leave Score-CAM out")
    parser.add_argument("--methods", help="comma-separated methods to run instead of the default ones "
                        "(the forwards always run)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--memory-processes", type=int, default=3, help="fresh processes per memory reading "
                        "(the median is kept; default %(default)s)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.model, args.batch, args.num_classes)))
        return

    load_before = os.getloadavg()
    methods = available_methods()
    per_image = {} if args.skip_scorecam else {"scorecam (batch 1)": PER_IMAGE["scorecam (batch 1)"]}
    if args.methods:
        wanted = {name.strip() for name in args.methods.split(",")}
        known = {**methods, **EXTRA, **PER_IMAGE}
        unknown = wanted - set(known)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; choose among {sorted(known)}")
        methods = {name: spec for name, spec in {**methods, **EXTRA}.items() if name in wanted or spec[1] is None}
        per_image = {name: spec for name, spec in PER_IMAGE.items() if name in wanted}
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
    for name, (kind, explainer_name) in per_image.items():
        call = runner(kind, explainer_name, args.model, args.num_classes, x[:1])
        start = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - start

    def probe(name: str, batch: int) -> float:
        # a fixed glibc mmap threshold returns every freed tensor to the OS at once, so RSS follows
        # the live tensors instead of the allocator's heap growth (which made readings jump by ±15 %)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        threads = ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run([sys.executable, __file__, "--memory-probe", name, "--model", args.model,
                              "--batch", str(batch), "--num-classes", str(args.num_classes), *threads],
                             check=True, capture_output=True, text=True, env=env).stdout
        return float(out.strip().splitlines()[-1])

    memory = {name: statistics.median(probe(name, args.batch) for _ in range(args.memory_processes))
              for name in calls}
    baseline = {"vit": "forward", "tscam": "forward (TS-CAM model)", "trt": "forward"}
    print(f"model {args.model}, batch {args.batch}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| method | seconds / call | × forward | peak memory (MiB) | × forward memory |")
    print("|---|---|---|---|---|")
    for name, value in seconds.items():
        kind = {**methods, **per_image}[name][0]
        base = baseline[kind]
        note = " (per image)" if name in per_image else ""
        ratio = value / (seconds[base] / (args.batch if note else 1))
        mem = f"{memory[name]:.0f} | {memory[name] / memory[base]:.2f}" if name in memory else "– | –"
        print(f"| {name} | {value:.3f} | {ratio:.2f}{note} | {mem} |")


if __name__ == "__main__":
    main()
