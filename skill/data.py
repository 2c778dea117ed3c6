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

Kind = Literal["corpus", "queries", "qrels", "pairs"]
Severity = Literal["error", "mapping", "labels", "warning"]  # labels: valid data that the workflow cannot train/evaluate on

DEFAULT_MAX_DOC_CHARS = 1_000_000
# Column names accepted without any mapping, in order of preference.
DEFAULT_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "corpus": {"id": ("_id", "id"), "text": ("text",), "title": ("title",)},
    "queries": {"id": ("_id", "id"), "text": ("text",)},
    "qrels": {"query_id": ("query-id", "query_id", "qid"), "doc_id": ("corpus-id", "corpus_id", "doc_id", "docid"), "score": ("score", "relevance", "label")},
    "pairs": {
        "query": ("query",),
        "document": ("document", "passage"),
        "label": ("label", "score"),
        "query_id": ("query_id", "query-id"),
        "doc_id": ("doc_id", "corpus-id"),
    },
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
#
# JSONL: one object per line; a key a row lacks is missing in that row only. CSV: RFC 4180 quoting,
# read strictly (a quote that never closes is an error). TSV: plain text split on tabs, one record per
# line, quotes kept as text (MS MARCO's collection.tsv and queries.tsv are written this way).
# Parquet and `datasets` folders: the schema's columns. Every format: the first line/row is the header
# or first record; every row is checked on its own (nothing is decided from the first row alone).


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "datasets"
        raise invalid(
            "folder is not a `datasets` save_to_disk folder",
            where=str(path),
            fix="pass a JSONL/CSV/TSV/Parquet file or a folder written by Dataset.save_to_disk",
        )
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
        raise invalid(
            f"not a readable gzip file ({type(exc).__name__}: {exc})", where=str(path), fix="recompress the file with gzip, or pass it uncompressed"
        ) from None


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = line_no == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")  # Excel's "Unicode text" export
        source = "utf-16" if utf16 else "latin1"
        raise invalid(
            f"bytes at column {exc.start + 1} are not UTF-8" + (" (the file starts with a UTF-16 byte-order mark)" if utf16 else ""),
            where=f"{path}:{line_no}",
            fix=f"re-encode the file as UTF-8 (e.g. `iconv -f {source} -t utf-8 IN > OUT`)",
        ) from None
    return text.removeprefix("\ufeff") if line_no == 1 else text  # a UTF-8 byte-order mark is not data


_KEY_COLON = re.compile(r'"\s*:')


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise _DuplicateKey(key)
        row[key] = value
    return row


class _DuplicateKey(ValueError):
    pass


def _json_row(text: str, path: Path, line_no: int) -> dict[str, Any]:
    where = f"{path}:{line_no}"
    try:
        row = json.loads(text)
        # json keeps the last of two equal keys; a second parse that refuses them runs only when the
        # line has more `"<space>:` than keys, which every line with a repeated key has (each key is a
        # string followed by a colon); in a text value the pattern needs an escaped quote, so it is rare.
        if isinstance(row, dict) and len(_KEY_COLON.findall(text)) > len(row):
            json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise invalid(
            f"key {exc.args[0]!r} appears twice in one object", where=where, fix=f"keep one {exc.args[0]!r} per line (JSON keeps only the last one)"
        ) from None
    except RecursionError:
        raise invalid("JSON nested too deeply", where=where, fix='make each line one flat JSON object like {"_id": ..., "text": ...}') from None
    except json.JSONDecodeError as exc:
        raise invalid(f"broken JSON at column {exc.colno}: {exc.msg}", where=where, fix="make each line one complete JSON object (JSON Lines)") from None
    if not isinstance(row, dict):
        raise invalid("line is not a JSON object", where=where, fix='make each line one JSON object like {"_id": ..., "text": ...}')
    return row


def _header(values: list[str]) -> tuple[list[str], list[str]]:
    """The header's column names, and those it repeats (checked by `Fields`: a repeat may mean the line is data)."""
    header = [h.strip() for h in values]
    return header, [name for name, count in Counter(header).items() if name and count > 1]


