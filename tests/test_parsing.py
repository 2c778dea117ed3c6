"""Issue 12, parts 3, 4 (recipes) and 6: parsing that cannot silently mislead, late failures refused
early, recipes bounded, and every printed fix followed until the command succeeds.

Oracles are outside our code wherever one exists: hand-written files with known counts and line
numbers, Python's `csv` module (strict CSV; QUOTE_NONE for MS MARCO-style TSV), PyYAML's own
`safe_load`, `iconv`/`bash` running the printed commands, and the unfixed code under a memory limit.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_cli, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skill.data import LABEL_FIX, ColumnMapping, load_corpus, load_pairs, load_qrels, load_queries
from skill.errors import SkillError

# A small domain every command accepts: 12 documents, 6 labelled queries (hand-written, counts known).
DOCS = [
    {"_id": "d1", "title": "Sourdough", "text": "Sourdough bread rises with a wild yeast starter."},
    {"_id": "d2", "text": "Rye bread is dense, dark and sour."},
    {"_id": "d3", "text": "Croissants are laminated with cold butter."},
    {"_id": "d4", "text": "Baguettes need a very hot oven and steam."},
    {"_id": "d5", "text": "Focaccia is an olive oil flatbread from Liguria."},
    {"_id": "d6", "text": "Bagels are boiled before they are baked."},
    {"_id": "d7", "text": "Brioche dough is enriched with eggs and butter."},
    {"_id": "d8", "text": "Pretzels are dipped in lye for their brown crust."},
    {"_id": "d9", "text": "Pita puffs up in the oven and forms a pocket."},
    {"_id": "d10", "text": "Ciabatta has large holes from a wet dough."},
    {"_id": "d11", "text": "Naan is baked on the wall of a tandoor."},
    {"_id": "d12", "text": "Challah is a braided bread for the sabbath."},
]
QUERIES = [
    {"_id": "q1", "text": "how does sourdough rise"},
    {"_id": "q2", "text": "why is rye bread dark"},
    {"_id": "q3", "text": "butter in croissants"},
    {"_id": "q4", "text": "steam for baguettes"},
    {"_id": "q5", "text": "why are bagels boiled"},
    {"_id": "q6", "text": "lye on pretzels"},
]
QRELS_TSV = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t2\nq4\td4\t1\nq5\td6\t1\nq6\td8\t1\n"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _domain(t: Path, *, qrels: str | None = QRELS_TSV) -> dict[str, Path]:
    files = {"corpus": write_jsonl(t / "corpus.jsonl", DOCS), "queries": write_jsonl(t / "queries.jsonl", QUERIES)}
    if qrels is not None:
        files["qrels"] = t / "qrels.tsv"
        files["qrels"].write_text(qrels, encoding="utf-8")
    return files


def _args(files: dict[str, Path]) -> list:
    return [x for kind in ("corpus", "queries", "qrels") if kind in files for x in (f"--{kind}", files[kind])]


def _inspect(cli, files: dict[str, Path], *extra) -> tuple[int, dict]:
    proc = cli("inspect", *_args(files), *extra, "--json")
    return proc.returncode, json.loads(proc.stdout)


def _mine(cli, files: dict[str, Path], run: Path, *extra) -> tuple[int, dict]:
    proc = cli("mine", "--run", run, "--retriever", "bm25", "--train-top-k", "4", "--eval-top-k", "4", *_args(files), *extra, "--json")
    return proc.returncode, json.loads(proc.stdout)


def _line(payload: dict) -> str:
    err = payload["errors"][0]
    return f"{err['where']}: {err['message']} — fix: {err['fix']}"


def _refused_alike(cli, files: dict[str, Path], t: Path, expect: str) -> dict:
    """`inspect` is not READY and `mine` refuses with the same line, writing nothing; returns inspect's first error."""
    before = _snapshot(t)
    code, report = _inspect(cli, files)
    assert code == 5 and report["metrics"]["status"] != "READY", report
    assert expect in _line(report), _line(report)
    code, mined = _mine(cli, files, t / "run")
    assert code == 5 and mined["errors"][0]["message"] == report["errors"][0]["message"] and mined["errors"][0]["fix"] == report["errors"][0]["fix"]
    assert _snapshot(t) == before and not (t / "run").exists()
    return report["errors"][0]


def _ready(cli, files: dict[str, Path], *extra) -> dict:
    code, report = _inspect(cli, files, *extra)
    assert code == 0 and report["metrics"]["status"] == "READY", report["errors"]
    return report


# --------------------------------------------------------------------------------------------- optional fields, row by row


def test_qrels_score_missing_in_the_first_row_is_an_error_naming_both_lines(cli, tmp_path):
    """The issue's case: before, every later grade loaded as 1.0 and judged non-relevant documents became positives."""
    files = _domain(tmp_path, qrels=None)
    rows = [{"query-id": "q1", "corpus-id": "d1"}, {"query-id": "q1", "corpus-id": "d2", "score": 0}, {"query-id": "q2", "corpus-id": "d2", "score": 1}]
    files["qrels"] = write_jsonl(tmp_path / "qrels.jsonl", rows)
    err = _refused_alike(cli, files, tmp_path, "qrels.jsonl:2: this row has a score but")
    assert err["message"].endswith("qrels.jsonl:1 has none")
    # the fix: every row a score (or none) → READY, and the grade-0 judgement stays a non-positive
    rows[0]["score"] = 1
    write_jsonl(files["qrels"], rows)
    report = _ready(cli, files)
    assert report["metrics"]["relevance_grades"] == [0.0, 1.0]
    assert load_qrels(files["qrels"]).require().labels == {"q1": {"d1": 1.0, "d2": 0.0}, "q2": {"d2": 1.0}}


