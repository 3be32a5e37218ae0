"""The Python API: load a trained (or imported) run and evaluate it.

>>> run = smoltrain.load("runs/demo")      # newest checkpoint, EMA weights when the run used EMA
>>> run.model, run.config                  # the model in eval mode, and its resolved TrainConfig
>>> load_adapter("runs/lora")              # a LoRA run's adapters alone, to put on a base already loaded

This is the one loader: evaluation, ``smoltrain solve``, ``generate``, ``chat`` and ``export hf`` all build
their model here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smoltrain.config import TrainConfig
from smoltrain.errors import SmoltrainError
from smoltrain.families import Family, build_family, family_class
from smoltrain.families.base import INITIAL_WEIGHTS
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runs.run_dir import RunDir
from smoltrain.runtime.device import pick_device
from smoltrain.runtime.distributed import DistEnv

NO_DATA = ["data_paths=[]", "data_paths_test=[]"]


@dataclass
class Adapter:
    """LoRA adapters read without their base: ``weights`` by our keys (``<module>.lora_A`` / ``.lora_B``).

    ``base_files`` (a LoRA run's) holds the sha256 of the base checkpoint's weight files they were trained on;
    None where that is unknown (a PEFT adapter directory)."""

    weights: dict[str, torch.Tensor]
    rank: int
    alpha: float
    source: Path
    base_files: dict[str, str] | None = None

    @property
    def targets(self) -> list[str]:
        """The last names of the adapted layers (``q_proj``, ...)."""
        return sorted({key.rsplit(".", 2)[-2] for key in self.weights})


def load_adapter(run_dir: str | Path) -> Adapter:
    """The adapters of a LoRA run's newest checkpoint (EMA ones when the run used EMA), without its base."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    if not cfg.lora.enabled:
        raise SmoltrainError(f"{run.root} is not a LoRA run (lora.rank=0): it has no adapters to put on a base")
    found = run.newest_loadable(fix="train the run again (smoltrain train) or copy an intact checkpoint in",
                                with_base=False)
    if found is None:
        raise SmoltrainError(f"{run.root} has no checkpoint yet; train it with `smoltrain train` first")
    _, (model_state, ema_state, state) = found
    weights = ckpt.weights_to_use(model_state, ema_state)
    return Adapter(weights=dict(weights), rank=state["lora"]["rank"], alpha=state["lora"]["alpha"], source=run.root,
                   base_files=state["base"]["files"])


@dataclass
class LoadedRun:
    model: nn.Module
    config: TrainConfig
    family: Family
    checkpoint: Path
    device: torch.device
    run_dir: RunDir


def load(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
         overrides: list[str] | None = None, *, need_data: bool = True) -> LoadedRun:
    """Build a run's model from its saved config and load a checkpoint (the newest by default).

    The model comes back in eval mode on ``device``; when the run trained with EMA, the EMA weights
    are loaded, as the reference evaluates and saves them. ``need_data=False`` (generation, solving a
    typed puzzle, export) drops the data paths when the config declares the data's shape, so a dataset
    absent on this machine does not stop the load.
    """
    run = RunDir(run_dir)
    cfg = run.load_config(overrides)
    if not need_data and family_class(cfg.arch.name).declares_data_shape(cfg):
        cfg = run.load_config([*(overrides or []), *NO_DATA])
    if str(checkpoint) == "best":  # keep_best's: what best.json names
        record = run.read_best()
        if record is None:
            raise SmoltrainError(f"{run.root} has no best.json: --checkpoint best needs a run trained with "
                                 "keep_best=METRIC; pass a checkpoint directory or leave --checkpoint out")
        checkpoint = run.step_dir(record["step"])
    if checkpoint is None:  # the newest that verifies: a damaged or empty step directory is skipped
        found = run.newest_loadable(fix="train the run again (smoltrain train) or copy an intact checkpoint in")
        if found is None:
            raise SmoltrainError(f"{run.root} has no checkpoint yet; train it with `smoltrain train` first")
        checkpoint, (model_state, ema_state, _) = found
    else:
        checkpoint = Path(checkpoint)
        model_state, ema_state, _ = ckpt.load_checkpoint(checkpoint)
    dev = pick_device(device)
    family = build_family(cfg, DistEnv(), dev)
    model = family.build_model()
    weights = ckpt.weights_to_use(model_state, ema_state)
    against = f"{run.config} with the overrides given" if overrides else str(run.config)
    ckpt.check_weights(model, weights, checkpoint, against,
                       fix="drop the overrides that change the model, or pass a checkpoint of this run")
    model.load_state_dict(weights)
    model.to(dev).eval()
    return LoadedRun(model=model, config=family.cfg, family=family, checkpoint=checkpoint, device=dev, run_dir=run)


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             overrides: list[str] | None = None, report_dir: str | Path | None = None) -> dict[str, float]:
    """The family's evaluation metrics of a trained run.

    Files the evaluation writes for people (ARC's ``submission.json``, ``arc_scores.json``) go to
    ``report_dir``, by default the run's report directory of the checkpoint (``RUN/eval/<checkpoint name>``).
    """
    run = load(run_dir, checkpoint, device, overrides)
    report = Path(report_dir) if report_dir is not None else run.run_dir.eval_dir(run.checkpoint)
    if run.family.frozen_models():  # DPO scores against its reference: rebuilt from where the run started

        pointer = ckpt.load_checkpoint(run.checkpoint)[2].get("init_from")

        def initial_weights() -> dict[str, torch.Tensor]:
            return ckpt.load_base(pointer, run.checkpoint)

        run.family.attach_frozen(build_frozen_models(run.family, initial_weights if pointer else None, run.device))
    with torch.inference_mode():
        return run.family.evaluate(run.model, report_dir=report)


# --- Frozen models ---------------------------------------------------------------------------------------------
# The frozen models a family's training step reads besides the model it trains (``Family.frozen_models``): DPO's
# reference, a copy of the weights the run started from, and a distillation teacher, another run.
#
# Built by the trainer before the first step and again on resume, and by the loader for an evaluation; never saved
# with a checkpoint (a reference can be rebuilt from the checkpoint the run started from, a teacher is its own run).
# Building one draws random initial weights before its own are loaded: that happens with the RNG state saved and
# restored (``torch.random.fork_rng``), so a run resumed after building its frozen models draws the same random
# numbers as the run that never stopped.


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode (no dropout) with no parameter asking for a gradient."""
    model.requires_grad_(False)
    return model.eval()


def build_frozen_models(family: Family, initial_weights: Callable[[], dict[str, torch.Tensor]] | None,
                        device: torch.device) -> dict[str, nn.Module]:
    """The family's frozen models on ``device``; ``initial_weights`` gives the weights the run started from (None
    when it started from none)."""
    models: dict[str, nn.Module] = {}
    for name, source in family.frozen_models().items():
        with torch.random.fork_rng(devices=[]):  # initial weights drawn here leave the run's RNG where it was
            if source == INITIAL_WEIGHTS:
                if initial_weights is None:
                    raise SmoltrainError(f"the {name} model is a copy of the weights the run started from, and it "
                                         "started from none: add init_from=RUN_DIR")
                model = family.build_model()
                # Keys the start did not set (fresh LoRA adapters: B = 0, no change) keep their initial values.
                model.load_state_dict({**model.state_dict(), **initial_weights()})
            else:
                if not Path(source).is_dir():
                    raise SmoltrainError(f"the {name} run {source} does not exist: give a trained run directory")
                model = load(source, device="cpu", need_data=False).model
        models[name] = freeze(model.to(device))
    return models
