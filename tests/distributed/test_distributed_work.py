"""Splitting work over ranks (pure functions) and the helper's behaviour with no job running."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unet_lab.unet_core import distributed
from unet_lab.unet_core.distributed.context import timeout_from_env
from unet_lab.unet_core.errors import InputError


@pytest.mark.parametrize("count,world", [(0, 2), (1, 2), (7, 2), (10, 3), (5, 8)])
def test_shards_cover_the_list_once_and_differ_in_size_by_at_most_one(count, world):
    shards = [distributed.shard_indices(count, rank, world) for rank in range(world)]
    flat = sorted(index for shard in shards for index in shard)
    assert flat == list(range(count))
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_is_round_robin_and_whole_on_one_rank():
    names = ["a", "b", "c", "d", "e"]
    assert distributed.shard(names, 0, 2) == ["a", "c", "e"]
    assert distributed.shard(names, 1, 2) == ["b", "d"]
    assert distributed.shard(names, 0, 1) == names
    with pytest.raises(InputError):
        distributed.shard(names, 2, 2)


def test_split_batch_keeps_the_global_batch():
    assert distributed.split_batch(8, 2) == [4, 4]
    assert distributed.split_batch(7, 2) == [4, 3]
    assert distributed.split_batch(3, 4) == [1, 1, 1, 0]
    for batch in range(1, 20):
        for world in range(1, 9):
            assert sum(distributed.split_batch(batch, world)) == batch


def test_rank_seeds_are_the_seed_on_rank_0_and_distinct_elsewhere():
    assert distributed.rank_seed(1234, 0) == 1234
    seeds = {distributed.rank_seed(seed, rank) for seed in range(50) for rank in range(8)}
    assert len(seeds) == 400


def test_launch_detection_and_timeout_come_from_the_environment():
    torchrun_env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert distributed.launched_by_torchrun(torchrun_env)
    assert not distributed.launched_by_torchrun({"RANK": "0"})
    assert timeout_from_env({}) == distributed.DEFAULT_TIMEOUT_S
    assert timeout_from_env({distributed.TIMEOUT_ENV: "12.5"}) == 12.5
    with pytest.raises(distributed.DistributedError, match="UNET_LAB_DIST_TIMEOUT"):
        timeout_from_env({distributed.TIMEOUT_ENV: "soon"})


def test_without_a_job_everything_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.active() is None
    model = nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, None) is model
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(3) == 3
    distributed.barrier()
    with distributed.guard("nothing"):
        torch.ones(1)
    with pytest.raises(distributed.DistributedError, match="not launched by torchrun"):
        distributed.setup_from_env("cpu")
