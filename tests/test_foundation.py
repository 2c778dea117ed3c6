"""Issue 2: the CLI envelope, doctor, inspect on good and malformed inputs, the split, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, run_json, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from skill.data import ColumnMapping, Qrels, Queries, check_no_leak, load_corpus, split_queries
from skill.errors import SkillError
from skill.io import atomic_path, write_json

COMMANDS = ["doctor", "inspect"]


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in proc.stdout


def test_doctor_json_is_one_valid_envelope():
    code, payload = run_json("doctor")
    assert code == payload["exit_code"] == 0
    assert payload["command"] == "doctor" and payload["schema_version"] == 1
    assert set(payload) == {"schema_version", "command", "status", "exit_code", "inputs", "artifacts", "metrics", "warnings", "errors"}
    assert payload["metrics"]["hub_reachable"] is False  # tests run with HF_HUB_OFFLINE=1
    assert payload["metrics"]["sentence-transformers"].startswith("6.")


def test_usage_error_is_exit_2_and_json():
    code, payload = run_json("inspect", "--corpus", "x.jsonl")  # --queries missing
    assert code == 2 and payload["status"] == "error" and payload["exit_code"] == 2


def test_inspect_ready_on_beir(small_beir):
    code, payload = run_json("inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--qrels", small_beir["qrels"])
    assert code == 0, payload
    m = payload["metrics"]
    assert m["status"] == "READY" and m["documents"] == 4 and m["queries"] == 3 and m["qrels"] == 3
    assert m["queries_with_positives"] == 3 and m["relevance_grades"] == [1.0, 2.0]


def test_inspect_token_lengths_in_student_tokenizer(small_beir, tiny_base):
    code, payload = run_json(
        "inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--qrels", small_beir["qrels"], "--tokenizer", tiny_base
    )
    assert code == 0
    stats = payload["metrics"]["document_length_tokens"]
    assert 3 <= stats["min"] <= stats["max"] < 40


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "datasets"])
def test_inspect_reads_every_format(small_beir, tmp_path, fmt):
    import datasets

    rows = [json.loads(line) for line in small_beir["corpus"].read_text().splitlines()]
    for r in rows:
        r.setdefault("title", "")
    ds = datasets.Dataset.from_list(rows)
    target = tmp_path / f"corpus.{fmt}" if fmt != "datasets" else tmp_path / "corpus_ds"
    if fmt == "csv":
        ds.to_csv(target, index=False)
    elif fmt == "tsv":
        ds.to_csv(target, index=False, sep="\t")
    elif fmt == "parquet":
        ds.to_parquet(target)
    else:
        ds.save_to_disk(str(target))
    code, payload = run_json("inspect", "--corpus", target, "--queries", small_beir["queries"], "--qrels", small_beir["qrels"])
    assert code == 0, payload["errors"]
    assert payload["metrics"]["documents"] == 4


def _malformed(tmp_path: Path, case: str) -> tuple[Path, Path, Path | None, str]:
    """Returns corpus, queries, qrels and the text the one clear line must contain."""
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "capital of France"}])
    good = [{"_id": "d1", "text": "Paris is the capital of France."}, {"_id": "d2", "text": "Berlin."}]
    corpus = tmp_path / "corpus.jsonl"
    qrels = None
    if case == "broken_json":
        corpus.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "unterminated\n', encoding="utf-8")
        return corpus, queries, qrels, "corpus.jsonl:2: broken JSON"
    if case == "missing_text":
        write_jsonl(corpus, [{"_id": "d1", "contents": "x"}])
        return corpus, queries, qrels, "--map corpus.text=contents"
    if case == "empty_text":
        write_jsonl(corpus, [*good, {"_id": "d3", "text": "   "}])
        return corpus, queries, qrels, "corpus.jsonl:3 column text: document 'd3' has empty text"
    if case == "duplicate_id":
        write_jsonl(corpus, [*good, {"_id": "d1", "text": "again"}])
        return corpus, queries, qrels, "duplicate id 'd1'"
    if case == "dangling_qrels":
        write_jsonl(corpus, good)
        qrels = tmp_path / "qrels.tsv"
        qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n", encoding="utf-8")
        return corpus, queries, qrels, "qrels.tsv:3 column corpus-id: document id 'd9' is not in the corpus"
    if case == "non_utf8":
        corpus.write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n')
        return corpus, queries, qrels, "corpus.jsonl:2: bytes at column"
    if case == "huge_document":
        write_jsonl(corpus, [*good, {"_id": "big", "text": "x" * 5_000_000}])
        return corpus, queries, qrels, "'big' is 5,000,000 characters"
    raise AssertionError(case)


MALFORMED = ["broken_json", "missing_text", "empty_text", "duplicate_id", "dangling_qrels", "non_utf8", "huge_document"]


@pytest.mark.parametrize("case", MALFORMED)
def test_inspect_malformed_gives_one_clear_line_exit_5_writes_nothing(tmp_path, case):
    corpus, queries, qrels, expected = _malformed(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["inspect", "--corpus", corpus, "--queries", queries] + (["--qrels", qrels] if qrels else [])
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected in proc.stdout + proc.stderr
    assert "fix:" in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, payload = run_json(*args, cwd=tmp_path)
    assert code == 5 and payload["errors"] and payload["errors"][0]["fix"]
    assert payload["metrics"]["status"] in ("INVALID", "NEEDS MAPPING")


def test_map_option_fixes_a_renamed_column(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"pid": "d1", "contents": "Paris"}, {"pid": "d2", "contents": "Berlin"}])
    write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "paris"}, {"_id": "q2", "text": "berlin"}])
    (tmp_path / "r.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    files = ["--corpus", tmp_path / "c.jsonl", "--queries", tmp_path / "q.jsonl", "--qrels", tmp_path / "r.tsv"]
    code, payload = run_json("inspect", *files, "--map", "corpus.id=pid", "--map", "corpus.text=contents")
    assert code == 0 and payload["metrics"]["documents"] == 2
    code, payload = run_json("inspect", "--corpus", tmp_path / "c.jsonl", "--queries", tmp_path / "q.jsonl", "--map", "corpus.nope=pid")
    assert code == 2


def test_loader_raises_first_error_as_exit_5(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "text": ""}])
    with pytest.raises(SkillError) as info:
        load_corpus(tmp_path / "c.jsonl", ColumnMapping()).require()
    assert info.value.code == 5 and "c.jsonl:1" in info.value.line()


def test_split_is_by_query_seeded_and_leak_free():
    texts = {f"q{i}": f"query number {i}" for i in range(50)}
    texts["dup"] = "query number 3"  # same text as q3: must land on q3's side
    queries = Queries(texts)
    qrels = Qrels({q: {f"d{q}": 1.0} for q in texts})
    a = split_queries(queries, qrels, heldout_fraction=0.2, seed=7)
    b = split_queries(queries, qrels, heldout_fraction=0.2, seed=7)
    c = split_queries(queries, qrels, heldout_fraction=0.2, seed=8)
    assert a == b and a.heldout != c.heldout
    assert not set(a.train) & set(a.heldout) and set(a.train) | set(a.heldout) == set(texts)
    assert ("q3" in a.heldout) == ("dup" in a.heldout)
    assert 9 <= len(a.heldout) <= 12


def test_dev_split_comes_from_labelled_training_queries():
    texts = {f"q{i}": f"query number {i}" for i in range(100)}
    texts["dup"] = "query number 3"
    queries = Queries(texts)
    qrels = Qrels({q: {f"d{q}": 1.0} for q in texts if q not in ("q98", "q99")})  # two unlabelled queries: never dev, never held out
    split = split_queries(queries, qrels, heldout_fraction=0.2, seed=7, dev_queries=50)
    assert split == split_queries(queries, qrels, heldout_fraction=0.2, seed=7, dev_queries=50)
    sides = [set(split.train), set(split.dev), set(split.heldout)]
    assert set().union(*sides) == set(texts) and sum(map(len, sides)) == len(texts)
    assert {"q98", "q99"} <= set(split.train)
    groups_on_training_side = 101 - 1 - 20  # 100 distinct texts, 20 held out (the duplicate follows q3)
    assert len({queries.texts[q] for q in split.dev}) == (groups_on_training_side - 2) // 5  # capped at a fifth of the labelled ones
    assert ("q3" in split.dev) == ("dup" in split.dev) and ("q3" in split.heldout) == ("dup" in split.heldout)
    assert split_queries(queries, qrels, heldout_fraction=0.2, seed=7, dev_queries=3).dev.__len__() in (3, 4)
    assert split_queries(queries, None, heldout_fraction=0.2, seed=7, dev_queries=50).dev == []  # no labels: nothing to choose on
    check_no_leak(split, queries, qrels)


def test_leak_check_catches_a_held_out_text_in_training():
    from skill.data import Split

    queries = Queries({"a": "same text", "b": "same  TEXT", "c": "other"})
    with pytest.raises(SkillError, match="same text as a training query"):
        check_no_leak(Split(seed=0, heldout_fraction=0.5, train=["a", "c"], heldout=["b"]), queries, None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=2, max_size=40), st.floats(0.05, 0.9), st.integers(0, 1000))
def test_split_property_partition_and_no_leak(texts, fraction, seed):
    queries = Queries({f"q{i}": t for i, t in enumerate(texts)})
    split = split_queries(queries, None, heldout_fraction=fraction, seed=seed)
    assert sorted(split.train + split.heldout) == sorted(queries.texts)
    assert split.heldout  # at least one held-out query
    check_no_leak(split, queries, None)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]
