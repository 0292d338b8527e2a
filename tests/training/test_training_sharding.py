"""Exactly-once sharding: every sample is seen once per epoch across processes and DataLoader workers, and
the sampler resumes at the exact data position."""

from __future__ import annotations

import itertools
import json
import textwrap
from collections import Counter

import pytest

from foveated_vlm.data.sampler import ShardedBatchSampler, shard_indices

from ..builders import launch_two_cpu_processes


def _take(sampler: ShardedBatchSampler, count: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), count))


@pytest.mark.parametrize(("num_samples", "world", "batch"), [(24, 2, 3), (10, 3, 2), (7, 1, 4), (13, 4, 1)])
def test_each_epoch_sees_every_sample_once(num_samples, world, batch):
    """Consecutive global batches (all ranks) cover each epoch's permutation exactly once, in stream order."""
    samplers = [ShardedBatchSampler(num_samples, batch, world, rank, seed=5) for rank in range(world)]
    steps = 2 * num_samples  # enough global batches for two epochs or more
    per_rank = [_take(sampler, steps) for sampler in samplers]
    stream = [index for step in range(steps) for rank in range(world) for index in per_rank[rank][step]]
    for epoch in range(2):
        chunk = stream[epoch * num_samples : (epoch + 1) * num_samples]
        assert sorted(chunk) == list(range(num_samples)), f"epoch {epoch} is not a permutation"
    assert stream[:num_samples] != stream[num_samples : 2 * num_samples], "epochs are reshuffled"


def test_resume_continues_the_stream_exactly():
    full = _take(ShardedBatchSampler(11, 3, 2, 1, seed=2), 9)
    resumed = _take(ShardedBatchSampler(11, 3, 2, 1, seed=2, start_batch=4), 5)
    assert resumed == full[4:]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="empty"):
        ShardedBatchSampler(0, 1)
    with pytest.raises(ValueError, match="bad sharding"):
        ShardedBatchSampler(4, 1, num_replicas=2, rank=2)
    assert shard_indices(5, 2, 1) == [1, 3]


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from foveated_vlm.training.data import train_loader

    class Indexed(torch.utils.data.Dataset):
        def __len__(self):
            return NUM_SAMPLES
        def __getitem__(self, index):
            info = torch.utils.data.get_worker_info()
            return index, (info.id if info is not None else -1)

    def collate(items):
        return [index for index, _ in items], sorted({worker for _, worker in items})

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.state
    loader = train_loader(Indexed(), collate, batch_size=BATCH, num_replicas=accelerator.num_processes,
                          rank=accelerator.process_index, seed=7, start_batch=0, num_workers=2)
    steps = NUM_SAMPLES // (BATCH * accelerator.num_processes)
    seen, workers = [], set()
    for _, (indices, worker_ids) in zip(range(2 * steps), loader):
        seen.append(indices)
        workers.update(worker_ids)
    everything = gather_object([(accelerator.process_index, seen, sorted(workers))])
    if accelerator.is_main_process:
        json.dump(everything, open(sys.argv[1], "w"))
    """
)


def test_two_processes_two_workers_see_each_sample_once_per_epoch(tmp_path):
    num_samples, batch = 24, 3
    script = tmp_path / "shard_probe.py"
    script.write_text(SCRIPT.replace("NUM_SAMPLES", str(num_samples)).replace("BATCH", str(batch)))
    out = tmp_path / "seen.json"
    result = launch_two_cpu_processes(str(script), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    records = {rank: (seen, workers) for rank, seen, workers in json.loads(out.read_text())}
    assert sorted(records) == [0, 1]
    steps = num_samples // (batch * 2)
    for epoch in range(2):
        counts = Counter(
            index
            for rank in (0, 1)
            for batch_ in records[rank][0][epoch * steps : (epoch + 1) * steps]
            for index in batch_
        )
        assert sorted(counts) == list(range(num_samples)), f"epoch {epoch}: samples missing"
        assert set(counts.values()) == {1}, f"epoch {epoch}: a sample was seen twice: {counts}"
    for rank in (0, 1):
        assert records[rank][1] == [0, 1], "both DataLoader workers of each process produced batches"