def test_qrels_score_missing_in_a_later_row_names_both_lines(cli, tmp_path):
    files = _domain(tmp_path, qrels=None)
    rows = [{"query-id": "q1", "corpus-id": "d1", "score": 1}, {"query-id": "q2", "corpus-id": "d2", "score": 1}, {"query-id": "q3", "corpus-id": "d3"}]
    files["qrels"] = write_jsonl(tmp_path / "qrels.jsonl", rows)
    err = _refused_alike(cli, files, tmp_path, "qrels.jsonl:3: this row has no score but")
    assert err["message"].endswith("qrels.jsonl:1 has one")
    del rows[0]["score"], rows[1]["score"]  # the fix's other branch: no row has a score → binary qrels
    write_jsonl(files["qrels"], rows)
    assert _ready(cli, files)["metrics"]["relevance_grades"] == [1.0]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "csv", "parquet"])
def test_qrels_without_a_score_column_grade_every_row_one(cli, tmp_path, fmt):
    """Binary qrels (TREC/BEIR convention: listed = relevant): every row is grade 1."""
    files = _domain(tmp_path, qrels=None)
    rows = [{"query-id": q, "corpus-id": d} for q, d in [("q1", "d1"), ("q2", "d2"), ("q3", "d3")]]
    path = tmp_path / f"qrels.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text("".join(sep.join(r) + "\n" for r in [["query-id", "corpus-id"], *[list(r.values()) for r in rows]]), encoding="utf-8")
    files["qrels"] = path
    assert load_qrels(path).require().labels == {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}, "q3": {"d3": 1.0}}
    assert _ready(cli, files)["metrics"]["relevance_grades"] == [1.0]


def test_corpus_title_missing_in_the_first_row_keeps_every_later_title(cli, tmp_path):
    """The issue's case: before, a first row without `title` dropped every title (silently, READY)."""
    files = _domain(tmp_path)
    docs = [{"_id": "d0", "text": "Flour, water and salt."}, *DOCS, {"_id": "d13", "title": "Stollen", "text": "A fruit bread for Christmas."}]
    write_jsonl(files["corpus"], docs)
    texts = load_corpus(files["corpus"]).require().texts
    assert texts["d0"] == "Flour, water and salt." and texts["d1"] == "Sourdough\nSourdough bread rises with a wild yeast starter."
    assert texts["d13"] == "Stollen\nA fruit bread for Christmas." and texts["d2"] == "Rye bread is dense, dark and sour."
    _ready(cli, files)
    code, _ = _mine(cli, files, tmp_path / "run")
    assert code == 0
    mined = pq.read_table(tmp_path / "run" / "train_pairs.parquet").to_pylist() + pq.read_table(tmp_path / "run" / "heldout_candidates.parquet").to_pylist()
    assert any(r["doc_id"] == "d1" for r in mined) and all(r["document"].startswith("Sourdough\n") for r in mined if r["doc_id"] == "d1")


def test_mapped_optional_field_is_read_row_by_row_and_a_map_naming_nothing_is_reported(cli, tmp_path):
    files = _domain(tmp_path)
    write_jsonl(files["corpus"], [{"_id": d["_id"], "text": d["text"], **({"heading": "H" + d["_id"]} if i % 2 else {})} for i, d in enumerate(DOCS)])
    assert load_corpus(files["corpus"], ColumnMapping.parse(["corpus.title=heading"])).require().texts["d2"].startswith("Hd2\n")
    _ready(cli, files, "--map", "corpus.title=heading")
    code, report = _inspect(cli, files, "--map", "corpus.title=headline")
    assert code == 5 and report["metrics"]["status"] == "NEEDS MAPPING" and "--map corpus.title=headline names no field in any row" in _line(report)
    _ready(cli, files)  # the fix: drop the --map


def test_pairs_ids_and_labels_are_read_per_row(tmp_path):
    f = write_jsonl(
        tmp_path / "scores.jsonl",
        [{"query": "a", "document": "x", "label": 1.0}, {"query_id": "q2", "doc_id": "d2", "query": "b", "document": "y", "label": 2.0}],
    )
    pairs = load_pairs(f, require_label=True).require()
    assert pairs.query_id == ["", "q2"] and pairs.doc_id == ["", "d2"] and pairs.label == [1.0, 2.0]
    write_jsonl(f, [{"query": "a", "document": "x", "label": 1.0}, {"query": "b", "document": "y"}])
    with pytest.raises(SkillError) as info:
        load_pairs(f, require_label=True).require()
    assert info.value.where == f"{f}:2" and "no label/score field" in info.value.message
    write_jsonl(f, [{"query": "a", "document": "x"}, {"query": "b", "document": "y", "label": 0.5}])
    with pytest.raises(SkillError) as info:
        load_pairs(f).require()
    assert info.value.where == f"{f}:2" and info.value.message.endswith(f"{f}:1 has none")


_WORD = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Zs", "Cc"), blacklist_characters='"\\'), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_WORD, _WORD, st.one_of(st.none(), _WORD)), min_size=1, max_size=10, unique_by=lambda r: r[0]))
def test_property_jsonl_title_present_in_any_rows(tmp_path_factory, rows):
    """Titles omitted (key absent) in any subset of rows: each row keeps exactly its own title."""
    path = write_jsonl(tmp_path_factory.mktemp("t") / "c.jsonl", [{"_id": i, "text": t, **({"title": h} if h is not None else {})} for i, t, h in rows])
    assert load_corpus(path).require().texts == {i: f"{h}\n{t}" if h else t for i, t, h in rows}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_WORD, _WORD, st.one_of(st.none(), st.integers(0, 3))), min_size=1, max_size=10, unique_by=lambda r: (r[0], r[1])))
