"""Issue 3: `score` — teacher adapters, raw scale, metadata, warnings, resume after kill -9, shards, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, run_json
from scipy.stats import zscore

from skill.config import DataConfig, MineConfig, ScoreConfig, TeacherSpec
from skill.errors import ExitCode, SkillError
from skill.mine import mine
from skill.score import label_statistics, label_warnings, make_batches, score
from skill.testing import record_stages


@pytest.fixture(scope="module")
def mined(stdlib_domain, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("score")
    data = DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"])
    mine(base / "full", data, MineConfig(retriever="bm25", train_top_k=6, eval_top_k=6))
    return _copy(base / "full", base / "mined", rows=150)  # 150 train + 150 held-out rows keep the tests fast


def _copy(mined: Path, dest: Path, *, rows: int | None = None) -> Path:
    """A copy of the mined run folder (optionally cut to the first `rows` rows of each table)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "split.json", "train_pairs.parquet", "heldout_candidates.parquet", "qrels_heldout.json", "mine.json"):
        if rows is not None and name.endswith(".parquet"):
            pq.write_table(pq.read_table(mined / name).slice(0, rows), dest / name)
        else:
            shutil.copy(mined / name, dest / name)
    record_stages(dest, "mine")  # the cut tables, recorded as mine's outputs
    return dest


def _same(a: Path, b: Path) -> bool:
    """Identical tables (NaN equal to NaN, float bits compared exactly)."""
    return pq.read_table(a).to_pandas().equals(pq.read_table(b).to_pandas())


def _cfg(*teachers: TeacherSpec, **kw) -> ScoreConfig:
    return ScoreConfig(teachers=list(teachers), max_length=128, **kw)


@pytest.fixture(scope="module")
def ce_run(mined, tiny_reranker, tmp_path_factory):
    run = _copy(mined, tmp_path_factory.mktemp("ce") / "run")
    result = score(run, _cfg(TeacherSpec(model=str(tiny_reranker)), chunk_size=200))
    return run, result


def _labels(run: Path) -> np.ndarray:
    return pq.read_table(run / "scores.parquet").column("label").to_numpy()


def test_cross_encoder_teacher_raw_scores_and_tables(ce_run, tiny_reranker):
    run, result = ce_run
    scores = pq.read_table(run / "scores.parquet")
    train = pq.read_table(run / "train_pairs.parquet")
    assert scores.column_names == [*train.column_names, "label"] and str(scores.schema.field("label").type) == "float"
    assert scores.drop(["label"]).to_pandas().equals(train.to_pandas())
    held = pq.read_table(run / "heldout_scores.parquet")
    assert held.column_names[-1] == "teacher_score" and held.num_rows == pq.read_table(run / "heldout_candidates.parquet").num_rows
    # Same numbers as CrossEncoder.predict with Identity, computed independently.
    from skill.modeling import load_reranker

    model = load_reranker(str(tiny_reranker))
    rows = scores.slice(0, 40).to_pylist()
    expected = model.predict([(r["query"], r["document"]) for r in rows], batch_size=7)
    np.testing.assert_allclose([r["label"] for r in rows], expected, atol=1e-5)
    hrows = held.slice(0, 20).to_pylist()
    np.testing.assert_allclose([r["teacher_score"] for r in hrows], model.predict([(r["query"], r["document"]) for r in hrows]), atol=1e-5)
    meta = json.loads((run / "scores.meta.json").read_text())
    assert meta["score_space"] == "raw_logit" and meta["teachers"][0]["type"] == "cross-encoder"
    assert meta["teachers"][0]["revision"].startswith("sha256:")  # a folder's content hash (skill.loading.model_identity)
    assert meta["label_stats"]["n"] == scores.num_rows and set(meta["per_query"]) == set(train.column("query_id").to_pylist())
    assert result.metrics["unique_pairs"] == result.metrics["pairs"] + result.metrics["heldout_pairs"] - result.metrics["duplicates_skipped"]


