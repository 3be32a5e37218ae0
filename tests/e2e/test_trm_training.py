"""TRM through the trainer and the CLI: reference command line, variants, exact resume with the ACT carry,
and a real end-to-end training on 4x4 Sudoku."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.helpers import RUNNER, run_python, write_sorting_puzzles

TINY_TRM = ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=2", "arch.L_cycles=1", "arch.halt_max_steps=4",
            "global_batch_size=16", "lr=1e-3", "lr_warmup_steps=2", "log_every=1", "device=cpu"]


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "sudoku4"
    build_sudoku_dataset(root, "generate", size=4, num_train=400, num_test=64, seed=0)
    return root


def test_reference_command_line_runs(sudoku4, tmp_path):
    # The README's Sudoku command of the reference, `python pretrain.py` replaced by `smoltrain train`;
    # only the size keys at the end are added so that it runs in seconds on a CPU.
    reference = ["arch=trm", f"data_paths=[{sudoku4}]", "evaluators=[]", "epochs=50000", "eval_interval=5000",
                 "lr=1e-4", "puzzle_emb_lr=1e-4", "weight_decay=1.0", "puzzle_emb_weight_decay=1.0",
                 "arch.mlp_t=True", "arch.pos_encodings=none", "arch.L_layers=2", "arch.H_cycles=3",
                 "arch.L_cycles=6", "+run_name=my_run", "ema=True"]
    tiny = ["max_steps=3", "global_batch_size=8", "arch.hidden_size=32", "arch.halt_max_steps=2",
            "eval_max_examples=16", "device=cpu"]
    proc = run_python(["-m", "smoltrain", "train", *reference, *tiny], cwd_override=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "my_run"
    saved = load_config(str(run / "config.yaml"))
    assert saved.arch.L_cycles == 6 and saved.arch.mlp_t and saved.arch.puzzle_emb_ndim == 32 and saved.ema
    model_state, ema_state, _ = ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert "model.inner.puzzle_emb.weights" in model_state and ema_state is not None
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [3]
    assert any(r["split"] == "eval" and "exact_accuracy" in r for r in rows)


@pytest.mark.parametrize(
    "variant",
    [
        ["arch=hrm", "arch.H_layers=1", "arch.L_layers=1"],
        ["arch=trm_singlez", "arch.L_layers=1"],
        ["arch=trm", "arch.L_layers=1", "arch.no_ACT_continue=False"],
        ["arch=trm", "arch.L_layers=1", "arch.loss.loss_type=softmax_cross_entropy", "arch.pos_encodings=learned"],
        ["arch=trm", "arch.L_layers=1", "arch.puzzle_emb_ndim=0"],  # no need to also zero puzzle_emb_len
    ],
    ids=["hrm", "trm_singlez", "act_continue", "softmax_learned_pos", "no_puzzle_emb"],
)
def test_variants_train(sudoku4, tmp_path, variant):
    cfg = load_config(None, [*variant, *TINY_TRM, f"data_paths=[{sudoku4}]", f"run_dir={tmp_path}",
                             "max_steps=30", "eval_max_examples=16"])
    summary = Trainer(cfg).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 30 and all(isinstance(v, float) and v == v for v in losses)
    assert sum(losses[-5:]) / 5 < losses[0]  # it learns: the last steps' loss is below the first's
    assert summary["eval"]["count"] == 64  # the final evaluation scores the whole test split, not eval_max_examples


def test_resume_with_act_carry_is_bitwise_exact(sudoku4, tmp_path):
    # Puzzle embedding on (sparse sign-SGD state), EMA on, exploration on: every piece of state matters.
    common = [*TINY_TRM, "arch=trm", "arch.L_layers=1", f"data_paths=[{sudoku4}]", "max_steps=24",
              "checkpoint_every=12", "ema=True", "ema_rate=0.9", "arch.halt_exploration_prob=0.5",
              "eval_max_examples=16", "eval_every=8"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    recipe = ["--recipe", "default"]  # checkpoint_every_eval: also saves after the evals at steps 8 and 16
    assert run_python([RUNNER, *recipe, *common, f"run_dir={straight}"]).returncode == 0
    killed = run_python([RUNNER, *recipe, "--kill-at-step", "19", *common, f"run_dir={crashed}"])
    assert killed.returncode == -signal.SIGKILL
    _, _, state = ckpt.load_checkpoint(ckpt.list_checkpoints(crashed / "checkpoints")[-1])
    assert state["step"] == 16 and state["ranks"][0]["carries"][0]["halted"].dtype == torch.bool
    resumed = run_python([RUNNER, *recipe, *common, f"run_dir={crashed}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        a = load_file(str(ckpt.list_checkpoints(straight / "checkpoints")[-1] / name))
        b = load_file(str(ckpt.list_checkpoints(crashed / "checkpoints")[-1] / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    drop = ("samples_per_s", "elapsed_s")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in read_metrics(d / "metrics.jsonl")]
            for d in (straight, crashed)]
    assert rows[0] == rows[1]


def test_eval_cli_on_a_run_with_other_data(sudoku4, tmp_path):
    cfg = load_config(None, ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]",
                             f"run_dir={tmp_path / 'run'}", "max_steps=2", "eval_max_examples=8"])
    Trainer(cfg).fit()
    other = tmp_path / "other"
    build_sudoku_dataset(other, "generate", size=4, num_train=20, num_test=10, seed=5)
    proc = run_python(["-m", "smoltrain", "eval", str(tmp_path / "run"), f"data_paths=[{other}]",
                       "eval_max_examples=null"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 10


def _tiny_sorting_run(data: Path, run: Path, *extra: str) -> list[str]:
    return ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{data}]", f"run_dir={run}", "max_steps=2",
            "eval_max_examples=8", "evaluators=[]", *extra]


def test_load_checkpoint_onto_other_puzzle_ids_resets_the_table_to_its_mean(tmp_path, capsys):
    # As the reference's load_checkpoint: a puzzle-embedding table of another row count becomes its mean row.
    three = write_sorting_puzzles(tmp_path / "three", n_train=64, n_test=16, num_ids=3)
    five = write_sorting_puzzles(tmp_path / "five", n_train=64, n_test=16, num_ids=5)
    Trainer(load_config(None, _tiny_sorting_run(three, tmp_path / "a"))).fit()
    source = ckpt.list_checkpoints(tmp_path / "a" / "checkpoints")[-1]
    table = ckpt.load_checkpoint(source)[0]["model.inner.puzzle_emb.weights"]
    trainer = Trainer(load_config(None, _tiny_sorting_run(five, tmp_path / "b", f"load_checkpoint={source}")))
    rows = trainer.model.state_dict()["model.inner.puzzle_emb.weights"]
    assert rows.shape == (5, table.shape[1]) and torch.equal(rows, table.mean(0, keepdim=True).expand_as(rows))
    trainer.fit()
    assert f"load_checkpoint={source}: its puzzle embedding has 3 rows, this data 5 puzzle ids; every row set " \
           "to their mean" in capsys.readouterr().out


def test_another_architecture_in_run_dir_is_one_line(tmp_path):
    three = write_sorting_puzzles(tmp_path / "three", n_train=64, n_test=16, num_ids=3)
    Trainer(load_config(None, _tiny_sorting_run(three, tmp_path / "trm"))).fit()
    proc = run_python(["-m", "smoltrain", "train", "toy", f"run_dir={tmp_path / 'trm'}", "device=cpu",
                       "max_steps=4", "resume=auto"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "holds a model of another architecture/shape than the config given (arch.name=toy): " in line
    assert "missing keys (first: " in line and "unexpected (first: model.inner." in line


@pytest.mark.slow
def test_end_to_end_4x4_reaches_90_percent_on_held_out(tmp_path):
    # One thread, as in the learning tests of tests/unit: with a second CPU-heavy job on the two cores, two
    # OpenMP threads spin at every barrier and made these 1,000 steps take 30 minutes instead of one.
    data = tmp_path / "sudoku4"
    build_sudoku_dataset(data, "generate", size=4, num_train=3000, num_test=300, seed=1)
    cfg = load_config("trm-sudoku-cpu", [f"data_paths=[{data}]", f"run_dir={tmp_path / 'run'}", "max_steps=1000",
                                         "num_threads=1",
                                         "epochs=1000", "eval_interval=1000", "eval_max_examples=null"])
    summary = Trainer(cfg).fit()
    assert summary["eval"]["count"] == 300
    assert summary["eval"]["exact_accuracy"] >= 0.90, summary


def test_compiled_training_matches_eager_losses(sudoku4, tmp_path):
    # compile=True must run (the CPU inductor once crashed on TRM's SwiGLU) and keep the checkpoint keys.
    losses = {}
    for compiled in (False, True):
        run = tmp_path / f"compile_{compiled}"
        cfg = load_config(None, ["arch=trm", "arch.L_layers=1", "arch.mlp_t=True", "arch.pos_encodings=none",
                                 *TINY_TRM, f"data_paths=[{sudoku4}]", f"run_dir={run}", "max_steps=3",
                                 "eval_max_examples=8", f"compile={compiled}", "arch.halt_exploration_prob=0"])
        Trainer(cfg).fit()
        losses[compiled] = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
        keys = ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])[0].keys()
        assert all(k.startswith("model.inner.") for k in keys)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_ddp_two_cpu_processes_match_one(sudoku4, tmp_path):
    # Rank-sliced batches, per-rank ACT carries, summed gradients and the all-gathered sign-SGD update of
    # the puzzle embedding together must reproduce the single-process run.
    args = [*TINY_TRM, "arch=trm", "arch.L_layers=1", "arch.halt_exploration_prob=0", f"data_paths=[{sudoku4}]",
            "max_steps=6", "eval_max_examples=16", "puzzle_emb_lr=1e-2"]
    single = run_python(["-m", "smoltrain", "train", *args, f"run_dir={tmp_path / 'one'}"])
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "smoltrain",
                      "train", *args, f"run_dir={tmp_path / 'two'}"], timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = ([r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["split"] == "train"]
                for name in ("one", "two"))
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])


def test_eval_save_outputs_writes_predictions(sudoku4, tmp_path):
    cfg = load_config(None, ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]",
                             f"run_dir={tmp_path}", "max_steps=2", "eval_max_examples=null",
                             "eval_save_outputs=[inputs,labels,preds,q_halt_logits]"])
    Trainer(cfg).fit()
    saved = torch.load(tmp_path / "step_2_all_preds.0", weights_only=True)
    assert set(saved) == {"inputs", "labels", "preds", "q_halt_logits"}
    assert saved["preds"].shape == (64, 16) and saved["q_halt_logits"].shape == (64,)  # every test puzzle once
    assert torch.equal(saved["inputs"], torch.from_numpy(np.load(sudoku4 / "test" / "all__inputs.npy")).int())


def test_unknown_evaluators_and_outputs_are_refused(sudoku4, tmp_path):
    from smoltrain.errors import ConfigError

    base = ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]", f"run_dir={tmp_path}", "max_steps=1"]
    with pytest.raises(ConfigError, match="evaluators: unknown evaluator 'bleu'"):
        Trainer(load_config(None, [*base, "evaluators=[bleu]"]))
    with pytest.raises(ConfigError, match="needs an ARC dataset"):
        Trainer(load_config(None, [*base, "evaluators=[{name: arc@ARC}]"]))
    with pytest.raises(ConfigError, match="no option 'pass_K'"):
        Trainer(load_config(None, [*base, "evaluators=[{name: arc, pass_K: 2}]"]))
    with pytest.raises(ConfigError, match="eval_save_outputs: unknown"):
        Trainer(load_config(None, [*base, "eval_save_outputs=[logitz]"]))


def test_freeze_weights_trains_only_the_puzzle_embeddings(sudoku4, tmp_path):
    cfg = load_config(None, ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]",
                             f"run_dir={tmp_path}", "max_steps=3", "eval_max_examples=8", "freeze_weights=True",
                             "puzzle_emb_lr=1e-2"])
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.inner.puzzle_emb.weights"}


@pytest.mark.slow
def test_end_to_end_trm_maze_cpu_learns_shortest_paths(tmp_path):
    """The `trm-maze-cpu` recipe on generated 6x6 mazes: 700 steps (about a minute) already find a shortest
    path for a clear share of held-out mazes (the 5-minute recipe reaches ~90%; bench/RESULTS.md)."""
    from smoltrain.data.maze import CHARSET, build_maze_dataset

    data = tmp_path / "maze6"
    build_maze_dataset(data, "generate", size=6, num_train=6000, num_test=300, seed=3)
    cfg = load_config("trm-maze-cpu", [f"data_paths=[{data}]", f"run_dir={tmp_path / 'run'}", "max_steps=700",
                                       "num_threads=1",
                                       "epochs=1000", "eval_interval=1000", "eval_max_examples=null"])
    summary = Trainer(cfg).fit()["eval"]
    assert summary["count"] == 300
    labels = np.load(data / "test" / "all__labels.npy")
    path_token = CHARSET.index("o") + 1  # tokens are charset indices shifted by PAD
    blank_baseline = 1.0 - float((labels == path_token).mean())  # per-cell accuracy of answering "no path"
    assert summary["accuracy"] > blank_baseline + 0.02, (summary, blank_baseline)
    # Every exact answer is a valid optimal path, and other shortest paths count too.
    assert summary["valid_optimal_path"] >= summary["exact_accuracy"]
    assert summary["valid_optimal_path"] >= 0.15, summary


def test_puzzle_embedding_table_is_off_the_dense_optimizer_and_ema(sudoku4, tmp_path):
    """As in the reference (and what keeps ARC's ~961k x 512 table affordable): only the sparse sign-SGD
    updates the table; neither AdamATan2's state nor the EMA holds a copy of it."""
    cfg = load_config(None, ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]",
                             f"run_dir={tmp_path}", "arch.puzzle_emb_ndim=32", "ema=True"])
    trainer = Trainer(cfg)
    table = trainer.model.model.puzzle_emb.weights
    dense, sparse = (spec.optimizer for spec in trainer.optimizers)
    dense_params = [p for group in dense.param_groups for p in group["params"]]
    assert all(p is not table for p in dense_params)
    assert any(p is table for group in sparse.param_groups for p in group["params"])
    assert trainer.ema.shadow and not any("puzzle_emb" in name for name in trainer.ema.shadow)
