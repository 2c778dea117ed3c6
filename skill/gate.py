"""The teacher gate: does the teacher beat the first stage on the dev queries? Asked by `score`, before any training.

Distillation can at best reach the teacher, so a teacher that does not rank the first stage's
candidates better than the first stage itself cannot give a student that helps. `score` scores
the dev queries' candidates (mine's dev_candidates.parquet, training queries kept out of
training) along with everything else and compares teacher and first stage there: NDCG@10 per
query through skill.metrics (the same core `evaluate` uses: pytrec_eval, first-stage rank as the
tie-break), a paired randomisation test, and `verdict` with its default margin and alpha.

Status: `pass` (verdict WIN: ahead by at least the margin, significantly), `marginal` (ahead, but
not by the margin or not significantly), `fail` (not ahead: Δ ≤ 0, or a REGRESSION), `unknown`
(no dev split, no dev positives, or no teacher scores for them). The held-out queries are never
read here: they stay untouched until `evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skill import metrics as M

METRIC = "ndcg@10"


def read_dev(path: Path):
    """The dev candidates table, or None for a run folder mined before dev splits."""
    if not path.exists():
        return None
    from skill.io import read_parquet

    return read_parquet(path)


def _unknown(reason: str, **facts) -> dict:
    return {"status": "unknown", "reason": reason, **facts}


def teacher_gate(dev, teacher_scores: np.ndarray | None, qrels_path: Path) -> dict:
    """Teacher vs first stage on the dev queries: NDCG@10 of each, the paired test, and a status."""
    if dev is None:
        return _unknown("the run folder has no dev queries (mined before dev splits): rerun `mine --force` to get them")
    if dev.num_rows == 0:
        return _unknown("the run has no dev candidates (mine --dev-queries 0, or too few training queries)")
    if not qrels_path.exists():
        return _unknown(f"no dev relevance labels ({qrels_path.name})")
    from skill.io import read_json

    qrels = {str(q): {str(d): float(g) for d, g in docs.items()} for q, docs in read_json(qrels_path).items()}
    judged = {q: g for q, g in qrels.items() if M.has_positive(g)}
    if not judged:
        return _unknown(f"no dev query has a positive in {qrels_path.name}")
    scores = np.asarray(teacher_scores, dtype=np.float64)
    if not np.isfinite(scores).any():
        return _unknown("the teacher gave no score for the dev candidates (a scores file without them?)")

    query_ids = [str(q) for q in dev.column("query_id").to_pylist()]
    doc_ids = [str(d) for d in dev.column("doc_id").to_pylist()]
    ranks = np.asarray(dev.column("rank").to_numpy(zero_copy_only=False), dtype=np.int64)
    groups = M.per_query_groups(query_ids)
    k = max(len(ix) for ix in groups.values())
    first = {q: M.rank([doc_ids[i] for i in ix], -ranks[ix].astype(np.float64), ranks[ix]) for q, ix in groups.items()}
    teacher = {q: M.rank([doc_ids[i] for i in ix], scores[ix], ranks[ix]) for q, ix in groups.items()}
    per_first, per_teacher = M.evaluate_rankings(first, judged, k), M.evaluate_rankings(teacher, judged, k)
    queries = sorted(per_first)
    a, b = M.column(per_teacher, METRIC, queries), M.column(per_first, METRIC, queries)
    paired = M.paired_test(a, b)
    verdict = M.verdict(paired.delta, paired.p_value)
    status = "pass" if verdict == "WIN" else "fail" if verdict == "REGRESSION" or paired.delta <= 0 else "marginal"
    return {
        "status": status,
        "verdict": verdict,
        "metric": METRIC,
        f"teacher_{METRIC}": float(a.mean()),
        f"first_stage_{METRIC}": float(b.mean()),
        "delta": paired.delta,
        "ci95": [paired.ci_low, paired.ci_high],
        "p_value": paired.p_value,
        "queries": paired.queries,
        "better": paired.better,
        "worse": paired.worse,
        "candidates_without_teacher_score": int((~np.isfinite(scores)).sum()),
        "split": "dev",
    }


def gate_lines(gate: dict) -> list[str]:
    """The gate's lines in `score`'s summary."""
    if gate["status"] == "unknown":
        return [f"  teacher gate (dev queries): unknown — {gate['reason']}"]
    t, f = gate[f"teacher_{METRIC}"], gate[f"first_stage_{METRIC}"]
    lo, hi = gate["ci95"]
    return [
        f"  teacher gate ({gate['queries']} dev queries, {METRIC}): teacher {t:.4f} vs first stage {f:.4f}, "
        f"Δ {gate['delta']:+.4f} (95% CI {lo:+.4f}…{hi:+.4f}, p {gate['p_value']:.3g}) → {gate['status'].upper()}"
    ]


def gate_warning(gate: dict, *, blended: bool = False) -> str | None:
    """One warning when the teacher cannot (or may not) help; `unknown` is said in the summary and the envelope, not warned.

    `blended`: the teacher already has the first stage as a member, so the warning does not suggest it again.
    """
    status = gate["status"]
    if status in ("pass", "unknown"):
        return None
    numbers = f"{METRIC} {gate[f'teacher_{METRIC}']:.4f} vs first stage {gate[f'first_stage_{METRIC}']:.4f} on {gate['queries']} dev queries (Δ {gate['delta']:+.4f}, p {gate['p_value']:.3g})"
    blend = "" if blended else " (or blend it with the first stage: score --teacher first-stage --weight auto beside it)"
    if status == "fail":
        return f"the teacher does not beat the first stage ({numbers}): distilling it cannot help: change the teacher{blend} before training"
    options = "a stronger teacher, " + ("" if blended else "the teacher blended with the first stage (score --teacher first-stage --weight auto beside it), ")
    return f"the teacher is not clearly better than the first stage ({numbers}): distilling it may not help; {options}or more dev queries (mine --dev-queries) would tell"
