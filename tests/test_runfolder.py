"""Issue 12: the run-folder contract — every refusal, its exit code and its fix (followed, then the command succeeds),
paths resolved against the caller's folder, export never deleting its source, the umask, and faults that keep work.

Kills at file boundaries are in tests/test_transactions.py; here each class is produced directly (a file edited
by hand, a stage rerun out of order, a forced out-of-memory) and the real command is run on it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import test_transactions
from conftest import CLI, rendered_constants, run_cli
from test_transactions import MINE_FLAGS, _fresh_copy, follow_fix, heldout_never_trained, mine_args, record, score_cfg

from skill.config import EvaluateConfig, ScoreConfig, TeacherSpec
from skill.errors import ExitCode, SkillError
from skill.testing import record_stages

tiny = test_transactions.tiny  # the same module-scoped fixture: 40 docstring queries and two scores-file teachers


@pytest.fixture(scope="module")
def scored(tiny, tmp_path_factory) -> Path:
    """mine (seed 12) + score (teacher A), through the CLI."""
    run = tmp_path_factory.mktemp("scored") / "run"
    assert run_cli(*mine_args(tiny, run, 12)).returncode == 0
    assert run_cli("score", "--run", run, "--teacher", tiny["teachers"]["A"], "--teacher-type", "file").returncode == 0
    return run


def _refused(fn, code: ExitCode, message: str) -> SkillError:
    with pytest.raises(SkillError) as err:
        fn()
    assert err.value.code == code and message in err.value.message, err.value.line()
    assert err.value.fix and "reranker-skill" in err.value.fix
    return err.value


def _score(tiny, run, teacher="A"):
    from skill.score import score

    return score(run, score_cfg(tiny["teachers"][teacher]))


TEACHER_A = lambda tiny: ["--teacher", tiny["teachers"]["A"], "--teacher-type", "file"]  # noqa: E731


# --------------------------------------------------------------------------------------------- refusals


def test_score_without_mine_is_exit_4_and_the_fix_works(cli, tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    err = _refused(lambda: _score(tiny, run), ExitCode.MISSING_RESOURCE, "`score` needs split.json from `mine`, which has not run in this folder")
    follow_fix(cli, err, run, {"mine": mine_args(tiny, run, 12)[3:]})
    _score(tiny, run)
    heldout_never_trained(run)


def test_an_output_edited_after_its_stage_is_refused(cli, tiny, scored, tmp_path):
    """train_pairs.parquet rewritten by hand (one row dropped) after `mine`: `score` refuses (exit 5); `mine --force` rewrites it."""
    run = _fresh_copy(scored, tmp_path / "run")
    table = pq.read_table(run / "train_pairs.parquet")
    pq.write_table(table.slice(1), run / "train_pairs.parquet")
    err = _refused(lambda: _score(tiny, run), ExitCode.INVALID_INPUT, "train_pairs.parquet changed after `mine` wrote it")
    follow_fix(cli, err, run, {"mine": mine_args(tiny, run, 12)[3:]})
    assert pq.read_table(run / "train_pairs.parquet").num_rows == table.num_rows
    _score(tiny, run)


def test_the_corpus_changed_after_mine_is_refused_by_score(cli, tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["corpus"].parent, data)
    local = {**tiny, "corpus": data / tiny["corpus"].name, "queries": data / tiny["queries"].name, "qrels": data / tiny["qrels"].name}
    run = tmp_path / "run"
    assert run_cli(*mine_args(local, run, 12)).returncode == 0
    rows = [json.loads(line) for line in local["corpus"].read_text().splitlines()]
    rows[0]["text"] += " (revised)"
    local["corpus"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = _refused(lambda: _score(tiny, run), ExitCode.INVALID_INPUT, "the corpus file changed after `mine` read it")
    assert err.where == str(local["corpus"].resolve())
    follow_fix(cli, err, run, {"mine": mine_args(local, run, 12)[3:]})
    _score(tiny, run)
    # A data file that is gone cannot be checked: a warning, not a refusal (score does not read it).
    local["qrels"].unlink()
    again = _score(tiny, run)
    assert any("qrels" in w and "is gone" in w for w in again.warnings)


def test_a_stage_rerun_upstream_makes_its_consumers_stale(cli, tiny, scored, tiny_reranker, tmp_path):
    """`mine` again with another seed after `score`: the teacher tables describe the old candidates, so `evaluate` and `train` refuse."""
    from skill.evaluate import evaluate
    from skill.train import train

    run = _fresh_copy(scored, tmp_path / "run")
    assert cli(*mine_args(tiny, run, 99), "--force").returncode == 0
    err = _refused(
        lambda: evaluate(run, EvaluateConfig(student=str(tiny_reranker), resamples=100, skip_base=True)),
        ExitCode.INVALID_INPUT,
        "`score`'s outputs were made from an older train_pairs.parquet (`mine` ran again after `score`)",
    )
    _refused(lambda: train(run), ExitCode.INVALID_INPUT, "`score`'s outputs were made from an older")
    follow_fix(cli, err, run, {"score": TEACHER_A(tiny)})
    evaluate(run, EvaluateConfig(student=str(tiny_reranker), resamples=100, skip_base=True))
    heldout_never_trained(run)


def test_a_split_that_contradicts_the_training_pairs_is_refused(cli, tiny, scored, tmp_path):
    """The last guard: split.json naming a training query as held out (recorded as if mine wrote it) — score refuses, mine --force repairs."""
    run = _fresh_copy(scored, tmp_path / "run")
    split = json.loads((run / "split.json").read_text())
    moved = split["train"].pop(0)
    split["heldout"].append(moved)
    (run / "split.json").write_text(json.dumps(split))
    record_stages(run, "mine")
    err = _refused(lambda: _score(tiny, run), ExitCode.INVALID_INPUT, "held-out queries of split.json are in train_pairs.parquet")
    follow_fix(cli, err, run, {"mine": mine_args(tiny, run, 12)[3:]})
    _score(tiny, run)
    heldout_never_trained(run)


def test_a_record_without_output_hashes_is_refused(cli, tiny, scored, tmp_path):
    """A `mine` record written before outputs were hashed (or by hand) vouches for nothing."""
    run = _fresh_copy(scored, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["mine"]["output_hashes"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    err = _refused(lambda: _score(tiny, run), ExitCode.INVALID_INPUT, "`mine`'s record does not list split.json with its hash")
    follow_fix(cli, err, run, {"mine": mine_args(tiny, run, 12)[3:]})
    _score(tiny, run)


def test_a_manifest_off_the_contract_is_one_clear_line(cli, tiny, scored, tmp_path):
    run = _fresh_copy(scored, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["mine"]["status"] = "done"
    (run / "manifest.json").write_text(json.dumps(manifest))
    proc = cli("score", "--run", run, *TEACHER_A(tiny))
    assert proc.returncode == 5 and "manifest.json does not match the run-folder contract (stages.mine.status" in proc.stderr and "Traceback" not in proc.stderr
    assert "fix: start a new run folder (--run runs/NEW_NAME)" in proc.stderr
    new = tmp_path / "new"
    assert cli(*mine_args(tiny, new, 12)).returncode == 0 and cli("score", "--run", new, *TEACHER_A(tiny)).returncode == 0


# --------------------------------------------------------------------------------------------- faults


def test_out_of_memory_on_one_pair_keeps_every_committed_chunk_and_records_failed(cli, tiny, scored, tiny_reranker, tmp_path, monkeypatch):
    """7 chunks committed, then a pair that does not fit: the error deletes nothing (7 → 7), `score` is recorded failed,
    `train` refuses, and the rerun (the fix) scores only what is left."""
    import torch

    import skill.score as score_module

    run = _fresh_copy(scored, tmp_path / "run")
    cfg = ScoreConfig(teachers=[TeacherSpec(model=str(tiny_reranker))], chunk_size=8, batch_size=4, max_length=64)
    served = []
    load_teacher = score_module.load_teacher

    def load_that_runs_out(spec, **kwargs):
        teacher = load_teacher(spec, **kwargs)
        forward = teacher.model.forward

        def forward_or_oom(features, *args, **kw):
            if sum(served) >= 7 * 8:  # after seven chunks of 8, nothing fits any more
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            served.append(int(features["input_ids"].shape[0]))
            return forward(features, *args, **kw)

        teacher.model.forward = forward_or_oom
        return teacher

    monkeypatch.setattr(score_module, "load_teacher", load_that_runs_out)
    with pytest.raises(SkillError) as err:
        score_module.score(run, cfg, force=True)
    assert err.value.code == ExitCode.RUNTIME_FAILURE and "out of memory on a single pair" in err.value.message
    chunks = sorted(run.glob("score_work/*/chunk-*.npy"))
    assert len(chunks) == 7
    failed = record(run, "score")
    assert failed["status"] == "failed" and "out of memory on a single pair" in failed["error"]
    from skill.train import train

    refusal = _refused(lambda: train(run), ExitCode.INVALID_INPUT, "the last `score` failed (out of memory on a single pair")
    monkeypatch.setattr(score_module, "load_teacher", load_teacher)  # the memory is back
    follow_fix(cli, refusal, run, {"score": ["--teacher", tiny_reranker, "--chunk-size", "8", "--batch-size", "4", "--max-length", "64"]})
    done = record(run, "score")
    assert done["status"] == "ok" and done["metrics"]["chunks_scored"] == done["metrics"]["chunks_total"] - 7
    assert all(p.exists() for p in chunks)


# --------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("command", ["mine", "score", "render", "train", "evaluate", "export", "quickstart"])
def test_an_empty_run_folder_is_refused_before_anything_is_written(cli, tiny, tmp_path, monkeypatch, command):
    """`--run ""` would be the current folder: a user's split.json there used to be overwritten."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "split.json").write_text("my own file\n")
    args = {
        "mine": ["--corpus", tiny["corpus"], "--queries", tiny["queries"], "--qrels", tiny["qrels"], *MINE_FLAGS],
        "score": TEACHER_A(tiny),
        "export": ["--model", "somewhere"],
    }.get(command, [])
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli(command, "--run", "", *args)
    assert proc.returncode == ExitCode.USAGE and "the run folder is empty" in proc.stderr and "--run runs/NAME" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "split.json").read_text() == "my own file\n"
    code, payload = run_cli_json(command, "--run", "  ", *args, cwd=tmp_path)
    assert code == 2 and payload["errors"][0]["fix"] == "name a run folder, e.g. --run runs/NAME"
    if command == "mine":  # the fix, followed
        assert cli(command, "--run", "runs/NAME", *args).returncode == 0 and (tmp_path / "runs" / "NAME" / "split.json").exists()


