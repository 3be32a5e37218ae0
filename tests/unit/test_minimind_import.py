"""`smoltrain import minimind`: MiniMind-named state dicts (fp16, DDP/compile prefixes, resume files)."""

from __future__ import annotations

import pytest
import torch

import smoltrain
from smoltrain.cli import main
from smoltrain.errors import SmoltrainError
from smoltrain.interop.minimind import import_minimind
from smoltrain.models.lm import LMConfig, LMForCausalLM

SMALL = ["arch.hidden_size=64", "arch.num_hidden_layers=2", "arch.num_attention_heads=4",
         "arch.num_key_value_heads=2", "arch.intermediate_size=128"]


def _minimind_like_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = LMForCausalLM(LMConfig(vocab_size=6400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, qk_norm=False, rms_norm_eps=1e-5))
    return {k: v.half() for k, v in model.state_dict().items()}  # MiniMind saves fp16


@pytest.mark.parametrize("container", ["bare", "resume", "ddp_prefix"])
def test_import_gives_the_same_weights(tmp_path, container):
    weights = _minimind_like_weights()
    payload: object = weights
    if container == "resume":
        payload = {"model": weights, "optimizer": {}, "step": 7}
    elif container == "ddp_prefix":
        payload = {f"module.{k}": v for k, v in weights.items()}
    torch.save(payload, tmp_path / "pretrain_64.pth")
    out = import_minimind(tmp_path / "pretrain_64.pth", "minimind2-26m", tmp_path / "run", SMALL)
    run = smoltrain.load(out, device="cpu")
    loaded = run.model.state_dict()
    assert all(torch.equal(loaded[k], weights[k].float()) for k in weights)
    assert run.config.arch.qk_norm is False  # MiniMind2 is Llama-shaped


def test_shape_mismatch_is_one_line(tmp_path, capsys):
    torch.save(_minimind_like_weights(), tmp_path / "w.pth")
    code = main(["import", "minimind", "--checkpoint", str(tmp_path / "w.pth"), "--preset", "minimind2-26m",
                 "--output", str(tmp_path / "run")])  # the full 512-wide preset: shapes differ
    assert code == 2
    err = capsys.readouterr().err
    assert "has shape" in err and "preset minimind2-26m" in err and not (tmp_path / "run").exists()


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    with pytest.raises(SmoltrainError, match="not a readable PyTorch state dict"):
        import_minimind(tmp_path / "bad.pth", "minimind2-26m", tmp_path / "run", SMALL)
