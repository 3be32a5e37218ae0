"""Hugging Face interop for ``arch=lm`` runs: export to / import from a local transformers directory.

``export_hf`` writes a folder that ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads as
``Qwen3ForCausalLM`` (runs with ``qk_norm``) or ``LlamaForCausalLM`` (without): ``config.json``,
``model.safetensors``, ``generation_config.json`` and the run's tokenizer files; a LoRA run exports merged
(``merge=True``), or as a PEFT adapter directory with its base beside it (``export_peft``). ``import_hf`` goes the
other way and writes a run directory (:class:`~smoltrain.runs.RunDir`: config, a weights-only step-0
checkpoint, tokenizer, README) that ``smoltrain.load`` and ``smoltrain train`` accept.

The module names of ``smoltrain.models.lm`` are HF's, so weights map 1:1 by key; only the config needs
translating. Both directions go through a temporary sibling directory renamed into place, so the output
is either complete or absent. Nothing here touches the network: ``transformers`` is not needed at all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import smoltrain.config as config_files
from smoltrain.config import TrainConfig
from smoltrain.data.tokenizer import TOKENIZER_FILES, load_tokenizer
from smoltrain.errors import SmoltrainError
from smoltrain.families import validate
from smoltrain.fileio import atomic_directory, check_output_path, read_json, set_default_permissions
from smoltrain.models.lm import LMConfig, LMForCausalLM, RopeScaling
from smoltrain.models.lora import adapter_state_dict, merge_lora, remove_lora
from smoltrain.runs.loading import Adapter, load
from smoltrain.runs.run_dir import RunDir

__all__ = ["check_hf_expressible", "export_hf", "export_peft", "hf_rope_scaling", "import_hf", "read_peft_adapter"]

SUPPORTED_MODEL_TYPES = ("qwen3", "llama")
# An imported run trains as a pretrained LM does (AdamW, warmup then cosine, clipping): the keys of this
# recipe, not the TRM defaults of a bare config. Its arch is replaced by the imported model's.
LM_TRAINING_RECIPE = "lm-pretrain"
# config.json key (ignored by transformers) keeping the training rows of an exported run, so an import gives
# the same windows, hence the same evaluation numbers.
SMOLTRAIN_KEY = "smoltrain"
_TIED_KEY, _EMBED_KEY = "lm_head.weight", "model.embed_tokens.weight"


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def _check_export_output(output: Path) -> Path:
    """``output`` (absolute), refused unless it can be created and is absent or an empty directory."""
    output = check_output_path(output)
    if output.exists() and any(output.iterdir()):
        raise SmoltrainError(f"output {output} already exists and is not an empty directory: "
                             "choose a new path for the Hugging Face export")
    return output


@contextmanager
def _export_dir(output: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``output`` to fill; on success it is fsync'ed and renamed to ``output``."""
    with atomic_directory(_check_export_output(output)) as tmp:
        yield tmp


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _copy_tokenizer(source: Path, target: Path) -> None:
    """Copy the tokenizer files found in ``source`` into the export folder ``target``."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def special_token_ids(tokenizer_dir: Path) -> dict[str, int]:
    """``{"bos_token_id": ..., ...}`` for the special tokens the tokenizer files name and define."""
    names: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins, as in transformers
        path = tokenizer_dir / name
        if path.is_file():
            data = read_json(path, dict, f"restore the tokenizer files in {tokenizer_dir}")
            names.update({k: data[k] for k in ("bos_token", "eos_token", "pad_token") if data.get(k)})
    if not names or not (tokenizer_dir / "tokenizer.json").is_file():
        return {}
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = {}
    for key, token in names.items():
        content = token["content"] if isinstance(token, dict) else token  # AddedToken dicts or plain strings
        token_id = tokenizer.token_to_id(content) if isinstance(content, str) else None
        if token_id is not None:
            ids[f"{key}_id"] = token_id
    return ids


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


def hf_rope_scaling(scaling: RopeScaling, max_position_embeddings: int) -> dict[str, Any]:
    """Our ``RopeScaling`` as HF's ``rope_scaling`` dict (without ``rope_theta``): the keys its formula reads."""
    hf: dict[str, Any] = {"rope_type": scaling.rope_type, "factor": scaling.factor}
    if scaling.rope_type == "yarn":
        hf.update({
            "original_max_position_embeddings": scaling.original_max_position_embeddings or max_position_embeddings,
            "beta_fast": scaling.beta_fast, "beta_slow": scaling.beta_slow, "truncate": scaling.truncate,
        })
        if scaling.attention_factor is not None:
            hf["attention_factor"] = scaling.attention_factor
    return hf


