"""The training loop.

One :class:`Trainer` composes the pieces: a model family (model, optimizers, data, step, eval), the
schedule, EMA, gradient accumulation and all-reduce, checkpoints, logging and signal handling. It never
imports a model file; the family is looked up by ``arch.name``.

Step semantics follow the reference TRM trainer: one optimizer step per batch, the step counter starts
at 1 for the schedule, every optimizer's LR is its own base LR times the schedule factor.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoltrain.config import TrainConfig
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import family_class, resolve
from smoltrain.families.base import INITIAL_WEIGHTS, Batch
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runs.curves import has_matplotlib, write_run_curves
from smoltrain.runs.loading import build_frozen_models
from smoltrain.runs.run_dir import RunDir
from smoltrain.runtime import fsdp
from smoltrain.runtime.device import DTYPES, device_type, pick_device, resolve_precision
from smoltrain.runtime.distributed import (
    DistEnv,
    all_reduce_grads,
    all_reduce_sum,
    barrier,
    broadcast_module,
    gather_objects,
    init_distributed,
    leave_process_group,
)
from smoltrain.train.compile import compile_for_eval, resolve_compile, resolve_compile_mode
from smoltrain.train.logging import MetricsLogger, truncate_metrics
from smoltrain.train.schedule import EMA, warmup_cosine_factor


class TrainingDiverged(SmoltrainError):
    """Too many non-finite steps in a row."""


# Eval metrics where lower is better: `keep_best=NAME` minimises them (the rest are maximised unless written -NAME).
LOWER_IS_BETTER_SUFFIXES = ("loss", "perplexity", "bits_per_byte")


def best_rule(spec: str) -> tuple[str, bool]:
    """``keep_best``'s metric and whether larger is better: ``-NAME`` minimises, ``+NAME`` maximises, a bare name
    is minimised when it ends in one of LOWER_IS_BETTER_SUFFIXES and maximised otherwise."""
    sign, name = (spec[0], spec[1:]) if spec[:1] in "+-" else ("", spec)
    if not name:
        raise ConfigError(f"keep_best={spec!r} names no metric: write keep_best=exact_accuracy or keep_best=-loss")
    if sign:
        return name, sign == "+"
    return name, not name.endswith(LOWER_IS_BETTER_SUFFIXES)


class Patience:
    """``early_stop_patience``: counts the evaluations in a row that did not improve keep_best's metric by more than
    ``min_delta`` over the best value so far (an improvement smaller than that still moves the best, as Keras's
    EarlyStopping does not: so a slow creep of small gains counts as a plateau). Its state goes into checkpoints,
    so a resumed run counts on from where it was, and a run that stopped stays stopped."""

    def __init__(self, metric: str, maximise: bool, patience: int, min_delta: float) -> None:
        self.metric, self.maximise, self.patience, self.min_delta = metric, maximise, patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0  # evaluations since the last improvement
        self.stopped_at: int | None = None  # the step where it stopped the run

    def update(self, value: float, step: int) -> None:
        """Count one evaluation's value (a non-finite one is no improvement)."""
        gain = None if self.best is None else (value - self.best if self.maximise else self.best - value)
        if math.isfinite(value) and (gain is None or gain > self.min_delta):
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1

    @property
    def exhausted(self) -> bool:
        return self.stale >= self.patience

    def describe(self) -> str:
        best = f"best {self.best:.6g} at step {self.best_step}" if self.best is not None else "no finite value"
        return (f"{self.metric} did not improve by more than {self.min_delta:g} for {self.stale} evaluations in a "
                f"row ({best}; early_stop_patience={self.patience})")

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "maximise": self.maximise, "best": self.best, "best_step": self.best_step,
                "stale": self.stale, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's state; one counting another metric (keep_best changed on resume) starts afresh."""
        if state and state["metric"] == self.metric and state["maximise"] == self.maximise:
            self.best, self.best_step, self.stale = state["best"], state["best_step"], state["stale"]
            self.stopped_at = state["stopped_at"]


def early_stopping(cfg: TrainConfig) -> Patience | None:
    """The run's early stopping (None without ``early_stop_patience``); keep_best names the metric it watches."""
    if cfg.early_stop_patience is None:
        if cfg.early_stop_min_delta:
            raise ConfigError(f"early_stop_min_delta={cfg.early_stop_min_delta:g} is the gain early stopping asks "
                              "for, and early_stop_patience is unset: add early_stop_patience=N (evaluations) or "
                              "drop early_stop_min_delta")
        return None
    if not cfg.keep_best:
        raise ConfigError(f"early_stop_patience={cfg.early_stop_patience} stops when keep_best's metric stops "
                          "improving, and keep_best is unset: add keep_best=METRIC (e.g. keep_best=exact_accuracy "
                          "or keep_best=loss)")
    return Patience(*best_rule(cfg.keep_best), cfg.early_stop_patience, cfg.early_stop_min_delta)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    key, state, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": key, "state": torch.from_numpy(state.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_ranks_start_alike(step: int, env: DistEnv) -> None:
    """Every rank reads the checkpoint it resumes from itself: a node that does not see rank 0's run_dir (no shared
    filesystem) would start over while the others resume, a silent mix of two trainings. One line instead."""
    steps = gather_objects(step, env)
    if any(other != steps[0] for other in steps):
        rank = next(r for r, other in enumerate(steps) if other != steps[0])
        raise SmoltrainError(f"rank {rank} starts at step {steps[rank]} and rank 0 at step {steps[0]}: every rank "
                             "reads the run's checkpoints, so run_dir must be on a filesystem that every node mounts "
                             "at the same path")


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


