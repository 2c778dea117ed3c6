"""The data contract: reading corpus / queries / qrels / pair files, validating them, splitting queries.

Formats: JSONL, CSV/TSV, Parquet, or a `datasets` folder saved with `save_to_disk`. Rows are
streamed; every problem is reported with the file, row and column at fault and the exact fix.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from skill.errors import ExitCode, SkillError, invalid, missing
from skill.runfolder import Split  # split.json's model; split_queries below produces it

Kind = Literal["corpus", "queries", "qrels", "pairs"]
Severity = Literal["error", "mapping", "warning"]

DEFAULT_MAX_DOC_CHARS = 1_000_000
# Column names accepted without any mapping, in order of preference.
DEFAULT_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "corpus": {"id": ("_id", "id"), "text": ("text",), "title": ("title",)},
    "queries": {"id": ("_id", "id"), "text": ("text",)},
    "qrels": {"query_id": ("query-id", "query_id", "qid"), "doc_id": ("corpus-id", "corpus_id", "doc_id", "docid"), "score": ("score", "relevance", "label")},
    "pairs": {"query": ("query",), "document": ("document", "passage"), "label": ("label", "score"), "query_id": ("query_id", "query-id"), "doc_id": ("doc_id", "corpus-id")},
}
REQUIRED = {"corpus": ("id", "text"), "queries": ("id", "text"), "qrels": ("query_id", "doc_id"), "pairs": ("query", "document")}
# Columns that often hold what we need under another name: suggested, never used silently.
LIKELY = {
    "id": ("docid", "doc_id", "pid", "qid", "query_id", "key", "uid", "idx"),
    "text": ("contents", "content", "body", "passage", "document", "query", "question", "sentence"),
    "query_id": ("query", "q_id", "topic"),
    "doc_id": ("doc", "pid", "passage_id", "corpus"),
    "query": ("question", "text", "sentence1", "anchor"),
    "document": ("text", "positive", "answer", "sentence2", "content"),
}


class ColumnMapping(BaseModel):
    """Explicit column names, from `--map KIND.FIELD=COLUMN` (e.g. `corpus.text=contents`)."""

    model_config = ConfigDict(extra="forbid")
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, str] = {}
    pairs: dict[str, str] = {}

    @classmethod
    def parse(cls, items: tuple[str, ...] | list[str]) -> ColumnMapping:
        out: dict[str, dict[str, str]] = {k: {} for k in DEFAULT_COLUMNS}
        for item in items:
            m = re.fullmatch(r"(corpus|queries|qrels|pairs)\.(\w+)=(.+)", item.strip())
            if not m or m.group(2) not in DEFAULT_COLUMNS[m.group(1)]:
                fields = ", ".join(f"{k}.{f}" for k, v in DEFAULT_COLUMNS.items() for f in v)
                raise SkillError(
                    f"cannot read --map {item!r}",
                    code=ExitCode.USAGE,
                    fix=f"write --map KIND.FIELD=COLUMN with KIND.FIELD one of: {fields}",
                )
            out[m.group(1)][m.group(2)] = m.group(3)
        return cls(**out)


@dataclass
class Problem:
    severity: Severity
    kind: str  # short machine name: broken_json, empty_text, duplicate_id, ...
    message: str
    where: str
    fix: str

    def line(self) -> str:
        return f"{self.where}: {self.message} — fix: {self.fix}"

    def to_error(self) -> SkillError:
        return invalid(self.message, where=self.where, fix=self.fix)


# ---------------------------------------------------------------------------------------------
# Reading rows


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "datasets"
        raise invalid("folder is not a `datasets` save_to_disk folder", where=str(path), fix="pass a JSONL/CSV/TSV/Parquet file or a folder written by Dataset.save_to_disk")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    if ext in (".tsv", ".txt"):
        return "tsv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise invalid(f"unknown file type {ext or '(none)'!r}", where=str(path), fix="use .jsonl, .csv, .tsv, .parquet, or a datasets folder")


def _open_binary(path: Path):
    if path.suffix.lower() == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_lines(fh, path: Path) -> Iterator[bytes]:
    """The file's lines; a broken or truncated .gz becomes one clear error."""
    import zlib

    try:
        yield from fh
    except (OSError, EOFError, zlib.error) as exc:
        raise invalid(f"not a readable gzip file ({type(exc).__name__}: {exc})", where=str(path), fix="recompress the file with gzip, or pass it uncompressed") from None


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            f"bytes at column {exc.start + 1} are not UTF-8",
            where=f"{path}:{line_no}",
            fix="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)",
        ) from None


