"""Hugging Face export/import of ``arch=lm`` runs, checked against transformers itself (tiny fp32 models)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import smoltrain
from smoltrain.errors import OutputError, SmoltrainError
from smoltrain.fileio import umask
from smoltrain.interop.hf import export_hf, import_hf
from smoltrain.models.lm import LMForCausalLM
from tests.helpers import make_lm_run

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is needed for the HF parity tests")


def make_run(run_dir: Path, *extra: str, seed: int = 0, tokenizer: bool = False) -> LMForCausalLM:
    """A trained-looking run directory written by hand: config.yaml and one seeded checkpoint (step 5) whose norm
    weights are off 1, so a dropped or swapped norm weight shows in the logits."""
    return make_lm_run(run_dir, *extra, seed=seed, perturb_norms=True, tokenizer=tokenizer, step=5)


@pytest.mark.parametrize(("qk_norm", "tied"), [(True, True), (True, False), (False, True), (False, False)])
def test_export_matches_transformers(tmp_path: Path, qk_norm: bool, tied: bool) -> None:
    ours = make_run(tmp_path / "run", f"arch.qk_norm={qk_norm}", f"arch.tie_word_embeddings={tied}")
    out = export_hf(tmp_path / "run", tmp_path / "hf")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("qwen3" if qk_norm else "llama")
    assert config["tie_word_embeddings"] is tied
    keys = set(load_file(str(out / "model.safetensors")))
    assert ("lm_head.weight" in keys) is not tied  # transformers re-ties a tied head on load

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()

    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours(ids).logits
        got = hf(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    prompt = ids[:, :5]
    ours_gen = ours.generate(prompt, max_new_tokens=8, temperature=0)
    hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(hf_gen, ours_gen)

    # Round trip: the imported run loads through the public API with exactly the exported weights.
    run2 = import_hf(out, tmp_path / "imported")
    loaded = smoltrain.load(run2, device="cpu")
    assert loaded.config.arch.qk_norm is qk_norm and loaded.config.arch.tie_word_embeddings is tied
    original = ours.state_dict()
    got_state = loaded.model.state_dict()
    assert set(got_state) == set(original)
    for key, value in original.items():
        assert torch.equal(got_state[key], value), key
    if tied:
        assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight


def test_export_tokenizer_and_special_ids(tmp_path: Path) -> None:
    make_run(tmp_path / "run", tokenizer=True)
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (tmp_path / "run" / "tokenizer" / name).read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == 2 and tok.encode("w0 w1", add_special_tokens=False) == [3, 4]

    run2 = import_hf(out, tmp_path / "imported")
    assert (run2 / "tokenizer" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    # Shared as the umask says, like any file the user writes (safetensors creates its files 0600).
    shared = [*out.iterdir(), run2 / "config.yaml", run2 / "README.md", *(run2 / "tokenizer").iterdir(),
              *next((run2 / "checkpoints").iterdir()).iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in shared} == {p.name: oct(0o666 & ~umask()) for p in shared}


@pytest.mark.parametrize("document_bos", [False, True])
def test_training_rows_survive_export_and_import(tmp_path: Path, document_bos: bool) -> None:
    # Generation puts BOS before prompts of a run trained on BOS-led documents: the import must know it did.
    make_run(tmp_path / "run", "arch.seq_len=48", f"arch.document_bos={document_bos}", tokenizer=True)
    run2 = import_hf(export_hf(tmp_path / "run", tmp_path / "hf"), tmp_path / "imported")
    arch = smoltrain.load(run2, device="cpu", need_data=False).config.arch
    assert (arch.seq_len, arch.packing, arch.document_bos) == (48, True, document_bos)


def test_import_sharded_bf16(tmp_path: Path) -> None:
    ours = make_run(tmp_path / "run", "arch.tie_word_embeddings=false")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    # Re-save as two bf16 shards with an index, the layout transformers uses for large models.
    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k].to(torch.bfloat16) for k in part}, str(out / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    loaded = smoltrain.load(import_hf(out, tmp_path / "imported"), device="cpu")
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value.to(torch.bfloat16).float()), key


def test_import_shape_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] += 8
    (bad / "config.json").write_text(json.dumps(config))
    message = r"layers\.0\.mlp\.gate_proj\.weight has shape \(128, 32\) but config\.json implies \(136, 32\)"
    with pytest.raises(SmoltrainError, match=message) as err:
        import_hf(bad, tmp_path / "imported")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "imported").exists()  # nothing half-written


def test_damaged_files_are_one_line_in_export_and_import(tmp_path: Path) -> None:
    make_run(tmp_path / "run", tokenizer=True)
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(SmoltrainError, match=rf"{weights} cannot be read as safetensors .*export it again") as err:
        import_hf(out, tmp_path / "imported")
    assert "\n" not in str(err.value) and not (tmp_path / "imported").exists()

    (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").write_bytes(b"{\xff")
    with pytest.raises(SmoltrainError, match=r"tokenizer_config.json is not valid JSON"):
        export_hf(tmp_path / "run", tmp_path / "hf2")
    (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").unlink()
    (tmp_path / "run" / "tokenizer" / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(SmoltrainError, match=r"cannot read tokenizer .*tokenizer.json"):
        export_hf(tmp_path / "run", tmp_path / "hf2")


def test_import_refuses_unsupported_configs(tmp_path: Path) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(SmoltrainError, match="model_type 'mistral' is not supported"):
        import_hf(hf_dir, tmp_path / "out")
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}}))
    with pytest.raises(SmoltrainError, match="RoPE scaling 'llama3'"):
        import_hf(hf_dir, tmp_path / "out")
    with pytest.raises(SmoltrainError, match="no config.json"):
        import_hf(tmp_path, tmp_path / "out2")


def test_export_refuses_moe_and_busy_output(tmp_path: Path) -> None:
    make_run(tmp_path / "moe", "arch.use_moe=true")
    with pytest.raises(SmoltrainError, match="export of MoE runs is not supported yet"):
        export_hf(tmp_path / "moe", tmp_path / "hf_moe")
    assert not (tmp_path / "hf_moe").exists()

    make_run(tmp_path / "run")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(SmoltrainError, match="not an empty directory"):
        export_hf(tmp_path / "run", busy)
    assert (busy / "keep.txt").read_text() == "mine"


def test_import_reads_only_files_inside_the_directory(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    hf_dir = export_hf(tmp_path / "run", tmp_path / "hf")
    outside = tmp_path / "x.safetensors"
    (hf_dir / "model.safetensors").rename(outside)
    index = hf_dir / "model.safetensors.index.json"
    for name in ("../x.safetensors", str(outside)):  # relative past the folder, and absolute
        index.write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": name}}))
        with pytest.raises(SmoltrainError, match=rf"index\.json: names .*x\.safetensors outside {hf_dir} \(at "
                                                 rf"{outside}\); import hf reads only files inside") as err:
            import_hf(hf_dir, tmp_path / "imported")
        assert "\n" not in str(err.value)
    index.unlink()
    (hf_dir / "model.safetensors").symlink_to(outside)  # a link out of the folder
    with pytest.raises(SmoltrainError, match=rf"model\.safetensors points outside {hf_dir} \(at {outside}\)"):
        import_hf(hf_dir, tmp_path / "imported")
    (hf_dir / "model.safetensors").unlink()
    outside.rename(hf_dir / "model.safetensors")
    (tmp_path / "secret.json").write_text("{}")
    (hf_dir / "tokenizer.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(SmoltrainError, match=r"tokenizer\.json points outside"):
        import_hf(hf_dir, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()
    (hf_dir / "tokenizer.json").unlink()
    import_hf(hf_dir, tmp_path / "imported")  # the folder as it should be imports


def test_import_does_not_expand_environment_variables_in_the_config(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLTRAIN_SECRET", "s3cr3t")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "${oc.env:SMOLTRAIN_SECRET}"}))
    with pytest.raises(SmoltrainError, match=r"model_type '\$\{oc\.env:SMOLTRAIN_SECRET\}' is not supported") as err:
        import_hf(hf_dir, tmp_path / "out")  # the JSON is read as it is: no resolver ever sees it
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_export_and_import_on_a_full_or_read_only_disk_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     code: int) -> None:
    make_run(tmp_path / "run")
    hf_dir = export_hf(tmp_path / "run", tmp_path / "hf")
    before = sorted(tmp_path.iterdir())

    def fail(*_args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    for write, output in ((lambda out: export_hf(tmp_path / "run", out), tmp_path / "hf2"),
                          (lambda out: import_hf(hf_dir, out), tmp_path / "imported")):
        with pytest.raises(OutputError, match=rf"^cannot write {output}: {os.strerror(code)}; "):
            write(output)
        assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("option", ["arch.deepnorm=true", "arch.layer_scale_init=0.1", "arch.parallel_residual=true"])
def test_export_refuses_residual_options_transformers_cannot_compute(tmp_path: Path, option: str) -> None:
    make_run(tmp_path / "run", option)
    key = option.removeprefix("arch.").split("=")[0]
    with pytest.raises(SmoltrainError, match=rf"^export to Hugging Face format cannot represent {key}="):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_drop_path_run_exports_as_the_plain_model(tmp_path: Path) -> None:
    ours = make_run(tmp_path / "run", "arch.drop_path_rate=0.3")  # DropPath is the identity in eval
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "run", tmp_path / "hf")).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # as test_export_matches_transformers: the same math in another op order, fp32
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)