def check_hf_expressible(lm: LMConfig | Any) -> None:
    """Refuse, in one line, the positional and attention options a Qwen3 / Llama ``config.json`` cannot say
    (``lm``: an ``LMConfig`` or the run's ``arch``). RoPE scaling maps to ``rope_scaling``; a sliding window to
    Qwen3's ``use_sliding_window`` on every layer; ``attention`` is numerics only."""
    if lm.xpos:
        raise SmoltrainError("XPos (arch.xpos=true) has no counterpart in Hugging Face's Qwen3 / Llama: this run "
                             "cannot be exported to transformers")
    if lm.sliding_window is not None and not lm.qk_norm:
        raise SmoltrainError("HF Llama has no sliding-window attention: a run with arch.sliding_window exports only "
                             "as Qwen3 (arch.qk_norm=true)")


def _hf_config(lm: LMConfig, token_ids: dict[str, int]) -> dict[str, Any]:
    qwen3 = lm.qk_norm
    rope_theta = float(lm.rope_theta)
    scaling = hf_rope_scaling(lm.rope_scaling, lm.max_position_embeddings) if lm.rope_scaling else None
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": lm.vocab_size,
        "hidden_size": lm.hidden_size,
        "intermediate_size": lm.resolved_intermediate_size,
        "num_hidden_layers": lm.num_hidden_layers,
        "num_attention_heads": lm.num_attention_heads,
        "num_key_value_heads": lm.num_key_value_heads,
        "head_dim": lm.resolved_head_dim,
        "max_position_embeddings": lm.max_position_embeddings,
        # transformers < 5 reads rope_theta, >= 5 rope_parameters; writing both keeps either working.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_theta": rope_theta, **(scaling or {"rope_type": "default"})},
        "rope_scaling": scaling,
        "rms_norm_eps": lm.rms_norm_eps,
        "tie_word_embeddings": lm.tie_word_embeddings,
        "hidden_act": lm.hidden_act,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        # transformers < 5 reads torch_dtype, >= 5 dtype. Weights are saved as trained: fp32.
        "torch_dtype": "float32",
        "dtype": "float32",
        "bos_token_id": token_ids.get("bos_token_id"),
        "eos_token_id": token_ids.get("eos_token_id"),
        "pad_token_id": token_ids.get("pad_token_id"),
    }
    if qwen3:  # Qwen3's sliding window applies from layer max_window_layers on; ours to all layers or none
        window = lm.sliding_window
        config.update({
            "use_sliding_window": window is not None,
            "sliding_window": window,
            "max_window_layers": 0 if window is not None else lm.num_hidden_layers,
            "layer_types": ["sliding_attention" if window is not None else "full_attention"] * lm.num_hidden_layers,
        })
    else:
        config.update({"mlp_bias": False, "pretraining_tp": 1})
    return config


def lm_run_config(output: Path, overrides: list[str], arch: dict[str, Any] | None = None) -> TrainConfig:
    """The config of an imported LM run: ``LM_TRAINING_RECIPE``'s training keys with ``overrides`` (``arch=PRESET``
    and ``arch.*`` refinements), or the whole ``arch`` mapping given; no data yet."""
    raw = config_files.compose(LM_TRAINING_RECIPE, [f"run_dir={output}", *overrides])
    if arch is not None:
        raw["arch"] = arch
    raw["data_paths"] = []
    return validate(raw)


