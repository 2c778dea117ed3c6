"""Issue 7, reliability: faults — kill -9 at random points, a full disk, out of memory.

`score`, `train` and `evaluate` are killed (SIGKILL to the whole process group, as a scheduler
does) at seeded random points, then rerun: the stage resumes, committed work is kept, and the
final artifacts equal an uninterrupted run's. A full disk (a tiny tmpfs) gives one clear line,
exit 6 and no file half-written under a final name. An out-of-memory forward pass halves the
batch and scoring finishes with the same scores. Everything runs on the tiny ModernBERT.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO

from skill.config import DataConfig, EvaluateConfig, MineConfig, ScoreConfig, TeacherSpec, TrainConfig
from skill.errors import ExitCode, SkillError
from skill.testing import record_stages

TOKEN = "hf_ReLiAbIlItYsEcReT9876543210fedcba"
SCORE_FLAGS = ["--chunk-size", "8", "--batch-size", "4", "--max-length", "128"]


def _spawn(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _kill(proc: subprocess.Popen, *, group: bool = True) -> bool:
    """SIGKILL the process group (a scheduler's kill), or the command's process alone (`kill -9 PID`); True when it was running."""
    alive = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None:
        assert time.time() < deadline, "timed out waiting for the kill point"
        time.sleep(0.01)


def _same_table(a: Path, b: Path) -> bool:
    return pq.read_table(a).to_pandas().equals(pq.read_table(b).to_pandas())


def _message_lines(proc) -> list[str]:
    """What the command said, less progress bars (tqdm redraws; a terminal shows them as one transient line)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and not re.search(r"\d+%\|", line)]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def _not_recorded_ok(run: Path, stage: str, *, before: bytes | None) -> bool:
    """After a failure: the manifest as it was (the disk refused even the `running` record), or the stage recorded failed."""
    now = (run / "manifest.json").read_bytes() if (run / "manifest.json").exists() else None
    return now == before or json.loads(now)["stages"][stage]["status"] == "failed"


# --------------------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def mined(stdlib_domain, tmp_path_factory) -> Path:
    """A mined run cut to 80 training + 80 held-out rows (~150 unique pairs, ~19 chunks of 8)."""
    from skill.mine import mine

    base = tmp_path_factory.mktemp("reliability")
    mine(
        base / "full",
        DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"]),
        MineConfig(retriever="bm25", train_top_k=6, eval_top_k=6),
    )
    dest = base / "mined"
    shutil.copytree(base / "full", dest, ignore=shutil.ignore_patterns("*.parquet", "cache"))
    for name in ("train_pairs.parquet", "heldout_candidates.parquet"):
        pq.write_table(pq.read_table(base / "full" / name).slice(0, 80), dest / name)
    record_stages(dest, "mine")  # the cut tables, recorded as mine's outputs
    return dest


def _score_cfg(teacher: Path) -> ScoreConfig:
    return ScoreConfig(teachers=[TeacherSpec(model=str(teacher))], chunk_size=8, batch_size=4, max_length=128)


@pytest.fixture(scope="module")
def score_ref(mined, tiny_reranker, tmp_path_factory) -> tuple[Path, int]:
    from skill.score import score

    ref = tmp_path_factory.mktemp("score-ref") / "run"
    shutil.copytree(mined, ref)
    result = score(ref, _score_cfg(tiny_reranker))
    return ref, result.metrics["chunks_total"]


def _chunks(run: Path) -> list[Path]:
    return sorted(run.glob("score_work/*/chunk-*.npy"))


