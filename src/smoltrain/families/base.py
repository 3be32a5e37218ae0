"""The interface between the trainer and a model family.

A family knows how to build its model, optimizers and data from a :class:`TrainConfig`, how to run
one training step on a batch (with an optional carry that lives across steps, as TRM's ACT state
does) and how to evaluate. The trainer owns everything else: device, precision, accumulation,
gradient all-reduce, clipping, schedule, EMA, checkpoints, logging and signals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from smoltrain.errors import ConfigError
from smoltrain.optim import AdamATan2, build_adamw, build_muon, split_hidden_matrices

if TYPE_CHECKING:
    from smoltrain.config import ArchConfig, TrainConfig
    from smoltrain.runtime.distributed import DistEnv

Batch = dict[str, torch.Tensor]

# Where a frozen model comes from (`Family.frozen_models`): the weights this run starts from (``init_from``).
INITIAL_WEIGHTS = "initial weights"


@dataclass
class OptimizerSpec:
    """An optimizer and the base LR that the schedule multiplies."""

    optimizer: torch.optim.Optimizer
    base_lr: float


def build_weight_optimizers(model: nn.Module, cfg: TrainConfig, outside: tuple[str, ...]) -> list[OptimizerSpec]:
    """The optimizers of ``model``'s trainable parameters that ``cfg.optimizer`` names: one AdamATan2 or AdamW over
    all of them, or for ``muon`` torch's Muon on the hidden weight matrices (``optim.split_hidden_matrices``; the
    names in ``outside`` are the family's embeddings and heads) at ``muon_lr`` and AdamW on the rest at ``lr``.
    Each is built at lr 0: the trainer sets every step's LR from the spec's base LR."""
    betas = (cfg.beta1, cfg.beta2)
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    if cfg.optimizer == "adam_atan2":
        return [OptimizerSpec(AdamATan2(params, lr=0.0, betas=betas, weight_decay=cfg.weight_decay), cfg.lr)]
    if cfg.optimizer == "adamw":
        return [OptimizerSpec(build_adamw(params, 0.0, betas, cfg.weight_decay), cfg.lr)]
    if cfg.optimizer != "muon":
        raise ConfigError(f"optimizer={cfg.optimizer}: unknown; choose from adam_atan2, adamw, muon")
    matrices, rest = split_hidden_matrices(model.named_parameters(), outside)
    specs = [OptimizerSpec(build_muon(matrices, 0.0, cfg.muon_weight_decay), cfg.muon_lr)] if matrices else []
    if rest:
        specs.append(OptimizerSpec(build_adamw(rest, 0.0, betas, cfg.weight_decay), cfg.lr))
    return specs


def eval_subset(total: int, limit: int | None, seed: int) -> np.ndarray | None:
    """The ``limit`` of ``total`` test examples an evaluation scores, drawn at random from ``seed`` alone, so every
    evaluation of a run scores the same ones (sorted, so the data is read in order); None: all of them."""
    if limit is None or limit >= total:
        return None
    return np.sort(np.random.default_rng([seed, 0x5EED]).choice(total, size=limit, replace=False))


@dataclass
class StepOutput:
    """What one training step on one micro-batch returns.

    ``loss`` must be normalised so that summing it over micro-batches and ranks gives the loss of the
    whole global batch (divide per-sample sums by ``cfg.global_batch_size``); the trainer then sums
    gradients across ranks instead of averaging them. ``metrics`` hold sums over this micro-batch
    (the trainer adds them over micro-batches and ranks, then calls :meth:`Family.reduce_metrics`).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    carry: Any = None


