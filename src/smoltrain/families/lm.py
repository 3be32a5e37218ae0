"""The tiny decoder LM family (``arch=lm``) on tokenized text.

Glue only: the model is ``models/lm.py``, the token shards and training rows ``data/text.py``. The
vocabulary size comes from the dataset's ``metadata.json`` (as TRM's shapes come from ``dataset.json``);
``arch.seq_len`` is the training context and ``arch.packing`` picks the rows: packed windows (default) or
MiniMind's one padded document per row. A step's loss is the micro-batch's mean token loss weighted by
its share of the global batch's rows, so the sum over micro-batches and ranks is the global mean when
every row has the same number of scored tokens (packed); with padding it is the mean over micro-batches of
their token means, as MiniMind's gradient accumulation computes it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, create_model
from torch import nn

from smoltrain.config import ArchConfig
from smoltrain.data.text import DocumentRows, TokenWindows, read_metadata
from smoltrain.errors import ConfigError, DataError
from smoltrain.families.base import Batch, Family, OptimizerSpec, StepOutput, TrainStream
from smoltrain.models.lm import LMConfig, LMForCausalLM
from smoltrain.optim import AdamATan2


def _arch_config() -> type[ArchConfig]:
    fields: dict[str, Any] = {
        key: (info.annotation, info) for key, info in LMConfig.model_fields.items() if key != "vocab_size"
    }
    fields["vocab_size"] = (int | None, Field(None, ge=1, description="None: from the dataset's metadata.json"))
    fields["seq_len"] = (int, Field(256, ge=1, description="training context (tokens per window)"))
    fields["packing"] = (bool, Field(True, description="true: packed fixed-length windows; false: one document "
                                                       "per row, padded (MiniMind's pretraining rows)"))
    return create_model(  # type: ignore[call-overload, no-any-return]
        "LMArchConfig", __base__=ArchConfig, name=(Literal["lm"], "lm"), **fields
    )


def build_lm_optimizer(model: nn.Module, name: str, lr: float, betas: tuple[float, float],
                       weight_decay: float) -> torch.optim.Optimizer:
    """The LM's optimizer over all parameters (one group, as MiniMind). AdamW runs torch's fused kernel
    where it has one (CPU and CUDA): one pass over each tensor instead of the ~10 elementwise kernels
    per parameter of the default CPU loop, the same update up to float rounding."""
    params = list(model.parameters())
    if name == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
    return AdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)


DEFAULT_VOCAB_SIZE = 6400  # MiniMind's tokenizer; only to describe a model whose dataset is not built yet


class LMFamily(Family):
    config_class = _arch_config()

    def __init__(self, cfg, dist, device) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg, dist, device)
        self.metadata: dict[str, Any] | None = None
        self.vocab_assumed = False
        if cfg.data_paths:
            try:
                self.metadata = read_metadata(cfg.data_paths[0])[1]
            except DataError:
                if Path(cfg.data_paths[0]).exists():
                    raise  # a dataset that is there but broken is an error; an absent one only for training
        vocab = self.metadata["vocab_size"] if self.metadata else None
        if self.arch.vocab_size is None:
            if vocab is None:
                # No dataset (yet): describe the model at MiniMind's vocabulary (`smoltrain info`); training
                # stops at the data with the dataset's own error.
                vocab, self.vocab_assumed = DEFAULT_VOCAB_SIZE, True
            self.arch.vocab_size = vocab  # recorded in the run's config, so the run loads without its data
        elif vocab is not None and vocab != self.arch.vocab_size:
            raise ConfigError(f"arch.vocab_size={self.arch.vocab_size} but the dataset {cfg.data_paths[0]} was "
                              f"tokenized with {vocab} tokens: use the tokenizer the run was trained with")

    def tokenizer_dir(self) -> Path | None:
        """The dataset's tokenizer: the run keeps a copy, so generation and export need no dataset."""
        if self.metadata is None:
            return None
        source = Path(self.metadata["tokenizer"]["path"]).parent
        return source if source.is_dir() else None

    @property
    def arch(self) -> Any:
        return self.cfg.arch

    def build_model(self) -> nn.Module:
        try:
            config = LMConfig.from_arch(self.arch)
        except ValidationError as err:
            raise ConfigError(f"arch: {err.errors()[0]['msg']}") from None
        return LMForCausalLM(config)

    def build_optimizers(self, model: nn.Module) -> list[OptimizerSpec]:
        cfg = self.cfg
        opt = build_lm_optimizer(model, cfg.optimizer, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
        return [OptimizerSpec(opt, cfg.lr)]

    def _windows(self, split: str) -> TokenWindows:
        if not self.cfg.data_paths:
            raise ConfigError("this needs the run's text dataset, and data_paths is empty: add data_paths=[DIR]")
        rows = TokenWindows if self.arch.packing else DocumentRows
        return rows(self.cfg.data_paths[0], split, self.arch.seq_len, self.cfg.global_batch_size,
                    rank=self.dist.rank, world_size=self.dist.world_size, seed=self.cfg.seed)

    def train_stream(self) -> TrainStream:
        return self._windows("train")  # type: ignore[return-value]

    def steps_per_epoch(self) -> float:
        if self.metadata is None:
            where = self.cfg.data_paths[0] if self.cfg.data_paths else None
            raise DataError(f"the text dataset {where} is not built yet: `smoltrain data text ... --output-dir "
                            f"{where}`" if where else "data_paths is empty: add data_paths=[DIR]")
        train = self.metadata["splits"]["train"]
        if not self.arch.packing:
            return train["documents"] / self.cfg.global_batch_size
        return train["tokens"] / (self.arch.seq_len * self.cfg.global_batch_size)

    def train_step(self, model: nn.Module, batch: Batch, carry: Any) -> StepOutput:
        targets = batch["targets"]
        out = model(batch["input_ids"], targets=targets)
        rows = batch["input_ids"].shape[0]
        share = rows / self.cfg.global_batch_size
        loss = out.loss * share
        metrics = {"count": torch.tensor(float(rows)), "lm_loss": out.loss.detach() * rows,
                   "tokens": (targets != -100).sum().float()}  # scored tokens: padding excluded
        if out.aux_loss is not None:
            metrics["aux_loss"] = out.aux_loss.detach() * rows
        return StepOutput(loss=loss, metrics=metrics)

    def evaluate(self, model: nn.Module, outputs_path: Path | None = None,
                 report_dir: Path | None = None) -> dict[str, float]:
        """Validation loss (nats per token), perplexity and bits per byte over the val split."""
        from smoltrain.runtime.distributed import all_reduce_sum

        if not self.cfg.data_paths:
            return {}
        windows = self._windows("val")
        total = torch.zeros(2, dtype=torch.float64)  # summed token loss, tokens
        limit = self.cfg.eval_max_examples
        for i, batch in enumerate(windows.iter_eval(self.local_batch_size)):  # this rank's slice of each chunk
            if limit is not None and i * self.cfg.global_batch_size >= limit:
                break
            ids, targets = batch["input_ids"].to(self.device), batch["targets"].to(self.device)
            out = model(ids, targets=targets)
            tokens = (targets != -100).sum().item()
            ce = out.loss if out.aux_loss is None else out.loss - out.aux_loss  # the MoE router loss is no LM loss
            total += torch.tensor([ce.item() * tokens, tokens], dtype=torch.float64)
        loss_sum, tokens = all_reduce_sum(total.to(self.device)).tolist()
        if not tokens:
            return {}
        loss = loss_sum / tokens
        bytes_per_token = self.metadata["splits"]["val"]["bytes_per_token"]  # type: ignore[index]
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "bits_per_byte": loss / math.log(2) / bytes_per_token, "tokens": tokens}

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().reduce_metrics(sums)
        out["tokens_per_step"] = sums.get("tokens", 0.0)  # scored tokens (no padding) in the global batch
        out.pop("tokens", None)
        return out

    def describe(self, model: nn.Module) -> dict[str, Any]:
        facts = super().describe(model)
        vocab = f"{self.arch.vocab_size}" + (" (assumed: the dataset is not built yet)" if self.vocab_assumed else "")
        facts.update(vocab_size=vocab, seq_len=self.arch.seq_len,
                     rows="packed windows" if self.arch.packing else "one padded document per row")
        return facts
