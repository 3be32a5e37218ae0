"""The positional and attention options through Hugging Face export/import and GGUF export: what Qwen3 / Llama
configs express (``rope_scaling``, Qwen3's sliding window) gives transformers' logits; the rest is refused in one
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import smoltrain
from smoltrain.errors import SmoltrainError
from smoltrain.interop.hf import export_hf, import_hf
from tests.unit.test_hf_interop import make_run

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is needed for the HF parity tests")

pytestmark = pytest.mark.usefixtures("single_thread")

# Trained on 16 positions (max_position_embeddings for linear/dynamic, original_... for yarn); the test reads 40.
SCALINGS = {
    "linear": "{rope_type: linear, factor: 2.5}",
    "dynamic": "{rope_type: dynamic, factor: 3.0}",
    "yarn": "{rope_type: yarn, factor: 4.0, original_max_position_embeddings: 16}",
    "yarn-tuned": "{rope_type: yarn, factor: 4.0, original_max_position_embeddings: 16, beta_fast: 8.0, "
                  "beta_slow: 2.0, attention_factor: 1.2}",
}


def _hf_logits_match(out: Path, ours: torch.nn.Module, length: int) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Tiny fp32 models, the same operations in a different order: agreement to ~1e-6, asserted at 1e-4.
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_rope_scaling_exports_to_transformers_and_back(tmp_path: Path, name: str, qk_norm: bool) -> None:
    ours = make_run(tmp_path / "run", f"arch.qk_norm={qk_norm}", f"arch.rope_scaling={SCALINGS[name]}",
                    "arch.max_position_embeddings=16", "arch.rope_theta=100.0")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == config["rope_parameters"]["rope_type"] == name.split("-")[0]
    _hf_logits_match(out, ours, 40)  # past the trained 16: dynamic's base has grown, yarn's ramp matters
    # Decoding with a cache past the trained length: dynamic's base grows step by step on both sides.
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(2))
    hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, max_new_tokens=24, temperature=0), hf_gen)

    run2 = import_hf(out, tmp_path / "imported")
    assert smoltrain.load(run2, device="cpu").config.arch.rope_scaling == ours.config.rope_scaling


def test_sliding_window_exports_as_qwen3_on_every_layer_and_back(tmp_path: Path) -> None:
    ours = make_run(tmp_path / "run", "arch.sliding_window=5")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["use_sliding_window"], config["sliding_window"], config["max_window_layers"]) == (True, 5, 0)
    _hf_logits_match(out, ours, 17)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(2))
    hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, max_new_tokens=12, temperature=0), hf_gen)  # our cache keeps 4 columns

    run2 = import_hf(out, tmp_path / "imported")
    assert smoltrain.load(run2, device="cpu").config.arch.sliding_window == 5


def test_export_refuses_what_transformers_cannot_express(tmp_path: Path) -> None:
    make_run(tmp_path / "xpos", "arch.xpos=true")
    with pytest.raises(SmoltrainError, match="XPos .* has no counterpart in Hugging Face"):
        export_hf(tmp_path / "xpos", tmp_path / "hf1")
    make_run(tmp_path / "llama_window", "arch.qk_norm=false", "arch.sliding_window=4")
    with pytest.raises(SmoltrainError, match="HF Llama has no sliding-window attention"):
        export_hf(tmp_path / "llama_window", tmp_path / "hf2")
    assert not (tmp_path / "hf1").exists() and not (tmp_path / "hf2").exists()
    # attention=math is numerics only: it exports, to the same model.
    ours = make_run(tmp_path / "math", "arch.attention=math")
    _hf_logits_match(export_hf(tmp_path / "math", tmp_path / "hf3"), ours, 9)


@pytest.mark.parametrize(("change", "message"), [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3' is not supported"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 8.0}}, "RoPE scaling 'longrope' is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 0.7}}, "rope_scaling key 'mscale'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "rope_scaling .* is not valid"),
    ({"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1, "layer_types": None},
     "sliding-window attention on some layers only"),
])
def test_import_refuses_positional_configs_it_would_compute_differently(tmp_path: Path, change: dict,
                                                                        message: str) -> None:
    make_run(tmp_path / "run")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config.pop("rope_parameters")  # a transformers-4 style config: rope_scaling and rope_theta
    config.update(change)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SmoltrainError, match=message):
        import_hf(out, tmp_path / "imported")


def test_import_maps_transformers_defaults(tmp_path: Path) -> None:
    """What transformers fills in: yarn's original length from max_position_embeddings, a sliding window off unless
    use_sliding_window, and linear's unused keys ignored."""
    make_run(tmp_path / "run")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config.pop("rope_parameters")
    config.update({"rope_scaling": {"type": "yarn", "factor": 2.0}, "max_position_embeddings": 64,
                   "use_sliding_window": False, "sliding_window": 4096})
    (out / "config.json").write_text(json.dumps(config))
    arch = smoltrain.load(import_hf(out, tmp_path / "imported"), device="cpu").config.arch
    assert arch.rope_scaling.rope_type == "yarn" and arch.rope_scaling.original_max_position_embeddings == 64
    assert arch.sliding_window is None


def test_gguf_writes_linear_and_yarn_and_refuses_the_rest(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from smoltrain.interop.gguf_export import export_gguf
    from tests.unit.test_gguf_export import _run, _value

    bpe = tmp_path / "bpe"
    from smoltrain.data.tokenizer import train_tokenizer
    from tests.helpers import make_sentences

    bpe.mkdir()
    (bpe / "corpus.txt").write_text("\n\n".join(make_sentences(300)) + "\n")
    bpe_dir = train_tokenizer([bpe / "corpus.txt"], 300, bpe / "tok")
    _run(tmp_path / "yarn", bpe_dir, f"arch.rope_scaling={SCALINGS['yarn']}")
    reader = gguf.GGUFReader(str(export_gguf(tmp_path / "yarn" / "run", tmp_path / "yarn.gguf")))
    assert _value(reader, "qwen3.rope.scaling.type") == "yarn"
    assert _value(reader, "qwen3.rope.scaling.factor") == 4.0
    assert _value(reader, "qwen3.rope.scaling.original_context_length") == 16
    _run(tmp_path / "linear", bpe_dir, "arch.qk_norm=false", f"arch.rope_scaling={SCALINGS['linear']}")
    reader = gguf.GGUFReader(str(export_gguf(tmp_path / "linear" / "run", tmp_path / "linear.gguf")))
    assert _value(reader, "llama.rope.scaling.type") == "linear" and _value(reader, "llama.rope.scaling.factor") == 2.5
    for name, extra, message in [
        ("dynamic", f"arch.rope_scaling={SCALINGS['dynamic']}", "llama.cpp has no dynamic NTK"),
        ("tuned", f"arch.rope_scaling={SCALINGS['yarn-tuned']}", "beta_fast=32, beta_slow=1"),
        ("xpos", "arch.xpos=true", "XPos .* no counterpart in llama.cpp"),
        ("window", "arch.sliding_window=4", "cannot go into GGUF"),
    ]:
        _run(tmp_path / name, bpe_dir, extra)
        with pytest.raises(SmoltrainError, match=message):
            export_gguf(tmp_path / name / "run", tmp_path / f"{name}.gguf")
        assert not (tmp_path / f"{name}.gguf").exists()
