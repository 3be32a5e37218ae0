"""The tiny decoder LM family (``arch=lm``) on tokenized text and chat data.

Glue only: the model is ``models/lm.py``, the token shards and training rows ``data/text.py``, the chat rows
``data/chat.py``. The
vocabulary size comes from the dataset's ``metadata.json`` (as TRM's shapes come from ``dataset.json``);
``arch.seq_len`` is the training context and ``arch.packing`` picks the rows: packed windows (default) or
MiniMind's one padded document per row. ``stage`` picks what is learnt from what: ``pretrain`` (text datasets),
``sft`` and ``distill`` (SFT chat datasets: one conversation per row, loss on the assistant tokens) and ``dpo``
(preference pairs); ``families/lm_stages.py`` holds the DPO and distillation steps. A step's loss is the
micro-batch's mean token loss weighted by its share of the global batch's rows, so the sum over micro-batches
and ranks is the global mean when every row has the same number of scored tokens (packed); with padding it is
the mean over micro-batches of their token means, as MiniMind's gradient accumulation computes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError
from torch import nn

from smoltrain.config import STAGES, ArchConfig, TrainConfig
from smoltrain.data.chat import PreferenceRows, SFTRows, read_chat_metadata
from smoltrain.data.text import FORMAT as TEXT_FORMAT
from smoltrain.data.text import (
    DocumentRows,
    TokenWindows,
    check_dataset_tokenizer,
    dataset_tokenizer_dir,
    read_metadata,
)
from smoltrain.errors import ConfigError, DataError
from smoltrain.families.base import (
    INITIAL_WEIGHTS,
    Batch,
    Family,
    OptimizerSpec,
    StepOutput,
    TrainStream,
    build_weight_optimizers,
    eval_subset,
)
from smoltrain.families.lm_stages import DPO_METRICS, distill_step, dpo_eval_sums, dpo_step
from smoltrain.fileio import read_json
from smoltrain.models.lm import LMConfig, LMForCausalLM, RopeScaling
from smoltrain.models.lora import apply_lora
from smoltrain.optim import AdamATan2, build_adamw

DATA_KEYS = ("seq_len", "packing", "document_bos")  # arch keys that describe the training rows, not the network


class LMArchConfig(ArchConfig):
    """``arch=lm``: every key of ``models.lm.LMConfig`` (HF ``Qwen3Config`` names, MiniMind-3 defaults), with
    ``vocab_size`` left to the dataset, plus the training rows' ``seq_len`` and ``packing``, which do not shape
    the network. :meth:`to_model_config` makes the network's config."""

    name: Literal["lm"] = "lm"
    hidden_size: int = Field(768, ge=1)
    num_hidden_layers: int = Field(8, ge=1)
    num_attention_heads: int = Field(8, ge=1)
    num_key_value_heads: int = Field(4, ge=1)
    head_dim: int | None = Field(None, ge=1, description="None: hidden_size // num_attention_heads")
    intermediate_size: int | None = Field(None, ge=1,
                                          description="None: MiniMind-3's rule, ceil(hidden * pi / 64) * 64")
    max_position_embeddings: int = Field(32768, ge=1)
    rope_theta: float = Field(1e6, gt=0)
    rms_norm_eps: float = Field(1e-6, gt=0)
    qk_norm: bool = Field(True, description="Qwen3 / MiniMind-3; False = Llama / MiniMind-2")
    tie_word_embeddings: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    hidden_act: Literal["silu"] = "silu"

    # Mixture of experts (replaces every layer's MLP when use_moe). Each expert has intermediate_size.
    use_moe: bool = False
    num_experts: int = Field(4, ge=1)
    num_experts_per_tok: int = Field(1, ge=1)
    n_shared_experts: int = Field(0, ge=0, description="experts applied to every token (MiniMind-2 uses 1)")
    aux_loss_alpha: float = Field(5e-4, ge=0, description="MiniMind-3's router_aux_loss_coef; MiniMind-2 used 0.01")
    norm_topk_prob: bool = Field(True, description="renormalise the top-k router probabilities to sum to 1")

    # Positional encoding and attention options (issue 17); see models.lm.LMConfig and RopeScaling.
    rope_scaling: RopeScaling | None = Field(None, description="HF's rope_scaling: {rope_type: linear|dynamic|yarn, "
                                                               "factor: F, ...}; None: RoPE as trained")
    xpos: bool = Field(False, description="XPos: RoPE with a per-dimension decay of q.k with distance")
    xpos_scale_base: float = Field(512.0, gt=0, description="XPos's B: pair i decays as zeta_i^(distance / B)")
    sliding_window: int | None = Field(None, ge=1, description="attend to the newest N tokens only; None: all")
    attention: Literal["sdpa", "math"] = Field("sdpa", description="sdpa: torch's fused kernels (flash on GPU); "
                                                                   "math: softmax(QK^T / sqrt(d) + mask) V spelled out")
    # Residual and normalisation options (issue 17); the formulas are in models/lm.py's LMDecoderLayer.
    deepnorm: bool = Field(False, description="DeepNet post-norm: norm(alpha * x + f(x)), alpha = (2N)^(1/4), "
                                              "init of v/o/MLP scaled by (8N)^(-1/4)")
    layer_scale_init: float | None = Field(None, gt=0, description="LayerScale: per-channel learnt scale of each "
                                                                   "branch, starting at this value (null: off)")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth at the last layer, linear in depth "
                                                               "from 0 at the first")
    parallel_residual: bool = Field(False, description="GPT-J: x + attn(norm(x)) + mlp(norm(x)), one norm")

    vocab_size: int | None = Field(None, ge=1, description="None: from the dataset's metadata.json")
    seq_len: int = Field(256, ge=1, description="training context (tokens per window)")
    packing: bool = Field(True, description="true: packed fixed-length windows; false: one document per row, "
                                            "padded (MiniMind's pretraining rows)")
    document_bos: bool = Field(False, description="packed windows with BOS before every document, as MiniMind's "
                                                  "rows begin (generation then starts prompts with BOS too)")

    @property
    def documents_start_with_bos(self) -> bool:
        """Whether the training rows began each document with BOS (MiniMind's padded rows, or packed windows with
        ``document_bos``): a prompt is then the start of a document and generation puts BOS before it."""
        return self.document_bos or not self.packing

    def to_model_config(self) -> LMConfig:
        """The network's config: every key but ``name`` and the data keys; ``vocab_size`` must be known."""
        if self.vocab_size is None:
            raise ConfigError("arch.vocab_size is unset: resolve the config against its text dataset, or set "
                              "arch.vocab_size=N")
        try:
            return LMConfig.model_validate(self.model_dump(exclude={"name", *DATA_KEYS}))
        except ValidationError as err:
            raise ConfigError(f"arch: {err.errors()[0]['msg']}") from None


