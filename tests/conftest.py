"""Shared test helpers: tiny configs and a way to run the CLI in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def toy_overrides(run_dir: Path, **extra: object) -> list[str]:
    base = {
        "run_dir": str(run_dir),
        "global_batch_size": 16,
        "max_steps": 20,
        "log_every": 1,
        "lr": 3e-3,
        "lr_warmup_steps": 3,
        "device": "cpu",
        "arch.hidden_size": 16,
        "arch.eval_examples": 64,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_python(args: list[str], timeout: float = 300, env: dict[str, str] | None = None,
               cwd_override: Path | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` in a subprocess (one OpenMP thread: tests run side by side on 2 cores)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd_override or REPO)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED} (only in the smoltrain workspace)")
    return SHARED


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-model tests: OpenMP threads only add spin and sync overhead
    there (up to 100x slower on a loaded 2-core machine)."""
    import torch

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)
