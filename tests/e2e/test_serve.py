"""`smoltrain serve` against real clients: the official `openai` client and raw HTTP, on a uvicorn server
started in a thread (streaming and disconnects need a real socket).

Covers the OpenAI schema (streaming and not), the order of streamed chunks and the final ``[DONE]``, batched
greedy decoding equal to decoding alone, stop sequences, every refused request as a 4xx OpenAI-style error,
the API key, a disconnecting client freeing its slot, and /v1/solve on a TRM run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

openai = pytest.importorskip("openai", reason="the openai client (dev extra) drives the server tests")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (serve extra) runs the server")

from fastapi import FastAPI  # noqa: E402

from smoltrain.config import config_to_yaml  # noqa: E402
from smoltrain.data.tokenizer import apply_chat_template, encode, eos_id, load_tokenizer  # noqa: E402
from smoltrain.families import load_config  # noqa: E402
from smoltrain.interop.trm_import import import_reference_checkpoint  # noqa: E402
from smoltrain.runs.run_dir import RunDir  # noqa: E402
from smoltrain.serve.app import API_KEY_ENV, create_app  # noqa: E402
from smoltrain.serve.engine import Engine, Finished, Sampling  # noqa: E402
from tests.helpers import REPO, make_lm_run, run_python, toy_overrides  # noqa: E402
from tests.unit.test_trm_import import MLP_T, write_reference  # noqa: E402

CONTEXT = 4096  # long enough that a disconnect test's decode outlasts the test's wait for the slot to free
PROMPTS = ["w1 w2 w3", "w7", "w4 w9 w11 w12 w13 w14 w15", "w30 w31", "w5 w5 w5 w5", "w40 w41 w42 w43 w44"]


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    run = tmp_path_factory.mktemp("serve") / "tiny-lm"
    make_lm_run(run, f"arch.seq_len={CONTEXT}", weight_scale=4.0)
    return run


@pytest.fixture(scope="module")
def lm_server(lm_run: Path) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(lm_run, device="cpu", api_key="")  # "": no key, whatever the environment says
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(lm_server: tuple[str, FastAPI]) -> openai.OpenAI:
    return openai.OpenAI(base_url=lm_server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def trm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported 4x4-Sudoku-shaped TRM run (seq_len 16, vocab 6) with random weights."""
    root = tmp_path_factory.mktemp("serve-trm")
    _, path = write_reference(root / "ref", MLP_T, seq_len=16, vocab_size=6)
    return import_reference_checkpoint(path, root / "sudoku-run")


