"""`smoltrain export --format gguf`: the file read back with gguf's own reader holds the architecture, the
hyper-parameters, the tokenizer and every tensor of the run, under llama.cpp's names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smoltrain.cli import main
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.errors import SmoltrainError
from smoltrain.interop.gguf_export import export_gguf, gguf_tensor_name, llama_rope_rows
from smoltrain.models.lm import apply_rope, rope_cos_sin
from tests.helpers import make_sentences
from tests.unit.test_hf_interop import make_run

gguf = pytest.importorskip("gguf", reason="the gguf package (dev extra) reads the exported file back")


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gguf_tok")
    (root / "corpus.txt").write_text("\n\n".join(make_sentences(300)) + "\n")
    return train_tokenizer([root / "corpus.txt"], 300, root / "tok")


def _run(tmp_path: Path, bpe_dir: Path, *extra: str):
    # 304 rows for a 300-token tokenizer: llama.cpp wants one token per row, the last four are padding.
    model = make_run(tmp_path / "run", "arch.vocab_size=304", *extra)
    (tmp_path / "run" / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "run" / "tokenizer" / name).write_bytes((bpe_dir / name).read_bytes())
    return model


def _value(reader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


@pytest.mark.parametrize(("qk_norm", "tied"), [(True, True), (True, False), (False, True), (False, False)])
def test_gguf_reads_back_as_the_run(tmp_path: Path, bpe_dir: Path, qk_norm: bool, tied: bool) -> None:
    model = _run(tmp_path, bpe_dir, f"arch.qk_norm={qk_norm}", f"arch.tie_word_embeddings={tied}",
                 "arch.rope_theta=10000.0", "arch.rms_norm_eps=1e-5")
    out = export_gguf(tmp_path / "run", tmp_path / "model.gguf")
    reader = gguf.GGUFReader(str(out))
    arch = "qwen3" if qk_norm else "llama"
    assert _value(reader, "general.architecture") == arch
    cfg = model.config
    expected = {"context_length": cfg.max_position_embeddings, "embedding_length": 32, "block_count": 2,
                "feed_forward_length": cfg.resolved_intermediate_size, "attention.head_count": 4,
                "attention.head_count_kv": 2, "attention.key_length": 8, "attention.value_length": 8,
                "vocab_size": 304}
    for key, value in expected.items():
        assert _value(reader, f"{arch}.{key}") == value, key
    assert _value(reader, f"{arch}.rope.freq_base") == 10000.0
    assert _value(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5, rel=1e-7)  # stored fp32

    # Tokenizer: every id's token string, the merges, the special ids and the chat template.
    spec = json.loads((bpe_dir / "tokenizer.json").read_text())
    vocab = {i: t for t, i in spec["model"]["vocab"].items()}
    tokens = _value(reader, "tokenizer.ggml.tokens")
    assert tokens[:300] == [vocab[i] for i in range(300)] and tokens[300:] == [f"[PAD{i}]" for i in range(300, 304)]
    types = _value(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[3] == gguf.TokenType.NORMAL
    assert types[300:] == [gguf.TokenType.UNUSED] * 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert _value(reader, "tokenizer.ggml.merges") == merges
    assert (_value(reader, "tokenizer.ggml.model"), _value(reader, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    assert (_value(reader, "tokenizer.ggml.bos_token_id"), _value(reader, "tokenizer.ggml.eos_token_id")) == (1, 2)
    assert _value(reader, "tokenizer.chat_template") == json.loads((bpe_dir / "tokenizer_config.json").read_text())[
        "chat_template"]

    # Every tensor, bit for bit (fp32), under llama.cpp's name; Llama's q/k rows in llama.cpp's RoPE order.
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    state = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(got) == {gguf_tensor_name(k) for k in state}
    assert ("output.weight" in got) == (not tied)
    for key, tensor in state.items():
        want = tensor
        if not qk_norm and key.endswith(("q_proj.weight", "k_proj.weight")):
            want = llama_rope_rows(tensor, 4 if "q_proj" in key else 2)
            assert not torch.equal(want, tensor)
        assert got[gguf_tensor_name(key)].dtype == np.float32
        assert np.array_equal(got[gguf_tensor_name(key)], want.numpy()), key


def _adjacent_pair_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's `llama` RoPE written from its definition: pair (2i, 2i+1) rotates by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    angle = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * angle.cos() - odd * angle.sin()
    out[..., 1::2] = even * angle.sin() + odd * angle.cos()
    return out


def test_llama_row_order_gives_the_same_attention_scores_under_llamas_rope() -> None:
    torch.manual_seed(0)
    heads, d, hidden, seq = 2, 8, 16, 5
    wq, wk = torch.randn(heads * d, hidden, dtype=torch.float64), torch.randn(heads * d, hidden, dtype=torch.float64)
    x = torch.randn(seq, hidden, dtype=torch.float64)
    positions = torch.arange(seq)
    cos, sin = rope_cos_sin(positions, d, 1e4, dtype=torch.float64)

    def scores(q_w, k_w, rope):
        q = rope((x @ q_w.T).view(seq, heads, d).transpose(0, 1))
        k = rope((x @ k_w.T).view(seq, heads, d).transpose(0, 1))
        return q @ k.transpose(-1, -2)

    ours = scores(wq, wk, lambda t: apply_rope(t, cos, sin))
    llama = scores(llama_rope_rows(wq, heads), llama_rope_rows(wk, heads),
                   lambda t: _adjacent_pair_rope(t, positions, 1e4))
    # rope_cos_sin takes its frequencies in fp32 (angles right to ~1e-7 relative), the reference in fp64: scores
    # of size ~10 agree to ~1e-5. Rows in the wrong order are off by the size of the scores themselves.
    torch.testing.assert_close(llama, ours, rtol=1e-5, atol=1e-4)
    unordered = scores(wq, wk, lambda t: _adjacent_pair_rope(t, positions, 1e4))
    assert (unordered - ours).abs().max() > 1.0


def test_gguf_export_refuses_moe_word_level_tokenizers_and_existing_files(tmp_path: Path, bpe_dir: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "moe", "arch.use_moe=true", "arch.vocab_size=304")
    (tmp_path / "moe" / "tokenizer").mkdir()
    (tmp_path / "moe" / "tokenizer" / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    assert main(["export", str(tmp_path / "moe"), "--format", "gguf", "--output", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "MoE" in err and not (tmp_path / "m.gguf").exists()

    make_run(tmp_path / "words", tokenizer=True)  # a WordLevel tokenizer: llama.cpp has no such model here
    with pytest.raises(SmoltrainError, match="WordLevel tokenizer cannot go into GGUF"):
        export_gguf(tmp_path / "words", tmp_path / "w.gguf")
    # --tokenizer supplies a usable one; the vocabulary must fit the model's rows.
    with pytest.raises(SmoltrainError, match="has 300 tokens but the model embeds 64"):
        export_gguf(tmp_path / "words", tmp_path / "w.gguf", tokenizer=bpe_dir)

    _run(tmp_path / "ok", bpe_dir)
    (tmp_path / "taken.gguf").write_text("mine")
    assert main(["export", str(tmp_path / "ok" / "run"), "--format", "gguf", "--output",
                 str(tmp_path / "taken.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "taken.gguf").read_text() == "mine"
    assert main(["export", str(tmp_path / "ok" / "run"), "--format", "gguf", "--output",
                 str(tmp_path / "new.gguf")]) == 0
    assert "as GGUF (qwen3" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_pre_tokenizer_names_follow_llama_cpp(tmp_path: Path) -> None:
    from smoltrain.interop.gguf_export import QWEN2_SPLIT, _pre_tokenizer

    assert _pre_tokenizer({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, tmp_path) == "gpt-2"
    qwen2 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    assert _pre_tokenizer(qwen2, tmp_path) == "qwen2"
    with pytest.raises(SmoltrainError, match="no llama.cpp counterpart"):
        _pre_tokenizer({"type": "Whitespace"}, tmp_path)


def test_gguf_export_refuses_residual_options_llama_cpp_cannot_compute(tmp_path: Path, bpe_dir: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "deep", "arch.deepnorm=true", "arch.vocab_size=304")
    (tmp_path / "deep" / "tokenizer").mkdir()
    (tmp_path / "deep" / "tokenizer" / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    assert main(["export", str(tmp_path / "deep"), "--format", "gguf", "--output", str(tmp_path / "d.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "export to GGUF cannot represent deepnorm=True" in err
    assert not (tmp_path / "d.gguf").exists()
