"""GGUF export of ``arch=lm`` runs for llama.cpp and ollama (``smoltrain export RUN --format gguf``).

One fp32 file holding what llama.cpp reads: the architecture and its hyper-parameters, the tokenizer
(byte-level BPE as llama.cpp's ``gpt2`` tokenizer model: tokens, merges, token types, special ids, chat
template) and every tensor under llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ...).

Which architecture:

* ``qk_norm=True`` (Qwen3, MiniMind-3) is llama.cpp's ``qwen3``. It applies RoPE in the rotate-half (NeoX)
  layout our model uses, so the tensors go in unchanged.
* ``qk_norm=False`` (Llama, MiniMind-2) is llama.cpp's ``llama``, whose RoPE rotates *adjacent* pairs
  ``(2i, 2i+1)`` while ours rotates ``(i, i + d/2)``. Reordering the rows of ``q_proj`` and ``k_proj`` within
  each head (row ``i`` to ``2i``, row ``i + d/2`` to ``2i + 1``) makes the two agree: the pairs rotate by the
  same angles, and q·k is a sum over pairs, so the attention scores are the same (``llama_rope_rows``).

Tied embeddings write no ``output`` tensor: llama.cpp then uses ``token_embd`` for the head. Mixture-of-experts
runs are refused (no mapping to llama.cpp's expert tensors yet). RoPE scaling goes into llama.cpp's
``rope.scaling.*`` keys where its formula is ours (linear; yarn with the paper's betas and attention factor, the
keys llama.cpp's own converter writes); dynamic NTK, XPos and sliding-window runs are refused (llama.cpp's
``llama`` / ``qwen3`` do not compute them). Needs the ``gguf`` package (``pip install
'smoltrain[gguf]'``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from smoltrain.errors import SmoltrainError
from smoltrain.fileio import check_output_path, fsync_dir, fsync_file, read_json, set_default_permissions, writing
from smoltrain.interop.hf import refuse_residual_options, special_token_ids
from smoltrain.models.lm import LMConfig
from smoltrain.runs.loading import load
from smoltrain.runs.run_dir import RunDir

__all__ = ["check_gguf_expressible", "export_gguf", "gguf_architecture", "gguf_tensor_name", "llama_rope_rows"]

# Qwen2's pre-tokenizer split (llama.cpp's "qwen2" pre-tokenizer); a byte-level BPE without a Split uses
# GPT-2's built-in regex (llama.cpp's "gpt-2").
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Our names (HF's) -> llama.cpp's, per layer; the `.weight` suffix is kept on both sides.
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise SmoltrainError("GGUF export needs the gguf package: pip install 'smoltrain[gguf]' (or pip install "
                             "gguf)") from None
    return gguf


def check_gguf_expressible(lm: LMConfig | Any) -> None:
    """Refuse, in one line, what llama.cpp's ``llama`` / ``qwen3`` would compute differently (``lm``: an ``LMConfig``
    or the run's ``arch``)."""
    scaling = lm.rope_scaling
    if lm.xpos:
        raise SmoltrainError("XPos (arch.xpos=true) has no counterpart in llama.cpp: this run cannot go into GGUF")
    if lm.sliding_window is not None:
        raise SmoltrainError("llama.cpp's llama / qwen3 attend over the whole context: a run with "
                             "arch.sliding_window cannot go into GGUF")
    if scaling is None:
        return
    if scaling.rope_type == "dynamic":
        raise SmoltrainError("llama.cpp has no dynamic NTK RoPE scaling: a run with rope_scaling.rope_type=dynamic "
                             "cannot go into GGUF (linear and yarn can)")
    if scaling.rope_type == "yarn" and (scaling.beta_fast, scaling.beta_slow, scaling.attention_factor,
                                        scaling.truncate) != (32.0, 1.0, None, True):
        raise SmoltrainError("GGUF export writes yarn with the paper's beta_fast=32, beta_slow=1, the default "
                             "attention_factor and truncate=true only (llama.cpp's defaults)")


