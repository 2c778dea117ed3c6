"""Ranking metrics, paired significance tests and the verdict rule — no benchmark, no model.

Metrics are computed by `pytrec_eval` (trec_eval's own C code, what BEIR and MTEB report)
when every relevance grade is an integer; fractional grades go through `exact_metrics`, a
small implementation of the same definitions (the tests check the two agree). Definitions:

- graded relevance from the qrels; a document is relevant when its grade is > 0;
- NDCG@10: gain = grade (linear, as trec_eval), discount log2(rank + 1), ideal ranking built
  from ALL judged documents of the query, so positives the first stage missed count against it;
- MRR@10: 1 / rank of the first relevant document in the top 10, else 0;
- MAP: average precision over the ranked list, divided by the number of ALL relevant documents;
- Recall@k: relevant documents in the top k / all relevant documents of the query.

Ties in a system's scores are broken by the first stage's rank (what a stable sort over the
candidates does in production), so every ranking is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Rankings = Mapping[str, Sequence[str]]  # query id -> doc ids, best first
QrelsMap = Mapping[str, Mapping[str, float]]  # query id -> doc id -> grade

CUTOFF = 10
Verdict = str  # "WIN" | "MARGINAL" | "REGRESSION"


def metric_names(k: int) -> list[str]:
    """The metrics every system gets; `k` is the candidate depth (Recall@K)."""
    names = ["ndcg@10", "mrr@10", "map", "recall@10"]
    if k != CUTOFF:
        names.append(f"recall@{k}")
    return names


def rank(doc_ids: Sequence[str], scores: Sequence[float], first_stage_rank: Sequence[int]) -> list[str]:
    """Doc ids sorted by score (descending); ties keep the first stage's order. NaN sorts last."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.asarray(first_stage_rank), -s))
    return [doc_ids[i] for i in order]


def has_positive(grades: Mapping[str, float]) -> bool:
    return any(g > 0 for g in grades.values())


def evaluate_rankings(rankings: Rankings, qrels: QrelsMap, k: int, *, engine: str = "auto") -> dict[str, dict[str, float]]:
    """Per-query metrics for every query in `qrels` with at least one positive.

    A query the system returned nothing for scores 0 on every metric. `engine`: "auto"
    (pytrec_eval for integer grades, else exact), "pytrec_eval" or "exact".
    """
    judged = {q: {d: max(float(g), 0.0) for d, g in grades.items()} for q, grades in qrels.items() if has_positive(grades)}
    if engine == "auto":
        integral = all(float(g).is_integer() for grades in judged.values() for g in grades.values())
        engine = "pytrec_eval" if integral and _pytrec_available() else "exact"
    if engine == "exact":
        return {q: exact_metrics(list(rankings.get(q, ())), grades, k) for q, grades in judged.items()}
    return _pytrec_metrics(rankings, judged, k)


def _pytrec_available() -> bool:
    try:
        import pytrec_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _pytrec_metrics(rankings: Rankings, judged: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    import pytrec_eval

    qrels = {q: {d: int(g) for d, g in grades.items()} for q, grades in judged.items()}
    # trec_eval re-sorts by score: hand it strictly decreasing pseudo-scores in our order.
    full = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in rankings.items() if q in judged and docs}
    top = {q: {d: s for d, s in run.items() if s > len(run) - CUTOFF} for q, run in full.items()}
    recall_cuts = sorted({CUTOFF, k})
    res_full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map", "recall." + ",".join(map(str, recall_cuts))}).evaluate(full)
    res_top = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    names = metric_names(k)
    out: dict[str, dict[str, float]] = {}
    for q in judged:
        if q not in res_full:
            out[q] = dict.fromkeys(names, 0.0)
            continue
        r = res_full[q]
        row = {"ndcg@10": r["ndcg_cut_10"], "mrr@10": res_top.get(q, {}).get("recip_rank", 0.0), "map": r["map"], "recall@10": r["recall_10"]}
        if k != CUTOFF:
            row[f"recall@{k}"] = r[f"recall_{k}"]
        out[q] = row
    return out