def build_lm_optimizer(model: nn.Module, name: str, lr: float, betas: tuple[float, float],
                       weight_decay: float) -> torch.optim.Optimizer:
    """One AdamW (fused where it can be) or AdamATan2 over all trainable parameters (one group, as MiniMind); what
    the throughput bench times. Training builds its optimizers with ``build_weight_optimizers``."""
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    if name == "adamw":
        return build_adamw(params, lr, betas, weight_decay)
    return AdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)


# Parameters that optimizer=muon leaves to AdamW besides the non-2-D ones: the token embedding and the (tied) head.
MUON_OUTSIDE = ("embed_tokens", "lm_head")


DEFAULT_VOCAB_SIZE = 6400  # MiniMind's tokenizer; only to describe a model whose dataset is not built yet


# The kind of dataset each stage trains on: a text dataset (`smoltrain data text`) or a chat one (`data sft|dpo`).
STAGE_DATA = {"pretrain": "text", "sft": "sft", "distill": "sft", "dpo": "dpo"}
DATA_VERB = {"text": "smoltrain data text", "sft": "smoltrain data sft", "dpo": "smoltrain data dpo"}
STAGES_OF = {"text": "stage=pretrain (recipe lm-pretrain-cpu)", "sft": "stage=sft (recipe lm-sft-cpu)",
             "dpo": "stage=dpo (recipe lm-dpo-cpu)"}


def _dataset_kind(root: Path) -> str | None:
    """``text``, ``sft`` or ``dpo`` from a dataset's metadata.json; None for a format this family does not read."""
    meta = read_json(root / "metadata.json", dict, "rebuild the dataset")
    if meta.get("format") == TEXT_FORMAT:
        return "text"
    kind = meta.get("kind")
    return kind if kind in ("sft", "dpo") else None


