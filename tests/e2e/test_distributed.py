"""Distributed runs do not hang: a frozen rank ends its peers with one line, and a torchrun run reports once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from smoltrain.errors import SmoltrainError
from smoltrain.runtime.distributed import RankLost, all_reduce_sum, init_distributed
from tests.helpers import REPO, run_python, toy_overrides

TIMEOUT_S = 3.0  # the process-group timeout of the frozen-rank test
FROZEN_S = 4 * TIMEOUT_S  # how long rank 1 does not answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, queue: mp.SimpleQueue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = init_distributed("cpu", timeout_minutes=TIMEOUT_S / 60)
    all_reduce_sum(torch.ones(1))  # both ranks are alive here
    if env.rank == 1:
        time.sleep(FROZEN_S)  # a frozen rank: it never joins the next collective
        os._exit(0)
    started = time.monotonic()
    try:
        all_reduce_sum(torch.ones(1))
        queue.put(("no error", time.monotonic() - started))
    except RankLost as err:
        queue.put((str(err), time.monotonic() - started))
    # No teardown of gloo: its threads may abort the interpreter's exit while the peer is gone.
    os._exit(0)


def test_a_frozen_rank_ends_its_peer_with_one_line_within_the_timeout() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    started = time.monotonic()
    mp.start_processes(_rank_worker, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    message, waited = queue.get()
    assert message.startswith("rank 0: all-reducing the metrics failed (Timed out") and "\n" not in message
    assert "dist_timeout_minutes" in message
    assert TIMEOUT_S * 0.9 <= waited < FROZEN_S  # it gave up at the timeout, not when the frozen rank came back
    assert time.monotonic() - started < 60


def _start_worker(rank: int, port: int, queue: mp.SimpleQueue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from smoltrain.train.trainer import check_ranks_start_alike

    env = init_distributed("cpu", timeout_minutes=1)
    check_ranks_start_alike(40, env)  # both at step 40: no complaint
    try:
        check_ranks_start_alike(40 if rank == 0 else 0, env)  # rank 1 saw no checkpoint (no shared run_dir)
        queue.put((rank, "no error"))
    except SmoltrainError as err:
        queue.put((rank, str(err)))
    os._exit(0)


def test_ranks_that_would_start_from_different_steps_stop_with_one_line() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_start_worker, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    messages = dict(queue.get() for _ in range(2))
    assert messages[0] == messages[1]  # every rank stops, with the same line
    assert messages[0].startswith("rank 1 starts at step 0 and rank 0 at step 40: ") and "\n" not in messages[0]
    assert "filesystem that every node mounts" in messages[0]


def test_torchrun_prints_the_summary_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                         "-m", "smoltrain", "train", "toy", *toy_overrides(run_dir, max_steps=3)], timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1 and result.stdout.count("final eval:") == 1, result.stdout
    assert f"run directory: {run_dir}" in result.stdout


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a child of ``parent`` with RANK=rank in its environment)."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_a_stopped_rank_under_torchrun_ends_the_job_instead_of_hanging(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "smoltrain", "train", "toy",
               *toy_overrides(run_dir, max_steps=1_000_000, dist_timeout_minutes=TIMEOUT_S / 60)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    stopped = None
    try:
        deadline = time.monotonic() + 60
        while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size):
            assert job.poll() is None and time.monotonic() < deadline, "the training did not start"
            time.sleep(0.2)
        stopped = _worker_pid(job.pid, 1)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)  # frozen: alive, holding its sockets, answering nothing
        _, stderr = job.communicate(timeout=90)  # torchrun kills a stopped worker after its grace period
    finally:
        if job.poll() is None:
            job.kill()
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
    assert job.returncode != 0
    # Rank 0 waited in whichever collective came next (the gradients' or the metrics'), then gave up.
    assert re.search(r"error: rank 0: all-reducing the \w+ failed \(Timed out", stderr), stderr[-3000:]
