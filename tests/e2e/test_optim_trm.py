"""Optimizers of the TRM recipe: AdamATan2 (formula check) and SparseSignSGD (the puzzle-embedding rule)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smoltrain.models.trm import CastedSparseEmbedding
from smoltrain.optim import SparseSignSGD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sparse_worker(rank: int, world_size: int, port: int, queue: mp.SimpleQueue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        emb = CastedSparseEmbedding(4, 2, batch_size=2, init_std=0.0, cast_to=torch.float32)
        with torch.no_grad():
            emb.weights.copy_(torch.tensor([[1.0, 1.0], [2.0, -2.0], [3.0, 3.0], [4.0, 4.0]]))
        opt = SparseSignSGD(emb.buffers(), lr=0.1, weight_decay=0.5)
        # Rank 0 sees ids [1, 3], rank 1 sees [1, 0]: id 1's grads are summed across ranks before the sign.
        if rank == 0:
            ids, grads = [1, 3], [[0.5, -1.0], [2.0, 0.0]]
        else:
            ids, grads = [1, 0], [[-1.0, 2.0], [0.0, -3.0]]
        out = emb(torch.tensor(ids, dtype=torch.int32))
        (out * torch.tensor(grads)).sum().backward()
        opt.step()
        queue.put((rank, emb.weights.tolist()))
        # Both ranks leave together, then the process ends without tearing gloo down: its threads, destroyed by
        # the interpreter's exit while the peer's were still finishing, aborted a worker ("terminate called
        # without an active exception") twice in full runs on a loaded machine. The result is already sent.
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    os._exit(0)


def test_sparse_sign_sgd_distributed_gather() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    world_size = 2
    mp.start_processes(_sparse_worker, args=(world_size, _free_port(), queue), nprocs=world_size,
                       start_method="spawn")
    results = dict(queue.get() for _ in range(world_size))
    expected = [
        [1.0 * 0.95, 1.0 * 0.95 + 0.1],  # id 0 (rank 1 only): sign [0, -1]
        [2.0 * 0.95 + 0.1, -2.0 * 0.95 - 0.1],  # id 1: [0.5-1, -1+2] -> sign [-1, +1]
        [3.0, 3.0],  # untouched on every rank
        [4.0 * 0.95 - 0.1, 4.0 * 0.95],  # id 3 (rank 0 only): sign [1, 0]
    ]
    for rank in range(world_size):  # every rank applies the same global update
        torch.testing.assert_close(torch.tensor(results[rank]), torch.tensor(expected))