def test_sigmoid_saved_teacher_still_gives_raw_scores(mined, tiny_reranker, ce_run, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    sig = CrossEncoder(str(tiny_reranker), activation_fn=torch.nn.Sigmoid())
    sig.save(str(tmp_path / "sigmoid-teacher"))
    assert "Sigmoid" in (tmp_path / "sigmoid-teacher" / "config_sentence_transformers.json").read_text()
    run = _copy(mined, tmp_path / "run", rows=40)
    score(run, _cfg(TeacherSpec(model=str(tmp_path / "sigmoid-teacher")), chunk_size=200))
    np.testing.assert_allclose(_labels(run), _labels(ce_run[0])[:40], atol=1e-5)
    assert _labels(run).min() < 0  # raw, not squashed into (0, 1)


@pytest.fixture(scope="module")
def bi_run(mined, tiny_base, tmp_path_factory) -> Path:
    run = _copy(mined, tmp_path_factory.mktemp("bi") / "run")
    score(run, _cfg(TeacherSpec(model=str(tiny_base), type="bi-encoder"), chunk_size=200))
    return run


def test_bi_encoder_teacher_is_cosine(bi_run, tiny_base):
    run = bi_run
    table = pq.read_table(run / "scores.parquet").to_pylist()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_base))
    st.max_seq_length = 128 + st.tokenizer.num_special_tokens_to_add(pair=False)  # --max-length counts text tokens; [CLS]/[SEP] come on top
    for r in table[:5]:
        q = st.encode_query([r["query"]], normalize_embeddings=True)[0]
        d = st.encode_document([r["document"]], normalize_embeddings=True)[0]
        assert r["label"] == pytest.approx(float(q @ d), abs=1e-4)
    meta = json.loads((run / "scores.meta.json").read_text())
    assert meta["score_space"] == "cosine" and meta["teachers"][0]["type"] == "bi-encoder"


def test_ensemble_is_weighted_per_query_zscores(mined, ce_run, bi_run, tiny_base, tiny_reranker, tmp_path):
    bi = bi_run
    ens = _copy(mined, tmp_path / "ens")
    # Committed chunks are keyed by teacher + pairs, so the single-teacher runs' chunks are reused as they are.
    for src in (ce_run[0], bi):
        shutil.copytree(src / "score_work", ens / "score_work", dirs_exist_ok=True)
    result = score(
        ens, _cfg(TeacherSpec(model=str(tiny_reranker), weight=2.0), TeacherSpec(model=str(tiny_base), type="bi-encoder", weight=1.0), chunk_size=200)
    )
    groups = pd.Series(pq.read_table(ens / "scores.parquet").column("query_id").to_pylist())
    zscored = [
        pd.Series(_labels(r).astype(np.float64)).groupby(groups).transform(lambda x: zscore(x.to_numpy()) if x.std() > 0 else 0.0) for r in (ce_run[0], bi)
    ]
    expected = (2 * zscored[0] + zscored[1]).to_numpy() / 3  # scipy's z-score per query, weighted 2:1
    np.testing.assert_allclose(_labels(ens), expected, atol=1e-5)
    assert result.metrics["chunks_scored"] == 0
    meta = json.loads((ens / "scores.meta.json").read_text())
    assert meta["score_space"] == "normalised" and [t["weight"] for t in meta["teachers"]] == [2.0, 1.0]
    # per-query means of z-scores are 0
    df = pq.read_table(ens / "scores.parquet").to_pandas()
    assert df.groupby("query_id")["label"].mean().abs().max() < 1e-5


def _scores_file(run: Path, path: Path, fn, *, heldout: bool = True) -> Path:
    rows = pq.read_table(run / "train_pairs.parquet").to_pylist()
    if heldout:
        rows += pq.read_table(run / "heldout_candidates.parquet").to_pylist()
    with path.open("w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": fn(i, r)}) + "\n")
    return path


def test_file_teacher(mined, tmp_path):
    rng = np.random.default_rng(0)
    f = _scores_file(mined, tmp_path / "api_scores.jsonl", lambda i, r: float(rng.normal(0, 4)))
    expected = [json.loads(x)["label"] for x in f.read_text().splitlines()]
    run = _copy(mined, tmp_path / "run")
    result = score(run, _cfg(TeacherSpec(model=str(f))))
    n = pq.read_table(run / "train_pairs.parquet").num_rows
    np.testing.assert_allclose(_labels(run), expected[:n], rtol=1e-6)
    np.testing.assert_allclose(pq.read_table(run / "heldout_scores.parquet").column("teacher_score").to_numpy(), expected[n:], rtol=1e-6)
    meta = json.loads((run / "scores.meta.json").read_text())
    assert meta["teachers"][0]["type"] == "file" and meta["score_space"] == "raw_logit" and not result.warnings


def test_collapse_and_sigmoid_warnings_fire(mined, tmp_path):
    rng = np.random.default_rng(1)
    offsets: dict[str, float] = {}
    collapsed = _scores_file(
        mined, tmp_path / "collapsed.jsonl", lambda i, r: offsets.setdefault(r["query_id"], float(rng.normal(0, 5))) + float(rng.normal(0, 1e-4))
    )
    run = _copy(mined, tmp_path / "a")
    result = score(run, _cfg(TeacherSpec(model=str(collapsed))))
    assert any("collapsed" in w for w in result.warnings)
    assert any("collapsed" in w for w in json.loads((run / "scores.meta.json").read_text())["warnings"])
    squashed = _scores_file(mined, tmp_path / "squashed.jsonl", lambda i, r: float(1 / (1 + np.exp(-rng.normal(0, 6)))))
    run = _copy(mined, tmp_path / "b")
    result = score(run, _cfg(TeacherSpec(model=str(squashed), score_space="raw_logit")))
    assert any("Sigmoid-squashed" in w for w in result.warnings)
    assert not any("collapsed" in w for w in result.warnings)
    # A healthy raw-logit teacher triggers neither.
    overall, _, spread = label_statistics(rng.normal(0, 3, 200), [f"q{i // 10}" for i in range(200)])
    assert label_warnings(overall, spread, "raw_logit") == []


def _nothing_written(run: Path, *, failed: bool = False) -> None:
    """No table; no `score` record for a bad input; a `failed` one for a failure while scoring."""
    for name in ("scores.parquet", "heldout_scores.parquet", "scores.meta.json"):
        assert not (run / name).exists(), name
    record = json.loads((run / "manifest.json").read_text())["stages"].get("score")
    assert (record is not None and record["status"] == "failed" and record["error"]) if failed else record is None
    assert not (run / "score_work").exists() or not any(p.suffix == ".npy" and p.name.startswith("chunk") for p in (run / "score_work").rglob("*"))


def test_bad_scores_files_are_clear_errors(mined, tmp_path):
    run = _copy(mined, tmp_path / "run")
    missing_label = tmp_path / "missing.jsonl"
    _scores_file(mined, missing_label, lambda i, r: None if i == 3 else 1.5)
    code, payload = run_json("score", "--run", run, "--teacher", missing_label, "--teacher-type", "file")
    assert code == ExitCode.INVALID_INPUT and "not a finite number" in payload["errors"][0]["message"] and ":4" in payload["errors"][0]["where"]
    text_label = tmp_path / "text.csv"
    rows = pq.read_table(run / "train_pairs.parquet").to_pandas()[["query", "document"]]
    rows["label"] = ["high"] + [1.0] * (len(rows) - 1)
    rows.to_csv(text_label, index=False)
    with pytest.raises(SkillError) as err:
        score(run, _cfg(TeacherSpec(model=str(text_label))))
    assert err.value.code == ExitCode.INVALID_INPUT and "'high'" in err.value.message
    no_label = tmp_path / "nolabel.jsonl"
    no_label.write_text(json.dumps({"query": "a", "document": "b"}) + "\n")
    with pytest.raises(SkillError) as err:
        score(run, _cfg(TeacherSpec(model=str(no_label), type="file")))
    assert "label" in err.value.message
    partial = _scores_file(mined, tmp_path / "partial.jsonl", lambda i, r: 1.0, heldout=False)
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(SkillError) as err:
        score(run, _cfg(TeacherSpec(model=str(partial))))
    assert "no score for 5" in err.value.message
    _nothing_written(run)


def test_unknown_model_and_nan_teacher(mined, tiny_reranker, tmp_path):
    run = _copy(mined, tmp_path / "run")
    code, payload = run_json("score", "--run", run, "--teacher", "nobody/no-such-reranker")
    assert code == ExitCode.MISSING_RESOURCE and "local" in payload["errors"][0]["fix"]
    with pytest.raises(SkillError) as err:
        score(run, _cfg(TeacherSpec(model=str(tmp_path / "nowhere"))))
    assert err.value.code == ExitCode.MISSING_RESOURCE
    # A real model whose head emits NaN.
    import torch

    from skill.modeling import load_reranker

    model = load_reranker(str(tiny_reranker))
    with torch.no_grad():
        model[-1].linear.weight.fill_(float("nan"))
    model.save(str(tmp_path / "nan-teacher"))
    with pytest.raises(SkillError) as err:
        score(run, _cfg(TeacherSpec(model=str(tmp_path / "nan-teacher")), chunk_size=50))
    assert err.value.code == ExitCode.RUNTIME_FAILURE and "nan" in err.value.message.lower()
    _nothing_written(run, failed=True)


