"""Issue 3: `mine` — split, first stages (bm25 / dense / hybrid), hard-negative window and the opt-in false-negative guard (issue 14)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, run_json

from skill.config import DataConfig, MineConfig
from skill.errors import ExitCode, SkillError
from skill.mine import fuse_rrf, mine, retrieve_bm25

PAIR_COLUMNS = {
    "query_id": "string",
    "doc_id": "string",
    "query": "string",
    "document": "string",
    "rank": "int32",
    "first_stage_score": "float",
    "relevance": "float",
}


def _data(domain) -> DataConfig:
    return DataConfig(corpus=domain["corpus"], queries=domain["queries"], qrels=domain["qrels"])


def _qrels(domain) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in domain["qrels"].read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        out.setdefault(q, {})[d] = float(s)
    return out


@pytest.fixture(scope="module")
def bm25_run(stdlib_domain, tmp_path_factory):
    """The default: no first-stage guard (the teacher labels every candidate)."""
    run = tmp_path_factory.mktemp("mine") / "bm25"
    result = mine(run, _data(stdlib_domain), MineConfig(retriever="bm25", train_top_k=20, eval_top_k=25))
    return run, result


@pytest.fixture(scope="module")
def guarded_run(stdlib_domain, tmp_path_factory):
    """The opt-in guard of sentence-transformers' mine_hard_negatives (relative margin 0.05) on BM25 scores."""
    run = tmp_path_factory.mktemp("mine") / "guarded"
    result = mine(run, _data(stdlib_domain), MineConfig(retriever="bm25", train_top_k=20, eval_top_k=25, relative_margin=0.05))
    return run, result


def test_artifacts_follow_the_run_folder_contract(bm25_run, stdlib_domain):
    run, _ = bm25_run
    for name in ("split.json", "train_pairs.parquet", "heldout_candidates.parquet", "qrels_heldout.json", "mine.json", "manifest.json"):
        assert (run / name).exists(), name
    for name in ("train_pairs.parquet", "heldout_candidates.parquet"):
        schema = pq.read_schema(run / name)
        assert {f.name: str(f.type) for f in schema} == PAIR_COLUMNS
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["heldout"]) and not set(split["dev"]) & (set(split["train"]) | set(split["heldout"]))
    assert len(split["train"]) + len(split["dev"]) + len(split["heldout"]) == 120 and split["seed"] == 12
    assert 0 < len(split["dev"]) <= (len(split["train"]) + len(split["dev"])) // 5  # 50 asked, at most a fifth of the training side
    train = pq.read_table(run / "train_pairs.parquet").to_pylist()
    held = pq.read_table(run / "heldout_candidates.parquet").to_pylist()
    dev = pq.read_table(run / "dev_candidates.parquet").to_pandas()
    assert {r["query_id"] for r in train} <= set(split["train"])  # dev queries are never trained on
    assert {r["query_id"] for r in held} == set(split["heldout"])
    assert set(dev["query_id"]) == set(split["dev"]) and all(list(g["rank"]) == list(range(1, 26)) for _, g in dev.groupby("query_id"))
    qrels = _qrels(stdlib_domain)
    assert json.loads((run / "qrels_dev.json").read_text()) == {q: qrels[q] for q in split["dev"]}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["mine"]["status"] == "ok"
    assert set(manifest["stages"]["mine"]["outputs"].values()) == {
        "split.json",
        "train_pairs.parquet",
        "heldout_candidates.parquet",
        "qrels_heldout.json",
        "dev_candidates.parquet",
        "qrels_dev.json",
        "mine.json",
    }


def test_heldout_is_exactly_the_first_stage_top_k(bm25_run, stdlib_domain):
    run, _ = bm25_run
    held = pq.read_table(run / "heldout_candidates.parquet").to_pandas()
    qrels_heldout = json.loads((run / "qrels_heldout.json").read_text())
    qrels = _qrels(stdlib_domain)
    missed = 0
    for qid, group in held.groupby("query_id"):
        assert list(group["rank"]) == list(range(1, 26))  # exactly top 25, in order
        assert (np.diff(group["first_stage_score"].to_numpy()) <= 1e-6).all()
        assert qrels_heldout[qid] == qrels[qid]  # every label, including positives the first stage missed
        missed += not set(qrels[qid]) & set(group["doc_id"])
    assert set(qrels_heldout) == set(held["query_id"])
    # Positives are never forced in: recall in the metrics matches the table.
    mine_json = json.loads((run / "mine.json").read_text())
    n = held["query_id"].nunique()
    assert mine_json["summary"]["heldout_recall@25"] == pytest.approx((n - missed) / n, abs=1e-4)


