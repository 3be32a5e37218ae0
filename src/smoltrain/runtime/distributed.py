"""Process-group set-up for `torchrun` and the few collectives the trainer needs.

Data parallelism is done by hand, like the reference: every rank computes the gradient of its share
of the global batch with the loss already divided by the global batch size, and the gradients are
SUM-all-reduced once per optimizer step (after accumulation) in flat buckets. This keeps the model
object untouched (no wrapper, no renamed state-dict keys) and works for models with a carry.

No rank waits forever: the process group has a timeout (``dist_timeout_minutes``), so when a rank freezes
or dies the others' next collective fails, and :class:`RankLost` ends them with one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from smoltrain.errors import SmoltrainError

BUCKET_NUMEL = 1 << 24  # 16M elements per all-reduce


class RankLost(SmoltrainError):
    """A collective that failed because another rank froze past the timeout, died or disagreed."""


@contextlib.contextmanager
def _collective(name: str) -> Iterator[None]:
    """Turn the backend's failure of collective ``name`` (gloo and NCCL raise RuntimeError, with a C++ source
    location in front) into :class:`RankLost`, one line that says what happened and where to look."""
    try:
        yield
    except RuntimeError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", "?")
        raise RankLost(
            f"rank {rank}: {name} failed ({reason.split('] ', 1)[-1]}): another rank froze, died or "
            "stopped answering for dist_timeout_minutes; see that rank's output (raise dist_timeout_minutes "
            "if one step legitimately takes longer)"
        ) from err


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Whether init_distributed joined the process group (and so leaves it): a group the caller's own script
    # created stays the caller's.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str, timeout_minutes: float = 5.0) -> DistEnv:
    """Join the process group that `torchrun` describes in the environment, if any. A collective (or the
    rendezvous) that waits longer than ``timeout_minutes`` for another rank fails instead of hanging."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistEnv()
    env = DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        owns_group=not dist.is_initialized(),
    )
    if env.owns_group:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)
        with _collective("joining the process group"):
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return env


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    with _collective("broadcasting the initial weights"):
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum gradients over ranks, a flat bucket at a time (one collective per bucket, not per tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        start = 0
        while start < len(group):
            bucket, numel = [], 0
            while start < len(group) and (not bucket or numel + group[start].numel() <= BUCKET_NUMEL):
                bucket.append(group[start])
                numel += group[start].numel()
                start += 1
            flat = torch.cat([g.reshape(-1) for g in bucket])
            with _collective("all-reducing the gradients"):
                dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        with _collective("all-reducing the metrics"):
            dist.all_reduce(values)
    return values


def gather_objects(obj: object, env: DistEnv) -> list[object]:
    """Every rank's object, on every rank (a list with one entry when not distributed)."""
    if not env.enabled:
        return [obj]
    out: list[object] = [None] * env.world_size
    with _collective("gathering the evaluation results"):
        dist.all_gather_object(out, obj)
    return out


def leave_process_group(env: DistEnv) -> None:
    """Leave the process group that init_distributed joined, once every rank is done with it. Left to the
    interpreter's exit instead, gloo's worker threads can be torn down while still joinable, and a rank that
    finished cleanly aborts ("terminate called without an active exception"), failing the whole torchrun job."""
    if env.owns_group and dist.is_initialized():
        barrier(env)
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        with _collective("waiting for the other ranks (barrier)"):
            dist.barrier()