def test_models_and_chat_follow_the_openai_schema(client: openai.OpenAI, lm_run: Path) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny-lm"]
    reply = client.chat.completions.create(model="tiny-lm", messages=[{"role": "system", "content": "w3"},
                                                                      {"role": "user", "content": "w1 w2"}],
                                           max_tokens=7, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "tiny-lm" and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    tokenizer = load_tokenizer(lm_run / "tokenizer")
    prompt = apply_chat_template([{"role": "system", "content": "w3"}, {"role": "user", "content": "w1 w2"}],
                                 add_generation_prompt=True)
    assert reply.usage is not None and reply.usage.prompt_tokens == len(encode(tokenizer, prompt))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 7
    # n choices, and a seed makes sampling repeatable: choice j of two seeded requests agree.
    first, second = (client.chat.completions.create(model="tiny-lm", messages=[{"role": "user", "content": "w9"}],
                                                    max_tokens=12, temperature=1.0, seed=5, n=3) for _ in range(2))
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert len({c.message.content for c in first.choices}) > 1  # the choices are seeded differently


def test_text_completions_and_stop_sequences(client: openai.OpenAI) -> None:
    full = client.completions.create(model="tiny-lm", prompt="w1 w2 w3", max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length", text
    assert full.usage is not None and full.usage.completion_tokens == 12
    words = text.split()
    stop = " " + words[4]
    cut = client.completions.create(model="tiny-lm", prompt="w1 w2 w3", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)] and stop not in cut.choices[0].text
    # Streamed, a stop string's first characters are held back until it is clear whether it completes.
    pieces = list(client.completions.create(model="tiny-lm", prompt="w1 w2 w3", max_tokens=12, temperature=0,
                                            stop=[stop], stream=True))
    assert "".join(c.choices[0].text for c in pieces) == cut.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "stop"
    echoed = client.completions.create(model="tiny-lm", prompt=["w1 w2 w3", "w7"], max_tokens=12, temperature=0,
                                       echo=True)
    assert [c.index for c in echoed.choices] == [0, 1] and echoed.choices[0].text == "w1 w2 w3" + text


def test_streaming_order_and_done(client: openai.OpenAI, lm_server: tuple[str, FastAPI]) -> None:
    messages = [{"role": "user", "content": "w5 w6"}]
    whole = client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=15, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=15, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and not any(reasons[:-1])  # finish comes last
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]

    # The raw stream: server-sent events, each `data: {json}`, the last `data: [DONE]`.
    body = {"model": "tiny-lm", "prompt": "w5 w6", "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", lm_server[0] + "/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in events[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(p["choices"][0]["text"] for p in payloads)
    assert streamed == client.completions.create(model="tiny-lm", prompt="w5 w6", max_tokens=6,
                                                 temperature=0).choices[0].text


def test_batched_greedy_decoding_equals_decoding_alone(lm_run: Path) -> None:
    """Six prompts of different lengths through the engine at once (they join the batch as they come, some
    mid-decode) give, token for token, what `generate_stream` gives each prompt alone."""
    from smoltrain.apps.generate import load_lm

    lm = load_lm(lm_run, device="cpu")
    eos = eos_id(lm.tokenizer)
    alone = []
    for prompt in PROMPTS:
        ids = torch.tensor([encode(lm.tokenizer, prompt)])
        tokens = [int(t[0]) for t in lm.model.generate_stream(ids, 40, temperature=0.0, eos_token_id=eos)]
        alone.append(tokens[:tokens.index(eos)] if eos in tokens else tokens)
    engine = Engine(lm.model, lm.tokenizer, eos, torch.device("cpu"))
    try:
        done = [threading.Event() for _ in PROMPTS]
        finished: list[Finished | None] = [None] * len(PROMPTS)

        def emitter(i: int):
            def emit(event: object) -> None:
                if isinstance(event, Finished):
                    finished[i] = event
                    done[i].set()
            return emit

        sequences = [engine.submit(encode(lm.tokenizer, p), Sampling(max_tokens=40, temperature=0.0), emitter(i))
                     for i, p in enumerate(PROMPTS)]
        assert all(d.wait(60) for d in done)
    finally:
        engine.close()
    # Identical up to fp32 rounding (padded reductions); the scaled weights keep argmax gaps far above it.
    assert [seq.tokens for seq in sequences] == alone
    assert engine.largest_batch > 1  # they were decoded together, not one after another
    assert [f.reason for f in finished if f] == ["stop" if len(a) < 40 else "length" for a in alone]


def test_concurrent_requests_are_batched_and_answered_as_alone(client: openai.OpenAI,
                                                               lm_server: tuple[str, FastAPI]) -> None:
    def ask(prompt: str) -> str:
        reply = client.completions.create(model="tiny-lm", prompt=prompt, max_tokens=30, temperature=0)
        return reply.choices[0].text

    one_by_one = [ask(p) for p in PROMPTS]
    engine = lm_server[1].state.engine
    engine.largest_batch = 0
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, PROMPTS))
    assert together == one_by_one
    assert engine.largest_batch > 1


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "w1"}]}, 404, "model", "does not exist"),
    ({"model": "tiny-lm", "messages": [{"role": "user", "content": "w1"}], "max_tokens": CONTEXT}, 400,
     "max_tokens", "context is 4096 tokens"),
    ({"model": "tiny-lm"}, 400, "messages", "missing required parameter"),
    ({"model": "tiny-lm", "messages": []}, 400, "messages", "invalid value"),
    ({"model": "tiny-lm", "messages": [{"role": "user", "content": "w1"}], "temperature": 3}, 400, "temperature",
     "invalid value"),
    ({"model": "tiny-lm", "messages": [{"role": "robot", "content": "w1"}]}, 400, "messages.0.role", "invalid"),
    ({"model": "tiny-lm", "messages": [{"role": "user", "content": "w1"}], "n": 0}, 400, "n", "invalid"),
    ({"model": "tiny-lm", "messages": [{"role": "user", "content": "w1"}], "stop": ["a", "b", "c", "d", "e"]},
     400, "stop", "at most 4"),
])
def test_bad_chat_requests_are_openai_style_4xx(lm_server: tuple[str, FastAPI], body: dict, status: int,
                                                param: str, words: str) -> None:
    response = httpx.post(lm_server[0] + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


def test_malformed_bodies_and_wrong_endpoints_are_4xx(lm_server: tuple[str, FastAPI],
                                                      client: openai.OpenAI) -> None:
    url = lm_server[0]
    for raw in (b"{not json", b"[1, 2]", b""):
        response = httpx.post(url + "/v1/chat/completions", content=raw,
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 400 and "error" in response.json(), (raw, response.text)
    response = httpx.post(url + "/v1/solve", json={"puzzle": "1234"}, timeout=30)
    assert response.status_code == 400 and "language model, not a TRM run" in response.json()["error"]["message"]
    response = httpx.get(url + "/v1/nothing", timeout=30)
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(url + "/v1/chat/completions", timeout=30)
    assert response.status_code == 405 and "error" in response.json()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "w1"}])
    with pytest.raises(openai.BadRequestError, match="context is 4096 tokens"):
        client.completions.create(model="tiny-lm", prompt="w1", max_tokens=5000)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(lm_server: tuple[str, FastAPI]) -> None:
    url, app = lm_server
    engine = app.state.engine
    before = engine.cancelled
    body = {"model": "tiny-lm", "prompt": "w3 w4", "max_tokens": CONTEXT - 10, "temperature": 1.0, "seed": 1,
            "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # a few events: the decode is under way
    assert any(line.startswith("data: ") for line in received)
    deadline = time.monotonic() + 10
    while engine.busy_slots and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.busy_slots == 0 and engine.cancelled == before + 1  # left because it was cancelled


def test_an_api_key_refuses_requests_without_it(lm_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "s3cret")  # the environment variable, as `smoltrain serve` reads it
    with running(create_app(lm_run, device="cpu")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.get(url + "/v1/models", headers=headers, timeout=30)
            assert response.status_code == 401, headers
            assert response.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.completions.create(model="tiny-lm", prompt="w1", max_tokens=3).choices[0].text


def test_solve_returns_every_act_step(trm_run: Path) -> None:
    app = create_app(trm_run, device="cpu", api_key="")
    info = app.state.run.info()
    assert (info["family"], info["kind"], info["seq_len"], info["name"]) == ("trm", "sudoku", 16, "sudoku-run")
    assert info["parameters"] > 0 and app.state.run.test_examples() == []  # no dataset on this machine
    with running(app) as url:
        puzzle = "1...\n..3.\n.4..\n...2"
        response = httpx.post(url + "/v1/solve", json={"puzzle": puzzle}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["kind"] == "sudoku" and isinstance(body["answer"], str) and body["valid"] in (True, False)
        steps = body["steps"]
        assert len(steps) == RunDir(trm_run).load_config().arch.halt_max_steps and 1 <= body["halted_at"] <= len(steps)
        previous = body["input"]
        assert previous == [[1, 0, 0, 0], [0, 0, 3, 0], [0, 4, 0, 0], [0, 0, 0, 2]]
        for step in steps:
            assert 0.0 <= step["q_halt"] <= 1.0 and len(step["grid"]) == 4 and all(len(r) == 4 for r in step["grid"])
            want = [[r, c] for r in range(4) for c in range(4) if step["grid"][r][c] != previous[r][c]]
            assert step["changed"] == want
            previous = step["grid"]
        one = httpx.post(url + "/v1/solve", json={"puzzle": puzzle, "max_steps": 1}, timeout=60).json()
        assert len(one["steps"]) == 1 and one["steps"][0] == steps[0]

        for bad, words in ((puzzle + "1", "cells"), ("1..x\n..3.\n.4..\n...2", "x"),
                           ({"puzzle": puzzle, "example": 0}, "either"), ({"example": 0}, "no dataset")):
            payload = bad if isinstance(bad, dict) else {"puzzle": bad}
            response = httpx.post(url + "/v1/solve", json=payload, timeout=60)
            assert response.status_code == 400, response.text
            assert words in response.json()["error"]["message"], response.json()
        response = httpx.post(url + "/v1/chat/completions", timeout=60,
                              json={"model": "sudoku-run", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 400 and "/v1/solve" in response.json()["error"]["message"]


def test_the_serve_verb_serves_on_the_port_it_is_given(lm_run: Path) -> None:
    with socket.socket() as probe:  # a free port (the tiny race until the server binds it is harmless here)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "smoltrain", "serve", str(lm_run), "--port", str(port),
                             "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", API_KEY_ENV: ""})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.2)
        assert models["data"][0]["id"] == "tiny-lm"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}" in out


def test_serving_a_run_of_another_family_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "toy"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_config("toy", toy_overrides(run))))
    result = run_python(["-m", "smoltrain", "serve", str(run), "--port", "0"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "knows LM runs (arch=lm) and TRM-family runs" in result.stderr and "is arch toy" in result.stderr
