"""Fine-tuning from a pretrained run: ``init_from`` (weights only) and LoRA (adapters on a frozen base, adapter-only
checkpoints that point at their base), through the trainer and the loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import smoltrain
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.trainer import Trainer
from tests.e2e.test_lm_training import check_resume_after_sigkill_is_bitwise_exact
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401


def _train(data: Path, run: Path, *overrides: str) -> dict:
    # AdamW: these tests set `lr` (lr=0 to keep the weights where they start), which Muon's matrices do not follow.
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{data}]", f"run_dir={run}", "optimizer=adamw",
                                          *overrides])
    return Trainer(cfg).fit()


@pytest.fixture(scope="module")
def base(text_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    _train(text_data, run, "max_steps=20", "lr=3e-3")
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])[0]


def test_init_from_starts_from_the_weights_only_and_resume_continues_the_new_run(text_data, base, tmp_path):
    run = tmp_path / "sft"
    # lr=0 leaves the weights where they started: the new run's checkpoint must hold the base's weights.
    summary = _train(text_data, run, f"init_from={base}", "max_steps=2", "lr=0")
    assert summary["step"] == 2  # a new schedule from step 0, not the base's step 20
    start, finish = _weights(base), _weights(run)
    assert start.keys() == finish.keys() and all(torch.equal(start[k], finish[k]) for k in start)
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])[2]
    assert state["step"] == 2 and "base" not in state  # a full fine-tune saves the whole model
    assert yaml.safe_load((run / "config.yaml").read_text())["init_from"] == str(base)
    # Going on resumes the new run at its own step 2 (its optimizer state), it does not start again from the base.
    trainer = Trainer(load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={run}",
                                                      f"init_from={base}", "max_steps=3", "lr=0", "optimizer=adamw"]))
    assert trainer.resumed_from is not None and trainer.step == 2
    trainer.release_run_dir()


def test_init_from_another_architecture_names_the_keys_that_differ(text_data, base, tmp_path):
    with pytest.raises(ConfigError) as err:
        _train(text_data, tmp_path / "x", f"init_from={base}", "arch.hidden_size=64", "max_steps=1")
    assert "hidden_size: 32 there, 64 here" in str(err.value) and "\n" not in str(err.value)
    # Keys that do not shape the weights may differ: another context length and dropout for fine-tuning.
    _train(text_data, tmp_path / "y", f"init_from={base}", "arch.seq_len=16", "arch.dropout=0.1", "max_steps=1")


def test_init_from_a_missing_path_is_one_line(text_data, tmp_path):
    with pytest.raises(SmoltrainError, match="init_from=.*does not exist"):
        _train(text_data, tmp_path / "x", f"init_from={tmp_path / 'nowhere'}", "max_steps=1")


def test_lora_trains_adapters_only_and_checkpoints_hold_only_them(text_data, base, tmp_path):
    run = tmp_path / "lora"
    _train(text_data, run, f"init_from={base}", "lora.rank=4", "lora.alpha=8", "lr=1e-2", "max_steps=4")
    step = ckpt.list_checkpoints(run / "checkpoints")[-1]
    saved = load_file(str(step / ckpt.MODEL_FILE))
    # Two adapted layers (q_proj, v_proj, the defaults) x 2 layers x (A, B), nothing else.
    assert sorted(saved) == sorted(f"model.layers.{i}.self_attn.{m}.lora_{ab}"
                                   for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB")
    assert any(saved[k].abs().sum() > 0 for k in saved if k.endswith("lora_B"))  # the adapters trained
    base_step = ckpt.list_checkpoints(base / "checkpoints")[-1]
    assert (step / ckpt.MODEL_FILE).stat().st_size < (base_step / ckpt.MODEL_FILE).stat().st_size / 5
    pointer = torch.load(step / ckpt.STATE_FILE, weights_only=True)["base"]
    assert pointer == ckpt.base_pointer(base_step) and pointer["files"][ckpt.MODEL_FILE]
    # The loader rebuilds base + adapters: the frozen weights are the base's, bit for bit.
    loaded = smoltrain.load(run, device="cpu").model.state_dict()
    base_weights = _weights(base)
    assert all(torch.equal(loaded[k], base_weights[k]) for k in base_weights)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_an_adapter_run_whose_base_changed_or_went_is_one_line(text_data, base, tmp_path):
    source = tmp_path / "base"
    shutil.copytree(base, source)
    run = tmp_path / "lora"
    _train(text_data, run, f"init_from={source}", "lora.rank=2", "max_steps=1")
    other = tmp_path / "other"  # another model at the same step, copied in place of the base checkpoint
    _train(text_data, other, "max_steps=20", "lr=3e-3", "seed=1")
    step = ckpt.list_checkpoints(source / "checkpoints")[-1]
    shutil.rmtree(step)
    shutil.copytree(ckpt.list_checkpoints(other / "checkpoints")[-1], step)
    with pytest.raises(ckpt.BaseWeightsError, match=r"not the one its adapters were trained on \(model.safetensors"):
        smoltrain.load(run, device="cpu")
    _train(text_data, source, "max_steps=21", "lr=3e-3", "checkpoint_every=1", "keep_checkpoints=1")  # re-trained
    with pytest.raises(ckpt.BaseWeightsError, match="is gone"):
        smoltrain.load(run, device="cpu")


def test_lora_needs_a_base_and_known_targets(text_data, base, tmp_path):
    with pytest.raises(ConfigError, match="add init_from=RUN_DIR"):
        _train(text_data, tmp_path / "a", "lora.rank=4", "max_steps=1")
    with pytest.raises(ConfigError) as err:
        _train(text_data, tmp_path / "b", f"init_from={base}", "lora.rank=4", "lora.targets=[q_proj,qkv]",
               "max_steps=1")
    assert "'qkv'" in str(err.value) and "gate_proj" in str(err.value)


def test_lora_resume_after_sigkill_is_bitwise_exact(text_data, base, tmp_path):
    check_resume_after_sigkill_is_bitwise_exact(
        text_data, tmp_path, [f"init_from={base}", "lora.rank=4", "lora.dropout=0.1", "lora.targets=all-linear",
                              "lr=1e-2", "ema=True"], steps=8, kill_at=6)  # EMA: its shadow holds the adapters too


def test_a_run_starts_from_a_lora_run_with_its_adapters_folded_in(text_data, base, tmp_path):
    from smoltrain.models.lora import merge_lora

    lora = tmp_path / "lora"
    _train(text_data, lora, f"init_from={base}", "lora.rank=4", "lr=1e-2", "max_steps=3")
    merged = merge_lora(smoltrain.load(lora, device="cpu").model).state_dict()
    # A full fine-tune from it (lr=0: the weights stay where they started) starts from the merged model; both
    # fold W + s*B@A with the one formula on the same tensors, so they agree bit for bit.
    full = tmp_path / "full"
    _train(text_data, full, f"init_from={lora}", "max_steps=1", "lr=0")
    assert all(torch.equal(_weights(full)[k], merged[k]) for k in merged)
    # New adapters stacked on it: their frozen base is the merged model.
    stacked = tmp_path / "stacked"
    _train(text_data, stacked, f"init_from={lora}", "lora.rank=2", "lora.targets=[o_proj]", "max_steps=2")
    loaded = smoltrain.load(stacked, device="cpu").model.state_dict()
    assert all(torch.equal(loaded[k], merged[k]) for k in merged)


def test_load_checkpoint_is_the_reference_name_of_init_from(tmp_path):
    from tests.helpers import toy_overrides

    source = tmp_path / "source"
    Trainer(load_config("toy", toy_overrides(source, max_steps=5))).fit()
    for key in ("load_checkpoint", "init_from"):  # the reference's key (a step directory) and ours (a run)
        target = source / "checkpoints" / ckpt.step_dir_name(5) if key == "load_checkpoint" else source
        run = tmp_path / key
        Trainer(load_config("toy", toy_overrides(run, max_steps=1, lr=0, **{key: target}))).fit()
        assert all(torch.equal(_weights(run)[k], v) for k, v in _weights(source).items())
    with pytest.raises(ConfigError, match="lora.rank > 0 is for LM runs"):
        Trainer(load_config("toy", toy_overrides(tmp_path / "x", init_from=source, **{"lora.rank": 2})))


def test_lora_run_through_the_cli_export_and_generate(text_data, base, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO, run_python

    lora = tmp_path / "lora"
    _train(text_data, lora, f"init_from={base}", "lora.rank=4", "lora.targets=all-linear", "lr=3e-2",
           "lr_warmup_steps=0", "max_steps=6")
    refused = run_python(["-m", "smoltrain", "export", str(lora), "--output", str(tmp_path / "hf")])
    assert refused.returncode == 2 and "add --merge" in refused.stderr and len(refused.stderr.splitlines()) == 1
    for extra, out in ((["--merge"], "hf"), (["--format", "peft"], "peft")):
        proc = run_python(["-m", "smoltrain", "export", str(lora), "--output", str(tmp_path / out), *extra])
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file() and (tmp_path / "peft" / "base").is_dir()

    # Sampled (one seed): the same logits give the same text, bit for bit, and a small change of the logits
    # (six steps of adapters) changes some of 24 sampled tokens, which greedy decoding of a tiny model may not show.
    sampled = ["--prompt", "the cat", "--max-new-tokens", "24", "--temperature", "1", "--seed", "3"]
    direct = run_python(["-m", "smoltrain", "generate", str(lora), *sampled])
    plain = run_python(["-m", "smoltrain", "generate", str(base), *sampled])
    both = run_python(["-m", "smoltrain", "generate", str(base), "--adapter", str(lora), "--adapter",
                       str(tmp_path / "peft"), *sampled])
    assert direct.returncode == plain.returncode == both.returncode == 0, both.stderr
    runs = both.stdout.split("--- adapter ")[1:]
    assert len(runs) == 2  # the run's adapters and their PEFT export: the same sampled text as the LoRA run itself
    assert all(r.split("\n", 1)[1] == direct.stdout for r in runs)
    assert direct.stdout != plain.stdout  # the adapters changed the model (6 steps at lr 3e-2)
    chat = subprocess.run([sys.executable, "-m", "smoltrain", "chat", str(base), "--adapter", str(lora),
                           "--max-new-tokens", "3"], input="/adapter none\nhello\n/adapter /nowhere\n\n",
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert chat.returncode == 0, chat.stderr
    assert "(adapter: none)" in chat.stderr and "neither a LoRA run directory" in chat.stderr