def _lm_run_config(run: RunDir) -> TrainConfig:
    """The run's config, refused unless it is a dense, trained ``arch=lm`` run (what the exports handle)."""
    cfg = run.load_config()
    if cfg.arch.name != "lm":
        raise SmoltrainError(f"only arch=lm runs export to Hugging Face format; {run.root} is arch={cfg.arch.name}")
    if cfg.arch.use_moe:
        raise SmoltrainError("export of MoE runs is not supported yet: only dense (use_moe=false) runs export")
    if cfg.arch.vocab_size is None:
        raise SmoltrainError(f"{run.config} has no arch.vocab_size: train the run before exporting it")
    check_hf_expressible(cfg.arch)
    refuse_residual_options(cfg.arch.to_model_config(), "Hugging Face format")
    return cfg


def refuse_residual_options(lm: LMConfig, target: str) -> None:
    """One line refusing an export whose network uses a residual option transformers' Qwen3/Llama (and
    llama.cpp) cannot compute: the exported model would load and silently give other outputs."""
    used = lm.residual_options_in_use()
    if used:
        raise SmoltrainError(f"export to {target} cannot represent {', '.join(used)}: transformers' Qwen3/Llama "
                             "have pre-norm residuals without them; keep the run in smoltrain (generate, serve)")


def _write_hf(model: LMForCausalLM, cfg: TrainConfig, run: RunDir, output: Path, tokenizer: Path | None = None) -> None:
    """``model`` (no adapters) as a transformers folder at ``output``, with the run's tokenizer (or ``tokenizer``)."""
    lm = model.config
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    if lm.tie_word_embeddings:
        # transformers ties lm_head to the embedding on load and leaves it out when saving; safetensors
        # refuses two names for one storage anyway, so the embedding alone is written.
        tensors.pop(_TIED_KEY)
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else run.tokenizer
    if tokenizer is not None and not (tokenizer_dir / "tokenizer.json").is_file():
        raise SmoltrainError(f"--tokenizer {tokenizer_dir} holds no tokenizer.json: pass a tokenizer directory")
    token_ids = special_token_ids(tokenizer_dir) if tokenizer_dir.is_dir() else {}
    arch = cfg.arch  # the config the caller checked: its training rows go into config.json
    output.mkdir(exist_ok=True)
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    set_default_permissions(output / "model.safetensors")  # safetensors creates it 0600
    _write_json(output / "config.json", {**_hf_config(lm, token_ids),
                                         SMOLTRAIN_KEY: {"seq_len": arch.seq_len, "packing": arch.packing,
                                                         "document_bos": arch.document_bos}})
    # Greedy by default: a tiny model sampled at temperature 1 mostly shows noise.
    _write_json(output / "generation_config.json", {**token_ids, "do_sample": False})
    if tokenizer_dir.is_dir():
        _copy_tokenizer(tokenizer_dir, output)


def export_hf(run_dir: Path, output: Path, checkpoint: Path | None = None, merge: bool = False,
              tokenizer: Path | None = None) -> Path:
    """Write an ``arch=lm`` run's checkpoint (newest by default; EMA weights when present) as a local HF folder,
    with the run's tokenizer (or the one in the directory ``tokenizer``).

    A LoRA run (``lora.rank`` > 0) exports only with ``merge=True``: its adapters folded into the base weights
    (``W + alpha / rank * B @ A``), a plain model whose logits are the adapted model's. Its adapters alone (on
    their base) are :func:`export_peft`. Returns the absolute output directory; ``output`` must not exist or be
    empty.
    """
    _check_export_output(output)  # before loading the model
    run = RunDir(run_dir)
    cfg = _lm_run_config(run)
    if cfg.lora.enabled and not merge:
        raise SmoltrainError(f"{run.root} is a LoRA run (adapters on a frozen base): add --merge to export one "
                             "model with the adapters folded in, or use --format peft for the adapters and their base")
    # `load` picks the newest checkpoint, overlays the EMA weights the run evaluates, rebuilds base + adapters
    # and loads strictly, so a checkpoint that does not match the run's config stops here with one line.
    model = merge_lora(load(run.root, checkpoint, device="cpu", need_data=False).model)
    with _export_dir(output) as tmp:
        _write_hf(model, cfg, run, tmp, tokenizer)  # type: ignore[arg-type]
    return Path(output).absolute()