def gguf_architecture(lm: LMConfig) -> str:
    """llama.cpp's architecture name for the model: ``qwen3`` with QK-norm, ``llama`` without."""
    return "qwen3" if lm.qk_norm else "llama"


def gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for one of our state-dict keys, e.g. ``model.layers.3.mlp.up_proj.weight`` ->
    ``blk.3.ffn_up.weight``."""
    stem, _, suffix = name.rpartition(".")
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES['.'.join(parts[3:])]}.{suffix}"
    raise SmoltrainError(f"weight {name} has no GGUF name: only dense Qwen3 / Llama weights export to GGUF")


def llama_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """``q_proj`` / ``k_proj`` rows reordered from rotate-half RoPE pairs ``(i, i + d/2)`` to llama.cpp's adjacent
    pairs ``(2i, 2i + 1)``, head by head (module docstring)."""
    out_features, in_features = weight.shape
    d = out_features // heads
    halves = weight.reshape(heads, 2, d // 2, in_features)  # [head, which half, i, in]
    return halves.transpose(1, 2).reshape(out_features, in_features)  # row 2i = first half's i, 2i+1 = second's


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


def _pre_tokenizer(spec: dict[str, Any] | None, path: Path) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE's ``pre_tokenizer`` entry of tokenizer.json."""
    if isinstance(spec, dict) and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name for GPT-2's regex (its tokenizer *model* is "gpt2", without the dash)
    if isinstance(spec, dict) and spec.get("type") == "Sequence":
        steps = spec.get("pretokenizers") or []
        patterns = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
        byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
        if patterns == [QWEN2_SPLIT] and len(byte_level) == 1 and not byte_level[0].get("use_regex", True):
            return "qwen2"
    raise SmoltrainError(f"{path}: its pre-tokenizer has no llama.cpp counterpart (GGUF export knows GPT-2's "
                         "byte-level split and Qwen2's); use a tokenizer trained by `smoltrain tokenizer train`")


def _tokenizer_fields(tokenizer_dir: Path, model_vocab: int) -> dict[str, Any]:
    """Tokens (one per embedding row), token types, merges, pre-tokenizer, special ids and chat template."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise SmoltrainError(f"{tokenizer_dir} has no tokenizer.json: GGUF needs the tokenizer; pass --tokenizer DIR")
    spec = read_json(path, dict, "copy the tokenizer files again")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise SmoltrainError(f"{path}: a {model.get('type')} tokenizer cannot go into GGUF here; only byte-level BPE "
                             "(what `smoltrain tokenizer train` and MiniMind use) is exported")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or spec.get("normalizer"):
        raise SmoltrainError(f"{path}: GGUF's gpt2 tokenizer needs a ByteLevel decoder and no normalizer")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"), path)
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens") or []}
    vocab.update({content: int(t["id"]) for content, t in added.items()})
    if len(vocab) > model_vocab or max(vocab.values()) >= model_vocab:
        raise SmoltrainError(f"{path} has {len(vocab)} tokens but the model embeds {model_vocab}: use the "
                             "tokenizer the run was trained with")
    by_id = {i: token for token, i in vocab.items()}
    gguf = _gguf()
    tokens, types = [], []
    for i in range(model_vocab):  # llama.cpp wants one token per embedding row
        token = by_id.get(i)
        if token is None:  # rows the tokenizer never produces (a vocabulary padded to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = read_json(config_path, dict, "copy the tokenizer files again") if config_path.is_file() else {}
    template = config.get("chat_template")
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre, "ids": special_token_ids(tokenizer_dir),
            "chat_template": template if isinstance(template, str) else None}


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


def _write(writer: Any, lm: LMConfig, tensors: dict[str, torch.Tensor], tok: dict[str, Any], name: str) -> None:
    gguf = _gguf()
    arch = gguf_architecture(lm)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(lm.max_position_embeddings)
    writer.add_embedding_length(lm.hidden_size)
    writer.add_block_count(lm.num_hidden_layers)
    writer.add_feed_forward_length(lm.resolved_intermediate_size)
    writer.add_head_count(lm.num_attention_heads)
    writer.add_head_count_kv(lm.num_key_value_heads)
    writer.add_key_length(lm.resolved_head_dim)
    writer.add_value_length(lm.resolved_head_dim)
    writer.add_rope_freq_base(float(lm.rope_theta))
    if lm.rope_scaling is not None:  # linear or yarn (check_gguf_expressible)
        scaling = lm.rope_scaling
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if scaling.rope_type == "linear"
                                     else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling.factor))
        if scaling.rope_type == "yarn":
            writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings or lm.max_position_embeddings)
    writer.add_layer_norm_rms_eps(float(lm.rms_norm_eps))
    writer.add_vocab_size(lm.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(lm.resolved_head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        if key in tok["ids"]:
            add(tok["ids"][key])
    # No BOS added by llama.cpp: chat prompts begin with <|im_start|>, which is the BOS, so adding one would double
    # it; a raw completion of a run trained with BOS-led documents (arch.document_bos) starts with <|im_start|>
    # written by the user, as `smoltrain generate` puts it there itself.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])
    for key, tensor in tensors.items():
        writer.add_tensor(gguf_tensor_name(key), tensor.numpy())


def gguf_tensors(state: dict[str, torch.Tensor], lm: LMConfig) -> dict[str, torch.Tensor]:
    """The state dict as it goes into the file: fp32, the tied head left out, Llama's q/k rows reordered."""
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    if lm.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    if gguf_architecture(lm) == "llama":
        for key in tensors:
            if key.endswith("self_attn.q_proj.weight"):
                tensors[key] = llama_rope_rows(tensors[key], lm.num_attention_heads).contiguous()
            elif key.endswith("self_attn.k_proj.weight"):
                tensors[key] = llama_rope_rows(tensors[key], lm.num_key_value_heads).contiguous()
    return tensors


