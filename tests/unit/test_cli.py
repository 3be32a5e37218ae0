"""The CLI verbs parse and report; their real work is tested where the library is."""

from __future__ import annotations

import pytest

from smoltrain.cli import main

VERBS = [["train"], ["eval"], ["info"], ["demo"], ["solve"], ["generate"], ["chat"], ["export"], ["data", "sudoku"],
         ["data", "text"], ["tokenizer", "train"], ["import", "trm"], ["import", "hf"], ["import", "minimind"]]


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
])
def test_argument_mistakes_are_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: smoltrain ") and expected in err and err.count("\n") == 1
