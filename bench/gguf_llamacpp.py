"""llama.cpp against smoltrain on an exported GGUF: the same tokens, logits and greedy continuations.

    python bench/gguf_llamacpp.py [--run RUN_DIR] [--steps 150] [--new-tokens 24] [--json OUT] [--override KEY=VALUE]

Without ``--run`` it trains two tiny runs on a synthetic corpus first (a byte-level BPE of 400 tokens, 2 layers
of 64, ``--steps`` CPU steps: enough that greedy decoding follows the corpus instead of near-tied noise), one
with QK-norm (exported as llama.cpp's ``qwen3``) and one without (``llama``, q/k rows reordered); ``--override``
adds config overrides to both (e.g. ``"arch.rope_scaling={rope_type: yarn, factor: 4.0,
original_max_position_embeddings: 16}"`` to check the RoPE scaling GGUF export writes). For each run
it exports ``--format gguf``, loads the file with ``llama-cpp-python`` (llama.cpp's own tokenizer and CPU
kernels) and checks, for a few prompts:

* tokenization: llama.cpp's ids for the prompt equal ours (the gpt-2 pre-tokenizer, the merges and the
  ChatML special tokens);
* logits: the largest |difference| of the prompt's last-position logits, relative to the largest |logit|
  (fp32 weights and KV cache on both sides; the kernels sum in different orders, so not bit for bit:
  < 1e-5 required);
* greedy: ``--new-tokens`` tokens decoded by llama.cpp (temperature 0, no repeat penalty) equal ours.

Exit status 0 when every check passes, 1 when one fails, 0 with a message when ``llama-cpp-python`` is not
installed (``pip install llama-cpp-python`` builds llama.cpp from source; it is not a smoltrain dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

# The last one holds ChatML special tokens: llama.cpp must keep them whole (CONTROL tokens), as ours does.
PROMPTS = ["the cat sees", "a small bird finds the", "my friend", "<|im_start|>user\nthe dog<|im_end|>\n"]
# fp32 weights and (asked for) an fp32 KV cache on both sides, but llama.cpp's kernels sum in other orders:
# differences scale with the logits, so the bound is relative to the largest |logit| (seen: <= 4e-7; with
# llama.cpp's default fp16 KV cache ~1e-4).
RELATIVE_LOGIT_TOLERANCE = 1e-5
GGML_TYPE_F32 = 0  # llama.cpp keeps its KV cache in fp16 by default: ask for fp32, as ours


def _corpus(path: Path) -> None:
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "finds", "watches", "follows", "helps"]
    objects = ["the ball", "a red apple", "the river", "a green hat", "the garden", "a big tree"]
    docs = [" ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(6))
            for _ in range(600)]
    path.write_text("\n\n".join(docs) + "\n")


def train_tiny_runs(root: Path, steps: int, overrides: tuple[str, ...] = ()) -> list[Path]:
    from smoltrain.data.text import build_text_dataset
    from smoltrain.data.tokenizer import train_tokenizer
    from smoltrain.families import load_config
    from smoltrain.train.trainer import Trainer

    _corpus(root / "corpus.txt")
    train_tokenizer([root / "corpus.txt"], 400, root / "tok")
    build_text_dataset([str(root / "corpus.txt")], root / "tok", root / "text", val_fraction=0.05)
    runs = []
    for qk_norm in (True, False):
        run = root / f"run-qk{int(qk_norm)}"
        cfg = load_config("lm-pretrain-cpu", [
            f"data_paths=[{root / 'text'}]", f"run_dir={run}", f"max_steps={steps}", "arch.hidden_size=64",
            "arch.num_attention_heads=4", "arch.num_key_value_heads=2", "arch.seq_len=64", f"arch.qk_norm={qk_norm}",
            "global_batch_size=16", "lr_warmup_steps=10", "num_threads=1", "log_every=1000", "eval_max_examples=16",
            *overrides,
        ])
        Trainer(cfg).fit()
        runs.append(run)
    return runs


def check_run(run: Path, out_dir: Path, new_tokens: int) -> dict:
    import numpy as np
    import torch
    from llama_cpp import Llama

    from smoltrain.apps.generate import load_lm
    from smoltrain.data.tokenizer import encode
    from smoltrain.interop.gguf_export import export_gguf

    path = export_gguf(run, out_dir / f"{run.name}.gguf")
    lm = load_lm(run, device="cpu")
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    report: dict = {"run": str(run), "architecture": "qwen3" if lm.model.config.qk_norm else "llama", "prompts": []}
    for prompt in PROMPTS:
        ours_ids = encode(lm.tokenizer, prompt)
        theirs_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(theirs_ids)
        theirs_logits = np.asarray(llm.scores[len(theirs_ids) - 1], dtype=np.float64)
        with torch.no_grad():
            ours_logits = lm.model(torch.tensor([ours_ids])).logits[0, -1].double().numpy()
        greedy_ours = lm.model.generate(torch.tensor([ours_ids]), new_tokens, temperature=0.0)[0, len(ours_ids):]
        llm.reset()
        greedy_theirs = []
        for token in llm.generate(theirs_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            greedy_theirs.append(int(token))
            if len(greedy_theirs) == new_tokens:
                break
        report["prompts"].append({
            "prompt": prompt,
            "same_tokens": list(ours_ids) == list(theirs_ids),
            "max_abs_logit_diff": float(np.abs(ours_logits - theirs_logits).max()),
            "relative_logit_diff": float(np.abs(ours_logits - theirs_logits).max() / np.abs(ours_logits).max()),
            "same_greedy": greedy_ours.tolist() == greedy_theirs,
            "greedy_text": lm.tokenizer.decode(greedy_ours.tolist()),
        })
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="an arch=lm run directory (default: train two tiny ones)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of each tiny run")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--override", action="append", default=[], help="a config override for the tiny runs")
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed, so llama.cpp cannot be checked here: pip install llama-cpp-python "
              "(it builds llama.cpp from source) and run this again")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gguf_bench_") as tmp:
        root = Path(tmp)
        runs = [Path(args.run)] if args.run else train_tiny_runs(root, args.steps, tuple(args.override))
        reports = [check_run(run, root, args.new_tokens) for run in runs]
    ok = True
    for report in reports:
        for p in report["prompts"]:
            passed = p["same_tokens"] and p["same_greedy"] and p["relative_logit_diff"] < RELATIVE_LOGIT_TOLERANCE
            ok &= passed
            print(f"{report['architecture']:6s} {p['prompt']!r:28s} tokens {'same' if p['same_tokens'] else 'DIFFER'}"
                  f"  max|dlogit| {p['max_abs_logit_diff']:.1e} ({p['relative_logit_diff']:.1e} of max|logit|)"
                  f"  greedy {'same' if p['same_greedy'] else 'DIFFER'}"
                  f"  -> {p['greedy_text'][:40]!r}")
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}: {'all checks passed' if ok else 'SOME CHECKS FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"llama_cpp_python": llama_cpp.__version__, "runs": reports}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
