"""Explainers side by side from Python: the shipped models on a generated test set, or your own model.

    python examples/bench_side_by_side.py [--model my_tscam.pt] [--images 200] [--out out/example_bench]

Each model gets its own explainers (a mapping); the report, the CSV and the figures go to --out.
"""
import argparse

from tscam_explain.bench import BenchSettings, bench, synth_data

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="a model file of your own (default: the shipped tscam-synth and vit-synth)")
parser.add_argument("--images", type=int, default=200)
parser.add_argument("--out", default="out/example_bench")
args = parser.parse_args()

data = synth_data(f"{args.out}/data", images=args.images, seed=2)       # seed 2: never used in training
if args.model:
    models, explainers = [args.model], None                              # every explainer that applies
else:
    models = ["tscam-synth", "vit-synth"]
    explainers = {"tscam-synth": ["tscam", "transattention", "transcam"], "vit-synth": ["tscam", "gradcam"]}
settings = BenchSettings(faithfulness_images=32, road_images=4, road_combined_percentiles=(50,))
report = bench(models, data, explainers=explainers, settings=settings)
print(report.table())
print("\n".join(str(path) for path in report.save(args.out)))
