"""`mine`: split the queries, retrieve candidates with a first stage, keep hard negatives.

First stages: BM25 (`bm25s`), dense (any sentence-transformers model; corpus embeddings are
cached by content hash), or a hybrid of both by reciprocal-rank fusion.

Training candidates are the first stage's top `train_top_k`, whatever their rank relative to
the query's positive: the teacher labels every pair, so a candidate ranked above the positive is
exactly what the student must learn to place, and an unlabelled relevant document simply gets a
high teacher score. A first-stage false-negative guard is an explicit option for training on
binary labels (`relative_margin`, `absolute_margin`, `max_score`, with the semantics of
`sentence_transformers.util.mine_hard_negatives`): a candidate whose first-stage score is too close
to, or above, the query's best positive is dropped. It compares real scores — BM25 or the dense
cosine (`guard_score`; on the hybrid first stage the dense cosine by default), never RRF, whose
"5 %" would be a rank window that depends on k. That function itself does not fit here: it is
dense-only, keys documents by text (duplicates collapse, ids are lost) and returns no ranks, while
the run folder needs ids, ranks and scores from any of the three first stages. Held-out candidates
are exactly the first stage's top K.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skill.config import DataConfig, MineConfig
from skill.data import Dataset, load_dataset, split_queries
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid, missing
from skill.io import atomic_path, hash_obj, write_json, write_parquet
from skill.loading import load_sentence_transformer, model_identity
from skill.manifest import Run, Stage
from skill.runfolder import CACHE, STAGE_OUTPUTS, Split

OUTPUTS = STAGE_OUTPUTS["mine"]


# ---------------------------------------------------------------------------------------------
# First stages. Each returns, for a list of query indices, the top `depth` document indices and
# scores, plus the exact score and 1-based rank of every requested (query, positive) pair.


@dataclass
class Retrieved:
    top_idx: np.ndarray  # [Q, depth] int64 document indices, best first
    top_score: np.ndarray  # [Q, depth] float32
    pos_score: dict[tuple[int, int], float]  # (query row, doc index) -> exact first-stage score
    pos_rank: dict[tuple[int, int], int]  # (query row, doc index) -> exact 1-based rank
    # exact score of any documents for a query row (BM25 or cosine; None for RRF, which has no score outside its list)
    pair_scores: Callable[[int, np.ndarray], np.ndarray] | None = field(default=None, repr=False)


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row, best first; ties broken by document index so results are stable."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    rows = np.arange(scores.shape[0])[:, None]
    vals = scores[rows, part]
    order = np.lexsort((part, -vals), axis=1)
    idx = part[rows, order]
    return idx.astype(np.int64), scores[rows, idx].astype(np.float32)


def _exact_positive(scores_row: np.ndarray, d: int) -> tuple[float, int]:
    s = float(scores_row[d])
    return s, int((scores_row > s).sum()) + 1


def retrieve_bm25(doc_texts: list[str], query_texts: list[str], depth: int, positives: list[set[int]]) -> Retrieved:
    import bm25s

    corpus_tokens = bm25s.tokenize(doc_texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    query_tokens = bm25s.tokenize(query_texts, stopwords="en", return_ids=False, show_progress=False)
    n = len(doc_texts)
    top_idx = np.zeros((len(query_texts), min(depth, n)), dtype=np.int64)
    top_score = np.zeros_like(top_idx, dtype=np.float32)
    pos_score: dict = {}
    pos_rank: dict = {}
    for qi, toks in enumerate(_progress(query_tokens, "bm25")):
        row = retriever.get_scores(toks) if toks else np.zeros(n, dtype=np.float32)
        row = np.asarray(row, dtype=np.float32)
        i, s = _topk(row[None, :], depth)
        top_idx[qi], top_score[qi] = i[0], s[0]
        for d in positives[qi]:
            pos_score[qi, d], pos_rank[qi, d] = _exact_positive(row, d)

    def pair_scores(qi: int, docs: np.ndarray) -> np.ndarray:
        toks = query_tokens[qi]
        row = np.asarray(retriever.get_scores(toks), dtype=np.float32) if toks else np.zeros(n, dtype=np.float32)
        return row[np.asarray(docs, dtype=np.int64)]

    return Retrieved(top_idx, top_score, pos_score, pos_rank, pair_scores)


def _embedding_cache_file(cache_dir: Path, embedder: str, doc_ids: list[str], doc_texts: list[str]) -> Path:
    key = hash_obj({"model": model_identity(embedder), "docs": hash_obj(list(zip(doc_ids, doc_texts, strict=True))), "kind": "document", "v": 1})
    return cache_dir / f"corpus-emb-{key[:24]}.npy"


def embed_corpus(model, embedder: str, doc_ids: list[str], doc_texts: list[str], cache_dir: Path, batch_size: int) -> tuple[np.ndarray, bool]:
    """Normalised document embeddings, loaded from the content-hash cache when present."""
    path = _embedding_cache_file(cache_dir, embedder, doc_ids, doc_texts)
    if path.exists():
        emb = np.load(path)
        if emb.shape[0] == len(doc_texts):
            return emb, True
    emb = model.encode_document(doc_texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True).astype(np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb)
    return emb, False


def retrieve_dense(doc_emb: np.ndarray, query_emb: np.ndarray, depth: int, positives: list[set[int]], *, chunk: int = 256) -> Retrieved:
    import torch

    docs = torch.from_numpy(doc_emb)
    top_idx, top_score = [], []
    pos_score: dict = {}
    pos_rank: dict = {}
    for start in range(0, len(query_emb), chunk):
        q = torch.from_numpy(query_emb[start : start + chunk])
        sims = (q @ docs.T).numpy()
        i, s = _topk(sims, depth)
        top_idx.append(i)
        top_score.append(s)
        for r in range(sims.shape[0]):
            for d in positives[start + r]:
                pos_score[start + r, d], pos_rank[start + r, d] = _exact_positive(sims[r], d)

    def pair_scores(qi: int, docs: np.ndarray) -> np.ndarray:
        return (doc_emb[np.asarray(docs, dtype=np.int64)] @ query_emb[qi]).astype(np.float32)

    return Retrieved(np.concatenate(top_idx), np.concatenate(top_score), pos_score, pos_rank, pair_scores)


def fuse_rrf(runs: list[Retrieved], depth: int, k: int) -> Retrieved:
    """Reciprocal-rank fusion: score = Σ 1/(k + rank) over the runs in which a document appears."""
    n_q = runs[0].top_idx.shape[0]
    top_idx = np.zeros((n_q, depth), dtype=np.int64)
    top_score = np.zeros((n_q, depth), dtype=np.float32)
    width = depth
    for qi in range(n_q):
        fused: dict[int, float] = {}
        for run in runs:
            for r, d in enumerate(run.top_idx[qi], start=1):
                fused[int(d)] = fused.get(int(d), 0.0) + 1.0 / (k + r)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        width = min(width, len(ranked))
        top_idx[qi, : len(ranked)] = [d for d, _ in ranked]
        top_score[qi, : len(ranked)] = [s for _, s in ranked]
    pos_score = {key: sum(1.0 / (k + run.pos_rank[key]) for run in runs) for key in runs[0].pos_rank}
    # A positive's fused rank: fused candidates scoring above it, +1 (a lower bound when unlisted).
    pos_rank = {key: int((top_score[key[0], :width] > s).sum()) + 1 for key, s in pos_score.items()}
    return Retrieved(top_idx[:, :width], top_score[:, :width], pos_score, pos_rank)


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="query", file=sys.stderr, leave=False, disable=len(items) < 200)


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class GuardCounts:
    considered: int = 0
    kept: int = 0
    dropped_margin: int = 0
    dropped_max_score: int = 0
    dropped_rank_window: int = 0
    dropped_num_negatives: int = 0
    judged_negatives_kept: int = 0
    positives_retrieved: int = 0
    positives_added: int = 0
    queries_unguarded: int = 0
    queries_without_negatives: int = 0
    # why a query kept no negative (a query can have several causes), and what fixes each
    no_negative_guard: int = 0  # the guard (margins or max score) dropped candidates of the query
    no_negative_rank_window: int = 0  # --negative-rank-min skipped candidates of the query
    rank_min_that_fixes: int | None = None  # the largest --negative-rank-min that gives each of those queries a negative
    no_negative_only_positives: int = 0  # the top train_top_k held only positives
    train_top_k_that_fixes: int | None = None  # the smallest --train-top-k that gives each of those queries a negative
    no_negative_corpus_exhausted: int = 0  # every document of the corpus is a positive of the query


def guard_enabled(cfg: MineConfig) -> bool:
    """Whether the first-stage false-negative guard is on (off by default: the teacher labels every candidate)."""
    return cfg.relative_margin is not None or cfg.absolute_margin is not None or cfg.max_score is not None


def guard_score_name(cfg: MineConfig) -> str:
    """The real score the guard compares: BM25 or the dense cosine, never RRF (`auto`: the dense cosine on hybrid)."""
    if cfg.guard_score != "auto":
        return cfg.guard_score
    return "bm25" if cfg.retriever == "bm25" else "dense"


def _threshold(pos_scores: list[float], cfg: MineConfig) -> float:
    """Highest guard score a negative may have (as in mine_hard_negatives: `<=` keeps)."""
    best = max(pos_scores)
    limit = math.inf
    if cfg.relative_margin is not None:
        limit = min(limit, best - abs(best) * cfg.relative_margin)
    if cfg.absolute_margin is not None:
        limit = min(limit, best - cfg.absolute_margin)
    return limit


def no_negative_warnings(counts: GuardCounts, cfg: MineConfig) -> list[str]:
    """One warning per reason training queries kept no negative, each with a fix that removes that reason."""
    out = []
    if counts.no_negative_guard:
        given = (("--relative-margin", cfg.relative_margin), ("--absolute-margin", cfg.absolute_margin), ("--max-score", cfg.max_score))
        flags = " ".join(f for f, v in given if v is not None)
        out.append(
            f"{counts.no_negative_guard} training queries kept no negative because the first-stage false-negative guard ({flags}) dropped their candidates: "
            "drop those flags (or pass --no-guard; off is the default) — the teacher labels every candidate, and one ranked above the positive is what the student must learn to place"
        )
    if counts.no_negative_rank_window:
        out.append(
            f"{counts.no_negative_rank_window} training queries kept no negative because --negative-rank-min {cfg.negative_rank_min} skipped all their non-positive candidates: "
            f"pass --negative-rank-min {counts.rank_min_that_fixes} (or 1, the default, to skip none)"
        )
    if counts.no_negative_only_positives:
        out.append(
            f"{counts.no_negative_only_positives} training queries have only positives in their top {cfg.train_top_k} candidates: pass --train-top-k {counts.train_top_k_that_fixes}"
        )
    if counts.no_negative_corpus_exhausted:
        out.append(
            f"{counts.no_negative_corpus_exhausted} training queries have every document of the corpus as a positive: nothing to contrast (their positives still train)"
        )
    return out


def _read_heldout_ids(path: Path) -> list[str]:
    if not path.exists():
        raise missing("held-out query list not found", where=str(path), fix="give a file with one query id per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            f"bytes at offset {exc.start} are not UTF-8", where=str(path), fix="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
        ) from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise invalid("held-out query list is empty", where=str(path), fix="give a file with one query id per line")
    return ids


def mine(run_dir: str | Path, data: DataConfig, config: MineConfig, *, force: bool = False) -> Result:
    """Split, retrieve and select candidates; write the `mine` artifacts of the run folder."""
    run = Run(run_dir)
    if data.corpus is None or data.queries is None:
        raise SkillError("mine needs --corpus and --queries", code=ExitCode.USAGE, fix="pass --corpus FILE --queries FILE [--qrels FILE]")
    if config.heldout_queries is not None and not Path(config.heldout_queries).exists():
        raise missing("held-out query list not found", where=str(config.heldout_queries), fix="give a file with one query id per line")
    cfg_dump = {**config.model_dump(mode="json"), "mapping": data.mapping.model_dump(mode="json"), "max_doc_chars": data.max_doc_chars}
    cfg_dump.pop("cache_dir", None)  # where the cache lives does not change the result
    if config.retriever != "bm25":
        cfg_dump["embedder_identity"] = model_identity(config.embedder)
    stage = Stage(
        run, "mine", config=cfg_dump, inputs={"corpus": data.corpus, "queries": data.queries, "qrels": data.qrels, "heldout_queries": config.heldout_queries}
    )
    if (done := stage.skip(force=force)) is not None:
        return done

    ds: Dataset = load_dataset(data.corpus, data.queries, data.qrels, mapping=data.mapping, max_chars=data.max_doc_chars)
    heldout_ids = _read_heldout_ids(Path(config.heldout_queries)) if config.heldout_queries is not None else None
    split: Split = split_queries(
        ds.queries, ds.qrels, heldout_fraction=config.heldout, seed=config.seed, heldout_ids=heldout_ids, dev_queries=config.dev_queries
    )

    doc_ids = list(ds.corpus.texts)
    doc_texts = [ds.corpus.texts[d] for d in doc_ids]
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    query_ids = split.train + split.heldout + split.dev
    query_texts = [ds.queries.texts[q] for q in query_ids]
    labels = ds.qrels.labels if ds.qrels else {}
    positives = [{doc_index[d] for d, g in labels.get(q, {}).items() if g > 0} for q in query_ids]
    depth = min(max(config.train_top_k, config.eval_top_k), len(doc_ids))

    metrics: dict = {}
    embedder_used = None
    if config.retriever in ("dense", "hybrid"):
        model = load_sentence_transformer(config.embedder, role="embedder", flag="--embedder")
        cache_dir = Path(config.cache_dir) if config.cache_dir else run.file(CACHE)
        doc_emb, cached = embed_corpus(model, config.embedder, doc_ids, doc_texts, cache_dir, config.batch_size)
        query_emb = model.encode_query(
            query_texts, batch_size=config.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=len(query_texts) > 200
        ).astype(np.float32)
        metrics["embedding_cache"] = "hit" if cached else "miss"
        embedder_used = config.embedder
    if config.retriever == "bm25":
        got = retrieve_bm25(doc_texts, query_texts, depth, positives)
        components = {"bm25": got}
    elif config.retriever == "dense":
        got = retrieve_dense(doc_emb, query_emb, depth, positives)
        components = {"dense": got}
    else:
        wide = min(len(doc_ids), max(2 * depth, 100))
        components = {"bm25": retrieve_bm25(doc_texts, query_texts, wide, positives), "dense": retrieve_dense(doc_emb, query_emb, wide, positives)}
        got = fuse_rrf(list(components.values()), depth, config.rrf_k)

    columns = ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance")
    train_rows: dict[str, list] = {c: [] for c in columns}
    held_rows: dict[str, list] = {c: [] for c in columns}
    dev_rows: dict[str, list] = {c: [] for c in columns}

    def add(rows: dict, qid: str, d: int, rank: int, score: float) -> None:
        rows["query_id"].append(qid)
        rows["doc_id"].append(doc_ids[d])
        rows["query"].append(ds.queries.texts[qid])
        rows["document"].append(doc_texts[d])
        rows["rank"].append(rank)
        rows["first_stage_score"].append(score)
        rows["relevance"].append(float(labels.get(qid, {}).get(doc_ids[d], 0.0)))

    counts = GuardCounts()
    n_train = len(split.train)
    k_train = min(config.train_top_k, got.top_idx.shape[1])
    lo = max(config.negative_rank_min, 1)
    guarded = guard_enabled(config)
    margins = config.relative_margin is not None or config.absolute_margin is not None
    guard_name = guard_score_name(config)
    guard_run = components[guard_name]  # BM25 or dense cosine: the guard never compares RRF scores
    for qi, qid in enumerate(split.train):
        cand = [(int(d), float(s), r) for r, (d, s) in enumerate(zip(got.top_idx[qi, :k_train], got.top_score[qi, :k_train], strict=True), start=1)]
        pos = positives[qi]
        listed = {d: (r, s) for d, s, r in cand}
        for d in sorted(pos, key=lambda x: doc_ids[x]):
            if d in listed:
                counts.positives_retrieved += 1
                add(train_rows, qid, d, listed[d][0], listed[d][1])
            else:
                counts.positives_added += 1
                add(train_rows, qid, d, 0, math.nan)
        limit = _threshold([guard_run.pos_score[qi, d] for d in pos], config) if pos and margins else math.inf
        if not pos:
            counts.queries_unguarded += 1
        negatives = [(d, s, r) for d, s, r in cand if d not in pos]
        if guarded and negatives:
            own = guard_run is got  # the first stage's own scores are the guard's; on hybrid, score the pairs exactly
            guard_scores = [s for _, s, _ in negatives] if own else [float(x) for x in guard_run.pair_scores(qi, np.array([d for d, _, _ in negatives]))]
        else:
            guard_scores = [math.nan] * len(negatives)
        kept, by_guard, window_ranks = 0, False, []
        for (d, s, r), g in zip(negatives, guard_scores, strict=True):
            counts.considered += 1
            judged = doc_ids[d] in labels.get(qid, {})  # an explicit grade-0 judgement is a sure negative
            if r < lo:
                counts.dropped_rank_window += 1
                window_ranks.append(r)
            elif not judged and g > limit:
                counts.dropped_margin += 1
                by_guard = True
            elif not judged and config.max_score is not None and g > config.max_score:
                counts.dropped_max_score += 1
                by_guard = True
            elif config.num_negatives is not None and kept >= config.num_negatives:
                counts.dropped_num_negatives += 1
            else:
                kept += 1
                counts.kept += 1
                counts.judged_negatives_kept += int(judged)
                add(train_rows, qid, d, r, s)
        if kept:
            continue
        counts.queries_without_negatives += 1
        counts.no_negative_guard += int(by_guard)
        if window_ranks:
            counts.no_negative_rank_window += 1
            fix = max(window_ranks)  # a window starting there keeps this query's deepest skipped candidate
            counts.rank_min_that_fixes = fix if counts.rank_min_that_fixes is None else min(counts.rank_min_that_fixes, fix)
        if not negatives:
            first_other = next((r for r, d in enumerate(got.top_idx[qi], start=1) if int(d) not in pos), None)
            if first_other is None and len(pos) < len(doc_ids):
                first_other = len(pos) + 1  # at most len(pos) positives come before it
            if first_other is None:
                counts.no_negative_corpus_exhausted += 1
            else:
                counts.no_negative_only_positives += 1
                counts.train_top_k_that_fixes = max(counts.train_top_k_that_fixes or 0, first_other)

    hits, judged_queries = 0, 0
    k_eval = min(config.eval_top_k, got.top_idx.shape[1])
    for offset, qid in enumerate(split.heldout + split.dev):  # exactly the first stage's top k_eval, in query_ids order
        qi = n_train + offset
        held_out = offset < len(split.heldout)
        top = got.top_idx[qi, :k_eval]
        for r, (d, s) in enumerate(zip(top, got.top_score[qi, :k_eval], strict=True), start=1):
            add(held_rows if held_out else dev_rows, qid, int(d), r, float(s))
        if held_out and positives[qi]:
            judged_queries += 1
            hits += len(positives[qi] & {int(d) for d in top}) / len(positives[qi])

    if not train_rows["query_id"]:
        raise invalid(
            "mining produced no training pairs", fix="check that the queries match the corpus and the qrels; pass --negative-rank-min 1 and --no-guard"
        )

    import pyarrow as pa

    def table(rows: dict) -> pa.Table:
        return pa.table(
            {
                "query_id": pa.array(rows["query_id"], pa.string()),
                "doc_id": pa.array(rows["doc_id"], pa.string()),
                "query": pa.array(rows["query"], pa.string()),
                "document": pa.array(rows["document"], pa.string()),
                "rank": pa.array(rows["rank"], pa.int32()),
                "first_stage_score": pa.array(rows["first_stage_score"], pa.float32()),
                "relevance": pa.array(rows["relevance"], pa.float32()),
            }
        )

    summary = {
        "train_queries": n_train,
        "heldout_queries": len(split.heldout),
        "dev_queries": len(split.dev),
        "train_pairs": len(train_rows["query_id"]),
        "heldout_pairs": len(held_rows["query_id"]),
        "dev_pairs": len(dev_rows["query_id"]),
        "negatives_considered": counts.considered,
        "negatives_kept": counts.kept,
        "dropped": {
            "false_negative_guard": counts.dropped_margin,
            "max_score": counts.dropped_max_score,
            "rank_window": counts.dropped_rank_window,
            "num_negatives_cap": counts.dropped_num_negatives,
        },
        "judged_negatives_kept": counts.judged_negatives_kept,
        "positives_retrieved": counts.positives_retrieved,
        "positives_added_missed": counts.positives_added,
        "queries_without_positives_unguarded": counts.queries_unguarded,
        "queries_without_negatives": counts.queries_without_negatives,
    }
    if judged_queries:
        summary[f"heldout_recall@{config.eval_top_k}"] = round(hits / judged_queries, 4)
    mine_json = {
        "retriever": config.retriever,
        "embedder": embedder_used,
        "train_top_k": config.train_top_k,
        "eval_top_k": config.eval_top_k,
        "rrf_k": config.rrf_k if config.retriever == "hybrid" else None,
        "guard": {
            "enabled": guarded,
            "score": (guard_name if config.retriever != "hybrid" else f"{guard_name} (a component of the hybrid first stage, not RRF)") if guarded else None,
            "negative_rank_min": lo,
            "relative_margin": config.relative_margin,
            "absolute_margin": config.absolute_margin,
            "max_score": config.max_score,
            "num_negatives": config.num_negatives,
            "semantics": (
                "off by default: every first-stage candidate in the rank window is kept and the teacher labels it. When on, a candidate is dropped when its guard score "
                "(BM25, or the dense cosine; on hybrid the chosen component's exact score, never RRF) > best_positive - |best_positive|*relative_margin "
                "(or - absolute_margin), or > max_score, as sentence_transformers.util.mine_hard_negatives; grade-0 judged candidates are always kept"
            ),
        },
        "summary": summary,
        **({"embedding_cache": metrics["embedding_cache"]} if "embedding_cache" in metrics else {}),
    }
    qrels_heldout = {q: dict(labels.get(q, {})) for q in split.heldout}
    qrels_dev = {q: dict(labels.get(q, {})) for q in split.dev}

    with stage.transaction() as tx:
        write_json(tx.path("split"), split.model_dump(mode="json"))
        write_parquet(tx.path("train_pairs"), table(train_rows))
        write_parquet(tx.path("heldout_candidates"), table(held_rows))
        write_json(tx.path("qrels_heldout"), qrels_heldout)
        write_parquet(tx.path("dev_candidates"), table(dev_rows))
        write_json(tx.path("qrels_dev"), qrels_dev)
        write_json(tx.path("mine"), mine_json)
        tx.metrics.update({**summary, **metrics})

    dropped = summary["dropped"]
    lines = [
        f"mine: {config.retriever} first stage → {run.path}",
        f"  queries: {n_train:,} train, {len(split.dev):,} dev (kept out of training: checkpoint choice, fusion weight), {len(split.heldout):,} held-out",
        f"  train pairs: {summary['train_pairs']:,} ({counts.positives_retrieved + counts.positives_added:,} positives, {counts.positives_added:,} of them missed by the first stage and added)",
        f"  negatives: kept {counts.kept:,} of {counts.considered:,}; "
        + (
            f"dropped {dropped['false_negative_guard']:,} by the first-stage false-negative guard (on {guard_name} scores), {dropped['max_score']:,} by max score, "
            if guarded
            else "first-stage guard off (the teacher labels every candidate); dropped "
        )
        + f"{dropped['rank_window']:,} outside the rank window, {dropped['num_negatives_cap']:,} over the per-query cap",
        f"  held-out candidates: {summary['heldout_pairs']:,} (top {config.eval_top_k}; positives not forced in)",
    ]
    if judged_queries:
        lines.append(f"  held-out recall@{config.eval_top_k}: {summary[f'heldout_recall@{config.eval_top_k}']:.3f}")
    warnings = list(ds.warnings)  # what reading the files noticed (repeated qrels lines, quoted TSV fields, ...)
    warnings += no_negative_warnings(counts, config)
    if not ds.qrels:
        warnings.append("no --qrels: held-out queries have no labels, so `evaluate` can compare only against the teacher")
    return Result(artifacts={k: str(run.file(v)) for k, v in OUTPUTS.items()}, metrics={**summary, **metrics}, warnings=warnings, text="\n".join(lines))