def test_property_jsonl_qrels_score_in_every_row_or_none(tmp_path_factory, rows):
    """All scored: the grades; none scored: grade 1; a mix: an error at the first row that differs, naming the first row of the other kind."""
    path = write_jsonl(
        tmp_path_factory.mktemp("q") / "r.jsonl", [{"query-id": q, "corpus-id": d, **({"score": g} if g is not None else {})} for q, d, g in rows]
    )
    scored = [g is not None for _, _, g in rows]
    if all(scored) or not any(scored):
        got = load_qrels(path).require().labels
        assert got == {q: {d: float(g if g is not None else 1) for qq, d, g in rows if qq == q} for q, _, _ in rows}
        return
    differs = scored.index(not scored[0]) + 1  # 1-based line of the first row unlike line 1
    with pytest.raises(SkillError) as info:
        load_qrels(path).require()
    assert info.value.where == f"{path}:{differs}" and info.value.message.endswith(f"{path}:1 has {'one' if scored[0] else 'none'}")


# --------------------------------------------------------------------------------------------- quoting: TSV is plain text, CSV is strict


def test_tsv_quote_is_plain_text_like_ms_marco(cli, tmp_path):
    """The issue's case: `q2<TAB>"best bread` swallowed every later line (5 queries became 2, READY)."""
    text = 'id\ttext\nq1\tsourdough\nq2\t"best bread\nq3\trye bread\nq4\tbaguette steam\nq5\tbagels boiled\n'
    # Outside oracles: MS MARCO's own reading (split on tabs) and csv with QUOTE_NONE agree; default csv quoting swallows lines.
    plain = [line.split("\t") for line in text.splitlines()]
    assert list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)) == plain
    assert len(list(csv.reader(io.StringIO(text), delimiter="\t"))) < len(plain)
    files = _domain(tmp_path)
    files["queries"] = tmp_path / "queries.tsv"
    files["queries"].write_text(text, encoding="utf-8")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq3\td2\t1\nq4\td4\t1\nq5\td6\t1\n", encoding="utf-8")
    assert load_queries(files["queries"]).require().texts == dict(plain[1:])
    assert load_queries(files["queries"]).require().texts["q2"] == '"best bread'
    assert _ready(cli, files)["metrics"]["queries"] == 5
    gz = tmp_path / "queries.tsv.gz"  # the same through gzip
    gz.write_bytes(gzip.compress(text.encode()))
    assert load_queries(gz).require().texts == dict(plain[1:])


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_windows_line_endings_are_not_text(tmp_path, fmt):
    sep = "\t" if fmt == "tsv" else ","
    path = tmp_path / f"queries.{fmt}"
    path.write_bytes(("\r\n".join([f"_id{sep}text", *(f"{q['_id']}{sep}{q['text']}" for q in QUERIES)]) + "\r\n").encode())
    assert load_queries(path).require().texts == {q["_id"]: q["text"] for q in QUERIES}
    qrels = tmp_path / f"qrels.{fmt}"
    qrels.write_bytes(f"query-id{sep}corpus-id{sep}score\r\nq1{sep}d1{sep}2\r\n".encode())
    assert load_qrels(qrels).require().labels == {"q1": {"d1": 2.0}}


def test_tsv_field_wrapped_in_quotes_is_kept_with_a_warning(cli, tmp_path):
    files = _domain(tmp_path)
    files["queries"] = tmp_path / "queries.tsv"
    files["queries"].write_text(
        "_id\ttext\n"
        + "".join(f"{q['_id']}\t{q['text']}\n" for q in QUERIES[:2])
        + 'q3\t"butter in croissants"\n'
        + "".join(f"{q['_id']}\t{q['text']}\n" for q in QUERIES[3:])
    )
    report = _ready(cli, files)
    assert any("1 field(s) are wrapped in double quotes (first at" in w and "queries.tsv:4)" in w for w in report["warnings"])
    assert load_queries(files["queries"]).require().texts["q3"] == '"butter in croissants"'


@pytest.mark.parametrize(
    ("body", "line", "fields", "fixed"),
    [
        ("q2\tbread\tand butter\n", 3, 3, "q2\tbread and butter\n"),
        ('q2\t"two\nlines"\n', 4, 1, 'q2\t"two lines"\n'),
        ("q2\tbread\t\n", 3, 3, "q2\tbread\n"),
    ],
    ids=["tab_in_text", "line_break_in_quoted_text", "trailing_tab"],
)
def test_tsv_wrong_number_of_fields_names_the_line_and_the_fix_works(cli, tmp_path, body, line, fields, fixed):
    files = _domain(tmp_path)
    files["queries"] = tmp_path / "queries.tsv"
    head = "_id\ttext\nq1\thow does sourdough rise\n"
    tail = "".join(f"{q['_id']}\t{q['text']}\n" for q in QUERIES[2:])
    files["queries"].write_text(head + body + tail, encoding="utf-8")
    err = _refused_alike(cli, files, tmp_path, f"queries.tsv:{line}: row has {fields} fields, the header has 2")
    assert "no tab or line break inside a text" in err["fix"]
    files["queries"].write_text(head + fixed + tail, encoding="utf-8")
    assert _ready(cli, files)["metrics"]["queries"] == 6


def _csv_corpus(rows: list[str]) -> str:
    return (
        "_id,text\n"
        + "".join(f"{d['_id']},{d['text'].replace(',', '')}\n" for d in DOCS[:1])
        + "".join(rows)
        + "".join(f"{d['_id']},{d['text'].replace(',', '')}\n" for d in DOCS[2:])
    )


