"""What one training step costs, for `smoltrain info`: FLOPs counted from the model's matrix products, the memory
of parameters, gradients, optimizer state and activations, and where the parameters are.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a forward and backward of one real
micro-batch of the run's data (through the family's own ``train_step``, so TRM's recursion and the LM's loss are
what a training step runs; measured on one and two rows and extrapolated, see :func:`measure_step`): matrix
products and attention only, the way FLOPs are quoted; elementwise ops, norms and embedding lookups are not
counted. Activation memory is what autograd saves for the backward pass in
that forward (each tensor storage once), under the run's precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smoltrain.config import TrainConfig
from smoltrain.errors import ConfigError
from smoltrain.families import build_family
from smoltrain.families.base import Family
from smoltrain.fileio import atomic_write_bytes, writing
from smoltrain.runs.curves import has_matplotlib
from smoltrain.runtime.device import DTYPES
from smoltrain.runtime.distributed import DistEnv

ADAM_STATE_PER_PARAM = 2  # first and second moments, fp32: AdamW and AdamATan2 alike


@dataclass
class StepCost:
    flops_per_micro_batch: int  # forward + backward of one micro-batch on one rank
    flops_per_step: int  # the global batch: every micro-batch of every rank
    flops_per_sample: float
    flops_per_token: float
    activation_bytes: int  # saved for backward by one micro-batch
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    precision: str
    micro_batch_size: int


def _autocast(family: Family, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32" or not family.uses_autocast:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[precision])


def count_micro_batch(family: Family, model: nn.Module, precision: str) -> tuple[int, int]:
    """(FLOPs, bytes of activations saved for backward) of a forward and backward of one micro-batch."""
    batch = next(family.train_stream())
    micro = {k: v[: family.micro_batch_size] for k, v in batch.items()}
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # weights (and views of them) are parameters, not activations
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(family, precision):
            out = family.train_step(model, micro, None)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops()), sum(saved.values())


def measure_step(cfg: TrainConfig, precision: str = "fp32") -> StepCost:
    """Count one training step of the (resolved) ``cfg`` on its data, on the CPU.

    A GPU recipe's micro-batch would take minutes through a CPU, so the step is run on micro-batches of one and
    two rows and extrapolated to the real one: both counts are affine in the rows (matrix products and saved
    activations per row, plus what does not depend on the batch, such as rotary tables)."""
    cpu = torch.device("cpu")
    real = build_family(cfg, DistEnv(), cpu)
    rows = real.micro_batch_size
    counts = {}
    for size in sorted({1, min(2, rows)}):
        family = build_family(cfg.model_copy(update={"global_batch_size": size, "grad_accum_steps": 1}), DistEnv(), cpu)
        counts[size] = count_micro_batch(family, family.build_model(), precision)
    (flops_1, act_1), (flops_2, act_2) = counts[1], counts[min(2, rows)]
    per_micro = flops_1 + (flops_2 - flops_1) * (rows - 1)
    activations = act_1 + (act_2 - act_1) * (rows - 1)
    seq_len = getattr(cfg.arch, "seq_len", None) or 1
    model = real.build_model()
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return StepCost(
        flops_per_micro_batch=per_micro,
        flops_per_step=per_micro * (cfg.global_batch_size // rows),
        flops_per_sample=per_micro / rows,
        flops_per_token=per_micro / rows / seq_len,
        activation_bytes=activations,
        parameter_bytes=sum(p.numel() * p.element_size() for p in params),
        gradient_bytes=sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        optimizer_bytes=ADAM_STATE_PER_PARAM * 4 * trainable,
        precision=precision,
        micro_batch_size=rows,
    )


def parameter_table(model: nn.Module, min_rows: int = 4, max_depth: int = 4) -> list[tuple[str, int]]:
    """(module name, parameters in it and below), in the order the model defines them; shared weights count once.

    Repeated blocks are added up under one name (``model.layers.*.mlp``: all layers' MLPs), and the table goes as
    many levels down as it takes to have ``min_rows`` rows (a TRM's whole model sits under ``model.inner``)."""
    named, seen = [], set()
    for name, param in model.named_parameters():
        if id(param) not in seen:
            seen.add(id(param))
            named.append(([("*" if part.isdigit() else part) for part in name.split(".")], param.numel()))
    counts: dict[str, int] = {}
    for depth in range(1, max_depth + 1):
        counts = {}
        for parts, n in named:
            key = ".".join(parts[: min(depth, len(parts) - 1)] or parts)
            counts[key] = counts.get(key, 0) + n
        if len(counts) >= min_rows:
            break
    return list(counts.items())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_flops(n: float) -> str:
    for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} FLOP"


def cost_facts(cost: StepCost) -> dict[str, Any]:
    """The lines `smoltrain info` prints about a step's cost."""
    state = cost.parameter_bytes + cost.gradient_bytes + cost.optimizer_bytes
    return {
        "flops_per_step": f"{cost.flops_per_step:,} ({human_flops(cost.flops_per_step)}, forward + backward of the "
                          "global batch, matrix products)",
        "flops_per_sample": f"{cost.flops_per_sample:,.0f}",
        "flops_per_token": f"{cost.flops_per_token:,.0f}",
        "parameter_memory": f"{human_bytes(cost.parameter_bytes)} weights + {human_bytes(cost.gradient_bytes)} "
                            f"gradients + {human_bytes(cost.optimizer_bytes)} Adam state = {human_bytes(state)}",
        "activation_memory": f"{human_bytes(cost.activation_bytes)} saved for backward per micro-batch of "
                             f"{cost.micro_batch_size} ({cost.precision})",
    }


def parameter_lines(table: list[tuple[str, int]]) -> list[str]:
    """``table`` as aligned lines: name, count, share of the model."""
    total = sum(n for _, n in table) or 1
    width = max((len(name) for name, _ in table), default=0)
    return [f"  {name:<{width}}  {count:>12,}  {100 * count / total:5.1f}%" for name, count in table]


def plot_parameters(table: list[tuple[str, int]], output: Path, arch: str) -> Path:
    """A horizontal bar chart of ``table`` (``smoltrain info --plot``) written to ``output``; needs matplotlib."""
    if not has_matplotlib():
        raise ConfigError("--plot needs matplotlib: pip install 'smoltrain[plot]'")
    import io

    from matplotlib.figure import Figure

    total = sum(n for _, n in table) or 1
    title = f"{arch}: {total:,} parameters"
    figure = Figure(figsize=(8, 0.6 + 0.32 * len(table)), layout="constrained")
    ax = figure.subplots()
    names = [name for name, _ in table][::-1]
    values = [n for _, n in table][::-1]
    bars = ax.barh(names, values, color="C0")
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,} ({100 * value / total:.1f}%)",
                va="center", fontsize=8)
    ax.set_xlabel("parameters")
    ax.set_xlim(0, max(values) * 1.35 if values else 1)
    ax.set_title(title)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, metadata={"smoltrain:bars": str(len(table))})
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, out.getvalue())
    return output