@pytest.mark.parametrize(("seed", "phase"), [(1, "mid-chunks"), (2, "anytime"), (3, "writing-tables")])
def test_kill_score_at_a_random_point_then_resume(mined, score_ref, tiny_reranker, tmp_path, seed, phase):
    from skill.score import score

    ref, total = score_ref
    rng = random.Random(seed)
    run = tmp_path / "run"
    shutil.copytree(mined, run)
    proc = _spawn("score", "--run", run, "--teacher", tiny_reranker, *SCORE_FLAGS)
    if phase == "mid-chunks":
        k = rng.randint(1, total - 2)
        _wait_for(lambda: len(_chunks(run)) >= k, proc)
        time.sleep(rng.uniform(0, 0.03))
    elif phase == "anytime":
        time.sleep(rng.uniform(0.3, 6.0))  # imports, model load, the plan or the chunks
    else:
        _wait_for(lambda: len(_chunks(run)) >= total, proc)
        time.sleep(rng.uniform(0, 0.15))  # assembling, writing the tables or recording the manifest
    _kill(proc)

    # What the kill left: committed chunks are whole; a table under its final name is complete.
    committed = _chunks(run)
    sizes = {}
    for p in committed:
        arr = np.load(p)
        sizes[p.name] = len(arr)
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert all(n == 8 for name, n in sizes.items() if name != f"chunk-{total - 1:06d}.npy")
    for name in ("scores.parquet", "heldout_scores.parquet"):
        if (run / name).exists():
            pq.read_table(run / name)
    json.loads((run / "manifest.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in committed}

    resumed = score(run, _score_cfg(tiny_reranker))
    if not resumed.metrics.get("skipped"):
        assert resumed.metrics["chunks_scored"] == total - len(committed)  # only what was missing
    for p in committed:
        assert p.stat().st_mtime_ns == stamps[p.name]  # committed work was kept, not redone
    for name in ("scores.parquet", "heldout_scores.parquet"):
        assert _same_table(run / name, ref / name)
    meta, ref_meta = (json.loads((r / "scores.meta.json").read_text()) for r in (run, ref))
    assert meta["label_stats"] == ref_meta["label_stats"] and meta["per_query"] == ref_meta["per_query"]
    assert json.loads((run / "manifest.json").read_text())["stages"]["score"]["status"] == "ok"


def test_out_of_memory_halves_the_batch_and_gives_the_same_scores(mined, score_ref, tiny_reranker, tmp_path, monkeypatch):
    """The teacher's forward pass raises torch.OutOfMemoryError above 3 pairs; the code under test is score.py's halving."""
    import torch

    import skill.score as score_module

    ref, _ = score_ref
    limit, served, refused = 3, [], []
    load_teacher = score_module.load_teacher

    def load_with_small_memory(spec, **kwargs):
        teacher = load_teacher(spec, **kwargs)
        forward = teacher.model.forward

        def forward_or_oom(features, *args, **kw):
            n = int(features["input_ids"].shape[0])
            if n > limit:
                refused.append(n)
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for a batch of {n}")
            served.append(n)
            return forward(features, *args, **kw)

        teacher.model.forward = forward_or_oom
        return teacher

    monkeypatch.setattr(score_module, "load_teacher", load_with_small_memory)
    run = tmp_path / "run"
    shutil.copytree(mined, run)
    result = score_module.score(run, _score_cfg(tiny_reranker))
    assert refused and max(served) <= limit and sum(served) >= result.metrics["unique_pairs"]
    assert any("out of memory: halved the batch" in w for w in result.warnings)
    # Batches differ (so does padding), scores do not beyond float noise.
    for name, col in (("scores.parquet", "label"), ("heldout_scores.parquet", "teacher_score")):
        got, want = (pq.read_table(r / name).column(col).to_numpy() for r in (run, ref))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    # Out of memory on a single pair: one clear error, nothing written.
    limit = 0
    shutil.rmtree(run)
    shutil.copytree(mined, run)
    with pytest.raises(SkillError) as err:
        score_module.score(run, _score_cfg(tiny_reranker))
    assert err.value.code == ExitCode.RUNTIME_FAILURE and "out of memory on a single pair" in err.value.message and "--max-length" in err.value.fix
    record = json.loads((run / "manifest.json").read_text())["stages"]["score"]
    assert not (run / "scores.parquet").exists() and record["status"] == "failed" and "out of memory on a single pair" in record["error"]


# --------------------------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int):
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk ({(proc.stderr or 'mount failed').strip()}): needs root / CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(folder: Path, leave: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_disk_full_while_writing_the_score_tables(mined, tmp_path):
    rows = pq.read_table(mined / "train_pairs.parquet").to_pylist() + pq.read_table(mined / "heldout_candidates.parquet").to_pylist()
    scores = tmp_path / "scores.jsonl"
    scores.write_text(
        "".join(
            json.dumps({"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": i % 5 - 2.5}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    with small_disk(tmp_path / "disk", 1024) as disk:
        run = disk / "run"
        shutil.copytree(mined, run)
        manifest = (run / "manifest.json").read_bytes()
        filler = _fill(disk, leave=8 * 1024)
        proc = subprocess.run([*CLI, "score", "--run", str(run), "--teacher", str(scores)], capture_output=True, text=True, cwd=REPO)
        lines = _message_lines(proc)
        assert proc.returncode == ExitCode.RUNTIME_FAILURE and len(lines) == 1, proc.stdout + proc.stderr
        assert "no space left on device while writing" in lines[0] and "fix: free disk space" in lines[0] and "Traceback" not in proc.stderr
        for name in ("scores.parquet", "heldout_scores.parquet", "scores.meta.json"):
            assert not (run / name).exists()
        assert not _temp_files(run) and _not_recorded_ok(run, "score", before=manifest)
        filler.unlink()  # space freed: the same command now succeeds
        proc = subprocess.run([*CLI, "score", "--run", str(run), "--teacher", str(scores), "--json"], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stdout
        assert pq.read_table(run / "scores.parquet").num_rows == 80


def test_disk_full_mid_scoring_keeps_committed_chunks_and_resumes(mined, score_ref, tiny_reranker, tmp_path):
    from skill.score import score

    ref, total = score_ref
    with small_disk(tmp_path / "disk", 1024) as disk:
        run = disk / "run"
        shutil.copytree(mined, run)
        page = os.statvfs(disk).f_frsize
        filler = _fill(disk, leave=9 * page)  # the plan (3 files) and a few chunks fit, then the disk is full
        with pytest.raises(SkillError) as err:
            score(run, _score_cfg(tiny_reranker))
        assert err.value.code == ExitCode.RUNTIME_FAILURE and "no space left on device" in err.value.line()
        committed = _chunks(run)
        assert 1 <= len(committed) < total
        for p in committed:
            assert len(np.load(p)) == 8
        assert not _temp_files(run) and not (run / "scores.parquet").exists()
        filler.unlink()
        resumed = score(run, _score_cfg(tiny_reranker))
        assert resumed.metrics["chunks_scored"] == total - len(committed)
        for name in ("scores.parquet", "heldout_scores.parquet"):
            assert _same_table(run / name, ref / name)


# --------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def eval_run(toy_scored_run, tiny_reranker, tmp_path_factory) -> Path:
    """The toy run cut to 12 held-out queries, with the tiny reranker as its student."""
    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(toy_scored_run, run)
    shutil.copytree(tiny_reranker, run / "student")
    table = pq.read_table(run / "heldout_candidates.parquet")
    keep = sorted(set(table.column("query_id").to_pylist()))[:12]
    pq.write_table(table.filter(pc.is_in(table.column("query_id"), pa.array(keep))), run / "heldout_candidates.parquet")
    qrels = json.loads((run / "qrels_heldout.json").read_text())
    (run / "qrels_heldout.json").write_text(json.dumps({q: qrels[q] for q in keep}))
    record_stages(run, "mine", "score", "train")  # the cut files and the student, recorded as their stages' outputs
    return run


EVAL_CFG = {"resamples": 300}


def _deterministic(report: dict) -> dict:
    """Everything but timings, notes about machine load, and the run folder's own path."""
    out = {k: v for k, v in report.items() if k not in ("cost", "speedup_vs_teacher", "notes", "run", "serving")}
    out["summary"] = {k: v for k, v in report["summary"].items() if k not in ("student_pairs_per_s", "speedup_vs_teacher", "recommendation")}
    out["recommendation"] = {k: v for k, v in report["recommendation"].items() if k != "line"}  # the SERVE line quotes ms/query
    out["systems"] = {name: {k: v for k, v in s.items() if k != "source"} for name, s in report["systems"].items()}
    return out


@pytest.fixture(scope="module")
def eval_ref(eval_run, tmp_path_factory) -> dict:
    from skill.evaluate import evaluate

    ref = tmp_path_factory.mktemp("eval-ref") / "run"
    shutil.copytree(eval_run, ref)
    evaluate(ref, EvaluateConfig(**EVAL_CFG))
    return json.loads((ref / "report.json").read_text())


@pytest.mark.parametrize(("seed", "phase"), [(31, "anytime"), (32, "writing-report"), (33, "anytime")])
def test_kill_evaluate_at_a_random_point_then_rerun(eval_run, eval_ref, tmp_path, seed, phase):
    from skill.evaluate import evaluate

    rng = random.Random(seed)
    run = tmp_path / "run"
    shutil.copytree(eval_run, run)
    proc = _spawn("evaluate", "--run", run, "--resamples", EVAL_CFG["resamples"])
    if phase == "writing-report":
        _wait_for(lambda: any(run.glob("*report.json*")), proc)
        time.sleep(rng.uniform(0, 0.05))
    else:
        time.sleep(rng.uniform(0.3, 7.0))
    _kill(proc)
    # A report file under its final name is complete.
    if (run / "report.json").exists():
        json.loads((run / "report.json").read_text())
    if (run / "report.png").exists():
        assert (run / "report.png").read_bytes().rstrip().endswith(b"IEND\xaeB`\x82")

    result = evaluate(run, EvaluateConfig(**EVAL_CFG))
    report = json.loads((run / "report.json").read_text())
    assert _deterministic(report) == _deterministic(eval_ref)
    assert result.metrics["verdict"] == eval_ref["summary"]["verdict"]
    assert (run / "report.md").read_text(encoding="utf-8").startswith("# Held-out evaluation")
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_disk_full_while_writing_the_report(cli, eval_run, tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        run = disk / "run"
        shutil.copytree(eval_run, run, ignore=shutil.ignore_patterns("student"))
        manifest = (run / "manifest.json").read_bytes() if (run / "manifest.json").exists() else None
        filler = _fill(disk, leave=12 * 1024)
        proc = cli("evaluate", "--run", run, "--student", eval_run / "student", "--resamples", EVAL_CFG["resamples"])
        lines = _message_lines(proc)
        assert proc.returncode == ExitCode.RUNTIME_FAILURE and len(lines) == 1, proc.stdout + proc.stderr
        assert "no space left on device while writing" in lines[0] and "report" in lines[0]
        assert not _temp_files(run)
        if (run / "report.json").exists():  # written whole before the disk filled, or not at all
            json.loads((run / "report.json").read_text())
        assert _not_recorded_ok(run, "evaluate", before=manifest)  # the stage is not recorded as done
        filler.unlink()
        proc = cli("evaluate", "--run", run, "--student", eval_run / "student", "--resamples", EVAL_CFG["resamples"])
        assert proc.returncode == 0, proc.stderr
        assert json.loads((run / "manifest.json").read_text())["stages"]["evaluate"]["status"] == "ok"


# --------------------------------------------------------------------------------------------- train


@pytest.mark.parametrize(("seed", "phase"), [(21, "at-a-checkpoint"), (22, "anytime")])
def test_kill_train_at_a_random_point_then_resume(toy_scored_run, tiny_base, tmp_path, seed, phase):
    """Also: a hub token in the environment and --push-to-hub never leak into the log, manifest or result."""
    from skill.render import render

    rng = random.Random(seed)
    run = tmp_path / "run"
    shutil.copytree(toy_scored_run, run)
    render(
        run,
        TrainConfig(
            base=str(tiny_base),
            max_steps=8,
            eval_every=4,
            max_seq_length=64,
            per_device_batch=8,
            global_batch=8,
            eval_queries=4,
            early_stopping_patience=0,
            push_to_hub="someone/private-reranker",
        ),
    )
    env = {"HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN}
    proc = _spawn("train", "--run", run, env=env)
    if phase == "at-a-checkpoint":
        _wait_for(lambda: any((run / "checkpoints").glob("checkpoint-*")), proc, timeout=300)
        time.sleep(rng.uniform(0, 0.5))  # often mid-save
    else:
        time.sleep(rng.uniform(2.0, 15.0))
    _kill(proc, group=phase != "anytime")  # "anytime": `kill -9` of the command alone; train.py must not live on
    deadline = time.time() + 10
    while subprocess.run(["pgrep", "-f", str(run / "train.py")], capture_output=True).stdout:  # no orphan trainer left behind
        assert time.time() < deadline, "train.py outlived the killed `train` command"
        time.sleep(0.1)

    complete = sorted(
        (p for p in (run / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.rsplit("-", 1)[1])
    )
    partial = None
    if phase == "at-a-checkpoint" and complete and int(complete[-1].name.rsplit("-", 1)[1]) < 8:
        # What a kill in the middle of the next save leaves: a checkpoint folder without its trainer state, weights cut short.
        step = int(complete[-1].name.rsplit("-", 1)[1]) + 4
        partial = run / "checkpoints" / f"checkpoint-{step}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        weights = (complete[-1] / "model.safetensors").read_bytes()
        (partial / "model.safetensors").write_bytes(weights[: len(weights) // 3])

    proc = subprocess.run(
        [*CLI, "train", "--run", str(run), "--resume", "--json"], capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    m = payload["metrics"]
    assert m["global_step"] == 8 and m["dev_check"] in ("WIN", "MARGINAL", "REGRESSION")
    result = json.loads((run / "train_result.json").read_text())
    if complete:  # resumed from the last checkpoint saved whole, not from scratch
        assert m["resumed"] is True and int(result["resumed_from"].rsplit("-", 1)[1]) >= int(complete[-1].name.rsplit("-", 1)[1])
    log = (run / "train_log.txt").read_text()
    if partial is not None:
        assert result["resumed_from"] == str(complete[-1])
    if phase == "at-a-checkpoint":  # cut short by the kill itself, or by the injected half-written save
        assert "was not saved completely" in log
    assert (run / "student" / "modules.json").exists() and json.loads((run / "manifest.json").read_text())["stages"]["train"]["status"] == "ok"
    assert any("push to someone/private-reranker failed" in w for w in payload["warnings"])  # the push path ran (offline)
    assert TOKEN not in proc.stdout + proc.stderr
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".txt", ".json", ".md", ".py", ".csv", ""):
            assert TOKEN.encode() not in f.read_bytes(), f


def test_cli_help_exit_codes_are_documented():
    """The exit codes the RELIABILITY section lists are the ones the code uses."""
    text = (REPO / "references" / "reliability.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert f"| {int(code)} |" in text, code