@pytest.mark.parametrize("command", ["inspect", "mine"])
def test_csv_unbalanced_quote_names_file_line_column_and_the_fix_works(cli, tmp_path, command):
    files = _domain(tmp_path)
    files["corpus"] = tmp_path / "corpus.csv"
    files["corpus"].write_text(_csv_corpus(['d2,"best bread\n']), encoding="utf-8")
    with pytest.raises(csv.Error):  # outside oracle: Python's strict CSV refuses the file too
        list(csv.reader(io.StringIO(files["corpus"].read_text()), strict=True))
    before = _snapshot(tmp_path)
    if command == "inspect":
        code, payload = _inspect(cli, files)
    else:
        code, payload = _mine(cli, files, tmp_path / "run")
    assert code == 5 and _line(payload).startswith(f"{files['corpus']}:3 column text: unbalanced quote")
    assert _snapshot(tmp_path) == before
    assert '"""best bread"' in payload["errors"][0]["fix"]  # the fix, followed literally
    files["corpus"].write_text(_csv_corpus(['d2,"""best bread"\n']), encoding="utf-8")
    _ready(cli, files)
    assert load_corpus(files["corpus"]).require().texts["d2"] == '"best bread'


def test_csv_text_after_a_closing_quote_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text(_csv_corpus(['d2,"best" bread\n']), encoding="utf-8")
    with pytest.raises(SkillError) as info:
        load_corpus(path)
    assert info.value.where == f"{path}:3 column text" and "broken CSV quoting" in info.value.message
    assert 'write a literal " inside it as ""' in info.value.fix
    path.write_text(_csv_corpus(['d2,"""best"" bread"\n']), encoding="utf-8")  # the fix: the whole field quoted, its quotes doubled
    assert load_corpus(path).require().texts["d2"] == '"best" bread'


def test_csv_multiline_quoted_field_is_one_record_and_later_lines_keep_their_numbers(cli, tmp_path):
    files = _domain(tmp_path)
    files["corpus"] = tmp_path / "corpus.csv"
    files["corpus"].write_text(_csv_corpus(['d2,"Rye bread\nis dense"\n']) + "d13,\n", encoding="utf-8")
    oracle = list(csv.reader(io.StringIO(files["corpus"].read_text())))  # Python's csv: 1 header + 13 records
    assert oracle[2] == ["d2", "Rye bread\nis dense"] and len(oracle) == 14
    with pytest.raises(SkillError) as info:
        load_corpus(files["corpus"]).require()
    assert info.value.where == f"{files['corpus']}:15 column text"  # d13 is physical line 15: the record before spans 3–4
    files["corpus"].write_text(_csv_corpus(['d2,"Rye bread\nis dense"\n']), encoding="utf-8")
    report = _ready(cli, files)
    assert load_corpus(files["corpus"]).require().texts["d2"] == "Rye bread\nis dense"
    assert any("1 record(s) span several lines (first: lines 3–4)" in w for w in report["warnings"])


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_repeated_header_column_is_an_error_at_line_one(tmp_path, fmt):
    sep = "," if fmt == "csv" else "\t"
    path = tmp_path / f"corpus.{fmt}"
    path.write_text(sep.join(["_id", "text", "text"]) + "\n" + sep.join(["d1", "a", "b"]) + "\n", encoding="utf-8")
    with pytest.raises(SkillError) as info:
        load_corpus(path).require()
    assert info.value.where == f"{path}:1" and "column 'text' appears twice" in info.value.message
    assert info.value.fix == "rename one of the two 'text' columns in the first line"
    path.write_text(sep.join(["_id", "text", "text_2"]) + "\n" + sep.join(["d1", "a", "b"]) + "\n", encoding="utf-8")
    assert load_corpus(path).require().texts == {"d1": "a"}


def test_json_key_repeated_in_one_object_is_an_error_and_the_fix_works(cli, tmp_path):
    files = _domain(tmp_path)
    lines = files["corpus"].read_text().splitlines()
    lines[2] = '{"_id": "d3", "text": "Croissants are laminated.", "text": "with cold butter"}'
    files["corpus"].write_text("\n".join(lines) + "\n")
    assert json.loads(lines[2])["text"] == "with cold butter"  # what json alone would keep, silently
    err = _refused_alike(cli, files, tmp_path, "corpus.jsonl:3: key 'text' appears twice in one object")
    assert "keep one 'text'" in err["fix"]
    lines[2] = '{"_id": "d3", "text": "Croissants are laminated with cold butter"}'
    files["corpus"].write_text("\n".join(lines) + "\n")
    _ready(cli, files)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_utf8_byte_order_mark_is_not_data(cli, tmp_path, fmt):
    files = _domain(tmp_path)
    path = tmp_path / f"queries.{fmt}"
    if fmt == "jsonl":
        body = "".join(json.dumps(q) + "\n" for q in QUERIES)
    else:
        sep = "," if fmt == "csv" else "\t"
        body = f"_id{sep}text\n" + "".join(f"{q['_id']}{sep}{q['text']}\n" for q in QUERIES)
    path.write_bytes(body.encode("utf-8-sig"))  # outside oracle: Python's own BOM codec
    files["queries"] = path
    assert load_queries(path).require().texts == {q["_id"]: q["text"] for q in QUERIES}
    _ready(cli, files)


@pytest.mark.parametrize(("encoding", "source"), [("latin-1", "latin1"), ("utf-16", "utf-16")])
def test_non_utf8_file_fix_runs_the_printed_iconv(cli, tmp_path, encoding, source):
    files = _domain(tmp_path)
    bad = tmp_path / "queries.tsv"
    bad.write_bytes(("_id\ttext\n" + "".join(f"{q['_id']}\t{q['text']}\n" for q in QUERIES[:-1]) + "q6\tbretzel à la lessive\n").encode(encoding))
    files["queries"] = bad
    err = _refused_alike(cli, files, tmp_path, "are not UTF-8")
    command = re.search(r"`(iconv [^`]+)`", err["fix"]).group(1)
    assert f"-f {source} " in command
    fixed = tmp_path / "queries-utf8.tsv"
    subprocess.run(["bash", "-c", command.replace("IN", str(bad)).replace("OUT", str(fixed))], check=True)
    files["queries"] = fixed
    _ready(cli, files)
    assert load_queries(fixed).require().texts["q6"] == "bretzel à la lessive"