def _split_batch(batch: Batch, parts: int) -> list[Batch]:
    if parts == 1:
        return [batch]
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


class _LogWindow:
    """Sums over the optimizer steps since the last logged row (finite steps only); metric sums stay on the device
    until the row is written."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss = 0.0
        self.grad_norm = 0.0
        self.metric_sums: dict[str, torch.Tensor] = {}

    def add(self, loss: float, grad_norm: float, metric_sums: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        self.loss += loss
        self.grad_norm += grad_norm
        for key, value in metric_sums.items():
            self.metric_sums[key] = self.metric_sums[key] + value if key in self.metric_sums else value.clone()

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: a resumed run logs the same rows as one that never stopped."""
        return {"steps": self.steps, "loss": self.loss, "grad_norm": self.grad_norm, "metric_sums": self.metric_sums}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> _LogWindow:
        window = cls()
        if state:  # checkpoints written before windows were logged have none: an empty window
            window.steps, window.loss, window.grad_norm = state["steps"], state["loss"], state["grad_norm"]
            window.metric_sums = {k: v.to(device) for k, v in state["metric_sums"].items()}
        return window


class Trainer:
    """Builds everything from a config, then :meth:`fit` trains, evaluates and checkpoints."""

    def __init__(self, cfg: TrainConfig, callbacks: list[Callable[[Trainer], None]] | None = None) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dist = init_distributed(device_type(cfg.device), cfg.dist_timeout_minutes)
        self.device = pick_device(cfg.device, self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        per_step = self.dist.world_size * cfg.grad_accum_steps
        if cfg.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={cfg.global_batch_size} must be divisible by world_size x grad_accum_steps "
                f"= {self.dist.world_size} x {cfg.grad_accum_steps}"
            )

        # The same seed on every rank for the initial weights (rank 0's are broadcast anyway); after
        # that each rank gets seed + rank, as in the reference, for its own sampling randomness.
        seed_everything(cfg.seed)
        # Order: resolve (the dataset fills in the shapes) -> config.yaml (written by `fit` from this resolved
        # config) -> family (built from it, only reads it); so config.yaml does not depend on the family.
        self.cfg = cfg = resolve(cfg)
        self.run = RunDir(cfg.resolved_run_dir())
        self.run.check_writable()  # before the model is built: a file in its place is refused at once
        self.family = family_class(cfg.arch.name)(cfg, self.dist, self.device)
        self.model = self.family.build_model().to(self.device)
        if self.dist.enabled:
            broadcast_module(self.model)
        seed_everything(cfg.seed + self.dist.rank)
        # strategy=fsdp: weights sharded before the optimizers are built, so they hold (and step) only this rank's
        # shards. With one process there is nothing to shard: the run trains as plain.
        self.sharded = self._check_fsdp() and self.dist.enabled
        if self.sharded:
            fsdp.shard_model(self.model, self.family.fsdp_units(self.model) or [],
                             None if self.precision == "fp32" else DTYPES[self.precision])

        self.optimizers = self.family.build_optimizers(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.model, cfg.ema_rate) if cfg.ema else None
        self.stream = self.family.train_stream()
        self.steps_per_epoch = self.family.steps_per_epoch()
        self.total_steps = cfg.max_steps or max(1, int(cfg.epochs * self.steps_per_epoch))
        self.eval_every = cfg.eval_every_steps(self.steps_per_epoch)
        self.start_events: list[str] = []  # lines about how training starts, logged when fit begins
        parameters = sum(p.numel() for p in self.model.parameters())
        self.compiled = resolve_compile(cfg.compile, self.device, parameters, self.total_steps)
        self.step_model = self.eval_model = self.model
        self.cudagraphs = False
        if self.compiled:
            mode, note = resolve_compile_mode(cfg.compile_mode, self.device)
            self.step_model = torch.compile(self.model, mode=mode)
            self.eval_model = compile_for_eval(self.model, mode)
            # CUDA graphs replay into the same output memory: each micro-batch is marked as a new iteration and
            # the carry that crosses steps is copied out of that memory (see compute_gradients).
            self.cudagraphs = mode == "reduce-overhead"
            if note:
                self.start_events.append(note)
        self.best_metric, self.best_maximise = best_rule(cfg.keep_best) if cfg.keep_best else (None, True)
        self.best: dict[str, Any] | None = None  # best.json's record (metric, step, value)
        self.best_pending = False  # an evaluation beat the best: its checkpoint is to be saved
        self.patience = early_stopping(cfg)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step = 0
        self.evals_done = 0
        self.nonfinite_run = 0
        self.carries: list[Any] = [None] * cfg.grad_accum_steps
        self.stop_signal: str | None = None
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = self.last_checkpoint_step = -1
        self.last_eval_whole = False  # whether the last evaluation scored the whole test split
        self.window = _LogWindow()  # what the steps since the last logged row add up to
        self.started = time.perf_counter()  # of this session; `fit` restarts it
        # The checkpoint a run on a frozen base (LoRA) started from: its checkpoints then hold only what trains.
        self.base_pointer: dict[str, Any] | None = None
        # The checkpoint any run started from (init_from), kept in each of its checkpoints: a frozen copy of those
        # weights (DPO's reference) is rebuilt from it on resume, checked by hash, instead of being saved.
        self.init_pointer: dict[str, Any] | None = None

        # Rank 0 writes the run directory, so it owns it (before reading a checkpoint) until `fit` ends: a second
        # training there would resume this one's checkpoints, prune them and truncate its metrics.
        self.run_lock = self.run.lock() if self.dist.is_main else None
        try:
            self.resumed_from = self._start()
            check_ranks_start_alike(self.step, self.dist)
            record = self.run.read_best() if cfg.keep_best and self.resumed_from is not None else None
            if record is not None and record.get("metric") == self.best_metric and record["step"] <= self.step:
                self.best = record  # a resumed run goes on beating its own best
            self._attach_frozen_models()
            self.logger = MetricsLogger(
                self.run,
                enabled=self.dist.is_main,
                total_steps=self.total_steps,
                start_step=self.step,
                log_every=cfg.log_every,
                wandb_cfg=cfg.wandb,
                tensorboard=cfg.tensorboard,
                config=cfg.model_dump(mode="json"),
                run_name=cfg.run_name,
                wandb_project=cfg.setting("wandb.project"),
            )
        except BaseException:
            self.release_run_dir()
            raise

    # ------------------------------------------------------------------------------------------
    # public

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or until a signal); returns the run summary. The run directory is released
        when it returns or raises; the process group the trainer joined, when it returns.

        An unexpected exception (not a :class:`SmoltrainError`) leaves its traceback in the run's ``errors.log``
        and a note naming it, which the CLI's one-line report shows."""
        try:
            summary = self._fit()
        except SmoltrainError:
            raise
        except Exception as err:
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"--- {when} rank {self.dist.rank} step {self.step}: {type(err).__name__}\n"
            log = self.run.append_error(header + "".join(traceback.format_exception(err)))
            if log is not None:
                err.add_note(f"traceback kept in {log}")
            raise
        finally:
            self.release_run_dir()
        # Only after a training every rank finished: after a failure another rank may be gone, and the barrier
        # would wait out dist_timeout_minutes for it.
        leave_process_group(self.dist)
        return summary

    def release_run_dir(self) -> None:
        """Let another training own the run directory (``fit`` does this when it ends)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _fit(self) -> dict[str, Any]:
        self._write_run_files()
        for line in self.start_events:
            self.logger.event(line)
        if self.resumed_from:
            self.logger.event(f"resumed from {self.resumed_from} at step {self.step}")
        if self.patience is not None and self.patience.stopped_at is not None:
            if self.patience.exhausted:  # resumed after an early stop: training on would silently undo it
                self.logger.event(f"nothing to train: this run stopped early at step {self.patience.stopped_at} "
                                  f"({self.patience.describe()}); to train on, raise early_stop_patience or set "
                                  "early_stop_patience=null")
                self.logger.close()
                return self._summary("early_stopping", 0.0)
            self.patience.stopped_at = None  # early_stop_patience was raised: train on, counting from where it was
        previous = self._install_signal_handlers()
        window_start, window_steps = time.perf_counter(), 0
        started = self.started = time.perf_counter()
        stopped_by = None
        early_stopped = False
        try:
            first_step = self.compiled
            while self.step < self.total_steps:
                batch = next(self.stream)
                step_started = time.perf_counter()
                result = self.train_step(batch)
                if first_step:  # compilation happens in the first call: say what it cost
                    first_step = False
                    took = time.perf_counter() - step_started
                    self.logger.event(f"compile: the first training step took {took:.1f} s "
                                      f"(compilation included; compile={self.cfg.compile}, "
                                      f"compile_mode={self.cfg.compile_mode})")
                self.step += 1
                window_steps += 1
                if result is not None:  # a logging step
                    elapsed = time.perf_counter() - window_start
                    result["samples_per_s"] = self.cfg.global_batch_size * window_steps / max(elapsed, 1e-9)
                    if "tokens_per_step" in result:  # LM runs: the rate that compares across batch shapes
                        result["tokens_per_s"] = result["tokens_per_step"] * window_steps / max(elapsed, 1e-9)
                    result["elapsed_s"] = time.perf_counter() - started
                    self.logger.log({"step": self.step, **result})
                    window_start, window_steps = time.perf_counter(), 0
                self.logger.advance(self.step)
                for callback in self.callbacks:
                    callback(self)
                signalled, out_of_time = self._stop_requests(started)
                if signalled:
                    stopped_by = signalled
                    break
                if out_of_time:  # a planned end: the final evaluation still runs
                    self.logger.event(f"time budget of {self.cfg.max_minutes:g} min reached at step {self.step}")
                    break
                # The evaluation at the last step is the final one: it scores the whole test split.
                evaluated = self._eval_due() and self._run_eval(whole=self.step >= self.total_steps)
                if evaluated and self._early_stop_agreed():  # its final evaluation and checkpoint follow the loop
                    early_stopped = True
                    break
                if self._checkpoint_due(evaluated) or self.best_pending:
                    self.save_checkpoint()
            if not stopped_by and not (self.last_eval_step == self.step and self.last_eval_whole):
                self._run_eval(whole=True)  # the final evaluation, unless this step already had one of the whole split
            if early_stopped:
                stopped_by = "early_stopping"
            if self.last_checkpoint_step != self.step:
                self.save_checkpoint()
            if stopped_by and not early_stopped:
                self.logger.event(f"stopped by {stopped_by} at step {self.step}; checkpoint saved, "
                                  "continue with resume=auto")
        finally:
            self._restore_signal_handlers(previous)
        summary = self._summary(stopped_by, time.perf_counter() - started)
        if self.dist.is_main:
            self._write_summary(summary)
        self.logger.close()
        return summary

    def compute_gradients(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward over the micro-batches of ``batch``; gradients are left in ``.grad``.

        Returns this rank's loss (summed over micro-batches) and metric sums.
        """
        micro_batches = _split_batch(batch, self.cfg.grad_accum_steps)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            micro = {k: v.to(self.device, non_blocking=True) for k, v in micro.items()}
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self._autocast():
                out = self.family.train_step(self.step_model, micro, self.carries[i])
            self.carries[i] = self._own_carry(out.carry) if self.cudagraphs else out.carry
            (self.scaler.scale(out.loss) if self.scaler else out.loss).backward()
            loss_sum += out.loss.detach().float()
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums[k] + v.detach() if k in metric_sums else v.detach().clone()
        return loss_sum, metric_sums

    def _own_carry(self, carry: Any) -> Any:
        """A copy of ``carry`` in memory of its own: a CUDA-graph replay overwrites its outputs on the next one."""
        if carry is None:
            return None
        return self.family.load_carry({k: v.clone() for k, v in self.family.carry_state(carry).items()})

    def train_step(self, batch: Batch) -> dict[str, float] | None:
        """One optimizer step on this rank's share of the global batch.

        Returns the logged values (loss, lr, grad_norm, family metrics) on a logging step, else None.
        """
        cfg = self.cfg
        loss_sum, metric_sums = self.compute_gradients(batch)
        if self.dist.enabled:
            if not self.sharded:  # fsdp reduce-scattered the gradients in the backward already
                all_reduce_grads(self.trainable)
            all_reduce_sum(loss_sum)
        if self.scaler is not None:
            for spec in self.optimizers:
                self.scaler.unscale_(spec.optimizer)
        grad_norm = self._grad_norm()
        loss_value, norm_value = torch.stack([loss_sum, grad_norm.float()]).tolist()
        finite = math.isfinite(loss_value) and (math.isfinite(norm_value) or self.scaler is not None)

        factor = warmup_cosine_factor(self.step + 1, cfg.lr_warmup_steps, self.total_steps, cfg.lr_min_ratio)
        if finite:
            for spec in self.optimizers:
                for group in spec.optimizer.param_groups:
                    group["lr"] = spec.base_lr * factor
                if self.scaler is not None:
                    self.scaler.step(spec.optimizer)
                else:
                    spec.optimizer.step()
            if self.scaler is not None:
                self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
            self.nonfinite_run = 0
            self.window.add(loss_value, norm_value, metric_sums)
        else:
            self.nonfinite_run += 1
            self.logger.log({"step": self.step + 1, "skipped": True, "loss": loss_value, "grad_norm": norm_value},
                            prefix="nonfinite")
            if self.nonfinite_run >= cfg.max_nonfinite_steps:
                last = self.run.newest_checkpoint()
                where = f"the last checkpoint, {last}, is intact" if last else "no checkpoint was written"
                raise TrainingDiverged(
                    f"loss or gradients were non-finite for {self.nonfinite_run} steps in a row (up to step "
                    f"{self.step + 1}); {where}. Try a lower lr, grad_clip=1.0 or precision=fp32."
                )
        for spec in self.optimizers:
            spec.optimizer.zero_grad(set_to_none=True)

        if (self.step + 1) % cfg.log_every and self.step + 1 != self.total_steps:
            return None
        # The row is the mean over the steps since the last row (its finite ones), not this step alone: a TRM step
        # where no sequence halts has no accuracy of its own, and one-step snapshots of it read as zeros.
        window, self.window = self.window, _LogWindow()
        if not window.steps:  # every step of the window was skipped: what this one saw
            window.add(loss_value, norm_value, metric_sums)
        steps = window.steps
        values = {"loss": window.loss / steps, "lr": cfg.lr * factor, "grad_norm": window.grad_norm / steps}
        if window.metric_sums:
            names = sorted(window.metric_sums)
            stacked = all_reduce_sum(torch.stack([window.metric_sums[k].float() for k in names]))
            # Per-step means of the sums, so the family's reduction (a ratio of sums, or a sum per batch) is the
            # window's: accuracy = all correct / all halted over the window, tokens_per_step its mean.
            sums = {name: value / steps for name, value in zip(names, stacked.tolist(), strict=True)}
            values.update(self.family.reduce_metrics(sums))
        return values

    def evaluate(self, whole: bool = False) -> dict[str, float]:
        """Evaluate with the EMA weights when EMA is on; ``whole``: every test example, whatever
        ``eval_max_examples`` says (the final evaluation). When training compiles, so does evaluation
        (``eval_model``, see ``train/compile.py``)."""
        self.model.eval()
        if self.ema is not None:
            self.ema.swap_into(self.model)
        try:
            # fsdp: the whole model gathered for the evaluation, so ranks may run different numbers of forwards.
            with fsdp.unsharded(self.model) if self.sharded else contextlib.nullcontext(), torch.inference_mode(), \
                    self._autocast():
                outputs = self.run.predictions(self.step, self.dist.rank) if self.cfg.eval_save_outputs else None
                # Files an evaluation writes for people (ARC's submission.json) go next to the checkpoints.
                return self.family.evaluate(self.eval_model, outputs,
                                            self.run.eval_dir(self.run.step_dir(self.step)), whole=whole)
        finally:
            if self.ema is not None:
                self.ema.swap_into(self.model)
            self.model.train()

    def save_checkpoint(self) -> None:
        self.last_checkpoint_step = self.step
        per_rank = _to_cpu({
            "rng": rng_state(),
            "data": self.stream.state_dict(),
            "carries": [self.family.carry_state(c) if c is not None else {} for c in self.carries],
            "log_window": self.window.state_dict(),  # this rank's: metric sums are reduced when a row is written
        })
        ranks = gather_objects(per_rank, self.dist)
        # The plain (full) states, as one process writes them: gathered from the shards on every rank (collectives).
        model_state, ema_state, optimizer_states = self._full_states()
        if self.dist.is_main:
            if self.base_pointer is not None:  # adapters only, and where the frozen base is
                trains = {name for name, p in self.model.named_parameters() if p.requires_grad}
                model_state = {k: v for k, v in model_state.items() if k in trains}
            trainer_state = {
                "step": self.step,
                "evals_done": self.evals_done,
                "nonfinite_run": self.nonfinite_run,
                **({"early_stop": self.patience.state_dict()} if self.patience is not None else {}),
                "world_size": self.dist.world_size,
                "optimizers": optimizer_states,
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "ranks": ranks,
                **({"base": self.base_pointer, "lora": {"rank": self.cfg.lora.rank, "alpha": self.cfg.lora.alpha}}
                   if self.base_pointer is not None else {}),
                **({"init_from": self.init_pointer} if self.init_pointer is not None else {}),
            }
            best_step = self.best["step"] if self.best is not None else None
            if self.best_pending:
                best_step = self.step
            self.run.save_checkpoint(self.step, model_state, ema_state, trainer_state, keep=self.cfg.keep_checkpoints,
                                     protect_step=best_step)
            if self.best_pending and self.best is not None:  # recorded once its checkpoint is there
                self.run.write_best(self.best["metric"], self.step, self.best["value"])
        self.best_pending = False
        barrier(self.dist)

    # ------------------------------------------------------------------------------------------
    # internals

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32" or not self.family.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        if self.cfg.grad_clip is not None:  # over sharded gradients: the norm of the whole, reduced over the ranks
            return fsdp.full_tensor(torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip, foreach=True))
        if self.sharded:
            return fsdp.full_tensor(torch.nn.utils.get_total_norm(grads, foreach=True))
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _check_fsdp(self) -> bool:
        """Whether ``strategy=fsdp`` is asked for, refusing with one line what it does not shard correctly."""
        cfg = self.cfg
        if cfg.strategy != "fsdp":
            return False
        refusal: str | None = None
        if self.family.fsdp_units(self.model) is None:
            refusal = f"shards LM runs (arch=lm), not arch.name={cfg.arch.name}"
        elif cfg.optimizer == "muon":
            refusal = "cannot run optimizer=muon (it orthogonalises whole matrices; fsdp splits them over the " \
                      "ranks): use optimizer=adamw or adam_atan2"
        elif cfg.lora.enabled:
            refusal = "does not shard LoRA runs (a frozen base with adapters): set lora.rank=0"
        elif self.precision == "fp16":
            refusal = "has no fp16 loss scaling here: use precision=bf16 or precision=fp32"
        if refusal:
            raise ConfigError(f"strategy=fsdp {refusal}, or use strategy=ddp")
        return True

    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[dict[str, Any]]]:
        """(model, EMA, optimizer states) in the plain format, on the CPU where it matters: what rank 0 saves.
        Sharded: gathered from every rank (each must call this), complete on rank 0 only."""
        if not self.sharded:
            if not self.dist.is_main:  # each rank holds all of it: rank 0's copy is saved, nothing to gather
                return {}, None, []
            return (self.model.state_dict(), self.ema.state_dict() if self.ema else None,
                    [_to_cpu(spec.optimizer.state_dict()) for spec in self.optimizers])
        model_state = fsdp.full_model_state(self.model)
        ema_state = {k: fsdp.full_tensor(v).cpu() for k, v in self.ema.state_dict().items()} if self.ema else None
        return model_state, ema_state, [fsdp.full_optimizer_state(self.model, spec.optimizer)
                                        for spec in self.optimizers]

    def _load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """A plain (full) state dict into the model, sharded or not."""
        if self.sharded:
            fsdp.load_full_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    def _eval_due(self) -> bool:
        return self.eval_every is not None and self.step % self.eval_every == 0

    def _run_eval(self, whole: bool = False) -> bool:
        self.last_eval_step = self.step
        self.last_eval_whole = whole or self.cfg.eval_max_examples is None
        self.evals_done += 1
        if self.evals_done <= self.cfg.min_eval_interval:
            return False
        metrics = self.evaluate(whole)
        if metrics:
            self._track_best(metrics)  # first: it names a metric the evaluation lacks
            if self.patience is not None and self.patience.stopped_at is None:  # not the stop's final evaluation
                self.patience.update(float(metrics[self.patience.metric]), self.step)
            self.last_eval = metrics
            # elapsed_s as train rows have it, so evaluations plot against wall time too
            self.logger.log({"step": self.step, **metrics, "elapsed_s": time.perf_counter() - self.started},
                            prefix="eval")
        return True

    def _track_best(self, metrics: dict[str, float]) -> None:
        """With ``keep_best``: whether this evaluation beat the best so far (then its checkpoint is saved and kept,
        and best.json names it). A metric the evaluation does not report is the user's mistake."""
        name = self.best_metric
        if name is None:
            return
        if name not in metrics:
            raise ConfigError(f"keep_best={self.cfg.keep_best}: the evaluation reports no metric {name!r}; it has "
                              f"{', '.join(sorted(metrics))} (prefix - to minimise one, as keep_best=-loss)")
        value = float(metrics[name])
        if not math.isfinite(value):
            return
        if self.best is not None:
            better = value > self.best["value"] if self.best_maximise else value < self.best["value"]
            if not better:
                return
        self.best = {"metric": name, "step": self.step, "value": value}
        self.best_pending = True

    def _early_stop_agreed(self) -> bool:
        """Whether early stopping ends the run now (logged once); the same on every rank. The metric is all-reduced
        by the evaluation, so every rank counts alike; the flags are summed anyway, as a disagreement would leave
        one rank waiting forever in the next collective."""
        if self.patience is None:
            return False
        due = self.patience.exhausted
        if self.dist.enabled:
            due = bool(all_reduce_sum(torch.tensor([float(due)], device=self.device)).item() > 0)
        if due:
            self.patience.stopped_at = self.step
            self.logger.event(f"early stopping at step {self.step}: {self.patience.describe()}")
        return due

    def _checkpoint_due(self, evaluated: bool) -> bool:
        every = self.cfg.checkpoint_every
        return bool((every and self.step % every == 0) or (evaluated and self.cfg.checkpoint_every_eval))

    def _start(self) -> Path | None:
        """Where training starts; returns the run's own checkpoint it continues from, if any.

        ``resume`` picks one of the run's checkpoints (``auto``: the newest that loads). A checkpoint with
        training state continues bit for bit; a weights-only one (an imported run's) and ``init_from`` (another
        run's weights, when there is nothing to resume; the reference's ``load_checkpoint``) start from weights
        alone.
        """
        this_config = f"the config given (arch.name={self.cfg.arch.name})"
        found = self._checkpoint_to_resume()
        resumed_from = None
        if found is not None:
            resumed_from, (model_state, ema_state, state) = found
            ckpt.check_weights(self.model, ckpt.weights_to_use(model_state, ema_state), resumed_from, this_config,
                               fix=f"use a new run_dir, or the run's own config (smoltrain train {self.run.config})")
            self.base_pointer = state.get("base")
            self.init_pointer = state.get("init_from", self.base_pointer)
            if ckpt.holds_training_state(state):
                self.run.check_continues(self.cfg)  # the run goes on bit for bit: only with its own config
                self._restore(resumed_from, model_state, ema_state, state)
            else:
                self._start_from_weights(model_state, ema_state, state.get("step", 0))
        elif self.cfg.setting("init_from"):
            self._init_from(Path(self.cfg.setting("init_from")), this_config)
        if self.cfg.lora.enabled and self.base_pointer is None:
            raise ConfigError("lora.rank > 0 trains adapters on a pretrained model: add init_from=RUN_DIR (the run "
                              "to adapt), or set lora.rank=0 to train the whole model")
        if self.dist.is_main:  # rows past the start were written by a run that died after it
            truncate_metrics(self.run.metrics, self.step)
        return resumed_from

    def _init_from(self, path: Path, this_config: str) -> None:
        """Start from the weights of another run (its newest checkpoint that verifies) or of one of its step
        directories: fresh optimizer, schedule, data and RNG state, at step 0. The EMA weights when that run
        used EMA (what evaluating it measures). A LoRA run keeps a pointer to this checkpoint as its base."""
        key = "init_from" if self.cfg.init_from else "load_checkpoint"
        if not path.exists():
            raise SmoltrainError(f"{key}={path} does not exist: give a run directory or one of its "
                                 "checkpoints/step_N directories")
        source = RunDir(path)
        if source.checkpoints.is_dir():  # a run directory: its newest intact checkpoint
            found = source.newest_loadable(fix=f"pass {key}=RUN/checkpoints/step_N of an intact one")
            if found is None:
                raise SmoltrainError(f"{key}={path}: that run has no checkpoint yet; train it first")
            path, (model_state, ema_state, state) = found
        else:
            model_state, ema_state, state = ckpt.load_checkpoint(path)
            source = RunDir(path.parent.parent)  # RUN/checkpoints/step_N: its run, when it has a config
        if "lora" in state:  # a LoRA run: start from its adapters folded into its base
            model_state, ema_state = ckpt.plain_weights(model_state, ema_state, state), None
        self._check_same_arch(source, key)
        if self.cfg.lora.enabled:  # the adapters keep their fresh init (B = 0: the model starts equal to its base)
            trains = {name for name, p in self.model.named_parameters() if p.requires_grad}
            model_state = {**{k: v for k, v in self.model.state_dict().items() if k in trains}, **model_state}
        # Another dataset may have another number of puzzle ids: the family adapts what the reference adapts.
        model_state, note = self.family.adapt_loaded_weights(self.model, model_state, path)
        if note:
            self.start_events.append(note)
        ckpt.check_weights(self.model, ckpt.weights_to_use(model_state, ema_state), path, this_config,
                           fix=f"{key}= takes a checkpoint of the same architecture and sizes")
        self._start_from_weights(model_state, ema_state, step=0)
        self.start_events.append(f"weights from {path} ({key}); new optimizer and schedule")
        self.init_pointer = ckpt.base_pointer(path)
        if self.cfg.lora.enabled:
            self.base_pointer = self.init_pointer

    def _attach_frozen_models(self) -> None:
        """Build the models the family's step reads but does not train (DPO's reference, a distillation teacher);
        the same way on a fresh start and on resume: the reference from the checkpoint the run started from."""
        if not self.family.frozen_models():
            return
        pointer, where = self.init_pointer, self.resumed_from or self.run.root

        def initial_weights() -> dict[str, torch.Tensor]:
            return ckpt.load_base(pointer, where)  # type: ignore[arg-type]

        models = build_frozen_models(self.family, initial_weights if pointer is not None else None, self.device)
        self.family.attach_frozen(models)
        for name, source in self.family.frozen_models().items():
            origin = pointer["checkpoint"] if source == INITIAL_WEIGHTS and pointer else source
            self.start_events.append(f"frozen {name} model (not trained, not saved): {origin}")

    def _check_same_arch(self, source: RunDir, key: str) -> None:
        """One line naming the arch keys where the source run's network differs from this config's (keys that
        do not shape the network, such as the LM's seq_len, may differ)."""
        if not source.config.is_file():
            return  # a bare checkpoint: only its shapes can be checked
        free = self.family.arch_keys_free_on_init
        theirs, ours = (cfg.arch.model_dump(mode="json") for cfg in (source.load_config(), self.cfg))
        differ = [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted(theirs.keys() | ours.keys())
                  if k not in free and theirs.get(k) != ours.get(k)]
        if differ:
            raise ConfigError(f"{key}={source.root} is a run of another architecture ({'; '.join(differ)}): "
                              f"set those arch keys as the source run has them (its {source.config})")

    def _checkpoint_to_resume(self) -> tuple[Path, tuple] | None:
        choice = self.cfg.resume
        if choice == "none":
            self.run.check_fresh()
            return None
        if choice == "auto":
            return self.run.newest_loadable(fix="pass resume=none to start over")
        path = Path(choice)
        if not path.is_dir():
            raise SmoltrainError(f"resume={choice}: no such checkpoint directory; use resume=auto or a "
                                 f"path like {self.run.step_dir(1000)}")
        return path, ckpt.load_checkpoint(path)

    def _start_from_weights(self, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
                            step: int) -> None:
        """Fresh optimizer, EMA, data and RNG state from the given weights (EMA ones when present)."""
        self._load_weights(ckpt.weights_to_use(model_state, ema_state))
        if self.ema is not None:
            self.ema = EMA(self.model, self.cfg.ema_rate)
        self.step = step

    def _restore(self, path: Path, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
                 state: dict[str, Any]) -> None:
        """Everything a checkpoint with training state holds, so the run goes on bit for bit."""
        if state.get("world_size", 1) != self.dist.world_size:
            raise SmoltrainError(
                f"{path} was written by {state.get('world_size')} processes; resume it with the same number "
                f"(now {self.dist.world_size}) or start a new run_dir"
            )
        self._load_weights(model_state)
        if self.ema is not None:
            if ema_state is None:
                raise SmoltrainError(f"{path} has no EMA weights but ema=True; resume with ema=False")
            shadow = self.ema.state_dict()  # sharded like the weights under fsdp: this rank's shards of the saved
            self.ema.load_state_dict({k: fsdp.shard_like(v, shadow[k]) if k in shadow else v.to(self.device)
                                      for k, v in ema_state.items()})
        for spec, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            if self.sharded:
                fsdp.load_full_optimizer_state(self.model, spec.optimizer, opt_state)
            else:
                spec.optimizer.load_state_dict(opt_state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.evals_done = state.get("evals_done", 0)
        if self.patience is not None:
            self.patience.load_state_dict(state.get("early_stop"))
        self.nonfinite_run = state.get("nonfinite_run", 0)
        mine = state["ranks"][self.dist.rank]
        self.stream.load_state_dict(mine["data"])
        self.carries = [
            self.family.load_carry({k: v.to(self.device) for k, v in c.items()}) if c else None
            for c in mine["carries"]
        ]
        set_rng_state(mine["rng"])
        self.window = _LogWindow.from_state(mine.get("log_window"), self.device)

    def _stop_requests(self, started: float) -> tuple[str | None, bool]:
        """(the signal that stops the run or None, whether the time budget ran out); the same on every rank."""
        out_of_time = bool(self.cfg.max_minutes) and time.perf_counter() - started > 60 * self.cfg.max_minutes
        if not self.dist.enabled:
            return self.stop_signal, out_of_time
        # Ranks must agree, or one would wait forever in the next collective.
        flags = torch.tensor([float(self.stop_signal is not None), float(out_of_time)], device=self.device)
        signalled, out_of_time = (bool(v > 0) for v in all_reduce_sum(flags).tolist())
        return (self.stop_signal or "a signal to another rank") if signalled else None, out_of_time

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            self.stop_signal = signal.Signals(signum).name
            # A second Ctrl-C while saving should still be able to kill the process.
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _write_run_files(self) -> None:
        if self.dist.is_main:
            self.run.write_config(self.cfg)
            tokenizer = self.family.tokenizer_dir()
            if tokenizer is not None:
                self.run.save_tokenizer(tokenizer)

    def _summary(self, stopped_by: str | None, seconds: float) -> dict[str, Any]:
        return {
            "arch": self.cfg.arch.name,
            "run_dir": str(self.run.root),
            "step": self.step,
            "total_steps": self.total_steps,
            "stopped_by": stopped_by,
            "seconds_this_session": round(seconds, 2),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
            **self.family.describe(self.model),
            "eval": self.last_eval,
        }

    def _write_summary(self, summary: dict[str, Any]) -> None:
        root = self.run.root
        lines = [f"# Run `{root.name}`", ""]
        lines += [f"- **{k}**: {v}" for k, v in summary.items() if k != "eval"]
        if summary["eval"]:
            lines += ["", "## Last evaluation", ""]
            lines += [f"- {k}: {v:.4f}" for k, v in summary["eval"].items()]
        lines += ["", "## Curves", ""]
        # metrics.jsonl is line-buffered: every row is in the file already
        if write_run_curves(root) is not None:
            lines += [f"![training curves]({self.run.curves.name})", "", f"Drawn from metrics.jsonl; overlay runs with "
                      f"`smoltrain plot {root} OTHER_RUN --output curves.html`."]
        else:
            why = "matplotlib is not installed (pip install 'smoltrain[plot]')" if not has_matplotlib() else \
                "nothing was logged"
            lines += [f"No {self.run.curves.name}: {why}. `smoltrain plot {root} --output curves.html` draws them "
                      "without it."]
        lines += [
            "",
            "## Next",
            "",
            f"- continue training: `smoltrain train {self.run.config} run_dir={root} max_steps=...`",
            f"- evaluate: `smoltrain eval {root}`",
        ]
        self.run.write_readme("\n".join(lines) + "\n")
