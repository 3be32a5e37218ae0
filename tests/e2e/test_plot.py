"""`smoltrain plot` and RUN/curves.png: the files hold one line per run, split and metric."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from smoltrain.families import load_config
from smoltrain.runs.curves import SERIES_KEY, plot_curves
from smoltrain.train.trainer import Trainer
from tests.helpers import run_python, toy_overrides

pytest.importorskip("matplotlib", reason="PNG curves need matplotlib: pip install 'smoltrain[plot]'")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    runs = []
    for name, seed in (("a", 0), ("b", 1)):
        Trainer(load_config("toy", toy_overrides(root / name, max_steps=6, log_every=2, eval_every=3,
                                                 seed=seed))).fit()
        runs.append(root / name)
    return runs


def test_each_run_readme_links_its_curves(two_runs):
    for run in two_runs:
        png = run / "curves.png"
        assert Image.open(png).text[SERIES_KEY] == "6"  # loss, exact_accuracy, accuracy x (train, eval)
        assert "![training curves](curves.png)" in (run / "README.md").read_text()


def test_png_overlays_runs(two_runs, tmp_path):
    out, series = plot_curves(two_runs, tmp_path / "both.png")
    assert Image.open(out).text[SERIES_KEY] == "12" == str(len(series))  # 2 runs x 2 splits x 3 metrics
    assert {(s.run, s.split, s.metric) for s in series} == {
        (run, split, metric) for run in ("a", "b") for split in ("train", "eval")
        for metric in ("loss", "accuracy", "exact_accuracy")}
    train_a = next(s for s in series if (s.run, s.split, s.metric) == ("a", "train", "loss"))
    assert train_a.xs == [2, 4, 6]  # log_every=2
    out, series = plot_curves(two_runs, tmp_path / "lr.png", metrics=["lr"], x="time")
    assert Image.open(out).text[SERIES_KEY] == "2"  # lr is logged by train rows only
    assert all(x >= 0 for s in series for x in s.xs) and series[0].xs == sorted(series[0].xs)


def test_html_is_one_page_with_the_plotter_inline(two_runs, tmp_path):
    out, _ = plot_curves(two_runs, tmp_path / "loss.html", metrics=["loss"])
    page = out.read_text()
    assert 'data-series="4"' in page
    assert "<script src" not in page and "http" not in page.split("<script>")[1]  # nothing to fetch
    data = json.loads(re.search(r"const DATA = (.*);\n", page).group(1))
    assert [len(chart["series"]) for chart in data["charts"]] == [4]


def test_cli_plot_and_its_mistakes(two_runs, tmp_path):
    proc = run_python(["-m", "smoltrain", "plot", *map(str, two_runs), "--metric", "loss,accuracy",
                       "--output", str(tmp_path / "c.html")])
    assert proc.returncode == 0, proc.stderr
    assert "8 curves of accuracy, loss from 2 run(s)" in proc.stdout
    bad = run_python(["-m", "smoltrain", "plot", str(two_runs[0]), "--metric", "nope", "--output",
                      str(tmp_path / "c.png")])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--metric nope" in bad.stderr
    bad = run_python(["-m", "smoltrain", "plot", str(tmp_path), "--output", str(tmp_path / "c.svg")])
    assert bad.returncode == 2 and ".png or .html" in bad.stderr


def test_info_prints_the_step_cost_and_plots_the_parameters(tmp_path):
    out = tmp_path / "params.png"
    proc = run_python(["-m", "smoltrain", "info", "toy", f"run_dir={tmp_path / 'run'}", "arch.seq_len=4",
                       "arch.hidden_size=8", "arch.num_layers=2", "global_batch_size=16", "--plot", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "flops_per_step: 227,328 (227 kFLOP" in proc.stdout  # the hand count of tests/unit/test_profile.py
    assert "activation_memory:" in proc.stdout and "parameter_memory:" in proc.stdout
    assert "  layers " in proc.stdout  # the per-module table
    assert Image.open(out).text["smoltrain:bars"] == "5"  # embed_positions, embed_tokens, layers, norm, lm_head
