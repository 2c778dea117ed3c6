"""Issue 14, item 4: `evaluate` concludes with what to serve — the cheapest system that no other measured system beats.

Every case is a hand-built run folder: queries of K = 8 candidates whose relevant document is
placed where each system's ranking is known, so the recommendation is worked out by hand:

- the first stage ranks by `rank`; the teacher by the `teacher_score` written here;
- the student is a tiny random reranker whose scores are read with CrossEncoder.predict, one
  query's candidates per call (as `evaluate` scores them);
- the fused system is, by its documented definition, α·z(student) + (1 − α)·z(first-stage score)
  per query, computed here with numpy (α = 0.5 in student/fusion.json).

A system that ranks the one relevant document first scores NDCG@10 = 1 on that query; anything
else scores at most 1/log2(3) ≈ 0.63. A system at 1 on every query while another is below 1 on
every query differs by ≥ 0.37 on every one of 24 queries: the randomisation test's p-value is
then its floor (≈ 2/(resamples + 1)), well under 0.05 after Holm's factor of at most 6 — so the
first significantly beats the second. With 4 queries no difference can be significant: an exact
two-sided sign-flip test over 4 queries has p ≥ 2/2^4 = 0.125.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skill.config import EvaluateConfig
from skill.io import write_json, write_parquet
from skill.testing import record_stages

K = 8
ALPHA = 0.5
QUERIES = 24


@pytest.fixture(scope="module")
def pool(tiny_reranker, tmp_path_factory) -> dict:
    """150 candidate query groups of K documents, with the student's scores and the fused scores of each group."""
    from skill.modeling import load_reranker
    from skill.testing import stdlib_text

    texts = list(dict.fromkeys(t[:160] for t in stdlib_text(600) if len(t) > 40))
    rng = np.random.default_rng(7)
    student_dir = tmp_path_factory.mktemp("serve") / "student"
    model = load_reranker(str(tiny_reranker))
    final = model[len(model) - 1]
    final.linear.weight.data.mul_(1000.0)  # a random student whose scores vary within a query
    model.save(str(student_dir))
    model = load_reranker(str(student_dir))
    groups = []
    first_stage = np.arange(K, 0, -1, dtype=np.float64)  # ranks 1..K have scores K..1
    z_first = (first_stage - first_stage.mean()) / first_stage.std()
    for g in range(150):
        docs = [int(i) for i in rng.choice(len(texts), size=K, replace=False)]
        query = texts[int(rng.integers(len(texts)))].split(".")[0]
        s = np.asarray(model.predict([(query, texts[d]) for d in docs], batch_size=64), dtype=np.float64)
        fused = ALPHA * (s - s.mean()) / s.std() + (1 - ALPHA) * z_first
        groups.append(
            {
                "qid": f"q{g}",
                "query": query,
                "docs": [f"d{d}" for d in docs],
                "texts": [texts[d] for d in docs],
                "student_top": int(np.argmax(s)),
                "fused_top": int(np.argmax(fused)),
            }
        )
    return {"groups": groups, "student": student_dir, "first_stage": first_stage}


