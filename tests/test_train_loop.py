"""The training loop from Python: every recipe learns, frozen parts stay frozen, files round-trip,
a stopped run resumes bit-for-bit, and two gloo processes train one model with DDP."""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import Dataset

from tscam_explain.checkpoint import load_file
from tscam_explain.models import load_model
from tscam_explain.train import (RunOptions, TrainData, build_model, data_normalization, get_recipe, load_stage1,
                                 seed_everything, train)
from tscam_explain.train.data import build_data
from tscam_explain.train.distributed import init_distributed
from tscam_explain.train.loop import _Trainer
from tscam_explain.train.state import TRAIN_FILE_FORMAT
from tscam_explain.train.transforms import train_transform
from test_train_cli import make_cub

TINY = dict(depth=2, embed_dim=64, num_heads=2, patch_size=16)
NUM_CLASSES = 3
# small images and batches; lr raised so that a handful of steps visibly fits the data
SMALL = dict(img_size=32, resize_size=40, batch_size=4, lr=2e-3)
NORMALIZATION = data_normalization("deit_tiny_patch16_224")


class ColourClasses(Dataset):
    """Images whose class is their dominant colour channel, plus noise: learnable in a few steps."""

    def __init__(self, count: int = 12, transform=None) -> None:
        self.count, self.transform = count, transform

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        label = index % NUM_CLASSES
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 90, (40, 40, 3))
        pixels[..., label] += 160
        image = Image.fromarray(pixels.astype(np.uint8))
        if self.transform is None:
            return torch.from_numpy(pixels[4:36, 4:36]).permute(2, 0, 1).float() / 127.5 - 1, label
        return self.transform(image), label


def make_model(recipe, stage1=None):
    seed_everything(0)
    if recipe.trainable == "stage2":
        return load_stage1(stage1)
    return build_model(recipe, NUM_CLASSES, "deit_tiny_patch16_224", model_kwargs=TINY)


def run(recipe, out_dir, data=None, stage1=None, **options):
    data = data if data is not None else TrainData(ColourClasses(), NUM_CLASSES)
    return train(recipe, make_model(recipe, stage1), data, RunOptions(out_dir=out_dir, progress=False, **options))


def snapshot(modules):
    return [p.detach().clone() for module in modules for p in module.parameters()]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    recipe = get_recipe("trt-stage1", epochs=4, **SMALL)
    initial = make_model(recipe)
    cam_branch = snapshot(initial.stage2_modules())
    return recipe, run(recipe, out), out, cam_branch


def test_tscam_learns_and_its_files_round_trip(tmp_path):
    recipe = get_recipe("tscam", epochs=4, **SMALL)
    result = run(recipe, tmp_path)
    losses = [entry["loss"] for entry in result.history]
    assert result.finished and len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "log.jsonl", "model.pt", "run.json"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3, 4] and all(entry["img_per_s"] > 0 for entry in log)
    assert log == result.history
    last = load_file(tmp_path / "last.pt")  # weights_only=True
    assert last["train_format"] == TRAIN_FILE_FORMAT and last["position"] == {"epoch": 4, "batches": 0, "step": 12}
    assert {"optimizer", "scheduler", "scaler", "rng", "recipe"} <= set(last)
    trained = result.model.state_dict()
    for name in ("model.pt", "last.pt"):
        loaded = load_model(tmp_path / name).state_dict()
        assert all(torch.equal(loaded[key], trained[key]) for key in trained)


def test_tscam_head_trains_the_head_only(tmp_path):
    recipe = get_recipe("tscam-head", epochs=3, **dict(SMALL, lr=2e-2))
    backbone_before = snapshot([make_model(recipe).backbone])
    result = run(recipe, tmp_path)
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, snapshot([result.model.backbone])))


def test_trt_stage1_learns_and_leaves_the_cam_branch_alone(stage1_run):
    _, result, _, cam_branch = stage1_run
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(a, b) for a, b in zip(cam_branch, snapshot(result.model.stage2_modules())))


def test_trt_stage2_learns_the_cam_branch_with_stage1_frozen(stage1_run, tmp_path):
    _, _, stage1_out, _ = stage1_run
    recipe = get_recipe("trt-stage2", epochs=4, **SMALL)
    stage1_weights = snapshot(load_stage1(stage1_out / "model.pt").stage1_modules())
    result = run(recipe, tmp_path, stage1=stage1_out / "model.pt")
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(a, b) for a, b in zip(stage1_weights, snapshot(result.model.stage1_modules())))
    assert result.model.stage == 2 and result.model.u == 0.6


