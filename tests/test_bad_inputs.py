"""Issue 7, reliability: bad input, table-driven, through every command that reads files.

Each case runs the real CLI in a subprocess and must give one clear line (no traceback), a
fixed exit code, and leave every file under the test folder exactly as it was (nothing
half-written). Property-based tests: loaders round-trip random rows through JSONL/CSV/TSV/
Parquet, random garbage raises nothing but SkillError, and the split keeps its invariants.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_jsonl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skill.data import Qrels, Queries, check_no_leak, load_corpus, load_pairs, load_qrels, load_queries, normalise_query, split_queries
from skill.errors import SkillError

GOOD_CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
    {"_id": "d2", "text": "Berlin is the capital of Germany."},
    {"_id": "d3", "text": "Bread is baked."},
]
GOOD_QUERIES = [{"_id": "q1", "text": "capital of France"}, {"_id": "q2", "text": "capital of Germany"}, {"_id": "q3", "text": "baking bread"}]
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def _expect_one_clear_line(proc, code: int, expect: str, *, report: bool = False) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out[-2000:]}"
    assert "Traceback" not in out and "unexpected " not in out, out[-2000:]
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("warning: ")]
    hits = [line for line in lines if expect in line]
    assert hits, f"{expect!r} not in:\n{out[-2000:]}"
    assert "fix: " in hits[0]
    if not report:  # `inspect` prints a report with the problem lines; every other command prints exactly one line
        assert len(lines) == 1, out[-2000:]


# --------------------------------------------------------------------------------------------- data files
# (file kind, file name, writer, exit code, text the line must hold). Each runs through `inspect` and `mine`.


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _rows(rows: list[dict]) -> Callable[[Path], None]:
    return lambda p: write_jsonl(p, rows)


def _parquet(rows: list[dict] | None, *, cut: bool = False) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        table = pa.table({"_id": pa.array([], pa.string()), "text": pa.array([], pa.string())}) if rows is None else pa.Table.from_pylist(rows)
        pq.write_table(table, p)
        if cut:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return write


def _tsv(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text, encoding="utf-8")


def _folder(p: Path) -> None:
    p.mkdir()
    (p / "notes.txt").write_text("not a dataset")


DATA_CASES: dict[str, tuple[str, str, Callable[[Path], None], int, str]] = {
    "broken_json": ("corpus", "corpus.jsonl", _bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "unterminated\n'), 5, "corpus.jsonl:2: broken JSON"),
    "json_not_an_object": ("corpus", "corpus.jsonl", _bytes(b'["d1", "a list"]\n'), 5, "not a JSON object"),
    "json_nested_too_deeply": ("corpus", "corpus.jsonl", _bytes(b"[" * 100_000 + b"\n"), 5, "nested too deeply"),
    "broken_gzip": ("corpus", "corpus.jsonl.gz", _bytes(b"this is not gzip"), 5, "not a readable gzip file"),
    "broken_csv_row": ("corpus", "corpus.csv", _bytes(b"_id,text\nd1,hello\nd2,a,b\n"), 5, "corpus.csv:3: row has 3 fields"),
    "broken_parquet": ("corpus", "corpus.parquet", _bytes(b"PAR1 but not really a parquet file"), 5, "not a readable Parquet file"),
    "truncated_parquet": ("corpus", "corpus.parquet", _parquet(GOOD_CORPUS, cut=True), 5, "not a readable Parquet file"),
    "wrong_columns": ("corpus", "corpus.jsonl", _rows([{"pid": "d1", "contents": "x"}]), 5, "--map corpus.id=pid"),
    "wrong_query_columns": ("queries", "queries.jsonl", _rows([{"qid": "q1", "question": "x"}]), 5, "--map queries.id=qid"),
    "empty_text": ("corpus", "corpus.jsonl", _rows([*GOOD_CORPUS, {"_id": "d4", "text": ""}]), 5, "document 'd4' has empty text"),
    "whitespace_text": ("corpus", "corpus.jsonl", _rows([*GOOD_CORPUS, {"_id": "d4", "text": " \t\n  "}]), 5, "document 'd4' has empty text"),
    "whitespace_query": ("queries", "queries.jsonl", _rows([*GOOD_QUERIES, {"_id": "q4", "text": "   "}]), 5, "query 'q4' has empty text"),
    "null_text": ("corpus", "corpus.jsonl", _bytes(b'{"_id": "d1", "text": null}\n'), 5, "document 'd1' has empty text"),
    "whitespace_id": ("corpus", "corpus.jsonl", _rows([{"_id": "  ", "text": "x"}]), 5, "empty '_id'"),
    "duplicate_doc_ids": ("corpus", "corpus.jsonl", _rows([*GOOD_CORPUS, {"_id": "d2", "text": "again"}]), 5, "duplicate id 'd2'"),
    "duplicate_query_ids": ("queries", "queries.jsonl", _rows([*GOOD_QUERIES, {"_id": "q1", "text": "again"}]), 5, "duplicate id 'q1'"),
    "qrels_unknown_doc": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q1\td99\t1\n"), 5, "document id 'd99' is not in the corpus"),
    "qrels_unknown_query": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q99\td1\t1\n"), 5, "query id 'q99' is not in the queries file"),
    "non_utf8_corpus": (
        "corpus",
        "corpus.jsonl",
        _bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n'),
        5,
        "corpus.jsonl:2: bytes at column",
    ),
    "non_utf8_queries_tsv": ("queries", "queries.tsv", _bytes(b"_id\ttext\nq1\tna\xefve\n"), 5, "queries.tsv:2: bytes at column"),
    "enormous_document": ("corpus", "corpus.jsonl", _rows([*GOOD_CORPUS, {"_id": "big", "text": "x" * 1_000_001}]), 5, "'big' is 1,000,001 characters"),
    "label_nan": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q1\td2\tnan\n"), 5, "relevance 'nan' is not a finite number"),
    "label_inf": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q1\td2\tinf\n"), 5, "relevance 'inf' is not a finite number"),
    "label_string": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q1\td2\thigh\n"), 5, "relevance 'high' is not a finite number"),
    "label_empty": ("qrels", "qrels.tsv", _tsv(GOOD_QRELS + "q1\td2\t \n"), 5, "is not a finite number"),
    "empty_corpus_file": ("corpus", "corpus.jsonl", _bytes(b""), 5, "the corpus file has no rows"),
    "empty_corpus_header_only": ("corpus", "corpus.csv", _bytes(b"_id,text\n"), 5, "the corpus file has no rows"),
    "empty_corpus_parquet": ("corpus", "corpus.parquet", _parquet(None), 5, "the corpus file has no rows"),
    "unknown_file_type": ("corpus", "corpus.xlsx", _bytes(b"PK\x03\x04"), 5, "unknown file type '.xlsx'"),
    "folder_not_a_dataset": ("corpus", "corpus_folder", _folder, 5, "not a `datasets` save_to_disk folder"),
    "missing_file": ("corpus", "nowhere.jsonl", lambda p: None, 4, "file not found"),
}


def _data_files(t: Path, case: str) -> dict[str, Path]:
    kind, name, write, _, _ = DATA_CASES[case]
    files = {"corpus": write_jsonl(t / "good_corpus.jsonl", GOOD_CORPUS), "queries": write_jsonl(t / "good_queries.jsonl", GOOD_QUERIES)}
    files["qrels"] = t / "good_qrels.tsv"
    files["qrels"].write_text(GOOD_QRELS, encoding="utf-8")
    files[kind] = t / name
    write(t / name)
    return files


@pytest.mark.parametrize("case", list(DATA_CASES))
@pytest.mark.parametrize("command", ["inspect", "mine"])
def test_bad_data_file(cli, tmp_path, command, case):
    files = _data_files(tmp_path, case)
    _, _, _, code, expect = DATA_CASES[case]
    args = ["--corpus", files["corpus"], "--queries", files["queries"], "--qrels", files["qrels"]]
    if command == "mine":
        args = ["--run", tmp_path / "run", "--retriever", "bm25", *args]
    before = _snapshot(tmp_path)
    proc = cli(command, *args)
    if command == "inspect":  # a preflight report: every problem listed, exit 5 unless READY (a missing file too)
        _expect_one_clear_line(proc, 5, expect, report=True)
    else:
        _expect_one_clear_line(proc, code, expect)
    assert _snapshot(tmp_path) == before  # nothing written, not even an empty run folder's manifest
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("content", "code", "expect"),
    [(b"q1\nq2\xff\n", 5, "are not UTF-8"), (b"q1\nq404\n", 5, "not in the queries file"), (b"\n \n", 5, "held-out query list is empty")],
    ids=["non_utf8", "unknown_id", "empty"],
)
def test_bad_heldout_query_list(cli, tmp_path, content, code, expect):
    files = _data_files(tmp_path, "whitespace_query")
    files["queries"] = write_jsonl(tmp_path / "good_queries.jsonl", GOOD_QUERIES)
    (tmp_path / "heldout.txt").write_bytes(content)
    before = _snapshot(tmp_path)
    proc = cli(
        "mine",
        "--run",
        tmp_path / "run",
        "--retriever",
        "bm25",
        "--corpus",
        files["corpus"],
        "--queries",
        files["queries"],
        "--qrels",
        files["qrels"],
        "--heldout-queries",
        tmp_path / "heldout.txt",
    )
    _expect_one_clear_line(proc, code, expect)
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- a mined run folder


@pytest.fixture(scope="module")
def mined(stdlib_domain, tmp_path_factory) -> Path:
    from skill.config import DataConfig, MineConfig
    from skill.mine import mine

    run = tmp_path_factory.mktemp("bad-inputs") / "mined"
    mine(
        run,
        DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"]),
        MineConfig(retriever="bm25", train_top_k=4, eval_top_k=4),
    )
    return run


def _copy_run(mined: Path, t: Path) -> Path:
    run = t / "run"
    shutil.copytree(mined, run)
    return run


def _pairs(run: Path) -> list[dict]:
    return pq.read_table(run / "train_pairs.parquet").to_pylist() + pq.read_table(run / "heldout_candidates.parquet").to_pylist()


def _scores_rows(run: Path, label=lambda i, r: float(i % 7) - 3.0) -> list[dict]:
    return [
        {"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": label(i, r)}
        for i, r in enumerate(_pairs(run))
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _score_case(case: str, run: Path, t: Path) -> tuple[Path, str]:
    rows = _scores_rows(run)
    f = t / "scores.jsonl"
    if case == "broken_json":
        write_jsonl(f, rows[:3])
        f.write_text(f.read_text() + '{"query": "a", "document": \n')
        return f, "scores.jsonl:4: broken JSON"
    if case == "broken_csv":
        f = t / "scores.csv"
        f.write_text("query,document,label\nq,d,1.0\nq,d,1.0,extra\n", encoding="utf-8")
        return f, "row has 4 fields"
    if case == "broken_parquet":
        f = t / "scores.parquet"
        f.write_bytes(b"\x00" * 64)
        return f, "not a readable Parquet file"
    if case == "no_label_column":
        write_jsonl(f, [{k: v for k, v in r.items() if k != "label"} for r in rows])
        return f, "no label/score column"
    if case in ("label_nan", "label_inf", "label_string"):
        bad = {"label_nan": float("nan"), "label_inf": float("inf"), "label_string": "very relevant"}[case]
        rows[5]["label"] = bad
        f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # json writes NaN / Infinity literals
        return f, "is not a finite number"
    if case == "label_string_csv":
        f = t / "scores.csv"
        rows[2]["label"] = "n/a"
        _write_csv(f, rows)
        return f, "label 'n/a' is not a finite number"
    if case == "empty_document":
        rows[1]["document"] = "  "
        write_jsonl(f, rows)
        return f, "scores.jsonl:2 column document: empty document"
    if case == "non_utf8":
        f.write_bytes(b'{"query": "q", "document": "d\xe9", "label": 1.0}\n')
        return f, "scores.jsonl:1: bytes at column"
    if case == "empty_file":
        f.write_bytes(b"")
        return f, "the pairs file has no rows"
    if case == "unknown_ids":
        write_jsonl(f, [{**r, "query_id": "other-" + r["query_id"], "query": "another query"} for r in rows])
        return f, "the scores file has no score for"
    if case == "duplicate_ids_conflicting_labels":
        write_jsonl(f, [*rows, {**rows[0], "label": rows[0]["label"] + 1.0}])
        return f, "is scored twice with different labels"
    raise AssertionError(case)


SCORE_CASES = [
    "broken_json",
    "broken_csv",
    "broken_parquet",
    "no_label_column",
    "label_nan",
    "label_inf",
    "label_string",
    "label_string_csv",
    "empty_document",
    "non_utf8",
    "empty_file",
    "unknown_ids",
    "duplicate_ids_conflicting_labels",
]


@pytest.mark.parametrize("case", SCORE_CASES)
def test_bad_scores_file(cli, mined, tmp_path, case):
    run = _copy_run(mined, tmp_path)
    f, expect = _score_case(case, run, tmp_path)
    before = _snapshot(tmp_path)
    proc = cli("score", "--run", run, "--teacher", f, "--teacher-type", "file")
    _expect_one_clear_line(proc, 5, expect)
    assert _snapshot(tmp_path) == before


def _evaluate_case(case: str, run: Path, t: Path, tiny_reranker: Path) -> tuple[list, int, str]:
    held, qrels = run / "heldout_candidates.parquet", run / "qrels_heldout.json"
    student = ["--student", tiny_reranker]
    if case == "broken_parquet":
        held.write_bytes(b"garbage, not parquet")
        return student, 5, "not a readable Parquet file"
    if case == "missing_columns":
        pq.write_table(pq.read_table(held).drop(["rank", "document"]), held)
        return student, 5, "missing column(s) document, rank"
    if case == "no_rows":
        pq.write_table(pq.read_table(held).slice(0, 0), held)
        return student, 5, "no held-out candidates (0 rows)"
    if case == "broken_qrels_json":
        qrels.write_text('{"q1": {"d1": 1', encoding="utf-8")
        return student, 5, "not a {query_id: {doc_id: grade}} JSON object"
    if case == "qrels_not_a_mapping":
        qrels.write_text('["q1", "d1"]', encoding="utf-8")
        return student, 5, "not a {query_id: {doc_id: grade}} JSON object"
    if case == "qrels_grade_string":
        qrels.write_text('{"q1": {"d1": "relevant"}}', encoding="utf-8")
        return student, 5, "not a {query_id: {doc_id: grade}} JSON object"
    if case == "qrels_without_positives":
        qrels.write_text(json.dumps({q: {d: 0 for d in docs} for q, docs in json.loads(qrels.read_text()).items()}), encoding="utf-8")
        return student, 5, "no held-out query has a positive"
    if case == "student_broken_config":
        folder = t / "student"
        folder.mkdir()
        (folder / "config.json").write_text("{broken", encoding="utf-8")
        return ["--student", folder], 5, "not a model folder"
    if case == "student_is_a_file":
        (t / "model.bin").write_bytes(b"\x00" * 10)
        return ["--student", t / "model.bin"], 5, "is a file, not a model folder"
    if case == "no_student":
        return [], 4, "no trained student in the run folder"
    raise AssertionError(case)


EVALUATE_CASES = [
    "broken_parquet",
    "missing_columns",
    "no_rows",
    "broken_qrels_json",
    "qrels_not_a_mapping",
    "qrels_grade_string",
    "qrels_without_positives",
    "student_broken_config",
    "student_is_a_file",
    "no_student",
]


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_bad_evaluate_inputs(cli, mined, tiny_reranker, tmp_path, case):
    run = _copy_run(mined, tmp_path)
    args, code, expect = _evaluate_case(case, run, tmp_path, tiny_reranker)
    before = _snapshot(tmp_path)
    proc = cli("evaluate", "--run", run, *args, "--resamples", "100")
    _expect_one_clear_line(proc, code, expect)
    assert _snapshot(tmp_path) == before


def _export_case(case: str, t: Path, mined: Path, tiny_reranker: Path) -> tuple[list, int, str]:
    folder = t / "model"
    if case == "config_not_json":
        folder.mkdir()
        (folder / "config.json").write_text("{not json", encoding="utf-8")
        return ["--model", folder], 5, "not a model folder"
    if case == "st_config_not_json":
        shutil.copytree(tiny_reranker, folder)
        (folder / "config_sentence_transformers.json").write_bytes(b"\xff\xfe garbage")
        return ["--model", folder], 5, "not a reranker"
    if case == "model_is_a_file":
        (t / "model.onnx").write_bytes(b"\x08\x01")
        return ["--model", t / "model.onnx"], 5, "--model must be a folder"
    if case == "empty_folder":
        folder.mkdir()
        return ["--model", folder], 5, "not a model folder"
    if case == "run_with_broken_heldout":
        run = _copy_run(mined, t)
        (run / "heldout_candidates.parquet").write_bytes(b"not parquet")
        return ["--model", tiny_reranker, "--run", run], 5, "cannot read held-out candidates"
    raise AssertionError(case)


EXPORT_CASES = ["config_not_json", "st_config_not_json", "model_is_a_file", "empty_folder", "run_with_broken_heldout"]


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_bad_export_inputs(cli, mined, tiny_reranker, tmp_path, case):
    args, code, expect = _export_case(case, tmp_path, mined, tiny_reranker)
    before = _snapshot(tmp_path)
    proc = cli("export", *args, "--out", tmp_path / "exported")
    _expect_one_clear_line(proc, code, expect)
    assert _snapshot(tmp_path) == before and not (tmp_path / "exported").exists()


RECIPE_CASES = {
    "broken_yaml": (b"run: runs/x\nmine: {retriever: bm25\n", 5, "broken YAML"),
    "not_a_mapping": (b"- mine\n- score\n", 5, "a recipe is a YAML mapping"),
    "unknown_key": (b"run: runs/x\nmine:\n  retriever: bm25\n  topk: 3\n", 5, "mine.topk"),
    "wrong_type": (b"run: runs/x\ntrain:\n  max_steps: many\n", 5, "train.max_steps"),
    "nan_value": (b"run: runs/x\ntrain:\n  learning_rate: .nan\n", 5, "train.learning_rate"),
    "non_utf8": (b"run: runs/caf\xe9\n", 5, "are not UTF-8"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe(cli, tmp_path, case):
    content, code, expect = RECIPE_CASES[case]
    (tmp_path / "recipe.yaml").write_bytes(content)
    before = _snapshot(tmp_path)
    proc = cli("run", tmp_path / "recipe.yaml")
    _expect_one_clear_line(proc, code, expect)
    assert _snapshot(tmp_path) == before


def test_recipe_with_a_broken_corpus_stops_at_mine(tmp_path):
    (tmp_path / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": \n')
    write_jsonl(tmp_path / "queries.jsonl", GOOD_QUERIES)
    recipe = {
        "run": str(tmp_path / "run"),
        "stages": ["mine", "score"],
        "data": {"corpus": str(tmp_path / "corpus.jsonl"), "queries": str(tmp_path / "queries.jsonl")},
        "mine": {"retriever": "bm25"},
        "score": {"teachers": [{"model": str(tmp_path / "scores.jsonl"), "type": "file"}]},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))  # JSON is YAML
    proc = run_cli("run", tmp_path / "recipe.json", cwd=tmp_path)
    assert proc.returncode == 5 and "corpus.jsonl:1: broken JSON" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "run" / "manifest.json").exists()


# --------------------------------------------------------------------------------------------- a run folder from an older version

OLD_MANIFEST = {"manifest_version": 0, "stages": {"mine": {"status": "ok"}}}


@pytest.mark.parametrize("command", ["mine", "score", "render", "train", "evaluate", "export"])
def test_run_folder_from_an_older_version_is_refused_untouched(mined, tiny_reranker, tmp_path, command):
    run = _copy_run(mined, tmp_path)
    (run / "manifest.json").write_text(json.dumps(OLD_MANIFEST), encoding="utf-8")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", GOOD_CORPUS)
    queries = write_jsonl(tmp_path / "queries.jsonl", GOOD_QUERIES)
    args = {
        "mine": ["--corpus", corpus, "--queries", queries, "--retriever", "bm25"],
        "score": ["--teacher", tiny_reranker],
        "render": [],
        "train": ["--max-steps", "1"],
        "evaluate": ["--student", tiny_reranker],
        "export": ["--model", tiny_reranker],
    }[command]
    before = _snapshot(tmp_path)
    proc = run_cli(command, "--run", run, *args)
    _expect_one_clear_line(proc, 5, "run folder written by an incompatible version (manifest_version 0, expected 1)")
    assert _snapshot(tmp_path) == before


def test_json_envelope_for_a_bad_input_is_one_object(tmp_path):
    files = _data_files(tmp_path, "label_nan")
    proc = run_cli(
        "mine",
        "--run",
        tmp_path / "run",
        "--retriever",
        "bm25",
        "--corpus",
        files["corpus"],
        "--queries",
        files["queries"],
        "--qrels",
        files["qrels"],
        "--json",
    )
    payload = json.loads(proc.stdout)
    assert proc.returncode == payload["exit_code"] == 5 and payload["status"] == "error"
    err = payload["errors"][0]
    assert err["code"] == 5 and "not a finite number" in err["message"] and err["where"].endswith("qrels.tsv:5 column score") and err["fix"]


# --------------------------------------------------------------------------------------------- property-based: loaders and split

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(lambda s: s.strip())
_ROWS = st.lists(st.tuples(_TEXT, _TEXT, st.one_of(st.none(), _TEXT)), min_size=1, max_size=12, unique_by=lambda r: r[0])


def _write_format(path: Path, fmt: str, rows: list[dict]) -> Path:
    target = path.with_suffix({"jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "jsonl.gz": ".jsonl.gz"}[fmt])
    if fmt == "jsonl":
        write_jsonl(target, rows)
    elif fmt == "jsonl.gz":
        target.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif fmt == "csv":
        with target.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "tsv":  # plain text split on tabs, as MS MARCO/BEIR write it: no quoting, so no tab or line break in a value
        assume(not any(c in str(v) for r in rows for v in r.values() for c in "\t\n\r"))
        lines = ["\t".join(rows[0])] + ["\t".join(str(v) for v in r.values()) for r in rows]
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), target)
    return target


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS, fmt=st.sampled_from(["jsonl", "jsonl.gz", "csv", "tsv", "parquet"]))
def test_property_corpus_round_trips_through_every_format(tmp_path_factory, rows, fmt):
    records = [{"_id": rid, "title": title or "", "text": text} for rid, text, title in rows if rid.strip()]
    if not records:
        return
    path = _write_format(tmp_path_factory.mktemp("rt") / "corpus", fmt, records)
    corpus = load_corpus(path).require()
    expected = {r["_id"]: (f"{r['title'].strip()}\n{r['text'].strip()}" if r["title"].strip() else r["text"].strip()) for r in records}
    assert corpus.texts == expected
    queries = load_queries(path).require()  # the same rows read as queries (no title field for queries)
    assert queries.texts == {r["_id"]: r["text"].strip() for r in records}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(st.tuples(_TEXT, _TEXT, st.integers(0, 3)), min_size=1, max_size=15, unique_by=lambda r: (r[0], r[1])),
    fmt=st.sampled_from(["jsonl", "csv", "tsv", "parquet"]),
)
def test_property_qrels_and_pairs_round_trip(tmp_path_factory, labels, fmt):
    folder = tmp_path_factory.mktemp("rt")
    qrels_path = _write_format(folder / "qrels", fmt, [{"query-id": q, "corpus-id": d, "score": g} for q, d, g in labels])
    got = load_qrels(qrels_path).require()
    assert got.labels == {q: {d: float(g) for qq, d, g in labels if qq == q} for q, _, _ in labels}
    pairs_path = _write_format(folder / "pairs", fmt, [{"query": q, "document": d, "label": g / 3 - 0.25} for q, d, g in labels])
    pairs = load_pairs(pairs_path, require_label=True).require()
    assert list(zip(pairs.query, pairs.document, pairs.label, strict=True)) == [(q, d, g / 3 - 0.25) for q, d, g in labels]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=400),
    ext=st.sampled_from([".jsonl", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".txt"]),
    prefix=st.sampled_from([b"", b'{"_id": "d1", "text": "x"}\n', b"_id,text\n", b"PAR1"]),
)
def test_property_garbage_raises_only_skill_errors(tmp_path_factory, data, ext, prefix):
    path = tmp_path_factory.mktemp("garbage") / f"file{ext}"
    path.write_bytes(prefix + data)
    for load in (
        lambda: load_corpus(path, stop_at_first=False),
        lambda: load_queries(path),
        lambda: load_qrels(path, stop_at_first=False),
        lambda: load_pairs(path, require_label=True),
    ):
        try:
            result = load()
        except SkillError as err:
            assert err.code in (4, 5) and err.line()
            continue
        for problem in result.problems:  # reported, not raised: each one a full line with a fix
            assert problem.where and problem.fix and "\n" not in problem.message


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(
        st.sampled_from(["alpha", "Alpha ", "beta", "gamma delta", "GAMMA  delta", "eps", "zeta", "eta", "theta", "iota"]) | _TEXT, min_size=2, max_size=30
    ),
    labelled=st.lists(st.booleans(), min_size=30, max_size=30),
    fraction=st.floats(0.05, 0.9),
    seed=st.integers(0, 10_000),
)
def test_property_split_with_qrels(texts, labelled, fraction, seed):
    queries = Queries({f"q{i}": t for i, t in enumerate(texts)})
    qrels = Qrels({f"q{i}": {f"d{i % 5}": 1.0} for i in range(len(texts)) if labelled[i]})
    split = split_queries(queries, qrels, heldout_fraction=fraction, seed=seed)
    assert split == split_queries(queries, qrels, heldout_fraction=fraction, seed=seed)  # seeded
    assert sorted(split.train + split.heldout) == sorted(queries.texts) and not set(split.train) & set(split.heldout)
    side = {q: q in split.heldout for q in queries.texts}
    for a in queries.texts:  # one normalised text, one side
        for b in queries.texts:
            if normalise_query(queries.texts[a]) == normalise_query(queries.texts[b]):
                assert side[a] == side[b]
    groups = {normalise_query(t) for t in texts}
    eligible = {normalise_query(queries.texts[q]) for q in queries.texts if qrels.positives(q)}
    if eligible:
        assert split.heldout  # something to evaluate on
        # a held-out text group always has a labelled member: evaluation can score it
        assert all(normalise_query(queries.texts[q]) in eligible for q in split.heldout)
    else:
        assert not split.heldout and len(groups) >= 1
    check_no_leak(split, queries, qrels)
    # An explicit list of held-out ids is honoured, and pulls in the same text's twins.
    chosen = sorted(queries.texts)[: max(1, len(queries.texts) // 3)]
    twins = {q for q in queries.texts if any(normalise_query(queries.texts[q]) == normalise_query(queries.texts[c]) for c in chosen)}
    if not any(qrels.positives(q) for q in twins):  # nothing the held-out side could be measured on: refused up front
        with pytest.raises(SkillError, match=r"none of the .* held-out queries has a positive label"):
            split_queries(queries, qrels, heldout_ids=chosen)
        return
    explicit = split_queries(queries, qrels, heldout_ids=chosen)
    assert set(chosen) <= set(explicit.heldout)
    check_no_leak(explicit, queries, qrels)
