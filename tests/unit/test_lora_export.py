"""Exporting a LoRA run: merged into one transformers model, or as a PEFT adapter on its exported base; both give
the adapted model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import smoltrain
from smoltrain.config import config_to_yaml
from smoltrain.errors import SmoltrainError
from smoltrain.families import load_config
from smoltrain.interop.hf import export_hf, export_peft
from smoltrain.models.lora import LoRALinear, adapter_state_dict, apply_lora
from smoltrain.runs import checkpoint as ckpt
from tests.unit.test_hf_interop import make_run

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is needed for the HF parity tests")

SHAPE = ["arch=lm", "arch.vocab_size=64", "arch.hidden_size=32", "arch.num_hidden_layers=2",
         "arch.num_attention_heads=4", "arch.num_key_value_heads=2", "data_paths=[]"]


def make_lora_run(base: Path, run_dir: Path, *lora: str, seed: int = 3) -> torch.nn.Module:
    """A LoRA run on ``base`` written as the trainer writes one: config.yaml (init_from, lora.*) and a checkpoint of
    adapters only with a pointer to the base; the adapters are random (B != 0), as trained ones are."""
    cfg = load_config(None, [*SHAPE, f"run_dir={run_dir}", f"init_from={base}", *lora])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    model = smoltrain.load(base, device="cpu").model
    apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(0.1 * torch.randn(module.lora_B.shape, generator=generator))
    base_step = ckpt.list_checkpoints(base / "checkpoints")[-1]
    state = {"step": 1, "base": ckpt.base_pointer(base_step), "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha}}
    ckpt.save_checkpoint(run_dir / "checkpoints", 1, adapter_state_dict(model), None, state, keep=1)
    return model.eval()


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module]:
    make_run(tmp_path / "base", tokenizer=True)
    adapted = make_lora_run(tmp_path / "base", tmp_path / "lora", "lora.rank=4", "lora.alpha=8",
                            "lora.targets=all-linear")
    return tmp_path / "base", tmp_path / "lora", adapted


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def test_the_loader_rebuilds_the_adapted_model(runs) -> None:
    _, lora, adapted = runs
    with torch.no_grad():
        assert torch.equal(smoltrain.load(lora, device="cpu").model(_ids()).logits, adapted(_ids()).logits)


def test_merged_export_has_the_adapted_logits_in_transformers(runs, tmp_path: Path) -> None:
    _, lora, adapted = runs
    with pytest.raises(SmoltrainError, match="is a LoRA run .*add --merge"):
        export_hf(lora, tmp_path / "hf")
    out = export_hf(lora, tmp_path / "hf", merge=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        # The merged weights fold B@A into W; the sums then round in another order, and transformers' kernels are
        # not ours: fp32 logits of O(1) agree to ~1e-6, the bound is 1e-5.
        torch.testing.assert_close(hf(_ids()).logits, adapted(_ids()).logits, atol=1e-5, rtol=0)


def test_peft_adapter_loads_on_its_exported_base_with_the_same_logits(runs, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft", reason="peft (dev extra) is needed for the PEFT round trip")
    base, lora, adapted = runs
    out = export_peft(lora, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(out / "base").eval()
    with torch.no_grad():  # the base beside the adapter is the one they were trained on
        plain = smoltrain.load(base, device="cpu").model
        torch.testing.assert_close(hf_base(_ids()).logits, plain(_ids()).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(plain(_ids()).logits, adapted(_ids()).logits, atol=1e-2)  # the adapters matter
    model = peft.PeftModel.from_pretrained(hf_base, out).eval()
    with torch.no_grad():  # PEFT computes the unmerged sum as we do; only the attention kernels differ
        torch.testing.assert_close(model(_ids()).logits, adapted(_ids()).logits, atol=1e-5, rtol=0)
    with pytest.raises(SmoltrainError, match="has no adapters"):
        export_peft(base, tmp_path / "peft2")
