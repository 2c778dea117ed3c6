"""Issues 4, 13 and 14: `train` runs the rendered script on the tiny ModernBERT from a real scores table, and every number it
shows comes from skill.metrics (the NDCG `evaluate` uses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, run_json
from test_render import _scores_with_planted_false_negatives

from skill.config import TrainConfig
from skill.render import render
from skill.testing import record_stages

FAST = ["--max-seq-length", "64", "--per-device-batch", "8", "--global-batch", "16", "--eval-queries", "8"]


@pytest.fixture
def run(toy_scored_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(toy_scored_run, target)
    return target


@pytest.fixture(scope="module")
def trained(toy_scored_run, tiny_base, tmp_path_factory):
    """One full `train` of 4 steps (evaluated at 2 and 4), shared by the tests that read its results."""
    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(toy_scored_run, run)
    proc = run_cli("train", "--run", run, "--base", tiny_base, "--max-steps", "4", "--eval-every", "2", "--learning-rate", "1e-3", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads(proc.stdout), proc.stderr


def test_train_end_to_end_dev_check_identity_raw_scores(trained):
    import torch
    from sentence_transformers import CrossEncoder

    run, payload, stderr = trained
    m = payload["metrics"]
    log = (run / "train_log.txt").read_text()  # the script's output (live on stderr too) and the check
    lines = [line for line in log.splitlines() if line.startswith("DEV CHECK: ")]
    assert len(lines) == 1 and lines[0] == m["dev_check_line"] and not any(line.startswith("VERDICT") for line in log.splitlines())
    assert (
        m["dev_check"] in ("WIN", "MARGINAL", "REGRESSION") and f"student ndcg@10={m['ndcg@10']:.4f} vs first stage {m['first_stage_ndcg@10']:.4f}" in lines[0]
    )
    assert "on 8 dev queries that chose the checkpoint: optimistic, not the held-out verdict" in lines[0]
    assert m["global_step"] == 4 and m["effective_global_batch"] == 16 and m["train_pairs_per_second"] > 0 and m["ended_by"] == "the plan"
    # The expected wall time is printed before the first training step; progress lines carry elapsed time and ETA.
    first_step = stderr.index("step 1/4")
    assert stderr.index("plan: 4 steps of 16 pairs") < first_step and "expected wall time" in stderr[:first_step]
    assert "step 2/4 | " in stderr and " min elapsed, ETA " in stderr and "eval_dev_ndcg@10=" in stderr
    assert log.rstrip().endswith(m["dev_check_line"])

    result = json.loads((run / "train_result.json").read_text())
    check = result["dev_check"]
    assert result["selection_split"] == "dev" and check["queries"] == 8 and result["batch"] == {"per_device": 8, "accumulation": 2, "processes": 1}
    assert result["best_checkpoint"].endswith(("checkpoint-2", "checkpoint-4"))
    # The fusion weight is chosen with metrics.fuse on the same NDCG: alpha 0 is the first stage, alpha 1 the student.
    fusion = check["fusion"]
    assert len(fusion["ndcg@10_by_alpha"]) == 11 and fusion["split"] == "dev" and fusion["chosen_on"] == 8
    assert fusion["ndcg@10_by_alpha"]["0"] == pytest.approx(check["first_stage"]["ndcg@10"], abs=1e-12)
    assert fusion["ndcg@10_by_alpha"]["1"] == pytest.approx(check["student"]["ndcg@10"], abs=1e-12)
    assert fusion["ndcg@10"] == max(fusion["ndcg@10_by_alpha"].values()) and json.loads((run / "student" / "fusion.json").read_text()) == fusion
    split = json.loads((run / "split.json").read_text())
    assert not set(split["dev"]) & {r["query_id"] for r in pq.read_table(run / "scores.parquet", columns=["query_id"]).to_pylist()}
    record = json.loads((run / "manifest.json").read_text())["stages"]["train"]
    assert record["status"] == "ok" and record["metrics"]["dev_check"] == m["dev_check"] and record["outputs"]["student"] == "student"
    # The model card is sentence-transformers' own, with our section of skill.metrics numbers.
    card = (run / "student" / "README.md").read_text()
    assert card.startswith("---") and "library_name: sentence-transformers" in card and "reranker-skill" in card and "loss:MSELoss" in card
    assert card.count("## Dev check (reranker-skill)") == 1 and f"| **this model** | {m['ndcg@10']:.4f} |" in card and f"α = {fusion['alpha']:g}" in card

    # The saved model reloads with Identity and rank() returns the head's raw output.
    config = json.loads((run / "student" / "config_sentence_transformers.json").read_text())
    assert config["activation_fn"] == "torch.nn.modules.linear.Identity"
    model = CrossEncoder(str(run / "student"))
    assert isinstance(model.activation_fn, torch.nn.Identity) and model.max_seq_length == 64
    docs = ["Return a JSON string for a Python object.", "Split the path into a pair.", "Read rows from a CSV file."]
    ranked = model.rank("serialize an object to JSON", docs)
    with torch.no_grad():
        raw = model(model.preprocess([("serialize an object to JSON", d) for d in docs]))["scores"].view(-1).tolist()
    assert sorted(r["score"] for r in ranked) == pytest.approx(sorted(raw), abs=1e-5)
    assert sorted(r["score"] for r in ranked) != pytest.approx(sorted(torch.sigmoid(torch.tensor(raw)).tolist()), abs=1e-3)  # not squashed

    code, again = run_json("train", "--run", run)  # same script, same data: skipped without a subprocess
    assert code == 0 and again["metrics"]["skipped"] is True and any("up to date" in w for w in again["warnings"])


def test_train_time_dev_ndcg_equals_pytrec_eval_and_evaluate_on_the_same_queries_and_scores(trained, tmp_path):
    """The train-time number is the held-out report's number: same NDCG (all positives, graded gains), same queries, same scores."""
    import pytrec_eval

    run, payload, _ = trained
    check = json.loads((run / "train_result.json").read_text())["dev_check"]
    dev = pq.read_table(run / "student_dev_scores.parquet").to_pandas()
    qrels_all = json.loads((run / "qrels_dev.json").read_text())
    queries = sorted(set(dev["query_id"]))
    qrels = {q: {d: int(g) for d, g in qrels_all[q].items()} for q in queries}
    assert all(group["score"].nunique() == len(group) for _, group in dev.groupby("query_id"))  # no ties: no tie rule can matter
    # 1. trec_eval's own code, called here directly.
    runs = {q: {d: float(s) for d, s in zip(g["doc_id"], g["score"], strict=True)} for q, g in dev.groupby("query_id")}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(runs)
    assert np.mean([per_query[q]["ndcg_cut_10"] for q in queries]) == pytest.approx(check["student"]["ndcg@10"], abs=1e-12)
    assert check["student"]["ndcg@10"] == pytest.approx(payload["metrics"]["ndcg@10"], abs=0)

    # 2. `reranker-skill evaluate` on a run folder whose held-out queries are these dev queries: it scores the student itself.
    other = tmp_path / "as_heldout"
    other.mkdir()
    candidates = pq.read_table(run / "dev_candidates.parquet")
    pq.write_table(candidates.filter(np.isin(candidates["query_id"].to_numpy(zero_copy_only=False), queries)), other / "heldout_candidates.parquet")
    (other / "qrels_heldout.json").write_text(json.dumps({q: qrels_all[q] for q in queries}))
    shutil.copytree(run / "student", other / "student")
    record_stages(other, "mine", "train")  # as if mine and train had written these files (the run-folder contract)
    code, report = run_json("evaluate", "--run", other, "--skip-base", "--resamples", "100")
    assert code in (0, 7), report["errors"]
    systems = json.loads((other / "report.json").read_text())["systems"]
    assert systems["student"]["metrics"]["ndcg@10"]["mean"] == pytest.approx(check["student"]["ndcg@10"], abs=1e-6)
    assert systems["first stage"]["metrics"]["ndcg@10"]["mean"] == pytest.approx(check["first_stage"]["ndcg@10"], abs=1e-12)
    fused = next(v for k, v in systems.items() if v["kind"] == "fused")
    assert fused["metrics"]["ndcg@10"]["mean"] == pytest.approx(check["fusion"]["ndcg@10"], abs=1e-6)


