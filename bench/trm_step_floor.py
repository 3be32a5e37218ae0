"""How fast can one TRM training step be at the reference's shapes? A floor from its matrix products.

    python bench/trm_step_floor.py [--shape cpu|paper] [--threads 2] [--repeats 50]

Lists every matrix product of one ACT training step of the mlp_t TRM (forward of all H x (L+1) network
calls, backward of the last cycle: input and weight gradients), times each alone with the same BLAS call
PyTorch makes, and adds the fused elementwise SwiGLU work (``silu(gate) * up`` forward for every call and
its backward for the gradient cycle, under ``torch.compile``, the fastest form measured). The sum is a
floor for any implementation of the same model that runs the same fp32 products on this CPU; dividing the
reference port's measured step (``bench/reference_trm.py``) by it bounds the speed-up any rewrite can give
at identical shapes. RMSNorm, residual adds, embeddings, heads, loss and optimizer are left out of the
floor (so the true floor is higher).
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
import trm_throughput as bench  # noqa: E402  (bench/ sibling)
from smoltrain.models.layers import swiglu_intermediate_size  # noqa: E402


def step_products(shape: bench.Shape, batch: int) -> tuple[Counter, Counter]:
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
        gemms[(rows, k, n)] += calls * shape.L_layers
        gemms[(rows, n, k)] += grad_calls * shape.L_layers  # input gradient
        gemms[(n, rows, k)] += grad_calls * shape.L_layers  # weight gradient
    for rows, inner in ((batch * d, inner_t), (batch * seq, inner_c)):
        elementwise[(rows, inner, False)] += (calls - grad_calls) * shape.L_layers
        elementwise[(rows, inner, True)] += grad_calls * shape.L_layers
    head = (batch * shape.seq_len, d, shape.vocab_size)
    gemms[head] += 1
    gemms[(head[0], head[2], head[1])] += 1
    gemms[(head[2], head[0], head[1])] += 1
    return gemms, elementwise


def seconds(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - started) / repeats)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(bench.SHAPES), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = bench.SHAPES[args.shape]
    batch = shape.batch["cpu"]
    gemms, elementwise = step_products(shape, batch)

    print(f"shape {args.shape}: {shape.describe(batch)}; {args.threads} threads, fp32, CPU {bench.cpu_name()}")
    print("\n| matrix product (M x K x N) | per step | ms each | GFLOP/s |\n|---|---:|---:|---:|")
    gemm_total = 0.0
    for (m, k, n), count in sorted(gemms.items(), key=lambda item: -item[0][0] * item[0][1] * item[0][2]):
        a, b = torch.randn(m, k), torch.randn(k, n)
        t = seconds(lambda a=a, b=b: a @ b, args.repeats)
        gemm_total += count * t
        print(f"| {m} x {k} x {n} | {count} | {1e3 * t:.3f} | {2 * m * k * n / t / 1e9:.0f} |")

    fused = torch.compile(lambda gate, up: F.silu(gate) * up)
    elementwise_total = 0.0
    for (rows, inner, grad), count in elementwise.items():
        gate = torch.randn(rows, inner, requires_grad=grad)
        up = torch.randn(rows, inner, requires_grad=grad)
        if grad:
            out_grad = torch.randn(rows, inner)
            t = seconds(lambda g=gate, u=up, o=out_grad: fused(g, u).backward(o), args.repeats)
        else:
            with torch.no_grad():
                t = seconds(lambda g=gate, u=up: fused(g, u), args.repeats)
        elementwise_total += count * t

    torch.manual_seed(0)
    reference = bench.ref.Trainer(
        bench.reference_config(shape, batch, torch.float32), device=torch.device("cpu"), lr=bench.LR,
        weight_decay=bench.WEIGHT_DECAY, puzzle_emb_lr=bench.LR, puzzle_emb_weight_decay=bench.WEIGHT_DECAY,
    )  # fmt: skip
    data = bench.random_batch(shape, batch, torch.device("cpu"))
    reference_step = seconds(lambda: reference.step(data), max(3, args.repeats // 10))
    floor = gemm_total + elementwise_total
    print(
        f"\nmatrix products: {1e3 * gemm_total:.1f} ms per step; fused SwiGLU elementwise: "
        f"{1e3 * elementwise_total:.1f} ms; floor {1e3 * floor:.1f} ms\n"
        f"reference port (a), measured: {1e3 * reference_step:.1f} ms per step -> no implementation of these "
        f"shapes can beat it by more than {reference_step / floor:.2f}x on this CPU "
        f"(matrix products alone: {reference_step / gemm_total:.2f}x)"
    )


if __name__ == "__main__":
    main()
