"""Issue 5: `evaluate` on a run folder built here from the stdlib domain and tiny rerankers.

The run folder follows references/run-folder.md; the first stage is a small IDF word-overlap
ranker written in this file, the teacher an oracle-ish mix of the gold grade and that score.
Every number checked is recomputed here independently of skill.metrics.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_json

from skill.config import EvaluateConfig
from skill.errors import ExitCode, SkillError
from skill.io import write_json, write_parquet
from skill.testing import record_stages

K = 12


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]{3,}", text.lower())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _variant(src: Path, dst: Path, scale: float) -> Path:
    """A copy of a tiny reranker with its final Dense ("scores") weights multiplied by `scale` (0 = collapsed)."""
    from skill.modeling import load_reranker

    model = load_reranker(str(src))
    final = model[len(model) - 1]
    final.linear.weight.data.mul_(scale)
    model.save(str(dst))
    return dst


@pytest.fixture(scope="module")
def domain_run(stdlib_domain, tiny_base, tiny_reranker, tmp_path_factory) -> dict:
    """Held-out data for 15 queries (every 8th), the first stage's top-12, teacher scores, two students."""
    corpus = {r["_id"]: r["text"][:200] for r in _read_jsonl(stdlib_domain["corpus"])}  # short: keeps CPU time down
    queries = {r["_id"]: r["text"] for r in _read_jsonl(stdlib_domain["queries"])}
    qrels: dict[str, dict[str, float]] = {}
    for line in stdlib_domain["qrels"].read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = float(s)
    heldout = sorted(queries)[::8]
    doc_tokens = {d: set(_tokens(t)) for d, t in corpus.items()}
    df = Counter(t for toks in doc_tokens.values() for t in toks)
    idf = {t: math.log(len(corpus) / n) for t, n in df.items()}
    rng = np.random.default_rng(3)
    rows: dict[str, list] = {c: [] for c in ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance", "teacher_score")}
    for q in heldout:
        qt = set(_tokens(queries[q]))
        scored = sorted(((sum(idf[t] for t in qt & doc_tokens[d]), d) for d in corpus), key=lambda x: (-x[0], x[1]))[:K]
        top = max(s for s, _ in scored) or 1.0
        for r, (s, d) in enumerate(scored, start=1):
            grade = qrels[q].get(d, 0.0)
            rows["query_id"].append(q)
            rows["doc_id"].append(d)
            rows["query"].append(queries[q])
            rows["document"].append(corpus[d])
            rows["rank"].append(r)
            rows["first_stage_score"].append(s)
            rows["relevance"].append(grade)
            rows["teacher_score"].append(4.0 * grade + 2.0 * s / top + float(rng.normal(0, 0.3)))
    import pyarrow as pa

    models = tmp_path_factory.mktemp("students")
    sharp = _variant(tiny_reranker, models / "sharp", 1000.0)  # a random student whose scores vary (~1 per query)
    flat = _variant(tiny_reranker, models / "flat", 0.0)  # its final Dense weights zeroed: constant scores
    table = pa.table(
        {
            **{c: rows[c] for c in ("query_id", "doc_id", "query", "document")},
            "rank": pa.array(rows["rank"], pa.int32()),
            "first_stage_score": pa.array(rows["first_stage_score"], pa.float32()),
            "relevance": pa.array(rows["relevance"], pa.float32()),
        }
    )
    return {
        "candidates": table,
        "teacher": np.asarray(rows["teacher_score"], dtype=np.float32),
        "qrels": {q: qrels[q] for q in heldout},
        "sharp": sharp,
        "flat": flat,
        "base": tiny_base,
        "teacher_model": tiny_reranker,
    }


def make_run(root: Path, data: dict, *, student: Path | None, teacher: np.ndarray | None = None, render_base: Path | None = None) -> Path:
    import pyarrow as pa

    run = root / "run"
    run.mkdir(parents=True)
    write_parquet(run / "heldout_candidates.parquet", data["candidates"])
    write_json(run / "qrels_heldout.json", data["qrels"])
    if teacher is not None:
        write_parquet(run / "heldout_scores.parquet", data["candidates"].append_column("teacher_score", pa.array(teacher, pa.float32())))
        write_json(
            run / "scores.meta.json",
            {"teachers": [{"id": str(data["teacher_model"]), "type": "cross-encoder", "revision": None, "weight": 1.0}], "score_space": "raw_logit"},
        )
    stages = {}
    if render_base is not None:
        stages["render"] = {"status": "ok", "config": {"base": str(render_base), "pooling": "cls", "seed": 12}}
    write_json(run / "manifest.json", {"manifest_version": 1, "stages": stages})
    if student is not None:
        shutil.copytree(student, run / "student")
    record_stages(run, "mine", *(["score"] if teacher is not None else []), *(["train"] if student is not None else []))
    return run


# ---------------------------------------------------------------------------------------------
# An independent computation (plain Python, written from the definitions)


def independent_metrics(ranked: list[str], grades: dict[str, float]) -> dict[str, float]:
    rel = [d for d, g in grades.items() if g > 0]
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i for i, d in enumerate(ranked[:10]) if d in rel), None)
    precisions = [sum(1 for x in ranked[: i + 1] if x in rel) / (i + 1) for i, d in enumerate(ranked) if d in rel]
    return {
        "ndcg@10": dcg / idcg,
        "mrr@10": 0.0 if first is None else 1 / (first + 1),
        "map": sum(precisions) / len(rel),
        "recall@10": len(set(ranked[:10]) & set(rel)) / len(rel),
        f"recall@{K}": len(set(ranked[:K]) & set(rel)) / len(rel),
    }