def test_training_pairs_positives_and_default_keeps_every_candidate(bm25_run, stdlib_domain):
    run, result = bm25_run
    train = pq.read_table(run / "train_pairs.parquet").to_pandas()
    held_out = json.loads((run / "split.json").read_text())
    qrels = _qrels(stdlib_domain)
    summary = json.loads((run / "mine.json").read_text())["summary"]
    added, above_positive = 0, 0
    for qid, group in train.groupby("query_id"):
        pos = group[group["relevance"] > 0]
        assert set(pos["doc_id"]) == set(qrels[qid])  # every training positive is there
        missed = pos[pos["rank"] == 0]
        added += len(missed)
        assert missed["first_stage_score"].isna().all()
        negs = group[group["relevance"] == 0]
        # No guard by default: the negatives are exactly the top 20 minus the positives, including those ranked above the positive.
        assert sorted(negs["rank"]) == [r for r in range(1, 21) if r not in set(pos["rank"])]
        best_rank = pos[pos["rank"] > 0]["rank"].min() if (pos["rank"] > 0).any() else 21
        above_positive += int((negs["rank"] < best_rank).sum())
    assert above_positive > 0  # what the old default dropped is now kept (the teacher labels it)
    assert set(train["query_id"]) == set(held_out["train"])
    assert summary["positives_added_missed"] == added
    assert summary["negatives_kept"] == (train["relevance"] == 0).sum() == summary["negatives_considered"]
    assert sum(summary["dropped"].values()) == 0 and summary["queries_without_negatives"] == 0
    assert json.loads((run / "mine.json").read_text())["guard"]["enabled"] is False
    assert "first-stage guard off" in result.text and not result.warnings


def test_opt_in_guard_threshold_against_independent_bm25(stdlib_domain, guarded_run):
    run, result = guarded_run
    import bm25s

    corpus = [json.loads(x) for x in stdlib_domain["corpus"].read_text().splitlines()]
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in stdlib_domain["queries"].read_text().splitlines()}
    ids = [c["_id"] for c in corpus]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([c["text"] for c in corpus], stopwords="en", show_progress=False), show_progress=False)
    train = pq.read_table(run / "train_pairs.parquet").to_pandas()
    qrels = _qrels(stdlib_domain)
    for qid, group in list(train.groupby("query_id"))[:30]:
        scores = retriever.get_scores(bm25s.tokenize([queries[qid]], stopwords="en", return_ids=False, show_progress=False)[0])
        best = max(scores[ids.index(d)] for d in qrels[qid])
        negs = group[group["relevance"] == 0]
        assert (negs["first_stage_score"] <= best - abs(best) * 0.05 + 1e-4).all()
    summary = json.loads((run / "mine.json").read_text())
    assert summary["summary"]["dropped"]["false_negative_guard"] > 0 and summary["guard"]["enabled"] and summary["guard"]["score"] == "bm25"
    assert "false-negative guard (on bm25 scores)" in result.text


def test_no_guard_keeps_the_whole_window(stdlib_domain, tmp_path, bm25_run, guarded_run):
    summary = json.loads((bm25_run[0] / "mine.json").read_text())["summary"]
    guarded = json.loads((guarded_run[0] / "mine.json").read_text())["summary"]
    assert summary["negatives_kept"] == guarded["negatives_kept"] + guarded["dropped"]["false_negative_guard"]
    # A rank window and a per-query cap trim further.
    mine(tmp_path / "w", _data(stdlib_domain), MineConfig(retriever="bm25", train_top_k=20, eval_top_k=25, negative_rank_min=3, num_negatives=5))
    train = pq.read_table(tmp_path / "w" / "train_pairs.parquet").to_pandas()
    negs = train[train["relevance"] == 0]
    assert negs["rank"].min() >= 3 and negs.groupby("query_id").size().max() <= 5


ADVICE = re.compile(r"pass (--[a-z-]+)(?: (\d+))?")