class Rows:
    """The rows of one input file as (location, row) pairs; location is `file:line` or `file#rowN`.

    `columns` is the header or schema once iteration has started (None for JSONL, whose rows each
    carry their own keys); `notes` collects warnings noticed while reading.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise missing("file not found", where=str(self.path), fix="check the path")
        self.format = detect_format(self.path)
        self.columns: list[str] | None = None
        self.repeated_columns: list[str] = []  # header names given twice (the row dicts keep the last)
        self.notes: list[Problem] = []

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.format == "jsonl":
            yield from self._jsonl()
        elif self.format == "csv":
            yield from self._csv()
        elif self.format == "tsv":
            yield from self._tsv()
        elif self.format == "parquet":
            yield from self._parquet()
        else:
            yield from self._datasets()

    def _lines(self) -> Iterator[tuple[int, str]]:
        with _open_binary(self.path) as fh:
            for line_no, raw in enumerate(_read_lines(fh, self.path), start=1):
                yield line_no, _decode(raw, self.path, line_no)

    def _jsonl(self):
        for line_no, text in self._lines():
            text = text.strip()
            if text:
                yield f"{self.path}:{line_no}", _json_row(text, self.path, line_no)

    def _wrong_width(self, line_no: int, n: int, header: list[str], hint: str) -> SkillError:
        return invalid(f"row has {n} fields, the header has {len(header)} ({', '.join(header)})", where=f"{self.path}:{line_no}", fix=hint)

    def _tsv(self):
        lines = self._lines()
        header = None
        quoted, first_quoted = 0, ""
        for line_no, text in lines:
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            values = text.split("\t")
            if header is None:
                header, self.repeated_columns = _header(values)
                self.columns = header
                continue
            if len(values) != len(header):
                raise self._wrong_width(
                    line_no,
                    len(values),
                    header,
                    f"a TSV line is plain text split on tabs, one record per line, quotes kept as text: give line {line_no} exactly {len(header)} fields"
                    " (no tab or line break inside a text), or write the file as CSV with quoting",
                )
            for value in values:
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    quoted += 1
                    first_quoted = first_quoted or f"{self.path}:{line_no}"
            yield f"{self.path}:{line_no}", dict(zip(header, values, strict=True))
        if quoted:
            self.notes.append(
                Problem(
                    "warning",
                    "quoted_tsv_field",
                    f"{quoted} field(s) are wrapped in double quotes (first at {first_quoted}); TSV is read as plain text, so the quotes stay part of the text",
                    str(self.path),
                    "if the file was written with CSV-style quoting, save it as CSV (.csv) instead",
                )
            )

    def _csv(self):
        csv.field_size_limit(1 << 30)
        reader = csv.reader((text for _, text in self._lines()), strict=True)
        header = None
        spanning, first_span = 0, ""
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise self._quote_error(start, reader.line_num, header, str(exc)) from None
            if not values or all(not v.strip() for v in values):
                continue
            if header is None:
                header, self.repeated_columns = _header(values)
                self.columns = header
                continue
            if reader.line_num > start:
                spanning += 1
                first_span = first_span or f"lines {start}–{reader.line_num}"
            if len(values) != len(header):
                raise self._wrong_width(start, len(values), header, f"quote fields that contain a comma, or fix line {start} to {len(header)} fields")
            yield f"{self.path}:{start}", dict(zip(header, values, strict=True))
        if spanning:
            self.notes.append(
                Problem(
                    "warning",
                    "multiline_csv_record",
                    f"{spanning} record(s) span several lines (first: {first_span}): quoted fields with line breaks",
                    str(self.path),
                    'if no text should contain a line break, a quote is unbalanced there: close it or double it ("")',
                )
            )

    def _quote_error(self, start: int, end: int, header: list[str] | None, reason: str) -> SkillError:
        """An unbalanced or misplaced quote, named by the line (and column) where its field starts."""
        line = next((text for n, text in self._lines() if n == start), "")
        fields = next(csv.reader([line.rstrip("\r\n")]), [""])  # lenient: the last field is the one the quote opened
        column = f" column {header[len(fields) - 1]}" if header and len(fields) <= len(header) else ""
        where = f"{self.path}:{start}{column}"
        if "end of data" in reason or end > start:
            return invalid(
                f"unbalanced quote: the quoted field that starts on line {start} does not close on its line (it runs to line {end})",
                where=where,
                fix=f'close the quote on line {start}, or write a literal " as "" inside a quoted field (the text "best bread becomes """best bread")',
            )
        return invalid(
            f"broken CSV quoting ({reason})",
            where=where,
            fix='a quoted field ends at its closing " right before the comma or line end; write a literal " inside it as ""',
        )

    def _parquet(self):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise invalid(
                f"not a readable Parquet file ({type(exc).__name__}: {exc})", where=str(self.path), fix="rewrite the file with pyarrow/pandas `to_parquet`"
            ) from None
        self.columns = list(pf.schema_arrow.names)
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield f"{self.path}#row{n}", row

    def _datasets(self):
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as exc:
            raise invalid(
                f"cannot load datasets folder ({type(exc).__name__}: {exc})", where=str(self.path), fix="write it with Dataset.save_to_disk"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise invalid(f"DatasetDict with splits {list(ds)}", where=str(self.path), fix="save a single split (ds['train'].save_to_disk(...))")
            ds = next(iter(ds.values()))
        self.columns = list(ds.column_names)
        for n, row in enumerate(ds, start=1):
            yield f"{self.path}#row{n}", row


def iter_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs; location is `file:line` (text formats) or `file#rowN` (columnar)."""
    reader = Rows(path)
    for where, row in reader:
        if reader.repeated_columns:
            name = reader.repeated_columns[0]
            raise invalid(
                f"column {name!r} appears twice in the header", where=f"{reader.path}:1", fix=f"rename one of the two {name!r} columns in the first line"
            )
        yield where, row


# ---------------------------------------------------------------------------------------------
# Columns: which key of a row holds each field, decided row by row


class Fields:
    """Finds each field of `kind` in a row: the `--map`ped name, else the first accepted default name.

    Rows of a JSONL file each carry their own keys, so a field is looked up in every row, never decided
    from the first one; tabular rows all carry the header's columns. `problems` holds what the first
    row (or header) already shows: a required field with no column, a `--map` naming no column.
    """

    def __init__(self, kind: Kind, mapping: ColumnMapping, reader: Rows, first_row: dict[str, Any]) -> None:
        self.kind = kind
        self.explicit = getattr(mapping, kind)
        self.tabular = reader.columns is not None
        self.columns = list(reader.columns if reader.columns is not None else first_row)
        self.path = reader.path
        self.problems: list[Problem] = []
        self._found: set[str] = set()  # fields whose --map name was in some row
        self._names = {fld: (self.explicit[fld],) if fld in self.explicit else defaults for fld, defaults in DEFAULT_COLUMNS[kind].items()}
        self.chosen = {fld: self.column(fld, first_row) for fld in DEFAULT_COLUMNS[kind]}
        columns = ", ".join(self.columns) or "none"
        if reader.repeated_columns:
            name = reader.repeated_columns[0]
            headerless = self._headerless_fix()
            self.problems.append(
                Problem("mapping", "headerless", f"no header line: the first line repeats {name!r}", str(self.path), headerless)
                if headerless
                else Problem(
                    "error",
                    "repeated_column",
                    f"column {name!r} appears twice in the header",
                    f"{self.path}:1",
                    f"rename one of the two {name!r} columns in the first line",
                )
            )
            return
        for fld, defaults in DEFAULT_COLUMNS[kind].items():
            name = self.explicit.get(fld)
            if name is not None and name not in self.columns and (self.tabular or fld in REQUIRED[kind]):
                self.problems.append(
                    Problem(
                        "mapping",
                        "unknown_column",
                        f"--map {kind}.{fld}={name} names no column (columns: {columns})",
                        str(self.path),
                        f"pick one of: {columns}",
                    )
                )
            elif name is None and self.chosen[fld] is None and fld in REQUIRED[kind]:
                self.problems.append(
                    Problem(
                        "mapping", "missing_column", f"no {'/'.join(defaults)} column for {kind} {fld} (columns: {columns})", str(self.path), self._hint(fld)
                    )
                )

    def column(self, fld: str, row: dict[str, Any]) -> str | None:
        """The key of `row` that holds `fld` (None when the row has none); called for every row."""
        for name in self._names[fld]:
            if name in row:
                if fld in self.explicit:
                    self._found.add(fld)
                return name
        return None

    def _hint(self, fld: str) -> str:
        guesses = [c for c in LIKELY.get(fld, ()) if c in self.columns]
        if self.kind == "pairs":  # `score` reads a scores file by these names (no --map there)
            wanted = DEFAULT_COLUMNS["pairs"][fld][0]
            return f"rename the column {guesses[0]!r} to {wanted!r}" if guesses else f"name a column {wanted!r} (columns: {', '.join(self.columns)})"
        if guesses:
            return f"--map {self.kind}.{fld}={guesses[0]}"
        headerless = self._headerless_fix()
        return headerless or f"--map {self.kind}.{fld}=COLUMN (columns: {', '.join(self.columns) or 'none'})"

    def _headerless_fix(self) -> str | None:
        """A CSV/TSV whose first line is data (MS MARCO, TREC qrels): the header line to add."""
        known = {c for names in DEFAULT_COLUMNS[self.kind].values() for c in names} | {c for f in DEFAULT_COLUMNS[self.kind] for c in LIKELY.get(f, ())}
        if not self.tabular or known & set(self.columns):
            return None
        header = {
            ("corpus", 2): ["_id", "text"],
            ("queries", 2): ["_id", "text"],
            ("qrels", 3): ["query-id", "corpus-id", "score"],
            ("qrels", 4): ["query-id", "iteration", "corpus-id", "score"],
        }
        names = header.get((self.kind, len(self.columns)))
        if names is None:
            return None
        import shlex

        sep = "\\t" if detect_format(self.path) == "tsv" else ","
        gz = self.path.suffix.lower() == ".gz"
        out = self.path.with_name("with-header-" + self.path.name.removesuffix(".gz").removesuffix(".GZ"))
        return (
            f"if {self.path.name} has no header line (MS MARCO/TREC files have none), add one:"
            f" `{{ printf '{sep.join(names)}\\n'; {'zcat' if gz else 'cat'} {shlex.quote(str(self.path))}; }} > {shlex.quote(str(out))}` and pass {out.name}"
        )

    def unused(self) -> list[Problem]:
        """`--map`s of optional fields that named a key no row had (JSONL: checked after the last row)."""
        return [
            Problem(
                "mapping",
                "unknown_column",
                f"--map {self.kind}.{fld}={name} names no field in any row",
                str(self.path),
                f"drop --map {self.kind}.{fld}, or name the field the rows use",
            )
            for fld, name in self.explicit.items()
            if fld not in self._found and fld not in REQUIRED[self.kind]
        ]

    def missing(self, fld: str, where: str) -> Problem:
        names = "/".join([self.explicit[fld]] if fld in self.explicit else DEFAULT_COLUMNS[self.kind][fld])
        return Problem("error", "missing_field", f"row has no {names} field", where, f"give every row a {names.split('/')[0]!r} field, or drop the row")


def _describe(value: Any) -> str:
    """`an int (42)`, `a list (['a', 'b'])`: what a value is, for a one-line message."""
    shown = repr(value)
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown[:40] + '…' if len(shown) > 40 else shown})"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_fix(fmt: str, col: str) -> str:
    if fmt == "jsonl":
        return f'write {col!r} as a JSON string in every row (e.g. "42", not 42)'
    return f"store {col!r} as a string column (e.g. pandas `df[{col!r}] = df[{col!r}].astype(str)` before writing)"


class _Cell:
    """Typed reads of one row's values; a wrong type becomes a Problem naming the row and column."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def text(self, row: dict[str, Any], col: str, where: str) -> tuple[str | None, Problem | None]:
        value = row.get(col)
        if _is_missing(value):
            return None, None
        if isinstance(value, str):
            return value, None
        return None, Problem("error", "not_text", f"{col!r} is {_describe(value)}, not text", f"{where} column {col}", _text_fix(self.fmt, col))

    def ident(self, row: dict[str, Any], col: str, where: str) -> tuple[str | None, Problem | None]:
        """An id: a string, or an integer read as its decimal string (BEIR ids are strings; many files use numbers)."""
        value = row.get(col)
        if _is_missing(value):
            return None, None
        if isinstance(value, str):
            return value, None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value), None
        return None, Problem(
            "error",
            "bad_id",
            f"{col!r} is {_describe(value)}, not a string or integer id",
            f"{where} column {col}",
            f"write every {col!r} as a string (or an integer)",
        )

    @staticmethod
    def number(value: Any) -> float | None:
        if isinstance(value, bool):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None


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

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def require(self):
        """Raise the first error as a SkillError (exit 5); return the value otherwise."""
        if self.errors:
            raise self.errors[0].to_error()
        return self.value