def test_smoke_never_crashes_on_the_recommended_small_budget_settings(run, tiny_base):
    """Issue 14: one smoke step on the quickstart's settings (warm-up 3 % of a 1-step plan crashed the old learning-rate lambda)."""
    import yaml
    from conftest import REPO

    settings = yaml.safe_load((REPO / "recipes" / "cpu-offline.yaml").read_text())["train"]
    render(run, TrainConfig.model_validate({**settings, "base": str(tiny_base), "max_seq_length": 48, "eval_queries": 4}))
    code, payload = run_json("train", "--run", run, "--smoke")
    assert code == 0, payload
    assert payload["metrics"]["global_step"] == 1 and payload["metrics"]["smoke"] is True and payload["metrics"]["dev_check_line"].startswith("DEV CHECK: ")
    assert (run / "smoke" / "student" / "modules.json").exists() and not (run / "student").exists()  # never clobbers a real result
    assert json.loads((run / "manifest.json").read_text())["stages"]["train_smoke"]["status"] == "ok"
    # A full run of one step whose warm-up is nearly all of it, on the time-budget schedule.
    code, payload = run_json("train", "--run", run, "--base", tiny_base, "--max-steps", "1", "--warmup-ratio", "0.99", "--max-minutes", "5", "--force", *FAST)
    assert code == 0 and payload["metrics"]["global_step"] == 1, payload


