"""Deterministic, resumable data order and augmentation.

Two pieces make a run's data stream a pure function of (seed, epoch, position):

* :class:`ResumableSampler` is torch's ``DistributedSampler`` (same permutation per seed and
  epoch, same sharding) that can start ``skip`` samples into its shard, so a resumed run skips
  exactly the batches already consumed. It yields ``(index, sample_seed)`` pairs.
* :class:`SeededDataset` runs the wrapped dataset's ``__getitem__`` (and so its random transforms)
  with python, numpy and torch seeded by that ``sample_seed``, then restores the caller's RNG.

So an image's augmentation depends on neither the number of data-loader workers, nor how their
prefetching interleaves, nor whether the run was interrupted: timm's RandAugment and random
erasing draw from ``random``/``numpy``, torchvision's crops and flips from torch.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at global ``position`` of ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that starts mid-epoch and tags each index with its augmentation seed.

    torch's sampler always starts an epoch from its first index; resuming needs to skip the
    samples already consumed. Sharding and shuffling are the parent's (``seed + epoch``
    permutation, padding to a multiple of the number of replicas).

    Args:
        dataset: the dataset to sample (only its length is used).
        num_replicas: number of processes.
        rank: this process's rank.
        shuffle: shuffle each epoch (training) or keep dataset order.
        seed: the run's seed (same on every rank).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Iterate ``epoch`` from the ``skip``-th sample of this rank's shard."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot skip {skip} samples of a shard of {self.num_samples}")
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())
        for offset in range(self.skip, len(indices)):
            position = self.rank + offset * self.num_replicas  # position in the padded global order
            yield indices[offset], sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is drawn with every RNG seeded by ``seed``.

    The caller's python, numpy and torch CPU RNG states are restored afterwards, so with
    ``num_workers=0`` loading data does not disturb the training process's RNG (dropout, drop path).

    Args:
        dataset: any map-style dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            # fork_rng restores torch's CPU generator; devices=[] keeps CUDA out of data loading
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed)
                torch.default_generator.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
