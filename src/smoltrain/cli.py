"""The `smoltrain` command line. It parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn, TypeVar

from smoltrain.errors import ConfigError, DataError, SmoltrainError

EXIT_UNEXPECTED = 1  # an exception that is not a SmoltrainError: a bug, or a user mistake not yet checked
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
DEBUG_ENV = "SMOLTRAIN_DEBUG"
SKIPPED_SHOWN = 10  # `data arc`: task ids named in the summary (a small canvas can skip hundreds)
OptionsT = TypeVar("OptionsT")  # a builder's options dataclass


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes as one ``error:`` line naming the verb, the flag and ``--help`` (argparse's default adds
    the usage on a line of its own); exit status 2 as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(convert: Callable[[str], float], low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number in a range: ``_number(float, 0, 1, low_open=True)`` is (0, 1],
    ``_number(int, 1)`` an integer >= 1. The range is written into the error message."""
    if low is not None and high is not None:
        domain = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        domain = f"{'>' if low_open else '>='} {low:g}"
    else:
        domain = f"{'<' if high_open else '<='} {high:g}" if high is not None else ""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {domain}, got {text}")
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {domain}, got {text}")
        return value

    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)  # zero allowed: a count of things, a seed


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    """`train [RECIPE] key=value ...`: the first argument without '=' is the recipe."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(ns: argparse.Namespace) -> int:
    from smoltrain.families import load_config
    from smoltrain.train.trainer import Trainer, TrainingDiverged

    recipe, overrides = _split_recipe(ns.args)
    cfg = load_config(recipe, overrides)
    trainer = Trainer(cfg)
    try:
        summary = trainer.fit()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    if not trainer.dist.is_main:  # under torchrun the summary is rank 0's to print, once
        return 0
    if summary.get("eval"):
        print("final eval: " + " ".join(f"{k}={v:.4f}" for k, v in summary["eval"].items()))
    print(f"run directory: {summary['run_dir']}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from smoltrain.runs.loading import evaluate

    metrics = evaluate(ns.run_dir, checkpoint=ns.checkpoint, device=ns.device, overrides=ns.overrides)
    print(json.dumps(metrics, indent=2))
    if ns.render:
        from smoltrain.apps.solve import render_examples

        page = render_examples(ns.run_dir, ns.render, count=ns.render_count, device=ns.device,
                               checkpoint=ns.checkpoint, overrides=ns.overrides)
        print(f"drew the ACT traces of up to {ns.render_count} test examples: open {page}")
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    from smoltrain.config import config_to_yaml
    from smoltrain.families import build_family, load_config
    from smoltrain.runtime.device import pick_device, resolve_precision
    from smoltrain.runtime.distributed import DistEnv

    recipe, overrides = _split_recipe(ns.args)
    family = build_family(load_config(recipe, overrides), DistEnv(), pick_device("cpu"))
    cfg = family.cfg  # resolved: what a run of it would write to config.yaml
    model = family.build_model()
    facts = family.describe(model)
    try:
        steps_per_epoch = family.steps_per_epoch()
    except SmoltrainError as err:  # a model can be described from declared shapes alone; steps need data
        facts["steps"] = f"unknown ({err})"
    else:
        facts["steps_per_epoch"] = round(steps_per_epoch, 3)
        facts["total_steps"] = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    if "steps" not in facts:  # the data is here: one real micro-batch through forward and backward
        from smoltrain.train.profile import cost_facts, measure_step

        facts.update(cost_facts(measure_step(cfg, resolve_precision(cfg.precision, pick_device("cpu")))))
    else:
        facts["flops_per_step"] = "unknown (counted on a micro-batch of the dataset, which is not built yet)"
    if ns.show_config:
        print(config_to_yaml(cfg))
    for key, value in facts.items():
        print(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")
    from smoltrain.train.profile import parameter_lines, parameter_table, plot_parameters

    table = parameter_table(model)
    print("\n".join(["parameters by module:", *parameter_lines(table)]))
    if ns.plot:
        print(f"wrote {plot_parameters(table, pathlib.Path(ns.plot), cfg.arch.name)}")
    return 0


def cmd_plot(ns: argparse.Namespace) -> int:
    from smoltrain.runs.curves import plot_curves

    metrics = [m for group in ns.metric for m in group.split(",") if m] if ns.metric else None
    output, series = plot_curves(ns.run_dirs, ns.output, metrics=metrics, x=ns.x, title=ns.title)
    drawn = sorted({s.metric for s in series})
    print(f"wrote {output}: {len(series)} curves of {', '.join(drawn)} from {len(ns.run_dirs)} run(s)")
    return 0


def _data_options(options_type: type[OptionsT], ns: argparse.Namespace) -> OptionsT:
    """A builder's options from the arguments of its `data` verb: each flag's dest is the name of a field."""
    return options_type(**{field.name: getattr(ns, field.name) for field in dataclasses.fields(options_type)})


def cmd_data_sudoku(ns: argparse.Namespace) -> int:
    from smoltrain.data.sudoku import SudokuBuilder, SudokuOptions

    info = SudokuBuilder(_data_options(SudokuOptions, ns)).build(ns.output_dir, progress=True)
    counts = info["counts"]
    print(f"wrote {ns.output_dir}: {counts['train_puzzles']:,} train puzzles ({counts['train_rows']:,} rows with "
          f"augmentations), {counts['test_puzzles']:,} test puzzles in {info['build_seconds']:.1f} s")
    return 0


def cmd_data_maze(ns: argparse.Namespace) -> int:
    from smoltrain.data.maze import MazeBuilder, MazeOptions

    info = MazeBuilder(_data_options(MazeOptions, ns)).build(ns.output_dir, progress=True)
    counts, lengths = info["counts"], info["path_length"]
    print(f"wrote {ns.output_dir}: {counts['train_mazes']:,} train mazes ({counts['train_rows']:,} rows with "
          f"augmentations), {counts['test_mazes']:,} test mazes of {info['size']}x{info['size']}, shortest paths "
          f"{lengths['train']['min']}-{lengths['train']['max']} cells (train), in {info['build_seconds']:.1f} s")
    return 0


def cmd_data_arc(ns: argparse.Namespace) -> int:
    from smoltrain.data.arc import ArcBuilder, ArcOptions

    info = ArcBuilder(_data_options(ArcOptions, ns)).build(ns.output_dir, progress=True)
    counts, n = info["counts"], info["canvas_size"]
    print(f"wrote {ns.output_dir}: {counts['tasks']:,} tasks, {counts['puzzles']:,} puzzles "
          f"({counts['identifiers']:,} identifiers), {counts['train_rows']:,} train rows, "
          f"{counts['test_rows']:,} test rows on a {n}x{n} canvas in {info['build_seconds']:.1f} s")
    if not info["test_solutions"]:
        print(f"no solutions for {counts['test_pairs_without_solution']:,} test inputs of `{info['test_set_name']}`: "
              "their labels are dummies (as the reference fills them), so evaluations write submission.json and "
              "score nothing on them")
    skipped = info["skipped_tasks"]
    if skipped:
        shown = ", ".join(skipped[:SKIPPED_SHOWN]) + (", ..." if len(skipped) > SKIPPED_SHOWN else "")
        print(f"skipped {len(skipped):,} tasks with grids larger than {n}x{n}: {shown} "
              f"(all listed in {ns.output_dir}/build_info.json)")
    return 0


def cmd_solve(ns: argparse.Namespace) -> int:
    from smoltrain.apps.solve import read_puzzle_file, solve_puzzle

    text = read_puzzle_file(ns.puzzle_file) if ns.puzzle_file else ns.puzzle
    solution = solve_puzzle(ns.run_dir, puzzle_text=text, example=ns.example, device=ns.device)
    print(solution.report())
    if ns.render:
        from smoltrain.apps.render import render_traces

        name = "puzzle" if ns.example is None else f"example-{ns.example:04d}"
        print(f"drew the ACT trace: open {render_traces([solution.trace], ns.render, [name])}")
    return 0


def cmd_import_trm(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.interop.trm_import import import_reference_checkpoint

    out = import_reference_checkpoint(Path(ns.checkpoint), Path(ns.output), ns.data_paths or None,
                                      seq_len=ns.seq_len, log=print)
    print(f"run directory: {out}")
    return 0


def cmd_tokenizer_train(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.data.tokenizer import train_tokenizer

    out = train_tokenizer([Path(p) for p in ns.input], ns.vocab_size, Path(ns.output),
                          min_frequency=ns.min_frequency, skip_bad_lines=ns.skip_bad_lines, overwrite=ns.overwrite)
    print(f"wrote tokenizer to {out}")
    return 0


def cmd_data_text(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.data.text import build_text_dataset

    info = build_text_dataset(ns.input, Path(ns.tokenizer), Path(ns.output_dir), val_fraction=ns.val_fraction,
                              seed=ns.seed, skip_bad_lines=ns.skip_bad_lines, workers=ns.workers)
    splits = info["splits"]
    print(f"wrote {ns.output_dir}: {splits['train']['tokens']:,} train tokens, {splits['val']['tokens']:,} val "
          f"tokens ({info['skipped_lines']} bad lines skipped)")
    return 0


def cmd_data_chat(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.data.chat import build_dpo_dataset, build_sft_dataset

    build = build_sft_dataset if ns.kind == "sft" else build_dpo_dataset
    info = build(ns.input, Path(ns.tokenizer), Path(ns.output_dir), max_length=ns.max_length,
                 val_fraction=ns.val_fraction, seed=ns.seed, skip_bad_lines=ns.skip_bad_lines)
    splits = info["splits"]
    unit = "conversations" if ns.kind == "sft" else "pairs"
    print(f"wrote {ns.output_dir}: {splits['train']['documents']:,} train / {splits['val']['documents']:,} val "
          f"{unit}, {splits['train']['supervised_tokens']:,} supervised train tokens ({info['skipped_lines']} bad "
          f"lines skipped, {info['dropped_no_target']} with no answer within --max-length dropped)")
    return 0


def cmd_data_instructions(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.data.instructions import write_instructions

    info = write_instructions(Path(ns.output), kind=ns.kind, count=ns.count, seed=ns.seed, split=ns.split)
    print(f"wrote {info['count']} {ns.kind.upper()} {ns.split} lines to {ns.output}")
    return 0


def _sampling(ns: argparse.Namespace) -> dict:
    return {"max_new_tokens": ns.max_new_tokens, "temperature": ns.temperature, "top_k": ns.top_k,
            "top_p": ns.top_p, "seed": ns.seed, "repetition_penalty": ns.repetition_penalty}


def _prompts(ns: argparse.Namespace) -> list[str]:
    """The --prompt values, then the lines of --prompts-file (empty lines skipped)."""
    prompts = list(ns.prompt or [])
    if ns.prompts_file:
        try:
            text = open(ns.prompts_file, encoding="utf-8").read()  # noqa: SIM115 - read at once
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise DataError(f"cannot read --prompts-file {ns.prompts_file}: {reason}; give a UTF-8 text file "
                            "with one prompt per line") from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError("no prompt given: pass --prompt TEXT (repeatable) or --prompts-file FILE (one a line)")
    return prompts


def cmd_generate(ns: argparse.Namespace) -> int:
    from smoltrain.apps.generate import generate_batch, load_lm, stream_text

    prompts = _prompts(ns)
    adapters = ns.adapter or [None]
    lm = None if ns.quantize else load_lm(ns.run_dir, device=ns.device, tokenizer=ns.tokenizer)
    for adapter in adapters:  # several: one base, loaded once, each adapter put on it in turn
        if ns.quantize:  # adapters are merged before quantizing: each gets a fresh load of the base
            lm = load_lm(ns.run_dir, device=ns.device, adapter=adapter, tokenizer=ns.tokenizer, quantize=ns.quantize)
        elif adapter is not None:
            lm.use_adapter(adapter)
        if len(adapters) > 1:
            print(f"--- adapter {adapter}")
        if len(prompts) == 1 and ns.num_samples == 1:  # one continuation: stream it as it decodes
            print(prompts[0], end="", flush=True)
            for piece in stream_text(lm, prompts[0], **_sampling(ns)):
                print(piece, end="", flush=True)
            print()
            continue
        results = generate_batch(lm, prompts, num_samples=ns.num_samples, **_sampling(ns))
        for i, (prompt, samples) in enumerate(zip(prompts, results, strict=True)):
            for j, text in enumerate(samples):
                print(f"--- prompt {i + 1}, sample {j + 1} ---")
                print(prompt + text)
    return 0


def cmd_chat(ns: argparse.Namespace) -> int:
    from smoltrain.apps.chat import ChatSession, chat_training_note
    from smoltrain.apps.generate import load_lm

    lm = load_lm(ns.run_dir, device=ns.device, adapter=ns.adapter, tokenizer=ns.tokenizer, quantize=ns.quantize)
    sampling = _sampling(ns)
    session = ChatSession(lm, {k: v for k, v in sampling.items() if k != "seed"}, seed=ns.seed, system=ns.system)
    warning = chat_training_note(lm)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    # Piped input is not echoed by the terminal: print each line after the prompt, so the transcript reads.
    interactive = sys.stdin.isatty()
    print(f"chat with the model ({session.template_name}, {session.context}-token context); an empty line or "
          "Ctrl-D ends", file=sys.stderr)
    while True:
        for note in session.take_notes():
            print(f"note: {note}", file=sys.stderr)
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except UnicodeDecodeError as err:  # stdin decodes as the locale says (UTF-8 here); the bytes were not
            raise DataError(f"the chat input is not UTF-8 text (byte {err.start} of the line): type or pipe UTF-8, "
                            "or set PYTHONIOENCODING to the input's encoding") from None
        if not line.strip():
            break
        if line.startswith("/adapter "):  # switch adapters on the loaded base: /adapter DIR, /adapter none
            choice = line.split(maxsplit=1)[1].strip()
            try:
                lm.use_adapter(None if choice == "none" else choice)
            except SmoltrainError as err:  # a mistyped directory must not end the conversation
                print(f"error: {err}", file=sys.stderr)
            print(f"(adapter: {lm.adapter or 'none'})", file=sys.stderr)
            continue
        if not interactive:
            print(f"you> {line}")
        print("model> ", end="", flush=True)
        for piece in session.reply(line):
            print(piece, end="", flush=True)
        print()
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from smoltrain.interop.hf import export_hf, export_peft

    checkpoint = Path(ns.checkpoint) if ns.checkpoint else None
    tokenizer = Path(ns.tokenizer) if ns.tokenizer else None
    if ns.merge and ns.format != "hf":
        raise ConfigError(f"--merge folds a LoRA run's adapters into one model for --format hf; --format {ns.format} "
                          "does not take it: drop --merge")
    if ns.format == "peft":
        out = export_peft(Path(ns.run_dir), Path(ns.output), checkpoint)
        print(f"exported the adapters of {ns.run_dir} to {out} and their base to {out / 'base'}; load them with "
              f'peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{out / "base"}"), "{out}")')
        return 0
    if ns.format == "gguf":
        from smoltrain.interop.gguf_export import describe_gguf, export_gguf

        out = export_gguf(Path(ns.run_dir), Path(ns.output), checkpoint, tokenizer)
        facts = describe_gguf(out)
        print(f"exported {ns.run_dir} as GGUF ({facts['architecture']}, {facts['tensors']} fp32 tensors, "
              f"{facts['bytes'] / 2**20:.1f} MiB) to {out}; run it with llama.cpp: llama-cli -m {out} -p ...")
        return 0
    out = export_hf(Path(ns.run_dir), Path(ns.output), checkpoint, merge=ns.merge, tokenizer=tokenizer)
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"exported {ns.run_dir} as {architecture} to {out}; load it with "
          f'transformers.AutoModelForCausalLM.from_pretrained("{out}")')
    return 0


def cmd_import_hf(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.interop.hf import import_hf

    out = import_hf(Path(ns.directory), Path(ns.output))
    print(f"imported {ns.directory} into run {out} (weights only); try: smoltrain generate {out} --prompt ...")
    return 0


def cmd_import_minimind(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from smoltrain.interop.minimind import import_minimind

    out = import_minimind(Path(ns.checkpoint), ns.preset, Path(ns.output), ns.overrides,
                          Path(ns.tokenizer) if ns.tokenizer else None)
    print(f"imported {ns.checkpoint} ({ns.preset}) into run {out} (weights only)")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from smoltrain.apps.demo import run_chat_demo, run_demo, run_lm_demo

    if ns.which == "chat":
        return run_chat_demo(run_dir=ns.run_dir or "runs/demo-chat", minutes=ns.minutes, base=ns.base,
                             steps=ns.steps, corpus=ns.corpus)
    if ns.which == "lm":
        return run_lm_demo(run_dir=ns.run_dir or "runs/demo-lm", minutes=ns.minutes, corpus=ns.corpus)
    return run_demo(run_dir=ns.run_dir or "runs/demo", minutes=ns.minutes)


def cmd_serve(ns: argparse.Namespace) -> int:
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"smoltrain serve needs {' and '.join(missing)}: pip install 'smoltrain[serve]'")
    from smoltrain.serve.app import serve

    serve(ns.run_dir, host=ns.host, port=ns.port, api_key=ns.api_key, adapters=ns.adapter or (), device=ns.device,
          quantize=ns.quantize)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smoltrain", description="Train tiny models from scratch.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = verb("train", cmd_train, "Train from a recipe with key=value overrides (torchrun-compatible).")
    sub.add_argument("args", nargs="*", metavar="[RECIPE] key=value", help="recipe name or .yaml, then overrides")

    sub = verb("eval", cmd_eval, "Evaluate a run directory's newest (or a given) checkpoint.")
    sub.add_argument("run_dir")
    sub.add_argument("overrides", nargs="*", metavar="key=value")
    sub.add_argument("--checkpoint", default=None,
                     help="a checkpoint directory, or best (keep_best's, from RUN/best.json; default: the newest)")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--render", default=None, metavar="DIR",
                     help="also draw the ACT traces of the first test examples as PNGs and DIR/index.html")
    sub.add_argument("--render-count", type=POSITIVE_INT, default=8, metavar="N", help="how many examples to draw (8)")

    sub = verb("info", cmd_info, "Show a recipe's parameter count, steps and resolved config.")
    sub.add_argument("args", nargs="*", metavar="[RECIPE] key=value")
    sub.add_argument("--show-config", action="store_true", help="print the resolved config as YAML")
    sub.add_argument("--plot", default=None, metavar="FILE.png", help="draw the parameters by module (matplotlib)")

    sub = verb("plot", cmd_plot, "Draw the training and evaluation curves of runs, overlaid (.png or .html).")
    sub.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    sub.add_argument("--metric", action="append", default=None, metavar="NAME[,NAME]",
                     help="metrics to draw, one chart each (default: loss and accuracy or bits_per_byte)")
    sub.add_argument("--x", choices=("step", "time"), default="step", help="x axis: optimizer step or wall time")
    sub.add_argument("--output", required=True, metavar="FILE.png|FILE.html",
                     help=".png needs matplotlib (the plot extra); .html is one self-contained page")
    sub.add_argument("--title", default="")

    for name, handler, text in (("generate", cmd_generate, "Continue a prompt with an LM run, streaming tokens."),
                                ("chat", cmd_chat, "Chat with an LM run (the tokenizer's chat template, else "
                                                   "ChatML), one line a turn.")):
        sub = verb(name, handler, text)
        sub.add_argument("run_dir")
        if name == "generate":
            sub.add_argument("--prompt", action="append", default=None,
                             help="text to continue; repeat it for several prompts, decoded in one batch")
            sub.add_argument("--prompts-file", default=None, metavar="FILE", help="one prompt per line")
            sub.add_argument("--num-samples", type=POSITIVE_INT, default=1, metavar="N",
                             help="continuations per prompt (1)")
            sub.add_argument("--adapter", action="append", default=None, metavar="DIR",
                             help="LoRA adapters on the run: a LoRA run or PEFT adapter directory; repeat it to "
                                  "continue the prompts with each in turn on the one loaded base")
        else:
            sub.add_argument("--system", default=None, help="a system message")
            sub.add_argument("--adapter", default=None, metavar="DIR",
                             help="LoRA adapters on the run (a LoRA run or PEFT adapter directory); "
                                  "type /adapter DIR or /adapter none to switch")
        sub.add_argument("--max-new-tokens", type=POSITIVE_INT, default=100)
        sub.add_argument("--temperature", type=_number(float, 0), default=0.8, help="0 = greedy")
        sub.add_argument("--top-k", type=COUNT, default=None, help="sample from the k most likely tokens (0 = all)")
        sub.add_argument("--top-p", type=_number(float, 0, 1, low_open=True), default=None,
                         help="nucleus sampling, in (0, 1] (1 = all)")
        sub.add_argument("--repetition-penalty", type=_number(float, 0, low_open=True), default=1.0,
                         help="Hugging Face's: logits of tokens already present divided (or, when negative, "
                              "multiplied) by it; 1 = off, 1.1-1.3 typical")
        sub.add_argument("--seed", type=COUNT, default=0)
        sub.add_argument("--device", default="auto")
        sub.add_argument("--tokenizer", default=None, metavar="DIR",
                         help="a tokenizer directory instead of the run's own copy")
        sub.add_argument("--quantize", choices=("int8",), default=None,
                         help="int8: dynamic int8 linear layers for CPU inference (adapters merged in first)")

    sub = verb("solve", cmd_solve, "Solve one puzzle (Sudoku, maze, or a test example of any kind) and check it.")
    sub.add_argument("run_dir")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--puzzle", help="Sudoku: 81, 36 or 16 cells, row by row, . or 0 for blanks; "
                                        "maze: n lines (or one line of n*n) of '#', ' ' or '.', 'S', 'G'")
    which.add_argument("--puzzle-file", default=None, metavar="PATH", help="read the --puzzle text from a file")
    which.add_argument("--example", type=COUNT, default=None, metavar="N",
                       help="test example N of the run's own dataset (any kind, ARC included)")
    sub.add_argument("--render", default=None, metavar="DIR", help="draw the ACT trace as PNGs and DIR/index.html")
    sub.add_argument("--device", default="auto")

    sub = verb("serve", cmd_serve, "Serve a run: an OpenAI-compatible API (LM runs), puzzle solving (TRM runs) "
                                   "and the playground page.")
    sub.add_argument("run_dir")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    sub.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="0 = any free port (8000)")
    sub.add_argument("--api-key", default=None, metavar="KEY",
                     help="require Authorization: Bearer KEY on every request (default: $SMOLTRAIN_API_KEY)")
    sub.add_argument("--adapter", action="append", default=None, metavar="DIR",
                     help="LM runs: also serve these LoRA adapters (a LoRA run or PEFT adapter directory; "
                          "repeatable) on the one loaded base, each as the model id of its directory's name")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--quantize", choices=("int8",), default=None,
                     help="LM runs: dynamic int8 linear layers for CPU inference (a LoRA run's own adapters merged "
                          "in first; not with --adapter)")

    imports = verbs.add_parser("import", help="Convert checkpoints of other code bases into run directories.",
                               description="Convert checkpoints of other code bases into run directories.")
    kinds = imports.add_subparsers(dest="kind", required=True)
    sub = kinds.add_parser("trm", help="A checkpoint written by the reference TRM code (step_N + all_config.yaml).")
    sub.set_defaults(handler=cmd_import_trm)
    sub.add_argument("--checkpoint", required=True, help="PATH/step_N (or the folder holding it: newest step)")
    sub.add_argument("--output", required=True, help="the run directory to create")
    sub.add_argument("--data-paths", nargs="*", default=None, help="dataset(s) of the run, for eval and shapes")
    sub.add_argument("--seq-len", type=POSITIVE_INT, default=None,
                     help="puzzle length when no dataset is given (81 = 9x9)")

    sub = kinds.add_parser("hf", help="A local Hugging Face Qwen3 / Llama directory (config.json + safetensors).")
    sub.set_defaults(handler=cmd_import_hf)
    sub.add_argument("directory")
    sub.add_argument("--output", required=True, help="the run directory to create")

    sub = kinds.add_parser("minimind", help="MiniMind's released .pth weights (bare or *_resume.pth).")
    sub.set_defaults(handler=cmd_import_minimind)
    sub.add_argument("--checkpoint", required=True)
    sub.add_argument("--preset", required=True, choices=("minimind2-26m", "minimind3-64m", "minimind3-moe"))
    sub.add_argument("--output", required=True, help="the run directory to create")
    sub.add_argument("--tokenizer", default=None, help="MiniMind's tokenizer directory, copied into the run")
    sub.add_argument("overrides", nargs="*", metavar="arch.key=value", help="shape changes, e.g. arch.vocab_size=...")

    sub = verb("export", cmd_export, "Export an LM run as a Hugging Face directory (Qwen3 or Llama), a PEFT adapter "
                                     "or a GGUF file (llama.cpp, ollama).")
    sub.add_argument("run_dir")
    sub.add_argument("--format", choices=("hf", "peft", "gguf"), default="hf",
                     help="hf: a transformers directory; peft: a LoRA run's adapters with their base in OUTPUT/base; "
                          "gguf: one fp32 .gguf file for llama.cpp / ollama")
    sub.add_argument("--merge", action="store_true", help="hf: fold a LoRA run's adapters into the weights")
    sub.add_argument("--output", required=True, help="hf/peft: a new directory; gguf: a new file, e.g. model.gguf")
    sub.add_argument("--tokenizer", default=None, metavar="DIR", help="a tokenizer directory instead of the run's")
    sub.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the newest)")

    data = verbs.add_parser("data", help="Build datasets.", description="Build datasets.")
    kinds = data.add_subparsers(dest="kind", required=True)
    sub = kinds.add_parser("sudoku", help="Sudoku in the reference on-disk format (9x9, 6x6 or 4x4).")
    sub.set_defaults(handler=cmd_data_sudoku)
    sub.add_argument("--output-dir", required=True)
    sub.add_argument("--source", default="generate",
                     help="generate (offline, default) | hf (sapientinc/sudoku-extreme) | csv:PATH")
    sub.add_argument("--size", type=int, default=9, choices=(4, 6, 9))
    sub.add_argument("--num-train", type=int, default=None, help="puzzles to generate for train (default 1000)")
    sub.add_argument("--num-test", type=int, default=None, help="test puzzles (generate: default 1000)")
    sub.add_argument("--subsample-size", type=int, default=None, help="keep this many train puzzles (seeded)")
    sub.add_argument("--num-aug", type=int, default=0, help="augmentations per train puzzle")
    sub.add_argument("--min-difficulty", type=int, default=None, help="minimum rating (backtracks)")
    sub.add_argument("--target-clues", type=int, default=None, help="generate: stop removing clues here")
    sub.add_argument("--harden-steps", type=int, default=None,
                     help="generate: hill-climbing budget per puzzle towards --min-difficulty (0 = filter only)")
    sub.add_argument("--per-climb", type=int, default=None,
                     help="generate: puzzles one successful climb may yield, itself and hard neighbours with "
                     "the same solution grid (default 8 when climbing; 1 = a new grid for every puzzle)")
    sub.add_argument("--workers", type=int, default=None, help="generate: threads (default: all cores)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--source-repo", default="sapientinc/sudoku-extreme")

    sub = kinds.add_parser("maze", help="Mazes in the reference on-disk format (Maze-Hard 30x30 or smaller).")
    sub.set_defaults(handler=cmd_data_maze)
    sub.add_argument("--output-dir", required=True)
    sub.add_argument("--source", default="generate",
                     help="generate (offline, default) | hf (sapientinc/maze-30x30-hard-1k) | csv:PATH")
    sub.add_argument("--size", type=int, default=30, help="n for n x n mazes (default 30, Maze-Hard)")
    sub.add_argument("--num-train", type=int, default=None, help="mazes to generate for train (default 1000)")
    sub.add_argument("--num-test", type=int, default=None, help="test mazes (generate: default 1000)")
    sub.add_argument("--min-path-length", type=int, default=None,
                     help="shortest path in cells incl. S and G (default 111 for 30x30, else ~12%% of n*n)")
    sub.add_argument("--subsample-size", type=int, default=None, help="keep this many train mazes (seeded)")
    sub.add_argument("--aug", action="store_true", help="add the 8 dihedral versions of every train maze")
    sub.add_argument("--workers", type=int, default=None, help="generate: threads (default: all cores)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--source-repo", default="sapientinc/maze-30x30-hard-1k")

    sub = kinds.add_parser("arc", help="ARC tasks, augmented (dihedral x colour maps) in the reference format.")
    sub.set_defaults(handler=cmd_data_arc)
    sub.add_argument("--input-file-prefix", default=None,
                     help="Kaggle combined json: PREFIX_{subset}_challenges.json + _solutions.json (the "
                          "--test-set-name subset may lack _solutions.json, as Kaggle's hidden test set)")
    sub.add_argument("--input-dir", default=None, help="one json per task: DIR/{subset}/{task}.json")
    sub.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    sub.add_argument("--test-set-name", default="evaluation", help="the subset whose test pairs form the test split")
    sub.add_argument("--output-dir", required=True)
    sub.add_argument("--num-aug", type=int, default=1000, help="augmented versions per task (de-duplicated)")
    sub.add_argument("--seed", type=int, default=42)
    sub.add_argument("--canvas-size", type=int, default=30,
                     help="n for an n x n canvas, 1..30 (default 30, the reference); tasks with larger grids "
                          "are skipped. Smaller canvases train faster, e.g. 10 on a laptop CPU")
    sub.add_argument("--tasks", nargs="+", default=None, metavar="TASK_ID", dest="task_ids",
                     help="build only these tasks (ids as in the json files), e.g. a handful for a CPU run")
    sub.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks (by id) of each subset")

    sub = kinds.add_parser("text", help="Tokenize text (jsonl `text` field, .txt, .parquet, hf:NAME) to shards.")
    sub.set_defaults(handler=cmd_data_text)
    sub.add_argument("--input", nargs="+", required=True)
    sub.add_argument("--tokenizer", required=True, help="a directory written by `smoltrain tokenizer train`")
    sub.add_argument("--output-dir", required=True)
    sub.add_argument("--val-fraction", type=float, default=0.01,
                     help="share of documents held out for validation, in [0, 1) (0 = none)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed jsonl lines")
    sub.add_argument("--workers", type=int, default=None)

    for kind, text in (("sft", "MiniMind SFT jsonl ({\"conversations\": [...]}) to token + assistant-mask shards."),
                       ("dpo", "MiniMind DPO jsonl ({\"chosen\": [...], \"rejected\": [...]}) to paired shards.")):
        sub = kinds.add_parser(kind, help=text, description=text)
        sub.set_defaults(handler=cmd_data_chat, kind=kind)
        sub.add_argument("--input", nargs="+", required=True, help=".jsonl files")
        sub.add_argument("--tokenizer", required=True, help="a directory written by `smoltrain tokenizer train`")
        sub.add_argument("--output-dir", required=True)
        sub.add_argument("--max-length", type=POSITIVE_INT, default=1024,
                         help="tokens kept per conversation (longer ones are truncated; 1024, MiniMind's default)")
        sub.add_argument("--val-fraction", type=float, default=0.01, help="share of records held out (0.01)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines")

    text = "Write a small offline instruction set (arithmetic, word reversal, capitals) as SFT or DPO jsonl."
    sub = kinds.add_parser("instructions", help=text, description=text)
    sub.set_defaults(handler=cmd_data_instructions)
    sub.add_argument("--output", required=True, help="the .jsonl file to write")
    sub.add_argument("--kind", choices=("sft", "dpo"), default="sft")
    sub.add_argument("--split", choices=("train", "heldout"), default="train",
                     help="heldout: prompts never generated for train (exact answers, for evaluation)")
    sub.add_argument("--count", type=POSITIVE_INT, default=2000)
    sub.add_argument("--seed", type=int, default=0)

    tok = verbs.add_parser("tokenizer", help="Train tokenizers.", description="Train tokenizers.")
    tok_verbs = tok.add_subparsers(dest="action", required=True)
    sub = tok_verbs.add_parser("train", help="Byte-level BPE with ChatML special tokens (loads in transformers).")
    sub.set_defaults(handler=cmd_tokenizer_train)
    sub.add_argument("--input", nargs="+", required=True,
                     help=".txt / .jsonl (text, or SFT/DPO chat: every turn's content) files or directories")
    sub.add_argument("--vocab-size", type=int, default=6400)
    sub.add_argument("--output", required=True)
    sub.add_argument("--min-frequency", type=int, default=2)
    sub.add_argument("--skip-bad-lines", action="store_true")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer directory")

    sub = verb("demo", cmd_demo, "Build data, train on the CPU for a few minutes and show the results.")
    sub.add_argument("which", nargs="?", choices=("trm", "lm", "chat"), default="trm",
                     help="trm: 6x6 Sudoku (default); lm: a tiny LM on Shakespeare; chat: LoRA on that LM for "
                          "instructions, held-out answers before and after")
    sub.add_argument("--run-dir", default=None,
                     help="default runs/demo (trm), runs/demo-lm (lm) or runs/demo-chat (chat)")
    sub.add_argument("--minutes", type=_number(float, 0, low_open=True), default=None,
                     help="training time budget (default 5; chat: 3/5 pretraining its base when it has none, "
                          "2/5 LoRA)")
    sub.add_argument("--corpus", default=None, help="lm, chat: a text file instead of the Shakespeare download")
    sub.add_argument("--base", default=None,
                     help="chat: an LM run to adapt instead of pretraining one (only read), e.g. runs/demo-lm")
    sub.add_argument("--steps", type=_number(int, 1), default=None,
                     help="chat: this many steps per training instead of --minutes")
    return parser


def _debug() -> bool:
    """``SMOLTRAIN_DEBUG=1``: unexpected exceptions show their traceback instead of one line."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(err: BaseException) -> str:
    """The exception's message and notes (where a run kept its traceback) on one line: a message that spans
    lines (a library's report quoted in it) has its line breaks and indents folded into spaces."""
    parts = [str(err), *getattr(err, "__notes__", [])]
    return "; ".join(" ".join(part.split()) for part in parts if part.strip())


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A warning as the user reads it: one line, without the source line Python's default format adds."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if not _debug():
        warnings.formatwarning = _warning_line  # type: ignore[assignment]
    try:
        return ns.handler(ns)
    except SmoltrainError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `smoltrain info ... | head`: the reader left; that is not an error
        sys.stderr.close()
        return 0
    except Exception as err:  # the last line of defence: a bug or a case no check foresaw
        if _debug():
            raise
        print(f"error: unexpected {type(err).__name__}: {_one_line(err)} "
              f"(run with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED
