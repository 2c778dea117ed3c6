"""Issue 11 parts 4–5, issue 14 items 3 and 5: `score` on several worker processes and on Ray, the teacher gate, the estimate.

Oracles: the single-process path's tables (the reference), a real SIGKILL of one worker process
and the chunk files' mtimes, a real local Ray cluster, and pytrec_eval / scipy computed here on
the written tables.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO

from skill.config import DataConfig, MineConfig, ScoreConfig, TeacherSpec
from skill.errors import ExitCode, SkillError
from skill.mine import mine
from skill.score import score

TABLES = {"scores.parquet": "label", "heldout_scores.parquet": "teacher_score", "dev_scores.parquet": "teacher_score"}
MINED_FILES = (
    "manifest.json",
    "split.json",
    "train_pairs.parquet",
    "heldout_candidates.parquet",
    "qrels_heldout.json",
    "dev_candidates.parquet",
    "qrels_dev.json",
    "mine.json",
)
CHUNK = 16  # ~45 chunks: a kill lands between commits


@pytest.fixture(scope="module")
def mined_dev(stdlib_domain, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("engines") / "mined"
    data = DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"])
    mine(run, data, MineConfig(retriever="bm25", train_top_k=6, eval_top_k=10, dev_queries=20))
    return run


def _copy(src: Path, dest: Path, names=MINED_FILES) -> Path:
    dest.mkdir(parents=True)
    for name in names:
        shutil.copy(src / name, dest / name)
    return dest


def _cfg(teacher: Path | str, **kw) -> ScoreConfig:
    return ScoreConfig(teachers=[TeacherSpec(model=str(teacher))], max_length=128, chunk_size=CHUNK, **kw)


@pytest.fixture(scope="module")
def reference(mined_dev, tiny_reranker, tmp_path_factory) -> Path:
    """The single-process path: the reference every engine must reproduce."""
    run = _copy(mined_dev, tmp_path_factory.mktemp("ref") / "run")
    result = score(run, _cfg(tiny_reranker))
    assert result.metrics["workers"] == 1 and result.metrics["dev_pairs"] > 0
    return run


def _assert_same_tables(a: Path, b: Path) -> None:
    for name, column in TABLES.items():
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.drop([column]).to_pandas().equals(tb.drop([column]).to_pandas()), name
        np.testing.assert_allclose(tb.column(column).to_numpy(), ta.column(column).to_numpy(), rtol=0, atol=1e-6, err_msg=name)


def _chunks(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run.glob("score_work/*/chunk-*.npy")}


def test_two_cpu_workers_give_the_same_tables_as_one(reference, mined_dev, tiny_reranker, tmp_path):
    run = _copy(mined_dev, tmp_path / "run")
    result = score(run, _cfg(tiny_reranker, devices=["cpu", "cpu"]))
    assert result.metrics["engine"] == "local" and result.metrics["workers"] == 2 and result.metrics["devices"] == ["cpu", "cpu"]
    assert result.metrics["threads_per_worker"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert result.metrics["chunks_scored"] == result.metrics["chunks_total"] == len(_chunks(run))
    _assert_same_tables(reference, run)
    assert not list(run.glob("score_work/*/claims-*")), "the claim folder is removed after a clean run"


def test_kill_9_of_one_worker_then_a_rerun_rescoring_at_most_one_chunk(reference, mined_dev, tiny_reranker, tmp_path):
    run = _copy(mined_dev, tmp_path / "run")
    args = [
        *CLI,
        "score",
        "--run",
        str(run),
        "--teacher",
        str(tiny_reranker),
        "--max-length",
        "128",
        "--chunk-size",
        str(CHUNK),
        "--devices",
        "cpu,cpu",
        "--json",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    victim = None  # (worker, pid): whichever worker commits a chunk first (under load one worker may still be loading)
    deadline = time.monotonic() + 240
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        for state_file in sorted(run.glob("score_work/*/claims-*/worker-*.json")):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            if state["chunks"] and state["phase"] == "scoring":  # kill it at work, as a user or the OOM killer would
                victim = (state["worker"], state["pid"])
                os.kill(state["pid"], signal.SIGKILL)
                break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=240)
    assert victim is not None, f"no worker was caught between two chunks:\n{err[-2000:]}"
    envelope = json.loads(out)
    assert proc.returncode == ExitCode.RUNTIME_FAILURE, err[-2000:]
    message = envelope["errors"][0]["message"]
    assert f"worker {victim[0]} (cpu, pid {victim[1]})" in message and "SIGKILL" in message and "rerun the same command" in envelope["errors"][0]["fix"]
    assert not (run / "scores.parquet").exists(), "no table is written while a chunk is missing"
    before = _chunks(run)
    n_pairs = json.loads(next(run.glob("score_work/*/plan.json")).read_text())["pairs"]
    n_chunks = -(-n_pairs // CHUNK)
    assert n_chunks - 1 <= len(before) <= n_chunks, "the surviving worker scored every other chunk"

    rerun = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _chunks(run)
    rescored = {name for name, mtime in after.items() if before.get(name) != mtime}
    assert len(rescored) == n_chunks - len(before) <= 1, rescored
    assert json.loads(rerun.stdout)["metrics"]["chunks_scored"] == len(rescored)
    if rescored:  # the line before scoring names exactly the pairs still to score (unique, not yet committed)
        c = int(next(iter(rescored))[len("chunk-") : -len(".npy")])
        assert (
            f"score: {min(CHUNK, n_pairs - c * CHUNK):,} pairs to score ({n_pairs:,} in this shard, {n_pairs - min(CHUNK, n_pairs - c * CHUNK):,} already committed)"
            in rerun.stderr
        )
    _assert_same_tables(reference, run)
    assert not list(run.glob("score_work/*/claims-*")), "the dead invocation's claim folder is cleaned by the rerun"


def test_local_ray_cluster_gives_the_same_tables(reference, mined_dev, tiny_reranker, tmp_path):
    import ray  # in the dev extra (reranker-skill[cluster])

    run = _copy(mined_dev, tmp_path / "run")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        result = score(run, _cfg(tiny_reranker, engine="ray", workers=2))
    finally:
        ray.shutdown()
    assert result.metrics["engine"] == "ray" and result.metrics["workers"] == 2 and result.metrics["threads_per_worker"] == 1
    assert result.metrics["chunks_scored"] == result.metrics["chunks_total"]
    _assert_same_tables(reference, run)
    # The same chunk store: the in-process path finds every chunk committed and scores nothing.
    again = score(run, _cfg(tiny_reranker), force=True)
    assert again.metrics["chunks_scored"] == 0
    _assert_same_tables(reference, run)


# ---------------------------------------------------------------------------------------------
# The teacher gate


def _pytrec_ndcg10(table, scores: np.ndarray, qrels: dict) -> dict[str, float]:
    """NDCG@10 per judged query, by pytrec_eval directly; a judged query without candidates scores 0."""
    import pytrec_eval

    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), scores, strict=True):
        run.setdefault(q, {})[d] = float(s)
    res = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"}).evaluate({q: r for q, r in run.items() if q in judged})
    return {q: res.get(q, {}).get("ndcg_cut_10", 0.0) for q in judged}


def _check_gate(run: Path, gate: dict) -> None:
    dev = pq.read_table(run / "dev_scores.parquet")
    qrels = json.loads((run / "qrels_dev.json").read_text())
    teacher = _pytrec_ndcg10(dev, dev.column("teacher_score").to_numpy(), qrels)
    first = _pytrec_ndcg10(dev, -dev.column("rank").to_numpy().astype(float), qrels)
    assert gate["queries"] == len(teacher) > 0
    assert gate["teacher_ndcg@10"] == pytest.approx(np.mean(list(teacher.values())), abs=1e-9)
    assert gate["first_stage_ndcg@10"] == pytest.approx(np.mean(list(first.values())), abs=1e-9)
    assert gate["delta"] == pytest.approx(np.mean([teacher[q] - first[q] for q in teacher]), abs=1e-9)
    assert 0 <= gate["p_value"] <= 1


def test_gate_numbers_equal_pytrec_eval_on_the_dev_tables(reference):
    record = json.loads((reference / "manifest.json").read_text())["stages"]["score"]
    gate = record["metrics"]["gate"]
    _check_gate(reference, gate)
    dev, cand = pq.read_table(reference / "dev_scores.parquet"), pq.read_table(reference / "dev_candidates.parquet")
    assert dev.column_names == [*cand.column_names, "teacher_score"] and dev.num_rows == cand.num_rows
    assert json.loads((reference / "scores.meta.json").read_text())["gate"] == gate
    assert record["outputs"]["dev_scores"] == "dev_scores.parquet"


def _scores_file(run: Path, path: Path, fn) -> Path:
    """A scores file over every train / held-out / dev row: label = fn(table, rows)."""
    rows = []
    for name in ("train_pairs.parquet", "heldout_candidates.parquet", "dev_candidates.parquet"):
        if (run / name).exists():
            t = pq.read_table(run / name)
            for r, y in zip(t.to_pylist(), fn(t), strict=True):
                rows.append({"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": float(y)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gold(t):  # a teacher that knows the labels: it must beat the first stage
    rng = np.random.default_rng(0)
    return 4.0 * np.nan_to_num(t.column("relevance").to_numpy()) + rng.normal(0, 0.5, t.num_rows) - 2.0


def _reverse(t):  # a teacher that reverses the first stage: it cannot help
    return t.column("rank").to_numpy().astype(float)


def test_gate_pass_fail_and_it_never_reads_heldout_labels(mined_dev, tmp_path, cli):
    run = _copy(mined_dev, tmp_path / "good", names=[n for n in MINED_FILES if n != "qrels_heldout.json"])  # no held-out labels at all
    proc = cli("score", "--run", run, "--teacher", _scores_file(run, tmp_path / "gold.jsonl", _gold), "--json")
    assert proc.returncode == 0, proc.stdout
    gate = json.loads(proc.stdout)["metrics"]["gate"]
    assert gate["status"] == "pass" and gate["verdict"] == "WIN" and gate["split"] == "dev"
    _check_gate(run, gate)

    bad = _copy(mined_dev, tmp_path / "bad")
    proc = cli("score", "--run", bad, "--teacher", _scores_file(bad, tmp_path / "rev.jsonl", _reverse))
    assert proc.returncode == 0
    assert "teacher gate (" in proc.stdout and "→ FAIL" in proc.stdout
    assert (
        "distilling it cannot help: change the teacher (or blend it with the first stage: score --teacher first-stage --weight auto beside it)" in proc.stderr
    )
    # The fix, followed: the blend runs, gives the reversed teacher the smaller weight, and the gate still says it is no better than the first stage.
    proc = cli("score", "--run", bad, "--teacher", tmp_path / "rev.jsonl", "--teacher", "first-stage", "--weight", "auto", "--json")
    envelope = json.loads(proc.stdout)
    weights = envelope["metrics"]["ensemble_weights"]
    assert proc.returncode == 0 and weights["first-stage"] > weights[str(tmp_path / "rev.jsonl")]
    assert envelope["metrics"]["gate"]["status"] != "pass"
    proc = cli("score", "--run", bad, "--teacher", tmp_path / "rev.jsonl", "--fail-on-gate", "--force", "--json")
    envelope = json.loads(proc.stdout)
    assert proc.returncode == ExitCode.PARTIAL and envelope["status"] == "partial" and envelope["metrics"]["gate"]["status"] == "fail"
    assert (bad / "scores.parquet").exists(), "the tables are valid and kept; only the gate failed"


def test_gate_is_unknown_for_a_run_folder_from_before_dev_splits(mined_dev, tmp_path, cli):
    run = _copy(mined_dev, tmp_path / "old", names=[n for n in MINED_FILES if "dev" not in n])
    proc = cli("score", "--run", run, "--teacher", _scores_file(run, tmp_path / "gold.jsonl", _gold), "--json")
    assert proc.returncode == 0
    envelope = json.loads(proc.stdout)
    assert envelope["metrics"]["gate"]["status"] == "unknown" and "before dev splits" in envelope["metrics"]["gate"]["reason"]
    assert not (run / "dev_scores.parquet").exists() and "dev_scores" not in envelope["artifacts"]


def test_ensemble_gate_is_on_the_combined_label_space(mined_dev, tmp_path):
    from scipy import stats

    run = _copy(mined_dev, tmp_path / "run")
    a, b = _scores_file(run, tmp_path / "a.jsonl", _gold), _scores_file(run, tmp_path / "b.jsonl", _reverse)
    result = score(run, ScoreConfig(teachers=[TeacherSpec(model=str(a), weight=3.0), TeacherSpec(model=str(b), weight=1.0)]))
    dev = pq.read_table(run / "dev_scores.parquet")
    qids = np.asarray(dev.column("query_id").to_pylist())
    expected = np.empty(dev.num_rows)
    for q in set(qids):
        ix = qids == q
        za, zb = (np.nan_to_num(stats.zscore(fn(dev)[ix].astype(np.float64))) for fn in (_gold, _reverse))
        expected[ix] = (3.0 * za + 1.0 * zb) / 4.0
    np.testing.assert_allclose(dev.column("teacher_score").to_numpy(), expected, atol=1e-5)
    _check_gate(run, result.metrics["gate"])


# ---------------------------------------------------------------------------------------------
# Flags


def test_bad_engine_flags_are_usage_errors(mined_dev, tiny_reranker, tmp_path, cli):
    run = _copy(mined_dev, tmp_path / "run")
    for extra, words in (
        (["--devices", "cpu,cuda:0"], "mixes cpu and cuda"),
        (["--devices", "gpu0"], "is not a device"),
        (["--devices", "cpu,cpu", "--device", "cpu"], "both given"),
        (["--workers", "2"], "apply to --engine ray"),
        (["--engine", "ray", "--devices", "cpu,cpu"], "Ray places its actors itself"),
    ):
        proc = cli("score", "--run", run, "--teacher", tiny_reranker, *extra, "--json")
        assert proc.returncode == ExitCode.USAGE, (extra, proc.stdout)
        assert words in json.loads(proc.stdout)["errors"][0]["message"], (extra, proc.stdout)
    assert not (run / "score_work").exists()


def test_a_broken_teacher_in_a_worker_stops_every_worker_and_writes_nothing(mined_dev, tiny_reranker, tmp_path):
    import torch

    from skill.modeling import load_reranker

    model = load_reranker(str(tiny_reranker))
    with torch.no_grad():
        model[-1].linear.weight.fill_(float("nan"))  # a real model whose head emits NaN
    model.save(str(tmp_path / "nan-teacher"))
    run = _copy(mined_dev, tmp_path / "run")
    with pytest.raises(SkillError) as info:
        score(run, _cfg(tmp_path / "nan-teacher", devices=["cpu", "cpu"]))
    assert info.value.code == ExitCode.RUNTIME_FAILURE and "nan" in info.value.message.lower() and "(cpu, pid " in info.value.message
    assert not any((run / name).exists() for name in TABLES) and not list(run.glob("score_work/*/chunk-*.npy"))