def make_run(root: Path, pool: dict, groups: list[dict], positive: list[int], teacher: list[np.ndarray], *, teacher_meta: dict) -> Path:
    """A run folder with held-out candidates (+ teacher scores), qrels (one relevant document: `positive[i]` of group i) and the student."""
    import pyarrow as pa

    run = root / "run"
    run.mkdir(parents=True)
    cols: dict[str, list] = {c: [] for c in ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance", "teacher_score")}
    qrels = {}
    for g, pos, t in zip(groups, positive, teacher, strict=True):
        qrels[g["qid"]] = {g["docs"][pos]: 1.0}
        for r in range(K):
            cols["query_id"].append(g["qid"])
            cols["doc_id"].append(g["docs"][r])
            cols["query"].append(g["query"])
            cols["document"].append(g["texts"][r])
            cols["rank"].append(r + 1)
            cols["first_stage_score"].append(float(pool["first_stage"][r]))
            cols["relevance"].append(1.0 if r == pos else 0.0)
            cols["teacher_score"].append(float(t[r]))
    types = {"rank": pa.int32(), "first_stage_score": pa.float32(), "relevance": pa.float32(), "teacher_score": pa.float32()}
    table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
    write_parquet(run / "heldout_candidates.parquet", table.drop_columns(["teacher_score"]))
    write_parquet(run / "heldout_scores.parquet", table)
    write_json(run / "qrels_heldout.json", qrels)
    write_json(run / "scores.meta.json", {"teachers": [teacher_meta], "score_space": "raw_logit"})
    write_json(run / "manifest.json", {"manifest_version": 1, "stages": {}})
    shutil.copytree(pool["student"], run / "student")
    write_json(run / "student" / "fusion.json", {"alpha": ALPHA, "chosen_on": 8, "split": "dev"})
    record_stages(run, "mine", "score", "train")  # as if the stages had written these files (the run-folder contract)
    return run


def perfect_teacher(pos: int) -> np.ndarray:
    t = -np.arange(K, dtype=np.float64)
    t[pos] = 10.0
    return t


def second_place_teacher(pos: int) -> np.ndarray:
    """Ranks the relevant document second (NDCG@10 = 1/log2(3)), behind the first non-relevant candidate."""
    t = -np.arange(K, dtype=np.float64)
    top = next(r for r in range(K) if r != pos)
    t[top], t[pos] = 20.0, 10.0
    return t


FILE_TEACHER = {"id": "api-judge.jsonl", "type": "file", "revision": None, "weight": 1.0}


def _report(run: Path, **cfg) -> dict:
    from skill.evaluate import evaluate

    evaluate(run, EvaluateConfig(resamples=2000, skip_base=True, **cfg))
    return json.loads((run / "report.json").read_text())


def assert_consistent(report: dict) -> None:
    """The recommendation is beaten by nobody, and every cheaper system is beaten by someone."""
    rec = report["recommendation"]
    order = rec["cost_order"]
    assert not any(p["beats"] and p["b"] == rec["system"] for p in report["pairwise"])
    for cheaper in order[: order.index(rec["system"])]:
        assert any(p["beats"] and p["b"] == cheaper for p in report["pairwise"]), cheaper
    assert report["summary"]["recommended"] == rec["system"] and report["summary"]["recommendation"] == rec["line"]


def _ndcg(report: dict, name: str) -> float:
    return report["systems"][name]["metrics"]["ndcg@10"]["mean"]


def test_teacher_beats_fused_and_is_recommended(pool, tiny_base, tmp_path):
    """The user's case: a bi-encoder teacher above the fused system. Its cost is measured by default (local, small)."""
    from skill.evaluate import FUSED

    groups, positive = [], []
    for g in pool["groups"]:  # the relevant document is ranked first by nobody but the teacher
        pos = next((r for r in range(K - 1, 0, -1) if r not in (g["student_top"], g["fused_top"])), None)
        groups.append(g)
        positive.append(pos)
        if len(groups) == QUERIES:
            break
    run = make_run(
        tmp_path, pool, groups, positive, [perfect_teacher(p) for p in positive], teacher_meta={"id": str(tiny_base), "type": "bi-encoder", "weight": 1.0}
    )
    report = _report(run)
    assert _ndcg(report, "teacher") == 1.0 and max(_ndcg(report, n) for n in ("first stage", "student", FUSED)) <= 1 / np.log2(3) + 1e-9
    assert report["recommendation"]["system"] == "teacher" and report["summary"]["recommended_kind"] == "teacher"
    pair = next(p for p in report["pairwise"] if {p["a"], p["b"]} == {"teacher", FUSED})  # the line the user's report never had
    assert pair["a"] == "teacher" and pair["beats"] and pair["p_holm"] < 0.05
    teacher = report["serving"]["teacher"]
    assert teacher["basis"] == "measured" and teacher["latency_ms_p50"] > 0 and "document embeddings computed once" in teacher["needs"]
    assert "one query embedding" in report["cost"]["teacher"]["mode"]
    assert report["serving"][FUSED]["latency_ms_p50"] >= report["serving"]["student"]["latency_ms_p50"]
    assert "first-stage score" in report["serving"][FUSED]["needs"]
    md = (run / "report.md").read_text()
    head = md.split("## Systems")[0]
    assert "**SERVE: teacher" in head and "## What to serve" in head and md.index("VERDICT") < md.index("SERVE: teacher")
    assert_consistent(report)


def test_fused_wins_and_a_costlier_teacher_it_beats_is_not_recommended(pool, tmp_path):
    """Fused first on every query; the external (scores-file) teacher, last in the cost order, is beaten by the cheaper fused system."""
    from skill.evaluate import FUSED

    groups = [g for g in pool["groups"] if g["fused_top"] not in (0, g["student_top"])][:QUERIES]
    assert len(groups) == QUERIES
    positive = [g["fused_top"] for g in groups]
    run = make_run(tmp_path, pool, groups, positive, [second_place_teacher(p) for p in positive], teacher_meta=FILE_TEACHER)
    report = _report(run)
    assert _ndcg(report, FUSED) == 1.0 and _ndcg(report, "teacher") == pytest.approx(1 / np.log2(3))
    assert report["recommendation"]["system"] == FUSED
    assert report["serving"]["teacher"]["basis"] == "external" and report["recommendation"]["cost_order"][-1] == "teacher"
    assert "external scorer" in report["serving"]["teacher"]["needs"]
    assert any(p["a"] == FUSED and p["b"] == "teacher" and p["beats"] for p in report["pairwise"])
    assert_consistent(report)


def test_a_system_beaten_by_a_cheaper_one_is_never_recommended(pool, tmp_path):
    """Student and fused both rank the relevant document first everywhere: the student costs less (fused = student + blend),
    so it is the one to serve; the external teacher is beaten by the cheaper student and never recommended."""
    from skill.evaluate import FUSED

    groups = [g for g in pool["groups"] if g["student_top"] == g["fused_top"] != 0][:QUERIES]
    assert len(groups) == QUERIES
    positive = [g["student_top"] for g in groups]
    run = make_run(tmp_path, pool, groups, positive, [second_place_teacher(p) for p in positive], teacher_meta=FILE_TEACHER)
    report = _report(run)
    assert _ndcg(report, "student") == _ndcg(report, FUSED) == 1.0 and _ndcg(report, "teacher") > 0.6
    assert report["recommendation"]["system"] == "student"
    assert f"{FUSED} costs more and scores the same" in " ".join(report["recommendation"]["reasons"])
    order = report["recommendation"]["cost_order"]
    assert order.index("student") < order.index("teacher")
    beaten_by_cheaper = {p["b"] for p in report["pairwise"] if p["beats"] and order.index(p["a"]) < order.index(p["b"])}
    assert "teacher" in beaten_by_cheaper and report["recommendation"]["system"] not in beaten_by_cheaper
    assert_consistent(report)


def test_nothing_beats_the_first_stage(pool, cli, tmp_path):
    """Relevant document first in the first stage: it is never beaten and costs nothing. Through the CLI envelope."""
    groups = pool["groups"][:QUERIES]
    run = make_run(tmp_path, pool, groups, [0] * QUERIES, [np.random.default_rng(i).normal(size=K) for i in range(QUERIES)], teacher_meta=FILE_TEACHER)
    proc = cli("evaluate", "--run", run, "--resamples", "2000", "--skip-base", "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0, payload["errors"]
    assert payload["metrics"]["recommended"] == "first stage" and payload["metrics"]["recommendation"].startswith("SERVE: first stage")
    report = json.loads((run / "report.json").read_text())
    assert report["serving"]["first stage"]["cost_rank"] == 1 and report["serving"]["first stage"]["latency_ms_p50"] == 0.0
    assert_consistent(report)


def test_four_queries_cannot_beat_the_first_stage(pool, tmp_path):
    """A perfect teacher on 4 queries: higher mean, but an exact sign-flip p-value over 4 queries is at least 0.125."""
    groups = pool["groups"][:4]
    positive = [3] * 4
    run = make_run(tmp_path, pool, groups, positive, [perfect_teacher(p) for p in positive], teacher_meta=FILE_TEACHER)
    report = _report(run)
    assert _ndcg(report, "teacher") == 1.0 > _ndcg(report, "first stage") == pytest.approx(1 / np.log2(5))
    assert min(p["p_value"] for p in report["pairwise"]) >= 0.125 and not any(p["beats"] for p in report["pairwise"])
    assert report["recommendation"]["system"] == "first stage"
    assert "no measured system beats it significantly (closest: teacher" in report["recommendation"]["line"]
