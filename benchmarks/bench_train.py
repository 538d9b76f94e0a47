"""Training throughput (images/s) of DeiT-S TS-CAM: our training loop vs a plain fp32 loop, in one run.

    python benchmarks/bench_train.py [--model deit_small_patch16_224] [--batch 8] [--steps 4] [--rounds 5]
                                     [--device auto]

* plain: the official kind of loop, without DataParallel: fp32, ``torch.optim.AdamW`` with its default
  (non-fused) implementation, a forward / cross-entropy / backward / step per batch of tensors already
  on the device, no data loader.
* ours: :func:`tscam_explain.train.train` with the ``tscam`` recipe on the same synthetic images,
  through its data loader, sampler and per-sample seeding (bf16 autocast and fused AdamW on CUDA;
  float32 and the default AdamW on CPU); its own ``img_per_s`` of a one-epoch run (which excludes the
  checkpoint written after the epoch).

The two alternate: each round times ``--steps`` batches of the plain loop (a fresh optimizer), then
one ``train`` call of ``--steps`` batches (which also builds a fresh optimizer), on the same model.
One untimed round warms up; each loop's result is its median over ``--rounds`` rounds. Alternating
makes a burst of load on a shared machine hit both loops alike; the per-round ratios are reported too.
Our loop writes its checkpoints (``last.pt``, ``model.pt``) after every call, into a temporary folder:
on a slow disk, put it on a RAM disk (``TMPDIR=/dev/shm``) so that the fsync of those files does not
slow down the rounds that follow (a real run writes them once per epoch of thousands of steps).

Random-init weights and synthetic 224² images: throughput does not depend on either. The script runs
unchanged on a GPU (``--device auto`` takes CUDA when present); use a larger ``--batch`` there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Dict

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tscam_explain.train import RunOptions, TrainData, build_model, get_recipe, seed_everything, train
from tscam_explain.train.components import resolve_amp
from tscam_explain.train.distributed import resolve_device


class SyntheticImages(Dataset):
    """``count`` fixed random images (already tensors, as a decoded and transformed batch would be)."""

    def __init__(self, count: int, size: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.labels = torch.randint(0, num_classes, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_block(model: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                images: torch.Tensor, labels: torch.Tensor) -> float:
    """Images/s of ``--steps`` batches of the official kind of loop (fp32, default AdamW)."""
    recipe = get_recipe("tscam", "cub")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return args.steps * args.batch / (time.perf_counter() - started)


def our_block(model: torch.nn.Module, args: argparse.Namespace, data: SyntheticImages, out_dir: str) -> float:
    """Images/s of a one-epoch :func:`train` run of ``--steps`` batches."""
    recipe = get_recipe("tscam", "cub", epochs=1, batch_size=args.batch)
    result = train(recipe, model, TrainData(data, args.num_classes),
                   RunOptions(out_dir=out_dir, device=args.device, amp=args.amp, workers=args.workers,
                              progress=False))
    return result.history[0]["img_per_s"]


def machine() -> Dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": str(torch.get_num_threads())}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: %(default)s; use 128+ on a GPU)")
    parser.add_argument("--steps", type=int, default=4, help="batches per loop and round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (medians reported)")
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="our loop's precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="our loop's loader workers (default: automatic)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = SyntheticImages(args.steps * args.batch, 224, args.num_classes)
    seed_everything(0)
    model = build_model(get_recipe("tscam", "cub"), args.num_classes, args.model).to(device)
    images, labels = data.images.to(device)[: args.batch], data.labels.to(device)[: args.batch]
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as out_dir:
        for round_index in range(args.rounds + 1):  # round 0 warms up
            plain_rate = plain_block(model, args, device, images, labels)
            our_rate = our_block(model, args, data, out_dir)
            if round_index:
                plain.append(plain_rate)
                ours.append(our_rate)
    amp = resolve_amp(args.amp, device)
    print(json.dumps({
        "device": str(device), "machine": machine(), "load_average": os.getloadavg(), "model": args.model,
        "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
        "plain_fp32_img_per_s": round(statistics.median(plain), 3), "ours_img_per_s": round(statistics.median(ours), 3),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "ratio_per_round": [round(o / p, 3) for o, p in zip(ours, plain)],
        "ours_precision": str(amp) if amp else "fp32", "ours_fused_adamw": device.type == "cuda",
    }, indent=2))


if __name__ == "__main__":
    main()