def test_clear_errors_when_model_data_or_checkpoint_do_not_fit(stage1_run, tmp_path):
    _, _, stage1_out, _ = stage1_run
    tscam = get_recipe("tscam", epochs=1, **SMALL)
    data = TrainData(ColourClasses(), NUM_CLASSES)
    wrong_classes = build_model(tscam, 5, "deit_tiny_patch16_224", model_kwargs=TINY)
    with pytest.raises(ValueError, match="the model has 5 classes but the training data has 3"):
        train(tscam, wrong_classes, data, RunOptions(out_dir=tmp_path))
    tscam_file = tmp_path / "tscam"
    run(tscam, tscam_file)
    with pytest.raises(ValueError, match="holds a 'tscam' model; trt-stage2 needs the checkpoint of a trt-stage1 run"):
        load_stage1(tscam_file / "model.pt")
    with pytest.raises(ValueError, match="recipe 'trt-stage2' trains a 'trt' model, got 'tscam'"):
        train(get_recipe("trt-stage2", **SMALL), make_model(tscam), data, RunOptions(out_dir=tmp_path))
    with pytest.raises(ValueError, match="must be a multiple of processes × accum_steps = 1 × 3"):
        train(tscam, make_model(tscam), data, RunOptions(out_dir=tmp_path, accum_steps=3))
    with pytest.raises(ValueError, match="not a tscam-explain training checkpoint"):
        train(tscam, make_model(tscam), data, RunOptions(out_dir=tmp_path, resume=tscam_file / "model.pt"))
    with pytest.raises(ValueError, match=r"recipe differs \(lr: checkpoint 0.002 vs now 0.001\)"):
        train(get_recipe("tscam", epochs=1, **dict(SMALL, lr=1e-3)), make_model(tscam), data,
              RunOptions(out_dir=tmp_path, resume=tscam_file / "last.pt"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train(tscam, make_model(tscam), data, RunOptions(out_dir=tmp_path, resume=tmp_path / "nope.pt"))


def test_resume_after_the_partial_last_batch_of_an_epoch(tmp_path):
    """10 images in batches of 4: the third batch holds 2; a checkpoint after it must resume at the next epoch."""
    recipe = get_recipe("tscam", epochs=2, **SMALL)
    data = TrainData(ColourClasses(10), NUM_CLASSES)
    whole = run(recipe, tmp_path / "whole", data)
    stopped = run(recipe, tmp_path / "split", data, stop_after_steps=3)
    assert stopped.position.as_dict() == {"epoch": 0, "batches": 3, "step": 3}
    (tmp_path / "split" / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    again = run(recipe, tmp_path / "split", data, stop_after_steps=3, resume=tmp_path / "split" / "last.pt")
    assert not again.finished and again.position == stopped.position  # already there: no step taken
    resumed = run(recipe, tmp_path / "split", data, resume=tmp_path / "split" / "last.pt")
    assert not (tmp_path / "split" / ".last.pt.abc.tmp").exists()
    assert [e["step"] for e in resumed.history] == [3, 6] and resumed.history[0]["loss"] == whole.history[0]["loss"]
    expected = whole.model.state_dict()
    assert all(torch.equal(resumed.model.state_dict()[key], expected[key]) for key in expected)


@pytest.mark.parametrize("name", ["tscam", "trt-stage1"])
def test_a_stopped_run_resumes_bit_for_bit(name, tmp_path):
    """Stop mid-epoch (with gradient accumulation, augmentation and drop path), resume with loader
    workers this time, and end with exactly the weights and log of the uninterrupted run."""
    recipe = get_recipe(name, epochs=2, **dict(SMALL, batch_size=4, drop_path=0.2))
    if name == "trt-stage1":  # the timm pipeline: RandAugment, random erasing
        recipe = get_recipe(name, "ilsvrc", epochs=2, **dict(SMALL, batch_size=4, drop_path=0.2))
    data = TrainData(ColourClasses(10, train_transform(recipe, (0.5,) * 3, (0.5,) * 3)), NUM_CLASSES)
    whole = run(recipe, tmp_path / "whole", data, accum_steps=2)
    stopped = run(recipe, tmp_path / "split", data, accum_steps=2, stop_after_steps=2)
    assert not stopped.finished and stopped.position.as_dict() == {"epoch": 0, "batches": 4, "step": 2}
    resumed = run(recipe, tmp_path / "split", data, accum_steps=2, workers=1,
                  resume=tmp_path / "split" / "last.pt")
    assert resumed.finished and resumed.position == whole.position
    expected = whole.model.state_dict()
    assert all(torch.equal(resumed.model.state_dict()[key], expected[key]) for key in expected)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in whole.history]


# --- DDP with two gloo processes -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, root: str, cub: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    root = Path(root)
    recipe = get_recipe("tscam", epochs=2, **SMALL)
    data = build_data(recipe, Path(cub), normalization=NORMALIZATION, val_fraction=0.5)
    # 1 image per rank and micro-batch, 2 micro-batches per step; each rank writes to its own
    # folder, so that a write by rank 1 would show
    result = train(recipe, make_model(recipe), data,
                   RunOptions(out_dir=root / f"out{rank}", progress=False, accum_steps=2, checkpoint_every=2))
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, root / f"weights{rank}.pt")
    (root / f"metrics{rank}.json").write_text(json.dumps(data.validate(result.model, init_distributed("cpu"))))
    options = dict(progress=False, accum_steps=2)
    stopped = train(recipe, make_model(recipe), data, RunOptions(out_dir=root / f"split{rank}", stop_after_steps=1,
                                                                 **options))
    assert not stopped.finished
    resumed = train(recipe, make_model(recipe), data, RunOptions(out_dir=root / f"split{rank}",
                                                                 resume=root / "split0" / "last.pt", **options))
    torch.save(resumed.model.state_dict(), root / f"resumed{rank}.pt")
    trt = get_recipe("trt-stage1", epochs=1, **SMALL)  # every trained TRT parameter must get a gradient
    assert run(trt, root / f"trt{rank}", accum_steps=2).finished
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_train_one_model_merge_validation_and_only_rank0_writes(tmp_path):
    cub = make_cub(tmp_path / "CUB_200_2011")
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path), str(cub)), nprocs=2, join=True)
    weights = [torch.load(tmp_path / f"weights{rank}.pt", weights_only=True) for rank in range(2)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    initial = make_model(get_recipe("tscam", **SMALL)).state_dict()
    assert not all(torch.equal(weights[0][key], initial[key]) for key in initial)  # it did train
    assert not any((tmp_path / f"{name}1").exists() for name in ("out", "split", "trt"))
    assert {p.name for p in (tmp_path / "out0").iterdir()} == {"last.pt", "best.pt", "log.jsonl", "model.pt", "run.json"}
    last = load_file(tmp_path / "out0" / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    # 9 training images: 5 per rank (padded), micro-batches of 1, steps of 2: 3 steps per epoch
    log = [json.loads(line) for line in (tmp_path / "out0" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [3, 6] and last["position"]["step"] == 6
    for rank in range(2):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)
        assert all(torch.equal(resumed[key], weights[0][key]) for key in weights[0])

    # validation on 9 held-out images, 5 + 4 per rank, merged: the metrics of one pass over all 9
    recipe = get_recipe("tscam", epochs=2, **SMALL)
    data = build_data(recipe, cub, normalization=NORMALIZATION, val_fraction=0.5)
    model = make_model(recipe)
    model.load_state_dict(weights[0])
    single = data.validate(model.eval(), init_distributed("cpu"))
    merged = [json.loads((tmp_path / f"metrics{rank}.json").read_text()) for rank in range(2)]
    assert merged[0] == merged[1] == single and log[-1]["val"] == single
    hits = single["top1_cls"] * 9 / 100  # a count of the 9 images, not of a shard of 5 or 4
    assert abs(hits - round(hits)) < 1e-9


def test_deterministic_mode_is_on_for_the_run_only(tmp_path, monkeypatch):
    seen = []
    original = _Trainer.run

    def record(self):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self)

    monkeypatch.setattr(_Trainer, "run", record)
    assert not torch.are_deterministic_algorithms_enabled()
    result = run(get_recipe("tscam-head", epochs=1, **SMALL), tmp_path, deterministic=True)
    assert result.finished and seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is given back
