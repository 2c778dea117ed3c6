"""mxbai-rerank v2 native scoring at the real model's shape: bf16 vs fp32 parity and pairs/s, one prepared run.

Nothing is downloaded: a random-weight Qwen2ForCausalLM with mxbai-rerank-base-v2's config
(Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, vocabulary 151,936, tied
embeddings) is built in memory, with the tiny test tokenizer (tests/fixtures/mxbai/tiny-qwen2;
its ids are a subset of the vocabulary). Pairs: standard-library docstrings, shuffled, at
`--max-length` (default 512). Printed: pairs/s of `skill.mxbai.MxbaiScorer` in fp32 and bf16 on
the device, in the length-sorted token-budget batches `score` uses; bf16 − fp32 max |Δ| and the
Spearman correlation of the two; and fp32 on the device vs fp32 on the CPU on a few pairs.

    python benchmarks/mxbai_gpu.py [--device cuda] [--pairs 2000] [--max-length 512] [--shape base|large|tiny]

Sized to finish in a few minutes on one H100/H200; `--shape tiny --device cpu` checks the script itself.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = {
    "base": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
    "large": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    },
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 600},
}


def build_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from skill.testing import stdlib_text

    texts = [t for t in stdlib_text(4000) if len(t) > 40]
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        q, d = rng.choice(texts), rng.choice(texts)
        pairs.append((q.split("\n", 1)[0][:200], d))
    return pairs


def batches(lengths: np.ndarray, budget: int, max_pairs: int) -> list[np.ndarray]:
    from skill.score import make_batches

    order = np.argsort(lengths, kind="stable")
    return [order[a:b] for a, b in make_batches(lengths[order], token_budget=budget, max_pairs=max_pairs)]


def run(scorer, pairs, plan) -> tuple[np.ndarray, float]:
    out = np.empty(len(pairs), dtype=np.float64)
    scorer.score(pairs[:4])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for idx in plan:
        out[idx] = scorer.score([pairs[i] for i in idx])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from skill.mxbai import MxbaiScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "mxbai" / "tiny-qwen2")
    config = Qwen2Config(
        **SHAPES[args.shape],
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        initializer_range=0.02,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    pairs = build_pairs(args.pairs)
    scorers = {"fp32": MxbaiScorer(model.to(args.device), tokenizer, max_length=args.max_length)}
    lengths = scorers["fp32"].lengths(pairs)
    overhead = scorers["fp32"].prompt.template_length
    plan = batches(lengths, args.batch_size * (min(args.max_length, 256) + overhead), args.batch_size * 8)
    print(
        f"shape {args.shape} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), device {args.device}, {len(pairs)} pairs, mean length {lengths.mean():.0f} tokens (template {overhead}), {len(plan)} batches"
    )
    results = {}
    results["fp32"] = run(scorers["fp32"], pairs, plan)
    if args.device.startswith("cuda") and torch.cuda.is_bf16_supported():
        bf16 = Qwen2ForCausalLM(config)
        bf16.load_state_dict(model.state_dict())
        scorers["bf16"] = MxbaiScorer(bf16.to(args.device, dtype=torch.bfloat16).eval(), tokenizer, max_length=args.max_length)
        results["bf16"] = run(scorers["bf16"], pairs, plan)
    for name, (_, seconds) in results.items():
        print(f"{name}: {len(pairs) / seconds:,.1f} pairs/s ({seconds:.1f} s)")
    fp32 = results["fp32"][0]
    print(f"fp32 score spread: std {fp32.std():.3g}, range [{fp32.min():.3g}, {fp32.max():.3g}]")
    if "bf16" in results:
        bf = results["bf16"][0]
        print(f"bf16 vs fp32: max |Δ| {np.abs(bf - fp32).max():.3g}, mean |Δ| {np.abs(bf - fp32).mean():.3g}, Spearman {spearmanr(bf, fp32).statistic:.4f}")
    if args.device != "cpu":
        few = pairs[:16]
        cpu = MxbaiScorer(model.to("cpu"), tokenizer, max_length=args.max_length).score(few)
        print(f"fp32 {args.device} vs fp32 cpu on {len(few)} pairs: max |Δ| {np.abs(cpu - fp32[:16]).max():.3g}")


if __name__ == "__main__":
    main()
