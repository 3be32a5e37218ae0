"""The TRM family (``arch=trm``, ``arch=hrm``, ``arch=trm_singlez``) on puzzle datasets.

Glue only: the model is in ``models/trm.py`` / ``models/hrm.py``, the loss head in ``models/trm_loss.py``, the
sampler in ``data/puzzles.py``, the optimizers in ``optim.py``. This file says how they meet the trainer:

* the arch keys are :class:`TRMArchConfig` (and its HRM and single-z variants), the network's config
  their :meth:`~TRMArchConfig.to_model_config`;
* the dataset's ``dataset.json`` supplies ``seq_len``, ``vocab_size`` and ``num_puzzle_identifiers``
  (:meth:`TRMFamily.resolve` writes them into the run's config), and ``batch_size`` is this rank's
  micro-batch, as the reference injects them into the arch config;
* ``forward_dtype`` follows the run's precision unless set (fp32 on CPU, bf16 on CUDA);
* one training step is one ACT step on the carried slots (the carry lives in the trainer);
* the loss is divided by the global batch size, so gradients summed across ranks are the reference's;
* evaluation runs every test batch for ``halt_max_steps`` ACT steps and reports the reference metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError
from torch import nn

from smoltrain.config import ArchConfig, StrictModel, TrainConfig
from smoltrain.data.puzzles import PuzzleDataset, detect_kind, has_test_solutions, load_combined_metadata
from smoltrain.errors import ConfigError
from smoltrain.eval import Evaluator, ViewVoting, evaluators_for, voting_scores
from smoltrain.eval.arc import arc_evaluator_options, votable
from smoltrain.eval.base import EvalRows, SavedOutputs
from smoltrain.eval.voting import ViewTrace
from smoltrain.families.base import (
    Batch,
    Family,
    OptimizerSpec,
    StepOutput,
    TrainStream,
    build_weight_optimizers,
    eval_subset,
)
from smoltrain.models.hrm import HRM, HRMConfig, TRMSingleZ, TRMSingleZConfig
from smoltrain.models.trm import TRM, TRMCarry, TRMConfig, carry_from_state, carry_to_state
from smoltrain.models.trm_loss import ACTLossHead
from smoltrain.optim import SparseSignSGD
from smoltrain.runtime.device import resolve_precision

# A run may declare the data shape in its arch config, so its model builds without the dataset (loading,
# `smoltrain solve`); `TRMFamily.resolve` fills it from the dataset, and the two must agree.
DATA_SHAPE = ("seq_len", "vocab_size", "num_puzzle_identifiers")
# What `eval_save_outputs` may name: batch fields, then model outputs.
SAVABLE_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "logits", "preds", "q_halt_logits", "q_continue_logits")
VIEWS_STREAM = 0x7E57  # seeds the test-time views apart from every other random stream of a run
PRECISION_TO_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# `arch.loss.name` -> the loss head: the reference's "<module>@<Class>" is read by its class part.
LOSS_HEADS: dict[str, type[ACTLossHead]] = {"ACTLossHead": ACTLossHead}
NEEDS_DATA = ("arch={name} needs data: set data_paths=[DIR] (build one with `smoltrain data sudoku`), or declare "
              "arch.seq_len, arch.vocab_size and arch.num_puzzle_identifiers to build the model without it")

# Parameters that optimizer=muon leaves to AdamW besides the non-2-D ones: the token embedding and the two heads.
MUON_OUTSIDE = ("embed_tokens", "lm_head", "q_head")


class LossConfig(StrictModel):
    name: str = Field("losses@ACTLossHead", description="the loss head, as the reference's class path "
                      "(`losses@ACTLossHead`); its class part picks one of LOSS_HEADS")
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"] = "stablemax_cross_entropy"

    def head(self) -> type[ACTLossHead]:
        head = LOSS_HEADS.get(self.name.rpartition("@")[2])
        if head is None:
            raise ConfigError(f"arch.loss.name={self.name!r} names no loss head; choose one of "
                              + ", ".join(f"losses@{name}" for name in LOSS_HEADS))
        return head


class TRMArchConfig(ArchConfig):
    """``arch=trm``: every key of ``models.trm.TRMConfig`` (same names and defaults, the reference's) except
    ``batch_size``, which is this rank's micro-batch; plus ``name``, ``loss``, and the data shape, which
    :meth:`TRMFamily.resolve` fills from the dataset. :meth:`to_model_config` makes the network's config."""

    model_config_class: ClassVar[type[TRMConfig]] = TRMConfig

    name: Literal["trm"] = "trm"
    loss: LossConfig = Field(default_factory=LossConfig)
    puzzle_emb_ndim: int = Field(0, ge=0, description="0 disables the puzzle embedding (and the prefix)")

    H_cycles: int = Field(ge=1, description="paper's T: outer recursions, the first T-1 without gradient")
    L_cycles: int = Field(ge=1, description="paper's n: z_L updates per recursion")
    H_layers: int = Field(0, ge=0, description="unused by TRM, which has one network of L_layers blocks; accepted "
                          "because the reference's arch/trm.yaml and every TRM all_config.yaml carry it (0), so "
                          "they validate unchanged. HRM builds its H network from it")
    L_layers: int = Field(ge=1, description="blocks in the shared network")

    hidden_size: int = Field(ge=1)
    expansion: float = Field(gt=0, description="SwiGLU inner width / hidden_size (rounded to swiglu_multiple)")
    num_heads: int = Field(ge=1)
    pos_encodings: str = Field(description='"rope" | "learned" | anything else = none')

    rms_norm_eps: float = Field(1e-5, gt=0)
    rope_theta: float = Field(10000.0, gt=0)

    halt_max_steps: int = Field(ge=1, description="N_sup: maximum ACT (deep-supervision) steps")
    halt_exploration_prob: float = Field(ge=0, le=1)

    forward_dtype: str | None = Field(None, description="None: follow `precision`")

    mlp_t: bool = Field(False, description="token-mixing SwiGLU (MLP-Mixer style) instead of attention")
    puzzle_emb_len: int = Field(16, ge=0, description="prefix positions; 0 => ceil(puzzle_emb_ndim / hidden_size)")
    no_ACT_continue: bool = Field(True, description="halt on sigmoid(q_halt) > 0.5 only; no Q-learning "
                                  "continue target")
    swiglu_multiple: int = Field(256, ge=1, description="rounding of SwiGLU widths: 256 is the reference's")

    seq_len: int | None = Field(None, ge=1, description="None: from the dataset's dataset.json")
    vocab_size: int | None = Field(None, ge=1, description="None: from the dataset's dataset.json")
    num_puzzle_identifiers: int | None = Field(None, ge=1, description="None: from the dataset's dataset.json")

    def to_model_config(self, batch_size: int, forward_dtype: str) -> TRMConfig:
        """The network's config: these keys with the (resolved) data shape, the rows of the sparse puzzle
        embedding's batch buffer, and ``forward_dtype`` where the arch leaves it to the run's precision."""
        fields = self.model_dump(exclude={"name", "loss"})
        if any(fields[key] is None for key in DATA_SHAPE):
            raise ConfigError(NEEDS_DATA.format(name=self.name))
        fields.update(batch_size=batch_size, forward_dtype=self.forward_dtype or forward_dtype)
        try:
            return self.model_config_class.model_validate(fields)
        except ValidationError as err:
            raise ConfigError(f"arch: {err.errors()[0]['msg']}") from None


class HRMArchConfig(TRMArchConfig):
    """``arch=hrm``: the TRM keys with ``models.hrm.HRMConfig``'s defaults (``H_layers`` required, a puzzle
    prefix of ``ceil(puzzle_emb_ndim / hidden_size)`` positions, the Q-learning continue target)."""

    model_config_class: ClassVar[type[TRMConfig]] = HRMConfig

    name: Literal["hrm"] = "hrm"  # type: ignore[assignment]
    H_layers: int = Field(ge=1, description="blocks in the H (slow) network")  # type: ignore[assignment]
    puzzle_emb_len: int = Field(0, ge=0, description="prefix positions; 0 => ceil(puzzle_emb_ndim / hidden_size)")
    no_ACT_continue: bool = Field(False, description="halt on sigmoid(q_halt) > 0.5 only; no Q-learning "
                                  "continue target")


class TRMSingleZArchConfig(TRMArchConfig):
    """``arch=trm_singlez``: the TRM keys and defaults (``models.hrm.TRMSingleZConfig``)."""

    model_config_class: ClassVar[type[TRMConfig]] = TRMSingleZConfig

    name: Literal["trm_singlez"] = "trm_singlez"  # type: ignore[assignment]


class PuzzleStream(TrainStream):
    """Endless train batches: one reference "pass" after another, resumable mid-pass."""

    def __init__(self, dataset: PuzzleDataset) -> None:
        self.dataset = dataset
        self._iterator: Any = None

    def __next__(self) -> Batch:
        while True:
            if self._iterator is None:
                self._iterator = self.dataset.iter_train()
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._iterator = None


class TRMFamily(Family):
    config_class = TRMArchConfig
    data_shape_keys = DATA_SHAPE
    arch_keys_free_on_init = DATA_SHAPE  # the puzzle-embedding table is refitted; other shapes are checked
    model_class: type[TRM] = TRM
    uses_autocast = False  # TRM keeps fp32 master weights and casts activations itself
    supports_activation_checkpointing = True

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> TrainConfig:
        """``seq_len``, ``vocab_size``, ``num_puzzle_identifiers`` from the dataset's dataset.json (as the reference
        injects them), else the arch's declared ones; declared ones must agree with the dataset's."""
        arch = cfg.arch
        declared = {key: getattr(arch, key) for key in DATA_SHAPE}
        if not cfg.data_paths:
            if None in declared.values():
                raise ConfigError(NEEDS_DATA.format(name=arch.name))
            return cfg
        # Every path, combined as the loader reads them: their puzzle identifiers add up.
        metadata = load_combined_metadata(cfg.data_paths, "train")
        shape = {key: getattr(metadata, key) for key in DATA_SHAPE}
        data = cfg.data_paths[0] if len(cfg.data_paths) == 1 else f"data_paths {cfg.data_paths}"
        for key, value in declared.items():
            if key == "num_puzzle_identifiers" and not arch.puzzle_emb_ndim:  # type: ignore[attr-defined]
                continue  # no embedding table, so the identifier count does not shape the model
            if value is not None and value != shape[key]:
                raise ConfigError(
                    f"this run's model has arch.{key}={value} but the dataset {data} has "
                    f"{key}={shape[key]}: use the dataset the run was trained on"
                )
        return cfg.model_copy(update={"arch": arch.model_copy(update=shape)})

    def __init__(self, cfg, dist, device) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg, dist, device)
        self.metadata = load_combined_metadata(cfg.data_paths, "train") if cfg.data_paths else None
        if self.metadata is not None and any(getattr(self.arch, key) is None for key in DATA_SHAPE):
            raise ValueError(f"{type(self).__name__} needs a resolved config: {type(self).__name__}.resolve(cfg), "
                             "or families.build_family")
        self.arc_options = arc_evaluator_options(cfg.evaluators, arc_data=self._test_data_is_arc())
        self.run_evaluators: list[Evaluator] | None = None  # chosen at the first evaluation (see _evaluators)
        self.test_views: list = []  # eval_augmentations: the kind's views (TokenView), drawn with the evaluators
        if self.arc_options is not None and (cfg.data_paths_test or cfg.data_paths):
            self._check_arc_data()
        test_paths = cfg.data_paths_test or cfg.data_paths
        if cfg.eval_augmentations > 1 and test_paths:  # a kind without views says so before training, not after
            meta = load_combined_metadata(test_paths, "test")
            detect_kind(test_paths[0]).test_views(meta.seq_len, meta.vocab_size, cfg.eval_augmentations,
                                                  np.random.default_rng(0))
        unknown = sorted(set(cfg.eval_save_outputs) - set(SAVABLE_OUTPUTS))
        if unknown:
            raise ConfigError(f"eval_save_outputs: unknown {unknown}; choose from {', '.join(SAVABLE_OUTPUTS)}")
        if cfg.grad_accum_steps > 1 and self.arch.puzzle_emb_ndim > 0:
            raise ConfigError("grad_accum_steps > 1 is not supported with puzzle embeddings (arch.puzzle_emb_ndim "
                              "> 0): the sparse embedding holds one micro-batch; use grad_accum_steps=1")

    @property
    def arch(self) -> TRMArchConfig:
        return self.cfg.arch  # type: ignore[return-value]

    def _require_data(self, paths: list[str]) -> None:
        if not paths:
            raise ConfigError("this needs the run's dataset, and data_paths is empty: add data_paths=[DIR]")

    def model_config(self) -> TRMConfig:
        dtype = PRECISION_TO_DTYPE[resolve_precision(self.cfg.precision, self.device)]
        return self.arch.to_model_config(batch_size=self.micro_batch_size, forward_dtype=dtype)

    def build_model(self) -> nn.Module:
        model = self.model_class(self.model_config())
        model.set_activation_checkpointing(self.cfg.activation_checkpointing)
        return self.arch.loss.head()(model, loss_type=self.arch.loss.loss_type)

    def build_optimizers(self, model: nn.Module) -> list[OptimizerSpec]:
        cfg = self.cfg
        specs = []
        if not cfg.freeze_weights:
            specs += build_weight_optimizers(model, cfg, outside=MUON_OUTSIDE)
        puzzle_emb = model.model.puzzle_emb  # type: ignore[union-attr]
        if puzzle_emb is not None:
            specs.append(OptimizerSpec(
                SparseSignSGD(list(puzzle_emb.buffers()), lr=0.0, weight_decay=cfg.puzzle_emb_weight_decay),
                cfg.puzzle_emb_lr,
            ))
        if not specs:
            raise ConfigError("freeze_weights=True trains only the puzzle embeddings, but arch.puzzle_emb_ndim=0")
        if cfg.freeze_weights:
            model.requires_grad_(False)
        return specs

    def _dataset(self, split: str, test_mode: bool) -> PuzzleDataset:
        paths = self.cfg.data_paths_test if (test_mode and self.cfg.data_paths_test) else self.cfg.data_paths
        self._require_data(paths)  # a run may build without data, not train
        return PuzzleDataset(
            paths, split, self.cfg.global_batch_size, rank=self.dist.rank, world_size=self.dist.world_size,
            # One epoch per sampler pass: the reference concatenates `eval_interval` epochs' group orders
            # in memory, which for long runs (eval_interval=100000) does not fit; the order stays seeded.
            seed=self.cfg.seed, test_mode=test_mode, epochs_per_iter=1,
        )

    def train_stream(self) -> TrainStream:
        return PuzzleStream(self._dataset("train", test_mode=False))

    def steps_per_epoch(self) -> float:
        self._require_data(self.cfg.data_paths)
        assert self.metadata is not None
        return self.metadata.total_groups * self.metadata.mean_puzzle_examples / self.cfg.global_batch_size

    def train_step(self, model: nn.Module, batch: Batch, carry: Any) -> StepOutput:
        if carry is None:
            carry = model.initial_carry(batch)  # type: ignore[operator]
        step = model(carry, batch, label_smoothing=self.cfg.label_smoothing)
        return StepOutput(loss=step.loss / self.cfg.global_batch_size, metrics=step.metrics, carry=step.carry)

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        # As the reference: losses per sample of the global batch, the rest per halted sequence.
        count = sums.get("count", 0.0)
        out = {}
        for key, value in sums.items():
            if key == "count":
                continue
            if key.endswith("loss"):
                out[key] = value / self.cfg.global_batch_size
            else:
                out[key] = value / count if count else 0.0
        out["halted"] = count / self.cfg.global_batch_size
        return out

    def _test_roots(self) -> list[str]:
        """The datasets evaluations run on, all of them (as the loader concatenates them)."""
        paths = self.cfg.data_paths_test or self.cfg.data_paths
        self._require_data(paths)
        return list(paths)

    def _test_data_is_arc(self) -> bool:
        """Whether the data evaluations run on is ARC that the voting evaluator can read (what
        ``evaluators=auto`` asks); False without data. ARC-shaped data without the task list gets a warning."""
        paths = self.cfg.data_paths_test or self.cfg.data_paths
        if not paths or not all(detect_kind(path).name == "arc" for path in paths):
            return False
        missing = [str(path) for path in paths if not votable(path)]
        if missing:
            warnings.warn(f"evaluators=auto: {', '.join(missing)} holds ARC grids but no test_puzzles.json or "
                          "identifiers.json, so there is no ARC voting (pass@k); build it with `smoltrain data arc`",
                          stacklevel=2)
        return not missing

    def _check_arc_data(self) -> list[str]:
        roots = self._test_roots()
        for root in roots:
            kind = detect_kind(root)
            if kind.name != "arc":
                raise ConfigError(f"evaluators: the ARC evaluator needs an ARC dataset, and {root} is a {kind} "
                                  "dataset: set evaluators=[] or point data_paths at the output of "
                                  "`smoltrain data arc`")
        return roots

    def _evaluators(self) -> list[Evaluator]:
        """What evaluations score, chosen at the first one for the test datasets' kind; they live as long as
        the run (ARC votes pool over evaluations). Every test path is scored, as the loader reads them all."""
        if self.run_evaluators is None:
            roots = self._check_arc_data() if self.arc_options is not None else self._test_roots()
            kinds = {root: detect_kind(root) for root in roots}
            if len({kind.name for kind in kinds.values()}) > 1:
                found = ", ".join(f"{root} ({kind})" for root, kind in kinds.items())
                raise ConfigError(f"the test datasets are of different kinds ({found}): evaluate one kind at a time")
            solutions = all(has_test_solutions(root) for root in roots)  # else the labels are dummies
            self.run_evaluators = evaluators_for(kinds[roots[0]], roots, self.arc_options, solutions=solutions)
            self.test_views: list = []
            if self.cfg.eval_augmentations > 1:
                kind, meta = kinds[roots[0]], load_combined_metadata(roots, "test")
                # One seeded set of views per run (its own stream: the train sampler uses Philox(seed + pass)).
                rng = np.random.default_rng([self.cfg.seed, VIEWS_STREAM])
                self.test_views = kind.test_views(meta.seq_len, meta.vocab_size, self.cfg.eval_augmentations, rng)
                if len(self.test_views) < self.cfg.eval_augmentations:
                    raise ConfigError(f"eval_augmentations={self.cfg.eval_augmentations}: these {kind} puzzles have "
                                      f"only {len(self.test_views)} distinct views; lower eval_augmentations")
                self.run_evaluators.append(ViewVoting(voting_scores(kind), len(self.test_views)))
        return self.run_evaluators

    def evaluate(self, model: nn.Module, outputs_path: Path | None = None,
                 report_dir: Path | None = None, whole: bool = False) -> dict[str, float]:
        """Reference evaluation (on the ``eval_max_examples`` subset unless ``whole``): a fresh carry per test
        batch, ``halt_max_steps`` ACT steps, then the last step's rows go to the evaluators
        (`smoltrain.eval.evaluators_for`): the reference metrics summed over the test set (all ranks) and divided
        by the number of scored sequences; mazes add ``valid_optimal_path``; the ARC evaluator (``evaluators=auto``
        on ARC data, or ``[{name: arc}]``) adds ``ARC/pass@k`` and writes
        ``submission.json`` and ``arc_scores.json`` to ``report_dir`` when one is given.

        With ``outputs_path``, the ``eval_save_outputs`` keys (batch fields such as ``inputs``, ``labels``,
        ``puzzle_identifiers``, or model outputs such as ``logits``, ``preds``, ``q_halt_logits``) of
        this rank's real rows after the last ACT step are saved there with ``torch.save``, as the
        reference does.
        """
        dataset = self._dataset("test", test_mode=True)
        evaluators = list(self._evaluators())
        if outputs_path is not None and self.cfg.eval_save_outputs:
            evaluators.append(SavedOutputs(self.cfg.eval_save_outputs, outputs_path))
        return_keys = tuple(sorted({key for evaluator in evaluators for key in evaluator.output_keys}))
        for evaluator in evaluators:
            evaluator.begin()
        subset = None if whole else eval_subset(dataset.num_examples, self.cfg.eval_max_examples, self.cfg.seed)
        steps = model.model.config.halt_max_steps  # type: ignore[union-attr]
        for item in dataset.iter_test(subset):
            batch = {k: v.to(self.device) for k, v in item.batch.items()}
            carry = model.initial_carry(batch)  # type: ignore[operator]
            traces = [ViewTrace(view, self.cfg.eval_halt_threshold) for view in self.test_views]
            trace_keys = tuple(sorted({*return_keys, "preds", "q_halt_logits"})) if traces else return_keys
            for _ in range(steps):
                step = model(carry, batch, return_keys=trace_keys)
                carry = step.carry
                if traces:
                    traces[0].record(step.outputs["preds"], step.outputs["q_halt_logits"])
            first = step
            for trace in traces[1:]:  # the other views of the batch, each with a fresh carry; view 0 is `batch`
                view_batch = {**batch, "inputs": trace.view.apply(batch["inputs"]),
                              "labels": trace.view.apply(batch["labels"])}
                carry = model.initial_carry(view_batch)  # type: ignore[operator]
                for _ in range(steps):
                    step = model(carry, view_batch, return_keys=trace_keys)
                    carry = step.carry
                    trace.record(step.outputs["preds"], step.outputs["q_halt_logits"])
            rows = EvalRows(batch, first.outputs, first.metrics, item.num_real, views=traces)
            for evaluator in evaluators:
                evaluator.add(rows)
        metrics: dict[str, float] = {}
        for evaluator in evaluators:  # every rank calls each: the results are collective
            metrics.update(evaluator.result(report_dir) or {})
        return metrics

    def carry_state(self, carry: TRMCarry) -> dict[str, torch.Tensor]:
        return carry_to_state(carry)

    def load_carry(self, state: dict[str, torch.Tensor]) -> TRMCarry:
        return carry_from_state(state)

    def adapt_loaded_weights(self, model: nn.Module, state: dict[str, torch.Tensor],
                             source: Path) -> tuple[dict[str, torch.Tensor], str | None]:
        """A puzzle-embedding table with another number of rows (data with other puzzle ids) becomes its mean row
        repeated to this data's count, as the reference's ``load_checkpoint`` resets it."""
        table = model.model.puzzle_emb  # type: ignore[union-attr]
        if table is None:
            return state, None
        key = next(name for name, buffer in model.named_buffers() if buffer is table.weights)
        found, expected = state.get(key), table.weights.shape
        if found is None or found.shape == expected or found.dim() != 2 or found.shape[1] != expected[1]:
            return state, None  # absent, fitting, or of another width: nothing the reference would reset
        rows = torch.mean(found, dim=0, keepdim=True).expand(expected).contiguous()
        return {**state, key: rows}, (f"load_checkpoint={source}: its puzzle embedding has {found.shape[0]} rows, "
                                      f"this data {expected[0]} puzzle ids; every row set to their mean")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        config = model.model.config  # type: ignore[union-attr]
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "puzzle_embedding_rows": config.num_puzzle_identifiers if config.puzzle_emb_ndim else 0,
            "seq_len": config.seq_len,
            "vocab_size": config.vocab_size,
            "forward_dtype": config.forward_dtype,
        }


class HRMFamily(TRMFamily):
    config_class = HRMArchConfig
    model_class = HRM


class TRMSingleZFamily(TRMFamily):
    config_class = TRMSingleZArchConfig
    model_class = TRMSingleZ
