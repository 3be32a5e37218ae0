"""Import a checkpoint written by the reference TRM code as a smoltrain run directory.

The reference saves ``torch.save(model.state_dict(), "<dir>/step_N")``: the loss-head-wrapped model's
weights only (keys ``model.inner.*``, prefixed ``_orig_mod.`` when the model was compiled; the EMA copy
when it trained with ``ema=True``), and beside them ``all_config.yaml``, its resolved config (trm.md §5.3).

The import, in order:

1. read the weights (``weights_only``) and strip ``_orig_mod.``;
2. read ``all_config.yaml`` and map it to a :class:`~smoltrain.config.TrainConfig`: the arch from the
   reference class path (``recursive_reasoning.trm@...`` -> ``trm``), the arch and top-level keys our
   schema knows (fields the file lacks come from our arch group file, which mirrors the reference's);
   reference-only keys are dropped and reported, and so are paths that only mean something on the
   reference machine (``checkpoint_path``, ``load_checkpoint``, data paths that do not exist here);
3. find ``seq_len``, ``vocab_size`` and ``num_puzzle_identifiers`` from the weights' shapes, or from the
   dataset when one is given (the two must agree), and declare them in the arch config so the run builds
   without its dataset (``smoltrain.load``, ``smoltrain solve``);
4. build our model from that config and check every key and shape before loading (one error naming the
   first mismatch and the config field that likely causes it);
5. write the run directory atomically (:class:`~smoltrain.runs.RunDir`): its config, a weights-only
   checkpoint at step N (no optimizer, data or RNG state: the reference saves none), a copy of the
   reference config and a README.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from smoltrain.config import TrainConfig, group_file
from smoltrain.data.puzzles import load_metadata
from smoltrain.errors import ConfigError, DataError, SmoltrainError
from smoltrain.families import build_family, family_class, validate
from smoltrain.families.trm import DATA_SHAPE, LossConfig, TRMArchConfig
from smoltrain.runs.run_dir import RunDir
from smoltrain.runtime.distributed import DistEnv

__all__ = ["import_reference_checkpoint", "load_reference_state", "reference_arch_name"]

COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper module name, in every key of a compiled model
KEY_PREFIX = "model.inner."  # ACTLossHead(model=ACT wrapper(inner=...)), as in both codebases
CONFIG_FILE = "all_config.yaml"
STEP_FILE = re.compile(r"^step_(\d+)$")
SUPPORTED_ARCHS = ("trm", "hrm", "trm_singlez")
# Fields of our arch config that the reference arch's config class lacks, with the value that means what the
# reference does. Its pydantic config drops unknown keys, so all_config.yaml may hold them (a command-line
# override, a copied arch file) without effect there; taking them here would build another model (HRM's prefix is
# always ceil(puzzle_emb_ndim / hidden_size) positions; it always trains the continue head).
REFERENCE_FIXED: dict[str, dict[str, Any]] = {"hrm": {"puzzle_emb_len": 0, "no_ACT_continue": False}}
# Reference keys naming files on the reference machine; the run directory replaces them.
MACHINE_KEYS = ("checkpoint_path", "load_checkpoint", "run_dir")
SEQ = "puzzle_emb_len (or the dataset's seq_len)"
# A resolver call, `${name:args}` (e.g. `${oc.env:HOME}`): a colon inside `${...}`. References between keys of
# the file itself (`${.hidden_size}`, `${arch.x}`) have none.
RESOLVER_CALL = re.compile(r"\$\{[^${}]*:")
# Per parameter (by key suffix): (dimension, config field it follows), in the order to blame them.
SHAPE_FIELDS: dict[str, list[tuple[int, str]]] = {
    "H_init": [(0, "hidden_size")],
    "L_init": [(0, "hidden_size")],
    "embed_tokens.embedding_weight": [(1, "hidden_size"), (0, "vocab_size")],
    "lm_head.weight": [(1, "hidden_size"), (0, "vocab_size")],
    "q_head.weight": [(1, "hidden_size")],
    "puzzle_emb.weights": [(1, "puzzle_emb_ndim"), (0, "num_puzzle_identifiers")],
    "embed_pos.embedding_weight": [(1, "hidden_size"), (0, SEQ)],
    "mlp_t.gate_up_proj.weight": [(1, SEQ), (0, "expansion")],
    "mlp_t.down_proj.weight": [(0, SEQ), (1, "expansion")],
    "mlp.gate_up_proj.weight": [(1, "hidden_size"), (0, "expansion")],
    "mlp.down_proj.weight": [(0, "hidden_size"), (1, "expansion")],
    "self_attn.qkv_proj.weight": [(1, "hidden_size"), (0, "hidden_size")],
    "self_attn.o_proj.weight": [(0, "hidden_size"), (1, "hidden_size")],
}
LAYER = re.compile(r"^(?P<level>[HL])_level\.layers\.(?P<index>\d+)\.")

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Reading the reference files


def reference_arch_name(class_path: str) -> str:
    """``recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1`` -> ``trm`` (also ``hrm``, ``trm_singlez``)."""
    module = class_path.partition("@")[0]
    name = module.rpartition(".")[2]
    if name not in SUPPORTED_ARCHS:
        raise SmoltrainError(
            f"reference arch '{class_path}' has no smoltrain equivalent; importable: "
            + ", ".join(f"recursive_reasoning.{n}@..." for n in SUPPORTED_ARCHS)
        )
    return name


def _find_checkpoint(checkpoint: Path) -> tuple[Path, int]:
    """The ``step_N`` file and N; a directory means its newest ``step_N`` file."""
    if checkpoint.is_dir():
        steps = sorted(
            (int(m.group(1)), p) for p in checkpoint.iterdir() if p.is_file() and (m := STEP_FILE.match(p.name))
        )
        if not steps:
            raise SmoltrainError(f"no step_N checkpoint file in {checkpoint}; pass one, e.g. {checkpoint}/step_1000")
        return steps[-1][1], steps[-1][0]
    if not checkpoint.is_file():
        raise SmoltrainError(f"checkpoint {checkpoint} does not exist; pass a reference step_N file")
    match = STEP_FILE.match(checkpoint.name)
    return checkpoint, int(match.group(1)) if match else 0  # a renamed file: step unknown, count from 0


def load_reference_state(path: Path) -> dict[str, torch.Tensor]:
    """A reference ``step_N`` file as a state dict with ``model.inner.*`` keys (``_orig_mod.`` stripped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike: the file is not what we expect
        raise SmoltrainError(f"cannot read {path} as a reference checkpoint (a torch.save'd state dict): "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SmoltrainError(f"{path} does not hold a state dict (name -> tensor); pass a reference step_N file")
    state = {k.removeprefix(COMPILE_PREFIX): v for k, v in state.items()}
    if not state or not all(k.startswith(KEY_PREFIX) for k in state):
        example = next(iter(state), "nothing")
        raise SmoltrainError(f"{path} is not a TRM checkpoint: expected keys {KEY_PREFIX}*, found {example}")
    return state


def _refuse_resolvers(node: Any, path: Path, key: str = "") -> None:
    """Refuse any value of ``node`` (a file from elsewhere, read as YAML) that calls an OmegaConf resolver."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            _refuse_resolvers(child, path, f"{key}.{child_key}" if key else str(child_key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _refuse_resolvers(child, path, f"{key}[{i}]")
    elif isinstance(node, str) and RESOLVER_CALL.search(node):
        raise ConfigError(f"{path}: {key}: {node!r} calls a resolver, which a reference config may not (only "
                          "${.key} references between its own keys are resolved): write the value itself")


def _read_reference_config(checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    path = checkpoint.parent / CONFIG_FILE
    if not path.is_file():
        raise SmoltrainError(
            f"no {CONFIG_FILE} beside the checkpoint (looked for {path}); copy the reference run's "
            f"{CONFIG_FILE} (written next to its step_N files) into {checkpoint.parent}"
        )
    try:
        raw = yaml.safe_load(path.read_text())
        # The file is resolved by the reference, but a hand-written one may still hold ${...}: references between
        # its own keys are resolved, resolvers (which read the environment, or anything) are refused first.
        _refuse_resolvers(raw, path)
        data = OmegaConf.to_container(OmegaConf.create(raw), resolve=True) if isinstance(raw, dict) else raw
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"{path} is not a readable config: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("arch"), dict) or "name" not in data["arch"]:
        raise ConfigError(f"{path} is not a reference all_config.yaml: it has no arch.name")
    return path, data


# ----------------------------------------------------------------------------------------------
# Config mapping


def _existing(paths: Any) -> list[str] | None:
    """The paths when every one is a directory here, else None (they name the reference machine's files)."""
    if not isinstance(paths, list) or not paths:
        return None
    return [str(p) for p in paths] if all(Path(str(p)).is_dir() for p in paths) else None


def _map_config(ref: dict[str, Any], data_paths: list[str] | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """(our raw config without data shape, dropped reference keys, notes for the README)."""
    dropped: list[str] = []
    notes: list[str] = []
    ref_arch = dict(ref["arch"])
    name = reference_arch_name(str(ref_arch.pop("name")))
    schema = family_class(name).config_class
    fixed = REFERENCE_FIXED.get(name, {})
    arch: dict[str, Any] = {}
    for key, value in ref_arch.items():
        if key in fixed:
            if value != fixed[key]:
                notes.append(f"arch.{key}={value} not kept: the reference {name} has no such field and ignores it "
                             f"(behaves as {key}={fixed[key]})")
        elif key == "loss":
            loss = dict(value or {})
            if not str(loss.get("name", "")).endswith("@ACTLossHead"):
                raise SmoltrainError(f"reference loss '{loss.get('name')}' is not supported; smoltrain has ACTLossHead")
            arch["loss"] = {k: v for k, v in loss.items() if k in LossConfig.model_fields}
            dropped += [f"arch.loss.{k}" for k in loss if k not in LossConfig.model_fields]
        elif key == "forward_dtype":
            # Ours follows `precision` (bf16 on CUDA, fp32 on CPU) unless set; the reference's is always bf16,
            # which on CPU would be slow and differ from a CPU-trained model's numerics.
            notes.append(f"arch.forward_dtype={value} not kept: it follows `precision` (set arch.forward_dtype "
                         "to force it)")
        elif key in schema.model_fields and key not in DATA_SHAPE:
            arch[key] = value
        else:
            dropped.append(f"arch.{key}")
    defaults = {k: v for k, v in group_file("arch", name).items() if k != "name"}
    filled = sorted(k for k in defaults if k not in arch and k not in fixed)
    if filled:
        notes.append(f"arch fields absent from {CONFIG_FILE}, taken from smoltrain's arch/{name}.yaml: "
                     + ", ".join(filled))
    arch = {"name": name, **defaults, **arch, **fixed}

    top: dict[str, Any] = {}
    for key, value in ref.items():
        if key in ("arch", "data_paths", "data_paths_test"):
            continue
        if key in MACHINE_KEYS:
            if value:
                notes.append(f"{key}={value} (a path on the reference machine) not kept")
        elif key in TrainConfig.model_fields:
            top[key] = value
        else:
            dropped.append(key)
    for key in ("data_paths", "data_paths_test"):
        given = data_paths if key == "data_paths" else None
        found = given if given is not None else _existing(ref.get(key))
        top[key] = found or []
        if given is None and ref.get(key) and not found:
            notes.append(f"reference {key}={ref[key]} not found here, not kept: add {key}=[DIR] to evaluate or train")
    raw = OmegaConf.to_container(OmegaConf.create({**top, "arch": arch}), resolve=True)  # arch group's ${...}
    return raw, dropped, notes  # type: ignore[return-value]


def _validate(raw: dict[str, Any], config_path: Path) -> TrainConfig:
    try:
        return validate(raw)
    except ConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from None


# ----------------------------------------------------------------------------------------------
# Data shape and the key/shape check


def _effective_prefix_len(cfg: TrainConfig, config_path: Path) -> int:
    """Puzzle-prefix positions of the config's model (needs a model config; the data shape is irrelevant)."""
    assert isinstance(cfg.arch, TRMArchConfig)
    placeholders = cfg.arch.model_copy(update={key: 1 for key in DATA_SHAPE})
    try:
        return placeholders.to_model_config(batch_size=1, forward_dtype="float32").effective_puzzle_emb_len
    except ConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from None


def _shape_from_state(state: dict[str, torch.Tensor], prefix_len: int) -> dict[str, int | None]:
    """What the weights tell of the data: vocab always; identifiers with a puzzle table; seq_len unless
    the only positional parameters are none (RoPE has no weights)."""
    vocab = state.get(KEY_PREFIX + "embed_tokens.embedding_weight")
    table = state.get(KEY_PREFIX + "puzzle_emb.weights")
    total = None
    for key, tensor in state.items():
        if key.endswith("embed_pos.embedding_weight") or key.endswith("mlp_t.down_proj.weight"):
            total = tensor.shape[0]  # prefix + puzzle positions
            break
    return {
        "vocab_size": int(vocab.shape[0]) if vocab is not None and vocab.ndim == 2 else None,
        # Without a puzzle table the count shapes nothing; 1 (the blank identifier) builds the model.
        "num_puzzle_identifiers": int(table.shape[0]) if table is not None and table.ndim == 2 else 1,
        "seq_len": total - prefix_len if total is not None and total > prefix_len else None,
    }


def _decide_shape(
    found: dict[str, int | None], cfg: TrainConfig, seq_len: int | None, where: Path
) -> dict[str, int]:
    """The data shape to declare: the weights', checked against the dataset and the seq_len given."""
    shape = dict(found)
    if cfg.data_paths:
        meta = load_metadata(cfg.data_paths[0], "train")
        for key in DATA_SHAPE:
            if key == "num_puzzle_identifiers" and not cfg.arch.puzzle_emb_ndim:
                shape[key] = meta.num_puzzle_identifiers
                continue
            ours, theirs = shape[key], getattr(meta, key)
            if ours is not None and ours != theirs:
                raise DataError(f"the dataset {cfg.data_paths[0]} has {key}={theirs} but the checkpoint {where} "
                                f"was trained with {key}={ours}: pass the dataset it was trained on")
            shape[key] = theirs
    if seq_len is not None:
        if shape["seq_len"] is not None and shape["seq_len"] != seq_len:
            raise SmoltrainError(f"seq_len={seq_len} was given but the checkpoint {where} holds seq_len="
                                 f"{shape['seq_len']}; drop the seq_len argument")
        shape["seq_len"] = seq_len
    if shape["seq_len"] is None:
        raise SmoltrainError(f"{where} does not tell its puzzle length (RoPE has no weights): pass the dataset "
                             "it was trained on (--data-paths DIR) or its length (--seq-len N, 81 for 9x9 Sudoku)")
    if shape["vocab_size"] is None:
        raise SmoltrainError(f"{where} has no {KEY_PREFIX}embed_tokens.embedding_weight: not a TRM checkpoint")
    return {key: shape[key] for key in DATA_SHAPE}  # type: ignore[misc]


def _suspect(key: str, other_side: set[str]) -> str:
    """The config field most likely behind a key present on one side only."""
    leaf = key.removeprefix(KEY_PREFIX)
    if "puzzle_emb" in leaf:
        return "puzzle_emb_ndim"
    if "embed_pos" in leaf:
        return "pos_encodings"
    if leaf in ("L_init", "H_init"):
        return "name (trm vs trm_singlez)"
    if layer := LAYER.match(leaf):
        if any(k.removeprefix(KEY_PREFIX).startswith(layer.group(0)) for k in other_side):
            return "mlp_t"  # the layer exists on both sides, its token mixer differs
        return f"{layer.group('level')}_layers"
    return "name"


def _shape_suspect(key: str, expected: tuple[int, ...], found: tuple[int, ...]) -> str:
    if len(expected) == len(found):
        for suffix, dims in SHAPE_FIELDS.items():
            if key.endswith(suffix):
                for dim, field in dims:
                    if expected[dim] != found[dim]:
                        return field
    return "name"


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """One error for the first key or shape that differs between our model and the checkpoint."""
    for key, tensor in expected.items():
        if key not in state:
            raise SmoltrainError(f"{where}: the config's model has {key} but the checkpoint does not; check "
                                 f"arch.{_suspect(key, set(state))}")
        ours, theirs = tuple(tensor.shape), tuple(state[key].shape)
        if ours != theirs:
            raise SmoltrainError(f"{where}: {key} has shape {theirs} in the checkpoint but {ours} from the config; "
                                 f"check arch.{_shape_suspect(key, ours, theirs)}")
    for key in state:
        if key not in expected:
            raise SmoltrainError(f"{where}: the checkpoint has {key} but the config's model does not; check "
                                 f"arch.{_suspect(key, set(expected))}")


# ----------------------------------------------------------------------------------------------
# Writing the run


def _readme(output: Path, source: Path, step: int, cfg: TrainConfig, shape: dict[str, int], dropped: list[str],
            notes: list[str]) -> str:
    run = RunDir(output)
    data = f"data_paths=[{','.join(cfg.data_paths)}]" if cfg.data_paths else "data_paths=[DIR]"
    weights = (
        "These are the **EMA weights** (the reference trained with `ema=True` and saves only the EMA copy); "
        "they are stored as the model weights, so loading and evaluating use them directly."
        if cfg.ema else "These are the raw model weights (the reference trained with `ema=False`)."
    )
    lines = [
        f"# Run `{output.name}` (imported)",
        "",
        f"Imported by `smoltrain import trm` from the reference checkpoint `{source}` (step {step}).",
        weights,
        "",
        f"- **arch**: {cfg.arch.name}",
        f"- **data shape** (declared in {run.config.name}): " + ", ".join(f"{k}={v}" for k, v in shape.items()),
        f"- **data_paths**: {cfg.data_paths or 'none (the model builds without data; evaluation needs it)'}",
        f"- **reference config**: {run.reference_config.name}",
    ]
    if dropped:
        lines.append("- **reference keys dropped** (smoltrain has no equivalent): " + ", ".join(dropped))
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        "The reference saves no optimizer, data or RNG state: training from this run continues from these "
        f"weights at step {step} with fresh optimizer state.",
        "",
        "## Next",
        "",
        f"- evaluate: `smoltrain eval {output}" + ("" if cfg.data_paths else f" {data}") + "`",
        f"- solve one Sudoku: `smoltrain solve {output} --puzzle \"...\"`",
        f"- in Python: `smoltrain.load(\"{output}\")`",
        f"- continue training: `smoltrain train {run.config}" + ("" if cfg.data_paths else f" {data}")
        + " epochs=...`",
    ]
    return "\n".join(lines) + "\n"


def import_reference_checkpoint(
    checkpoint: Path,
    output: Path,
    data_paths: list[str] | None = None,
    *,
    seq_len: int | None = None,
    log: Log | None = None,
) -> Path:
    """Convert a reference TRM ``step_N`` checkpoint (with ``all_config.yaml`` beside it) into the run
    directory ``output`` and return it.

    ``data_paths``: the dataset(s) the checkpoint was trained on; optional, used to check the weights'
    shapes and kept in the run's config. ``seq_len``: the puzzle length, only needed without data for
    RoPE attention models (whose weights do not show it). ``log`` receives one line per decision worth
    telling the user (dropped keys, derived shapes, EMA).
    """
    say = log or (lambda _line: None)
    output = RunDir.check_new(output)
    path, step = _find_checkpoint(Path(checkpoint))
    state = load_reference_state(path)
    config_path, ref = _read_reference_config(path)
    raw, dropped, notes = _map_config(ref, [str(p) for p in data_paths] if data_paths is not None else None)
    cfg = _validate({**raw, "run_dir": str(output)}, config_path)

    shape = _decide_shape(_shape_from_state(state, _effective_prefix_len(cfg, config_path)), cfg, seq_len, path)
    cfg = _validate({**raw, "run_dir": str(output), "arch": {**raw["arch"], **shape}}, config_path)
    family = build_family(cfg, DistEnv(), torch.device("cpu"))
    cfg = family.cfg
    model = family.build_model()
    _check_state(model.state_dict(), state, f"{path} does not match {config_path}")
    model.load_state_dict(state)

    with RunDir.create(output) as run:  # checks `output` again: it may have appeared meanwhile
        run.write_config(cfg)
        shutil.copyfile(config_path, run.reference_config)
        origin = {"source": str(path), "format": "reference-trm", "ema_weights": cfg.ema}
        run.save_weights_only(step, model.state_dict(), origin)
        run.write_readme(_readme(output, path, step, cfg, shape, dropped, notes))

    say(f"imported {path} (step {step}, arch {cfg.arch.name}) into {output}")
    say("data shape: " + ", ".join(f"{k}={v}" for k, v in shape.items()))
    if cfg.ema:
        say("the weights are the reference's EMA copy (ema=True); they are the run's model weights")
    if dropped:
        say("reference keys dropped (no smoltrain equivalent): " + ", ".join(dropped))
    for note in notes:
        say(note)
    return output