def system_means(table, qrels, scores) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    qids, dids, ranks = table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), table.column("rank").to_pylist()
    per_query = {}
    for q in qrels:
        rows = [i for i, x in enumerate(qids) if x == q]
        order = sorted(rows, key=lambda i: (-scores[i], ranks[i]))
        per_query[q] = independent_metrics([dids[i] for i in order], qrels[q])
    names = next(iter(per_query.values())).keys()
    return {m: sum(v[m] for v in per_query.values()) / len(per_query) for m in names}, per_query


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------------


def test_report_numbers_match_an_independent_computation(domain_run, tmp_path):
    from matplotlib import image

    from skill.evaluate import evaluate
    from skill.modeling import load_reranker

    run = make_run(tmp_path, domain_run, student=domain_run["sharp"], teacher=domain_run["teacher"], render_base=domain_run["base"])
    result = evaluate(run, EvaluateConfig(teacher=True, nanobeir=True, resamples=2000))
    assert result.exit_code == ExitCode.OK, result.errors
    report = json.loads((run / "report.json").read_text())
    table, qrels = domain_run["candidates"], domain_run["qrels"]

    ranks = np.asarray(table.column("rank").to_pylist(), dtype=float)
    student_scores = load_reranker(str(run / "student")).predict(
        list(zip(table.column("query").to_pylist(), table.column("document").to_pylist(), strict=True)), batch_size=64
    )
    expected = {"first stage": -ranks, "teacher": domain_run["teacher"].astype(float), "student": np.asarray(student_scores, dtype=float)}
    per_query_delta = {}
    for name, scores in expected.items():
        means, per_query = system_means(table, qrels, scores)
        per_query_delta[name] = per_query
        for metric, value in means.items():
            assert report["systems"][name]["metrics"][metric]["mean"] == pytest.approx(value, abs=1e-6), (name, metric)
            lo, hi = report["systems"][name]["metrics"][metric]["ci95"]
            assert lo <= value + 1e-9 and value <= hi + 1e-9
    assert set(report["systems"]) == {"first stage", "base (untrained head)", "student", "teacher"}
    assert report["systems"]["teacher"]["metrics"]["ndcg@10"]["mean"] > report["systems"]["first stage"]["metrics"]["ndcg@10"]["mean"] + 0.05

    # student − first stage: the mean of the per-query differences
    vs_fs = next(c for c in report["comparisons"] if c["a"] == "student" and c["b"] == "first stage")["metrics"]["ndcg@10"]
    diffs = [per_query_delta["student"][q]["ndcg@10"] - per_query_delta["first stage"][q]["ndcg@10"] for q in qrels]
    assert vs_fs["delta"] == pytest.approx(np.mean(diffs), abs=1e-9)
    assert vs_fs["better"] == sum(d > 0 for d in diffs) and vs_fs["worse"] == sum(d < 0 for d in diffs)
    assert any(c["b"] == "base (untrained head)" for c in report["comparisons"])

    # positives the first stage missed still count (recall@K below 1 for the first stage and for every reranker)
    dids = set(table.column("doc_id").to_pylist())
    missed = sum(
        1
        for q, g in qrels.items()
        for d in g
        if d not in {x for x, qq in zip(table.column("doc_id").to_pylist(), table.column("query_id").to_pylist(), strict=True) if qq == q}
    )
    assert report["data"]["positives_missed_by_first_stage"] == missed > 0 and dids
    assert report["systems"]["student"]["metrics"][f"recall@{K}"]["mean"] == pytest.approx(1 - missed / len(qrels))

    # fidelity: mean per-query Spearman and the MSE on raw scores
    qids = table.column("query_id").to_pylist()
    rhos = [
        _spearman(expected["student"][[i for i, x in enumerate(qids) if x == q]], expected["teacher"][[i for i, x in enumerate(qids) if x == q]]) for q in qrels
    ]
    assert report["fidelity"]["student"]["spearman_mean"] == pytest.approx(np.mean(rhos), abs=1e-6)
    assert report["fidelity"]["student"]["mse"] == pytest.approx(np.mean((expected["student"] - expected["teacher"]) ** 2), rel=1e-5)
    assert not report["collapse"]["collapsed"]

    # cost: both measured on the same pairs; the speed-up is their ratio
    cost = report["cost"]
    assert cost["student"]["pairs"] == cost["teacher"]["pairs"] == table.num_rows
    assert cost["student"]["latency_ms_p50"] <= cost["student"]["latency_ms_p95"]
    assert cost["student"]["size_mb"] > 0.1 and cost["student"]["parameters"] > 1000
    assert report["speedup_vs_teacher"] == pytest.approx(cost["student"]["pairs_per_s"] / cost["teacher"]["pairs_per_s"], rel=0.02)
    assert "unreachable" in report["nanobeir"]["skipped"]

    # the verdict line comes first, with its thresholds; the figure is a real PNG
    md = (run / "report.md").read_text()
    first = next(line for line in md.splitlines() if line.strip() and not line.startswith("#"))
    assert first.startswith(f"**VERDICT: {report['verdict']['label']}") and "p < 0.05" in first
    png = run / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 0.01

    # the stage is recorded; a second call reuses the report
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["outputs"]["report_json"] == "report.json"
    again = evaluate(run, EvaluateConfig(teacher=True, nanobeir=True, resamples=2000))
    assert again.metrics["skipped"] is True and again.metrics["verdict"] == report["verdict"]["label"]


