"""A toy family that exercises the trainer: learn to reverse or sort short integer sequences.

The data is generated on the fly and deterministically from (seed, batch index), so the stream's
position is one integer. The model is a small MLP over the flattened sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from smoltrain.config import ArchConfig
from smoltrain.families.base import Batch, Family, OptimizerSpec, StepOutput, TrainStream
from smoltrain.optim import AdamATan2

EVAL_SEED_OFFSET = 1_000_003  # eval sequences come from a seed no training batch uses


class ToyConfig(ArchConfig):
    name: Literal["toy"] = "toy"
    task: Literal["reverse", "sort"] = "reverse"
    seq_len: int = Field(8, ge=1)
    vocab_size: int = Field(10, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=0)  # 0: embeddings and head only
    dropout: float = Field(0.0, ge=0, lt=1)
    eval_examples: int = Field(512, ge=1)
    epoch_batches: int = Field(100, ge=1)  # batches per "epoch" (the data is endless; this sets the epoch unit)


def make_examples(task: str, seq_len: int, vocab: int, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    inputs = rng.integers(0, vocab, size=(n, seq_len), dtype=np.int64)
    labels = inputs[:, ::-1].copy() if task == "reverse" else np.sort(inputs, axis=1)
    return inputs, labels


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.seq_len * cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_positions = nn.Parameter(torch.randn(cfg.seq_len, cfg.hidden_size) * 0.02)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(cfg.num_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch = inputs.shape[0]
        h = (self.embed_tokens(inputs) + self.embed_positions).flatten(1)
        for layer in self.layers:
            h = h + self.dropout(F.gelu(layer(h)))  # mixes every position with every other: enough to reverse or sort
        h = self.norm(h).view(batch, self.cfg.seq_len, self.cfg.hidden_size)
        return self.lm_head(h)


class ToyStream(TrainStream):
    def __init__(self, arch: ToyConfig, seed: int, global_batch: int, rank: int, local_batch: int) -> None:
        self.arch, self.seed, self.global_batch = arch, seed, global_batch
        self.rows = slice(rank * local_batch, (rank + 1) * local_batch)
        self.index = 0

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.index])
        inputs, labels = make_examples(self.arch.task, self.arch.seq_len, self.arch.vocab_size, rng,
                                       self.global_batch)
        self.index += 1
        return {"inputs": torch.from_numpy(inputs[self.rows]), "labels": torch.from_numpy(labels[self.rows])}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def sequence_scores(logits: torch.Tensor, labels: torch.Tensor,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Per-sequence mean cross-entropy (label-smoothed as torch's), token accuracy and exact match."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none",
                         label_smoothing=label_smoothing).view(labels.shape)
    correct = logits.argmax(-1) == labels
    return ce.mean(1), correct.float().mean(1), correct.all(1).float()


class ToyFamily(Family):
    config_class = ToyConfig

    @property
    def arch(self) -> ToyConfig:
        return self.cfg.arch  # type: ignore[return-value]

    def build_model(self) -> nn.Module:
        return ToyModel(self.arch)

    def build_optimizers(self, model: nn.Module) -> list[OptimizerSpec]:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
            )
        else:
            opt = AdamATan2(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
        return [OptimizerSpec(opt, cfg.lr)]

    def train_stream(self) -> TrainStream:
        return ToyStream(self.arch, self.cfg.seed, self.cfg.global_batch_size, self.dist.rank, self.local_batch_size)

    def steps_per_epoch(self) -> float:
        return float(self.arch.epoch_batches)

    def train_step(self, model: nn.Module, batch: Batch, carry: Any) -> StepOutput:
        logits = model(batch["inputs"])
        ce, accuracy, exact = sequence_scores(logits, batch["labels"], self.cfg.label_smoothing)
        metrics = {"count": torch.tensor(float(len(ce))), "accuracy": accuracy.sum(), "exact_accuracy": exact.sum()}
        return StepOutput(loss=ce.sum() / self.cfg.global_batch_size, metrics=metrics)

    def eval_examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed + EVAL_SEED_OFFSET])
        inputs, labels = make_examples(self.arch.task, self.arch.seq_len, self.arch.vocab_size, rng,
                                       self.arch.eval_examples)
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def evaluate(self, model: nn.Module, outputs_path: Path | None = None,
                 report_dir: Path | None = None, whole: bool = False) -> dict[str, float]:
        inputs, labels = self.eval_examples()
        logits = model(inputs.to(self.device))
        ce, accuracy, exact = sequence_scores(logits, labels.to(self.device))
        return {"loss": ce.mean().item(), "accuracy": accuracy.mean().item(), "exact_accuracy": exact.mean().item()}
