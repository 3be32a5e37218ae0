"""The CLI verbs parse and report; their real work is tested where the library is."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from smoltrain.cli import main
from tests.helpers import toy_overrides

VERBS = [["train"], ["eval"], ["info"], ["demo"], ["solve"], ["generate"], ["chat"], ["export"], ["data", "sudoku"],
         ["data", "text"], ["data", "sft"], ["data", "dpo"], ["data", "instructions"], ["tokenizer", "train"],
         ["import", "trm"], ["import", "hf"], ["import", "minimind"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: smoltrain" in capsys.readouterr().out


def test_info_counts_parameters_without_data(capsys):
    assert main(["info", "trm-sudoku", "data_paths=[]", "arch.seq_len=81", "arch.vocab_size=11",
                 "arch.num_puzzle_identifiers=1"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 5,028,866" in out  # the paper's TRM-MLP Sudoku model
    assert "steps: unknown" in out


def test_missing_dataset_is_one_line(capsys, tmp_path):
    assert main(["train", "trm-sudoku-cpu", f"data_paths=[{tmp_path / 'nope'}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no dataset at") and "smoltrain data sudoku" in err and "\n" not in err


def test_solve_without_a_run_is_one_line(capsys, tmp_path):
    assert main(["solve", str(tmp_path), "--puzzle", "123"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_info_lm_matches_minimind3(capsys):
    assert main(["info", "arch=lm", "arch.vocab_size=6400", "data_paths=[]"]) == 0
    assert "parameters: 63,912,192" in capsys.readouterr().out  # llm.md §1.3: minimind-3, 63.91M


@pytest.mark.parametrize(("preset", "expected"), [("minimind2-26m", "25,829,888"), ("minimind3-64m", "63,912,192"),
                                                  ("minimind3-moe", "198,416,640")])
def test_lm_presets_match_minimind_counts(preset, expected, capsys):
    assert main(["info", f"arch={preset}", "data_paths=[]"]) == 0  # llm.md §1.3: 25.83M, 63.91M, 198.42M
    assert f"parameters: {expected}" in capsys.readouterr().out


def test_info_prints_active_parameters_for_moe(capsys):
    assert main(["info", "arch=minimind3-moe", "data_paths=[]"]) == 0
    out = capsys.readouterr().out  # llm.md §1.3: minimind-3-moe 198.42M total / 63.94M active (top-1 of 4 experts)
    assert "parameters: 198,416,640" in out and "active_parameters: 63,936,768" in out
    assert main(["info", "arch=minimind3-64m", "data_paths=[]"]) == 0
    assert "active_parameters" not in capsys.readouterr().out  # dense: every parameter is used per token
    assert main(["info", "arch=minimind3-moe", "arch.num_experts_per_tok=2", "arch.n_shared_experts=1",
                 "data_paths=[]"]) == 0
    out = capsys.readouterr().out
    expert = 3 * 768 * 2432  # gate, up, down of one SwiGLU expert
    total = int(out.split("parameters: ")[1].split("\n")[0].replace(",", ""))
    # 4 routed + 1 shared expert per layer; a token uses the shared one and 2 routed: 2 idle experts per layer.
    assert f"active_parameters: {total - 8 * 2 * expert:,}" in out


@pytest.mark.parametrize("which", [[], ["lm"]], ids=["trm", "lm"])
def test_demo_refuses_a_directory_it_did_not_make(which, capsys, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["demo", *which, "--run-dir", str(tmp_path), "--corpus", str(tmp_path / "thesis.tex")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} already exists and was not made by `smoltrain demo`")
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def _output_verbs(tmp: Path, out: Path) -> dict[str, list[str]]:
    """Every verb that writes an output, aimed at ``out``; the inputs need not exist (the output is checked first)."""
    return {
        "train": ["train", "toy", *toy_overrides(out)],
        "data sudoku": ["data", "sudoku", "--output-dir", str(out), "--size", "4", "--num-train", "4"],
        "data maze": ["data", "maze", "--output-dir", str(out), "--size", "6", "--num-train", "4"],
        "data arc": ["data", "arc", "--input-dir", str(tmp / "arc"), "--output-dir", str(out)],
        "data text": ["data", "text", "--input", str(tmp / "a.txt"), "--tokenizer", str(tmp / "tok"),
                      "--output-dir", str(out)],
        "tokenizer train": ["tokenizer", "train", "--input", str(tmp / "a.txt"), "--output", str(out)],
        "export": ["export", str(tmp / "run"), "--output", str(out)],
        "import hf": ["import", "hf", str(tmp), "--output", str(out)],
        "import trm": ["import", "trm", "--checkpoint", str(tmp / "step_1"), "--output", str(out)],
        "import minimind": ["import", "minimind", "--checkpoint", str(tmp / "m.pth"), "--preset", "minimind2-26m",
                            "--output", str(out)],
    }


@pytest.mark.parametrize("verb", list(_output_verbs(Path(), Path())))
@pytest.mark.parametrize(("where", "reason"), [
    ("blocker", "it exists and is a file"),
    ("blocker/out", "blocker exists and is a file"),
    ("x" * 300, "is 300 bytes long and the file system allows"),
])
def test_an_output_that_cannot_be_written_is_one_line_and_nothing_is_made(verb, where, reason, capsys, tmp_path):
    (tmp_path / "blocker").write_text("mine")
    before = sorted(tmp_path.iterdir())
    assert main(_output_verbs(tmp_path, tmp_path / where)[verb]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {tmp_path}") and reason in err and "\n" not in err
    assert sorted(tmp_path.iterdir()) == before and (tmp_path / "blocker").read_text() == "mine"


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_under_a_build_is_one_line_and_leaves_nothing(code, reason, capsys, tmp_path,
                                                                               monkeypatch):
    def fail(*_args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)  # every file the build writes is fsync'ed before it is renamed into place
    out = tmp_path / "sudoku"
    assert main(["data", "sudoku", "--output-dir", str(out), "--size", "4", "--num-train", "4", "--num-test", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after the progress bar
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out}: {reason}; ")
    assert list(tmp_path.iterdir()) == []


def _with_handler(parser, handler):
    """``parser`` with ``handler`` in place of `smoltrain info`'s."""
    verbs = next(action for action in parser._actions if action.dest == "verb")
    verbs.choices["info"].set_defaults(handler=handler)
    return parser


