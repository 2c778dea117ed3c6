"""Issue 15: the first stage as an ensemble member of the teacher (`--teacher first-stage`), weights chosen on the training queries.

Oracles from outside the project: scipy's z-score for the blend, pytrec_eval's NDCG@10 for the weight search.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import pytrec_eval
from scipy.stats import zscore

from skill.config import DataConfig, MineConfig, ScoreConfig, TeacherSpec
from skill.errors import ExitCode
from skill.evaluate import teacher_profile
from skill.manifest import Run
from skill.metrics import weight_grid
from skill.mine import mine
from skill.score import score


@pytest.fixture(scope="module")
def mined(stdlib_domain, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ensemble") / "run"
    data = DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"])
    result = mine(run, data, MineConfig(retriever="bm25", train_top_k=8, eval_top_k=8, dev_queries=20, heldout=0.2))
    assert result.exit_code == 0
    return run


def _noisy_teacher_file(run: Path, path: Path, seed: int = 3) -> Path:
    """A scores file that knows the qrels through noise (an 'API reranker'): every training, held-out and dev row."""
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for name in ("train_pairs", "heldout_candidates", "dev_candidates"):
            for r in pq.read_table(run / f"{name}.parquet").to_pylist():
                label = 2.0 * float(r["relevance"] > 0) + float(rng.normal(0, 1.5))
                fh.write(json.dumps({"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": label}) + "\n")
    return path


def _oracle_blend(df: pd.DataFrame, teacher: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    """w·z(teacher) + (1 − w)·z(first stage) per query with scipy; a not-retrieved row takes its query's lowest first-stage score."""
    first = df["first_stage_score"].fillna(df.groupby("query_id")["first_stage_score"].transform("min")).to_numpy()
    out = np.zeros(len(df))
    for _, ix in df.groupby("query_id", sort=False).indices.items():
        for scores, w in ((teacher, weights[0]), (first, weights[1])):
            part = scores[ix]
            if w and part.std() > 0:
                out[ix] += w * zscore(part)
    return out / sum(weights)


def _pytrec_ndcg(df: pd.DataFrame, scores: np.ndarray) -> float:
    """Mean NDCG@10 over the training queries with a positive: retrieved rows ranked by `scores`, every positive judged."""
    qrels = {q: {d: int(g) for d, g in zip(part.doc_id, part.relevance, strict=True) if g > 0} for q, part in df.groupby("query_id")}
    qrels = {q: grades for q, grades in qrels.items() if grades}
    run: dict[str, dict[str, float]] = {q: {} for q in qrels}
    for (q, d, rank), s in zip(df[["query_id", "doc_id", "rank"]].itertuples(index=False), scores, strict=True):
        if rank >= 1 and q in run:
            run[q][d] = float(s) - rank * 1e-9  # ties broken by the first stage's order, as `skill.metrics.rank` does
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([per_query[q]["ndcg_cut_10"] if q in per_query else 0.0 for q in qrels]))


def test_first_stage_ensemble_with_auto_weights(mined, tmp_path):
    teacher_file = _noisy_teacher_file(mined, tmp_path / "api_scores.jsonl")
    run = tmp_path / "run"
    import shutil

    shutil.copytree(mined, run)
    result = score(
        run,
        ScoreConfig(teachers=[TeacherSpec(model=str(teacher_file), weight="auto"), TeacherSpec(model="first-stage", weight="auto")], max_length=128),
    )
    assert result.exit_code == 0, result.errors

    train = pq.read_table(run / "train_pairs.parquet").to_pandas()
    labels = pq.read_table(run / "scores.parquet").column("label").to_numpy()
    file_scores = {(json.loads(x)["query_id"], json.loads(x)["doc_id"]): json.loads(x)["label"] for x in teacher_file.read_text().splitlines()}
    teacher_train = np.array([file_scores[q, d] for q, d in zip(train.query_id, train.doc_id, strict=True)])
    assert train["first_stage_score"].isna().any(), "the fixture should hold a positive the first stage did not retrieve"

    # The weight search, redone with pytrec_eval over the same 0.1 grid: the chosen weights are the best (ties to the most even).
    by_weights = {w: _pytrec_ndcg(train, _oracle_blend(train, teacher_train, w)) for w in weight_grid(2)}
    best = max(by_weights.values())
    meta = json.loads((run / "scores.meta.json").read_text())
    chosen = meta["ensemble"]["weights_chosen"]
    assert by_weights[tuple(chosen["weights"])] == pytest.approx(best, abs=1e-9)
    assert chosen["ndcg@10"] == pytest.approx(best, abs=1e-9)
    assert min(abs(w[0] - 0.5) for w, v in by_weights.items() if abs(v - best) < 1e-12) == pytest.approx(abs(chosen["weights"][0] - 0.5))
    assert chosen["chosen_on"] == train[train.relevance > 0].query_id.nunique()
    assert [t["weight"] for t in meta["teachers"]] == chosen["weights"] and meta["teachers"][1]["type"] == "first-stage"
    assert result.metrics["ensemble_weights"] == {str(teacher_file): chosen["weights"][0], "first-stage": chosen["weights"][1]}
    assert "ensemble weights (auto)" in result.text

    # Labels, held-out and dev teacher scores are that blend, computed with scipy.
    weights = tuple(chosen["weights"])
    np.testing.assert_allclose(labels, _oracle_blend(train, teacher_train, weights), atol=1e-5)
    for table, column in (("heldout_scores", "teacher_score"), ("dev_scores", "teacher_score")):
        df = pq.read_table(run / f"{table}.parquet").to_pandas()
        raw = np.array([file_scores[q, d] for q, d in zip(df.query_id, df.doc_id, strict=True)])
        np.testing.assert_allclose(df[column].to_numpy(), _oracle_blend(df, raw, weights), atol=1e-5)

    # The gate compares the blended teacher with the first stage on the dev queries (never used to choose the weights).
    assert result.metrics["gate"]["status"] in {"pass", "marginal", "fail"}
    # Serving the ensemble teacher needs the file's scorer; the first stage's scores come with the candidates.
    profile = teacher_profile(Run(run))
    assert [m["type"] for m in profile["members"]] == ["file", "first-stage"] and profile["structure"] == "external"


