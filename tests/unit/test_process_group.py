"""Who leaves the process group: the trainer leaves the one it joined, never one its caller created."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from smoltrain.runtime.distributed import DistEnv, init_distributed, leave_process_group


@pytest.fixture
def one_rank_group():
    """A gloo group of one rank, in this process, made as a user's own script would make it."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_group_the_caller_made_is_not_joined_again_nor_left(one_rank_group, monkeypatch):
    # What torchrun puts in the environment of a 2-rank job whose script joined the group itself.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    env = init_distributed("cpu")
    assert env.enabled and not env.owns_group
    leave_process_group(env)
    assert dist.is_initialized()


def test_the_group_init_distributed_joined_is_left(one_rank_group):
    leave_process_group(DistEnv(rank=0, world_size=1, owns_group=True))
    assert not dist.is_initialized()


def test_a_single_process_has_no_group_to_leave():
    env = init_distributed("cpu")
    assert not env.owns_group
    leave_process_group(env)  # nothing initialized, nothing to do
    assert not dist.is_initialized()
