"""pytest fixtures shared by tests/unit and tests/e2e (helpers live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED


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