def exact_metrics(ranking: Sequence[str], grades: Mapping[str, float], k: int) -> dict[str, float]:
    """The same definitions as trec_eval, in plain Python, for one query (any real-valued grades)."""
    gains = {d: max(float(g), 0.0) for d, g in grades.items()}
    relevant = {d for d, g in gains.items() if g > 0}
    n_rel = len(relevant)
    ranking = list(ranking)
    dcg = sum(gains.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranking[:CUTOFF]))
    ideal = sorted(gains.values(), reverse=True)[:CUTOFF]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranking[:CUTOFF]) if d in relevant), 0.0)
    hits, ap = 0, 0.0
    for i, d in enumerate(ranking):
        if d in relevant:
            hits += 1
            ap += hits / (i + 1)
    row = {
        "ndcg@10": dcg / idcg if idcg > 0 else 0.0,
        "mrr@10": mrr,
        "map": ap / n_rel if n_rel else 0.0,
        "recall@10": len(relevant.intersection(ranking[:CUTOFF])) / n_rel if n_rel else 0.0,
    }
    if k != CUTOFF:
        row[f"recall@{k}"] = len(relevant.intersection(ranking[:k])) / n_rel if n_rel else 0.0
    return row


def column(per_query: Mapping[str, Mapping[str, float]], metric: str, queries: Sequence[str]) -> np.ndarray:
    return np.array([per_query[q][metric] for q in queries], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Uncertainty


def mean_ci(values: Sequence[float], *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 12) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        m = float(x.mean()) if len(x) else float("nan")
        return (m, m)
    from scipy import stats

    res = stats.bootstrap(
        (x,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile", vectorized=True, rng=np.random.default_rng(seed)
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


@dataclass
class Paired:
    """`a − b` over the same queries: mean difference, bootstrap CI, two-sided randomisation p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    queries: int
    better: int  # queries where a > b
    worse: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 12) -> Paired:
    """Paired randomisation (sign-flip) test over queries plus a percentile bootstrap CI of the mean difference.

    With 2**n <= resamples the randomisation distribution is enumerated exactly.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    d = x - y
    n = len(d)
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    if n == 0:
        return Paired(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0, 0)
    delta = float(d.mean())
    if not d.any():
        return Paired(0.0, 0.0, 0.0, 1.0, n, 0, 0)
    if n == 1:  # both sign flips give the same |mean|: the exact two-sided p is 1 (scipy refuses one observation)
        return Paired(delta, delta, delta, 1.0, n, better, worse)
    from scipy import stats

    lo, hi = mean_ci(d, resamples=resamples, confidence=confidence, seed=seed)
    perm = stats.permutation_test(
        (x, y),
        lambda u, v, axis: np.mean(u - v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed + 1),
    )
    return Paired(delta, lo, hi, float(min(1.0, perm.pvalue)), n, better, worse)


def verdict(delta: float, p_value: float, *, margin: float = 0.01, alpha: float = 0.05) -> Verdict:
    """WIN: delta >= +margin and p < alpha. REGRESSION: delta <= -margin, or delta < 0 and p < alpha. Else MARGINAL."""
    if not math.isfinite(delta):
        return "MARGINAL"
    significant = math.isfinite(p_value) and p_value < alpha
    if delta >= margin and significant:
        return "WIN"
    if delta <= -margin or (delta < 0 and significant):
        return "REGRESSION"
    return "MARGINAL"


def blend(members: Sequence[Sequence[float]], groups: Mapping[str, np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ wᵢ·z(memberᵢ) / Σ wᵢ, each member z-scored within its query's candidates (a constant member counts 0).

    The one combination rule of the project: the fused system (student + first stage) and a teacher ensemble.
    """
    arrays = [np.asarray(m, dtype=np.float64) for m in members]
    total = float(sum(weights))
    out = np.zeros_like(arrays[0])
    for ix in groups.values():
        for x, w in zip(arrays, weights, strict=True):
            part = x[ix]
            std = part.std()
            if w and std > 0:
                out[ix] += w * (part - part.mean()) / std
    return out / total


def fuse(student: Sequence[float], first_stage: Sequence[float], groups: Mapping[str, np.ndarray], alpha: float) -> np.ndarray:
    """alpha·z(student) + (1 − alpha)·z(first stage), each z-scored within its query's candidates (what train.py chose alpha for)."""
    return blend([student, first_stage], groups, [alpha, 1 - alpha])


FUSION_GRID = tuple(i / 10 for i in range(11))  # candidate weights of the student in `fuse`


def system_metrics(
    scores: Sequence[float], *, doc_ids: Sequence[str], first_stage_rank: Sequence[int], groups: Mapping[str, np.ndarray], qrels: QrelsMap, k: int
) -> dict[str, dict[str, float]]:
    """Per-query metrics of one system's scores over candidate lists (`groups`: query id -> row indices), ranked by `rank`.

    What `evaluate` computes for every system: every query of `qrels` with a positive counts, also one without candidates.
    """
    s = np.asarray(scores, dtype=np.float64)
    ranks = np.asarray(first_stage_rank)
    rankings = {q: rank([doc_ids[i] for i in ix], s[ix], ranks[ix]) for q, ix in groups.items()}
    return evaluate_rankings(rankings, qrels, k)


def mean_metric(per_query: Mapping[str, Mapping[str, float]], metric: str = "ndcg@10") -> float:
    return float(np.mean([row[metric] for row in per_query.values()])) if per_query else float("nan")


def choose_fusion_weight(
    student: Sequence[float],
    first_stage: Sequence[float],
    *,
    doc_ids: Sequence[str],
    first_stage_rank: Sequence[int],
    groups: Mapping[str, np.ndarray],
    qrels: QrelsMap,
    k: int,
    grid: Sequence[float] = FUSION_GRID,
) -> dict:
    """The weight α of `fuse` with the highest mean NDCG@10 on these queries; ties go to the smaller α (closer to the first stage).

    α = 0 is the first stage alone, α = 1 the student alone: both are measured like every other system.
    """
    by_alpha = {
        a: mean_metric(
            system_metrics(fuse(student, first_stage, groups, a), doc_ids=doc_ids, first_stage_rank=first_stage_rank, groups=groups, qrels=qrels, k=k)
        )
        for a in grid
    }
    alpha = max(grid, key=lambda a: (round(by_alpha[a], 12), -a))
    return {
        "alpha": alpha,
        "formula": "alpha * z(student) + (1 - alpha) * z(first_stage_score), z-scored per query over its candidates",
        "chosen_on": sum(1 for grades in qrels.values() if has_positive(grades)),
        "ndcg@10": by_alpha[alpha],
        "ndcg@10_by_alpha": {f"{a:g}": v for a, v in by_alpha.items()},
    }


def weight_grid(members: int, *, steps: int = 10) -> list[tuple[float, ...]]:
    """Every tuple of `members` weights in multiples of 1/steps that sum to 1, the first member's largest first (11 for two at 0.1)."""

    def parts(n: int, total: int):
        if n == 1:
            yield (total,)
            return
        for i in range(total, -1, -1):
            for rest in parts(n - 1, total - i):
                yield (i, *rest)

    return [tuple(c / steps for c in combo) for combo in parts(members, steps)]


def choose_ensemble_weights(
    members: Sequence[Sequence[float]],
    *,
    doc_ids: Sequence[str],
    first_stage_rank: Sequence[int],
    groups: Mapping[str, np.ndarray],
    qrels: QrelsMap,
    k: int,
    steps: int = 10,
) -> dict:
    """The weights of `blend` over `members` with the highest mean NDCG@k on these queries (a grid at 1/steps).

    Ties go to the most even weights, then to the earlier members. The vertices of the grid are the
    members alone, so the result is never worse on these queries than the best single member.
    """
    grid = weight_grid(len(members), steps=steps)
    by_weights = {
        w: mean_metric(system_metrics(blend(members, groups, w), doc_ids=doc_ids, first_stage_rank=first_stage_rank, groups=groups, qrels=qrels, k=k))
        for w in grid
    }
    best = max(grid, key=lambda w: (round(by_weights[w], 12), -max(w), w))
    return {
        "weights": list(best),
        "formula": "sum_i w_i * z(member_i) / sum_i w_i, z-scored per query over its candidates",
        "chosen_on": sum(1 for grades in qrels.values() if has_positive(grades)),
        f"ndcg@{k}": by_weights[best],
        f"ndcg@{k}_by_weights": {",".join(f"{x:g}" for x in w): v for w, v in by_weights.items()},
    }


# ---------------------------------------------------------------------------------------------
# Score agreement (teacher ↔ student) and spread


def per_query_groups(query_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices of each query, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(query_ids):
        groups.setdefault(q, []).append(i)
    return {q: np.asarray(ix) for q, ix in groups.items()}


def fidelity(student: Sequence[float], teacher: Sequence[float], query_ids: Sequence[str]) -> dict:
    """Mean per-query Spearman and Kendall (tau-b) correlation, and MSE on the raw scores.

    Queries where either side is constant have no correlation; they are counted, not averaged.
    """
    from scipy import stats

    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(t)
    rhos, taus, undefined = [], [], 0
    for ix in per_query_groups(query_ids).values():
        ix = ix[ok[ix]]
        if len(ix) < 2 or np.ptp(s[ix]) == 0 or np.ptp(t[ix]) == 0:
            undefined += 1
            continue
        rhos.append(stats.spearmanr(s[ix], t[ix]).statistic)
        taus.append(stats.kendalltau(s[ix], t[ix]).statistic)
    return {
        "spearman_mean": float(np.mean(rhos)) if rhos else None,
        "kendall_mean": float(np.mean(taus)) if taus else None,
        "mse": float(np.mean((s[ok] - t[ok]) ** 2)) if ok.any() else None,
        "pairs": int(ok.sum()),
        "queries": len(rhos),
        "queries_undefined": undefined,
    }


def spread(scores: Sequence[float], query_ids: Sequence[str]) -> dict:
    """Per-query standard deviation of the scores: median, 10th percentile, and share of ~constant queries."""
    s = np.asarray(scores, dtype=np.float64)
    stds = np.array([float(np.nanstd(s[ix])) if len(ix) > 1 else np.nan for ix in per_query_groups(query_ids).values()])
    stds = stds[np.isfinite(stds)]
    if not len(stds):
        return {"median_std": None, "p10_std": None, "constant_share": None, "queries": 0}
    return {
        "median_std": float(np.median(stds)),
        "p10_std": float(np.percentile(stds, 10)),
        "constant_share": float(np.mean(stds < 1e-6)),
        "queries": len(stds),
    }


def collapsed(student_median_std: float | None, teacher_median_std: float | None, *, ratio: float = 0.1, floor: float = 1e-4) -> tuple[bool, str]:
    """Collapse rule: median per-query spread < `floor`, or < `ratio` × the teacher's median spread."""
    if student_median_std is None:
        return False, "no spread measured"
    if student_median_std < floor:
        return True, f"median per-query score spread {student_median_std:.3g} < {floor:g}"
    if teacher_median_std and student_median_std < ratio * teacher_median_std:
        return True, f"median per-query score spread {student_median_std:.3g} < {ratio:g} × teacher's {teacher_median_std:.3g}"
    return False, f"median per-query score spread {student_median_std:.3g}" + (
        f" ({student_median_std / teacher_median_std:.2f} × teacher's)" if teacher_median_std else ""
    )


# ---------------------------------------------------------------------------------------------
# What to serve: every measured system against every other, and the cheapest one nobody beats


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; family-wise error ≤ alpha when compared with alpha). NaN counts as 1."""
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64), nan=1.0)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for i, j in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - i) * p[j]))
        adjusted[j] = running
    return adjusted.tolist()


def all_pairs(per_system: Mapping[str, Sequence[float]], *, margin: float = 0.01, alpha: float = 0.05, resamples: int = 10_000, seed: int = 12) -> list[dict]:
    """Every system against every other on one per-query metric (same queries, same order).

    Each pair is oriented `a − b` with `a` the higher mean (ties: the earlier system first) and
    tested with `paired_test`. Its p-value is Holm-adjusted over all the pairs; `a` *beats* `b`
    when `verdict(delta, p_holm)` is WIN (delta ≥ margin and p_holm < alpha).
    """
    names = list(per_system)
    values = {n: np.asarray(per_system[n], dtype=np.float64) for n in names}
    pairs = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            a, b = (x, y) if values[x].mean() >= values[y].mean() else (y, x)
            pairs.append({"a": a, "b": b, **paired_test(values[a], values[b], resamples=resamples, seed=seed).as_dict()})
    for pair, p in zip(pairs, holm([pair["p_value"] for pair in pairs]), strict=True):
        pair["p_holm"] = p
        pair["beats"] = verdict(pair["delta"], p, margin=margin, alpha=alpha) == "WIN"
    return pairs


def cheapest_unbeaten(cost_order: Sequence[str], pairs: Sequence[Mapping]) -> tuple[str, dict[str, list[Mapping]]]:
    """The first system in `cost_order` (cheapest first) that no other system beats, and who beats each system.

    One always exists: `beats` needs a higher mean, so the system with the best mean is never beaten.
    """
    beaten_by: dict[str, list[Mapping]] = {n: [] for n in cost_order}
    for pair in pairs:
        if pair["beats"] and pair["b"] in beaten_by:
            beaten_by[pair["b"]].append(pair)
    for name in cost_order:
        if not beaten_by[name]:
            return name, beaten_by
    raise ValueError("every system is beaten by another: the pairs are not from one set of per-query means")
