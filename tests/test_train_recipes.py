"""Recipes, optimizer / schedule / precision selection, sampling and checkpoint state of the trainers."""
import dataclasses
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from tscam_explain.checkpoint import atomic_save, load_file
from tscam_explain.train import RECIPES, build_model, get_recipe
from tscam_explain.train.components import (build_optimizer, build_scheduler, loader_options, prepare_trainable,
                                            resolve_amp)
from tscam_explain.train.sampling import ResumableSampler, SeededDataset
from tscam_explain.train.state import capture_rng, restore_rng

TINY = dict(depth=2, embed_dim=64, num_heads=2, patch_size=16)


def tiny_model(recipe, num_classes=4):
    torch.manual_seed(0)
    return build_model(recipe, num_classes, "deit_tiny_patch16_224", model_kwargs=TINY)


# --- recipes -------------------------------------------------------------------------------------
def test_recipes_hold_the_official_values_of_methods_md():
    tscam_cub, tscam_in = RECIPES["tscam"]["cub"], RECIPES["tscam"]["ilsvrc"]
    assert (tscam_cub.lr, tscam_cub.batch_size, tscam_cub.epochs) == (5e-5, 128, 60)
    assert (tscam_in.lr, tscam_in.batch_size, tscam_in.epochs) == (5e-4, 256, 20)
    for recipe in (tscam_cub, tscam_in):
        assert (recipe.opt, recipe.weight_decay, recipe.opt_eps, recipe.opt_betas) == ("adamw", 0.05, 1e-8, (0.9, 0.999))
        assert {"pos_embed", "cls_token"} <= set(recipe.no_weight_decay)
        assert (recipe.drop_path, recipe.train_transform, recipe.resize_size, recipe.img_size) == (0.1, "resize_crop", 256, 224)
    trt1_cub, trt1_in = RECIPES["trt-stage1"]["cub"], RECIPES["trt-stage1"]["ilsvrc"]
    assert (trt1_cub.lr, trt1_cub.epochs, trt1_cub.batch_size, trt1_cub.u) == (5e-5, 30, 128, 0.6)
    assert (trt1_in.lr, trt1_in.epochs, trt1_in.batch_size, trt1_in.u, trt1_in.label_smoothing) == (5e-4, 12, 512, 0.95, 0.1)
    assert (trt1_in.auto_augment, trt1_in.re_prob, trt1_in.crop_scale) == ("rand-m9-mstd0.5-inc1", 0.25, (0.8, 1.0))
    assert RECIPES["trt-stage2"]["cub"].epochs == 20 and RECIPES["trt-stage2"]["cub"].u is None
    assert {name: {r.trainable for r in by_data.values()} for name, by_data in RECIPES.items()} == {
        "tscam": {"all"}, "tscam-head": {"head"}, "trt-stage1": {"stage1"}, "trt-stage2": {"stage2"}, "vit": {"all"}}


def _official_lrs(base: float, steps, factor: float, epochs: int):
    """The official ``adjust_learning_rate_normal``: before 1-based epoch e, lr *= factor if e is a
    multiple of one of the steps."""
    lrs, lr = [], base
    for epoch in range(1, epochs + 1):
        if any(epoch % step == 0 for step in steps):
            lr *= factor
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("name, dataset, steps", [
    ("tscam", "cub", [30]), ("tscam", "ilsvrc", [10, 12]), ("trt-stage1", "cub", [15]),
    ("trt-stage1", "ilsvrc", [2, 4, 6, 8]), ("trt-stage2", "cub", [10]),
])
def test_schedule_reproduces_the_official_lr_of_every_epoch(name, dataset, steps):
    recipe = RECIPES[name][dataset]
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    scheduler = build_scheduler(optimizer, recipe)
    ours = []
    for epoch in range(recipe.epochs):
        scheduler.step(epoch)
        ours.append(optimizer.param_groups[0]["lr"])
    expected = _official_lrs(recipe.lr, steps, recipe.lr_decay_rate, recipe.epochs)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_get_recipe_overrides_and_clear_errors():
    recipe = get_recipe("tscam", "ilsvrc", lr=1e-3, lr_decay_epochs=[3], opt_betas=[0.9, 0.99])
    assert (recipe.lr, recipe.lr_decay_epochs, recipe.opt_betas, recipe.epochs) == (1e-3, (3,), (0.9, 0.99), 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 1.0
    with pytest.raises(ValueError, match="unknown recipe 'tscm'"):
        get_recipe("tscm")
    with pytest.raises(ValueError, match="no 'voc' defaults"):
        get_recipe("tscam", "voc")
    with pytest.raises(ValueError, match=r"cannot override \['trainable'\]"):
        get_recipe("tscam", trainable="head")
    with pytest.raises(ValueError, match="epochs=0"):
        get_recipe("tscam", epochs=0)
    with pytest.raises(ValueError, match="resize_size=200 < img_size=224"):
        get_recipe("tscam", resize_size=200)
    with pytest.raises(ValueError, match="only trt-stage1 takes u"):
        get_recipe("trt-stage2", u=0.5)
    with pytest.raises(ValueError, match="stage 1 needs a threshold"):
        get_recipe("trt-stage1", u=1.5)


# --- components ----------------------------------------------------------------------------------
def test_optimizer_follows_the_official_weight_decay_rule_and_skips_frozen_parameters():
    recipe = get_recipe("tscam", img_size=32)
    model = tiny_model(recipe)
    prepare_trainable(model, recipe)
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        exempt = param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in ("pos_embed", "cls_token")
        assert decay_of[id(param)] == (0.0 if exempt else 0.05), name
    assert decay_of[id(model.backbone.pos_embed)] == 0.0 and decay_of[id(model.head.conv.weight)] == 0.05
    assert optimizer.defaults["lr"] == recipe.lr and optimizer.defaults["eps"] == 1e-8

    head_recipe = get_recipe("tscam-head", img_size=32)
    model = tiny_model(head_recipe)
    frozen = prepare_trainable(model, head_recipe)
    assert frozen == (model.backbone,)
    optimizer = build_optimizer(model, head_recipe, torch.device("cpu"))
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}


