"""Dynamic int8 quantization of a model's linear layers, for CPU inference (``--quantize int8``).

torch's own dynamic quantization (``torch.ao.quantization.quantize_dynamic``): each ``nn.Linear`` becomes a
``DynamicQuantizedLinear`` whose weight is stored in int8 (one scale per tensor) and whose input is quantized on
the fly, batch by batch; the matmul runs in int8 with fp32 accumulation and the output is fp32 again. Embeddings,
norms and attention's softmax stay fp32. torch's int8 kernels (fbgemm / onednn / qnnpack) run on the CPU only,
so a model on CUDA or MPS is refused. A tied output head (``lm_head`` sharing the embedding's weight) gets an int8
copy of that weight, and the embedding keeps its fp32 one.

LoRA adapters must be merged into their base weights before (``models.lora.merge_lora``): a quantized layer has no
fp32 weight to add an adapter's update to. :func:`quantize_int8` merges any adapters it finds.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from smoltrain.errors import ConfigError
from smoltrain.models.lora import merge_lora

QUANTIZE_CHOICES = ("int8",)  # what --quantize takes


def quantize_device(requested: str, quantize: str | None) -> str:
    """The device to load a model on for ``quantize``: ``auto`` is the CPU (the only device the int8 kernels run
    on); cuda and mps are refused with one line. Without ``quantize``, ``requested`` as it is."""
    if quantize is None:
        return requested
    if requested == "auto":
        return "cpu"
    try:
        kind = torch.device(requested).type
    except RuntimeError:
        return requested  # not a device at all: the loader says so
    if kind != "cpu":
        raise ConfigError(f"--quantize {quantize} is dynamic quantization for CPU inference (torch's int8 kernels "
                          f"run on the CPU only), and --device {requested} is not the CPU: pass --device cpu, or "
                          "drop --quantize on a GPU")
    return requested


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` (on the CPU, in eval mode) with every ``nn.Linear`` dynamically quantized to int8, in place; LoRA
    adapters are merged into their base weights first. Returns ``model``."""
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ConfigError(f"int8 quantization runs on the CPU only, and the model is on {', '.join(sorted(devices))}: "
                          "load it with device=cpu")
    merge_lora(model)  # plain nn.Linear layers, which quantize_dynamic recognises (a LoRALinear subclass it skips)
    with warnings.catch_warnings():
        # torch 2.13 marks its eager quantization API deprecated in favour of the separate torchao package; it is
        # still the API torch itself ships, and these two notices would otherwise print on every load (the
        # second is the quantized-tensor constructors it calls internally). Only these two are silenced.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantized linear layers."""
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
