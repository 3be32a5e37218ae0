"""Typed configs, YAML recipes and Hydra-style command-line overrides.

A run is described by one :class:`TrainConfig`. It is assembled in three layers:

1. a recipe (``src/smoltrain/recipes/<name>.yaml`` or any YAML path) whose ``arch`` names an architecture
   preset, a group file ``recipes/arch/<preset>.yaml``: ``arch: lm-tiny-cpu`` takes the preset as it is,
   ``arch: {preset: lm-tiny-cpu, seq_len: 64}`` refines it, and ``arch: {name: trm, ...}`` refines the
   family's own preset (``arch/trm.yaml``);
2. group selections on the command line (``arch=trm``) replace the architecture with that group file;
3. the remaining ``key=value`` overrides, dotted for nesting (``arch.hidden_size=128``), with values
   parsed like YAML (``data_paths="[a,b]"``, ``lr=1e-4``, ``ema=True``). A leading ``+`` (``+run_name=x``)
   is accepted for compatibility with the reference command lines.

Keys the reference TRM trainer uses keep their names and meaning (trm.md §5.1); those that stand for a key of
ours are listed once, in :data:`REFERENCE_ALIASES`. Unknown keys and values of the wrong type stop with one
line naming the key and the closest valid keys.

This module knows no model family: :func:`validate` takes the family's arch class, and ``smoltrain.families``
(``load_config``, ``validate``) picks it by ``arch.name``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from smoltrain.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
GROUPS = ("arch",)  # config groups selectable with `group=name`


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ArchConfig(StrictModel):
    """Base of every model family's architecture config; ``name`` selects the family."""

    name: str


Stage = Literal["pretrain", "sft", "dpo", "distill"]
STAGES: tuple[str, ...] = ("pretrain", "sft", "dpo", "distill")