def test_shard_and_merge_equal_a_single_run(mined, ce_run, tiny_reranker, tmp_path):
    run = _copy(mined, tmp_path / "run")
    spec = TeacherSpec(model=str(tiny_reranker))
    first = score(run, _cfg(spec, chunk_size=200, shard="1/2"))
    assert first.metrics["merged"] is False and not (run / "scores.parquet").exists()
    second = score(run, _cfg(spec, chunk_size=200, shard="2/2"))
    assert second.metrics["merged"] is True
    assert first.metrics["chunks_scored"] + second.metrics["chunks_scored"] == second.metrics["chunks_total"]
    for name in ("scores.parquet", "heldout_scores.parquet"):
        assert _same(run / name, ce_run[0] / name)
    again = score(run, _cfg(spec, chunk_size=200), merge_only=True)
    assert again.metrics.get("skipped") is True
    with pytest.raises(SkillError) as err:
        score(run, _cfg(spec, shard="0/2"))
    assert err.value.code == ExitCode.USAGE


def test_kill_minus_9_then_resume_gives_the_identical_table(mined, tiny_reranker, tmp_path):
    cfg = _cfg(TeacherSpec(model=str(tiny_reranker)), chunk_size=16, batch_size=4)
    ref = _copy(mined, tmp_path / "ref", rows=80)
    total = score(ref, cfg).metrics["chunks_total"]  # uninterrupted

    run = _copy(mined, tmp_path / "killed", rows=80)
    args = ["score", "--run", str(run), "--teacher", str(tiny_reranker), "--chunk-size", "16", "--batch-size", "4", "--max-length", "128"]
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(run.glob("score_work/*/chunk-*.npy"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = sorted(run.glob("score_work/*/chunk-*.npy"))
    assert 2 <= len(chunks) < total, "the kill must land mid-scoring"
    assert not (run / "scores.parquet").exists() and not list(run.glob("score_work/*/.chunk-*"))  # no temp file left under a final name
    stamps = {p.name: p.stat().st_mtime_ns for p in chunks}

    resumed = score(run, cfg)
    assert resumed.metrics["chunks_scored"] == total - len(chunks)  # only the missing ones, the in-flight one included
    for p in chunks:
        assert p.stat().st_mtime_ns == stamps[p.name]  # committed chunks were not rescored
    for name in ("scores.parquet", "heldout_scores.parquet"):
        assert _same(run / name, ref / name)


def test_token_budget_batches():
    lengths = np.array([5, 5, 6, 10, 10, 40, 100, 100])
    batches = make_batches(lengths, token_budget=40, max_pairs=4)
    assert batches[0] == (0, 4) and all(b - a <= 4 for a, b in batches)
    for a, b in batches:
        assert (b - a) * lengths[b - 1] <= 40 or b - a == 1
    assert batches[-1] == (7, 8) and sum(b - a for a, b in batches) == len(lengths)


def test_cli_help_lists_flags():
    proc = subprocess.run([sys.executable, "-m", "skill", "score", "--help"], capture_output=True, text=True, cwd=REPO)
    for flag in ("--teacher", "--teacher-type", "--weight", "--batch-size", "--max-length", "--shard", "--merge"):
        assert flag in proc.stdout


# --------------------------------------------------------------------------------------------- --backend onnx


@pytest.fixture(scope="module")
def onnx_run(mined, tiny_reranker, tmp_path_factory):
    """The tiny reranker scored through the real CLI with --backend onnx (same chunking as `ce_run`)."""
    run = _copy(mined, tmp_path_factory.mktemp("onnx") / "run")
    code, payload = run_json("score", "--run", run, "--teacher", tiny_reranker, "--chunk-size", "200", "--max-length", "128", "--backend", "onnx")
    assert code == 0, payload["errors"]
    return run, payload


def _onnx_graphs(run: Path) -> list[Path]:
    return sorted((run / "cache").glob("onnx-*/onnx/model.onnx"))


def test_onnx_backend_scores_equal_torch(onnx_run, ce_run):
    from skill.teacher import cpu_cores

    run, payload = onnx_run
    np.testing.assert_allclose(_labels(run), _labels(ce_run[0]), atol=1e-4)
    held = pq.read_table(run / "heldout_scores.parquet").column("teacher_score").to_numpy()
    np.testing.assert_allclose(held, pq.read_table(ce_run[0] / "heldout_scores.parquet").column("teacher_score").to_numpy(), atol=1e-4)
    assert not np.array_equal(_labels(run), _labels(ce_run[0]))  # really another engine, not torch's chunks reused
    meta = json.loads((run / "scores.meta.json").read_text())
    assert meta["backend"] == "onnx" and meta["teachers"][0]["backend"] == "onnx"
    assert json.loads((ce_run[0] / "scores.meta.json").read_text())["backend"] == "torch"
    m = payload["metrics"]
    assert m["onnx_cache"] == "miss" and m["onnx_threads"] == cpu_cores() and m["onnx_parity_max_drift"] <= 1e-4
    graphs = _onnx_graphs(run)
    assert len(graphs) == 1 and str(graphs[0]) == m["onnx_graph"] and (graphs[0].parent.parent / "export.json").exists()
    assert not list((run / "cache").glob(".*"))  # the export was published by rename, no temp folder left


def test_onnx_cache_is_reused_and_a_partial_run_resumes(onnx_run, mined, tiny_reranker, tmp_path):
    run = _copy(mined, tmp_path / "run")
    shutil.copytree(onnx_run[0] / "cache", run / "cache")  # keyed by content, not by run folder
    graph = _onnx_graphs(run)[0]
    stamp = graph.stat().st_mtime_ns
    spec = TeacherSpec(model=str(tiny_reranker))
    first = score(run, _cfg(spec, chunk_size=200, shard="1/2", backend="onnx"))  # stops half-way, like an interrupted run
    assert first.metrics["merged"] is False and first.metrics["onnx_cache"] == "hit"
    resumed = score(run, _cfg(spec, chunk_size=200, backend="onnx"))
    assert resumed.metrics["onnx_cache"] == "hit" and resumed.metrics["onnx_export_seconds"] == 0
    assert first.metrics["chunks_scored"] + resumed.metrics["chunks_scored"] == resumed.metrics["chunks_total"]
    assert _onnx_graphs(run) == [graph] and graph.stat().st_mtime_ns == stamp  # not exported again
    for name in ("scores.parquet", "heldout_scores.parquet"):
        a = pq.read_table(run / name).to_pandas()
        b = pq.read_table(onnx_run[0] / name).to_pandas()
        col = "label" if name == "scores.parquet" else "teacher_score"
        assert a.drop(columns=[col]).equals(b.drop(columns=[col]))
        np.testing.assert_allclose(a[col], b[col], atol=1e-6)
    # Switching back to torch is a different result: the stage reruns and reads torch's own chunks.
    back = score(run, _cfg(spec, chunk_size=200))
    assert back.metrics.get("skipped") is not True and json.loads((run / "scores.meta.json").read_text())["backend"] == "torch"


def test_onnx_graph_that_drifts_from_torch_fails_with_exit_6(onnx_run, mined, tiny_reranker, ce_run, tmp_path):
    import torch

    from skill.export import ONNX_FILE, trace_onnx
    from skill.modeling import load_reranker

    run = _copy(mined, tmp_path / "run", rows=40)
    shutil.copytree(onnx_run[0] / "cache", run / "cache")
    folder = _onnx_graphs(run)[0].parent.parent
    # A stale graph under this teacher's key: the same architecture with other weights.
    other = load_reranker(str(tiny_reranker), device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other[0].model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trace_onnx(other, folder / ONNX_FILE)
    cfg = _cfg(TeacherSpec(model=str(tiny_reranker)), chunk_size=200, backend="onnx")
    with pytest.raises(SkillError) as err:
        score(run, cfg)
    assert err.value.code == ExitCode.RUNTIME_FAILURE == 6
    assert "does not reproduce torch" in err.value.message and "--backend torch" in err.value.fix
    _nothing_written(run, failed=True)
    assert not folder.exists()  # the bad graph is gone, so a rerun exports afresh
    again = score(run, cfg)
    assert again.metrics["onnx_cache"] == "miss"
    np.testing.assert_allclose(_labels(run), _labels(ce_run[0])[:40], atol=1e-4)


def test_onnx_backend_falls_back_to_torch_with_a_warning(mined, bi_run, tiny_base, tmp_path):
    from skill.teacher import CrossEncoderTeacher, onnx_fallback_reason

    run = _copy(mined, tmp_path / "run")
    shutil.copytree(bi_run / "score_work", run / "score_work")  # torch's chunks: a fallback reuses them as they are
    result = score(run, _cfg(TeacherSpec(model=str(tiny_base), type="bi-encoder"), chunk_size=200, backend="onnx"))
    assert any("--backend onnx does not apply" in w and "bi-encoder" in w for w in result.warnings)
    assert result.metrics["chunks_scored"] == 0 and _same(run / "scores.parquet", bi_run / "scores.parquet")
    meta = json.loads((run / "scores.meta.json").read_text())
    assert meta["backend"] == "onnx" and meta["teachers"][0]["backend"] == "torch"
    assert not (run / "cache").exists()
    gpu = CrossEncoderTeacher(name="t", type="cross-encoder", weight=1.0, score_space="raw_logit", max_length=128, device="cuda:0")
    assert "CPU" in onnx_fallback_reason(gpu)
