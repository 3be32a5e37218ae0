"""Importing reference TRM checkpoints: synthetic ``step_N`` files in the reference layout (our model's
state dict under the loss head, optionally ``_orig_mod.``-prefixed, with an ``all_config.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import smoltrain
from smoltrain.errors import ConfigError, DataError, SmoltrainError
from smoltrain.interop.trm_import import import_reference_checkpoint, reference_arch_name
from smoltrain.models.hrm import HRM, TRMSingleZ
from smoltrain.models.trm import TRM, act_inference
from smoltrain.models.trm_loss import ACTLossHead
from smoltrain.runs import checkpoint as ckpt
from tests.helpers import write_sorting_puzzles

# Tiny, but every reference arch field spelled out as the reference's resolved config has them.
TINY_ARCH: dict[str, Any] = {
    "halt_exploration_prob": 0.1, "halt_max_steps": 2, "H_cycles": 1, "L_cycles": 1, "H_layers": 0,
    "L_layers": 1, "hidden_size": 16, "num_heads": 2, "expansion": 2, "puzzle_emb_ndim": 16,
    "pos_encodings": "rope", "mlp_t": False, "puzzle_emb_len": 1, "no_ACT_continue": True,
}


MLP_T = {"mlp_t": True, "pos_encodings": "none"}


MODELS = {"trm": TRM, "hrm": HRM, "trm_singlez": TRMSingleZ}


def write_reference(
    folder: Path, arch: dict[str, Any] | None = None, *, seq_len: int = 6, vocab_size: int = 5,
    num_ids: int = 1, compiled: bool = True, step: int = 5, config_arch: dict[str, Any] | None = None,
    seed: int = 0, name: str = "trm",
) -> tuple[ACTLossHead, Path]:
    """A reference-style checkpoint ``folder/step_{step}`` + ``all_config.yaml``; returns (source model, file).

    ``config_arch`` overrides arch fields in all_config.yaml only (to make it disagree with the weights).
    """
    arch = {**TINY_ARCH, **(arch or {})}
    torch.manual_seed(seed)
    model_class = MODELS[name]
    config = model_class.config_class(batch_size=4, seq_len=seq_len, vocab_size=vocab_size,
                                      num_puzzle_identifiers=num_ids, forward_dtype="float32", **arch)
    model = ACTLossHead(model_class(config))
    with torch.no_grad():  # non-trivial values everywhere (q_head starts at zero, the puzzle table too)
        for tensor in model.state_dict().values():
            tensor.normal_(0.0, 0.5)
    state = {("_orig_mod." if compiled else "") + k: v.clone() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step}"
    torch.save(state, path)
    reference_config = {
        "arch": {
            "name": f"recursive_reasoning.{name}@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            **arch, "forward_dtype": "bfloat16", "causal": False, **(config_arch or {}),
        },
        "data_paths": ["data/sudoku-extreme-1k-aug-1000"],  # a path on the reference machine
        "data_paths_test": [], "evaluators": [], "global_batch_size": 8, "epochs": 50000, "eval_interval": 5000,
        "checkpoint_every_eval": True, "lr": 1e-4, "lr_min_ratio": 1.0, "lr_warmup_steps": 2000, "beta1": 0.9,
        "beta2": 0.95, "weight_decay": 1.0, "puzzle_emb_weight_decay": 1.0, "puzzle_emb_lr": 1e-4,
        "project_name": "Sudoku-extreme-1k-aug-1000-ACT-torch", "run_name": "pretrain_att_sudoku",
        "checkpoint_path": "checkpoints/Sudoku-extreme-1k-aug-1000-ACT-torch/pretrain_att_sudoku",
        "load_checkpoint": None, "seed": 0, "min_eval_interval": 0, "eval_save_outputs": [], "ema": True,
        "ema_rate": 0.999, "freeze_weights": False, "mix_weights_direct": False,
    }
    (folder / "all_config.yaml").write_text(yaml.safe_dump(reference_config, sort_keys=False))
    return model, path


def _batch(seq_len: int = 6, vocab_size: int = 5, rows: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "inputs": torch.randint(0, vocab_size, (rows, seq_len), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.zeros(rows, dtype=torch.int32),
    }


@pytest.mark.parametrize(("arch", "compiled"), [(MLP_T, True), ({"pos_encodings": "learned"}, False)])
def test_import_gives_identical_weights_and_outputs(tmp_path: Path, arch: dict[str, Any], compiled: bool) -> None:
    source, path = write_reference(tmp_path / "ref", arch, compiled=compiled)
    lines: list[str] = []
    run_dir = import_reference_checkpoint(path, tmp_path / "run", log=lines.append)

    run = smoltrain.load(run_dir, device="cpu")
    assert run.checkpoint.name == "step_00000005"
    assert (run.config.arch.seq_len, run.config.arch.vocab_size, run.config.arch.num_puzzle_identifiers) == (6, 5, 1)
    loaded = run.model.state_dict()
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
    batch = _batch()
    for ours, theirs in zip(act_inference(run.model, batch), act_inference(source, batch), strict=True):
        assert torch.equal(ours, theirs)

    # What the run directory says about where it came from.
    _, ema_state, state = ckpt.load_checkpoint(run.checkpoint)
    assert ema_state is None and state["step"] == 5 and state["imported"]["ema_weights"] is True
    assert "optimizers" not in state
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["arch"]["name"] == "trm" and saved["data_paths"] == [] and saved["checkpoint_path"] is None
    assert saved["arch"]["forward_dtype"] is None  # follows `precision` (fp32 on CPU), not the reference's bf16
    assert saved["run_name"] == "pretrain_att_sudoku" and saved["ema"] is True
    assert "EMA weights" in (run_dir / "README.md").read_text()
    assert (run_dir / "reference_all_config.yaml").is_file()
    dropped = next(line for line in lines if line.startswith("reference keys dropped"))
    assert "arch.causal" in dropped and "mix_weights_direct" in dropped


@pytest.mark.parametrize("name", ["hrm", "trm_singlez"])
def test_import_other_reference_archs(tmp_path: Path, name: str) -> None:
    arch = {**MLP_T, "H_layers": 1, "no_ACT_continue": False} if name == "hrm" else MLP_T
    source, path = write_reference(tmp_path / "ref", arch, name=name)
    run = smoltrain.load(import_reference_checkpoint(path, tmp_path / "run"), device="cpu")
    assert run.config.arch.name == name and isinstance(run.model.model, MODELS[name])
    batch = _batch()
    assert torch.equal(act_inference(run.model, batch)[-1], act_inference(source, batch)[-1])


def test_rope_without_data_needs_the_length(tmp_path: Path) -> None:
    _, path = write_reference(tmp_path / "ref")
    with pytest.raises(SmoltrainError, match=r"does not tell its puzzle length.*--data-paths.*--seq-len"):
        import_reference_checkpoint(path, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run_dir = import_reference_checkpoint(path, tmp_path / "run", seq_len=6)
    assert smoltrain.load(run_dir, device="cpu").model.model.config.seq_len == 6


@pytest.mark.parametrize(("config_arch", "message"), [
    ({"hidden_size": 32}, r"model\.inner\.H_init has shape \(16,\) in the checkpoint but \(32,\) from the config; "
                          r"check arch\.hidden_size"),
    ({"expansion": 32}, r"mlp\.gate_up_proj\.weight has shape \(512, 16\) in the checkpoint but \(1024, 16\).*"
                       r"arch\.expansion"),
    ({"L_layers": 2}, r"the config's model has model\.inner\.L_level\.layers\.1\..* check arch\.L_layers"),
    ({"mlp_t": True}, r"check arch\.mlp_t"),
    ({"puzzle_emb_ndim": 0}, r"the checkpoint has model\.inner\.puzzle_emb\.weights .* check arch\.puzzle_emb_ndim"),
])
def test_shape_mismatch_names_key_shapes_and_field(tmp_path: Path, config_arch: dict[str, Any], message: str) -> None:
    _, path = write_reference(tmp_path / "ref", config_arch=config_arch)
    with pytest.raises(SmoltrainError, match=message) as info:
        import_reference_checkpoint(path, tmp_path / "run", seq_len=6)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_missing_all_config_says_where_it_looked(tmp_path: Path) -> None:
    _, path = write_reference(tmp_path / "ref", MLP_T)
    (tmp_path / "ref" / "all_config.yaml").unlink()
    with pytest.raises(SmoltrainError, match=rf"looked for {tmp_path / 'ref' / 'all_config.yaml'}"):
        import_reference_checkpoint(path, tmp_path / "run")


def test_dataset_that_does_not_fit_the_weights(tmp_path: Path) -> None:
    data = write_sorting_puzzles(tmp_path / "data", n_train=8, n_test=4, seq_len=6, digits=5)  # vocab 6
    _, path = write_reference(tmp_path / "ref", MLP_T)
    with pytest.raises(DataError, match=r"has vocab_size=6 but the checkpoint .* vocab_size=5"):
        import_reference_checkpoint(path, tmp_path / "run", data_paths=[str(data)])


def test_declared_shape_is_checked_against_data_at_load(tmp_path: Path) -> None:
    """The family's declared data shape: an imported run refuses a dataset of another puzzle length."""
    data = write_sorting_puzzles(tmp_path / "data", n_train=8, n_test=4, seq_len=8, digits=4)
    _, path = write_reference(tmp_path / "ref", MLP_T)
    run_dir = import_reference_checkpoint(path, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"arch\.seq_len=6 but the dataset .* has seq_len=8"):
        smoltrain.load(run_dir, device="cpu", overrides=[f"data_paths=[{data}]"])
    with pytest.raises(ConfigError, match=r"data_paths is empty"):
        smoltrain.evaluate(run_dir, device="cpu")