@pytest.mark.parametrize(
    ("kind", "name", "content", "rows"),
    [
        ("queries", "queries.dev.tsv", "".join(f"{i}\t{q['text']}\n" for i, q in enumerate(QUERIES, start=1)), 6),
        ("corpus", "collection.tsv", "".join(f"{i}\t{d['text']}\n" for i, d in enumerate(DOCS, start=1)), 12),
        ("qrels", "qrels.dev.tsv", "".join(f"{i}\t0\t{i}\t1\n" for i in range(1, 7)), 6),
        ("qrels", "qrels.dev.tsv.gz", "".join(f"{i}\t0\t{i}\t1\n" for i in range(1, 7)), 6),
    ],
    ids=["queries", "collection", "trec_qrels", "trec_qrels_gz"],
)
def test_headerless_ms_marco_file_fix_runs_the_printed_command(cli, tmp_path, kind, name, content, rows):
    """MS MARCO's collection.tsv / queries.*.tsv and TREC qrels have no header line; integer ids as text."""
    files = {
        "corpus": write_jsonl(tmp_path / "corpus.jsonl", [{"_id": str(i), "text": d["text"]} for i, d in enumerate(DOCS, start=1)]),
        "queries": write_jsonl(tmp_path / "queries.jsonl", [{"_id": i, "text": q["text"]} for i, q in enumerate(QUERIES, start=1)]),  # integer ids
        "qrels": tmp_path / "qrels.tsv",
    }
    files["qrels"].write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{i}\t{i}\t1\n" for i in range(1, 7)), encoding="utf-8")
    path = tmp_path / name
    path.write_bytes(gzip.compress(content.encode()) if name.endswith(".gz") else content.encode())
    files[kind] = path
    code, report = _inspect(cli, files)
    assert code == 5 and report["metrics"]["status"] == "NEEDS MAPPING"
    command = re.search(r"add one: `(.+)` and pass (\S+)$", report["errors"][0]["fix"])
    subprocess.run(["bash", "-c", command.group(1)], check=True, cwd=tmp_path)
    files[kind] = tmp_path / command.group(2)
    report = _ready(cli, files)
    assert report["metrics"][{"queries": "queries", "corpus": "documents", "qrels": "qrels"}[kind]] == rows


# --------------------------------------------------------------------------------------------- duplicate qrels


def test_conflicting_duplicate_qrels_name_both_lines_and_the_fix_works(cli, tmp_path):
    files = _domain(tmp_path, qrels=QRELS_TSV + "q1\td2\t1\nq3\td3\t0\n")
    err = _refused_alike(cli, files, tmp_path, "qrels.tsv:9: query 'q3', document 'd3' is graded 0 here and 2 at")
    assert err["message"].endswith("qrels.tsv:4")
    files["qrels"].write_text(QRELS_TSV + "q1\td2\t1\n", encoding="utf-8")  # the fix: delete the wrong line
    assert _ready(cli, files)["metrics"]["qrels"] == 7


def test_identical_duplicate_qrels_are_read_once_with_a_warning(cli, tmp_path):
    files = _domain(tmp_path, qrels=QRELS_TSV + "q2\td2\t1\n")
    report = _ready(cli, files)
    assert report["metrics"]["qrels"] == 6
    assert any("1 line(s) repeat an earlier (query, document) pair with the same grade" in w and "qrels.tsv:8 repeats" in w for w in report["warnings"])
    code, mined = _mine(cli, files, tmp_path / "run")  # mine says the same
    assert code == 0 and any("qrels.tsv:8 repeats" in w for w in mined["warnings"])


def test_conflicting_duplicate_qrels_in_parquet_name_both_rows(tmp_path):
    path = tmp_path / "qrels.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"query-id": "q1", "corpus-id": "d1", "score": 1},
                {"query-id": "q2", "corpus-id": "d2", "score": 1},
                {"query-id": "q1", "corpus-id": "d1", "score": 0},
            ]
        ),
        path,
    )
    with pytest.raises(SkillError) as info:
        load_qrels(path).require()
    assert info.value.where == f"{path}#row3" and info.value.message.endswith(f"at {path}#row1")


# --------------------------------------------------------------------------------------------- types


@pytest.mark.parametrize("value", [42, 4.5, True, ["a", "b"], {"a": 1}], ids=["int", "float", "bool", "list", "dict"])
def test_text_that_is_not_a_string_is_an_error_and_the_fix_works(cli, tmp_path, value):
    files = _domain(tmp_path)
    docs = [dict(d) for d in DOCS]
    docs[3]["text"] = value
    write_jsonl(files["corpus"], docs)
    err = _refused_alike(
        cli, files, tmp_path, f"corpus.jsonl:4 column text: 'text' is a{'n' if type(value).__name__[0] in 'aeiou' else ''} {type(value).__name__}"
    )
    assert "as a JSON string" in err["fix"]
    docs[3]["text"] = json.dumps(value)  # the fix: the value written as a string
    write_jsonl(files["corpus"], docs)
    _ready(cli, files)


def test_integer_ids_are_read_as_their_decimal_string(cli, tmp_path):
    files = {
        "corpus": write_jsonl(tmp_path / "corpus.jsonl", [{"_id": i, "text": d["text"]} for i, d in enumerate(DOCS, start=100)]),
        "queries": write_jsonl(tmp_path / "queries.jsonl", [{"_id": i, "text": q["text"]} for i, q in enumerate(QUERIES)]),
        "qrels": write_jsonl(tmp_path / "qrels.jsonl", [{"query-id": i, "corpus-id": str(100 + i), "score": 1} for i in range(6)]),
    }
    assert _ready(cli, files)["metrics"]["queries_with_positives"] == 6
    assert set(load_corpus(files["corpus"]).require().texts) == {str(i) for i in range(100, 112)}