def export_gguf(run_dir: Path, output: Path, checkpoint: Path | None = None,
                tokenizer: Path | None = None) -> Path:
    """Write an ``arch=lm`` run's checkpoint (newest by default, EMA weights when present) as one GGUF file
    for llama.cpp / ollama. ``tokenizer`` replaces the run's own copy. ``output`` must not exist."""
    if Path(output).exists():  # nothing a user made is replaced
        raise SmoltrainError(f"output {output} already exists: choose a new path for the GGUF file")
    output = check_output_path(Path(output))
    gguf = _gguf()
    run = RunDir(run_dir)
    cfg = run.load_config()
    if cfg.arch.name != "lm":
        raise SmoltrainError(f"only arch=lm runs export to GGUF; {run.root} is arch={cfg.arch.name}")
    if cfg.arch.use_moe:  # type: ignore[attr-defined]
        raise SmoltrainError("GGUF export of MoE runs is not supported: its expert tensors are not mapped to "
                             "llama.cpp's yet; only dense (use_moe=false) runs export")
    check_gguf_expressible(cfg.arch)
    vocab_size = cfg.arch.vocab_size or 0  # type: ignore[attr-defined]
    tok = _tokenizer_fields(Path(tokenizer) if tokenizer else run.tokenizer, vocab_size)  # before loading weights
    model = load(run.root, checkpoint, device="cpu", need_data=False).model
    lm: LMConfig = model.config  # type: ignore[assignment]
    refuse_residual_options(lm, "GGUF")  # llama.cpp's llama/qwen3 graphs are the pre-norm block too
    tensors = gguf_tensors(model.state_dict(), lm)
    with writing(output):
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        os.close(fd)
        try:
            writer = gguf.GGUFWriter(tmp, gguf_architecture(lm))
            _write(writer, lm, tensors, tok, run.root.name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            set_default_permissions(tmp)
            fsync_file(tmp)
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(output.parent)
    return output


def describe_gguf(path: Path) -> dict[str, Any]:
    """A few facts of a GGUF file, for the export's summary line."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    return {"architecture": bytes(arch.parts[arch.data[0]]).decode(), "tensors": len(reader.tensors),
            "bytes": path.stat().st_size}
