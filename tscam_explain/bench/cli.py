"""``tscam-explain bench`` (explainers side by side) and ``tscam-explain demo`` (the main job, offline)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

import torch

from ..pretrained import list_pretrained
from ..wsol.cli import add_dataset_arguments
from . import bench
from .data import dataset_data, synth_data
from .faithfulness import ROAD_DEFAULTS
from .runner import METRIC_FAMILIES, BenchSettings

#: the demo: the shipped models, a fresh generated test set, small counts so that it runs in minutes on 2 cores
#: TS-CAM and its ablations (the paper's Tables 5/6) on the TS-CAM model, TRT, and on the plain classifier
#: the training-free TS-CAM, the attention family and pytorch-grad-cam's baselines
DEMO_EXPLAINERS = {"tscam-synth": ("tscam", "transattention", "transcam"), "trt-synth": ("trt",),
                   "vit-synth": ("tscam", "rollout", "chefer", "legrad", "gradcam", "layercam", "scorecam")}
DEMO_MODELS = tuple(DEMO_EXPLAINERS)
DEMO_SETTINGS = dict(faithfulness_images=16, road_images=4, sanity_images=32, expensive_images=8,
                     road_combined_percentiles=(50,))
DEMO_IMAGES, DEMO_SEED = 300, 2


def _names(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to measure")
    group.add_argument("--metrics", default=",".join(METRIC_FAMILIES),
                       help="comma-separated families among %(default)s")
    group.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    group.add_argument("--limit", type=int, help="use only the first N images")
    group.add_argument("--faithfulness-images", type=int, help="images for deletion/insertion (default: all)")
    group.add_argument("--road-images", type=int, default=16, help="images for ROAD (default: %(default)s)")
    group.add_argument("--sanity-images", type=int, default=32, help="images for the sanity checks (default: %(default)s)")
    group.add_argument("--expensive-images", type=int, default=16,
                       help="images for Score-CAM and other per-image methods (default: %(default)s)")
    group.add_argument("--captum-images", type=int, default=8,
                       help="images for Captum's infidelity and max-sensitivity (default: %(default)s)")
    group.add_argument("--captum-perturbations", type=int, default=4,
                       help="Captum's n_perturb_samples for both, at least 2 (default: %(default)s)")
    group.add_argument("--road-percentiles", help="ROADCombined's percentiles, comma-separated (default: "
                                                  f"pytorch-grad-cam's {','.join(map(str, ROAD_DEFAULTS['combined_percentiles']))})")
    group.add_argument("--cam-threshold", type=float, help="the seeds' protocol threshold (default: the benchmark's)")
    group.add_argument("--seed", type=int, default=0, help="seed of the randomised model, random logits, ROAD noise")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace, **overrides) -> BenchSettings:
    values = dict(batch_size=args.batch_size, limit=args.limit, faithfulness_images=args.faithfulness_images,
                  road_images=args.road_images, sanity_images=args.sanity_images,
                  expensive_images=args.expensive_images, captum_images=args.captum_images,
                  captum_perturbations=args.captum_perturbations, cam_threshold=args.cam_threshold,
                  metrics=tuple(_names(args.metrics)), seed=args.seed, progress=not args.no_progress)
    if args.road_percentiles:
        values["road_combined_percentiles"] = tuple(float(p) for p in args.road_percentiles.split(","))
    values.update(overrides)
    return BenchSettings(**values)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``demo`` to the ``tscam-explain`` parser."""
    parser = subparsers.add_parser(
        "bench", help="explainers side by side: cost, localisation, faithfulness, sanity",
        description="Run explainers on one or more models over one dataset (default: the generated benchmark) and "
                    "write report.json, report.md, results.csv and figures. See docs/bench.md.")
    parser.add_argument("--model", action="append", dest="models", metavar="NAME_OR_FILE",
                        help=f"a shipped model ({', '.join(list_pretrained()) or 'none'}) or a model file; repeat "
                             "for several (default: the shipped models)")
    parser.add_argument("--explainers", help="comma-separated names, each run on the models it applies to "
                                             "(default: per model, ours and gradcam/layercam/scorecam)")
    data = parser.add_argument_group("data (default: a generated test set)")
    data.add_argument("--data", type=Path, help="a dataset on disk, read like 'evaluate' does")
    add_dataset_arguments(data)
    data.add_argument("--synth-images", type=int, default=DEMO_IMAGES, help="generated images (default: %(default)s)")
    data.add_argument("--synth-seed", type=int, default=DEMO_SEED,
                      help="generated set's seed (default: %(default)s; the shipped models trained on seed 1)")
    data.add_argument("--synth-size", type=int, help="generated image side (default: 96)")
    _add_measurement_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output folder (default: %(default)s)")
    parser.set_defaults(func=run)

    demo = subparsers.add_parser(
        "demo", help="the main job: the shipped models and explainers side by side on a fresh generated test set",
        description="Offline: generate a test set the shipped models never saw, run bench on TS-CAM, its ablations, "
                    "TRT, Grad-CAM, LayerCAM and Score-CAM (few images), print the table, write the report "
                    "and figures.")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--images", type=int, default=DEMO_IMAGES, help="test images (default: %(default)s)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=run_demo)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} exists and is not a folder")


def run(args: argparse.Namespace) -> int:
    _check_out(args.out)
    if args.data is not None:
        data = dataset_data(args.dataset_format, args.data, image_dir=args.image_dir, mask_dir=args.mask_dir,
                            synsets=args.synsets, split=args.split)
    else:
        size = {} if args.synth_size is None else {"size": args.synth_size}
        data = synth_data(args.out / "data", images=args.synth_images, seed=args.synth_seed, **size)
    models = args.models or list(DEMO_MODELS)
    report = bench(models, data, explainers=_names(args.explainers), settings=_settings(args), device=args.device)
    _finish(report, args.out)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    _check_out(args.out)
    start = time.perf_counter()
    data = synth_data(args.out / "data", images=args.images, seed=DEMO_SEED)
    settings = BenchSettings(progress=not args.no_progress, **DEMO_SETTINGS)
    report = bench(list(DEMO_MODELS), data, explainers=DEMO_EXPLAINERS, settings=settings, device=args.device)
    _finish(report, args.out)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _finish(report, out: Path) -> None:
    written = report.save(out)
    print(report.table())
    print(f"\nwrote {', '.join(str(path) for path in written)}")