def iter_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs; location is `file:line` (text formats) or `file#row` (columnar)."""
    path = Path(path)
    if not path.exists():
        raise missing("file not found", where=str(path), fix="check the path")
    fmt = detect_format(path)
    if fmt == "jsonl":
        with _open_binary(path) as fh:
            for line_no, raw in enumerate(_read_lines(fh, path), start=1):
                text = _decode(raw, path, line_no).strip()
                if not text:
                    continue
                try:
                    row = json.loads(text)
                except RecursionError:
                    raise invalid("JSON nested too deeply", where=f"{path}:{line_no}", fix="make each line one flat JSON object like {\"_id\": ..., \"text\": ...}") from None
                except json.JSONDecodeError as exc:
                    raise invalid(
                        f"broken JSON at column {exc.colno}: {exc.msg}",
                        where=f"{path}:{line_no}",
                        fix="make each line one complete JSON object (JSON Lines)",
                    ) from None
                if not isinstance(row, dict):
                    raise invalid("line is not a JSON object", where=f"{path}:{line_no}", fix="make each line one JSON object like {\"_id\": ..., \"text\": ...}")
                yield f"{path}:{line_no}", row
    elif fmt in ("csv", "tsv"):
        csv.field_size_limit(1 << 30)
        with _open_binary(path) as fh:
            counter = {"n": 0}

            def lines() -> Iterator[str]:
                for raw in _read_lines(fh, path):
                    counter["n"] += 1
                    yield _decode(raw, path, counter["n"])

            reader = csv.reader(lines(), delimiter="," if fmt == "csv" else "\t")
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip().lstrip("\ufeff") for h in header]
            for values in reader:
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise invalid(
                        f"row has {len(values)} fields, header has {len(header)}",
                        where=f"{path}:{reader.line_num}",
                        fix=f"quote fields that contain the delimiter, or fix the row to {len(header)} fields",
                    )
                yield f"{path}:{reader.line_num}", dict(zip(header, values, strict=True))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise invalid(f"not a readable Parquet file ({type(exc).__name__}: {exc})", where=str(path), fix="rewrite the file with pyarrow/pandas `to_parquet`") from None
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}#row{n}", row
    else:
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise invalid(f"cannot load datasets folder ({type(exc).__name__}: {exc})", where=str(path), fix="write it with Dataset.save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise invalid(f"DatasetDict with splits {list(ds)}", where=str(path), fix="save a single split (ds['train'].save_to_disk(...))")
            ds = next(iter(ds.values()))
        for n, row in enumerate(ds, start=1):
            yield f"{path}#row{n}", row


def peek_columns(path: str | Path) -> list[str]:
    for _, row in iter_rows(path):
        return list(row)
    return []


def resolve_columns(kind: Kind, columns: list[str], mapping: ColumnMapping, path: Path) -> tuple[dict[str, str | None], list[Problem]]:
    """Choose the column for each field of `kind`; a missing required one is a `mapping` problem."""
    explicit = getattr(mapping, kind)
    chosen: dict[str, str | None] = {}
    problems: list[Problem] = []
    if not columns:  # no row at all (an empty file, or a header alone): say so rather than ask for a mapping
        needed = ", ".join("/".join(DEFAULT_COLUMNS[kind][f]) for f in REQUIRED[kind])
        return chosen, [Problem("error", "empty_file", f"the {kind} file has no rows", str(path), f"give at least one row with the columns {needed}")]
    for fld, defaults in DEFAULT_COLUMNS[kind].items():
        if fld in explicit:
            if explicit[fld] not in columns:
                problems.append(Problem("mapping", "unknown_column", f"--map {kind}.{fld}={explicit[fld]} names no column (columns: {', '.join(columns)})", str(path), f"pick one of: {', '.join(columns)}"))
            chosen[fld] = explicit[fld]
            continue
        chosen[fld] = next((c for c in defaults if c in columns), None)
        if chosen[fld] is None and fld in REQUIRED[kind]:
            guesses = [c for c in LIKELY.get(fld, ()) if c in columns]
            hint = f"--map {kind}.{fld}={guesses[0]}" if guesses else f"--map {kind}.{fld}=COLUMN (columns: {', '.join(columns) or 'none'})"
            problems.append(Problem("mapping", "missing_column", f"no {'/'.join(defaults)} column for {kind} {fld} (columns: {', '.join(columns) or 'none'})", str(path), hint))
    return chosen, problems


# ---------------------------------------------------------------------------------------------
# Loaded data


@dataclass
class Corpus:
    texts: dict[str, str] = field(default_factory=dict)  # id -> title + text, as the reranker reads it
    path: str = ""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Queries:
    texts: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Qrels:
    # query id -> doc id -> graded relevance (> 0 is relevant)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""

    def positives(self, qid: str) -> set[str]:
        return {d for d, s in self.labels.get(qid, {}).items() if s > 0}


@dataclass
class LoadResult:
    value: Any
    problems: list[Problem]
    columns: dict[str, str | None]
    rows: int

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "warning"]

    def require(self):
        """Raise the first error as a SkillError (exit 5); return the value otherwise."""
        if self.errors:
            raise self.errors[0].to_error()
        return self.value


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _load_texts(kind: Kind, path: str | Path, mapping: ColumnMapping, max_chars: int, *, stop_at_first: bool) -> LoadResult:
    path = Path(path)
    columns = peek_columns(path)
    chosen, problems = resolve_columns(kind, columns, mapping, path)
    if problems:
        return LoadResult(None, problems, chosen, 0)
    id_col, text_col, title_col = chosen["id"], chosen["text"], chosen.get("title")
    texts: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    rows = 0
    noun = "document" if kind == "corpus" else "query"
    for where, row in iter_rows(path):
        rows += 1
        rid = _as_text(row.get(id_col))
        text = _as_text(row.get(text_col)) or ""
        title = _as_text(row.get(title_col)) if title_col else None
        found: Problem | None = None
        if rid is None or not rid.strip():
            found = Problem("error", "missing_id", f"empty {id_col!r}", f"{where} column {id_col}", f"give every {noun} a non-empty id")
        elif rid in first_seen:
            found = Problem("error", "duplicate_id", f"duplicate id {rid!r} (first at {first_seen[rid]})", f"{where} column {id_col}", "make ids unique (drop or rename the repeat)")
        elif not text.strip() and not (title or "").strip():
            found = Problem("error", "empty_text", f"{noun} {rid!r} has empty text", f"{where} column {text_col}", f"drop the row or fill {text_col!r}")
        elif len(text) + len(title or "") > max_chars:
            found = Problem(
                "error", "oversized", f"{noun} {rid!r} is {len(text):,} characters (limit {max_chars:,})", f"{where} column {text_col}",
                "split long documents into passages of a few hundred words, or raise --max-doc-chars",
            )
        if found:
            problems.append(found)
            if stop_at_first:
                break
            continue
        first_seen[rid] = where
        texts[rid] = f"{title.strip()}\n{text.strip()}" if title and title.strip() else text.strip()
    value = Corpus(texts, str(path)) if kind == "corpus" else Queries(texts, str(path))
    return LoadResult(value, problems, chosen, rows)


def load_corpus(path, mapping: ColumnMapping | None = None, *, max_chars: int = DEFAULT_MAX_DOC_CHARS, stop_at_first: bool = True) -> LoadResult:
    return _load_texts("corpus", path, mapping or ColumnMapping(), max_chars, stop_at_first=stop_at_first)


def load_queries(path, mapping: ColumnMapping | None = None, *, max_chars: int = DEFAULT_MAX_DOC_CHARS, stop_at_first: bool = True) -> LoadResult:
    return _load_texts("queries", path, mapping or ColumnMapping(), max_chars, stop_at_first=stop_at_first)


def load_qrels(path, mapping: ColumnMapping | None = None, *, corpus: Corpus | None = None, queries: Queries | None = None, stop_at_first: bool = True) -> LoadResult:
    path = Path(path)
    mapping = mapping or ColumnMapping()
    columns = peek_columns(path)
    chosen, problems = resolve_columns("qrels", columns, mapping, path)
    if problems:
        return LoadResult(None, problems, chosen, 0)
    qcol, dcol, scol = chosen["query_id"], chosen["doc_id"], chosen["score"]
    labels: dict[str, dict[str, float]] = defaultdict(dict)
    rows = 0
    for where, row in iter_rows(path):
        rows += 1
        qid, did = _as_text(row.get(qcol)), _as_text(row.get(dcol))
        raw = row.get(scol, 1) if scol else 1
        found = None
        try:
            score = float(raw)
            if not math.isfinite(score):
                raise ValueError
        except (TypeError, ValueError):
            found = Problem("error", "bad_label", f"relevance {raw!r} is not a finite number", f"{where} column {scol}", "use integer grades (0 = not relevant, 1+ = relevant)")
            score = 0.0
        if found is None and (not qid or not did):
            found = Problem("error", "missing_id", "empty query or document id", f"{where}", f"fill {qcol!r} and {dcol!r}")
        elif found is None and queries is not None and qid not in queries.texts:
            found = Problem("error", "dangling_qrel", f"query id {qid!r} is not in the queries file", f"{where} column {qcol}", f"drop the row, or add query {qid!r} to {queries.path}")
        elif found is None and corpus is not None and did not in corpus.texts:
            found = Problem("error", "dangling_qrel", f"document id {did!r} is not in the corpus", f"{where} column {dcol}", f"drop the row, or add document {did!r} to {corpus.path}")
        if found:
            problems.append(found)
            if stop_at_first:
                break
            continue
        labels[qid][did] = score
    return LoadResult(Qrels(dict(labels), str(path)), problems, chosen, rows)


@dataclass
class Pairs:
    query: list[str]
    document: list[str]
    label: list[float] | None
    query_id: list[str] | None = None
    doc_id: list[str] | None = None


def load_pairs(path, mapping: ColumnMapping | None = None, *, require_label: bool = False, stop_at_first: bool = True) -> LoadResult:
    """Labelled or unlabelled (query, document[, label]) rows, e.g. precomputed teacher scores."""
    path = Path(path)
    mapping = mapping or ColumnMapping()
    columns = peek_columns(path)
    chosen, problems = resolve_columns("pairs", columns, mapping, path)
    if require_label and chosen.get("label") is None:
        problems.append(Problem("mapping", "missing_column", f"no label/score column (columns: {', '.join(columns)})", str(path), "add a numeric 'label' column, or --map pairs.label=COLUMN"))
    if problems:
        return LoadResult(None, problems, chosen, 0)
    out = Pairs([], [], [] if chosen.get("label") else None, [] if chosen.get("query_id") else None, [] if chosen.get("doc_id") else None)
    rows = 0
    for where, row in iter_rows(path):
        rows += 1
        q, d = _as_text(row.get(chosen["query"])), _as_text(row.get(chosen["document"]))
        found = None
        if not (q or "").strip() or not (d or "").strip():
            found = Problem("error", "empty_text", "empty query or document", where, "drop the row or fill it")
        label = None
        if found is None and out.label is not None:
            raw = row.get(chosen["label"])
            try:
                label = float(raw)
                if not math.isfinite(label):
                    raise ValueError
            except (TypeError, ValueError):
                found = Problem("error", "bad_label", f"label {raw!r} is not a finite number", f"{where} column {chosen['label']}", "give every pair a numeric score (no NaN, inf or text)")
        if found:
            problems.append(found)
            if stop_at_first:
                break
            continue
        out.query.append(q)
        out.document.append(d)
        if out.label is not None:
            out.label.append(label)
        if out.query_id is not None:
            out.query_id.append(_as_text(row.get(chosen["query_id"])) or "")
        if out.doc_id is not None:
            out.doc_id.append(_as_text(row.get(chosen["doc_id"])) or "")
    return LoadResult(out, problems, chosen, rows)


@dataclass
class Dataset:
    """Validated corpus, queries and (optional) qrels, loaded once."""

    corpus: Corpus
    queries: Queries
    qrels: Qrels | None


def load_dataset(corpus, queries, qrels=None, *, mapping: ColumnMapping | None = None, max_chars: int = DEFAULT_MAX_DOC_CHARS) -> Dataset:
    """Load and validate everything, raising the first problem as one clear error (exit 5)."""
    mapping = mapping or ColumnMapping()
    c = load_corpus(corpus, mapping, max_chars=max_chars).require()
    q = load_queries(queries, mapping, max_chars=max_chars).require()
    r = load_qrels(qrels, mapping, corpus=c, queries=q).require() if qrels else None
    if not len(c):
        raise invalid("the corpus is empty", where=str(corpus), fix="give at least one document")
    if not len(q):
        raise invalid("the queries file is empty", where=str(queries), fix="give at least one query")
    return Dataset(c, q, r)


# ---------------------------------------------------------------------------------------------
# Splitting queries


def normalise_query(text: str) -> str:
    return " ".join(text.lower().split())


def split_queries(
    queries: Queries, qrels: Qrels | None, *, heldout_fraction: float = 0.2, seed: int = 12, heldout_ids: list[str] | None = None, dev_queries: int = 0
) -> Split:
    """Split by query: identical query texts (normalised) always fall on the same side.

    Only queries with at least one positive can be held out (they are the ones evaluation can
    score); queries without qrels all go to training. Up to `dev_queries` training queries with
    positives (at most a fifth of them) become the dev split.
    """
    if heldout_ids is not None:
        unknown = [q for q in heldout_ids if q not in queries.texts]
        if unknown:
            raise invalid(f"{len(unknown)} held-out query ids are not in the queries file (first: {unknown[0]!r})", fix="list ids from the queries file, one per line")
        held = set(heldout_ids)
        groups: dict[str, list[str]] = defaultdict(list)
        for qid, text in queries.texts.items():
            groups[normalise_query(text)].append(qid)
        for members in groups.values():  # a text seen on both sides goes to held-out entirely
            if held.intersection(members):
                held.update(members)
    else:
        if not 0 < heldout_fraction < 1:
            raise SkillError(f"--heldout {heldout_fraction} is not between 0 and 1", code=ExitCode.USAGE, fix="use e.g. --heldout 0.2")
        groups = defaultdict(list)
        for qid, text in queries.texts.items():
            groups[normalise_query(text)].append(qid)
        eligible = sorted(k for k, members in groups.items() if qrels is None or any(qrels.positives(m) for m in members))
        random.Random(seed).shuffle(eligible)
        n_held = round(len(eligible) * heldout_fraction)
        if eligible and n_held == 0:
            n_held = 1
        held = {qid for key in eligible[:n_held] for qid in groups[key]}
    dev: set[str] = set()
    if dev_queries > 0 and qrels is not None:
        # Whole text groups, as for held-out; a group is on the training side when none of it was held out.
        candidates = sorted(k for k, members in groups.items() if not held.intersection(members) and any(qrels.positives(m) for m in members))
        random.Random(seed + 1).shuffle(candidates)
        dev = {qid for key in candidates[: min(dev_queries, len(candidates) // 5)] for qid in groups[key]}
    split = Split(
        seed=seed,
        heldout_fraction=None if heldout_ids is not None else heldout_fraction,
        train=[q for q in queries.texts if q not in held and q not in dev],
        heldout=[q for q in queries.texts if q in held],
        dev=[q for q in queries.texts if q in dev],
    )
    check_no_leak(split, queries, qrels)
    return split


def check_no_leak(split: Split, queries: Queries, qrels: Qrels | None) -> None:
    """No held-out query text, nor a (held-out query text, positive doc) pair, may appear in training or dev."""
    train_texts = {normalise_query(queries.texts[q]) for q in split.train + split.dev}
    overlap = set(split.train + split.dev) & set(split.heldout)
    if overlap:
        raise SkillError(f"query {sorted(overlap)[0]!r} is in both train and held-out", code=ExitCode.RUNTIME_FAILURE)
    for qid in split.heldout:
        if normalise_query(queries.texts[qid]) in train_texts:
            raise invalid(f"held-out query {qid!r} has the same text as a training query", fix="deduplicate queries or let the split choose (--heldout FRACTION)")
    if qrels is not None:
        train_pairs = {(normalise_query(queries.texts[q]), d) for q in split.train + split.dev for d in qrels.positives(q)}
        for qid in split.heldout:
            for d in qrels.positives(qid):
                if (normalise_query(queries.texts[qid]), d) in train_pairs:
                    raise invalid(f"held-out pair ({qid!r}, {d!r}) also appears in training", fix="deduplicate queries before splitting")


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    s = sorted(lengths)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))]

    return {"min": s[0], "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def duplicate_texts(texts: dict[str, str]) -> int:
    counts = Counter(normalise_query(t) for t in texts.values())
    return sum(c - 1 for c in counts.values() if c > 1)