@pytest.mark.parametrize("value", [1.5, True, None, ["d1"]], ids=["float", "bool", "null", "list"])
def test_an_id_that_is_not_a_string_or_integer_is_an_error(tmp_path, value):
    path = write_jsonl(tmp_path / "corpus.jsonl", [DOCS[0], {"_id": value, "text": "x"}])
    problem = load_corpus(path).problems[0]
    assert problem.where == f"{path}:2 column _id" and (problem.kind == "missing_id" if value is None else problem.kind == "bad_id")
    write_jsonl(path, [DOCS[0], {"_id": "d2", "text": "x"}])  # the fix: a string id
    assert set(load_corpus(path).require().texts) == {"d1", "d2"}


def test_parquet_text_column_of_numbers_is_an_error_and_the_printed_pandas_fix_works(cli, tmp_path):
    import pandas as pd

    files = _domain(tmp_path)
    df = pd.DataFrame({"_id": [d["_id"] for d in DOCS], "text": list(range(len(DOCS)))})
    files["corpus"] = tmp_path / "corpus.parquet"
    df.to_parquet(files["corpus"])
    err = _refused_alike(cli, files, tmp_path, "corpus.parquet#row1 column text: 'text' is an int (0), not text")
    assert "df['text'] = df['text'].astype(str)" in err["fix"]
    df["text"] = df["text"].astype(str)  # the fix, as printed
    df.to_parquet(files["corpus"])
    _ready(cli, files)


def test_datasets_folder_with_a_non_text_column_is_an_error(tmp_path):
    import datasets

    folder = tmp_path / "corpus_ds"
    datasets.Dataset.from_list([{"_id": "d1", "text": "ok", "title": 3}]).save_to_disk(str(folder))
    with pytest.raises(SkillError) as info:
        load_corpus(folder).require()
    assert info.value.where == f"{folder}#row1 column title" and "'title' is an int (3)" in info.value.message


@pytest.mark.parametrize("raw", ["true", '"high"', "null", "[1]"])
def test_qrels_grade_that_is_not_a_number_is_an_error(tmp_path, raw):
    path = tmp_path / "qrels.jsonl"
    path.write_text(f'{{"query-id": "q1", "corpus-id": "d1", "score": {raw}}}\n', encoding="utf-8")
    with pytest.raises(SkillError) as info:
        load_qrels(path).require()
    assert info.value.where == f"{path}:1 column score" and "is not a finite number" in info.value.message
    assert info.value.fix == "use integer grades (0 = not relevant, 1+ = relevant)"
    path.write_text('{"query-id": "q1", "corpus-id": "d1", "score": 1}\n', encoding="utf-8")
    assert load_qrels(path).require().labels == {"q1": {"d1": 1.0}}


# --------------------------------------------------------------------------------------------- late failures, refused up front


def test_unlabelled_data_is_not_ready_and_the_label_fix_makes_the_whole_workflow_accept_it(cli, stdlib_domain, tiny_base, tiny_reranker, tmp_path):
    """The issue's case: no qrels → inspect READY, mine and score ok, then train exit 6 and evaluate exit 5."""
    files = {"corpus": stdlib_domain["corpus"], "queries": stdlib_domain["queries"]}
    code, report = _inspect(cli, files)
    assert code == 5 and report["metrics"]["status"] == "NEEDS LABELS" and report["errors"][0]["fix"] == LABEL_FIX
    assert "`train` chooses its checkpoint on labelled queries" in report["errors"][0]["message"]
    before = _snapshot(tmp_path)
    code, mined = _mine(cli, files, tmp_path / "run")
    assert code == 5 and mined["errors"][0]["message"] == report["errors"][0]["message"] and _snapshot(tmp_path) == before
    # The fix: label 50+ queries (query-id, corpus-id, score), pass --qrels. (Here: the first 50 of the domain's own labels.)
    labelled = stdlib_domain["qrels"].read_text().splitlines()[:51]
    assert labelled[0].split("\t") == ["query-id", "corpus-id", "score"]
    files["qrels"] = tmp_path / "qrels.tsv"
    files["qrels"].write_text("\n".join(labelled) + "\n", encoding="utf-8")
    assert _ready(cli, files)["metrics"]["queries_with_positives"] == 50
    run = tmp_path / "run"
    code, mined = _mine(cli, files, run)
    assert code == 0, mined["errors"]
    for command in (
        ["score", "--run", run, "--teacher", tiny_reranker, "--max-length", "64"],
        [
            "train",
            "--run",
            run,
            "--base",
            tiny_base,
            "--max-steps",
            "2",
            "--max-seq-length",
            "64",
            "--per-device-batch",
            "8",
            "--global-batch",
            "8",
            "--eval-queries",
            "4",
        ],
        ["evaluate", "--run", run, "--resamples", "100", "--skip-base"],
    ):
        proc = cli(*command, "--json")
        assert proc.returncode == 0, (command[0], proc.stdout[-1500:], proc.stderr[-1500:])


def test_qrels_without_a_positive_need_labels(cli, tmp_path):
    files = _domain(tmp_path, qrels=QRELS_TSV.replace("\t1\n", "\t0\n").replace("\t2\n", "\t0\n"))
    err = _refused_alike(cli, files, tmp_path, "no query has a positive label (every grade is 0)")
    assert err["fix"] == LABEL_FIX
    files["qrels"].write_text(QRELS_TSV, encoding="utf-8")
    _ready(cli, files)