def test_a_failed_smoke_says_to_fix_and_rerun_the_smoke_and_that_works(run, tiny_base, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    render(run, TrainConfig(base=str(broken), max_seq_length=48, per_device_batch=8, global_batch=16, eval_queries=4))
    code, payload = run_json("train", "--run", run, "--smoke")
    fix = payload["errors"][0]["fix"]
    assert code == 6 and fix.endswith(f"then rerun the smoke: `reranker-skill train --run {run} --smoke`") and "--resume" not in fix
    render(run, TrainConfig(base=str(tiny_base), max_seq_length=48, per_device_batch=8, global_batch=16, eval_queries=4), force=True)  # the fix
    code, payload = run_json("train", "--run", run, "--smoke")  # and the rerun the fix names
    assert code == 0, payload


def test_a_budgeted_run_bounds_its_time_evaluates_on_the_clock_and_resumes_as_finished(run, tiny_base):
    """--max-minutes ends a long step plan; evaluation happens on the clock; --resume then trains nothing more, same student."""
    from safetensors.numpy import load_file

    budget_minutes = 0.4
    cfg = TrainConfig(
        base=str(tiny_base), max_minutes=budget_minutes, epochs=50, eval_every=0.5, max_seq_length=48, per_device_batch=8, global_batch=8, eval_queries=4
    )
    render(run, cfg.model_copy(update={"early_stopping_patience": 0}))
    code, first = run_json("train", "--run", run)
    assert code == 0, first
    result = json.loads((run / "train_result.json").read_text())
    assert result["ended_by"] == "time budget" and result["global_step"] < result["planned_steps"]
    assert result["seconds"] <= budget_minutes * 60 * 1.25, result["seconds"]  # the script after its imports: loading, baseline, training, save
    state = json.loads((run / "checkpoints" / f"checkpoint-{result['global_step']}" / "trainer_state.json").read_text())
    evals = [h["step"] for h in state["log_history"] if "eval_dev_ndcg@10" in h]
    assert len(evals) >= 2 and evals[0] < result["global_step"]  # a mid-run evaluation on the clock, and one at the end
    assert state["stateful_callbacks"]["Progress"]["args"]["spent"] >= state["stateful_callbacks"]["Progress"]["args"]["allowed"]
    weights = load_file(str(run / "student" / "model.safetensors"))
    scores = pq.read_table(run / "student_dev_scores.parquet")["score"].to_numpy()
    log_before = (run / "train_log.txt").read_text()

    code, resumed = run_json("train", "--run", run, "--resume")
    assert code == 0, resumed
    again = json.loads((run / "train_result.json").read_text())
    assert again["global_step"] == result["global_step"] and again["resumed_from"].endswith(f"checkpoint-{result['global_step']}")
    assert again["throughput"]["steps"] == 0 and again["ended_by"] == "time budget"
    resumed_log = (run / "train_log.txt").read_text()[len(log_before) :]
    assert "ended training (its plan, budget or early stopping)" in resumed_log and "step " not in resumed_log.replace("no further step", "")
    after = load_file(str(run / "student" / "model.safetensors"))
    assert after.keys() == weights.keys() and all(np.array_equal(after[k], weights[k]) for k in weights)
    assert np.array_equal(pq.read_table(run / "student_dev_scores.parquet")["score"].to_numpy(), scores)


def test_kill_during_training_then_resume_finishes(run, tiny_base):
    # A less common configuration on purpose: listwise loss, centred labels, mean pooling, a linear head with its own lr.
    cfg = TrainConfig(
        base=str(tiny_base),
        loss="listnet",
        list_size=4,
        label_transform="centred",
        pooling="mean",
        head="linear",
        head_lr_multiplier=10.0,
        max_steps=12,
        eval_every=4,
        max_seq_length=64,
        per_device_batch=8,
        global_batch=8,
        eval_queries=4,
        early_stopping_patience=0,
    )
    render(run, cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(run / "train.py")], cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None, "training ended before the first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let the checkpoint finish writing
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run / "train_result.json").exists()

    code, payload = run_json("train", "--run", run, "--resume")
    assert code == 0, payload
    m = payload["metrics"]
    assert m["global_step"] == 12 and m["resumed"] is True and m["dev_check"] in ("WIN", "MARGINAL", "REGRESSION")
    log = (run / "train_log.txt").read_text()
    assert "start: " in log and "checkpoint-" in log and log.rstrip().endswith(m["dev_check_line"])
    result = json.loads((run / "train_result.json").read_text())
    assert result["resumed_from"] and int(result["resumed_from"].rsplit("-", 1)[1]) >= 4