def _read_dataset_metadata(cfg: TrainConfig) -> dict[str, Any] | None:
    """The metadata of the stage's dataset (the first data path); None without data paths or when the dataset is
    not built yet (training then stops at the data with the dataset's own error). A dataset that is there but
    broken, or of another kind than the stage trains on, is an error."""
    if not cfg.data_paths:
        return None
    root = Path(cfg.data_paths[0])
    want = STAGE_DATA[cfg.stage]
    if (root / "metadata.json").is_file():
        found = _dataset_kind(root)
        if found is not None and found != want:
            what = "a text dataset" if found == "text" else f"an {found} chat dataset"
            raise DataError(f"{root} is {what}, but stage={cfg.stage} trains on {want} data: build that with "
                            f"`{DATA_VERB[want]}`, or train this dataset with {STAGES_OF[found]}")
    try:
        return read_metadata(root)[1] if want == "text" else read_chat_metadata(root, want)[1]
    except DataError:
        if root.exists():
            raise
        return None


class LMFamily(Family):
    config_class = LMArchConfig
    data_shape_keys = ("vocab_size",)
    stages = STAGES
    # Fine-tuning may train on other rows (seq_len, packing) and with another dropout than pretraining did.
    arch_keys_free_on_init = (*DATA_KEYS, "dropout", "drop_path_rate")
    supports_lora = True
    supports_activation_checkpointing = True

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> TrainConfig:
        """``vocab_size`` from the dataset's metadata.json unless declared; a declared one must agree with it."""
        metadata = _read_dataset_metadata(cfg)
        vocab = metadata["vocab_size"] if metadata else None
        declared = cfg.arch.vocab_size  # type: ignore[attr-defined]
        if declared is None:
            return cfg if vocab is None else cfg.model_copy(
                update={"arch": cfg.arch.model_copy(update={"vocab_size": vocab})})
        if vocab is not None and vocab != declared:
            raise ConfigError(f"arch.vocab_size={declared} but the dataset {cfg.data_paths[0]} was "
                              f"tokenized with {vocab} tokens: use the tokenizer the run was trained with")
        return cfg

    def __init__(self, cfg, dist, device) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg, dist, device)
        self.metadata = _read_dataset_metadata(cfg)
        if self.metadata is not None and self.arch.vocab_size is None:
            raise ValueError("LMFamily needs a resolved config: LMFamily.resolve(cfg), or families.build_family")
        # No dataset (yet): describe the model at MiniMind's vocabulary (`smoltrain info`).
        self.vocab_assumed = self.arch.vocab_size is None
        if cfg.stage == "dpo" and cfg.label_smoothing:  # its loss reads sequence log-probabilities, not a CE
            raise ConfigError(f"label_smoothing={cfg.label_smoothing} smooths a cross-entropy, and stage=dpo trains "
                              "on sequence log-probabilities (smoothing them would change what DPO compares): "
                              "drop label_smoothing")

    def tokenizer_dir(self) -> Path | None:
        """The dataset's own tokenizer copy: the run keeps a copy of it, so generation and export need no dataset."""
        if self.metadata is None:
            return None
        source = dataset_tokenizer_dir(self.cfg.data_paths[0])  # text and chat datasets hold their tokenizer
        return source if source.is_dir() else None

    @property
    def arch(self) -> LMArchConfig:
        return self.cfg.arch  # type: ignore[return-value]

    def build_model(self) -> nn.Module:
        arch = self.arch.model_copy(update={"vocab_size": DEFAULT_VOCAB_SIZE}) if self.vocab_assumed else self.arch
        model = LMForCausalLM(arch.to_model_config())
        model.set_activation_checkpointing(self.cfg.activation_checkpointing)
        lora = self.cfg.lora
        if lora.enabled:  # adapters on the frozen model; its weights come from init_from (the trainer, the loader)
            apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
        return model

    def build_optimizers(self, model: nn.Module) -> list[OptimizerSpec]:
        return build_weight_optimizers(model, self.cfg, outside=MUON_OUTSIDE)

    def fsdp_units(self, model: nn.Module) -> list[nn.Module] | None:
        return list(model.model.layers)  # type: ignore[union-attr]  # the decoder layers; the root keeps the rest

    @property
    def data_kind(self) -> str:
        """``text``, ``sft`` or ``dpo``: the kind of dataset the run's stage trains on."""
        return STAGE_DATA[self.cfg.stage]

    def _windows(self, split: str) -> TokenWindows | SFTRows:
        if not self.cfg.data_paths:
            raise ConfigError(f"this needs the run's {self.data_kind} dataset, and data_paths is empty: add "
                              "data_paths=[DIR]")
        if self.metadata is None:
            raise self._not_built()
        # A dataset whose tokenizer copy changed since it was tokenized would train on garbage ids: refuse it.
        check_dataset_tokenizer(self.cfg.data_paths[0])
        if self.data_kind == "text":
            rows: type[TokenWindows] | type[SFTRows] = TokenWindows if self.arch.packing else DocumentRows
        else:  # one conversation (or preference pair) per row, whatever arch.packing says
            rows = SFTRows if self.data_kind == "sft" else PreferenceRows
        extra = {"document_bos": True} if rows is TokenWindows and self.arch.document_bos else {}
        return rows(self.cfg.data_paths[0], split, self.arch.seq_len, self.cfg.global_batch_size,
                    rank=self.dist.rank, world_size=self.dist.world_size, seed=self.cfg.seed, **extra)

    def train_stream(self) -> TrainStream:
        return self._windows("train")  # type: ignore[return-value]

    def _not_built(self) -> DataError:
        where = self.cfg.data_paths[0] if self.cfg.data_paths else None
        return DataError(f"the {self.data_kind} dataset {where} is not built yet: `{DATA_VERB[self.data_kind]} ... "
                         f"--output-dir {where}`" if where else "data_paths is empty: add data_paths=[DIR]")

    def steps_per_epoch(self) -> float:
        if self.metadata is None:
            raise self._not_built()
        train = self.metadata["splits"]["train"]
        if self.data_kind != "text" or not self.arch.packing:
            return train["documents"] / self.cfg.global_batch_size
        tokens = train["tokens"] + (train["documents"] if self.arch.document_bos else 0)
        return tokens / (self.arch.seq_len * self.cfg.global_batch_size)

    def frozen_models(self) -> dict[str, str]:
        """DPO's reference (the weights the run starts from) or the distillation teacher."""
        if self.cfg.stage == "dpo":
            if not self.cfg.setting("init_from"):
                raise ConfigError("stage=dpo improves a trained model against a frozen copy of it: add "
                                  "init_from=RUN_DIR (the SFT run to start from)")
            return {"reference": INITIAL_WEIGHTS}
        if self.cfg.stage == "distill":
            if not self.cfg.distill.teacher:
                raise ConfigError("stage=distill learns from a teacher: add distill.teacher=RUN_DIR (a trained LM "
                                  "run with the student's tokenizer)")
            return {"teacher": self.cfg.distill.teacher}
        return {}

    def attach_frozen(self, models: dict[str, nn.Module]) -> None:
        teacher = models.get("teacher")
        if teacher is not None:
            vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
            if not isinstance(teacher, LMForCausalLM) or vocab is None:
                raise ConfigError(f"distill.teacher={self.cfg.distill.teacher} is not an LM run (arch=lm)")
            if vocab < self.arch.vocab_size:  # type: ignore[operator]
                raise ConfigError(f"distill.teacher={self.cfg.distill.teacher} has a vocabulary of {vocab}, smaller "
                                  f"than the student's {self.arch.vocab_size}: distil from a teacher trained with "
                                  "the student's tokenizer (or one that extends it)")
        super().attach_frozen(models)

    def _frozen(self, name: str) -> nn.Module:
        if name not in self.frozen:
            raise ConfigError(f"stage={self.cfg.stage} needs its {name} model, which was not built: train through "
                              "smoltrain train (the trainer builds it)")
        return self.frozen[name]

    def train_step(self, model: nn.Module, batch: Batch, carry: Any) -> StepOutput:
        cfg = self.cfg
        if cfg.stage == "dpo":
            return dpo_step(model, self._frozen("reference"), batch, cfg.dpo.beta, cfg.global_batch_size)
        if cfg.stage == "distill":
            return distill_step(model, self._frozen("teacher"), batch, cfg.distill.alpha, cfg.distill.temperature,
                                cfg.global_batch_size, cfg.label_smoothing)
        # pretrain and sft: the targets are -100 wherever a token is not learnt (padding; prompts in SFT)
        targets = batch["targets"]
        out = model(batch["input_ids"], targets=targets, label_smoothing=cfg.label_smoothing)
        rows = batch["input_ids"].shape[0]
        share = rows / self.cfg.global_batch_size
        loss = out.loss * share
        metrics = {"count": torch.tensor(float(rows)), "lm_loss": out.loss.detach() * rows,
                   "tokens": (targets != -100).sum().float()}  # scored tokens: padding excluded
        if out.aux_loss is not None:
            metrics["aux_loss"] = out.aux_loss.detach() * rows
        return StepOutput(loss=loss, metrics=metrics)

    def _eval_batches(self, whole: bool = False) -> Iterator[Batch]:
        """This rank's slice of the val split's batches: its ``eval_max_examples`` rows drawn at random (seeded by
        ``seed``, the same rows at every evaluation), or every row when ``whole``."""
        windows = self._windows("val")
        rows = None if whole else eval_subset(windows.num_windows, self.cfg.eval_max_examples, self.cfg.seed)
        for batch in windows.iter_eval(self.local_batch_size, rows):
            yield {k: v.to(self.device) for k, v in batch.items()}

    def evaluate(self, model: nn.Module, outputs_path: Path | None = None,
                 report_dir: Path | None = None, whole: bool = False) -> dict[str, float]:
        """Over the val split: the loss over the scored tokens (nats per token: every next token of text, the
        assistant tokens of chat), perplexity, bits per byte (text); DPO's loss and reward accuracy and margins;
        ``answer_exact`` on chat data when ``eval_answer_examples`` asks for it."""
        if not self.cfg.data_paths:
            return {}
        if self.cfg.stage == "dpo":
            return self._evaluate_dpo(model, whole)
        from smoltrain.runtime.distributed import all_reduce_sum

        total = torch.zeros(2, dtype=torch.float64)  # summed token loss, tokens
        for batch in self._eval_batches(whole):
            ids, targets = batch["input_ids"], batch["targets"]
            out = model(ids, targets=targets)
            tokens = (targets != -100).sum().item()
            ce = out.loss if out.aux_loss is None else out.loss - out.aux_loss  # the MoE router loss is no LM loss
            total += torch.tensor([ce.item() * tokens, tokens], dtype=torch.float64)
        loss_sum, tokens = all_reduce_sum(total.to(self.device)).tolist()
        if not tokens:
            return {}
        loss = loss_sum / tokens
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
        bytes_per_token = self.metadata["splits"]["val"].get("bytes_per_token")  # type: ignore[index]
        if bytes_per_token:
            metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
        if self.data_kind == "sft" and self.cfg.eval_answer_examples:
            metrics.update(self._answer_exact(model))
        return metrics

    def _answer_exact(self, model: nn.Module) -> dict[str, float]:
        """The share of the first ``eval_answer_examples`` val conversations whose last answer greedy decoding
        reproduces exactly (``eval.answers``), with how many were checked."""
        from smoltrain.eval.answers import exact_answers
        from smoltrain.runtime.distributed import all_reduce_sum

        per_rank = -(-self.cfg.eval_answer_examples // self.dist.world_size)
        batches = (b for b in self._windows("val").iter_eval(self.local_batch_size))
        checks = exact_answers(model, batches, int(self.metadata["eos_id"]), limit=per_rank)  # type: ignore[index]
        right, count = all_reduce_sum(torch.tensor([float(sum(c.exact for c in checks)), float(len(checks))],
                                                   device=self.device)).tolist()
        return {"answer_exact": right / count, "answers_checked": count} if count else {}

    def _evaluate_dpo(self, model: nn.Module, whole: bool = False) -> dict[str, float]:
        from smoltrain.runtime.distributed import all_reduce_sum

        reference = self._frozen("reference")
        names = ("count", *DPO_METRICS)
        total = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        for batch in self._eval_batches(whole):
            sums = dpo_eval_sums(model, reference, batch, self.cfg.dpo.beta)
            total += torch.stack([sums[k].double() for k in names])
        count, *values = all_reduce_sum(total).tolist()
        if not count:
            return {}
        out = {k: v / count for k, v in zip(DPO_METRICS, values, strict=True)}
        return {"loss": out.pop("dpo_loss"), **out, "count": count}

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().reduce_metrics(sums)
        out["tokens_per_step"] = sums.get("tokens", 0.0)  # scored tokens (no padding) in the global batch
        out.pop("tokens", None)
        return out

    def describe(self, model: nn.Module) -> dict[str, Any]:
        facts = super().describe(model)
        if self.arch.use_moe and isinstance(model, LMForCausalLM):
            # Per token: attention, router, shared experts and the num_experts_per_tok routed experts it goes to.
            facts["active_parameters"] = model.num_parameters(active=True)
        vocab = f"{DEFAULT_VOCAB_SIZE} (assumed: the dataset is not built yet)" if self.vocab_assumed else \
            f"{self.arch.vocab_size}"
        rows = ("packed windows" if self.arch.packing else "one padded document per row") \
            if self.data_kind == "text" else "one conversation per row" if self.data_kind == "sft" else \
            "one preference pair per row"
        facts.update(vocab_size=vocab, seq_len=self.arch.seq_len, stage=self.cfg.stage, rows=rows)
        return facts