def _empty_file(kind: Kind, path: Path) -> LoadResult:
    needed = ", ".join("/".join(DEFAULT_COLUMNS[kind][f]) for f in REQUIRED[kind])
    return LoadResult(
        None, [Problem("error", "empty_file", f"the {kind} file has no rows", str(path), f"give at least one row with the columns {needed}")], {}, 0
    )


class _Collector:
    """Problems of one file: the first one ends the read when `stop_at_first`."""

    def __init__(self, stop_at_first: bool) -> None:
        self.stop_at_first = stop_at_first
        self.problems: list[Problem] = []

    def add(self, problem: Problem | None) -> bool:
        """Record `problem`; True when the row is bad (skip it)."""
        if problem is None:
            return False
        self.problems.append(problem)
        return True

    @property
    def stop(self) -> bool:
        return self.stop_at_first and any(p.severity != "warning" for p in self.problems)


def _load_texts(kind: Kind, path: str | Path, mapping: ColumnMapping, max_chars: int, *, stop_at_first: bool) -> LoadResult:
    reader = Rows(path)
    cell = _Cell(reader.format)
    fields: Fields | None = None
    out = _Collector(stop_at_first)
    texts: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    rows = 0
    noun = "document" if kind == "corpus" else "query"
    for where, row in reader:
        if fields is None:
            fields = Fields(kind, mapping, reader, row)
            if fields.problems:
                return LoadResult(None, fields.problems, fields.chosen, 0)
        rows += 1
        id_col, text_col = fields.column("id", row), fields.column("text", row)
        title_col = fields.column("title", row) if kind == "corpus" else None
        if out.add(fields.missing("id", where) if id_col is None else fields.missing("text", where) if text_col is None else None):
            if out.stop:
                break
            continue
        # strings (the common case) inline; everything else through the typed reads
        rid, bad = (raw, None) if type(raw := row[id_col]) is str else cell.ident(row, id_col, where)
        text, bad_text = (raw, None) if type(raw := row[text_col]) is str else cell.text(row, text_col, where)
        title, bad_title = (raw, None) if title_col and type(raw := row[title_col]) is str else cell.text(row, title_col, where) if title_col else (None, None)
        found = bad or bad_text or bad_title
        text = text or ""
        if found is None:
            if rid is None or not rid.strip():
                found = Problem("error", "missing_id", f"empty {id_col!r}", f"{where} column {id_col}", f"give every {noun} a non-empty id")
            elif rid in first_seen:
                found = Problem(
                    "error",
                    "duplicate_id",
                    f"duplicate id {rid!r} (first at {first_seen[rid]})",
                    f"{where} column {id_col}",
                    "make ids unique (drop or rename the repeat)",
                )
            elif not text.strip() and not (title or "").strip():
                found = Problem("error", "empty_text", f"{noun} {rid!r} has empty text", f"{where} column {text_col}", f"drop the row or fill {text_col!r}")
            elif len(text) + len(title or "") > max_chars:
                found = Problem(
                    "error",
                    "oversized",
                    f"{noun} {rid!r} is {len(text) + len(title or ''):,} characters (limit {max_chars:,})",
                    f"{where} column {text_col}",
                    "split long documents into passages of a few hundred words, or raise --max-doc-chars (a recipe: data.max_doc_chars)",
                )
        if out.add(found):
            if out.stop:
                break
            continue
        first_seen[rid] = where
        texts[rid] = f"{title.strip()}\n{text.strip()}" if title and title.strip() else text.strip()
    if fields is None:
        return _empty_file(kind, reader.path)
    out.problems += fields.unused()
    value = Corpus(texts, str(reader.path)) if kind == "corpus" else Queries(texts, str(reader.path))
    return LoadResult(value, out.problems + reader.notes, fields.chosen, rows)


