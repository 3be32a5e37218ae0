"""Metrics: ``metrics.jsonl`` always; a progress bar on a terminal, plain lines otherwise; wandb and
TensorBoard when asked. Only rank 0 logs."""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
from pathlib import Path
from typing import Any

from smoltrain.errors import ConfigError
from smoltrain.fileio import atomic_write_text, writing
from smoltrain.runs.run_dir import RunDir


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable instead of invalid
    return value


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows past ``last_step`` (written by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(
        self,
        run: RunDir,
        enabled: bool,
        total_steps: int,
        start_step: int,
        log_every: int,
        wandb_cfg: Any = None,
        tensorboard: bool = False,
        config: dict[str, Any] | None = None,
        run_name: str | None = None,
        wandb_project: str | None = None,  # `wandb.project`, else the reference's `project_name`
    ) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.total_steps = total_steps
        self._file = None
        self._bar = None
        self._wandb = None
        self._tb = None
        self._last_eval: dict[str, Any] | None = None
        if not enabled:
            return
        with writing(run.metrics):
            run.root.mkdir(parents=True, exist_ok=True)
            self._file = open(run.metrics, "a", buffering=1)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")
        if wandb_cfg is not None and wandb_cfg.mode != "disabled":
            try:
                import wandb
            except ImportError:
                raise ConfigError("wandb.mode needs wandb: pip install 'smoltrain[wandb]'") from None
            if wandb_cfg.mode == "online" and not _wandb_credentials():
                raise ConfigError("wandb.mode=online needs W&B credentials and there are none (no WANDB_API_KEY, no "
                                  "`wandb login`): log in, or use wandb.mode=offline and `wandb sync` the run later")
            self._wandb = wandb.init(
                project=wandb_project or "smoltrain",
                entity=wandb_cfg.entity,
                name=run_name,
                mode=wandb_cfg.mode,
                dir=str(run.root),  # wandb keeps its files in a wandb/ folder there
                config=config,
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs tensorboard: pip install 'smoltrain[tensorboard]'") from None
            self._tb = SummaryWriter(log_dir=str(run.tensorboard))

    def log(self, row: dict[str, Any], prefix: str = "train") -> None:
        """Write one row (must hold ``step``)."""
        if not self.enabled:
            return
        row = {"split": prefix, **{k: _clean(v) for k, v in row.items()}}
        assert self._file is not None
        with writing(self._file.name):  # a full disk mid-run: one line, the last checkpoint intact
            self._file.write(json.dumps(row) + "\n")
        step = row["step"]
        scalars = {
            f"{prefix}/{k}": v for k, v in row.items() if k not in ("step", "split") and isinstance(v, (int, float))
        }
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if prefix != "train" or step % self.log_every == 0 or step == self.total_steps:
            self._show(row, prefix)

    def event(self, message: str) -> None:
        """A line a person should see (eval results, skipped steps, stop reasons)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def advance(self, step: int) -> None:
        if self._bar is not None:  # update() redraws at most every mininterval (0.1 s), not on every step
            self._bar.update(step - self._bar.n)

    def _show(self, row: dict[str, Any], prefix: str) -> None:
        shown = {k: v for k, v in row.items() if k not in ("step", "elapsed_s", "split")}
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        if self._bar is None:
            self.event(f"[{prefix} step {row['step']}] {text}")
            return
        if prefix == "train":  # the bar itself shows the steps, elapsed time and the ETA
            self._bar.set_postfix_str(bar_postfix(row, self._last_eval), refresh=False)
            return
        if prefix == "eval":
            self._last_eval = row
        self.event(f"[{prefix} step {row['step']}] {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()
        self.enabled = False


def _number(value: float) -> str:
    return f"{value / 1000:.1f}k" if abs(value) >= 10_000 else f"{value:.4g}"


def bar_postfix(row: dict[str, Any], last_eval: dict[str, Any] | None, width: int = 110) -> str:
    """What the progress bar shows after its ETA: the train row's loss and accuracy, its throughput (tokens/s
    when the family counts tokens, else samples/s) and the latest evaluation, cut to ``width`` characters."""
    parts = [f"{k}={row[k]:.4g}" for k in row if isinstance(row[k], float) and (k == "loss" or k.endswith("accuracy"))]
    rate = "tokens_per_s" if "tokens_per_s" in row else "samples_per_s"
    if isinstance(row.get(rate), (int, float)):
        parts.append(f"{_number(row[rate])} {rate.split('_')[0]}/s")
    if last_eval is not None:
        scores = [f"{k}={v:.4g}" for k, v in last_eval.items()
                  if isinstance(v, float) and k not in ("step", "elapsed_s", "count", "tokens")]
        parts.append(f"eval@{last_eval['step']}: " + " ".join(scores))
    text = " | ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _wandb_credentials() -> bool:
    """Whether W&B has an API key to log online with: the environment, or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