def test_directory_argument_and_existing_output(tmp_path: Path) -> None:
    write_reference(tmp_path / "ref", MLP_T, step=3)
    write_reference(tmp_path / "ref", MLP_T, step=12)
    run_dir = import_reference_checkpoint(tmp_path / "ref", tmp_path / "run")
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[-1].name == "step_00000012"
    with pytest.raises(SmoltrainError, match=r"already exists and is not empty; choose another --output"):
        import_reference_checkpoint(tmp_path / "ref", run_dir)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "step_1").write_text("hello")
    with pytest.raises(SmoltrainError, match=r"cannot read .*step_1 as a reference checkpoint"):
        import_reference_checkpoint(tmp_path / "step_1", tmp_path / "run")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "step_2")
    with pytest.raises(SmoltrainError, match=r"not a TRM checkpoint: expected keys model\.inner\.\*"):
        import_reference_checkpoint(tmp_path / "step_2", tmp_path / "run")


def test_reference_arch_names() -> None:
    assert reference_arch_name("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1") == "trm"
    assert reference_arch_name("recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1") == "hrm"
    assert reference_arch_name("recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1") == "trm_singlez"
    with pytest.raises(SmoltrainError, match=r"transformers_baseline@Model_ACTV2' has no smoltrain equivalent"):
        reference_arch_name("recursive_reasoning.transformers_baseline@Model_ACTV2")


