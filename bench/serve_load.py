"""`smoltrain serve` under load: 1, 4 and 16 concurrent streaming clients on the `demo lm` model.

    python bench/serve_load.py [--run RUN_DIR] [--clients 1,4,16] [--requests 8] [--max-tokens 80] [--rounds 3]
                               [--threads 1] [--device cpu] [--json OUT]

The server runs as `smoltrain serve` in its own process (``--threads`` torch threads), the clients are asyncio
tasks on httpx in this one, so client and server do not share a GIL. Each client sends ``--requests``
streaming ``/v1/completions`` requests one after another (sampling at temperature 0.8 with its own seed,
``stream_options.include_usage`` for the exact token count); every level starts with one untimed request,
and ``--rounds`` rounds alternate over the levels (the median round of each level is reported).
Reported per level: aggregate completion tokens/s (all clients' tokens over the level's wall time), p50/p99
time to first token (request sent -> first text chunk), p50/p99 over requests of the time per output token
after the first (the decoding step time each client sees) and errors.

Without ``--run`` the script writes a run of the `demo lm` model's architecture (`lm-tiny-cpu`: 2 layers, 128
wide, context 128, vocab 2048 as `smoltrain demo lm` trains it) with untrained weights and a byte-level BPE
trained on generated sentences: decoding cost does not depend on the weights (an untrained model may end a
completion early at its end-of-sequence token; the token counts are the real ones either way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the king and queen walk to a far castle where old knights speak of war and peace while a bright "
         "moon rises over the quiet hills and rivers of the north").split()


def build_demo_shaped_run(root: Path) -> Path:
    """An untrained run with the `demo lm` architecture and a 2,048-token BPE."""
    import torch

    from smoltrain.config import config_to_yaml
    from smoltrain.data.tokenizer import load_tokenizer, train_tokenizer
    from smoltrain.families import load_config
    from smoltrain.models.lm import LMForCausalLM
    from smoltrain.runs.checkpoint import save_checkpoint

    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"] + ["th", "st", "ng", "qu"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    corpus = root / "corpus.txt"  # enough distinct words for a full 2,048-token vocabulary, as the demo's
    corpus.write_text("\n\n".join(" ".join(rng.choice(lexicon) for _ in range(rng.randint(5, 30)))
                                    for _ in range(20000)))
    run = root / "demo-lm-shaped"
    train_tokenizer([corpus], 2048, run / "tokenizer")
    vocab = load_tokenizer(run / "tokenizer").get_vocab_size()
    cfg = load_config("lm-pretrain-cpu", [f"arch.vocab_size={vocab}", "data_paths=[]", f"run_dir={run}"])
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    torch.manual_seed(0)
    model = LMForCausalLM(cfg.arch.to_model_config())
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), None, {"step": 1}, keep=1)
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_request(http: httpx.AsyncClient, url: str, model: str, prompt: str, seed: int,
                      max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if "error" in payload:
                return {"error": payload["error"]["message"]}
            if payload.get("usage"):
                tokens = payload["usage"]["completion_tokens"]
            elif payload["choices"] and payload["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    # Time per output token after the first (vLLM's TPOT): text chunks can hold several tokens (a character
    # split over tokens is sent whole), so the stream's span over its tokens, not the gaps between chunks.
    tpot = (stamps[-1] - stamps[0]) / (tokens - 1) if len(stamps) > 1 and tokens > 1 else None
    return {"tokens": tokens, "ttft": (stamps[0] - sent) if stamps else None, "tpot": tpot}


async def level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await one_request(http, url, model, "the king", 0, 8)  # untimed warm-up

        async def client(c: int) -> list[dict]:
            rng = random.Random(c)
            out = []
            for r in range(requests):
                prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
                try:
                    out.append(await one_request(http, url, model, prompt, 1000 * c + r, max_tokens))
                except httpx.HTTPError as err:
                    out.append({"error": f"{type(err).__name__}: {err}"})
            return out

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tpots = [r["tpot"] for r in ok if r["tpot"] is not None]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "error_messages": sorted({r["error"] for r in results if "error" in r})[:3],
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1000 * percentile(ttfts, 50), "ttft_p99_ms": 1000 * percentile(ttfts, 99),
            "token_p50_ms": 1000 * percentile(tpots, 50), "token_p99_ms": 1000 * percentile(tpots, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="an LM run to serve (default: a demo-lm-shaped run built here)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=8, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the levels; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else build_demo_shaped_run(Path(tmp.name))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "SMOLTRAIN_API_KEY": "",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "smoltrain", "serve", str(run), "--port", str(port),
                               "--device", args.device], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                model = httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        load_start = os.getloadavg()
        print(f"$ {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
        print(f"run {run} ({model}), {args.requests} requests per client, max_tokens {args.max_tokens}, server "
              f"torch threads {args.threads}, device {args.device}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in load_start)} at start")
        levels = [int(c) for c in args.clients.split(",")]
        by_level: dict[int, list[dict]] = {c: [] for c in levels}
        for round_ in range(args.rounds):  # levels alternate, so a burst of load on the shared machine hits all
            for clients in levels:
                r = asyncio.run(level(url, model, clients, args.requests, args.max_tokens))
                by_level[clients].append(r)
                print(f"round {round_ + 1}: {clients:>3} clients: {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} "
                      f"tokens in {r['wall_s']:.1f} s), TTFT p50 {r['ttft_p50_ms']:.0f} ms p99 "
                      f"{r['ttft_p99_ms']:.0f} ms, per token p50 {r['token_p50_ms']:.1f} ms p99 "
                      f"{r['token_p99_ms']:.1f} ms, errors {r['errors']}"
                      + (f" {r['error_messages']}" if r["errors"] else ""), flush=True)
        # Per level, the round with the median aggregate tokens/s.
        rows = [sorted(by_level[c], key=lambda r: r["tokens_per_s"])[(args.rounds - 1) // 2] for c in levels]
        print("\nmedian round per level:")
        print("| clients | tokens/s | TTFT p50 / p99 (ms) | per token p50 / p99 (ms) | errors |")
        print("|---:|---:|---:|---:|---:|")
        for r in rows:
            errors = sum(x["errors"] for x in by_level[r["clients"]])
            print(f"| {r['clients']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
                  f"{r['token_p50_ms']:.1f} / {r['token_p99_ms']:.1f} | {errors} |")
        load_end = os.getloadavg()
        print(f"load average {' '.join(f'{x:.2f}' for x in load_end)} at end")
        base = rows[0]["tokens_per_s"]
        for r in rows[1:]:
            print(f"{r['clients']} clients / {rows[0]['clients']}: {r['tokens_per_s'] / base:.2f}x aggregate tokens/s")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "rounds": by_level, "load_start": load_start,
                                                   "load_end": load_end}, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