def test_one_document_corpus_is_refused_and_the_fix_works(cli, tmp_path):
    files = _domain(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n")
    write_jsonl(files["corpus"], DOCS[:1])
    err = _refused_alike(cli, files, tmp_path, "the corpus has 1 document: a reranker reorders candidates")
    assert "at least 2 documents" in err["fix"]
    write_jsonl(files["corpus"], DOCS)  # the fix: the whole collection
    _ready(cli, files)
    assert _mine(cli, files, tmp_path / "run")[0] == 0


def test_one_distinct_query_is_refused(cli, tmp_path):
    files = _domain(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n")
    write_jsonl(files["queries"], [{"_id": "q1", "text": "Sourdough rise"}, {"_id": "q2", "text": "sourdough  RISE"}])
    _refused_alike(cli, files, tmp_path, "the queries file has 1 distinct query")


def test_eval_top_k_one_is_refused_with_a_fix_that_works(cli, tmp_path):
    files = _domain(tmp_path)
    before = _snapshot(tmp_path)
    proc = cli("mine", "--run", tmp_path / "run", "--retriever", "bm25", *_args(files), "--eval-top-k", "1", "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 2 and payload["errors"][0]["message"].startswith("--eval-top-k: 1 candidate per held-out query")
    assert payload["errors"][0]["fix"] == "pass --eval-top-k 2 or more (default 100)" and _snapshot(tmp_path) == before
    assert _mine(cli, files, tmp_path / "run", "--eval-top-k", "2")[0] == 0  # the fix (the later flag wins)


def test_eval_top_k_one_in_a_recipe_is_refused_and_the_set_fix_works(tmp_path):
    from skill.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: runs/x\nstages: [mine]\ndata: {corpus: c.jsonl, queries: q.jsonl}\nmine: {eval_top_k: 1}\n")
    with pytest.raises(SkillError) as info:
        load_recipe(recipe)
    assert info.value.code == 5 and info.value.message.startswith("mine.eval_top_k: 1 candidate") and "--set mine.eval_top_k=" in info.value.fix
    assert load_recipe(recipe, ["mine.eval_top_k=2"]).mine.eval_top_k == 2


@pytest.mark.parametrize("command", ["inspect", "mine"])
def test_oversized_document_fix_names_a_flag_the_command_has(cli, tmp_path, command):
    files = _domain(tmp_path)
    write_jsonl(files["corpus"], [*DOCS, {"_id": "big", "text": "crumb " * 200}])
    limit = ["--max-doc-chars", "1000"]
    code, payload = _inspect(cli, files, *limit) if command == "inspect" else _mine(cli, files, tmp_path / "run", *limit)
    assert code == 5 and "'big' is 1,200 characters (limit 1,000)" in payload["errors"][0]["message"]
    assert "raise --max-doc-chars" in payload["errors"][0]["fix"]
    raised = ["--max-doc-chars", "1200"]  # the fix
    code, payload = _inspect(cli, files, *raised) if command == "inspect" else _mine(cli, files, tmp_path / "run", *raised)
    assert code == 0, payload["errors"]


def test_heldout_list_without_a_labelled_query_is_refused_before_retrieval(cli, tmp_path):
    files = _domain(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    (tmp_path / "held.txt").write_text("q5\nq6\n")
    before = _snapshot(tmp_path)
    code, payload = _mine(cli, files, tmp_path / "run", "--heldout-queries", tmp_path / "held.txt")
    assert code == 5 and "none of the 2 held-out queries has a positive label" in payload["errors"][0]["message"] and _snapshot(tmp_path) == before
    (tmp_path / "held.txt").write_text("q1\nq5\n")  # the fix: list a labelled query
    assert _mine(cli, files, tmp_path / "run", "--heldout-queries", tmp_path / "held.txt")[0] == 0


def test_scores_file_mapping_fix_renames_the_column(cli, tmp_path):
    """`score` has no --map: its fix for a scores file names the column to rename, and renaming it works."""
    files = _domain(tmp_path)
    run = tmp_path / "run"
    assert _mine(cli, files, run)[0] == 0
    rows = pq.read_table(run / "train_pairs.parquet").to_pylist() + pq.read_table(run / "heldout_candidates.parquet").to_pylist()
    rows += pq.read_table(run / "dev_candidates.parquet").to_pylist()
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"question": r["query"], "document": r["document"], "label": float(r["rank"])} for r in rows])
    proc = cli("score", "--run", run, "--teacher", scores, "--teacher-type", "file", "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 5 and payload["errors"][0]["fix"] == "rename the column 'question' to 'query'"
    write_jsonl(scores, [{"query": r["query"], "document": r["document"], "label": float(r["rank"])} for r in rows])
    proc = cli("score", "--run", run, "--teacher", scores, "--teacher-type", "file", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_scores_file_conflicting_labels_by_text_name_both_lines(cli, tmp_path):
    files = _domain(tmp_path)
    run = tmp_path / "run"
    assert _mine(cli, files, run)[0] == 0
    scores = write_jsonl(
        tmp_path / "scores.jsonl",
        [{"query": "a", "document": "b", "label": 1.0}, {"query": "c", "document": "d", "label": 1.0}, {"query": "a", "document": "b", "label": 3.0}],
    )
    proc = cli("score", "--run", run, "--teacher", scores, "--teacher-type", "file", "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 5 and payload["errors"][0]["where"] == f"{scores}:3" and payload["errors"][0]["message"].endswith(f"(3 here, 1 at {scores}:1)")
    assert payload["errors"][0]["fix"] == "keep one score per pair: delete the wrong line"
    rows = pq.read_table(run / "train_pairs.parquet").to_pylist() + pq.read_table(run / "heldout_candidates.parquet").to_pylist()
    rows += pq.read_table(run / "dev_candidates.parquet").to_pylist()
    good = [{"query": r["query"], "document": r["document"], "label": float(r["rank"])} for r in rows]
    write_jsonl(scores, [*good, good[0]])  # the fix applied: the conflicting line deleted (an identical repeat stays harmless)
    proc = cli("score", "--run", run, "--teacher", scores, "--teacher-type", "file", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_flags_named_in_data_fixes_exist_on_the_commands():
    """Every `--flag` that a data error's fix names is a flag of `inspect` or `mine` (the commands that load data)."""
    import ast

    helps = run_cli("inspect", "--help").stdout + run_cli("mine", "--help").stdout
    for module in ("data.py", "preflight.py"):
        tree = ast.parse((REPO / "skill" / module).read_text())
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        flags = {f for s in strings for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", s)}
        assert flags, module
        for flag in flags:
            assert re.search(rf"{flag}\b", helps), f"{module} names {flag}, which neither inspect nor mine has"


# --------------------------------------------------------------------------------------------- recipes: bounded size and alias expansion

BOMB = "run: runs/bomb\nstages: [mine]\n" + 'lol: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
for _prev, _name in zip("abcdefgh", "bcdefghi", strict=True):
    BOMB += f"{_name}: &{_name} [" + ", ".join([f"*{_prev}"] * 9) + "]\n"
BOMB += "mine: {retriever: bm25, extra: *i}\n"

_LIMITED = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the unfixed code fails here with MemoryError
sys.path.insert(0, {repo!r})
from skill.errors import SkillError
from skill.recipe import load_recipe
t = time.process_time()  # CPU seconds of this process: what an expanding alias burns, whatever else the machine runs
try:
    load_recipe({path!r}, {overrides!r})
    print(json.dumps({{"code": 0}}))
except SkillError as err:
    print(json.dumps({{"code": int(err.code), "message": err.message, "seconds": time.process_time() - t}}))
"""


def _limited_load(path: Path, overrides: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED.format(repo=str(REPO), path=str(path), overrides=list(overrides))], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_yaml_alias_bomb_is_refused_fast_under_a_memory_limit(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB.encode()) < 700  # the was 601 bytes; 9**9 = 387,420,489 strings once expanded
    got = _limited_load(bomb)
    assert got["code"] == 5 and "aliases" in got["message"] and got["seconds"] < 0.5, got
    # The CLI, in its own process under the same 1 GiB limit: exit 5 and one line.
    proc = subprocess.run(
        [sys.executable, "-c", f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); sys.argv = ['reranker-skill', 'run', {str(bomb)!r}]; runpy.run_module('skill', run_name='__main__')"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 5 and "aliases (*name)" in proc.stdout + proc.stderr and "MemoryError" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("content", "overrides", "expect"),
    [
        ("run: x\na: &a [*a]\n", (), "aliases"),  # a recursive alias expands without end
        ("run: x\nmine: " + "[" * 5000 + "]" * 5000 + "\n", (), "nested more than 32 levels deep"),
        ("run: x\n" + "# padding\n" * 2000, (), "bytes (limit 16,384)"),
        (
            "run: runs/x\n",
            (
                "mine.extra=[&a [l, l, l, l, l, l, l, l, l], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], &c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]]",
            ),
            "aliases",
        ),
    ],
    ids=["recursive_alias", "deep_nesting", "oversized_file", "bomb_in_set"],
)
def test_hostile_recipes_are_refused_in_well_under_a_second(tmp_path, content, overrides, expect):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    got = _limited_load(recipe, overrides)
    assert got["code"] == 5 and expect in got["message"] and got["seconds"] < 1.0, got


def test_too_many_aliases_fix_writing_them_out_loads_what_pyyaml_reads(tmp_path):
    import yaml

    from skill.recipe import MAX_YAML_ALIASES, load_recipe

    aliased = "run: runs/x\nstages: [evaluate]\nt: &t org/reranker\nevaluate:\n  models: [" + ", ".join(["*t"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(aliased)
    with pytest.raises(SkillError) as info:
        load_recipe(recipe)
    assert "write the recipe out without nested aliases" in info.value.fix
    expected = yaml.safe_load(aliased)  # outside oracle: what the aliases mean
    written_out = {"run": expected["run"], "stages": expected["stages"], "evaluate": {"models": expected["evaluate"]["models"]}}
    recipe.write_text(yaml.safe_dump(written_out))  # the fix: the same values, no aliases
    assert load_recipe(recipe).evaluate.models == ["org/reranker"] * (MAX_YAML_ALIASES + 1)


def test_recipes_with_ordinary_anchors_load_as_pyyaml_reads_them(tmp_path):
    """Aliases within bounds (a shared teacher, a merge key) still work: the result equals PyYAML's own safe_load."""
    import yaml

    from skill.config import RunConfig
    from skill.recipe import load_recipe, safe_yaml

    text = textwrap.dedent(
        """\
        run: runs/x
        data: {corpus: c.jsonl, queries: q.jsonl, qrels: r.tsv}
        defaults: &mine {retriever: bm25, train_top_k: 10}
        mine:
          <<: *mine
          eval_top_k: 50
        score:
          teachers:
            - &t {model: org/teacher, type: cross-encoder}
            - {<<: *t, model: org/other}
        """
    )
    expected = yaml.safe_load(text)
    assert safe_yaml(text, where="t") == expected
    expected.pop("defaults")
    text_without_defaults = text.replace("defaults: &mine {retriever: bm25, train_top_k: 10}\n", "").replace("<<: *mine", "retriever: bm25\n  train_top_k: 10")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text_without_defaults)
    assert load_recipe(recipe) == RunConfig.model_validate(expected)
    for bundled in sorted((REPO / "recipes").glob("*.yaml")):
        assert safe_yaml(bundled.read_text(), where=str(bundled)) == yaml.safe_load(bundled.read_text()), bundled


def test_oversized_recipe_fix_start_from_a_bundled_recipe_works(tmp_path):
    from skill.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes" / "cpu-small.yaml").read_text() + "# notes\n" * 3000)
    with pytest.raises(SkillError) as info:
        load_recipe(recipe)
    assert "start from one of the bundled recipes" in info.value.fix
    recipe.write_text((REPO / "recipes" / "cpu-small.yaml").read_text())
    assert load_recipe(recipe, ["data.corpus=c.jsonl", "data.queries=q.jsonl"]).run
