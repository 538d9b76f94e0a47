"""Trainers for TS-CAM and TRT: recipes as data, one training loop, torchrun multi-GPU, exact resume.

Python use (the ``tscam-explain train`` command does the same; see ``docs/training.md``)::

    from tscam_explain.train import (RunOptions, build_data, build_model, data_normalization, get_recipe,
                                     seed_everything, train)

    recipe = get_recipe("tscam", "cub", epochs=10)
    data = build_data(recipe, "CUB_200_2011", normalization=data_normalization("deit_small_patch16_224"))
    seed_everything(0)
    model = build_model(recipe, data.num_classes, "deit_small_patch16_224", pretrained=True)
    result = train(recipe, model, data, RunOptions(out_dir="runs/cub"))
"""
from .components import build_model, data_normalization, load_stage1, seed_everything
from .data import build_data
from .loop import RunOptions, TrainData, TrainResult, train
from .recipes import RECIPES, Recipe, get_recipe, list_recipes

__all__ = [
    "RECIPES", "Recipe", "RunOptions", "TrainData", "TrainResult", "build_data", "build_model",
    "data_normalization", "get_recipe", "list_recipes", "load_stage1", "seed_everything", "train",
]