def load_corpus(path, mapping: ColumnMapping | None = None, *, max_chars: int = DEFAULT_MAX_DOC_CHARS, stop_at_first: bool = True) -> LoadResult:
    return _load_texts("corpus", path, mapping or ColumnMapping(), max_chars, stop_at_first=stop_at_first)


def load_queries(path, mapping: ColumnMapping | None = None, *, max_chars: int = DEFAULT_MAX_DOC_CHARS, stop_at_first: bool = True) -> LoadResult:
    return _load_texts("queries", path, mapping or ColumnMapping(), max_chars, stop_at_first=stop_at_first)


class _Presence:
    """An optional field must be in every row or in none: a mix is ambiguous (which rows lack it by mistake?)."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        self.with_at: str | None = None
        self.without_at: str | None = None

    def see(self, present: bool, where: str) -> Problem | None:
        if present:
            self.with_at = self.with_at or where
            if self.without_at:
                return Problem("error", "mixed_optional_field", f"this row has a {self.what} but {self.without_at} has none", where, self.fix)
        else:
            self.without_at = self.without_at or where
            if self.with_at:
                return Problem("error", "mixed_optional_field", f"this row has no {self.what} but {self.with_at} has one", where, self.fix)
        return None


def load_qrels(
    path, mapping: ColumnMapping | None = None, *, corpus: Corpus | None = None, queries: Queries | None = None, stop_at_first: bool = True
) -> LoadResult:
    """Graded labels. A file with no score column at all grades every row 1 (binary qrels); rows with and without a score in one file are an error."""
    mapping = mapping or ColumnMapping()
    reader = Rows(path)
    cell = _Cell(reader.format)
    fields: Fields | None = None
    out = _Collector(stop_at_first)
    labels: dict[str, dict[str, float]] = defaultdict(dict)
    seen: dict[tuple[str, str], tuple[str, float]] = {}
    repeats, first_repeat = 0, ""
    presence = _Presence(
        "score",
        "give every row a score (0 = not relevant, 1+ = relevant), or no row one (then every row is relevant, grade 1)",
    )
    rows = 0
    for where, row in reader:
        if fields is None:
            fields = Fields("qrels", mapping, reader, row)
            if fields.problems:
                return LoadResult(None, fields.problems, fields.chosen, 0)
        rows += 1
        qcol, dcol, scol = fields.column("query_id", row), fields.column("doc_id", row), fields.column("score", row)
        found = fields.missing("query_id", where) if qcol is None else fields.missing("doc_id", where) if dcol is None else None
        found = found or presence.see(scol is not None, where)
        qid = did = None
        score = 1.0
        if found is None:
            qid, found = cell.ident(row, qcol, where)
            did, bad = cell.ident(row, dcol, where)
            found = found or bad
        if found is None and scol is not None:
            raw = row.get(scol)
            number = _Cell.number(raw)
            if number is None:
                found = Problem(
                    "error",
                    "bad_label",
                    f"relevance {raw!r} is not a finite number",
                    f"{where} column {scol}",
                    "use integer grades (0 = not relevant, 1+ = relevant)",
                )
            else:
                score = number
        if found is None and (not qid or not did):
            empty = qcol if not qid else dcol
            found = Problem(
                "error", "missing_id", f"empty {'query' if empty == qcol else 'document'} id", f"{where} column {empty}", f"fill {empty!r}, or drop the row"
            )
        elif found is None and queries is not None and qid not in queries.texts:
            found = Problem(
                "error",
                "dangling_qrel",
                f"query id {qid!r} is not in the queries file",
                f"{where} column {qcol}",
                f"drop the row, or add query {qid!r} to {queries.path}",
            )
        elif found is None and corpus is not None and did not in corpus.texts:
            found = Problem(
                "error",
                "dangling_qrel",
                f"document id {did!r} is not in the corpus",
                f"{where} column {dcol}",
                f"drop the row, or add document {did!r} to {corpus.path}",
            )
        elif found is None and (qid, did) in seen:
            first, grade = seen[qid, did]
            if grade != score:
                found = Problem(
                    "error",
                    "conflicting_qrel",
                    f"query {qid!r}, document {did!r} is graded {score:g} here and {grade:g} at {first}",
                    where,
                    "keep one line per (query, document) pair: delete the wrong one",
                )
            else:
                repeats += 1
                first_repeat = first_repeat or f"{where} repeats {first}"
        if out.add(found):
            if out.stop:
                break
            continue
        seen.setdefault((qid, did), (where, score))
        labels[qid][did] = score
    if fields is None:
        return _empty_file("qrels", reader.path)
    out.problems += fields.unused()
    if repeats:
        out.add(
            Problem(
                "warning",
                "repeated_qrel",
                f"{repeats} line(s) repeat an earlier (query, document) pair with the same grade ({first_repeat}); each pair is read once",
                str(reader.path),
                "delete the repeated lines",
            )
        )
    return LoadResult(Qrels(dict(labels), str(reader.path)), out.problems + reader.notes, fields.chosen, rows)


@dataclass
class Pairs:
    query: list[str]
    document: list[str]
    label: list[float] | None
    query_id: list[str] | None = None
    doc_id: list[str] | None = None


def load_pairs(path, mapping: ColumnMapping | None = None, *, require_label: bool = False, stop_at_first: bool = True) -> LoadResult:
    """Labelled or unlabelled (query, document[, label]) rows, e.g. precomputed teacher scores.

    Ids are optional per row (rows without them are matched by text); the label is in every row or in
    none; one pair (by ids, else by texts) scored twice with different labels is an error.
    """
    mapping = mapping or ColumnMapping()
    reader = Rows(path)
    cell = _Cell(reader.format)
    fields: Fields | None = None
    out = _Collector(stop_at_first)
    pairs = Pairs([], [], [], [], [])
    labelled = _Presence("label", "give every pair a numeric label")
    seen: dict[tuple[str, str, str], tuple[str, float | None]] = {}
    rows = 0
    for where, row in reader:
        if fields is None:
            fields = Fields("pairs", mapping, reader, row)
            if require_label and fields.chosen["label"] is None and "label" not in fields.explicit:
                cols = ", ".join(fields.columns)
                fields.problems.append(
                    Problem(
                        "mapping",
                        "missing_column",
                        f"no label/score column (columns: {cols})",
                        str(reader.path),
                        "add a numeric 'label' column (one score per pair)",
                    )
                )
            if fields.problems:
                return LoadResult(None, fields.problems, fields.chosen, 0)
        rows += 1
        qcol, dcol, lcol = fields.column("query", row), fields.column("document", row), fields.column("label", row)
        found = fields.missing("query", where) if qcol is None else fields.missing("document", where) if dcol is None else None
        if found is None and require_label and lcol is None:
            found = fields.missing("label", where)
        found = found or labelled.see(lcol is not None, where)
        q = d = qid = did = None
        label = None
        if found is None:
            q, found = cell.text(row, qcol, where)
            d, bad = cell.text(row, dcol, where)
            found = found or bad
        for fld in ("query_id", "doc_id"):
            col = fields.column(fld, row)
            if found is None and col is not None:
                value, found = cell.ident(row, col, where)
                qid, did = (value, did) if fld == "query_id" else (qid, value)
        if found is None and (not (q or "").strip() or not (d or "").strip()):
            empty = qcol if not (q or "").strip() else dcol
            found = Problem("error", "empty_text", f"empty {'query' if empty == qcol else 'document'}", f"{where} column {empty}", "drop the row or fill it")
        if found is None and lcol is not None:
            raw = row.get(lcol)
            label = _Cell.number(raw)
            if label is None:
                found = Problem(
                    "error",
                    "bad_label",
                    f"label {raw!r} is not a finite number",
                    f"{where} column {lcol}",
                    "give every pair a numeric score (no NaN, inf or text)",
                )
        if found is None:
            key = ("ids", qid, did) if qid and did else ("text", q, d)
            if key in seen and seen[key][1] != label:
                first, other = seen[key]
                name = f"(query {qid!r}, document {did!r})" if key[0] == "ids" else "(same query and document text)"
                found = Problem(
                    "error",
                    "conflicting_pair",
                    f"pair {name} is scored twice with different labels ({label:g} here, {other:g} at {first})",
                    where,
                    "keep one score per pair: delete the wrong line",
                )
            seen.setdefault(key, (where, label))
        if out.add(found):
            if out.stop:
                break
            continue
        pairs.query.append(q)
        pairs.document.append(d)
        pairs.label.append(label)
        pairs.query_id.append(qid or "")
        pairs.doc_id.append(did or "")
    if fields is None:
        return _empty_file("pairs", reader.path)
    out.problems += fields.unused()
    if labelled.with_at is None:
        pairs.label = None
    if not any(pairs.query_id):
        pairs.query_id = None
    if not any(pairs.doc_id):
        pairs.doc_id = None
    return LoadResult(pairs, out.problems + reader.notes, fields.chosen, rows)


@dataclass
class Dataset:
    """Validated corpus, queries and (optional) qrels, loaded once."""

    corpus: Corpus
    queries: Queries
    qrels: Qrels | None
    warnings: list[str] = field(default_factory=list)  # what reading noticed: repeated qrels lines, quoted TSV fields, ...


MIN_DOCUMENTS = 2  # reranking one candidate cannot change its order: evaluation would measure nothing
LABELLED_QUERIES_ADVISED = 50
LABEL_FIX = (
    f"label {LABELLED_QUERIES_ADVISED}+ queries: a qrels file with query-id, corpus-id and score columns (score > 0 = relevant,"
    " e.g. `query-id<TAB>corpus-id<TAB>score` lines), then pass --qrels FILE (a recipe: data.qrels)"
)


def workflow_problems(corpus: Corpus, queries: Queries, qrels: Qrels | None, *, qrels_path: str | Path | None = None) -> list[Problem]:
    """What keeps valid data from the whole workflow (mine → score → train → evaluate), found before any compute.

    `train` chooses its checkpoint on labelled queries and `evaluate` measures on them: data without a
    positive label goes no further than `score`, so it is refused up front (severity "labels").
    """
    problems: list[Problem] = []
    if 0 < len(corpus) < MIN_DOCUMENTS:
        problems.append(
            Problem(
                "error",
                "corpus_too_small",
                f"the corpus has {len(corpus)} document: a reranker reorders candidates, and one candidate per query has no order to change",
                corpus.path,
                f"give the whole collection the first stage searches (at least {MIN_DOCUMENTS} documents; 100+ for a meaningful evaluation)",
            )
        )
    distinct = len({normalise_query(t) for t in queries.texts.values()})
    if 0 < distinct < 2:
        problems.append(
            Problem(
                "error",
                "too_few_queries",
                f"the queries file has {distinct} distinct query: the split needs one to hold out and one to train on",
                queries.path,
                "add queries (100+ to train on)",
            )
        )
    if qrels is None:
        problems.append(
            Problem(
                "labels",
                "no_labels",
                "no qrels: `mine` and `score` would run, but `train` chooses its checkpoint on labelled queries and `evaluate` measures on them, so both would fail",
                queries.path,
                LABEL_FIX,
            )
        )
    elif not any(qrels.positives(q) for q in queries.texts):
        problems.append(
            Problem(
                "labels",
                "no_positives",
                "no query has a positive label (every grade is 0): `train` chooses its checkpoint on queries with a relevant document and `evaluate` measures on them",
                str(qrels_path or qrels.path),
                LABEL_FIX,
            )
        )
    return problems


def load_dataset(corpus, queries, qrels=None, *, mapping: ColumnMapping | None = None, max_chars: int = DEFAULT_MAX_DOC_CHARS) -> Dataset:
    """Load and validate everything, raising the first problem as one clear error (exit 5).

    The same checks as `inspect`: data it calls READY loads here, and nothing else does.
    """
    mapping = mapping or ColumnMapping()
    loaded = [load_corpus(corpus, mapping, max_chars=max_chars), load_queries(queries, mapping, max_chars=max_chars)]
    c, q = (x.require() for x in loaded)
    if qrels:
        loaded.append(load_qrels(qrels, mapping, corpus=c, queries=q))
    r = loaded[2].require() if qrels else None
    if not len(c):
        raise invalid("the corpus is empty", where=str(corpus), fix="give at least one document")
    if not len(q):
        raise invalid("the queries file is empty", where=str(queries), fix="give at least one query")
    for problem in workflow_problems(c, q, r, qrels_path=qrels):
        if problem.severity != "warning":
            raise problem.to_error()
    return Dataset(c, q, r, [p.line() for x in loaded for p in x.warnings])


# ---------------------------------------------------------------------------------------------
# Splitting queries


def normalise_query(text: str) -> str:
    return " ".join(text.lower().split())


class Split(BaseModel):
    """Train / dev / held-out query ids, seeded and recorded in the run folder.

    `dev` queries come out of the training side: never trained on, they choose the checkpoint and the
    fusion weight, so the held-out queries stay untouched until `evaluate`.
    """

    seed: int
    heldout_fraction: float | None
    train: list[str]
    heldout: list[str]
    dev: list[str] = []


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
            raise invalid(
                f"{len(unknown)} held-out query ids are not in the queries file (first: {unknown[0]!r})", fix="list ids from the queries file, one per line"
            )
        held = set(heldout_ids)
        groups: dict[str, list[str]] = defaultdict(list)
        for qid, text in queries.texts.items():
            groups[normalise_query(text)].append(qid)
        for members in groups.values():  # a text seen on both sides goes to held-out entirely
            if held.intersection(members):
                held.update(members)
        if qrels is not None and not any(qrels.positives(q) for q in held):
            raise invalid(
                f"none of the {len(held)} held-out queries has a positive label: `train` and `evaluate` would have nothing to measure",
                fix="list ids of queries with a relevant document (grade > 0) in the qrels, or drop --heldout-queries to let the split choose",
            )
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
            raise invalid(
                f"held-out query {qid!r} has the same text as a training query", fix="deduplicate queries or let the split choose (--heldout FRACTION)"
            )
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