@pytest.mark.parametrize(
    "flags",
    [
        ("--relative-margin", "0.05"),  # the old default guard
        ("--max-score", "0"),  # a guard that drops every candidate scoring above 0
        ("--negative-rank-min", "21"),  # a rank window past the candidates
        ("--train-top-k", "1"),  # only the positive in the top 1
    ],
    ids=["relative-margin", "max-score", "rank-window", "train-top-k"],
)
def test_each_no_negative_warning_is_fixed_by_following_its_advice(cli, stdlib_domain, tmp_path, flags):
    """Every 'kept no negative' warning names a fix; applying exactly that fix removes the warning and the condition."""
    data = ["--corpus", stdlib_domain["corpus"], "--queries", stdlib_domain["queries"], "--qrels", stdlib_domain["qrels"]]
    base = ["mine", *data, "--retriever", "bm25", "--eval-top-k", "25"]
    args = ["--train-top-k", "20", *flags] if flags[0] != "--train-top-k" else list(flags)
    proc = cli(*base, "--run", tmp_path / "before", *args, "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0, payload["errors"]
    warned = [w for w in payload["warnings"] if "no negative" in w or "only positives" in w]
    assert len(warned) == 1 and payload["metrics"]["queries_without_negatives"] > 0, payload["warnings"]
    fix = ADVICE.search(warned[0])
    assert fix, warned[0]
    flag, value = fix.group(1), fix.group(2)
    followed = dict(zip(args[::2], args[1::2], strict=False))
    if flag == "--no-guard":
        followed = {k: v for k, v in followed.items() if k not in ("--relative-margin", "--max-score")}
        extra = ["--no-guard"]
    else:
        followed[flag] = value
        extra = []
    after = cli(*base, "--run", tmp_path / "after", *[x for kv in followed.items() for x in kv], *extra, "--json")
    payload = json.loads(after.stdout)
    assert after.returncode == 0, payload["errors"]
    assert payload["metrics"]["queries_without_negatives"] == 0 and not [w for w in payload["warnings"] if "negative" in w or "only positives" in w]


def test_guard_flags_stay_backward_compatible(cli, stdlib_domain, tmp_path):
    base = ["mine", "--corpus", stdlib_domain["corpus"], "--queries", stdlib_domain["queries"], "--qrels", stdlib_domain["qrels"], "--retriever", "bm25"]
    base += ["--train-top-k", "10", "--eval-top-k", "10"]
    on = json.loads(cli(*base, "--run", tmp_path / "on", "--relative-margin", "0.05", "--json").stdout)
    assert on["metrics"]["dropped"]["false_negative_guard"] > 0
    off = json.loads(cli(*base, "--run", tmp_path / "off", "--relative-margin", "0.05", "--max-score", "1", "--no-guard", "--json").stdout)
    assert sum(off["metrics"]["dropped"].values()) == 0
    bad = cli(*base, "--run", tmp_path / "bad", "--guard-score", "dense", "--relative-margin", "0.05", "--json")
    assert bad.returncode == ExitCode.USAGE and "bm25 scores only" in json.loads(bad.stdout)["errors"][0]["message"]
    help_text = " ".join(run_cli("mine", "--help").stdout.split())
    assert "off by default" in help_text and "never RRF" in help_text


def test_rerun_is_skipped_and_force_redoes(stdlib_domain, bm25_run):
    run, _ = bm25_run
    before = (run / "train_pairs.parquet").stat().st_mtime_ns
    again = mine(run, _data(stdlib_domain), MineConfig(retriever="bm25", train_top_k=20, eval_top_k=25))
    assert again.metrics["skipped"] is True and (run / "train_pairs.parquet").stat().st_mtime_ns == before


def test_dense_embeddings_are_cached_by_content(stdlib_domain, tiny_base, tmp_path):
    cfg = MineConfig(retriever="dense", embedder=str(tiny_base), train_top_k=10, eval_top_k=10, cache_dir=tmp_path / "cache")
    first = mine(tmp_path / "a", _data(stdlib_domain), cfg)
    second = mine(tmp_path / "b", _data(stdlib_domain), cfg)
    assert first.metrics["embedding_cache"] == "miss" and second.metrics["embedding_cache"] == "hit"
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    a = pq.read_table(tmp_path / "a" / "heldout_candidates.parquet")
    b = pq.read_table(tmp_path / "b" / "heldout_candidates.parquet")
    assert a.equals(b)
    # Dense scores are cosines of normalised embeddings, computed independently here.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_base))
    row = a.slice(0, 1).to_pylist()[0]
    q = st.encode_query([row["query"]], normalize_embeddings=True)[0]
    d = st.encode_document([row["document"]], normalize_embeddings=True)[0]
    assert row["first_stage_score"] == pytest.approx(float(q @ d), abs=1e-4)


def test_hybrid_is_reciprocal_rank_fusion(stdlib_domain, tiny_base, tmp_path):
    result = mine(
        tmp_path / "h", _data(stdlib_domain), MineConfig(retriever="hybrid", embedder=str(tiny_base), train_top_k=10, eval_top_k=10, cache_dir=tmp_path / "c")
    )
    held = pq.read_table(tmp_path / "h" / "heldout_candidates.parquet").to_pandas()
    assert (held["first_stage_score"] <= 2 / 61 + 1e-6).all() and (held["first_stage_score"] > 0).all()
    assert result.metrics["heldout_queries"] == 24


def test_hybrid_guard_compares_real_scores_not_rrf(stdlib_domain, tiny_base, tmp_path):
    """On hybrid, the opt-in guard uses the pair's dense cosine (default) or BM25 score, recomputed here independently."""
    import bm25s
    from sentence_transformers import SentenceTransformer

    corpus = [json.loads(x) for x in stdlib_domain["corpus"].read_text().splitlines()]
    texts = {c["_id"]: c["text"] for c in corpus}
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in stdlib_domain["queries"].read_text().splitlines()}
    qrels = _qrels(stdlib_domain)
    st = SentenceTransformer(str(tiny_base))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([c["text"] for c in corpus], stopwords="en", show_progress=False), show_progress=False)
    ids = [c["_id"] for c in corpus]

    def cosine(q: str, docs: list[str]) -> np.ndarray:
        qe = st.encode_query([queries[q]], normalize_embeddings=True)[0]
        return st.encode_document([texts[d] for d in docs], normalize_embeddings=True) @ qe

    def bm25(q: str, docs: list[str]) -> np.ndarray:
        row = retriever.get_scores(bm25s.tokenize([queries[q]], stopwords="en", return_ids=False, show_progress=False)[0])
        return np.asarray([row[ids.index(d)] for d in docs])

    for guard_score, score in (("auto", cosine), ("bm25", bm25)):
        run = tmp_path / guard_score
        cfg = MineConfig(
            retriever="hybrid", embedder=str(tiny_base), train_top_k=15, eval_top_k=15, cache_dir=tmp_path / "c", relative_margin=0.02, guard_score=guard_score
        )
        mine(run, _data(stdlib_domain), cfg)
        record = json.loads((run / "mine.json").read_text())
        assert record["guard"]["score"].startswith("dense" if guard_score == "auto" else "bm25") and "not RRF" in record["guard"]["score"]
        assert record["summary"]["dropped"]["false_negative_guard"] > 0
        train = pq.read_table(run / "train_pairs.parquet").to_pandas()
        for qid, group in list(train.groupby("query_id"))[:20]:
            best = float(score(qid, sorted(qrels[qid])).max())
            negs = group[group["relevance"] == 0]
            if len(negs):
                assert (score(qid, list(negs["doc_id"])) <= best - abs(best) * 0.02 + 1e-4).all(), qid


