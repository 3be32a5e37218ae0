"""ARC evaluator: crop, de-augmentation, voting with known winners, submission, pooling, distributed gather."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from smoltrain.eval.arc import ARCEvaluator
from tests.unit.test_arc_eval import (  # noqa: F401
    EXPECTED,
    PASS_KS,
    TASKS,
    WRONG,
    Rows,
    augment,
    dataset,
    encode,
    g,
    invalid,
    known_winners_rows,
    padded_batch,
    random_mapping,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[1]


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch.distributed as dist
    from smoltrain.eval.arc import ARCEvaluator

    root, rows_path, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = np.load(rows_path)
    part = slice(rank, None, world)  # each rank evaluates every other row
    evaluator = ARCEvaluator(root)
    evaluator.begin()
    evaluator.update(data["inputs"][part], data["ids"][part], data["preds"][part], data["q"][part])
    metrics = evaluator.result(out)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(metrics, f)
    dist.destroy_process_group()
""")


def test_two_ranks_match_single_process(dataset, tmp_path):
    root, rows = dataset
    inputs, ids, preds, q = padded_batch(rows)
    rows_path = tmp_path / "rows.npz"
    np.savez(rows_path, inputs=inputs, ids=ids, preds=preds, q=q)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    dist_out = tmp_path / "dist"
    dist_out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(root), str(rows_path), str(dist_out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    single_out = tmp_path / "single"
    evaluator = ARCEvaluator(root)
    evaluator.update(inputs, ids, preds, q)
    with pytest.warns(UserWarning):
        single = evaluator.result(single_out)
    assert single == pytest.approx(EXPECTED)
    assert json.loads((dist_out / "rank0.json").read_text()) == single
    assert json.loads((dist_out / "rank1.json").read_text()) is None
    for name in ("submission.json", "arc_scores.json"):
        assert json.loads((dist_out / name).read_text()) == json.loads((single_out / name).read_text())
