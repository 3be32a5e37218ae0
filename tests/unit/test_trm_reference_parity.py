"""Evaluation matches the reference code: the same weights give the reference port's per-step logits.

``bench/reference_trm.py`` is an eager port of the reference TRM (module names, init, recursion, ACT wrapper);
loaded with the same weights, smoltrain's TRM must evaluate (``torch.inference_mode``, as eval and solve run)
to its logits at every ACT step within 1e-5 relative. Inference takes the reference's operation order (one
fused SwiGLU GEMM on the transposed token-mixing input, the composite RMSNorm), so the match is exact on
the same machine; 1e-5 leaves room for nothing but that, while the recursion amplifies any difference in
rounding ~7x per ACT step (the fast training forms differ by 1e-1 after a few steps).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from smoltrain.models.trm import TRM
from tests.helpers import REPO


def _reference_port():
    if "reference_trm" in sys.modules:
        return sys.modules["reference_trm"]
    spec = importlib.util.spec_from_file_location("reference_trm", REPO / "bench" / "reference_trm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_trm"] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


SHAPE = dict(batch_size=8, seq_len=36, vocab_size=8, num_puzzle_identifiers=3, H_cycles=2, L_cycles=2, L_layers=2,
             hidden_size=64, expansion=4, num_heads=4, halt_max_steps=4, halt_exploration_prob=0.0, puzzle_emb_ndim=64,
             puzzle_emb_len=4)


@pytest.mark.parametrize(("mlp_t", "pos_encodings"), [(True, "none"), (False, "rope"), (False, "learned")],
                         ids=["mlp_t", "rope", "learned"])
def test_evaluation_gives_the_reference_logits_at_every_act_step(mlp_t: bool, pos_encodings: str) -> None:
    reference = _reference_port()
    torch.manual_seed(0)
    ref = reference.ACTModel(reference.RefConfig(**SHAPE, pos_encodings=pos_encodings, mlp_t=mlp_t,
                                                 forward_dtype=torch.float32))
    with torch.no_grad():  # weights of a trained model's size, not the zero / constant inits
        for tensor in ref.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.3)
    ours = TRM({**SHAPE, "pos_encodings": pos_encodings, "mlp_t": mlp_t, "forward_dtype": "float32"})
    ours.load_state_dict(ref.state_dict())  # the reference's names: strict
    ref.eval()
    ours.eval()
    generator = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(0, 8, (8, 36), dtype=torch.int32, generator=generator),
             "puzzle_identifiers": torch.randint(0, 3, (8,), dtype=torch.int32, generator=generator)}
    with torch.inference_mode():
        ref_carry, our_carry = ref.initial_carry(batch), ours.initial_carry(batch)
        for step in range(SHAPE["halt_max_steps"]):
            ref_carry, want = ref(ref_carry, batch)
            our_carry, got = ours(our_carry, batch)
            for key in ("logits", "q_halt_logits"):
                scale = want[key].abs().max()
                assert (got[key] - want[key]).abs().max() <= 1e-5 * scale, (step, key)
