"""`smoltrain serve RUN --adapter DIR ...`: each LoRA adapter is a model id of its own on the one loaded base.

Requests for the base and for two adapters (adapting different layers), sent together so the engine must
switch adapters between batches, each give what `smoltrain generate` gives alone: the base without an
adapter, an adapter's requests with `--adapter DIR`. An unknown id is a 404 naming the ids served.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

openai = pytest.importorskip("openai", reason="the openai client (dev extra) drives the server tests")
pytest.importorskip("uvicorn", reason="uvicorn (serve extra) runs the server")

from safetensors.torch import save_file  # noqa: E402

from smoltrain.apps.generate import load_lm, stream_text  # noqa: E402
from smoltrain.cli import build_parser  # noqa: E402
from smoltrain.errors import ConfigError  # noqa: E402
from smoltrain.interop.hf import PEFT_CONFIG, PEFT_PREFIX, PEFT_WEIGHTS  # noqa: E402
from smoltrain.models.lora import adapter_state_dict, apply_lora, remove_lora  # noqa: E402
from smoltrain.serve.app import create_app  # noqa: E402
from tests.e2e.test_serve import running, trm_run  # noqa: E402, F401 (trm_run: a fixture)
from tests.helpers import make_lm_run, run_python  # noqa: E402

PROMPTS = ["w1 w2 w3", "w7", "w4 w9 w11 w12", "w30 w31"]
MAX_TOKENS = 16


def write_peft_adapter(directory: Path, base: Path, targets: list[str], seed: int, rank: int = 4) -> Path:
    """A PEFT adapter directory for the model of ``base`` with random, strong adapters (B is not zero, so the
    adapted model's greedy output differs from the base's)."""
    lm = load_lm(base, device="cpu")
    apply_lora(lm.model, rank, float(rank), 0.0, targets)
    generator = torch.Generator().manual_seed(seed)
    weights = {f"{PEFT_PREFIX}{key}.weight": torch.randn(value.shape, generator=generator) * 0.5
               for key, value in adapter_state_dict(lm.model).items()}
    remove_lora(lm.model)
    directory.mkdir(parents=True)
    save_file(weights, str(directory / PEFT_WEIGHTS))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
              "target_modules": targets, "bias": "none"}
    (directory / PEFT_CONFIG).write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("serve-adapters")
    make_lm_run(root / "tiny-lm", weight_scale=4.0)
    attention = write_peft_adapter(root / "attn-adapter", root / "tiny-lm", ["q_proj", "v_proj"], seed=1)
    mlp = write_peft_adapter(root / "mlp-adapter", root / "tiny-lm", ["gate_proj", "up_proj", "down_proj"], seed=2)
    return root / "tiny-lm", attention, mlp


def generated(run: Path, adapter: Path | None) -> list[str]:
    """What `smoltrain generate RUN [--adapter DIR] --prompt P --temperature 0` prints after each prompt."""
    lm = load_lm(run, device="cpu", adapter=adapter)
    return ["".join(stream_text(lm, p, max_new_tokens=MAX_TOKENS, temperature=0.0)) for p in PROMPTS]


def test_each_adapter_is_served_as_its_own_model(runs: tuple[Path, Path, Path]) -> None:
    base, attention, mlp = runs
    expected = {"tiny-lm": generated(base, None), "attn-adapter": generated(base, attention),
                "mlp-adapter": generated(base, mlp)}
    # generated() is what the verb prints: checked once through the CLI itself (a subprocess: slow, so once).
    proc = run_python(["-m", "smoltrain", "generate", str(base), "--adapter", str(attention), "--prompt", PROMPTS[0],
                       "--temperature", "0", "--max-new-tokens", str(MAX_TOKENS), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PROMPTS[0] + expected["attn-adapter"][0] + "\n"
    # The adapters change the greedy output (else this test could not tell them apart from the base).
    assert expected["attn-adapter"] != expected["tiny-lm"] and expected["mlp-adapter"] != expected["tiny-lm"]
    app = create_app(base, device="cpu", api_key="", adapters=[attention, mlp])
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        listed = client.models.list().data
        assert [m.id for m in listed] == ["tiny-lm", "attn-adapter", "mlp-adapter"]
        assert client.models.retrieve("mlp-adapter").id == "mlp-adapter"

        def ask(job: tuple[str, str]) -> str:
            model, prompt = job
            reply = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
            return reply.choices[0].text

        # Interleaved and concurrent: batches of one model at a time, switching adapters between them.
        jobs = [(model, prompt) for prompt in PROMPTS for model in expected]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = dict(zip(jobs, pool.map(ask, jobs), strict=True))
        # Identical up to fp32 rounding of padded batches; the scaled weights keep argmax gaps far above it.
        for model, texts in expected.items():
            assert [answers[model, p] for p in PROMPTS] == texts, model
        # And the base is the base again after adapters ran on it.
        assert ask(("tiny-lm", PROMPTS[0])) == expected["tiny-lm"][0]

        wrong = httpx.post(url + "/v1/chat/completions",
                           json={"model": "nope", "messages": [{"role": "user", "content": "w1"}]})
        assert wrong.status_code == 404
        error = wrong.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert all(repr(i) in error["message"] for i in expected), error["message"]


def test_two_adapters_with_one_name_are_refused_in_one_line(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, attention, _ = runs
    twin = tmp_path / "attn-adapter"
    twin.mkdir()
    for name in (PEFT_CONFIG, PEFT_WEIGHTS):
        (twin / name).write_bytes((attention / name).read_bytes())
    with pytest.raises(ConfigError, match="model id 'attn-adapter'.*taken by") as err:
        create_app(base, device="cpu", api_key="", adapters=[attention, twin])
    assert "\n" not in str(err.value)


def test_the_serve_verb_takes_repeated_adapters() -> None:
    ns = build_parser().parse_args(["serve", "runs/lm", "--adapter", "runs/a", "--adapter", "peft/b"])
    assert ns.adapter == ["runs/a", "peft/b"]


def test_adapters_on_a_trm_run_are_refused_in_one_line(trm_run: Path, runs: tuple[Path, Path, Path]) -> None:
    with pytest.raises(ConfigError, match="language model.*without --adapter"):
        create_app(trm_run, device="cpu", api_key="", adapters=[runs[1]])
