"""Memory-sharded data parallelism (``strategy=fsdp``) with torch's FSDP2 (``fully_shard``).

Each rank keeps 1/world_size of every parameter, gradient and optimizer state (DTensors sharded on dim 0); a
sharded unit (a decoder layer, then the rest of the model) all-gathers its weights just before its forward and
backward and reduce-scatters its gradients right after. The parameter names stay those of the plain model, so
checkpoints are written in the plain format: the full state dict is gathered (to rank 0's CPU) on save, and a
full state dict read from a checkpoint is cut into this rank's shards on load. A checkpoint of an fsdp run is
therefore one a single process reads, evaluates and resumes like any other.

Gradients are SUMMED over ranks, as under ``strategy=ddp`` (``all_reduce_grads``): every rank's loss is already
divided by the global batch size, so FSDP's default averaging is turned off (divide factor 1).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from smoltrain.runtime.distributed import _collective

# Rank 0 receives the full tensors, on the CPU (the other ranks get an empty dict): a checkpoint's worth of memory
# on one host's CPU, none on any accelerator.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Every rank has read the same full state from the checkpoint and keeps its own shards of it.
_SCATTER = StateDictOptions(full_state_dict=True)


def shard_model(model: nn.Module, units: list[nn.Module], param_dtype: torch.dtype | None) -> None:
    """Shard each of ``units`` (the decoder layers), then ``model`` itself (what is left: embeddings, final norm,
    head; a tied head shares its embedding's shards). ``param_dtype``: the dtype weights are all-gathered and run
    in (bf16 halves the traffic); gradients are reduced and kept in fp32, as are the sharded master weights."""
    # The decoder layers also return their (unused in training) KV entries, views FSDP warns about: nothing
    # updates them in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    with _collective("sharding the model (fsdp)"):
        # A unit frees its gathered weights after its forward (gathered again for its backward); the root keeps them
        # (its backward comes first). FSDP's defaults, spelled out: `unsharded` restores them.
        for unit in units:
            fully_shard(unit, mp_policy=policy, reshard_after_forward=True)
        fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum, as the loss is divided by the global batch size
            # A plain SUM collective (and a division by 1 after): gloo has no PREMUL_SUM, which FSDP would use.
            module.set_force_sum_reduction_for_comms(True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict on rank 0 (CPU tensors, the same keys as ``model.state_dict()`` before
    sharding); empty on the other ranks. A collective: every rank calls it."""
    with _collective("gathering the weights (fsdp)"):
        return get_model_state_dict(model, options=_GATHER)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain (full) state dict, which every rank holds, into the sharded model. A collective."""
    with _collective("loading the weights (fsdp)"):
        set_model_state_dict(model, state, options=_SCATTER)


def _param_names(named: dict[str, Any]) -> list[str]:
    """The parameter names of ``named`` (an optimizer state dict keyed by name) in the order of
    ``optimizer.state_dict()``'s integer ids: group by group, each group's parameters in order."""
    return [name for group in named["param_groups"] for name in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as a single process over the plain model would write it (integer parameter
    ids, full tensors on the CPU), on rank 0; every rank calls it (a collective), the others get ``{}``."""
    with _collective("gathering the optimizer state (fsdp)"):
        named = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    if not named:
        return {}
    names = _param_names(named)
    ids = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [ids[name] for name in group["params"]]} for group in named["param_groups"]]
    return {"state": {ids[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an ``optimizer.state_dict()`` of the plain model (integer ids; from any checkpoint, whatever its
    strategy) into the optimizer over the sharded parameters. A collective."""
    # The names in the optimizer's own order: the same walk torch's state dict helpers make.
    with _collective("reading the optimizer layout (fsdp)"):
        layout = get_optimizer_state_dict(model, optimizer, options=StateDictOptions())
    names = _param_names(layout)
    groups = [{**saved, "params": [names[i] for i in saved["params"]]} for saved in state["param_groups"]]
    named = {"state": {names[int(i)]: value for i, value in state["state"].items()}, "param_groups": groups}
    with _collective("loading the optimizer state (fsdp)"):
        set_optimizer_state_dict(model, optimizer, named, options=_SCATTER)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (a collective), or the tensor itself when it is not sharded."""
    if isinstance(tensor, DTensor):
        with _collective("gathering a sharded tensor (fsdp)"):
            return tensor.full_tensor()
    return tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full``, placed as ``like`` (a sharded parameter) is; no communication: every rank
    holds ``full``."""
    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """The whole model gathered on every rank for the duration (one all-gather per unit, in the same order on every
    rank), so the forwards inside need no collective: an evaluation may run a different number of them on each rank
    (uneven last batches, generation that stops at EOS). Resharded after."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # Not inference tensors (an evaluation runs under inference_mode): FSDP reuses these buffers in training.
    with _collective("gathering the weights for evaluation (fsdp)"), torch.inference_mode(False), torch.no_grad():
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # as `shard_model` set it
            unit.reshard()
