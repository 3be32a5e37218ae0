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
import tempfile
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


def reference_head(variant: str, seed: int = 0) -> ref.ACTLossHead:
    """The reference loss head + model of ``variant`` with random weights of a trained model's size
    (N(0, 0.3) everywhere: the zero / constant inits of q_head and the puzzle table would test nothing)."""
    arch, changes = VARIANTS[variant]
    torch.manual_seed(seed)
    head = ref.ACTLossHead(ref.ACTModel(ref.RefConfig(**{**SHAPE, **changes}, forward_dtype=torch.float32), arch))
    with torch.no_grad():
        for tensor in head.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.3)
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


def per_step_differences(reference: ref.ACTModel, ours: torch.nn.Module,
                         batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Both models evaluated as eval and solve run them; per ACT step, the relative difference of each output."""
    reference.eval()
    ours.eval()
    steps: list[dict[str, float]] = []
    with torch.inference_mode():
        ref_carry, our_carry = reference.initial_carry(batch), ours.initial_carry(batch)
        for _ in range(reference.config.halt_max_steps):
            ref_carry, want = reference(ref_carry, batch)
            our_carry, got = ours(our_carry, batch)
            steps.append({key: float((got[key] - want[key]).abs().max() / want[key].abs().max())
                          for key in OUTPUT_KEYS})
    return steps


def measure(variant: str, folder: Path, *, compiled: bool = False) -> list[dict[str, float]]:
    head = reference_head(variant)
    run = import_as_smoltrain(head, folder, compiled=compiled)
    return per_step_differences(head.model, run.model.model, evaluation_batch())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, {SHAPE['halt_max_steps']} ACT steps")
    print("| variant | reference arch | logits | q_halt_logits | q_continue_logits |")
    print("|---|---|---:|---:|---:|")
    for variant, (arch, _changes) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            steps = measure(variant, Path(tmp), compiled=True)
        worst = {key: max(step[key] for step in steps) for key in OUTPUT_KEYS}
        print(f"| {variant} | {arch} | " + " | ".join(f"{worst[key]:.1e}" for key in OUTPUT_KEYS) + " |")


if __name__ == "__main__":
    main()
