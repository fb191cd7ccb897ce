"""Batches: the sharded, resumable sampler, class-balanced sampling and class weights, the batch loader."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from data.cache import ImageDataset
from data.sources import DataError

CLASS_WEIGHTINGS = ("none", "inverse", "sqrt")  # the kinds of class_weights


def class_weights(labels: Sequence[int] | np.ndarray | torch.Tensor, kind: str,
                  num_classes: int | None = None) -> torch.Tensor:
    """Per-class loss weights against class imbalance (float32, one per class), e.g. for CrossEntropyLoss.

    With n_c the number of labels of class c, N = sum_c n_c, and C the number of classes that
    occur (n_c > 0)::

        "none"     w_c = 1
        "inverse"  w_c = N / (C * n_c)                      (scikit-learn's "balanced")
        "sqrt"     w_c = N / (sqrt(n_c) * sum_k sqrt(n_k))   (proportional to 1 / sqrt(n_c))

    Both weightings have mean 1 over the samples (sum_c n_c w_c / N = 1), so the loss keeps its
    scale. A class with no labels gets w_c = 0 (it is never a target; no division by zero).
    ``num_classes`` defaults to max(labels) + 1; pass it when the last classes may be absent.
    """
    if kind not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown class weighting {kind!r}; choices: {', '.join(CLASS_WEIGHTINGS)}")
    values = torch.as_tensor(labels).to(torch.int64).flatten()
    if len(values) and int(values.min()) < 0:
        raise ValueError("class_weights needs labels >= 0 (is the split unlabelled?)")
    classes = num_classes if num_classes is not None else int(values.max()) + 1 if len(values) else 0
    if len(values) and int(values.max()) >= classes:
        raise ValueError(f"label {int(values.max())} is not below num_classes={classes}")
    if kind == "none":
        return torch.ones(classes)
    counts = torch.bincount(values, minlength=classes).double()
    present = counts[counts > 0]
    power = 1.0 if kind == "inverse" else 0.5  # w_c = N / (n_c^p * sum_k n_k^(1 - p)): mean 1 over samples
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[counts > 0] = len(values) / (present ** power * (present ** (1 - power)).sum())
    return weights.float()


def _balancing_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample draw weights 1 / n_(its class): every class is drawn equally often on average."""
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("balanced sampling needs labels; this split is unlabelled")
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


# --------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class Sampling:
    """How a loader orders its images: shuffled (seeded by epoch) or in order, class-balanced, one rank's shard."""

    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False  # drop an incomplete last batch (benchmarks: every step a full batch)
    drop_single: bool = False  # training: drop only a last batch of one image (BatchNorm needs two)
    balanced: bool = False  # training: draw each class about equally often (needs shuffle)
    rank: int = 0
    world_size: int = 1


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank; the order is a pure function of (seed, epoch).

    Training (``shuffle``) pads the permutation by wrapping so every rank gets the same number
    of batches (like DistributedSampler), the last one possibly smaller; evaluation gives each rank
    a contiguous block, every index exactly once across ranks. With ``weights`` (training only) an
    epoch is instead as many draws with replacement, index i with probability proportional to
    weights[i], dealt out to the ranks like the permutation: each draw goes to exactly one rank.
    """

    def __init__(self, size: int, batch_size: int, sampling: Sampling = Sampling(),
                 weights: torch.Tensor | None = None) -> None:
        shuffle, rank, world_size = sampling.shuffle, sampling.rank, sampling.world_size
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if weights is not None and (not shuffle or len(weights) != size):
            raise ValueError(f"weighted sampling needs shuffle=True and one weight per item ({size}), "
                             f"got shuffle={shuffle} and {len(weights)} weights")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, sampling.seed
        self.drop_last, self.drop_single = sampling.drop_last, sampling.drop_single
        self.rank, self.world_size = rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if not self.shuffle:
            return list(range(self.rank * self.size // self.world_size, (self.rank + 1) * self.size // self.world_size))
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])  # mixes both, no collisions
        generator = torch.Generator().manual_seed(seed)
        padded = math.ceil(self.size / self.world_size) * self.world_size
        if self.weights is not None:
            if padded == 0:
                return []
            order = torch.multinomial(self.weights, padded, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(self.size, generator=generator).tolist()
            order = (order * math.ceil(padded / max(self.size, 1)))[:padded]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = math.ceil(self.size / self.world_size)
        else:
            per_rank = (self.rank + 1) * self.size // self.world_size - self.rank * self.size // self.world_size
        full, rest = divmod(per_rank, self.batch_size)
        # Training shards are padded to the same size, so every rank drops the same last batch (or none).
        return full + int(rest > 0 and not self.drop_last and not (self.drop_single and rest == 1))

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for number in range(self.start_batch, len(self)):
            yield mine[number * self.batch_size:(number + 1) * self.batch_size]


def _as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already returns a collated batch


class BatchLoader:
    """Iterable of (uint8 Nx3xHxW, int64 N) batches; ``set_epoch`` fixes the shuffle order."""

    def __init__(self, dataset: ImageDataset, sampler: ShardedBatchSampler, workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.sampler = sampler
        # Its own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would augment differently from an uninterrupted one.
        self._loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_as_is, num_workers=workers,
                                  pin_memory=pin_memory, persistent_workers=workers > 0,
                                  generator=torch.Generator())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order batches for ``epoch``; the next pass skips its first ``start_batch`` batches (resume)."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self._loader
        except DataError as exc:  # from a worker process: the message carries the worker's traceback
            last = str(exc).strip().splitlines()[-1]
            raise DataError(re.sub(r"^[\w.]*DataError: ", "", last)) from None


def make_loader(dataset: ImageDataset, batch_size: int, sampling: Sampling = Sampling(), workers: int = 0,
                pin_memory: bool = False) -> BatchLoader:
    """Batches of ``dataset`` for one rank, in order unless ``sampling`` says otherwise; each batch is one
    ``__getitems__`` read.

    ``sampling.balanced`` (training, needs ``shuffle``): each epoch draws its indices with replacement,
    image i with probability proportional to 1 / n_(class of i), so that every class is seen
    about equally often; still a pure function of (seed, epoch), with as many batches per epoch
    as without balancing. Rare images repeat within an epoch and common ones are skipped.
    """
    weights = _balancing_weights(dataset.labels) if sampling.balanced else None
    sampler = ShardedBatchSampler(len(dataset), batch_size, sampling, weights)
    return BatchLoader(dataset, sampler, workers, pin_memory)
