"""The one training loop every recipe runs.

``train(recipe, data, options, ...)`` builds the recipe's model and optimizer, then trains with:

* torch DDP over ``torchrun`` processes (``DistributedSampler`` sharding; gradients averaged by DDP;
  ``no_sync`` during gradient accumulation); only rank 0 writes files;
* bf16 autocast on CUDA (``--amp``), fused AdamW on CUDA, pinned memory and loader workers there;
* an exactly resumable state: ``last.pt`` (atomic) every epoch and every ``checkpoint_every``
  optimizer steps holds model, optimizer, scheduler, grad scaler, every rank's RNG states and
  the sampler position; ``options.resume`` continues bit-for-bit (see :mod:`.sampling` for how
  the data stream is made a function of the position alone);
* validation at each epoch end on a split held out of training (never the test split), through
  the WSOL harness; ``best.pt`` keeps the best model on it;
* a tqdm bar per epoch and ``log.jsonl`` (loss, lr, images/s, validation metrics per epoch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import atomic_save
from ..models import model_state, save_model
from .components import (build_optimizer, build_scheduler, loader_options, prepare_trainable, resolve_amp,
                         seed_everything)
from .distributed import DistContext, init_distributed
from .recipes import Recipe
from .sampling import ResumableSampler, SeededDataset
from .state import Position, capture_rng, load_checkpoint, restore_rng, rng_for_rank, save_checkpoint

__all__ = ["RunOptions", "TrainData", "TrainResult", "Validator", "train"]

#: ``validator(model, ctx) -> metrics``; every rank calls it, every rank gets the merged metrics.
Validator = Callable[[nn.Module, DistContext], Dict[str, float]]


@dataclass(frozen=True)
class TrainData:
    """What a run trains and validates on.

    Args:
        train: map-style dataset of ``(image tensor, label)`` with the recipe's training transform.
        num_classes: number of classes (labels are 0 … num_classes − 1).
        validate: evaluates a model on the held-out validation split (every rank calls it and gets
            the merged metrics), or ``None`` for no validation.
        select_metric: the metric of ``validate`` that picks ``best.pt`` (higher is better).
        description: a line for the log saying where the data and the validation split come from.
    """

    train: Dataset
    num_classes: int
    validate: Optional[Validator] = None
    select_metric: Optional[str] = None
    description: str = ""


@dataclass(frozen=True)
class RunOptions:
    """How to run (everything that is not a hyperparameter of the recipe).

    Args:
        out_dir: where ``last.pt``, ``best.pt``, ``model.pt``, ``log.jsonl`` and ``run.json`` go.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``.
        amp: ``auto`` (bf16 on a CUDA GPU that supports it, else fp32), ``bf16``, ``fp16`` (with a grad scaler), ``fp32``.
        workers: data-loader processes per rank; ``None``: automatic (see ``loader_options``).
        accum_steps: micro-batches per optimizer step (the recipe's batch stays the global batch).
        checkpoint_every: also write ``last.pt`` every this many optimizer steps (0: epoch ends only).
        seed: run seed (data order, augmentation, dropout; seed model creation yourself, e.g. with
            ``torch.manual_seed``, as the CLI does).
        resume: a ``last.pt`` to continue from.
        stop_after_steps: write ``last.pt`` and return after this many optimizer steps in total
            (for time-limited jobs; resume continues exactly).
        deterministic: make CUDA kernels deterministic (``torch.use_deterministic_algorithms``);
            needed for a bit-exact resume on GPU, slower. CPU runs are deterministic regardless.
        progress: show a tqdm bar per epoch (rank 0).
    """

    out_dir: Path
    device: Optional[str] = None
    amp: str = "auto"
    workers: Optional[int] = None
    accum_steps: int = 1
    checkpoint_every: int = 0
    seed: int = 0
    resume: Optional[Path] = None
    stop_after_steps: Optional[int] = None
    deterministic: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Args:
        model: the trained model (unwrapped, on the training device).
        history: one record per finished epoch (what ``log.jsonl`` holds).
        best: the best validation record (``metric``, ``value``, ``epoch``) or ``None``.
        position: where training stopped.
        finished: whether all epochs ran (``False`` after ``stop_after_steps``).
    """

    model: nn.Module
    history: List[Dict[str, Any]]
    best: Optional[Dict[str, Any]]
    position: Position
    finished: bool


#: what a run writes into its output folder
_OUTPUT_FILES = ("last.pt", "best.pt", "model.pt", "log.jsonl", "run.json")


@dataclass
class _EpochStats:
    """Running sums of the epoch in progress (kept in mid-epoch checkpoints so the log stays whole)."""

    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0


def _write_text_atomically(path: Path, text: str) -> None:
    """Temp file beside ``path``, then rename: a reader never sees a half-written log."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; a log is as readable as any new file
    os.replace(tmp_name, path)


class _Trainer:
    """State and steps of one run; :func:`train` is its public face."""

    def __init__(self, recipe: Recipe, model: nn.Module, data: TrainData, options: RunOptions) -> None:
        if options.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {options.accum_steps}")
        if options.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {options.checkpoint_every}")
        if len(data.train) == 0:
            raise ValueError("the training dataset is empty")
        if getattr(model, "arch", None) != recipe.arch:
            raise ValueError(f"recipe {recipe.name!r} trains a {recipe.arch!r} model, got "
                             f"{getattr(model, 'arch', type(model).__name__)!r}")
        if model.num_classes != data.num_classes:
            raise ValueError(f"the model has {model.num_classes} classes but the training data has "
                             f"{data.num_classes}; build the model with num_classes={data.num_classes}")
        if data.validate is not None and data.select_metric is None:
            raise ValueError("TrainData.validate is set but select_metric is not: name the metric that picks best.pt")
        self.recipe, self.options, self.data = recipe, options, data
        self.ctx = init_distributed(options.device)
        self.out_dir = Path(options.out_dir)
        world = self.ctx.world_size
        per_rank, remainder = divmod(recipe.batch_size, world * options.accum_steps)
        if remainder or per_rank < 1:
            raise ValueError(
                f"batch_size {recipe.batch_size} (global) must be a multiple of processes × accum_steps "
                f"= {world} × {options.accum_steps}; change --batch-size or --accum-steps"
            )
        self.per_rank_batch = per_rank

        checkpoint = load_checkpoint(options.resume) if options.resume is not None else None
        if checkpoint is not None:
            self._check_resumable(checkpoint, model)
            model.load_state_dict(checkpoint["model"]["state_dict"])
        self.frozen_eval = prepare_trainable(model, recipe)
        self.model = model.to(self.ctx.device)
        self.optimizer = build_optimizer(self.model, recipe, self.ctx.device)
        self.scheduler = build_scheduler(self.optimizer, recipe)
        self.amp_dtype = resolve_amp(options.amp, self.ctx.device)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.engine: nn.Module = self.model
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            # DDP broadcasts rank 0's weights, so every rank starts from the same model
            self.engine = DistributedDataParallel(self.model, device_ids=device_ids)

        self.sampler = ResumableSampler(data.train, num_replicas=world, rank=self.ctx.rank, seed=options.seed)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        # the loader's own generator: creating an iterator then draws no number from the global RNG
        self.loader = DataLoader(
            SeededDataset(data.train), batch_size=per_rank, sampler=self.sampler, drop_last=False,
            generator=torch.Generator().manual_seed(options.seed),
            **loader_options(self.ctx.device, options.workers, local_world))
        self.batches_per_epoch = math.ceil(self.sampler.num_samples / per_rank)

        self.position = Position(epoch=0, batches=0, step=0)
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self.stats = _EpochStats()
        if checkpoint is not None:
            self._load_state(checkpoint)
        else:
            # dropout / drop path: a different stream on each rank
            seed_everything(options.seed + self.ctx.rank)
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            self._write_run_file()

    # -- set-up helpers -------------------------------------------------------------------------
    def _check_resumable(self, checkpoint: Dict[str, Any], model: nn.Module) -> None:
        """Clear errors when ``checkpoint`` is not a state of this run (recipe, model, batch split)."""
        source = f"--resume {self.options.resume}"
        saved, current = dict(checkpoint["recipe"]), dataclasses.asdict(self.recipe)
        different = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if different:
            detail = ", ".join(f"{key}: checkpoint {saved.get(key)!r} vs now {current.get(key)!r}" for key in different)
            raise ValueError(f"{source}: the checkpoint's recipe differs ({detail}); resume with the same "
                             "recipe and overrides")
        saved_model = checkpoint["model"]
        if saved_model["arch"] != model.arch or dict(saved_model["config"]) != dict(model.config):
            raise ValueError(f"{source}: the checkpoint trains {saved_model['arch']} {saved_model['config']}, "
                             f"this run {model.arch} {model.config}")
        if checkpoint["per_rank_batch"] != self.per_rank_batch:
            raise ValueError(f"{source}: the checkpoint ran {checkpoint['per_rank_batch']} images per process "
                             f"and micro-batch, this run {self.per_rank_batch}; keep --accum-steps and the "
                             "number of processes")

    def _load_state(self, checkpoint: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.position = Position(**checkpoint["position"])
        self.history = list(checkpoint["history"])
        self.best = checkpoint["best"]
        self.stats = _EpochStats(**checkpoint["epoch_stats"])
        restore_rng(rng_for_rank(checkpoint["rng"], self.ctx.rank, self.ctx.world_size))

    def _remove_stale_temporaries(self) -> None:
        """Temporary files a killed run left mid-write (the files they were replacing are intact)."""
        for name in _OUTPUT_FILES:
            for stale in self.out_dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def _write_run_file(self) -> None:
        run = {
            "recipe": dataclasses.asdict(self.recipe), "arch": self.model.arch, "model": self.model.config,
            "data": self.data.description, "num_classes": self.data.num_classes,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.options).items()},
            "world_size": self.ctx.world_size, "device": str(self.ctx.device),
            "amp": str(self.amp_dtype) if self.amp_dtype else "fp32", "per_rank_batch": self.per_rank_batch,
        }
        _write_text_atomically(self.out_dir / "run.json", json.dumps(run, indent=2, default=str) + "\n")

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_last(self) -> None:
        """``last.pt`` with every rank's RNG (a collective: all ranks call it, rank 0 writes)."""
        rng_states = self.ctx.all_gather_object(capture_rng())
        if self.ctx.is_main:
            self._write_last(rng_states)
        self.ctx.barrier()  # no rank runs ahead of (or reads) a checkpoint still being written

    def _write_last(self, rng_states: List[Dict[str, Any]]) -> None:
        save_checkpoint(self.out_dir / "last.pt", {
            "model": model_state(self.model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_states,
            "position": self.position.as_dict(), "recipe": dataclasses.asdict(self.recipe),
            "history": self.history, "best": self.best, "epoch_stats": dataclasses.asdict(self.stats),
            "per_rank_batch": self.per_rank_batch, "world_size": self.ctx.world_size,
        })

    def _save_best(self, record: Dict[str, Any]) -> None:
        if self.ctx.is_main:
            atomic_save({**model_state(self.model), "selection": record}, self.out_dir / "best.pt")

    # -- the loop -------------------------------------------------------------------------------
    def _set_train_mode(self) -> None:
        self.engine.train()
        for module in self.frozen_eval:
            module.eval()

    def _micro_batch(self, images: torch.Tensor, labels: torch.Tensor, group_size: int, sync: bool) -> torch.Tensor:
        device = self.ctx.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        no_sync = self.engine.no_sync() if (self.ctx.distributed and not sync) else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                logits = self.engine(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.recipe.label_smoothing)
            self.scaler.scale(loss / group_size).backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> TrainResult:
        epochs = self.recipe.epochs
        accum = self.options.accum_steps
        if self._should_stop():
            return self._result(finished=False)
        while self.position.epoch < epochs:
            epoch = self.position.epoch
            self.scheduler.step(epoch)
            # the last batch of an epoch may be partial: a checkpoint taken after it skips the whole shard
            consumed = min(self.position.batches * self.per_rank_batch, self.sampler.num_samples)
            self.sampler.set_position(epoch, consumed)
            self._set_train_mode()
            progress = tqdm(total=self.batches_per_epoch, initial=self.position.batches,
                            desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True,
                            disable=not (self.ctx.is_main and self.options.progress))
            loss_sum = torch.zeros((), device=self.ctx.device, dtype=torch.float64)
            samples = 0
            started = time.perf_counter()
            batch_index = self.position.batches
            for images, labels in self.loader:
                group_start = batch_index - batch_index % accum
                group_size = min(accum, self.batches_per_epoch - group_start)
                boundary = batch_index + 1 == group_start + group_size
                loss = self._micro_batch(images, labels, group_size, sync=boundary)
                loss_sum += loss.double() * len(labels)
                samples += len(labels)
                batch_index += 1
                progress.update(1)
                if not boundary:
                    continue
                self._optimizer_step()
                self.position = Position(epoch, batch_index, self.position.step + 1)
                stop = self._should_stop()
                every = self.options.checkpoint_every
                if stop or (every and self.position.step % every == 0):
                    self._fold_stats(loss_sum, samples, started)
                    loss_sum.zero_()
                    self._save_last()
                    samples, started = 0, time.perf_counter()  # checkpoint time is not training time
                if stop:
                    progress.close()
                    return self._result(finished=False)
            progress.close()
            self._fold_stats(loss_sum, samples, started)
            self._end_epoch(epoch)
        if self.ctx.is_main:
            save_model(self.model, self.out_dir / "model.pt")
        self.ctx.barrier()
        return self._result(finished=True)

    def _should_stop(self) -> bool:
        return self.options.stop_after_steps is not None and self.position.step >= self.options.stop_after_steps

    def _fold_stats(self, loss_sum: torch.Tensor, samples: int, started: float) -> None:
        """Add this rank's running loss and the global sample count to the epoch's stats."""
        totals = torch.tensor([loss_sum.item(), float(samples)], dtype=torch.float64, device=self.ctx.device)
        self.ctx.all_reduce_sum(totals)
        self.stats.loss_sum += totals[0].item()
        self.stats.samples += int(totals[1].item())
        self.stats.seconds += time.perf_counter() - started

    def _end_epoch(self, epoch: int) -> None:
        record: Dict[str, Any] = {
            "epoch": epoch + 1, "step": self.position.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": self.stats.loss_sum / max(1, self.stats.samples),
            "img_per_s": self.stats.samples / max(self.stats.seconds, 1e-9),
            "train_seconds": self.stats.seconds,
        }
        if self.data.validate is not None:
            self.model.eval()
            started = time.perf_counter()
            with torch.no_grad():
                metrics = self.data.validate(self.model, self.ctx)
            record["val"] = metrics
            record["val_seconds"] = time.perf_counter() - started
            metric = self.data.select_metric
            if metric not in metrics:
                raise KeyError(f"validation returned {sorted(metrics)}, not the selection metric {metric!r}")
            if self.best is None or metrics[metric] > self.best["value"]:
                self.best = {"metric": metric, "value": metrics[metric], "epoch": epoch + 1}
                self._save_best(self.best)
        self.history.append(record)
        self.position = Position(epoch + 1, 0, self.position.step)
        self.stats = _EpochStats()
        self._save_last()
        if self.ctx.is_main:
            lines = "".join(json.dumps(entry) + "\n" for entry in self.history)
            _write_text_atomically(self.out_dir / "log.jsonl", lines)

    def _result(self, finished: bool) -> TrainResult:
        return TrainResult(model=self.model, history=list(self.history), best=self.best, position=self.position,
                           finished=finished)


def train(recipe: Recipe, model: nn.Module, data: TrainData, options: RunOptions) -> TrainResult:
    """Train ``model`` with ``recipe`` on ``data``; under ``torchrun`` every process calls this.

    Args:
        recipe: the recipe record (see :func:`~tscam_explain.train.get_recipe`).
        model: from :func:`~tscam_explain.train.build_model` (or, for ``trt-stage2``,
            :func:`~tscam_explain.train.load_stage1`); on CPU, the trainer moves it. When resuming,
            build it the same way: the checkpoint's weights are loaded into it after checking.
        data: training set, classes and validation (see :func:`~tscam_explain.train.build_data`).
        options: device, precision, checkpointing, resume, seed.

    Returns:
        :class:`TrainResult`.
    """
    if not options.deterministic:
        return _Trainer(recipe, model, data, options).run()
    # deterministic kernels for this run only: the switch is process-wide, so give the caller back theirs
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        return _Trainer(recipe, model, data, options).run()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
