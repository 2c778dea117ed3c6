"""`inspect`: a read-only preflight of the user's data, before any compute is spent."""

from __future__ import annotations

import random
from pathlib import Path

from skill.data import (
    MIN_DOCUMENTS,
    ColumnMapping,
    LoadResult,
    Problem,
    duplicate_texts,
    length_stats,
    load_corpus,
    load_qrels,
    load_queries,
    workflow_problems,
)
from skill.envelope import Result
from skill.errors import ExitCode, SkillError

MAX_PROBLEMS_SHOWN = 20
LENGTH_SAMPLE = 2000
AT_K = 10  # the headline metric is NDCG@10
STATUS = {"error": "INVALID", "mapping": "NEEDS MAPPING", "labels": "NEEDS LABELS"}  # in this order of precedence
TAG = {"error": "ERROR", "mapping": "MAPPING", "labels": "LABELS"}


def _guarded(load, path: Path, kind: str) -> LoadResult:
    """Run a loader; a file-level failure (broken JSON, bad bytes, missing file) becomes a problem."""
    try:
        return load()
    except SkillError as err:
        severity = "error"
        return LoadResult(None, [Problem(severity, "unreadable", err.message, err.where or str(path), err.fix or "fix the file")], {}, 0)


def _lengths(texts: list[str], tokenizer) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]]


def inspect_data(*, corpus: Path, queries: Path, qrels: Path | None, mapping: ColumnMapping, tokenizer: str | None, max_doc_chars: int) -> Result:
    c = _guarded(lambda: load_corpus(corpus, mapping, max_chars=max_doc_chars, stop_at_first=False), corpus, "corpus")
    q = _guarded(lambda: load_queries(queries, mapping, max_chars=max_doc_chars, stop_at_first=False), queries, "queries")
    r = None
    if qrels is not None:
        r = _guarded(lambda: load_qrels(qrels, mapping, corpus=c.value, queries=q.value, stop_at_first=False), qrels, "qrels")
    loaded = [c, q, *([r] if r else [])]
    problems: list[Problem] = [p for x in loaded for p in x.errors]
    warnings: list[str] = [p.line() for x in loaded for p in x.warnings]
    metrics: dict = {}
    if c.value is not None and q.value is not None and not any(x.errors for x in loaded) and len(c.value) and len(q.value):
        # what keeps valid data from the whole workflow: `mine` refuses the same (skill.data.load_dataset)
        problems += workflow_problems(c.value, q.value, r.value if r else None, qrels_path=qrels)

    if c.value is not None and len(c.value) == 0 and not c.errors:
        problems.append(Problem("error", "empty_corpus", "the corpus has no documents", str(corpus), "give at least one document"))
    if q.value is not None and len(q.value) == 0 and not q.errors:
        problems.append(Problem("error", "empty_queries", "the queries file has no queries", str(queries), "give at least one query"))

    if c.value is not None:
        metrics["documents"] = len(c.value)
        dups = duplicate_texts(c.value.texts)
        metrics["duplicate_documents"] = dups
        if dups:
            warnings.append(f"{dups} documents repeat another document's text; duplicates become false negatives in mining — deduplicate {corpus}")
    if q.value is not None:
        metrics["queries"] = len(q.value)
        dups = duplicate_texts(q.value.texts)
        metrics["duplicate_queries"] = dups
        if dups:
            warnings.append(f"{dups} queries repeat another query's text; the split keeps each text on one side")
    if r is not None and r.value is not None and q.value is not None and not r.errors:  # counts from a broken file would mislead
        with_pos = [qid for qid in q.value.texts if r.value.positives(qid)]
        metrics["qrels"] = sum(len(v) for v in r.value.labels.values())
        metrics["queries_with_positives"] = len(with_pos)
        metrics["queries_without_positives"] = len(q.value) - len(with_pos)
        grades = sorted({s for v in r.value.labels.values() for s in v.values()})
        metrics["relevance_grades"] = grades
        if len(with_pos) < len(q.value):
            warnings.append(f"{len(q.value) - len(with_pos)} queries have no positive in qrels: they can be trained on (teacher labels) but not evaluated")
        if 0 < len(with_pos) < 20:
            warnings.append(f"only {len(with_pos)} queries have positives: held-out metrics will be noisy (aim for 50+ held-out queries)")
    if c.value is not None and MIN_DOCUMENTS <= len(c.value) < AT_K:
        warnings.append(f"the corpus has {len(c.value)} documents: each query has fewer than {AT_K} candidates, so NDCG@{AT_K} is computed on short lists")

    tok = None
    if tokenizer:
        from skill.loading import load_tokenizer

        tok = load_tokenizer(tokenizer, role="tokenizer", flag="--tokenizer")  # never runs a folder's custom code (nor prompts for it)
    unit = "tokens" if tok is not None else "words"
    rng = random.Random(0)
    for name, loaded in (("document", c), ("query", q)):
        if loaded.value is not None and len(loaded.value):
            texts = list(loaded.value.texts.values())
            sample = texts if len(texts) <= LENGTH_SAMPLE else rng.sample(texts, LENGTH_SAMPLE)
            metrics[f"{name}_length_{unit}"] = length_stats(_lengths(sample, tok))
    doc_len = metrics.get(f"document_length_{unit}", {})
    if doc_len and unit == "tokens" and doc_len.get("p90", 0) > 512:
        warnings.append(f"90% of documents fit in {doc_len['p90']} tokens; pairs are truncated at max_seq_length (default 512) — consider chunking")

    ordered = [p for severity in STATUS for p in problems if p.severity == severity]
    status = STATUS[ordered[0].severity] if ordered else "READY"
    metrics["status"] = status
    metrics["problems"] = len(ordered)

    lines = [f"{status}"]
    for key in ("documents", "queries", "qrels", "queries_with_positives", "queries_without_positives", "duplicate_documents", "duplicate_queries"):
        if key in metrics:
            lines.append(f"  {key.replace('_', ' ')}: {metrics[key]:,}")
    for key, stats in metrics.items():
        if key.endswith(("_tokens", "_words")) and stats:
            lines.append(f"  {key.replace('_', ' ')}: p50 {stats['p50']}, p90 {stats['p90']}, p99 {stats['p99']}, max {stats['max']}")
    shown = ordered[:MAX_PROBLEMS_SHOWN]
    for p in shown:
        lines.append(f"{TAG[p.severity]} {p.line()}")
    if len(ordered) > len(shown):
        lines.append(f"... and {len(ordered) - len(shown)} more (see --json)")

    ok = status == "READY"
    return Result(
        artifacts={},
        metrics=metrics,
        warnings=warnings,
        errors=[{"code": int(ExitCode.INVALID_INPUT), "kind": p.kind, "message": p.message, "where": p.where, "fix": p.fix} for p in ordered],
        status="ok" if ok else "error",
        exit_code=ExitCode.OK if ok else ExitCode.INVALID_INPUT,
        text="\n".join(lines),
    )