class DPOConfig(StrictModel):
    """``stage=dpo``: direct preference optimisation against a frozen reference, the weights the run starts from."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (MiniMind: 0.15)")


class DistillConfig(StrictModel):
    """``stage=distill``: ``alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`` over the supervised tokens."""

    teacher: str | None = Field(None, description="the teacher's run directory (its newest checkpoint)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the cross-entropy on the data's tokens")
    temperature: float = Field(1.0, gt=0, description="softens both distributions in the KL term")


class LoRAConfig(StrictModel):
    """Low-rank adapters (``smoltrain.models.lora``): with ``rank`` > 0 only the adapters train, on the frozen
    weights of ``init_from``, and checkpoints hold only the adapters. ``targets`` names linear layers by their last
    name (the LM's: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or is ``all-linear``."""

    rank: int = Field(0, ge=0)  # 0: no adapters (the whole model trains)
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / rank, as in PEFT
    dropout: float = Field(0.0, ge=0, lt=1)  # on the adapters' input only
    targets: list[str] | Literal["all-linear"] = Field(default_factory=lambda: ["q_proj", "v_proj"])

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class WandbConfig(StrictModel):
    mode: Literal["disabled", "online", "offline"] = "disabled"
    project: str | None = None
    entity: str | None = None


# Keys of the reference trainer that stand for a key of ours: reference key -> our key. Ours wins when both are
# set; the reference's is read only when ours is unset (`TrainConfig.setting`). The one pair whose units differ,
# `eval_interval` (epochs) for `eval_every` (optimizer steps), is converted by `TrainConfig.eval_every_steps`.
REFERENCE_ALIASES: dict[str, str] = {
    "checkpoint_path": "run_dir",
    "project_name": "wandb.project",
    "eval_interval": "eval_every",
    "load_checkpoint": "init_from",
}
CONVERTED_ALIASES = ("eval_interval",)  # not the same unit: `setting` does not substitute them


class TrainConfig(StrictModel):
    """Everything a training run needs. Field names follow the reference TRM trainer where it has one."""

    arch: SerializeAsAny[ArchConfig]

    # --- data (reference names) ---
    data_paths: list[str] = Field(default_factory=list)
    data_paths_test: list[str] = Field(default_factory=list)
    # "auto": the reference's default, the ARC voting evaluator with its defaults when the test data is ARC (and
    # nothing extra on other kinds); [] turns it off; [{name: arc, ...}] sets its options.
    evaluators: str | list[Any] = "auto"
    # Evaluate on N test examples drawn at random (seeded by `seed`: the same N at every evaluation of a run); the
    # final evaluation, when training ends, scores the whole test split. null: every evaluation scores all.
    eval_max_examples: int | None = Field(None, ge=1)
    # Test-time voting (TRM): K augmented views of each test puzzle, answers mapped back and voted; 1 = off.
    eval_augmentations: int = Field(1, ge=1)
    # Halt-first ensemble: answer at the first ACT step whose sigmoid(q_halt) passes this in some view.
    eval_halt_threshold: float = Field(0.5, gt=0, lt=1)

    # --- optimisation (reference names) ---
    global_batch_size: int = Field(32, gt=0)
    epochs: int = Field(1, gt=0)
    lr: float = Field(1e-4, ge=0)
    lr_min_ratio: float = Field(1.0, ge=0, le=1)
    lr_warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    puzzle_emb_lr: float = Field(1e-2, ge=0)
    puzzle_emb_weight_decay: float = Field(0.1, ge=0)
    # adam_atan2 (the reference's), adamw (torch's, fused where it can be), or muon: torch.optim.Muon on the hidden
    # 2-D weight matrices at `muon_lr` / `muon_weight_decay`, AdamW (at `lr`, `weight_decay`) on the rest:
    # embeddings, output heads, norms, biases. TRM's puzzle embedding keeps its sparse sign-SGD with any of them.
    optimizer: Literal["adam_atan2", "adamw", "muon"] = "adam_atan2"
    muon_lr: float = Field(0.02, ge=0)  # the sic recipe's
    muon_weight_decay: float = Field(0.005, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_minutes: float | None = Field(None, gt=0)  # stop (evaluate, checkpoint) after this much training
    ema: bool = False
    ema_rate: float = Field(0.999, ge=0, le=1)
    freeze_weights: bool = False
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    seed: int = Field(0, ge=0)

    # --- training stage (LM): what the loss is and which rows it reads ---
    stage: Stage = "pretrain"  # pretrain (text) | sft (chat) | dpo (preference pairs) | distill (chat + teacher)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    # --- Label smoothing and early stopping (issue 17) ---
    # The training loss aims at (1 - label_smoothing) on the label plus label_smoothing spread evenly over every
    # class: (1 - e) * CE + e * mean over classes of -log p (the LM's supervised tokens, with distillation's CE term;
    # TRM's token loss, stablemax or softmax). DPO has no cross-entropy and refuses it; evaluations score plain CE.
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Stop training when this many evaluations in a row did not improve keep_best's metric (which it needs) by more
    # than early_stop_min_delta over the best value so far; the stop evaluates and checkpoints as a normal end.
    early_stop_patience: int | None = Field(None, gt=0)
    early_stop_min_delta: float = Field(0.0, ge=0)

    # --- evaluation (reference names, plus a step-based interval) ---
    eval_interval: int | None = Field(None, gt=0)  # in epochs, as in the reference
    eval_every: int | None = Field(None, gt=0)  # in optimizer steps
    min_eval_interval: int = Field(0, ge=0)  # skip the first N evaluations
    eval_save_outputs: list[str] = Field(default_factory=list)
    # Chat stages: greedy-decode the last answer of the first N val conversations, report answer_exact (0: off).
    eval_answer_examples: int = Field(0, ge=0)

    # --- run directory, checkpoints, resume ---
    project_name: str | None = None
    run_name: str | None = None
    run_dir: str | None = None
    checkpoint_path: str | None = None  # reference name; used as run_dir when run_dir is unset
    # Start from another run's weights (its newest verified checkpoint; the EMA weights when it used EMA) with a
    # fresh optimizer, schedule and run directory; a run directory or one of its step directories.
    init_from: str | None = None
    load_checkpoint: str | None = None  # reference name; used as init_from when init_from is unset
    checkpoint_every: int | None = Field(None, gt=0)  # in optimizer steps
    checkpoint_every_eval: bool = False
    keep_checkpoints: int = Field(3, gt=0)
    # Also keep the checkpoint with the best value of this eval metric (recorded in RUN/best.json), whatever
    # keep_checkpoints prunes: METRIC is maximised, -METRIC minimised; names ending in loss, perplexity or
    # bits_per_byte are minimised when written bare too (keep_best=loss is keep_best=-loss), +METRIC forces max.
    keep_best: str | None = None
    resume: str = "auto"  # "auto" | "none" | path to a checkpoint directory

    # --- machine ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the training step: true, false, or auto (see train/compile.py: on for CUDA, and on CPU for
    # models of at least COMPILE_AUTO_MIN_PARAMETERS parameters, where it was measured to pay).
    compile: bool | Literal["auto"] = False
    # torch.compile's mode; reduce-overhead (CUDA graphs) is for CUDA: on a CPU it falls back to default, with a note.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    num_threads: int | None = Field(None, gt=0)
    # Activation checkpointing (issue 17): recompute each LM decoder layer (TRM: each recursion step's call of the
    # network) in backward instead of keeping its activations: less memory for one more forward of those parts.
    activation_checkpointing: bool = False
    dist_timeout_minutes: float = Field(5.0, gt=0)  # torchrun: a rank silent this long in a collective ends the job

    # --- data parallelism under torchrun (runtime/distributed.py, runtime/fsdp.py) ---
    # ddp: every rank holds the whole model and optimizer, gradients are all-reduced by hand. fsdp: FSDP2 shards
    # weights, gradients and optimizer state over the ranks (LM runs; for models that outgrow one device under ddp).
    # Checkpoints are the same either way; with one process fsdp trains as plain (nothing to shard).
    strategy: Literal["ddp", "fsdp"] = "ddp"

    # --- logging and safety ---
    log_every: int = Field(10, gt=0)
    max_nonfinite_steps: int = Field(5, gt=0)  # stop after this many non-finite steps in a row
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    tensorboard: bool = False

    @field_validator("evaluators")
    @classmethod
    def _auto_or_list(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str) and value != "auto":
            raise ValueError("write evaluators=auto, evaluators=[] or evaluators=[{name: arc}]")
        return value

    def _get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def setting(self, key: str) -> Any:
        """Our ``key`` (dotted, e.g. ``wandb.project``), or when it is unset the reference key standing for it."""
        value = self._get(key)
        if value in (None, ""):
            for reference, ours in REFERENCE_ALIASES.items():
                if ours == key and reference not in CONVERTED_ALIASES:
                    value = self._get(reference)
        return value

    def eval_every_steps(self, steps_per_epoch: float) -> int | None:
        """Optimizer steps between evaluations: ``eval_every``, else the reference's ``eval_interval`` epochs."""
        if self.eval_every:
            return self.eval_every
        if self.eval_interval:
            return max(1, int(self.eval_interval * steps_per_epoch))
        return None

    def resolved_run_dir(self) -> Path:
        """``run_dir`` (or the reference's ``checkpoint_path``), else ``runs/<run_name>``, else a name of the
        architecture and the dataset, ``runs/<arch.name>-<first data path's folder name>``: the same model
        trained on two datasets gets two run directories instead of one resuming the other's checkpoints."""
        run_dir = self.setting("run_dir")
        if run_dir:
            return Path(run_dir)
        if self.run_name:
            return Path("runs") / self.run_name
        # abspath, so `data_paths=[.]` or `[data/sudoku/]` still name their folder
        dataset = Path(os.path.abspath(self.data_paths[0])).name if self.data_paths else ""
        return Path("runs") / (f"{self.arch.name}-{dataset}" if dataset else self.arch.name)


# ----------------------------------------------------------------------------------------------
# Loading


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def available_groups(group: str) -> list[str]:
    return sorted(p.stem for p in (RECIPES_DIR / group).glob("*.yaml"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's report on one line: the problem and where it is (its own text spans lines, with a caret drawing)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); fix or restore the file") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def group_file(group: str, name: str) -> dict[str, Any]:
    """The raw mapping of a group file, e.g. ``group_file("arch", "trm")``."""
    path = RECIPES_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {group} '{name}'; choose one of: {', '.join(available_groups(group))}"
        )
    return _read_yaml(path)


def load_recipe(recipe: str | None) -> dict[str, Any]:
    """The raw mapping of a named recipe or a YAML path, with its architecture preset merged in."""
    if recipe is None:
        recipe = "default"
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(recipe, available_recipes(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown recipe '{recipe}'{hint} (recipes: {', '.join(available_recipes())}; "
                "or give a path to a .yaml file)"
            )
    elif not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    raw = _read_yaml(path)
    arch = raw.get("arch", {})
    if isinstance(arch, str):
        arch = {"preset": arch}
    if not isinstance(arch, dict):
        raise ConfigError(f"recipe {path}: arch must name a preset or hold arch keys, not {type(arch).__name__}")
    arch = dict(arch)
    preset = arch.pop("preset", None) or arch.get("name")
    if preset is None:
        raise ConfigError(f"recipe {path} must name an arch preset: arch: NAME, arch.preset or arch.name "
                          f"(one of {', '.join(available_groups('arch'))})")
    base = group_file("arch", str(preset))
    if arch.get("name", base["name"]) != base["name"]:
        raise ConfigError(f"recipe {path}: arch preset '{preset}' is an arch.name={base['name']} preset, but the "
                          f"recipe sets arch.name={arch['name']}; drop one of the two")
    raw["arch"] = {**base, **arch}
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (for example lr=1e-4)")
    key, _, value = item.partition("=")
    key = key.strip().lstrip("+")
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]  # type: ignore[index]
    except (OmegaConfBaseException, yaml.YAMLError):
        raise ConfigError(f"cannot parse the value of '{key}': {value!r} (quote it, or write lists as [a,b])") \
            from None
    return key, parsed


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def compose(recipe: str | None, overrides: list[str]) -> dict[str, Any]:
    """Recipe + group selections + overrides, as a plain mapping (not yet validated)."""
    raw = load_recipe(recipe)
    parsed = [_parse_override(item) for item in overrides]
    # Group selections first (as Hydra does), so `arch=trm arch.L_cycles=4` works in any order.
    for key, value in parsed:
        if key in GROUPS and isinstance(value, str):
            raw[key] = group_file(key, value)
    for key, value in parsed:
        if not (key in GROUPS and isinstance(value, str)):
            _set_dotted(raw, key, value)
    # Resolve ${...} interpolations such as the reference's `puzzle_emb_ndim: ${.hidden_size}`.
    try:
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        where = f" (in {err.full_key})" if getattr(err, "full_key", None) else ""
        raise ConfigError(f"cannot resolve the config: {err.msg.splitlines()[0]}{where}") from None


# ----------------------------------------------------------------------------------------------
# Validation with one-line errors


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name != "arch":
            keys.extend(_valid_keys(annotation, prefix + name + "."))
    return keys


def _describe(err: dict[str, Any], model: type[BaseModel], prefix: str) -> str:
    key = prefix + ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _valid_keys(model, prefix), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown config key '{key}'{hint}"
    if err["type"] == "missing":
        return f"config key '{key}' is required but not set (add {key}=...)"
    bounds = _bounds(model, err["loc"], key) if err["type"] in BOUND_ERRORS else ""
    return f"config key '{key}': {err['msg'].lower()}{bounds}, got {err.get('input')!r}"


# Pydantic's error types for a number outside a field's bounds: the message then names the whole valid range.
BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
BOUND_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _bounds(model: type[BaseModel], loc: tuple[Any, ...], key: str) -> str:
    """`` (valid: 0 <= beta1 < 1)`` for the field at ``loc`` of ``model`` (``key`` as the user wrote it), read from
    its Field bounds."""
    field = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if field is None:
        return ""
    found = {name: getattr(item, name) for item in field.metadata for name in BOUND_SYMBOLS if hasattr(item, name)}
    lower = [(BOUND_SYMBOLS[name], found[name]) for name in ("gt", "ge") if name in found]
    upper = [f"{BOUND_SYMBOLS[name]} {found[name]}" for name in ("lt", "le") if name in found]
    if upper:  # a range: 0 <= beta1 < 1
        text = " ".join([*(f"{value} {symbol.replace('>', '<')}" for symbol, value in lower), key, *upper])
    else:  # a lower bound only: seed >= 0
        text = " ".join([key, *(f"{symbol} {value}" for symbol, value in lower)])
    optional = field.default is None or type(None) in getattr(field.annotation, "__args__", ())
    return f" (valid: {text}{', or null' if optional else ''})"


def _validate(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(_describe(first, model, prefix) + suffix) from None


def validate(raw: dict[str, Any], arch_class: type[ArchConfig]) -> TrainConfig:
    """Turn a composed mapping into a typed config whose ``arch`` is validated by ``arch_class``, the family's
    arch config (``smoltrain.families.validate`` picks it by ``arch.name``)."""
    raw = dict(raw)
    arch = _validate(arch_class, raw.pop("arch", None) or {}, prefix="arch.")
    return _validate(TrainConfig, {**raw, "arch": arch})


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def read_saved_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of a config saved by :func:`config_to_yaml` (no recipe composing), with overrides on top.

    Validating it needs the family's arch class: ``smoltrain.families.validate``; where a run keeps it,
    ``smoltrain.runs.RunDir``.
    """
    raw = _read_yaml(Path(path))
    for key, value in (_parse_override(item) for item in overrides or []):
        _set_dotted(raw, key, value)
    return raw
