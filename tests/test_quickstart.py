"""Issue 6: `quickstart` and `run RECIPE.yaml` run the whole pipeline, skip what is up to date,
and stop at the first failure with its message. Sized down with --set onto the tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import run_json

TINY = [
    "--set", "train.max_steps=2", "--set", "train.per_device_batch=8", "--set", "train.global_batch=8",
    "--set", "train.max_seq_length=64", "--set", "train.eval_queries=6", "--set", "train.max_minutes=null",
    "--set", "mine.eval_top_k=10", "--set", "mine.train_top_k=6",
]  # fmt: skip


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_and_skips_when_up_to_date(tmp_path, tiny_base):
    args = ["quickstart", "--run", tmp_path / "qs", "--max-queries", "60", *TINY, "--set", f"mine.embedder={tiny_base}", "--set", f"train.base={tiny_base}"]
    args += ["--set", f"score.teachers=[{{model: '{tiny_base}', type: bi-encoder}}]"]
    code, payload = run_json(*args)
    assert code == 0, payload["errors"]
    stages = payload["metrics"]["stages"]
    assert list(stages) == ["mine", "score", "render", "train", "evaluate"]
    assert all(s["exit_code"] == 0 and not s["skipped"] for s in stages.values())
    assert payload["metrics"]["verdict"] in ("WIN", "MARGINAL", "REGRESSION")
    report = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert report["verdict"]["label"] == payload["metrics"]["verdict"]
    assert report["fused_verdict"]["label"] in ("WIN", "MARGINAL", "REGRESSION")  # train.py's fusion weight reached evaluate
    assert (tmp_path / "qs" / "data" / "corpus.jsonl").exists()

    code, again = run_json(*args)  # nothing changed: every stage is skipped
    assert code == 0 and all(s["skipped"] for s in again["metrics"]["stages"].values())


def test_run_stops_at_the_first_failure_with_its_message(tmp_path, small_beir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {tmp_path / 'run'}\ndata: {{corpus: {small_beir['corpus']}, queries: {small_beir['queries']}, qrels: {small_beir['qrels']}}}\n"
        "mine: {retriever: bm25, eval_top_k: 3, train_top_k: 3, heldout: 0.34}\n"
        f"score: {{teachers: [{{model: {tmp_path / 'no-such-model'}, type: cross-encoder}}]}}\n"
    )
    code, payload = run_json("run", recipe)
    assert code == 4 and payload["metrics"]["failed_stage"] == "score"
    assert payload["metrics"]["stages"]["mine"]["exit_code"] == 0
    assert "no-such-model" in payload["errors"][0]["where"] + payload["errors"][0]["message"]


def test_recipe_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\nmine: {retriever: bm26}\n")
    code, payload = run_json("run", bad, "--set", "data.corpus=c.jsonl", "--set", "data.queries=q.jsonl", "--set", "score.teachers=[{model: m}]")
    assert code == 5 and "mine.retriever" in payload["errors"][0]["message"]
    code, payload = run_json("run", tmp_path / "missing.yaml")
    assert code == 4
    code, payload = run_json("run", bad, "--set", "nonsense")
    assert code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [unclosed\n")
    code, payload = run_json("run", broken)
    assert code == 5 and payload["errors"][0]["where"].startswith(str(broken))
