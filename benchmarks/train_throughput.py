"""Training throughput: the rendered train.py vs a plain hand-written sentence-transformers loop.

Same data (a toy-scored stdlib-docstring run folder), same model (an Ettin-shaped cross-encoder on
a randomly initialised ModernBERT of hidden 256 — the 17m width — built offline), same batch,
sequence length, learning rate and MSE loss on raw scores, fp32 on CPU. Both sides time only the
optimizer steps (forward, backward, update; the first step is a warm-up and is not timed), so
evaluation, checkpointing and process start-up are excluded from both. One run each; prints
pairs/s and the ratio rendered / hand-written (target >= 0.95).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hand_written(base: Path, run: Path, *, steps: int, batch: int, seq: int, lr: float, seed: int) -> float:
    """The loop a person would write by hand around CrossEncoder + MSELoss."""
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers.cross_encoder.losses import MSELoss
    from transformers import get_linear_schedule_with_warmup

    from skill.modeling import build_ettin_reranker

    rows = pq.read_table(run / "scores.parquet", columns=["query", "document", "label"]).to_pylist()
    random.Random(seed).shuffle(rows)
    model = build_ettin_reranker(str(base), max_seq_length=seq, seed=seed)
    model.train()
    loss_fn = MSELoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, round(0.03 * steps)), steps)
    timed = 0.0
    for step in range(steps):
        chunk = [rows[(step * batch + i) % len(rows)] for i in range(batch)]
        start = time.perf_counter()
        loss = loss_fn([[r["query"] for r in chunk], [r["document"] for r in chunk]], torch.tensor([r["label"] for r in chunk]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer clips at 1.0 too
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step > 0:
            timed += time.perf_counter() - start
    return (steps - 1) * batch / timed


def rendered(base: Path, run: Path, *, steps: int, batch: int, seq: int, lr: float, seed: int) -> dict:
    from skill.config import TrainConfig
    from skill.render import render

    cfg = TrainConfig(
        base=str(base),
        max_steps=steps,
        eval_every=steps,
        global_batch=batch,
        per_device_batch=batch,
        max_seq_length=seq,
        learning_rate=lr,
        seed=seed,
        eval_queries=8,
        early_stopping_patience=0,
    )
    render(run, cfg, force=True)
    proc = subprocess.run([sys.executable, str(run / "train.py")], cwd=run, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((run / "train_result.json").read_text())["throughput"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    from skill.domain import build_stdlib_domain
    from skill.testing import build_tiny_modernbert, write_toy_scored_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        domain = build_stdlib_domain(tmp / "domain", max_pairs=200, distractors=50)
        run = write_toy_scored_run(tmp / "run", domain)
        base = build_tiny_modernbert(tmp / "base", hidden_size=256, num_layers=4)
        settings = {"steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": 2.4e-4, "seed": 12}
        hand = hand_written(base, run, **settings)
        script = rendered(base, run, **settings)
    ratio = script["train_pairs_per_second"] / hand
    print(f"model: ModernBERT hidden 256 x 4 layers + Ettin head, fp32 CPU, torch threads {__import__('torch').get_num_threads()}")
    print(f"{args.steps} steps x {args.batch} pairs, max_seq_length {args.seq} (first step untimed on both sides)")
    print(f"hand-written loop   : {hand:8.1f} pairs/s")
    print(f"rendered train.py   : {script['train_pairs_per_second']:8.1f} pairs/s")
    print(f"ratio rendered/hand : {ratio:.3f}x (target >= 0.95)")


if __name__ == "__main__":
    main()
