"""Issue 5: the metrics core — hand-computed examples, the library and the exact code agreeing, the paired test, the verdict rule."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skill import metrics as M

# One query, graded qrels: a=3, b=1, c=0 (judged non-relevant), m=2 (a positive the first stage missed).
QRELS = {"q": {"a": 3, "b": 1, "c": 0, "m": 2}}
RANKING = {"q": ["x", "b", "c", "a", "y"]}  # b at rank 2, a at rank 4; m never retrieved


def _hand() -> dict[str, float]:
    dcg = 1 / math.log2(3) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    return {
        "ndcg@10": dcg / idcg,  # ≈ 0.4038
        "mrr@10": 1 / 2,
        "map": (1 / 2 + 2 / 4) / 3,  # divided by ALL three positives, including the missed one
        "recall@10": 2 / 3,
        "recall@5": 2 / 3,
    }


@pytest.mark.parametrize("engine", ["pytrec_eval", "exact"])
def test_hand_computed_example(engine):
    got = M.evaluate_rankings(RANKING, QRELS, 5, engine=engine)["q"]
    want = _hand()
    assert set(got) == set(want) == set(M.metric_names(5))
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert got["ndcg@10"] == pytest.approx(0.40383, abs=1e-4)


def test_recall_at_k_is_separate_from_recall_at_10():
    qrels = {"q": {f"d{i}": 1 for i in (0, 11)}}
    ranking = {"q": [f"d{i}" for i in range(20)]}
    got = M.evaluate_rankings(ranking, qrels, 20)["q"]
    assert got["recall@10"] == 0.5 and got["recall@20"] == 1.0
    assert got["mrr@10"] == 1.0
    assert got["map"] == pytest.approx((1 + 2 / 12) / 2)


def test_query_without_candidates_scores_zero_and_query_without_positives_is_skipped():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    got = M.evaluate_rankings({"q1": ["a"], "q3": ["c"]}, qrels, 10)
    assert set(got) == {"q1", "q2"}
    assert got["q1"]["ndcg@10"] == 1.0
    assert all(v == 0.0 for v in got["q2"].values())


def test_fractional_grades_use_the_exact_engine():
    qrels = {"q": {"a": 0.5, "b": 1.5}}
    got = M.evaluate_rankings({"q": ["a", "b"]}, qrels, 10)["q"]
    dcg = 0.5 + 1.5 / math.log2(3)
    idcg = 1.5 + 0.5 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_pytrec_eval_and_exact_agree_on_random_runs(seed):
    rng = random.Random(seed)
    qrels, runs = {}, {}
    for q in range(12):
        docs = [f"d{i}" for i in range(25)]
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in rng.sample(docs, 6)} | {"unretrieved": rng.choice([0, 1, 2])}
        rng.shuffle(docs)
        runs[f"q{q}"] = docs[: rng.choice([0, 3, 12, 20])]
    a = M.evaluate_rankings(runs, qrels, 20, engine="pytrec_eval")
    b = M.evaluate_rankings(runs, qrels, 20, engine="exact")
    assert a.keys() == b.keys()
    for q in a:
        for m in a[q]:
            assert a[q][m] == pytest.approx(b[q][m], abs=1e-12), (q, m)


def test_ties_break_by_first_stage_rank_and_nan_sorts_last():
    assert M.rank(["a", "b", "c", "d"], [1.0, 2.0, 2.0, float("nan")], [4, 3, 1, 2]) == ["c", "b", "a", "d"]


def test_paired_randomisation_is_exact_for_small_samples():
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.65, 0.3])
    b = np.array([0.5, 0.6, 0.75, 0.2, 0.4, 0.6, 0.35])
    d = a - b
    flips = [np.mean(d * np.array(s)) for s in itertools.product([1, -1], repeat=len(d))]
    want = np.mean(np.abs(flips) >= abs(d.mean()) - 1e-12)
    got = M.paired_test(a, b, resamples=1000)
    assert got.p_value == pytest.approx(want, abs=1e-9)
    assert got.delta == pytest.approx(d.mean())
    assert got.ci_low <= got.delta <= got.ci_high
    assert (got.better, got.worse, got.queries) == (5, 2, 7)


def test_paired_test_detects_a_real_difference_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    better = M.paired_test(base + 0.05 + rng.normal(0, 0.05, 200), base, resamples=2000)
    assert better.p_value < 0.001 and better.ci_low > 0
    noise = M.paired_test(base + rng.normal(0, 0.05, 200), base, resamples=2000)
    assert noise.p_value > 0.01 and noise.ci_low < 0 < noise.ci_high
    same = M.paired_test(base, base)
    assert same.delta == 0 and same.p_value == 1.0


def test_mean_ci_brackets_the_mean():
    x = np.random.default_rng(1).random(100)
    lo, hi = M.mean_ci(x, resamples=2000)
    assert lo < x.mean() < hi and hi - lo < 0.2
    assert M.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


@pytest.mark.parametrize(
    ("delta", "p", "want"),
    [
        (0.02, 0.01, "WIN"),
        (0.02, 0.2, "MARGINAL"),
        (0.005, 0.001, "MARGINAL"),
        (0.0, 1.0, "MARGINAL"),
        (-0.005, 0.3, "MARGINAL"),
        (-0.005, 0.01, "REGRESSION"),
        (-0.02, 0.4, "REGRESSION"),
        (0.01, 0.049, "WIN"),
    ],
)
def test_verdict_rule(delta, p, want):
    assert M.verdict(delta, p, margin=0.01, alpha=0.05) == want


def test_fidelity_and_spread_against_hand_values():
    qids = ["q1"] * 4 + ["q2"] * 3
    teacher = [4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0]
    student = [0.4, 0.3, 0.1, 0.2, 5.0, 5.0, 5.0]  # q1: one swapped pair; q2: constant (undefined)
    f = M.fidelity(student, teacher, qids)
    assert f["spearman_mean"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8
    assert f["kendall_mean"] == pytest.approx((5 - 1) / 6)
    assert f["queries"] == 1 and f["queries_undefined"] == 1
    assert f["mse"] == pytest.approx(np.mean((np.array(student) - np.array(teacher)) ** 2))
    s = M.spread(student, qids)
    assert s["constant_share"] == 0.5
    assert s["median_std"] == pytest.approx(np.median([np.std([0.4, 0.3, 0.1, 0.2]), 0.0]))


def test_collapse_rule():
    assert M.collapsed(0.0, None)[0]
    assert M.collapsed(0.05, 1.0)[0]
    assert not M.collapsed(0.5, 1.0)[0]
    assert not M.collapsed(0.05, None)[0]  # without a teacher only the absolute floor applies


def test_paired_test_on_one_query_is_exact():
    """One query: the two sign flips give the same |mean difference|, so the exact two-sided p is 1 (hand-computed)."""
    from skill.metrics import paired_test

    r = paired_test([0.8], [0.5])
    assert r.p_value == 1.0 and r.queries == 1 and r.better == 1 and abs(r.delta - 0.3) < 1e-12 and r.ci_low == r.ci_high == r.delta


def test_holm_adjustment_hand_computed_and_against_the_step_down_rule():
    # By hand: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06.
    assert M.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert M.holm([]) == [] and M.holm([float("nan"), 0.01]) == pytest.approx([1.0, 0.02])
    # Holm (1979) as a rejection rule: walk the sorted p-values, reject while p_(i) <= alpha / (m - i); stop at the first failure.
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=int(rng.integers(1, 12)))
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        rejected = set()
        for i, j in enumerate(np.argsort(p)):
            if p[j] > alpha / (len(p) - i):
                break
            rejected.add(int(j))
        assert {i for i, q in enumerate(M.holm(p)) if q <= alpha} == rejected


def test_cheapest_unbeaten_on_hand_made_systems():
    """A (0.2) < B (0.6) by 0.4 on all 30 queries; C = B ± 0.3 alternately (+0.02 on average): B beats A, nobody beats B or C."""
    b = np.full(30, 0.6)
    per = {"A": np.full(30, 0.2), "B": b, "C": b + np.where(np.arange(30) % 2 == 0, 0.3, -0.26)}
    pairs = M.all_pairs(per, resamples=2000)
    by = {(p["a"], p["b"]): p for p in pairs}
    assert set(by) == {("B", "A"), ("C", "A"), ("C", "B")}  # each pair oriented higher mean first
    assert by["B", "A"]["delta"] == pytest.approx(0.4) and by["B", "A"]["beats"] and by["C", "A"]["beats"]
    assert by["C", "B"]["delta"] == pytest.approx(0.02) and not by["C", "B"]["beats"] and by["C", "B"]["p_holm"] >= by["C", "B"]["p_value"]
    assert M.cheapest_unbeaten(["A", "B", "C"], pairs)[0] == "B"  # A is beaten; B is the cheapest one nobody beats
    assert M.cheapest_unbeaten(["C", "B", "A"], pairs)[0] == "C"
    assert M.cheapest_unbeaten(["A", "C", "B"], pairs)[1]["A"] and not M.cheapest_unbeaten(["A", "C", "B"], pairs)[1]["B"]