def test_fused_system_is_the_z_score_blend_at_the_trained_alpha(domain_run, tmp_path):
    """student/fusion.json adds "student + first stage (fused)", computed from the definition and compared with the first stage."""
    from skill.evaluate import FUSED, evaluate
    from skill.modeling import load_reranker

    table, qrels = domain_run["candidates"], domain_run["qrels"]
    student = load_reranker(str(domain_run["sharp"])).predict(
        list(zip(table.column("query").to_pylist(), table.column("document").to_pylist(), strict=True)), batch_size=64
    )
    first = np.asarray(table.column("first_stage_score").to_pylist(), dtype=float)
    qids = table.column("query_id").to_pylist()

    def z(x):
        return (x - x.mean()) / x.std() if x.std() > 0 else np.zeros_like(x)

    for alpha in (0.0, 0.3, 1.0):
        run = make_run(tmp_path / f"a{alpha:g}", domain_run, student=domain_run["sharp"])
        write_json(run / "student" / "fusion.json", {"alpha": alpha, "chosen_on": 7, "split": "dev"})
        record_stages(run, "train")  # the student as train.py leaves it, fusion.json included
        result = evaluate(run, EvaluateConfig(resamples=500))
        report = json.loads((run / "report.json").read_text())
        expected = np.zeros(len(qids))
        for q in set(qids):
            ix = [i for i, x in enumerate(qids) if x == q]
            expected[ix] = alpha * z(np.asarray(student, dtype=float)[ix]) + (1 - alpha) * z(first[ix])
        means, _ = system_means(table, qrels, expected)
        got = report["systems"][FUSED]["metrics"]["ndcg@10"]["mean"]
        assert got == pytest.approx(means["ndcg@10"], abs=1e-6)
        if alpha == 0.0:  # the first stage alone, re-ranked by its own scores
            assert got == pytest.approx(report["systems"]["first stage"]["metrics"]["ndcg@10"]["mean"], abs=1e-6)
        if alpha == 1.0:  # the student alone
            assert got == pytest.approx(report["systems"]["student"]["metrics"]["ndcg@10"]["mean"], abs=1e-6)
        fused = report["fused_verdict"]
        vs = next(c for c in report["comparisons"] if c["a"] == FUSED and c["b"] == "first stage")["metrics"]["ndcg@10"]
        assert fused["delta"] == pytest.approx(vs["delta"]) and result.metrics["fused_verdict"] == fused["label"]
        assert "alpha from fusion.json (chosen on 7 dev queries)" in fused["line"] and fused["line"].startswith(f"FUSED: {fused['label']}")
        assert fused["line"] in (run / "report.md").read_text()

    # Without fusion.json there is no fused system; a broken one is a note, not a crash.
    run = make_run(tmp_path / "none", domain_run, student=domain_run["sharp"])
    (run / "student" / "fusion.json").write_text("{not json", encoding="utf-8")
    record_stages(run, "train")
    result = evaluate(run, EvaluateConfig(resamples=200))
    report = json.loads((run / "report.json").read_text())
    assert FUSED not in report["systems"] and report["fused_verdict"] is None
    assert any("fusion.json" in w for w in result.warnings)


