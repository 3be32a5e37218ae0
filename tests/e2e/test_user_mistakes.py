"""Deliberate user mistakes through the real CLI: each ends with exit status 2 and one `error:` line, no traceback.

The cases run side by side (two subprocesses at a time) in a few tests; those that need a built dataset or a
finished run share module-scoped fixtures (a 2-step toy run, a 4x4 Sudoku dataset, a 1-step TRM run on it).
An argument may name `{run}`, `{trm}`, `{sudoku}` or `{tmp}` (a scratch folder holding the small files the
cases read); they are filled in before the case runs.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import run_python, toy_overrides

Case = tuple[str, list[str]]  # an id, then the arguments after `smoltrain`

CONFIG_CASES: list[Case] = [
    ("unknown recipe", ["train", "no-such-recipe"]),
    ("missing recipe file", ["train", "{tmp}/missing.yaml"]),
    ("recipe not YAML", ["train", "{tmp}/broken.yaml"]),
    ("recipe not a mapping", ["train", "{tmp}/list.yaml"]),
    ("unknown key", ["train", "toy", "lrr=1e-3"]),
    ("unknown arch key", ["train", "toy", "arch.hidden=3"]),
    ("unknown arch preset", ["train", "toy", "arch=no-such-arch"]),
    ("override without =", ["train", "toy", "lr"]),
    ("unresolvable interpolation", ["train", "toy", "run_name=${{nope}}"]),
    ("wrong type", ["train", "toy", "lr=fast"]),
    ("wrong literal", ["train", "toy", "precision=fp8"]),
    ("beta1 above 1", ["train", "toy", "beta1=5"]),
    ("beta2 of 1", ["train", "toy", "beta2=1"]),
    ("negative seed", ["train", "toy", "seed=-1"]),
    ("eval_max_examples 0", ["train", "toy", "eval_max_examples=0"]),
    ("zero batch", ["train", "toy", "global_batch_size=0"]),
    ("lr_min_ratio above 1", ["train", "toy", "lr_min_ratio=2"]),
    ("zero max_steps", ["train", "toy", "max_steps=0"]),
    ("batch not divisible by accumulation", ["train", "toy", "global_batch_size=16", "grad_accum_steps=3",
                                             "device=cpu", "run_dir={tmp}/accum"]),
    ("toy zero hidden size", ["train", "toy", "arch.hidden_size=0"]),
    ("toy dropout of 1", ["train", "toy", "arch.dropout=1"]),
    ("info zero hidden size", ["info", "toy", "arch.hidden_size=0"]),
    ("lm zero heads", ["info", "arch=lm", "arch.vocab_size=64", "data_paths=[]", "arch.num_attention_heads=0"]),
    ("lm zero vocabulary", ["info", "arch=lm", "arch.vocab_size=0", "data_paths=[]"]),
    ("missing dataset", ["train", "trm-sudoku-cpu", "data_paths=[{tmp}/no-dataset]"]),
]

TRM = ["train", "trm-sudoku-cpu", "data_paths=[{sudoku}]", "device=cpu", "run_dir={tmp}/trm"]
TRM_CASES: list[Case] = [
    ("trm zero H_cycles", [*TRM, "arch.H_cycles=0"]),
    ("trm negative L_cycles", [*TRM, "arch.L_cycles=-1"]),
    ("trm zero heads", [*TRM, "arch.num_heads=0"]),
    ("trm zero halt_max_steps", [*TRM, "arch.halt_max_steps=0"]),
    ("trm exploration above 1", [*TRM, "arch.halt_exploration_prob=2"]),
    ("hrm zero H_layers", [*TRM, "arch=hrm", "arch.H_layers=0"]),
    ("trm unknown loss head", [*TRM, "arch.loss.name=losses@Nope"]),
    ("trm seq_len that disagrees with the data", [*TRM, "arch.seq_len=81"]),
]

RUN_CASES: list[Case] = [
    ("eval without a run", ["eval", "{tmp}/no-run"]),
    ("eval unknown override", ["eval", "{run}", "lrr=1"]),
    ("eval zero render count", ["eval", "{run}", "--render-count", "0"]),
    ("solve without a run", ["solve", "{tmp}/no-run", "--puzzle", "123"]),
    ("solve negative example", ["solve", "{run}", "--example", "-1"]),
    ("solve missing puzzle file", ["solve", "{run}", "--puzzle-file", "{tmp}/no-puzzle.txt"]),
    ("solve a toy run", ["solve", "{run}", "--puzzle", "1234"]),
    ("generate without a run", ["generate", "{tmp}/no-run", "--prompt", "hi"]),
    ("generate with a toy run", ["generate", "{run}", "--prompt", "hi"]),
    ("export a toy run", ["export", "{run}", "--output", "{tmp}/exported"]),
]

SOLVE = ["solve", "{trm}", "--device", "cpu"]
PUZZLE_CASES: list[Case] = [
    ("puzzle with a letter", [*SOLVE, "--puzzle", "12x4" + "." * 12]),
    ("puzzle of 3 cells", [*SOLVE, "--puzzle", "123"]),
    ("puzzle breaking the rules", [*SOLVE, "--puzzle", "1234" * 4]),
    ("9x9 puzzle for a 4x4 run", [*SOLVE, "--puzzle", "." * 81]),
    ("maze text for a Sudoku run", [*SOLVE, "--puzzle", "#S.G"]),
    ("empty puzzle file", [*SOLVE, "--puzzle-file", "{tmp}/empty.txt"]),
    ("example out of range", [*SOLVE, "--example", "99"]),
    ("eval override out of range", ["eval", "{trm}", "eval_max_examples=0", "--device", "cpu"]),
    ("eval missing checkpoint", ["eval", "{trm}", "--checkpoint", "{trm}/no-step", "--device", "cpu"]),
    ("eval on a missing GPU", ["eval", "{trm}", "--device", "cuda"]),
    ("unknown device", ["train", "toy", "device=tpu", "run_dir={tmp}/tpu"]),
]

SAMPLING = ["generate", "{run}", "--prompt", "hi"]
FLAG_CASES: list[Case] = [
    ("negative temperature", [*SAMPLING, "--temperature", "-1"]),
    ("NaN temperature", [*SAMPLING, "--temperature", "nan"]),
    ("infinite temperature", [*SAMPLING, "--temperature", "inf"]),
    ("temperature not a number", [*SAMPLING, "--temperature", "warm"]),
    ("top-p of 0", [*SAMPLING, "--top-p", "0"]),
    ("top-p above 1", [*SAMPLING, "--top-p", "1.5"]),
    ("NaN top-p", ["chat", "{run}", "--top-p", "nan"]),
    ("negative top-k", [*SAMPLING, "--top-k", "-1"]),
    ("zero max-new-tokens", [*SAMPLING, "--max-new-tokens", "0"]),
    ("chat negative max-new-tokens", ["chat", "{run}", "--max-new-tokens", "-5"]),
    ("negative generate seed", [*SAMPLING, "--seed", "-1"]),
    ("generate without --prompt", ["generate", "{run}"]),
    ("unknown verb", ["trian", "toy"]),
    ("no verb", []),
    ("unknown flag", ["eval", "{run}", "--no-such-flag"]),
    ("demo zero minutes", ["demo", "--minutes", "0"]),
    ("demo negative minutes", ["demo", "lm", "--minutes", "-1"]),
    ("unknown demo", ["demo", "gpt"]),
    ("import trm zero seq-len", ["import", "trm", "--checkpoint", "{tmp}/x", "--output", "{tmp}/o", "--seq-len", "0"]),
    ("import minimind unknown preset", ["import", "minimind", "--checkpoint", "{tmp}/x", "--preset", "gpt2",
                                        "--output", "{tmp}/o"]),
]

SUDOKU = ["data", "sudoku", "--output-dir", "{tmp}/sudoku-out", "--size", "4"]
MAZE = ["data", "maze", "--output-dir", "{tmp}/maze-out", "--size", "5"]
ARC = ["data", "arc", "--input-file-prefix", "{tmp}/arc", "--subsets", "evaluation", "--output-dir", "{tmp}/arc-out"]
TEXT = ["data", "text", "--input", "{tmp}/corpus.txt", "--tokenizer", "{tmp}/no-tokenizer",
        "--output-dir", "{tmp}/text-out"]
TOKENIZER = ["tokenizer", "train", "--input", "{tmp}/corpus.txt", "--output", "{tmp}/tokenizer-out"]
SFT = ["data", "sft", "--input", "{tmp}/corpus.txt", "--tokenizer", "{tmp}/no-tokenizer",
       "--output-dir", "{tmp}/sft-out"]
INSTRUCTIONS = ["data", "instructions", "--output", "{tmp}/instructions.jsonl"]
DATA_CASES: list[Case] = [
    ("sudoku size 5", ["data", "sudoku", "--output-dir", "{tmp}/sudoku-out", "--size", "5"]),
    ("sudoku zero train puzzles", [*SUDOKU, "--num-train", "0"]),
    ("sudoku negative augmentations", [*SUDOKU, "--num-aug", "-1"]),
    ("sudoku negative seed", [*SUDOKU, "--seed", "-1"]),
    ("sudoku zero per-climb", [*SUDOKU, "--per-climb", "0"]),
    ("sudoku too many clues", [*SUDOKU, "--target-clues", "99"]),
    ("sudoku count not a number", [*SUDOKU, "--num-train", "many"]),
    ("sudoku unknown source", [*SUDOKU, "--source", "web"]),
    ("sudoku missing csv", [*SUDOKU, "--source", "csv:{tmp}/no.csv"]),
    ("maze size 2", ["data", "maze", "--output-dir", "{tmp}/maze-out", "--size", "2"]),
    ("maze path length 1", [*MAZE, "--min-path-length", "1"]),
    ("maze path longer than the grid", [*MAZE, "--min-path-length", "26"]),
    ("arc without input", ["data", "arc", "--output-dir", "{tmp}/arc-out"]),
    ("arc missing input dir", ["data", "arc", "--input-dir", "{tmp}/no-arc", "--output-dir", "{tmp}/arc-out"]),
    ("arc zero canvas", [*ARC, "--canvas-size", "0"]),
    ("arc zero max tasks", [*ARC, "--max-tasks", "0"]),
    ("arc test set not among subsets", [*ARC, "--test-set-name", "training"]),
    ("text val fraction of 1", [*TEXT, "--val-fraction", "1"]),
    ("text NaN val fraction", [*TEXT, "--val-fraction", "nan"]),
    ("text negative seed", [*TEXT, "--seed", "-1"]),
    ("text missing tokenizer", TEXT),
    ("tokenizer vocabulary below the bytes", [*TOKENIZER, "--vocab-size", "100"]),
    ("tokenizer zero min frequency", [*TOKENIZER, "--min-frequency", "0"]),
    ("tokenizer over an existing directory", [*TOKENIZER[:-1], "{tmp}"]),
    ("sft val fraction of 1", [*SFT, "--val-fraction", "1"]),
    ("sft zero max length", [*SFT, "--max-length", "0"]),
    ("sft missing tokenizer", SFT),
    ("dpo NaN val fraction", ["data", "dpo", *SFT[2:], "--val-fraction", "nan"]),
    ("instructions zero count", [*INSTRUCTIONS, "--count", "0"]),
    ("instructions more held-out items than there are", [*INSTRUCTIONS, "--split", "heldout", "--count", "99999"]),
    ("import trm missing checkpoint", ["import", "trm", "--checkpoint", "{tmp}/no-step", "--output", "{tmp}/o"]),
    ("import hf missing directory", ["import", "hf", "{tmp}/no-hf", "--output", "{tmp}/o"]),
    ("import minimind missing checkpoint", ["import", "minimind", "--checkpoint", "{tmp}/no.pth",
                                            "--preset", "minimind2-26m", "--output", "{tmp}/o"]),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """The scratch folder with its small input files, a 2-step toy run and a 4x4 Sudoku dataset."""
    tmp = tmp_path_factory.mktemp("mistakes")
    (tmp / "broken.yaml").write_text("arch: [toy\n")
    (tmp / "list.yaml").write_text("- toy\n")
    (tmp / "corpus.txt").write_text("a line of text\nanother line of text\n")
    (tmp / "arc_evaluation_challenges.json").write_text('{"t1": {"train": [{"input": [[1]], "output": [[2]]}], '
                                                        '"test": [{"input": [[1]]}]}}')
    (tmp / "arc_evaluation_solutions.json").write_text('{"t1": [[[2]]]}')
    (tmp / "empty.txt").write_text("")
    run, sudoku, trm = tmp / "toy-run", tmp / "sudoku4", tmp / "trm-run"
    builds = [["-m", "smoltrain", "train", "toy", *toy_overrides(run, max_steps=2)],
              ["-m", "smoltrain", "data", "sudoku", "--source", "generate", "--size", "4", "--num-train", "20",
               "--num-test", "10", "--output-dir", str(sudoku)]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in pool.map(run_python, builds):
            assert done.returncode == 0, done.stderr
    # The smallest TRM there is, one step on the 4x4 Sudokus: a run that solves puzzles (badly).
    done = run_python(["-m", "smoltrain", "train", "trm-sudoku-cpu", f"data_paths=[{sudoku}]", f"run_dir={trm}",
                       "device=cpu", "max_steps=1", "global_batch_size=4", "eval_max_examples=4",
                       "arch.hidden_size=16", "arch.num_heads=1", "arch.L_layers=1", "arch.H_cycles=1",
                       "arch.L_cycles=1", "arch.halt_max_steps=2", "arch.swiglu_multiple=8"])
    assert done.returncode == 0, done.stderr
    return {"tmp": str(tmp), "run": str(run), "sudoku": str(sudoku), "trm": str(trm)}


def _problems(cases: list[Case], places: dict[str, str]) -> list[str]:
    """Each case that did not end as a user mistake should, with what it printed."""

    def run(case: Case) -> subprocess.CompletedProcess:
        return run_python(["-m", "smoltrain", *(arg.format(**places) for arg in case[1])], timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    problems = []
    for (name, _), done in zip(cases, results, strict=True):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        if done.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error:") or "Traceback" in done.stderr:
            problems.append(f"{name}: exit {done.returncode}, stderr {done.stderr.strip()[-400:]!r}")
    return problems


def test_enough_mistakes_are_tried():
    cases = CONFIG_CASES + TRM_CASES + RUN_CASES + PUZZLE_CASES + FLAG_CASES + DATA_CASES
    assert len(cases) >= 60
    assert len({name for name, _ in cases}) == len(cases)  # ids name the failures: each once


@pytest.mark.parametrize("cases", [CONFIG_CASES, TRM_CASES + RUN_CASES + PUZZLE_CASES, FLAG_CASES + DATA_CASES],
                         ids=["config", "trm and runs", "flags and data"])
def test_each_mistake_is_one_error_line(cases, places):
    problems = _problems(cases, places)
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)