class TrainStream:
    """An endless, resumable iterator of local (this rank's) training batches."""

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class Family(ABC):
    """One model family. Subclasses set ``config_class`` and implement the abstract methods.

    A family is built from a config that went through its :meth:`resolve` and only reads it: whatever the
    dataset decides is in the config before the family exists, so the run's config.yaml holds it too.
    """

    config_class: ClassVar[type[ArchConfig]]
    # Whether the trainer should run forward passes under torch.autocast for bf16/fp16. Families
    # that cast by hand (TRM keeps fp32 master weights and casts activations itself) set False.
    uses_autocast: ClassVar[bool] = True

    # The training stages (``stage=``) the family trains; the others are refused with one line.
    stages: ClassVar[tuple[str, ...]] = ("pretrain",)

    # Arch keys whose values come from the dataset (``resolve`` fills them); a saved run records them.
    data_shape_keys: ClassVar[tuple[str, ...]] = ()
    # Arch keys that may differ between a run and the run it starts from (``init_from``): they do not shape the
    # network's weights, or the family adapts the weights to them (``adapt_loaded_weights``).
    arch_keys_free_on_init: ClassVar[tuple[str, ...]] = ()
    # Whether the family's model takes low-rank adapters (``lora.rank`` > 0; built by ``build_model``).
    supports_lora: ClassVar[bool] = False
    # Whether ``build_model`` applies ``activation_checkpointing`` (the recomputation lives in the model's forward).
    supports_activation_checkpointing: ClassVar[bool] = False

    @classmethod
    def declares_data_shape(cls, cfg: TrainConfig) -> bool:
        """Whether ``cfg`` alone fixes the model's shape, so the model builds without its dataset (a trained or
        imported run records every data-shape key)."""
        return all(getattr(cfg.arch, key, None) is not None for key in cls.data_shape_keys)

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> TrainConfig:
        """A new config with the values that come from the data filled in (e.g. TRM's ``seq_len`` from the
        dataset's ``dataset.json``); pure: reads the dataset's metadata, never changes ``cfg``. The default
        has nothing to fill."""
        return cfg

    def __init__(self, cfg: TrainConfig, dist: DistEnv, device: torch.device) -> None:
        if cfg.lora.enabled and not self.supports_lora:
            raise ConfigError(f"lora.rank > 0 is for LM runs (arch.name=lm), not arch.name={cfg.arch.name}: "
                              "set lora.rank=0")
        if cfg.activation_checkpointing and not self.supports_activation_checkpointing:
            raise ConfigError(f"activation_checkpointing=true is for LM and TRM-family runs, not arch.name="
                              f"{cfg.arch.name}: set activation_checkpointing=false")
        self.cfg = cfg
        self.dist = dist
        self.device = device
        # Rows of the global batch that this rank sees, and the rows of one accumulation micro-batch.
        self.local_batch_size = cfg.global_batch_size // dist.world_size
        self.micro_batch_size = self.local_batch_size // cfg.grad_accum_steps
        self.frozen: dict[str, nn.Module] = {}

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def build_optimizers(self, model: nn.Module) -> list[OptimizerSpec]: ...

    @abstractmethod
    def train_stream(self) -> TrainStream: ...

    @abstractmethod
    def steps_per_epoch(self) -> float:
        """Optimizer steps in one epoch (the unit of ``epochs`` and ``eval_interval``)."""

    @abstractmethod
    def train_step(self, model: nn.Module, batch: Batch, carry: Any) -> StepOutput: ...

    def evaluate(self, model: nn.Module, outputs_path: Path | None = None,
                 report_dir: Path | None = None, whole: bool = False) -> dict[str, float]:
        """Metrics on the held-out data; the model is in eval mode and holds the EMA weights if any. The data is
        the ``eval_max_examples`` subset (:func:`eval_subset`), or all of it with ``whole`` (the final evaluation).

        With ``outputs_path`` (the run sets ``eval_save_outputs``) the family also saves the tensors named
        there for every evaluated example to that file. Files an evaluation produces for people (such as
        ARC's ``submission.json``) go to ``report_dir`` when one is given.
        """
        return {}

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn metric sums over the global batch into logged values (default: divide by ``count``)."""
        count = sums.get("count", 0.0)
        return {k: (v / count if count else 0.0) for k, v in sums.items() if k != "count"}

    def frozen_models(self) -> dict[str, str]:
        """Models a training step reads but never trains, by name: :data:`INITIAL_WEIGHTS` (a frozen copy of the
        weights the run starts from, DPO's reference) or a run directory (a distillation teacher). The trainer
        builds them before the first step, also on resume (they are not saved with the run's checkpoints), and
        hands them over with :meth:`attach_frozen`. Default: none."""
        return {}

    def attach_frozen(self, models: dict[str, nn.Module]) -> None:
        """Take the frozen models :meth:`frozen_models` named (eval mode, no gradients, on the family's device)."""
        self.frozen = dict(models)

    def tokenizer_dir(self) -> Path | None:
        """The tokenizer the run's data was encoded with, which the run keeps (LM runs); None without one."""
        return None

    # The carry (state that lives across steps, e.g. TRM's ACT slots) as flat tensors, for checkpoints.
    def carry_state(self, carry: Any) -> dict[str, torch.Tensor]:
        return {}

    def load_carry(self, state: dict[str, torch.Tensor]) -> Any:
        return None

    def adapt_loaded_weights(self, model: nn.Module, state: dict[str, torch.Tensor],
                             source: Path) -> tuple[dict[str, torch.Tensor], str | None]:
        """Weights of another run (``load_checkpoint=``) fitted to ``model`` where the family knows how (TRM: a
        puzzle-embedding table of another dataset); returns them and a line saying what changed, or None when
        nothing did. Whatever still does not fit is reported by the caller. Default: unchanged."""
        return state, None

    def fsdp_units(self, model: nn.Module) -> list[nn.Module] | None:
        """The blocks ``strategy=fsdp`` shards one by one (each gathered only while it runs), before the rest of
        ``model``; None (the default): the family is not sharded, and ``strategy=fsdp`` is refused."""
        return None

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Facts for the run summary and `smoltrain info` (parameter count by default)."""
        facts = {"parameters": sum(p.numel() for p in model.parameters())}
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if trainable != facts["parameters"]:  # LoRA (or a frozen part): what the optimizer sees
            facts["trainable_parameters"] = trainable
        return facts