PEFT_WEIGHTS, PEFT_CONFIG, PEFT_BASE = "adapter_model.safetensors", "adapter_config.json", "base"


def export_peft(run_dir: Path, output: Path, checkpoint: Path | None = None) -> Path:
    """Write a LoRA run's adapters as a PEFT adapter directory, with the base they were trained on beside them.

    ``output/`` holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's names: keys
    ``base_model.model.<module>.lora_A.weight``), the run's tokenizer, and ``output/base/``: the frozen base as a
    transformers folder (:func:`export_hf` of the exact weights the adapters were trained on)::

        base = AutoModelForCausalLM.from_pretrained("output/base")
        model = PeftModel.from_pretrained(base, "output")

    ``base_model_name_or_path`` in the config is that folder's absolute path, so ``AutoPeftModelForCausalLM``
    finds it while the export stays where it was written."""
    _check_export_output(output)
    run = RunDir(run_dir)
    cfg = _lm_run_config(run)
    lora = cfg.lora
    if not lora.enabled:
        raise SmoltrainError(f"{run.root} has no adapters (lora.rank=0): export it with --format hf, or train "
                             "adapters with lora.rank=R init_from=RUN")
    model = load(run.root, checkpoint, device="cpu", need_data=False).model
    adapters = {f"base_model.model.{key}.weight": value.detach().to(torch.float32).contiguous().clone()
                for key, value in adapter_state_dict(model).items()}
    targets = sorted({key.rsplit(".", 2)[-2] for key in adapter_state_dict(model)})
    remove_lora(model)  # the base, as the adapters were trained on it
    final = Path(output).absolute()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(final / PEFT_BASE),
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    with _export_dir(output) as tmp:
        save_file(adapters, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        set_default_permissions(tmp / PEFT_WEIGHTS)
        _write_json(tmp / PEFT_CONFIG, config)
        if run.tokenizer.is_dir():
            _copy_tokenizer(run.tokenizer, tmp)
        _write_hf(model, cfg, run, tmp / PEFT_BASE)  # type: ignore[arg-type]
    return final


PEFT_PREFIX = "base_model.model."
PEFT_UNSUPPORTED = ("use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save",
                    "layers_to_transform")


def read_peft_adapter(directory: Path) -> Adapter:
    """A PEFT LoRA adapter directory (``export_peft``'s, or PEFT's ``save_pretrained``) as our adapter weights;
    what our LoRA does not compute (rsLoRA, DoRA, per-layer ranks, biases, extra saved modules) is refused."""
    directory = Path(directory)
    config = read_json(directory / PEFT_CONFIG, dict, "export the adapter again (smoltrain export --format peft)")
    if config.get("peft_type") != "LORA":
        raise SmoltrainError(f"{directory / PEFT_CONFIG}: peft_type {config.get('peft_type')!r} is not LoRA")
    unsupported = [key for key in PEFT_UNSUPPORTED if config.get(key)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise SmoltrainError(f"{directory / PEFT_CONFIG}: {', '.join(unsupported)} set; smoltrain's LoRA computes "
                             "plain W + alpha/r * B@A adapters only")
    weights_file = directory / PEFT_WEIGHTS
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (OSError, SafetensorError) as err:
        raise SmoltrainError(f"{weights_file} cannot be read as safetensors ({err}); export the adapter again") \
            from None
    weights = {}
    for key, value in raw.items():
        module, _, kind = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
        if not key.startswith(PEFT_PREFIX) or kind not in ("lora_A", "lora_B"):
            raise SmoltrainError(f"{weights_file}: key {key!r} is not a LoRA matrix "
                                 f"({PEFT_PREFIX}<module>.lora_A.weight)")
        weights[f"{module}.{kind}"] = value.to(torch.float32)
    return Adapter(weights=weights, rank=int(config["r"]), alpha=float(config["lora_alpha"]), source=directory)


# ---------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------


def _inside(directory: Path, path: Path, named_in: Path | None = None) -> Path:
    """``path``, refused unless it (after following symlinks) lies inside ``directory``: an import reads the
    folder it was given and nothing else, whatever a downloaded index or a link names."""
    resolved = path.resolve()
    if not resolved.is_relative_to(directory.resolve()):
        source = f"{named_in}: names {path}" if named_in else f"{path} points"
        raise SmoltrainError(f"{source} outside {directory} (at {resolved}); import hf reads only files inside "
                             "the model directory: copy the file into it")
    return path


def _read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise SmoltrainError(f"{directory} is not a Hugging Face model directory (no config.json)")
    return read_json(_inside(directory, path), dict, "export the model again (save_pretrained)")


def _lm_fields(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Our ``LMConfig`` fields for an HF Qwen3 / Llama config; refuses what our decoder cannot reproduce."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SmoltrainError(f"{path}: model_type {model_type!r} is not supported; "
                             f"import handles {' and '.join(SUPPORTED_MODEL_TYPES)}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise SmoltrainError(f"{path}: {flag}=true is not supported by smoltrain's decoder")
    if config.get("hidden_act", "silu") != "silu":
        raise SmoltrainError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (only silu)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = rope if isinstance(rope, dict) else {}
    rope_theta = rope.get("rope_theta") or config.get("rope_theta") or 10000.0
    max_position_embeddings = config.get("max_position_embeddings", 2048)
    rope_scaling = _rope_scaling_fields(rope, max_position_embeddings, path)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(config.get(key), int):
            raise SmoltrainError(f"{path}: {key} must be an integer, got {config.get(key)!r}")
    heads = config["num_attention_heads"]
    return {
        "vocab_size": config["vocab_size"],
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads") or heads,  # HF: None means multi-head
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": float(rope_theta),
        "rope_scaling": rope_scaling,
        "sliding_window": _sliding_window(config, model_type, path),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "qk_norm": model_type == "qwen3",  # Qwen3 normalises q and k per head; Llama does not
        # Qwen3Config and LlamaConfig both default to untied when the key is absent.
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
    }


# HF rope_scaling keys each type's formula reads (beyond rope_type and factor); the rest are refused, not ignored.
HF_ROPE_KEYS = {"linear": (), "dynamic": (),
                "yarn": ("original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate")}


def _rope_scaling_fields(rope: dict[str, Any], max_position_embeddings: int, path: Path) -> dict[str, Any] | None:
    """Our ``rope_scaling`` for an HF ``rope_parameters`` / ``rope_scaling`` dict; refuses what we do not compute."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in HF_ROPE_KEYS:
        raise SmoltrainError(f"{path}: RoPE scaling {rope_type!r} is not supported (smoltrain computes linear, "
                             "dynamic and yarn)")
    ignored = {"rope_type", "type", "rope_theta", "factor"}
    if rope_type in ("linear", "dynamic"):
        # transformers reads only the factor for these (dynamic grows from max_position_embeddings).
        ignored |= {"original_max_position_embeddings"}
    unsupported = sorted(set(rope) - ignored - set(HF_ROPE_KEYS[rope_type]))
    if rope.get("partial_rotary_factor", 1.0) == 1.0:
        unsupported = [key for key in unsupported if key != "partial_rotary_factor"]
    if unsupported:
        raise SmoltrainError(f"{path}: rope_scaling key {unsupported[0]!r} ({rope_type}) is not supported by "
                             "smoltrain's RoPE")
    factor = rope.get("factor")
    original = rope.get("original_max_position_embeddings") or max_position_embeddings
    if factor is None and rope_type == "yarn":  # transformers' rule: the ratio of the two lengths
        factor = max_position_embeddings / original
    fields = {"rope_type": rope_type, "factor": factor}
    if rope_type == "yarn":
        fields["original_max_position_embeddings"] = original
        # transformers' `or` defaults: None (or 0) means the paper's values.
        fields["beta_fast"] = rope.get("beta_fast") or 32.0
        fields["beta_slow"] = rope.get("beta_slow") or 1.0
        fields["truncate"] = rope.get("truncate", True)
        fields["attention_factor"] = rope.get("attention_factor")
    try:
        return RopeScaling.model_validate(fields).model_dump()
    except ValidationError as err:
        raise SmoltrainError(f"{path}: rope_scaling {rope} is not valid: {err.errors()[0]['msg']}") from None


def _sliding_window(config: dict[str, Any], model_type: str, path: Path) -> int | None:
    """The window of a Qwen3 whose every layer slides (None when none does); other layouts are refused."""
    if not config.get("use_sliding_window"):
        return None  # transformers then attends over everything, whatever layer_types says
    window = config.get("sliding_window")
    if model_type != "qwen3":
        raise SmoltrainError(f"{path}: use_sliding_window=true is not supported for {model_type}")
    if window is None:
        return None
    layers = config.get("num_hidden_layers")
    types = config.get("layer_types") or [
        "sliding_attention" if i >= config.get("max_window_layers", 28) else "full_attention" for i in range(layers)]
    if set(types) == {"full_attention"}:
        return None
    if set(types) != {"sliding_attention"} or not isinstance(window, int) or window < 1:
        raise SmoltrainError(f"{path}: sliding-window attention on some layers only (layer_types / "
                             "max_window_layers) is not supported: smoltrain's window applies to every layer")
    return window


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [_inside(directory, single)]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(_inside(directory, index), dict, "export the model again (save_pretrained)")
        files = sorted({str(name) for name in weight_map.get("weight_map", {}).values()})
        shards = [_inside(directory, directory / name, named_in=index) for name in files]  # an absolute name too
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise SmoltrainError(f"{directory}: shard {missing[0]} named in {index.name} is missing")
        return shards
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    if shards:
        return [_inside(directory, shard) for shard in shards]
    raise SmoltrainError(f"{directory} has no model.safetensors (or model-0000x-of-0000y.safetensors shards); "
                         "convert .bin weights to safetensors first")


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    # Older exports saved the RoPE inverse frequencies; they are recomputed, not learned.
                    if not key.endswith("rotary_emb.inv_freq"):
                        state[key] = handle.get_tensor(key)
        except (OSError, SafetensorError) as err:  # truncated or not safetensors at all
            raise SmoltrainError(f"{file} cannot be read as safetensors ({err}); download or export it again") \
                from None
    return state


def match_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tied: bool,
                path: Path, config_name: str = "config.json") -> dict[str, torch.Tensor]:
    """``state`` checked key-for-key and shape-for-shape against ``expected``, cast to fp32."""
    if tied:
        # HF leaves the tied head out of the file (or stores a copy); ours keeps both names, same values.
        if _EMBED_KEY in state:
            state[_TIED_KEY] = state[_EMBED_KEY]
    for key, tensor in expected.items():
        if key not in state:
            raise SmoltrainError(f"{path}: weight {key} is missing (does {config_name} match the weights?)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise SmoltrainError(f"{path}: weight {key} has shape {tuple(state[key].shape)} but {config_name} "
                                 f"implies {tuple(tensor.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise SmoltrainError(f"{path}: unexpected weight {extra[0]} (does {config_name} match the weights?)")
    # fp32 master weights, as smoltrain trains and checkpoints; bf16/fp16 files are upcast exactly.
    return {key: state[key].to(torch.float32).contiguous() for key in expected}


def import_hf(directory: Path, output: Path) -> Path:
    """Turn a local HF Qwen3 / Llama directory into a smoltrain run directory; returns it (absolute).

    The run holds its config (``arch=lm``, no data), a weights-only step-0 checkpoint (training from it
    starts fresh optimizer state), the tokenizer when the directory has one, and a README.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SmoltrainError(f"{directory} is not a directory: pass a local Hugging Face model folder")
    output = RunDir.check_new(Path(output).absolute())
    config = _read_hf_config(directory)
    fields = _lm_fields(config, directory / "config.json")
    # The training rows a smoltrain export kept; otherwise the model's own context length.
    rows = config.get(SMOLTRAIN_KEY) if isinstance(config.get(SMOLTRAIN_KEY), dict) else {}
    seq_len = rows.get("seq_len") if isinstance(rows.get("seq_len"), int) else int(fields["max_position_embeddings"])
    packing = rows.get("packing") if isinstance(rows.get("packing"), bool) else True
    document_bos = rows.get("document_bos") is True  # BOS-led prompts in generation (LMArchConfig)
    cfg = lm_run_config(output, [], {"name": "lm", **fields, "seq_len": seq_len, "packing": packing,
                                     "document_bos": document_bos})
    lm = cfg.arch.to_model_config()  # type: ignore[attr-defined]

    with torch.device("meta"):  # shapes only: no need to allocate and initialise a second copy
        expected = LMForCausalLM(lm).state_dict()
    state = match_state(_read_weights(directory), expected, lm.tie_word_embeddings, directory)
    for name in TOKENIZER_FILES:  # copied into the run below
        if (directory / name).exists():
            _inside(directory, directory / name)

    imported = {
        "source": str(directory.absolute()),
        "model_type": str(config["model_type"]),
        "architectures": [str(a) for a in config.get("architectures") or []],
    }
    return write_lm_run(output, cfg, state, imported, tokenizer_dir=directory)


def write_lm_run(output: Path, cfg: TrainConfig, state: dict[str, torch.Tensor], imported: dict[str, Any],
                 tokenizer_dir: Path | None = None) -> Path:
    """A run directory holding imported LM weights (``imported`` says where from): its config, a weights-only
    step-0 checkpoint, the tokenizer files found in ``tokenizer_dir`` and a README."""
    with RunDir.create(output) as run:
        run.write_config(cfg)
        run.save_weights_only(0, state, imported)
        has_tokenizer = bool(tokenizer_dir is not None and run.save_tokenizer(tokenizer_dir))
        run.write_readme(_lm_readme(Path(output), imported, has_tokenizer))
    return output


def _lm_readme(output: Path, imported: dict[str, Any], has_tokenizer: bool) -> str:
    lines = [
        f"# Run `{output.name}` (imported)",
        "",
        f"Imported from `{imported['source']}`. The weights are a weights-only checkpoint at step 0: training "
        "from this run starts with fresh optimizer state.",
    ]
    if not has_tokenizer:
        lines += ["", "No tokenizer came with the weights: copy its files into `tokenizer/` to generate text."]
    lines += [
        "",
        "## Next",
        "",
        f"- generate: `smoltrain generate {output} --prompt \"...\"`",
        f"- in Python: `smoltrain.load(\"{output}\")`",
        f"- continue training: `smoltrain train {RunDir(output).config} data_paths=[DIR] max_steps=...`",
    ]
    return "\n".join(lines) + "\n"
