"""What leaving the user's model as it was costs per explainer call, against a forward pass, in one run.

    python benchmarks/bench_model_state.py [--models deit_small_patch16_224,deit_base_patch16_224] [--rounds 9]
                                           [--threads 1]

Every explainer call captures the model's state and restores it (``preserving_model``: submodules,
train/eval flags, hooks, ``requires_grad``, ``.grad``, ``fused_attn``). This times that capture and
restore alone, and a batch-1 forward pass of the same model (224², CPU, random init), interleaved round
by round; each is the median over the rounds and the ratio is taken within the run.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import timm
import torch

from tscam_explain.explainers import preserving_model


def _seconds(call: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deit_small_patch16_224,deit_base_patch16_224")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on busy shared cores two threads made the forward erratic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| model | modules | preserving_model (ms) | batch-1 forward (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = timm.create_model(name, pretrained=False).eval()
        images = torch.randn(1, 3, 224, 224)

        def forward() -> None:
            with torch.no_grad():
                model(images)

        def state() -> None:
            with preserving_model(model):
                pass

        forward()
        state_times, forward_times = [], []
        for _ in range(args.rounds):
            state_times.append(_seconds(state, 50))
            forward_times.append(_seconds(forward, 3))
        kept, passed = statistics.median(state_times), statistics.median(forward_times)
        print(f"| {name} | {len(list(model.modules()))} | {kept * 1e3:.2f} | {passed * 1e3:.1f} | {kept / passed:.4f} |")


if __name__ == "__main__":
    main()