def _fail_with(monkeypatch, err: Exception) -> None:
    """Make `smoltrain info` fail with ``err``: an exception no check foresaw."""
    from smoltrain import cli

    def handler(ns):
        raise err

    real = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(real(), handler))


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("SMOLTRAIN_DEBUG", raising=False)
    _fail_with(monkeypatch, RuntimeError("a bug\nover two lines"))
    assert main(["info"]) == 1
    assert capsys.readouterr().err == ("error: unexpected RuntimeError: a bug over two lines "
                                       "(run with SMOLTRAIN_DEBUG=1 for the traceback)\n")


def test_smoltrain_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("SMOLTRAIN_DEBUG", "1")
    _fail_with(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):  # uncaught: Python prints the traceback
        main(["info"])


def test_exception_notes_join_the_line(monkeypatch, capsys):
    monkeypatch.delenv("SMOLTRAIN_DEBUG", raising=False)
    err = ValueError("bad")
    err.add_note("traceback kept in RUN/errors.log")
    _fail_with(monkeypatch, err)
    assert main(["info"]) == 1
    assert capsys.readouterr().err.startswith("error: unexpected ValueError: bad; traceback kept in RUN/errors.log "
                                              "(run with SMOLTRAIN_DEBUG=1")


@pytest.mark.parametrize(("argv", "expected"), [
    (["generate", "RUN", "--prompt", "x", "--temperature", "nan"], "--temperature: must be a finite number >= 0"),
    (["generate", "RUN", "--prompt", "x", "--top-p", "0"], "--top-p: must be in (0, 1], got 0"),
    (["chat", "RUN", "--top-k", "-1"], "--top-k: must be >= 0, got -1"),
    (["chat", "RUN", "--max-new-tokens", "zero"], "--max-new-tokens: expected an integer, got 'zero'"),
    (["data", "sudoku", "--output-dir", "x", "--size", "5"], "--size: invalid choice: 5"),
    (["demo", "chat", "--minutes", "-1"], "--minutes: must be > 0, got -1"),
    (["demo", "chat", "--steps", "0"], "--steps: must be >= 1, got 0"),
])
def test_argument_mistakes_are_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: smoltrain ") and expected in err and err.count("\n") == 1


def test_demo_chat_with_a_missing_corpus_is_one_line_and_touches_nothing(capsys, tmp_path):
    run_dir = tmp_path / "demo"
    assert main(["demo", "chat", "--run-dir", str(run_dir), "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err == (f"error: --corpus {tmp_path / 'missing.txt'} is not a file: give a plain-text "
                                       "file (.txt) for the base model's pretraining, or leave --corpus out for the "
                                       "Shakespeare download\n")
    assert not run_dir.exists()


def test_demo_lm_with_a_missing_corpus_is_one_line_and_touches_nothing(capsys, tmp_path):
    run_dir = tmp_path / "demo"
    assert main(["demo", "lm", "--run-dir", str(run_dir), "--corpus", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --corpus {tmp_path / 'missing.txt'} is not a file: give a plain-text file (.txt), or "
                   "leave --corpus out for the Shakespeare download\n")
    assert not run_dir.exists()


def test_warnings_print_as_one_line_under_the_cli(monkeypatch):
    """A warning the CLI shows (e.g. ARC data without a task list) prints as one `warning:` line, not Python's
    two-line format with the source line."""
    import warnings

    from smoltrain import cli

    python_format = warnings.formatwarning
    monkeypatch.setattr(warnings, "formatwarning", python_format)  # put back after the test
    monkeypatch.delenv("SMOLTRAIN_DEBUG", raising=False)
    monkeypatch.setattr(cli, "build_parser", lambda: _WarningParser())
    with pytest.warns(UserWarning, match="nothing to score"):
        assert cli.main([]) == 0
    # pytest records warnings instead of printing them, so check the format the CLI installed for printing.
    shown = warnings.formatwarning("nothing to score here", UserWarning, "/x/families/trm.py", 201, "warn(...)")
    assert shown == "warning: nothing to score here\n"


class _WarningParser:
    """Stands in for the CLI's parser: one verb whose handler warns."""

    def parse_args(self, argv):
        import argparse
        import warnings

        def handler(ns):
            warnings.warn("nothing to score here", UserWarning, stacklevel=1)
            return 0

        return argparse.Namespace(handler=handler)
