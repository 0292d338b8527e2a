"""Exactly-once, resumable sharding of a map-style data set across processes (and so across their workers).

The global sample stream is the concatenation of per-epoch permutations (``epoch`` e is
``randperm(n)`` seeded by ``(seed, e)``). Global batch ``g`` is the slice
``[g * B * W, (g + 1) * B * W)`` of that stream and process ``r`` of ``W`` takes the ``r``-th block of ``B``
samples from it. Sharding happens here, once; DataLoader workers receive whole batches of indices from the
main process (a map-style data set with a batch sampler), so no sample is split again or dropped. Within any
``n`` consecutive stream positions each sample occurs exactly once, whatever ``W`` and ``B``.

The sampler is a pure function of ``(seed, num_samples, world, rank, batch_size, start_batch)``: resuming
sets ``start_batch`` to the number of batches a process has consumed, and the stream continues exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

EPOCH_SEED_STRIDE = 1_000_003  # mixes the epoch into the permutation seed (a prime far above any seed used)


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of epoch ``epoch``: a seeded permutation of ``range(num_samples)`` (identity if not shuffled)."""
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class ShardedBatchSampler(Sampler[list[int]]):
    """Infinite batch sampler over a shared, epoch-permuted stream; each process takes its own block.

    Args:
        num_samples: size of the data set.
        batch_size: samples per batch on one process.
        num_replicas: number of processes W.
        rank: this process's index r in ``[0, W)``.
        seed: seed of the epoch permutations (the same on every process).
        start_batch: batches this process already consumed (resume point).
        shuffle: permute each epoch (else the stream is ``0, 1, .., n-1, 0, 1, ..``).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
    ):
        if num_samples < 1:
            raise ValueError(
                f"the data set is empty: ShardedBatchSampler needs num_samples >= 1, got {num_samples}"
            )
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or start_batch < 0:
            raise ValueError(
                f"bad sharding: batch_size={batch_size}, num_replicas={num_replicas}, rank={rank}, "
                f"start_batch={start_batch}"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.start_batch = start_batch
        self.shuffle = shuffle

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    @property
    def batches_per_epoch(self) -> float:
        """Batches (per process) that cover the data set once."""
        return self.num_samples / self.global_batch_size

    def stream(self, start: int) -> Iterator[int]:
        """Sample indices of the global stream from position ``start`` on."""
        epoch, offset = divmod(start, self.num_samples)
        for current in itertools.count(epoch):
            order = epoch_permutation(self.num_samples, self.seed, current, self.shuffle)
            yield from order[offset:]
            offset = 0

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start_batch * self.global_batch_size + self.rank * self.batch_size
        stream = self.stream(start)
        skip = self.global_batch_size - self.batch_size
        while True:
            yield list(itertools.islice(stream, self.batch_size))
            for _ in itertools.islice(stream, skip):
                pass

    def __len__(self) -> int:
        raise TypeError("ShardedBatchSampler is infinite; training is counted in steps")


def shard_indices(num_samples: int, num_replicas: int, rank: int) -> list[int]:
    """One pass over ``range(num_samples)`` split across processes (strided; for evaluation and caching)."""
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} out of range for {num_replicas} processes")
    return list(range(rank, num_samples, num_replicas))


__all__ = ["ShardedBatchSampler", "epoch_permutation", "shard_indices"]
