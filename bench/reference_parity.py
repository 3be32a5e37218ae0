"""Evaluation parity with the reference code: a reference checkpoint, imported, gives the reference's logits.

    python bench/reference_parity.py     # max relative difference per variant (table), all ACT steps

For each variant (TRM-MLP, TRM-Att with RoPE, TRM with learned positions, HRM, single-z TRM) the reference port
``reference_trm.py`` (written from ``trm.md``, importing nothing from smoltrain) gets random weights of a
trained model's size, writes them as the reference does (``step_N`` + ``all_config.yaml``), smoltrain imports
them through ``import_reference_checkpoint`` (what ``smoltrain import trm`` runs) and loads the run with
``smoltrain.load``; both then evaluate the same batch (eval mode, ``torch.inference_mode``, every ACT step).
The difference of a tensor is ``max |ours - reference| / max |reference|`` (relative to the tensor's scale,
so that entries near zero do not blow it up). ``tests/unit/test_trm_reference_parity.py`` asserts <= 1e-5.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import reference_trm as ref  # bench/ is on sys.path when this file runs as a script (the test loads it so too)
import smoltrain
from smoltrain.interop.trm_import import import_reference_checkpoint

# Tiny fp32 shapes (2 cores): 36 cells, 4 prefix positions, D 64, T=2 n=2, 4 ACT steps.
SHAPE: dict[str, Any] = dict(
    batch_size=8, seq_len=36, vocab_size=8, num_puzzle_identifiers=3, H_cycles=2, L_cycles=2, L_layers=2,
    hidden_size=64, expansion=4, num_heads=4, halt_max_steps=4, halt_exploration_prob=0.0, puzzle_emb_ndim=64,
    puzzle_emb_len=4,
)
# name -> (reference arch, config changes)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp_t": ("trm", {"mlp_t": True, "pos_encodings": "none"}),
    "rope": ("trm", {"pos_encodings": "rope"}),
    "learned": ("trm", {"pos_encodings": "learned"}),
    # 80-wide puzzle vectors: HRM's prefix is ceil(80 / 64) = 2 positions (its puzzle_emb_len field does not exist).
    "hrm": ("hrm", {"pos_encodings": "rope", "H_layers": 2, "puzzle_emb_ndim": 80}),
    "single-z": ("trm_singlez", {"pos_encodings": "rope"}),
}
OUTPUT_KEYS = ("logits", "q_halt_logits", "q_continue_logits")


def reference_head(variant: str, seed: int = 0, *, weights: str = "wide") -> ref.ACTLossHead:
    """The reference loss head + model of ``variant`` with random weights.

    ``weights="wide"``: N(0, 0.3) everywhere, wider than the reference init (std 1/sqrt(fan_in) = 0.125 at D 64),
    which makes the recursion chaotic: one ulp anywhere grows to O(1) within an ACT step or two, so evaluation
    agrees within 1e-5 only if both sides compute the same thing in the same order. ``weights="init"``: the
    reference init, except the tensors it starts constant (q_head zero / -5, the zero puzzle table), drawn at the
    same scale; the recursion is then tame (one ulp stays ~1e-6), for comparing forms that round differently.
    """
    arch, changes = VARIANTS[variant]
    torch.manual_seed(seed)
    head = ref.ACTLossHead(ref.ACTModel(ref.RefConfig(**{**SHAPE, **changes}, forward_dtype=torch.float32), arch))
    with torch.no_grad():
        for tensor in head.state_dict().values():
            if not tensor.is_floating_point():
                continue
            if weights == "wide":
                tensor.normal_(0.0, 0.3)
            elif tensor.ndim == 1 and tensor.numel() == 2:  # q_head.bias: small, so that some slots halt, some not
                tensor.normal_(0.0, 0.1)
            elif bool((tensor == tensor.flatten()[0]).all()):  # q_head.weight, puzzle_emb.weights
                tensor.normal_(0.0, tensor.shape[-1] ** -0.5)
    return head


def import_as_smoltrain(head: ref.ACTLossHead, folder: Path, *, compiled: bool,
                        all_config: dict[str, Any] | None = None) -> smoltrain.LoadedRun:
    """Write ``head`` as a reference checkpoint under ``folder``, import it and load the run (CPU)."""
    path = ref.save_reference_checkpoint(head, folder / "reference", step=7, compiled=compiled, all_config=all_config)
    config = head.model.config
    seq_len = config.seq_len if config.pos_encodings == "rope" else None  # otherwise the weights tell it
    run_dir = import_reference_checkpoint(path, folder / "run", seq_len=seq_len)
    return smoltrain.load(run_dir, device="cpu")


def evaluation_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows, length = SHAPE["batch_size"], SHAPE["seq_len"]
    return {"inputs": torch.randint(0, SHAPE["vocab_size"], (rows, length), dtype=torch.int32, generator=generator),
            "puzzle_identifiers": torch.randint(0, SHAPE["num_puzzle_identifiers"], (rows,), dtype=torch.int32,
                                                generator=generator)}


def per_step_differences(reference: ref.ACTModel, ours: torch.nn.Module, batch: dict[str, torch.Tensor], *,
                         training: bool = False, new_batch: Callable[[int], dict[str, torch.Tensor]] | None = None,
                         ) -> list[dict[str, float]]:
    """Per ACT step, the relative difference of each output of both models on the same batches.

    Default: as eval and solve run them (eval mode, ``torch.inference_mode``, every slot runs every step).
    ``training``: train mode (under ``no_grad``: the forward values are those of a training step), where slots
    halt by their q logits and take ``new_batch(step)``'s sample. Besides the outputs: ``halted``, the slots the
    reference halts, and ``halted_mismatch``, the slots whose halting decision differs.
    """
    reference.train(training)
    ours.train(training)
    steps: list[dict[str, float]] = []
    with torch.no_grad() if training else torch.inference_mode():
        ref_carry, our_carry = reference.initial_carry(batch), ours.initial_carry(batch)
        for step in range(reference.config.halt_max_steps):
            step_batch = new_batch(step) if new_batch is not None else batch
            ref_carry, want = reference(ref_carry, step_batch)
            our_carry, got = ours(our_carry, step_batch)
            keys = [key for key in want if key in OUTPUT_KEYS or key == "target_q_continue"]
            assert set(keys) == {key for key in got if key in OUTPUT_KEYS or key == "target_q_continue"}, keys
            differences = {key: float((got[key] - want[key]).abs().max() / want[key].abs().max()) for key in keys}
            differences["halted_mismatch"] = float((ref_carry.halted != our_carry.halted).sum())
            differences["halted"] = float(ref_carry.halted.sum())
            steps.append(differences)
    reference.eval()
    ours.eval()
    return steps


def measure(variant: str, folder: Path, *, compiled: bool = False) -> list[dict[str, float]]:
    head = reference_head(variant)
    run = import_as_smoltrain(head, folder, compiled=compiled)
    return per_step_differences(head.model, run.model.model, evaluation_batch())


def one_ulp_apart(model: ref.ACTModel) -> ref.ACTModel:
    """A copy of ``model`` whose first block's ``mlp.gate_up_proj.weight`` entries are each one ulp larger:
    how far a rounding-sized change travels through the recursion."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        weight = other.inner.L_level.layers[0].mlp.gate_up_proj.weight
        weight.copy_(torch.nextafter(weight, torch.full_like(weight, torch.inf)))
    return other


