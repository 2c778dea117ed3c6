"""Issue 4: `train` runs the rendered script on the tiny ModernBERT from a real scores table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, run_json

from skill.config import TrainConfig
from skill.render import render
from skill.testing import record_stages

FAST = ["--max-seq-length", "64", "--per-device-batch", "8", "--global-batch", "16", "--eval-queries", "8"]


@pytest.fixture
def run(toy_scored_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(toy_scored_run, target)
    return target


def test_train_end_to_end_verdict_identity_raw_scores(run, tiny_base):
    import torch
    from sentence_transformers import CrossEncoder

    proc = run_cli("train", "--run", run, "--base", tiny_base, "--max-steps", "4", "--eval-every", "2", "--learning-rate", "1e-3", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    m = payload["metrics"]
    verdict_lines = [line for line in proc.stderr.splitlines() if line.startswith("VERDICT: ")]  # live progress went to stderr
    assert len(verdict_lines) == 1 and verdict_lines[0] == m["verdict_line"]
    assert m["verdict"] in ("WIN", "MARGINAL", "REGRESSION") and f"ndcg@10={m['ndcg@10']:.4f}" in m["verdict_line"]
    assert f"baseline={m['baseline_ndcg@10']:.4f}" in m["verdict_line"] and f"delta={m['delta']:+.4f}" in m["verdict_line"]
    assert m["global_step"] == 4 and m["effective_global_batch"] == 16 and m["train_pairs_per_second"] > 0
    assert "step 2/4 eval" in proc.stderr and "baseline (student before training)" in proc.stderr
    assert (run / "train_log.txt").read_text().rstrip().endswith(m["verdict_line"])  # the log is tee'd

    result = json.loads((run / "train_result.json").read_text())
    # The verdict is against the stronger of the untrained student and the first stage.
    assert result["first_stage"] is not None and f"first_stage={result['first_stage']['ndcg@10']:.4f}" in m["verdict_line"]
    decisive = min(result["delta"], result["delta_first_stage"])
    assert result["verdict"] == ("WIN" if decisive >= 0.01 else "REGRESSION" if decisive <= -0.01 else "MARGINAL")
    assert result["model_dir"] == "student" and result["best_checkpoint"].endswith(("checkpoint-2", "checkpoint-4"))
    # Checkpoints and the fusion weight are chosen on dev queries: training queries kept out of training.
    split = json.loads((run / "split.json").read_text())
    assert result["selection_split"] == "dev" and result["eval_queries"] == len(split["dev"]) == 8 and "on 8 dev queries" in m["verdict_line"]
    assert not set(split["dev"]) & {r["query_id"] for r in pq.read_table(run / "scores.parquet", columns=["query_id"]).to_pylist()}
    fusion = result["fusion"]
    by_alpha = fusion["ndcg@10_by_alpha"]
    assert len(by_alpha) == 11 and fusion["chosen_on"] == 8 and fusion["split"] == "dev"
    assert by_alpha["0"] == pytest.approx(result["first_stage"]["ndcg@10"], abs=1e-9)  # alpha 0: the first stage, as the evaluator scored it
    assert by_alpha["1"] == pytest.approx(result["best"]["ndcg@10"], abs=1e-6)  # alpha 1: the student alone
    assert fusion["ndcg@10"] == max(by_alpha.values()) and by_alpha[f"{fusion['alpha']:g}"] == fusion["ndcg@10"]
    assert json.loads((run / "student" / "fusion.json").read_text()) == fusion and m["fusion_alpha"] == fusion["alpha"]
    assert result["batch"]["gradient_accumulation"] == 2 and result["device"] == {"device": "cpu", "bf16": False, "attn_implementation": "sdpa"}
    record = json.loads((run / "manifest.json").read_text())["stages"]["train"]
    assert record["status"] == "ok" and record["metrics"]["verdict"] == m["verdict"] and record["outputs"]["student"] == "student"
    card = (run / "student" / "README.md").read_text()
    assert "toy-lexical-teacher" in card and "mse" in card and f"{m['ndcg@10']:.4f}" in card

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
    sigmoid = torch.sigmoid(torch.tensor(raw)).tolist()
    assert sorted(r["score"] for r in ranked) != pytest.approx(sorted(sigmoid), abs=1e-3)  # not squashed

    # Same script, same data: skipped without a subprocess.
    code, again = run_json("train", "--run", run)
    assert code == 0 and again["metrics"]["skipped"] is True and any("up to date" in w for w in again["warnings"])


def test_smoke_runs_one_step_under_smoke(run, tiny_base):
    render(
        run,
        TrainConfig(base=str(tiny_base), loss="margin-mse", label_transform="centred", max_seq_length=64, per_device_batch=8, global_batch=64, eval_queries=8),
    )
    code, payload = run_json("train", "--run", run, "--smoke")
    assert code == 0, payload
    assert payload["metrics"]["global_step"] == 1 and payload["metrics"]["smoke"] is True
    assert (run / "smoke" / "student" / "modules.json").exists() and not (run / "student").exists()  # never clobbers a real result
    assert json.loads((run / "manifest.json").read_text())["stages"]["train_smoke"]["status"] == "ok"


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
    assert m["global_step"] == 12 and m["resumed"] is True and m["verdict"] in ("WIN", "MARGINAL", "REGRESSION")
    log = (run / "train_log.txt").read_text()
    assert "resuming from" in log and "checkpoint-" in log and log.rstrip().endswith(m["verdict_line"])
    result = json.loads((run / "train_result.json").read_text())
    assert result["resumed_from"] and int(result["resumed_from"].rsplit("-", 1)[1]) >= 4
    assert result["baseline"]["ndcg@10"] == pytest.approx(m["baseline_ndcg@10"])  # the baseline was kept, not re-measured


def test_resume_after_the_last_checkpoint_finishes_without_an_extra_step(run, tiny_base):
    """A kill between the final checkpoint and train_result.json: --resume must not train a step past the plan."""
    render(run, TrainConfig(base=str(tiny_base), max_steps=6, eval_every=3, max_seq_length=64, per_device_batch=8, global_batch=8, eval_queries=4, early_stopping_patience=0))
    code, first = run_json("train", "--run", run)
    assert code == 0 and first["metrics"]["global_step"] == 6 and (run / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists()
    original = json.loads((run / "train_result.json").read_text())
    (run / "train_result.json").unlink()

    code, payload = run_json("train", "--run", run, "--resume")
    assert code == 0, payload
    result = json.loads((run / "train_result.json").read_text())
    assert result["global_step"] == 6 and result["resumed_from"].endswith("checkpoint-6")
    assert result["best_checkpoint"] == original["best_checkpoint"]
    assert result["best"]["ndcg@10"] == pytest.approx(original["best"]["ndcg@10"])  # the best checkpoint, loaded back


def test_without_a_dev_split_checkpoints_are_chosen_on_heldout_with_a_warning(run, tiny_base):
    """A run folder from before dev splits (or a hand-made one): training still works and says what that costs."""
    (run / "dev_candidates.parquet").unlink()
    (run / "qrels_dev.json").unlink()
    record_stages(run, "mine", "score")  # a folder mined without dev queries
    render(run, TrainConfig(base=str(tiny_base), max_steps=2, eval_every=2, max_seq_length=64, per_device_batch=8, global_batch=8, eval_queries=6, early_stopping_patience=0))
    proc = run_cli("train", "--run", run, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run / "train_result.json").read_text())
    assert result["selection_split"] == "heldout" and result["fusion"]["split"] == "heldout" and result["eval_queries"] == 6
    assert "no dev queries in this run folder" in proc.stderr and "on 6 heldout queries" in json.loads(proc.stdout)["metrics"]["verdict_line"]


def test_train_without_scores_is_a_clear_missing_prerequisite(tmp_path, tiny_base):
    code, payload = run_json("train", "--run", tmp_path / "empty", "--base", tiny_base)
    assert code == 4 and "scores.parquet" in payload["errors"][0]["message"] and "score" in payload["errors"][0]["fix"]
