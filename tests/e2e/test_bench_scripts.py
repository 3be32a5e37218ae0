"""The bench scripts that only run now and then (a lent GPU, a long timing) are known to work: their CPU
modes run here, at tiny shapes, and must write every section they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def test_gpu_check_dry_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and set(report["sections"]) == {"trm", "lm", "train", "cudagraphs"}
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section["result"])
        assert section["peak_memory_mb"] > 0
    trm = report["sections"]["trm"]["result"]["results"][0]
    assert trm["shape"] == "cpu" and {"a", "b"} <= {impl["key"] for impl in trm["impls"]}
    assert all(impl["median"] > 0 for impl in trm["impls"])
    lm = report["sections"]["lm"]["result"]["results"][0]
    assert lm["shape"] == "lm-tiny-cpu" and len(lm["impls"]) == 2
    assert report["sections"]["train"]["result"]["steps"] == 4  # the dry run's max_steps
    graphs = report["sections"]["cudagraphs"]["result"]
    assert {graphs[m]["steps"] for m in ("default", "reduce-overhead")} == {6} and graphs["speedup"] > 0
    table = (out / "gpu_check.md").read_text()
    for heading in ("## trm", "## lm", "## train", "## cudagraphs", "| section | status |"):
        assert heading in table


def test_time_to_accuracy_smoke_runs_both_sides_alternating(tmp_path: Path) -> None:
    out = tmp_path / "tta.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_accuracy.py"), "--smoke", "--threads", "1",
                           "--budget-s", "1", "--eval-every-s", "0.5", "--json", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [pair["order"] for pair in result["pairs"]] == [["reference", "smoltrain"], ["smoltrain", "reference"]]
    for pair in result["pairs"]:
        for side in ("reference", "smoltrain"):
            curve = pair[side]["curve"]
            assert len(curve) == 2 and all(0.0 <= point["exact"] <= 1.0 for point in curve)
            assert curve[-1]["train_s"] >= 1.0 and pair[side]["steps"] > 0
            assert len(pair[side]["load_before"]) == 3
    assert set(result["summary"]) >= {"reference", "smoltrain", "ratio_smoltrain_over_reference", "target"}
    assert "Median time to 97%" in proc.stdout


def test_time_to_accuracy_one_side_with_votes_then_a_joint_report(tmp_path: Path) -> None:
    ours, ref = tmp_path / "ours.json", tmp_path / "ref.json"
    common = [sys.executable, str(ROOT / "bench" / "time_to_accuracy.py"), "--smoke", "--threads", "1", "--pairs",
              "1", "--budget-s", "1", "--eval-every-s", "0.5", "--clock", "cpu"]
    for out, extra in ((ours, ["--sides", "smoltrain", "--smoltrain-set", "eval_augmentations=2"]),
                       (ref, ["--sides", "reference"])):
        proc = subprocess.run([*common, *extra, "--json", str(out)], capture_output=True, text=True, env=_env(),
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    curve = json.loads(ours.read_text())["pairs"][0]["smoltrain"]["curve"]
    assert curve and all(0.0 <= point["exact"] <= 1.0 and 0.0 <= point["exact_voted"] <= 1.0 for point in curve)
    report = subprocess.run([*common[:2], "--report", str(ref), str(ours)], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "ours voted 1" in report.stdout and "Ratio smoltrain / reference" in report.stdout
    bad = subprocess.run([*common, "--sides", "ours"], capture_output=True, text=True, env=_env(), timeout=60)
    assert bad.returncode == 2 and "--sides: choose from reference, smoltrain" in bad.stderr


def test_activation_checkpointing_smoke_measures_both_settings(tmp_path: Path) -> None:
    out = tmp_path / "ac.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "activation_checkpointing.py"), "--smoke",
                           "--json", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {"lm", "trm"} and len(result["load_before"]) == 3
    for case in result["cases"].values():
        saved = case["saved_activation_bytes"]
        assert 0 < saved["on"] < saved["off"]  # checkpointing keeps only each layer's (recursion step's) input
        assert all(case["wall_s_per_step"][key] > 0 for key in ("off", "on"))
    assert "| case | saved activations off -> on" in proc.stdout


def test_int8_inference_smoke_times_both_sides_and_measures_the_loss(tmp_path: Path) -> None:
    out = tmp_path / "int8.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "int8_inference.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [s["shape"] for s in result["speed"]] == ["lm-tiny-cpu", "minimind2-26m"]
    for shape in result["speed"]:
        assert shape["fp32"]["cpu_tokens_per_s"] > 0 and shape["int8"]["cpu_tokens_per_s"] > 0
    loss = result["loss"]
    assert loss["fp32_loss"] > 0 and loss["int8_loss"] > 0 and 0 <= loss["identical_continuations"] <= loss["prompts"]
    assert "int8 / fp32" in proc.stdout

def test_lm_finetune_throughput_smoke_times_sft_and_lora_against_the_port(tmp_path: Path) -> None:
    out = tmp_path / "finetune.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "lm_finetune_throughput.py"), "--smoke",
                           "--json", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = {r["stage"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"sft", "lora"}
    for stage, keys in (("sft", ["a", "b"]), ("lora", ["a", "b", "c"])):
        assert "step-0 loss" in results[stage]["check"]  # the step-0 same-math check ran (it raises otherwise)
        (run,) = results[stage]["runs"]
        impls = {i["key"]: i for i in run["impls"]}
        assert sorted(impls) == keys
        assert all(i["median"] > 0 and len(i["tokens_per_s"]) == 2 and i["supervised_per_step"] > 0
                   for i in impls.values())
    lora = {i["key"]: i for i in results["lora"]["runs"][0]["impls"]}
    # MiniMind's square layers (q_proj, o_proj of 2 layers) at rank 16 on both sides; all-linear trains more.
    assert lora["a"]["trainable"] == lora["b"]["trainable"] == 4 * 2 * 128 * 16
    assert lora["c"]["trainable"] > lora["b"]["trainable"]
    sft = {i["key"]: i for i in results["sft"]["runs"][0]["impls"]}
    assert sft["a"]["trainable"] == sft["b"]["trainable"] == results["sft"]["params"]
    assert "#### lora, `lm-tiny-cpu`" in proc.stdout and "| (c) smoltrain Trainer" in proc.stdout


def test_lm_time_to_loss_smoke_trains_three_sides_and_scores_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "ttl.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "lm_time_to_loss.py"), "--smoke", "--budget-s", "1",
                           "--eval-every-s", "0.5", "--eval-rows", "16", "--clock", "cpu", "--json", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    sides = ["minimind-stock", "minimind-ours", "smoltrain"]
    assert [pair["order"] for pair in result["pairs"]] == [sides, sides[1:] + sides[:1]]
    assert result["eval_rows"] == {"packed": 16, "per_document": 16}  # the smoke val split has more of both
    for pair in result["pairs"]:
        for side in sides:
            curve = pair[side]["curve"]
            # The untrained model at 0 s, then the checkpoints (one step can pass both on a loaded machine).
            assert curve[0]["train_s"] == 0.0 and len(curve) >= 2 and curve[-1]["train_s"] >= 1.0
            assert all(0 < point[m] < 10 for point in curve for m in ("packed", "per_document"))
            assert pair[side]["micro_steps"] > 0 and pair[side]["scored_tokens"] > 0
    # MiniMind's rows are padded, the packed windows are not: fewer scored tokens per row.
    first = result["pairs"][0]
    assert (first["minimind-ours"]["scored_tokens"] / first["minimind-ours"]["micro_steps"]
            < first["smoltrain"]["scored_tokens"] / first["smoltrain"]["micro_steps"])
    assert set(result["summary"]["target"]["ratios"]) == {"packed", "per_document"}
    assert "Target (smoltrain reaches minimind-ours' final loss" in proc.stdout
