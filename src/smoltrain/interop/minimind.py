"""Import MiniMind's released ``.pth`` weights (``smoltrain import minimind``).

MiniMind is Qwen3 (MiniMind-3) or Llama-shaped (MiniMind2) with Hugging Face module names, so its state
dict maps onto ``arch=lm`` key for key (llm.md §1.2); only the container differs: a bare fp16 state dict
(``{weight}_{hidden}.pth``) or a resume file with the weights under ``"model"``, keys possibly prefixed by
``module.`` (DDP) or ``_orig_mod.`` (torch.compile).
"""

from __future__ import annotations

from pathlib import Path

import torch

from smoltrain.errors import SmoltrainError
from smoltrain.interop.hf import lm_run_config, match_state, write_lm_run
from smoltrain.models.lm import LMForCausalLM
from smoltrain.runs.run_dir import RunDir

PRESETS = ("minimind2-26m", "minimind3-64m", "minimind3-moe")
PREFIXES = ("module.", "_orig_mod.")


def read_minimind_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    if not checkpoint.is_file():
        raise SmoltrainError(f"{checkpoint} does not exist: pass MiniMind's .pth weights file")
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files: one line for the user
        raise SmoltrainError(f"{checkpoint} is not a readable PyTorch state dict: {err}") from None
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]  # MiniMind's *_resume.pth: weights next to optimizer state
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise SmoltrainError(f"{checkpoint} does not hold a state dict of tensors")
    state = {}
    for key, tensor in raw.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = tensor
    return state


def import_minimind(checkpoint: Path, preset: str, output: Path, overrides: list[str] | None = None,
                    tokenizer: Path | None = None) -> Path:
    """Turn MiniMind weights of a known shape (``preset``, refined by ``arch.*`` overrides) into a run."""
    if preset not in PRESETS:
        raise SmoltrainError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    RunDir.check_new(output)  # before reading the weights
    # MiniMind's training keys (lm-pretrain) and the preset's shape and context (seq_len 340, its max_seq_len).
    cfg = lm_run_config(Path(output), [f"arch={preset}", *(overrides or [])])
    lm = cfg.arch.to_model_config()  # type: ignore[attr-defined]
    with torch.device("meta"):  # shapes only
        expected = LMForCausalLM(lm).state_dict()
    state = match_state(read_minimind_state(Path(checkpoint)), expected, lm.tie_word_embeddings, Path(checkpoint),
                        config_name=f"preset {preset}")
    imported = {"source": str(Path(checkpoint).absolute()), "format": "minimind", "preset": preset}
    return write_lm_run(Path(output), cfg, state, imported, tokenizer_dir=tokenizer)
