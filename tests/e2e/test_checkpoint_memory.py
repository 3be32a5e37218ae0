"""Checkpoints of a large table (ARC's puzzle embeddings are ~2 GB) must not double peak memory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_python

SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch

    from smoltrain.runs import checkpoint as ckpt

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB

    ROWS, DIM = 128 * 1024, 512  # 256 MiB of fp32, like a slice of the ARC puzzle-embedding table
    model = torch.nn.Module()
    model.register_buffer("table", torch.full((ROWS, DIM), 0.5))
    model.emb = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=False)
    model.head.weight = model.emb.weight  # tied: shares storage, must still save
    with torch.no_grad():
        model.table[7].fill_(3.0)

    before = status("VmHWM")
    ckpt.save_checkpoint(Path(sys.argv[1]), 1, model.state_dict(), None, {"step": 1}, keep=1)
    print("save_growth", status("VmHWM") - before)

    target = torch.nn.Module()
    target.register_buffer("table", torch.full((ROWS, DIM), 1.0))  # touched pages: really allocated
    target.emb = torch.nn.Embedding(10, 4)
    target.head = torch.nn.Linear(4, 10, bias=False)
    target.head.weight = target.emb.weight
    del model
    anon_before = status("RssAnon")
    state, _, _ = ckpt.load_checkpoint(Path(sys.argv[1]) / "step_00000001")
    target.load_state_dict(state)
    del state
    print("load_anon_growth", status("RssAnon") - anon_before)
    print("row7", float(target.table[7, 0]), "row0", float(target.table[0, 0]))
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux only)")
def test_saving_and_loading_a_large_table_holds_no_second_copy(tmp_path: Path):
    script = tmp_path / "mem.py"
    script.write_text(SCRIPT)
    proc = run_python([str(script), str(tmp_path / "ckpt")])
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    # A copy of the table would add 256 MiB; allow for allocator and library noise.
    assert float(values["save_growth"]) < 64, proc.stdout
    assert float(values["load_anon_growth"]) < 64, proc.stdout
    assert values["row7"].startswith("3.0 row0 0.5"), proc.stdout