def training_batch(step: int) -> dict[str, torch.Tensor]:
    return evaluation_batch(seed=100 + step)  # new samples each step: halted slots take them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, {SHAPE['halt_max_steps']} ACT steps; "
          "max over the steps of max |ours - reference| / max |reference|")
    print()
    print("| variant | reference arch | logits | q_halt_logits | q_continue_logits | reference vs itself, one ulp "
          "in one weight (logits) | train mode, init-scale weights: logits / halting decisions differing |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant, (arch, _changes) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            steps = measure(variant, Path(tmp), compiled=True)
            head = reference_head(variant)
            nudged = per_step_differences(head.model, one_ulp_apart(head.model), evaluation_batch())
            head = reference_head(variant, weights="init")
            run = import_as_smoltrain(head, Path(tmp) / "init", compiled=False)
            trained = per_step_differences(head.model, run.model.model, evaluation_batch(), training=True,
                                           new_batch=training_batch)
        assert all(step["halted_mismatch"] == 0 for step in steps)  # eval: every slot runs every step
        worst = {key: max(step[key] for step in steps) for key in OUTPUT_KEYS}
        print(f"| {variant} | {arch} | " + " | ".join(f"{worst[key]:.1e}" for key in OUTPUT_KEYS)
              + f" | {max(step['logits'] for step in nudged):.1e} | {max(step['logits'] for step in trained):.1e}"
              f" / {sum(int(step['halted_mismatch']) for step in trained)} |")


if __name__ == "__main__":
    main()
