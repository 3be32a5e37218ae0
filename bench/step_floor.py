"""How fast can one training step be at the references' shapes? A floor from its matrix products.

    python bench/step_floor.py trm [--shape cpu|paper] [--threads 2] [--repeats 20]
    python bench/step_floor.py lm [--shape minimind2-26m|lm-tiny-cpu] [--threads 2]

Lists every matrix product of one training step, times each alone with the same fp32 BLAS call PyTorch
makes, and adds the SwiGLU ``silu(gate) * up`` work fused by ``torch.compile`` (the fastest form
measured). TRM (mlp_t, as ``bench/trm_throughput.py``): forward of all H x (L+1) network calls and the
input and weight gradients of the last cycle. LM (as ``bench/lm_throughput.py``): every projection,
the attention products and the tied head, forward and both gradients. The sum is a floor for any
implementation of the same model on this CPU (norms, residuals, embeddings, loss and optimizer are left
out, so the true floor is higher); the reference port's measured step divided by it bounds the speed-up
any rewrite can give at identical shapes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import lm_throughput  # noqa: E402  (bench/ siblings)
import trm_throughput  # noqa: E402
from smoltrain.models.trm_layers import swiglu_intermediate_size  # noqa: E402


def with_gradients(gemms: Counter, m: int, k: int, n: int, count: int) -> None:
    """A product of [m, k] activations and a [k, n] weight, with its input and weight gradients."""
    gemms[(m, k, n)] += count
    gemms[(m, n, k)] += count
    gemms[(n, m, k)] += count


def trm_products(shape: trm_throughput.Shape, batch: int) -> tuple[Counter, Counter]:
    """(matrix products as (M, K, N) -> count, SwiGLU elementwise tensors as (rows, width, grad) -> count)."""
    seq = shape.seq_len + (shape.puzzle_emb_len if shape.puzzle_emb_ndim else 0)
    d = shape.hidden_size
    inner_t = swiglu_intermediate_size(seq, 4, 256)
    inner_c = swiglu_intermediate_size(d, 4, 256)
    per_layer = [  # (rows, in, out) of each linear: token mixing over the sequence, then channel mixing
        (batch * d, seq, 2 * inner_t), (batch * d, inner_t, seq),
        (batch * seq, d, 2 * inner_c), (batch * seq, inner_c, d),
    ]  # fmt: skip
    calls = shape.H_cycles * (shape.L_cycles + 1)
    grad_calls = shape.L_cycles + 1
    gemms: Counter = Counter()
    elementwise: Counter = Counter()
    for rows, k, n in per_layer:
        with_gradients(gemms, rows, k, n, grad_calls * shape.L_layers)
        gemms[(rows, k, n)] += (calls - grad_calls) * shape.L_layers  # forward only, under no_grad
    for rows, inner in ((batch * d, inner_t), (batch * seq, inner_c)):
        elementwise[(rows, inner, False)] += (calls - grad_calls) * shape.L_layers
        elementwise[(rows, inner, True)] += grad_calls * shape.L_layers
    with_gradients(gemms, batch * shape.seq_len, d, shape.vocab_size, 1)  # LM head
    return gemms, elementwise


def lm_products(config: lm_throughput.LMConfig, batch: int, seq: int) -> tuple[Counter, Counter, Counter]:
    """(projections (M, K, N) -> count, attention products (batch, M, K, N) -> count, SwiGLU tensors)."""
    tokens, d, head_dim = batch * seq, config.hidden_size, config.resolved_head_dim
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    inner = config.resolved_intermediate_size
    gemms: Counter = Counter()
    for k, n, count in (
        (d, heads * head_dim, 1), (d, config.num_key_value_heads * head_dim, 2),  # q; k and v
        (heads * head_dim, d, 1), (d, inner, 2), (inner, d, 1),  # o; gate and up; down
    ):  # fmt: skip
        with_gradients(gemms, tokens, k, n, count * layers)
    with_gradients(gemms, tokens, d, config.vocab_size, 1)  # tied head
    # Scores q k^T and their use with v, per (sequence, head); the backward needs two products for each.
    attention = Counter(
        {(batch * heads, seq, head_dim, seq): 3 * layers, (batch * heads, seq, seq, head_dim): 3 * layers}
    )
    return gemms, attention, Counter({(tokens, inner, True): layers})


def seconds(fn, repeats: int, warmup: int = 5) -> float:
    """Median seconds per call over three rounds of `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - started) / repeats)
    return statistics.median(times)


def time_products(gemms: Counter, attention: Counter, repeats: int) -> float:
    """Print a table of the products and return their total seconds per step."""
    print("\n| matrix product (batch x M x K x N) | per step | ms each | GFLOP/s |\n|---|---:|---:|---:|")
    total = 0.0
    items = [((1, *mkn), count) for mkn, count in gemms.items()] + list(attention.items())
    for (b, m, k, n), count in sorted(items, key=lambda item: -item[0][0] * item[0][1] * item[0][2] * item[0][3]):
        x, w = torch.randn(b, m, k).squeeze(0), torch.randn(b, k, n).squeeze(0)
        t = seconds(lambda x=x, w=w: x @ w, repeats)
        total += count * t
        print(f"| {b} x {m} x {k} x {n} | {count} | {1e3 * t:.3f} | {2 * b * m * k * n / t / 1e9:.0f} |")
    return total


def time_swiglu(elementwise: Counter, repeats: int) -> float:
    """Seconds per step of ``silu(gate) * up`` fused by torch.compile (with backward where `grad`)."""
    fused = torch.compile(lambda gate, up: F.silu(gate) * up)
    total = 0.0
    for (rows, inner, grad), count in elementwise.items():
        gate = torch.randn(rows, inner, requires_grad=grad)
        up = torch.randn(rows, inner, requires_grad=grad)
        if grad:
            out_grad = torch.randn(rows, inner)
            t = seconds(lambda g=gate, u=up, o=out_grad: fused(g, u).backward(o), repeats)
        else:
            with torch.no_grad():
                t = seconds(lambda g=gate, u=up: fused(g, u), repeats)
        total += count * t
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=["trm", "lm"])
    parser.add_argument(
        "--shape", default=None, help="trm: cpu (default) | paper; lm: minimind2-26m (default) | lm-tiny-cpu"
    )
    parser.add_argument(
        "--reference-steps", type=int, default=None, help="timed steps per round of the port (trm 10, lm 1)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="calls per timing round of each product")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    if args.model == "trm":
        shapes = trm_throughput.SHAPES
        shape = shapes.get(args.shape or "cpu")
        if shape is None:
            parser.error(f"unknown trm shape {args.shape!r}; choose from {sorted(shapes)}")
        batch = shape.batch["cpu"]
        described = shape.describe(batch)
        gemms, elementwise = trm_products(shape, batch)
        attention: Counter = Counter()
        reference = trm_throughput.ref.Trainer(
            trm_throughput.reference_config(shape, batch, torch.float32), device=cpu, lr=trm_throughput.LR,
            weight_decay=trm_throughput.WEIGHT_DECAY, puzzle_emb_lr=trm_throughput.LR,
            puzzle_emb_weight_decay=trm_throughput.WEIGHT_DECAY,
        )  # fmt: skip
        data = trm_throughput.random_batch(shape, batch, cpu)
        reference_step = lambda: reference.step(data)  # noqa: E731
        reference_name = "reference TRM port (bench/reference_trm.py)"
    else:
        shapes = lm_throughput.SHAPES
        shape = shapes.get(args.shape or "minimind2-26m")
        if shape is None:
            parser.error(f"unknown lm shape {args.shape!r}; choose from {sorted(shapes)}")
        config = lm_throughput.lm_config(shape)
        batch, seq = shape.batch["cpu"], shape.seq_len["cpu"]
        described = f"{shape.name}, batch {batch} x {seq} tokens"
        gemms, attention, elementwise = lm_products(config, batch, seq)
        reference = lm_throughput.reference_impl(config, cpu)
        rows = torch.randint(0, config.vocab_size, (batch, seq + 1))
        reference_step = lambda: reference.step(rows)  # noqa: E731
        reference_name = "MiniMind port (bench/reference_minimind.py)"

    print(f"{args.model} shape {described}; {args.threads} threads, fp32, CPU {trm_throughput.cpu_name()}")
    gemm_total = time_products(gemms, attention, args.repeats)
    elementwise_total = time_swiglu(elementwise, args.repeats)
    steps = args.reference_steps or (10 if args.model == "trm" else 1)
    measured = seconds(reference_step, steps, warmup=2)
    floor = gemm_total + elementwise_total
    print(
        f"\nmatrix products: {1e3 * gemm_total:.1f} ms per step; fused SwiGLU elementwise: "
        f"{1e3 * elementwise_total:.1f} ms; floor {1e3 * floor:.1f} ms\n"
        f"{reference_name}, measured: {1e3 * measured:.1f} ms per step -> no implementation of these "
        f"shapes can beat it by more than {measured / floor:.2f}x on this CPU "
        f"(matrix products alone: {measured / gemm_total:.2f}x)"
    )


if __name__ == "__main__":
    main()
