"""Logging refuses what cannot work before it starts: W&B online logging without credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltrain.config import WandbConfig
from smoltrain.errors import ConfigError
from smoltrain.runs import RunDir
from smoltrain.train.logging import MetricsLogger, _wandb_credentials


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # netrc reads ~/.netrc
    return tmp_path


def test_wandb_online_without_credentials_says_how_to_log_offline(no_credentials: Path) -> None:
    assert not _wandb_credentials()
    with pytest.raises(ConfigError, match=r"wandb.mode=online needs W&B credentials .* use wandb.mode=offline and "
                                          r"`wandb sync` the run later") as err:
        MetricsLogger(RunDir(no_credentials / "run"), enabled=True, total_steps=1, start_step=0, log_every=1,
                      wandb_cfg=WandbConfig(mode="online"))
    assert "\n" not in str(err.value)


def test_wandb_credentials_come_from_the_environment_or_netrc(no_credentials: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert _wandb_credentials()
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = no_credentials / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert _wandb_credentials()
