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


@pytest.mark.parametrize("which", [[], ["lm"]], ids=["trm", "lm"])
def test_demo_refuses_a_directory_it_did_not_make(which, capsys, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["demo", *which, "--run-dir", str(tmp_path), "--corpus", str(tmp_path / "thesis.tex")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} already exists and was not made by `smoltrain demo`")
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
