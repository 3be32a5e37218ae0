"""Low-rank adapters (LoRA, Hu et al. 2021) for any model made of ``nn.Linear`` layers, as PEFT builds them.

Read top to bottom: the adapted linear layer -> applying adapters to a model -> the adapter weights ->
merging them into the base weights.

A :class:`LoRALinear` *is* the ``nn.Linear`` it replaces (same ``weight``, same ``bias``, same state-dict
keys) plus two trainable matrices, so the base weights keep their names (``...self_attn.q_proj.weight``)
and a base checkpoint loads into an adapted model key for key::

    y = x @ W.T + b + scaling * dropout(x) @ A.T @ B.T        A: [rank, in], B: [out, rank]
    scaling = alpha / rank

Initialisation is PEFT's default (``init_lora_weights=True``): ``A`` Kaiming-uniform (as ``nn.Linear``
initialises its weight), ``B`` zero, so an adapted model starts equal to its base. The state-dict keys of
the adapter are ``<module>.lora_A`` and ``<module>.lora_B``; their shapes are those of PEFT's
``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, so exporting to PEFT renames and nothing else.

MiniMind's own LoRA (``llm.md`` §2.1) differs on purpose: it adapts only square layers, without
``alpha / rank`` scaling or dropout; here the targets are named and the scaling is PEFT's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smoltrain.errors import ConfigError

__all__ = [
    "ALL_LINEAR",
    "ADAPTER_SUFFIXES",
    "LoRALinear",
    "adapter_state_dict",
    "apply_lora",
    "is_adapter_key",
    "linear_names",
    "merge_adapter_weights",
    "merge_lora",
    "merged_weight",
    "remove_lora",
]

ALL_LINEAR = "all-linear"  # every linear layer but the output head, as PEFT's `target_modules="all-linear"`
OUTPUT_LAYERS = ("lm_head",)  # never adapted by all-linear (PEFT leaves the output layer alone too)
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update ``scaling * B @ A``; the base weight and bias are frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: the base's own weight (and bias) are taken as they are
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init of A: nn.Linear's own
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is ``W + scaling * B @ A`` (this layer unchanged)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(merged_weight(self.weight, self.lora_A, self.lora_B, self.scaling))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


# ---------------------------------------------------------------------------------------------------
# Applying adapters to a model


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (``q_proj``, ``down_proj``, ``lm_head``, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and name})


def _targets(model: nn.Module, targets: str | Sequence[str]) -> set[str]:
    """The last names to adapt; a name the model has no linear layer of is one :class:`ConfigError` line."""
    names = linear_names(model)
    if targets == ALL_LINEAR:
        return {name for name in names if name not in OUTPUT_LAYERS}
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        what = f"unknown target {', '.join(map(repr, unknown))}" if unknown else "no targets given"
        raise ConfigError(f"lora.targets: {what}; the model's linear layers are {', '.join(names)} "
                          f"(or lora.targets={ALL_LINEAR})")
    return set(targets)


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: str | Sequence[str] = ALL_LINEAR) -> list[str]:
    """Replace the targeted linear layers of ``model`` by :class:`LoRALinear` in place and freeze everything else
    (every parameter but the adapters gets ``requires_grad=False``). Returns the adapted modules' names.

    ``targets`` names layers by their last name (``["q_proj", "v_proj"]``), or is ``"all-linear"``."""
    if rank < 1:
        raise ValueError("LoRA needs rank >= 1")
    wanted = _targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear) and last in wanted:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, last, LoRALinear(module, rank, alpha, dropout))
            adapted.append(name)
    return adapted


# ---------------------------------------------------------------------------------------------------
# The adapter's weights


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is an adapter matrix (``...q_proj.lora_A``), not a base weight."""
    return key.endswith(ADAPTER_SUFFIXES)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter matrices of ``model`` only (what a LoRA checkpoint holds)."""
    return {key: value for key, value in model.state_dict().items() if is_adapter_key(key)}


# ---------------------------------------------------------------------------------------------------
# Merging


def merged_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                  scaling: float) -> torch.Tensor:
    """``W + scaling * B @ A``: the one formula every merge uses (a module or a state dict), so they agree bit
    for bit."""
    return weight + (lora_B @ lora_A) * scaling


def merge_adapter_weights(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A state dict with adapters (``K.lora_A``, ``K.lora_B`` beside ``K.weight``) as the plain model's: each
    adapter folded into its weight, the adapter keys gone. No model needed (a checkpoint's weights)."""
    merged = {key: value for key, value in state.items() if not is_adapter_key(key)}
    for key in state:
        if key.endswith(".lora_A"):
            module = key[: -len(".lora_A")]
            merged[f"{module}.weight"] = merged_weight(state[f"{module}.weight"], state[key],
                                                       state[f"{module}.lora_B"], scaling)
    return merged


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight in place (``W += scaling * B @ A``) and put plain ``nn.Linear``
    layers back, so the model has its base's state-dict keys again; returns ``model``. Its logits equal the
    adapted model's up to float rounding of the folded sum."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.merged())
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Drop every adapter in place (the base layers come back unchanged, sharing their weights); returns
    ``model``. How one loaded base switches from one adapter to another without being read again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            setattr(parent, name.rsplit(".", 1)[-1], plain)
    return model