def run_cli_json(*args, cwd: Path) -> tuple[int, dict]:
    proc = run_cli(*args, "--json", cwd=cwd)
    return proc.returncode, json.loads(proc.stdout)


def test_an_empty_run_in_a_recipe_is_refused(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "run: runs/r\nstages: [mine]\n"
        f"data: {{corpus: {tiny['corpus']}, queries: {tiny['queries']}, qrels: {tiny['qrels']}}}\n"
        "mine: {retriever: bm25, train_top_k: 4, eval_top_k: 4, dev_queries: 2}\n"
    )
    proc = cli("run", recipe, "--set", "run=")
    assert proc.returncode == ExitCode.USAGE and "the run folder is empty" in proc.stderr and "fix: name a run folder: --set run=runs/NAME" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    assert cli("run", recipe, "--set", "run=runs/NAME").returncode == 0 and (tmp_path / "runs" / "NAME" / "train_pairs.parquet").exists()
    recipe.write_text(recipe.read_text().replace("run: runs/r", 'run: ""'))
    proc = cli("run", recipe)
    assert proc.returncode == ExitCode.INVALID_INPUT and "run: " in proc.stderr and "the run folder is empty" in proc.stderr


@pytest.mark.slow
def test_a_relative_base_is_resolved_against_the_callers_folder(toy_scored_run, tiny_base, tmp_path):
    """`train --base models/tiny` from the folder that holds models/: train.py runs inside the run folder, so the
    rendered BASE must be absolute (it was pasted as given, and training failed with "Check your internet connection")."""
    work = tmp_path / "work"
    shutil.copytree(tiny_base, work / "models" / "tiny")
    shutil.copytree(toy_scored_run, work / "runs" / "r")
    flags = ["--base", "models/tiny", "--max-steps", "1", "--global-batch", "8", "--per-device-batch", "8", "--max-seq-length", "32", "--eval-queries", "2"]
    proc = run_cli("train", "--run", "runs/r", *flags, "--smoke", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = (work / "runs" / "r" / "train.py").read_text()
    assert rendered_constants(script)["BASE"] == str((work / "models" / "tiny").resolve())
    assert json.loads((work / "runs" / "r" / "manifest.json").read_text())["stages"]["train_smoke"]["status"] == "ok"


@pytest.mark.slow
def test_export_never_replaces_a_folder_that_holds_its_model(cli, tiny_reranker, tmp_path):
    """The model sits inside an earlier export used as --out: replacing --out would delete the model."""
    earlier = tmp_path / "exported"
    assert cli("export", "--model", tiny_reranker, "--out", earlier, "--queries", "2", "--depth", "4").returncode == 0
    model = earlier / "my-model"
    shutil.copytree(tiny_reranker, model)
    digest = sorted((p.name, p.read_bytes()) for p in model.rglob("*") if p.is_file())
    proc = cli("export", "--model", model, "--out", earlier, "--queries", "2", "--depth", "4")
    assert proc.returncode == ExitCode.INVALID_INPUT and "--out contains the model being exported" in proc.stderr
    assert sorted((p.name, p.read_bytes()) for p in model.rglob("*") if p.is_file()) == digest
    assert "fix: choose an --out that does not contain" in proc.stderr
    proc = cli("export", "--model", model, "--out", tmp_path / "beside", "--queries", "2", "--depth", "4")  # the fix
    assert proc.returncode == 0 and (tmp_path / "beside" / "onnx" / "model.onnx").exists()
    assert (earlier / "parity.json").exists() and model.is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tiny, tmp_path, umask):
    """mkstemp made every file 0600 whatever the umask; now files are 0666 & ~umask and folders 0777 & ~umask."""
    run = tmp_path / "run"
    proc = subprocess.run([*CLI, *map(str, mine_args(tiny, run, 12))], capture_output=True, text=True, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    for name in ("manifest.json", "split.json", "train_pairs.parquet", "heldout_candidates.parquet", "qrels_heldout.json", "mine.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name
    from skill.io import make_temp_dir, write_json

    old = os.umask(umask)
    try:
        folder = make_temp_dir(tmp_path, prefix=".x.")
        written = write_json(tmp_path / "f.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask and stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask


def test_tables_written_by_hand_through_the_contract_helper_are_accepted(tiny, scored, tmp_path):
    """skill.testing.record_stages (for fixtures that cut a run down) records a chain the stages accept."""
    run = _fresh_copy(scored, tmp_path / "run")
    for name in ("train_pairs.parquet", "heldout_candidates.parquet"):
        pq.write_table(pq.read_table(run / name).slice(0, 20), run / name)
    with pytest.raises(SkillError):
        _score(tiny, run)
    record_stages(run, "mine")
    result = _score(tiny, run, "B")
    assert result.metrics["pairs"] == 20