def test_resume_after_the_last_checkpoint_finishes_without_an_extra_step(run, tiny_base):
    """A kill between the final checkpoint and train_result.json: --resume must not train a step past the plan."""
    render(
        run,
        TrainConfig(
            base=str(tiny_base), max_steps=6, eval_every=3, max_seq_length=64, per_device_batch=8, global_batch=8, eval_queries=4, early_stopping_patience=0
        ),
    )
    code, first = run_json("train", "--run", run)
    assert code == 0 and first["metrics"]["global_step"] == 6 and (run / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists()
    original = json.loads((run / "train_result.json").read_text())
    (run / "train_result.json").unlink()

    code, payload = run_json("train", "--run", run, "--resume")
    assert code == 0, payload
    result = json.loads((run / "train_result.json").read_text())
    assert result["global_step"] == 6 and result["resumed_from"].endswith("checkpoint-6") and result["throughput"]["steps"] == 0
    assert result["best_checkpoint"] == original["best_checkpoint"]
    assert result["dev_check"]["student"]["ndcg@10"] == pytest.approx(original["dev_check"]["student"]["ndcg@10"])  # the best checkpoint, loaded back


def test_the_gold_lift_guard_warns_and_its_advice_works_when_followed(run, tiny_base):
    """Issue 14: candidates the teacher scores at or above the gold positive are left out of a lift; the warning's advice works."""
    _scores_with_planted_false_negatives(run, share=0.6)
    args = ["--base", tiny_base, "--gold-positives", "lift", "--max-seq-length", "48", "--per-device-batch", "8", "--global-batch", "16", "--eval-queries", "4"]
    proc = run_cli("train", "--run", run, "--smoke", *args, "--json")
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    advice = [w for w in payload["warnings"] if "false-negative guard" in w]
    assert len(advice) == 1 and advice[0].endswith("--gold-positives none") and "false-negative guard: " in proc.stderr
    proc = run_cli("train", "--run", run, "--smoke", *args[:2], "--gold-positives", "none", *args[4:], "--json")  # follow it
    payload = json.loads(proc.stdout)
    assert proc.returncode == 0 and not [w for w in payload["warnings"] if "guard" in w] and "false-negative guard" not in proc.stderr
    rows = pq.read_metadata(run / "scores.parquet").num_rows
    assert f"data: {rows:,} of {rows:,} scored pairs" in proc.stderr and payload["metrics"]["global_step"] == 1


def test_without_a_dev_split_checkpoints_are_chosen_on_heldout_with_a_warning(run, tiny_base):
    """A run folder from before dev splits (or a hand-made one): training still works and says what that costs."""
    (run / "dev_candidates.parquet").unlink()
    (run / "qrels_dev.json").unlink()
    record_stages(run, "mine", "score")  # a folder mined without dev queries
    render(
        run,
        TrainConfig(
            base=str(tiny_base), max_steps=2, eval_every=2, max_seq_length=64, per_device_batch=8, global_batch=8, eval_queries=6, early_stopping_patience=0
        ),
    )
    proc = run_cli("train", "--run", run, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run / "train_result.json").read_text())
    assert result["selection_split"] == "heldout" and result["dev_check"]["fusion"]["split"] == "heldout" and result["dev_check"]["queries"] == 6
    payload = json.loads(proc.stdout)
    assert "no dev queries in this run folder" in proc.stderr and "on 6 heldout queries" in payload["metrics"]["dev_check_line"]
    assert any("no dev queries" in w for w in payload["warnings"])


def test_train_without_scores_is_a_clear_missing_prerequisite(tmp_path, tiny_base):
    code, payload = run_json("train", "--run", tmp_path / "empty", "--base", tiny_base)
    assert code == 4 and "scores.parquet" in payload["errors"][0]["message"] and "score" in payload["errors"][0]["fix"]
