from __future__ import annotations

import yaml

from smoltrain.families import load_config
from smoltrain.runs import RunDir
from smoltrain.train.trainer import Trainer
from tests.helpers import run_python, toy_overrides


def test_cli_reports_config_error_without_traceback():
    from tests.helpers import run_python

    proc = run_python(["-m", "smoltrain", "train", "toy", "arch.hiden_size=3"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown config key 'arch.hiden_size'; did you mean arch.hidden_size or arch.vocab_size?"
    )


def test_resolved_config_saved_in_run_dir(tmp_path):
    cfg = load_config("toy", toy_overrides(tmp_path / "run", max_steps=2))
    Trainer(cfg).fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["arch"]["hidden_size"] == 16 and saved["max_steps"] == 2
    assert RunDir(tmp_path / "run").load_config() == cfg


def test_the_package_face_and_the_cli_import_no_torch():
    # `smoltrain --help` must stay fast: the package face and cli.py import the library lazily (torch alone
    # takes seconds to import), and `smoltrain.load` still reaches the loader on first use.
    code = ("import sys, smoltrain, smoltrain.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "smoltrain.load; assert 'torch' in sys.modules")
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert run_python(["-m", "smoltrain", "--help"]).returncode == 0