@pytest.mark.parametrize("value", ["${oc.env:SMOLTRAIN_SECRET}", "pre-${oc.env:SMOLTRAIN_SECRET,x}",
                                   "${${oc.env:SMOLTRAIN_SECRET}}", "${oc.decode:'1'}"])
def test_a_resolver_in_all_config_is_refused_never_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            value: str) -> None:
    monkeypatch.setenv("SMOLTRAIN_SECRET", "s3cr3t")
    _, path = write_reference(tmp_path / "ref")
    config_file = tmp_path / "ref" / "all_config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["run_name"] = value
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"all_config\.yaml: run_name: .* calls a resolver") as err:
        import_reference_checkpoint(path, tmp_path / "run")
    assert "s3cr3t" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_references_between_keys_of_all_config_are_resolved(tmp_path: Path) -> None:
    _, path = write_reference(tmp_path / "ref")
    config_file = tmp_path / "ref" / "all_config.yaml"
    config = yaml.safe_load(config_file.read_text())
    hidden_size = config["arch"]["hidden_size"]
    config["arch"]["puzzle_emb_ndim"] = "${.hidden_size}"  # as the reference's arch configs write it
    config["run_name"] = "${project_name}"
    config_file.write_text(yaml.safe_dump(config))
    run = smoltrain.load(import_reference_checkpoint(path, tmp_path / "run", seq_len=6), device="cpu")
    assert run.config.arch.puzzle_emb_ndim == hidden_size
    assert run.config.run_name == config["project_name"]