def test_fuse_rrf_unit():
    docs = ["alpha beta", "beta gamma", "gamma delta", "delta alpha"]
    a = retrieve_bm25(docs, ["alpha"], 4, [set()])
    b = retrieve_bm25(docs, ["gamma"], 4, [set()])
    fused = fuse_rrf([a, b], 4, 60)
    expected: dict[int, float] = {}
    for run in (a, b):
        for r, d in enumerate(run.top_idx[0], start=1):
            expected[int(d)] = expected.get(int(d), 0) + 1 / (60 + r)
    for d, s in zip(fused.top_idx[0], fused.top_score[0], strict=True):
        assert math.isclose(s, expected[int(d)], rel_tol=1e-6)


def test_heldout_query_file(stdlib_domain, tmp_path):
    ids = [json.loads(x)["_id"] for x in stdlib_domain["queries"].read_text().splitlines()][:7]
    f = tmp_path / "held.txt"
    f.write_text("\n".join(ids) + "\n")
    mine(tmp_path / "r", _data(stdlib_domain), MineConfig(retriever="bm25", train_top_k=5, eval_top_k=5, heldout_queries=f))
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert sorted(split["heldout"]) == sorted(ids) and split["heldout_fraction"] is None


def test_offline_hub_embedder_is_a_clear_error(stdlib_domain, tmp_path):
    with pytest.raises(SkillError) as err:
        mine(tmp_path / "r", _data(stdlib_domain), MineConfig(retriever="dense", embedder="nobody/no-such-embedder"))
    assert err.value.code == ExitCode.MISSING_RESOURCE and "local" in err.value.fix
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_cli_mine_json_and_offline_default(stdlib_domain, tmp_path):
    code, payload = run_json(
        "mine",
        "--run",
        tmp_path / "r",
        "--corpus",
        stdlib_domain["corpus"],
        "--queries",
        stdlib_domain["queries"],
        "--qrels",
        stdlib_domain["qrels"],
        "--retriever",
        "bm25",
        "--train-top-k",
        "5",
        "--eval-top-k",
        "5",
    )
    assert code == 0, payload["errors"]
    assert payload["artifacts"]["train_pairs"].endswith("train_pairs.parquet") and payload["metrics"]["heldout_queries"] == 24
    # The default first stage (hybrid, google/embeddinggemma-300m) cannot load offline: exit 4, nothing written.
    code, payload = run_json(
        "mine", "--run", tmp_path / "d", "--corpus", stdlib_domain["corpus"], "--queries", stdlib_domain["queries"], "--qrels", stdlib_domain["qrels"]
    )
    assert code == 4 and "embeddinggemma" in payload["errors"][0]["message"] and "local" in payload["errors"][0]["fix"]
    assert not (tmp_path / "d" / "train_pairs.parquet").exists()