def test_trt_stages_select_their_parameters():
    stage1 = get_recipe("trt-stage1", img_size=32)
    model = tiny_model(stage1)
    assert prepare_trainable(model, stage1) == ()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"backbone", "reattention", "importance_norm", "importance_head", "head"}
    frozen = prepare_trainable(model, get_recipe("trt-stage2", img_size=32))
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"cam_block", "cam_norm", "cam_head"} and model.backbone in frozen


def test_gpu_choices_activate_only_on_cuda(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_amp("auto", cpu) is None and resolve_amp("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", cuda) is torch.bfloat16 and resolve_amp("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", cuda) is None
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_amp("fp8", cpu)

    recipe = get_recipe("tscam", img_size=32)
    model = tiny_model(recipe)
    assert build_optimizer(model, recipe, cuda).defaults["fused"] is True  # torch's fused AdamW (CPU kernel here)
    assert not build_optimizer(model, recipe, cpu).defaults["fused"]

    assert loader_options(cpu, None) == {"num_workers": 0, "pin_memory": False}
    on_gpu = loader_options(cuda, None, world_size=1)
    assert on_gpu["pin_memory"] is True and on_gpu["num_workers"] >= 1 and on_gpu["persistent_workers"] is True
    assert loader_options(cuda, 3)["num_workers"] == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        loader_options(cpu, -1)


# --- sampling ------------------------------------------------------------------------------------
def test_resumable_sampler_is_torchs_distributed_order_and_skips_exactly():
    data = list(range(23))
    for rank in range(3):
        torch_sampler = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=5)
        torch_sampler.set_epoch(2)
        ours = ResumableSampler(data, num_replicas=3, rank=rank, seed=5)
        ours.set_position(2, 0)
        full = list(ours)
        assert [index for index, _ in full] == list(torch_sampler)
        ours.set_position(2, 4)
        assert list(ours) == full[4:] and len(ours) == len(full) - 4
    shards = [ResumableSampler(data, num_replicas=3, rank=r, seed=5) for r in range(3)]
    seeds = [seed for shard in shards for _, seed in shard]
    assert len(set(seeds)) == len(seeds)  # padded duplicates get their own augmentation
    assert {index for shard in shards for index, _ in shard} == set(data)
    with pytest.raises(ValueError, match="cannot skip 9 samples of a shard of 8"):
        shards[0].set_position(0, 9)


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(2), random.random(), np.random.rand()


def test_seeded_dataset_is_a_function_of_the_seed_and_leaves_the_callers_rng_alone():
    data = SeededDataset(_RandomItems())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first, again, other = data[(0, 7)], data[(0, 7)], data[(0, 8)]
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(first[0], other[0]) and first[1] != other[1] and first[2] != other[2]
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


# --- state ---------------------------------------------------------------------------------------
def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    atomic_save({"rng": capture_rng()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(load_file(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.randn()) == expected[:2] and torch.equal(torch.rand(3), expected[2])