def test_regression_triggers_the_gate(domain_run, tmp_path):
    run = make_run(tmp_path, domain_run, student=domain_run["sharp"], teacher=domain_run["teacher"])
    code, payload = run_json("evaluate", "--run", run, "--resamples", "1000")
    assert code == 0, payload["errors"]
    assert payload["metrics"]["verdict"] == "REGRESSION"  # an untrained student against the first stage
    assert payload["metrics"]["delta_ndcg@10"] < -0.01
    code, payload = run_json("evaluate", "--run", run, "--resamples", "1000", "--fail-on", "regression")
    assert code == ExitCode.PARTIAL == payload["exit_code"] == 7
    assert payload["metrics"]["skipped"] is True  # the gate re-reads the report; it does not recompute
    assert "gate failed: verdict REGRESSION" in payload["errors"][0]["message"]


def test_collapsed_student_fails_loudly(domain_run, tmp_path):
    from skill.evaluate import evaluate

    run = make_run(tmp_path, domain_run, student=domain_run["flat"], teacher=domain_run["teacher"])
    result = evaluate(run, EvaluateConfig(resamples=500))
    assert result.exit_code == ExitCode.RUNTIME_FAILURE and result.status == "error"
    err = result.errors[0]
    assert "collapsed" in err["message"] and "< 0.0001" in err["message"] and err["fix"]
    report = json.loads((run / "report.json").read_text())
    assert report["collapse"]["collapsed"] and report["spread"]["student"]["median_std"] == 0
    assert "COLLAPSE" in (run / "report.md").read_text().split("## Systems")[0]


def test_teacher_gate_is_said_first(domain_run, tmp_path):
    from skill.evaluate import evaluate

    bad_teacher = domain_run["candidates"].column("rank").to_numpy().astype(np.float32)  # reverses the first stage
    run = make_run(tmp_path, domain_run, student=domain_run["sharp"], teacher=bad_teacher)
    result = evaluate(run, EvaluateConfig(resamples=500))
    report = json.loads((run / "report.json").read_text())
    assert report["teacher_gate"]["status"] == "fail" and report["teacher_gate"]["delta"] < 0
    head = (run / "report.md").read_text().split("## Systems")[0]
    assert "TEACHER GATE FAILED" in head and "stronger teacher" in head
    assert result.metrics["teacher_gate"] == "fail"


def test_without_teacher_scores_the_report_says_so(domain_run, tmp_path):
    from skill.evaluate import evaluate

    run = make_run(tmp_path, domain_run, student=domain_run["sharp"])
    result = evaluate(run, EvaluateConfig(resamples=500, base=str(domain_run["teacher_model"])))
    report = json.loads((run / "report.json").read_text())
    assert "teacher" not in report["systems"] and report["teacher_gate"]["status"] == "n/a"
    assert "base" in report["systems"]  # a reranker base is evaluated as itself
    assert any("no teacher scores" in n for n in result.warnings)
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_give_clear_errors(domain_run, tmp_path):
    # a model folder that is an encoder, not a reranker
    run = make_run(tmp_path, domain_run, student=domain_run["sharp"])
    code, payload = run_json("evaluate", "--run", run, "--model", domain_run["base"])
    assert code == ExitCode.INVALID_INPUT == payload["exit_code"]
    assert "not a reranker" in payload["errors"][0]["message"] and payload["errors"][0]["where"] == str(domain_run["base"])
    # a run folder without held-out data
    empty = tmp_path / "empty"
    empty.mkdir()
    code, payload = run_json("evaluate", "--run", empty)
    assert code == ExitCode.MISSING_RESOURCE
    assert "no held-out data" in payload["errors"][0]["message"] and "mine" in payload["errors"][0]["fix"]


def test_other_bad_inputs_in_process(domain_run, tmp_path):
    from skill.evaluate import check_reranker, evaluate

    run = make_run(tmp_path, domain_run, student=None)
    with pytest.raises(SkillError) as e:
        evaluate(run, EvaluateConfig())
    assert e.value.code == ExitCode.MISSING_RESOURCE and "train" in e.value.fix
    with pytest.raises(SkillError) as e:
        check_reranker(str(tmp_path / "nope"), "model")
    assert e.value.code == ExitCode.MISSING_RESOURCE
    bi = tmp_path / "bi"
    bi.mkdir()
    (bi / "config_sentence_transformers.json").write_text('{"model_type": "SentenceTransformer"}')
    with pytest.raises(SkillError) as e:
        check_reranker(str(bi), "model")
    assert e.value.code == ExitCode.INVALID_INPUT and "bi-encoder" in e.value.message
    (run / "qrels_heldout.json").unlink()
    with pytest.raises(SkillError) as e:
        evaluate(run, EvaluateConfig())
    assert e.value.code == ExitCode.MISSING_RESOURCE and "qrels_heldout.json" in e.value.message
