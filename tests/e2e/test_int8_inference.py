"""``--quantize int8`` (``smoltrain.models.quantize``): a trained tiny LM quantized keeps its validation loss within
the bound below, generates through ``generate`` / ``chat``'s loader and the CLI; adapters are merged before
quantizing; CUDA / MPS, a TRM run and served adapters with it are refused in one line."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch

from smoltrain.apps.generate import LMRun, load_lm, stream_text
from smoltrain.config import config_to_yaml
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import load_config
from smoltrain.models.lora import adapter_state_dict, apply_lora, remove_lora
from smoltrain.models.quantize import is_quantized, quantize_device, quantize_int8
from smoltrain.runs.loading import Adapter, load
from smoltrain.serve.run import load_served_run
from smoltrain.train.trainer import Trainer
from tests.helpers import make_lm_run, run_python
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401 (text_data: a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

# int8 may move the validation loss of a trained model by at most this share. bench/int8_inference.py measured
# +0.10% on an lm-tiny-cpu run trained 300 steps (bench/RESULTS.md, "int8 inference"), and this test's 32-wide
# model moved by +0.02% when it was written: per-tensor int8 rounds each weight by at most max|w| / 254, a
# fraction of a percent of the logits. 2% is 20x the bench's figure, room for another CPU's kernels, and far
# below what a broken quantization does (a wrong scale or a skipped dequantization moves the loss by whole nats).
LOSS_BOUND = 0.02


@pytest.fixture(scope="module")
def trained_run(text_data, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("int8") / "run"
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={run}", "max_steps=60",
                                          "lr=3e-3", "lr_warmup_steps=10", "log_every=100"])
    Trainer(cfg).fit()
    return run


def test_int8_keeps_the_validation_loss_within_the_bound(trained_run: Path) -> None:
    run = load(trained_run, device="cpu")
    with torch.inference_mode():
        fp32 = run.family.evaluate(run.model, whole=True)["loss"]
    quantize_int8(run.model)
    assert is_quantized(run.model)
    with torch.inference_mode():
        int8 = run.family.evaluate(run.model, whole=True)["loss"]
    assert fp32 < 4.0  # the run learnt something (a uniform guess over its ~300 tokens is ~5.7 nats)
    assert abs(int8 - fp32) / fp32 <= LOSS_BOUND, (fp32, int8)


def test_int8_generation_through_the_loader_and_without_warnings(trained_run: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's deprecation notices of its quantization API are silenced
        lm = load_lm(trained_run, quantize="int8")  # device auto is the CPU with --quantize
    assert lm.quantized == "int8" and lm.run.device.type == "cpu" and is_quantized(lm.model)
    text = "".join(stream_text(lm, "the cat", max_new_tokens=8, temperature=0.0, stop_at_eos=False))
    assert text.strip()
    with pytest.raises(SmoltrainError, match="quantized to int8"):
        lm.use_adapter(None)


def test_adapters_are_merged_before_quantizing(tmp_path: Path) -> None:
    make_lm_run(tmp_path / "base", weight_scale=4.0)
    lm = load_lm(tmp_path / "base", device="cpu")
    apply_lora(lm.model, 4, 4.0, 0.0, ["q_proj", "v_proj"])
    generator = torch.Generator().manual_seed(1)
    weights = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in adapter_state_dict(lm.model).items()}
    remove_lora(lm.model)
    adapter = Adapter(weights=weights, rank=4, alpha=4.0, source=tmp_path / "adapter")
    lm.use_adapter(adapter)
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        adapted = lm.model(ids).logits
        base = copy.deepcopy(lm.model)
        remove_lora(base)
        plain = base(ids).logits
    lm.quantize("int8")
    with torch.no_grad():
        quantized = lm.model(ids).logits
    # int8 rounding moves these logits (|logit| ~ 10 at weight_scale 4) by ~0.1; the adapters move them by more
    # than ten times that, so the quantized model is the adapted one, not its base.
    assert (quantized - adapted).abs().max() < 0.1 * (adapted - plain).abs().max()


def test_cuda_and_mps_are_refused_and_auto_is_the_cpu() -> None:
    assert quantize_device("auto", "int8") == "cpu" and quantize_device("cpu", "int8") == "cpu"
    assert quantize_device("cuda", None) == "cuda"  # without --quantize: as asked
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(ConfigError, match="CPU only"):
            quantize_device(device, "int8")
    gpu_model = torch.nn.Linear(2, 2).to("meta")  # stands in for a model on a device other than the CPU
    with pytest.raises(ConfigError, match="CPU only"):
        quantize_int8(gpu_model)


def test_serve_refuses_adapters_and_trm_runs_with_quantize(tmp_path: Path) -> None:
    make_lm_run(tmp_path / "lm")
    with pytest.raises(ConfigError, match="cannot switch between --adapter"):
        load_served_run(tmp_path / "lm", adapters=[tmp_path / "some-adapter"], quantize="int8")
    served = load_served_run(tmp_path / "lm", quantize="int8")
    assert isinstance(served.lm, LMRun) and served.lm.quantized == "int8" and served.info()["quantize"] == "int8"
    trm = tmp_path / "trm"
    cfg = load_config(None, ["arch=trm", "data_paths=[]", "arch.seq_len=16", "arch.vocab_size=6",
                             "arch.num_puzzle_identifiers=1", f"run_dir={trm}"])
    trm.mkdir()
    (trm / "config.yaml").write_text(config_to_yaml(cfg))
    with pytest.raises(ConfigError, match="is a trm run"):
        load_served_run(trm, quantize="int8")


def test_cli_generate_takes_quantize_and_refuses_cuda(tmp_path: Path) -> None:
    make_lm_run(tmp_path / "lm", weight_scale=4.0)
    done = run_python(["-m", "smoltrain", "generate", str(tmp_path / "lm"), "--prompt", "w3 w4", "--quantize", "int8",
                       "--temperature", "0", "--max-new-tokens", "5"], timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("w3 w4"), done.stderr
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr
    done = run_python(["-m", "smoltrain", "generate", str(tmp_path / "lm"), "--prompt", "w3", "--quantize", "int8",
                       "--device", "cuda"], timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "CPU only" in lines[0], done.stderr