def test_ensemble_weights_given_by_hand_are_kept(mined, tmp_path):
    teacher_file = _noisy_teacher_file(mined, tmp_path / "api_scores.jsonl", seed=5)
    run = tmp_path / "run"
    import shutil

    shutil.copytree(mined, run)
    result = score(run, ScoreConfig(teachers=[TeacherSpec(model=str(teacher_file), weight=3.0), TeacherSpec(model="first-stage", weight=1.0)], max_length=128))
    assert result.exit_code == 0, result.errors
    train = pq.read_table(run / "train_pairs.parquet").to_pandas()
    file_scores = {(json.loads(x)["query_id"], json.loads(x)["doc_id"]): json.loads(x)["label"] for x in teacher_file.read_text().splitlines()}
    teacher_train = np.array([file_scores[q, d] for q, d in zip(train.query_id, train.doc_id, strict=True)])
    np.testing.assert_allclose(pq.read_table(run / "scores.parquet").column("label").to_numpy(), _oracle_blend(train, teacher_train, (0.75, 0.25)), atol=1e-5)
    meta = json.loads((run / "scores.meta.json").read_text())
    assert "weights_chosen" not in meta["ensemble"] and [t["weight"] for t in meta["teachers"]] == [3.0, 1.0]


def test_a_member_that_only_hurts_gets_weight_zero(mined, tmp_path):
    """A teacher that ranks every gold positive last: any weight on it costs NDCG on the training queries, so auto gives it 0 and says so."""
    import shutil

    anti = tmp_path / "anti.jsonl"
    with anti.open("w") as fh:
        for name in ("train_pairs", "heldout_candidates", "dev_candidates"):
            for r in pq.read_table(mined / f"{name}.parquet").to_pylist():
                fh.write(
                    json.dumps(
                        {
                            "query_id": r["query_id"],
                            "doc_id": r["doc_id"],
                            "query": r["query"],
                            "document": r["document"],
                            "label": -4.0 * float(r["relevance"] > 0),
                        }
                    )
                    + "\n"
                )
    run = tmp_path / "run"
    shutil.copytree(mined, run)
    result = score(run, ScoreConfig(teachers=[TeacherSpec(model=str(anti), weight="auto"), TeacherSpec(model="first-stage", weight="auto")], max_length=128))
    assert result.exit_code == 0, result.errors
    assert result.metrics["ensemble_weights"] == {str(anti): 0.0, "first-stage": 1.0}
    assert any(f"gave {anti} weight 0" in w for w in result.warnings)
    # The blend is now the first stage itself: the gate says so, and its warning does not suggest the blend again.
    assert result.metrics["gate"]["status"] != "pass" and result.metrics["gate"]["delta"] == pytest.approx(0.0, abs=1e-9)
    gate_warnings = [w for w in result.warnings if "better than the first stage" in w or "does not beat the first stage" in w]
    assert gate_warnings and not any("--teacher first-stage" in w for w in gate_warnings)
    train = pq.read_table(run / "train_pairs.parquet").to_pandas()
    np.testing.assert_allclose(
        pq.read_table(run / "scores.parquet").column("label").to_numpy(), _oracle_blend(train, np.zeros(len(train)), (0.0, 1.0)), atol=1e-5
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--teacher", "first-stage"], "the first stage alone cannot teach"),
        (["--teacher", "first-stage", "--teacher", "first-stage"], "first-stage is given twice"),
        (["--teacher", "T", "--teacher", "first-stage", "--weight", "auto", "--weight", "2"], "auto is for every teacher"),
        (["--teacher", "T", "--weight", "auto"], "chooses the weights of 2 to 4 teachers"),
        (["--teacher", "T", "--teacher", "first-stage", "--teacher-type", "file", "--teacher-type", "bi-encoder"], "not a bi-encoder"),
        (["--teacher", "T", "--teacher", "first-stage", "--weight", "0", "--weight", "1"], "above 0"),
        (["--teacher", "T", "--teacher", "first-stage", "--weight", "heavy", "--weight", "1"], "neither a number nor auto"),
    ],
)
def test_ensemble_usage_errors(cli, mined, tmp_path, args, says):
    teacher_file = tmp_path / "T.jsonl"
    teacher_file.write_text("")
    args = [str(teacher_file) if a == "T" else a for a in args]
    proc = cli("score", "--run", mined, *args)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert says in proc.stderr, proc.stderr
    assert not (mined / "scores.parquet").exists()


def test_first_stage_teacher_through_the_cli(cli, mined, tmp_path):
    """One `--teacher-type` for all leaves the first stage its own type; `--weight auto` once stands for every teacher."""
    teacher_file = _noisy_teacher_file(mined, tmp_path / "api_scores.jsonl", seed=7)
    run = tmp_path / "run"
    import shutil

    shutil.copytree(mined, run)
    proc = cli("score", "--run", run, "--teacher", teacher_file, "--teacher", "first-stage", "--teacher-type", "file", "--weight", "auto", "--json")
    assert proc.returncode == 0, proc.stderr
    envelope = json.loads(proc.stdout)
    assert set(envelope["metrics"]["ensemble_weights"]) == {str(teacher_file), "first-stage"}
    assert sum(envelope["metrics"]["ensemble_weights"].values()) == pytest.approx(1.0)
