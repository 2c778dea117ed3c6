"""Issue 12: stage transactions under kill -9 at every file boundary, and the refusals that follow.

How a kill lands on a file boundary without a hook in the product: a test-only `sitecustomize.py`
(on PYTHONPATH of the real CLI, run in a subprocess) wraps `os.replace` and `os.rename` — every way a
file or folder is published under its final name — logs each call, and at call N sends SIGKILL to
the whole process group (train.py included). A first run with no N counts the boundaries; the
sweep then kills at each of them.

The oracle is outside the code under test: each output file is classified by its bytes as the
version before the command ("old"), the version a complete run writes ("new"), or neither. After
every kill: a stage whose record says `ok` has every output in one version; the next stage run for
real either refuses (exit 4/5, with a fix that, followed, makes it succeed) or reads files that are
all of one version; and no held-out query id is ever in train_pairs.parquet or scores.parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from skill.config import DataConfig, EvaluateConfig, MineConfig, ScoreConfig, TeacherSpec, TrainConfig
from skill.errors import ExitCode, SkillError

KILLER = r"""
import os, signal

_log = os.environ.get("RS_BOUNDARY_LOG")
_at = int(os.environ.get("RS_KILL_AT") or 0)
if _log:
    def _wrap(fn):
        def publish(*args, **kwargs):
            out = fn(*args, **kwargs)
            fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{fn.__name__} {os.fspath(args[1])}\n".encode())
            finally:
                os.close(fd)
            if _at:
                with open(_log, "rb") as fh:
                    if sum(1 for _ in fh) == _at:
                        os.killpg(os.getpgrp(), signal.SIGKILL)
            return out
        return publish

    os.replace = _wrap(os.replace)
    os.rename = _wrap(os.rename)
"""


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("killer")
    (folder / "sitecustomize.py").write_text(KILLER, encoding="utf-8")
    return folder


def run_killed(killer: Path, args: list, *, at: int, log: Path, cwd: Path = REPO, timeout: int = 600) -> tuple[int, list[str]]:
    """The real CLI in its own process group, killed (SIGKILL, whole group) after its `at`-th publish (0: never).

    Returns the exit status (-9 when killed) and the boundaries it crossed (`replace DEST` lines).
    """
    log.unlink(missing_ok=True)
    cache = log.with_name(f"{log.name}.identity-cache")  # a fresh model-identity cache each time: every run publishes it alike
    shutil.rmtree(cache, ignore_errors=True)
    env = {
        **os.environ,
        "RERANKER_SKILL_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(killer), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RS_BOUNDARY_LOG": str(log),
        "RS_KILL_AT": str(at),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "skill", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )
    boundaries = log.read_text().splitlines() if log.exists() else []
    assert at == 0 or proc.returncode == -9 or len(boundaries) < at, proc.stderr[-2000:]
    return proc.returncode, boundaries


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run: Path, names) -> dict[str, str | None]:
    return {n: _digest(run / n) for n in names}


def versions(run: Path, names, old: dict, new: dict | None) -> dict[str, str]:
    """Each file: "old", "new", "absent" or "other" (neither version), by its bytes."""
    out = {}
    for n in names:
        d = _digest(run / n)
        out[n] = "old" if d == old[n] else "new" if new is not None and d == new[n] else "absent" if d is None else "other"
    return out


def record(run: Path, stage: str) -> dict | None:
    return json.loads((run / "manifest.json").read_text())["stages"].get(stage)


def heldout_never_trained(run: Path) -> None:
    """The held-out split of the folder's split.json is not in its training pairs or labels."""
    heldout = set(json.loads((run / "split.json").read_text())["heldout"])
    for name in ("train_pairs.parquet", "scores.parquet"):
        if (run / name).exists():
            assert not heldout & set(pq.read_table(run / name, columns=["query_id"]).column("query_id").to_pylist()), name


def follow_fix(cli, err: SkillError, run_dir: Path, flags: dict[str, list]) -> None:
    """Run the first command the fix names, its `...` (or `--teacher ...`) replaced by the flags the user gave that stage before."""
    commands = re.findall(r"`reranker-skill ([^`]+)`", err.fix or "")
    assert commands, err.line()
    words = shlex.split(commands[0])
    stage, args = words[0], words[1:]
    assert args[:2] == ["--run", str(run_dir)], commands[0]
    if "..." in args:
        i = args.index("...")
        start = i - 1 if args[i - 1] == "--teacher" else i
        args = args[:start] + [str(a) for a in flags[stage]] + args[i + 1 :]
    proc = cli(stage, *args)
    assert proc.returncode == 0, f"following the fix `{commands[0]}` failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"


# --------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """40 docstring queries, 50 documents; a scores file for every (query, document) pair, from two 'teachers'."""
    from skill.domain import build_stdlib_domain

    root = tmp_path_factory.mktemp("tiny")
    paths = build_stdlib_domain(root / "data", max_pairs=40, distractors=10)
    docs = [json.loads(line) for line in paths["corpus"].read_text().splitlines() if line.strip()]
    queries = [json.loads(line) for line in paths["queries"].read_text().splitlines() if line.strip()]
    teachers = {}
    for name, salt in (("A", 0), ("B", 7)):
        rows = []
        for q in queries:
            for d in docs:
                text = f"{d['title'].strip()}\n{d['text'].strip()}" if d.get("title", "").strip() else d["text"].strip()
                label = float(len(set(q["text"].lower().split()) & set(text.lower().split())) + ((len(text) + salt) % 5) * 0.1)
                rows.append({"query_id": q["_id"], "doc_id": d["_id"], "query": q["text"], "document": text, "label": label})
        teachers[name] = root / f"teacher-{name}.jsonl"
        teachers[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {**paths, "teachers": teachers, "root": root}


MINE_FLAGS = ["--retriever", "bm25", "--train-top-k", "4", "--eval-top-k", "4", "--dev-queries", "2"]
MINE_OUT = ["split.json", "train_pairs.parquet", "heldout_candidates.parquet", "qrels_heldout.json", "dev_candidates.parquet", "qrels_dev.json", "mine.json"]
SCORE_OUT = ["scores.parquet", "heldout_scores.parquet", "scores.meta.json"]


def mine_args(tiny: dict, run: Path, seed: int) -> list:
    return ["mine", "--run", run, "--corpus", tiny["corpus"], "--queries", tiny["queries"], "--qrels", tiny["qrels"], *MINE_FLAGS, "--seed", seed]


def score_cfg(teacher: Path) -> ScoreConfig:
    return ScoreConfig(teachers=[TeacherSpec(model=str(teacher), type="file")])


@pytest.fixture(scope="module")
def base_run(tiny, tmp_path_factory) -> Path:
    """mine (seed 12) + score (teacher A), both `ok`: the folder every kill starts from."""
    from skill.mine import mine
    from skill.score import score

    run = tmp_path_factory.mktemp("base") / "run"
    mine(
        run,
        DataConfig(corpus=tiny["corpus"], queries=tiny["queries"], qrels=tiny["qrels"]),
        MineConfig(retriever="bm25", train_top_k=4, eval_top_k=4, dev_queries=2, seed=12),
    )
    score(run, score_cfg(tiny["teachers"]["A"]))
    return run


def _fresh_copy(base: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(base, dest)
    return dest


# --------------------------------------------------------------------------------------------- mine --force


def test_kill_mine_force_at_every_file_boundary(cli, killer, tiny, base_run, tmp_path):
    """`mine --force --seed 99` over a mined and scored folder, killed after each of its publishes.

    The issue's case is among them: killed after train_pairs.parquet is published (new pairs next to the
    old split), `score` used to run and train on 9 of 12 held-out queries.
    """
    from skill.score import score

    started = time.perf_counter()
    old = snapshot(base_run, MINE_OUT)
    ref = _fresh_copy(base_run, tmp_path / "ref")
    code, boundaries = run_killed(killer, [*mine_args(tiny, ref, 99), "--force"], at=0, log=tmp_path / "log")
    assert code == 0 and record(ref, "mine")["status"] == "ok"
    new = snapshot(ref, MINE_OUT)
    assert new["train_pairs.parquet"] != old["train_pairs.parquet"] and new["split.json"] != old["split.json"]
    published = [b.split(" ", 1)[1] for b in boundaries]
    assert any(p.endswith("/train_pairs.parquet") for p in published)
    seen_mixed_after_train_pairs = 0
    for at in range(1, len(boundaries) + 1):
        run = _fresh_copy(base_run, tmp_path / "run")
        code, crossed = run_killed(killer, [*mine_args(tiny, run, 99), "--force"], at=at, log=tmp_path / "log")
        assert code == -9 and len(crossed) == at
        state = versions(run, MINE_OUT, old, new)
        kinds = set(state.values())
        mine_record = record(run, "mine")
        if mine_record["status"] == "ok":  # an ok record lies over one complete version only
            assert kinds in ({"old"}, {"new"}), (at, state)
        else:
            assert mine_record["status"] == "running", (at, mine_record)
        if state["train_pairs.parquet"] == "new" and "old" in kinds:
            seen_mixed_after_train_pairs += 1
        # The next stage, for real.
        try:
            score(run, score_cfg(tiny["teachers"]["A"]), force=True)
        except SkillError as err:
            assert err.code in (ExitCode.MISSING_RESOURCE, ExitCode.INVALID_INPUT), err.line()
            assert mine_record["status"] != "ok" or kinds not in ({"old"}, {"new"}), (at, err.line())
            follow_fix(cli, err, run, {"mine": mine_args(tiny, run, 99)[3:]})
            assert record(run, "mine")["status"] == "ok" and set(versions(run, MINE_OUT, old, new).values()) == {"new"}
            score(run, score_cfg(tiny["teachers"]["A"]))
        else:
            assert kinds in ({"old"}, {"new"}), (at, state)  # accepted: only a consistent folder
        heldout_never_trained(run)
    assert seen_mixed_after_train_pairs >= 1  # the sweep reached the state, and score refused it
    print(f"mine --force: {len(boundaries)} boundaries, sweep {time.perf_counter() - started:.1f}s")


# --------------------------------------------------------------------------------------------- score --force


def test_kill_score_force_with_a_new_teacher_at_every_file_boundary(cli, killer, tiny, base_run, tiny_reranker, tmp_path):
    """`score --force` with teacher B over teacher A's tables, killed after each publish; `train` and `evaluate` then run for real."""
    from skill.evaluate import evaluate
    from skill.train import train

    started = time.perf_counter()
    old = snapshot(base_run, SCORE_OUT)
    new_teacher = ["--teacher", tiny["teachers"]["B"], "--teacher-type", "file"]
    ref = _fresh_copy(base_run, tmp_path / "ref")
    code, boundaries = run_killed(killer, ["score", "--run", ref, *new_teacher, "--force"], at=0, log=tmp_path / "log")
    assert code == 0 and record(ref, "score")["status"] == "ok"
    new = snapshot(ref, SCORE_OUT)
    assert all(new[n] != old[n] for n in SCORE_OUT)
    tiny_train = TrainConfig(base=str(tiny_reranker), max_steps=1, global_batch=8, per_device_batch=8, max_seq_length=32, eval_queries=2)
    for at in range(1, len(boundaries) + 1):
        run = _fresh_copy(base_run, tmp_path / "run")
        code, crossed = run_killed(killer, ["score", "--run", run, *new_teacher, "--force"], at=at, log=tmp_path / "log")
        assert code == -9 and len(crossed) == at
        state = versions(run, SCORE_OUT, old, new)
        kinds = set(state.values())
        score_record = record(run, "score")
        assert kinds <= {"old", "new"}, state  # every table under its final name is one teacher's, whole
        if score_record["status"] == "ok":
            # Killed before the transaction began (the model-identity cache is published first): the old run stands, whole;
            # or after the last publish: the new teacher's run is complete.
            by_b = score_record["config"]["teachers"][0]["model"].endswith("teacher-B.jsonl")
            assert (kinds == {"new"} and by_b) or (kinds == {"old"} and not by_b), (at, state)
            continue
        assert score_record["status"] == "running"
        for consumer in ("train", "evaluate"):
            with pytest.raises(SkillError) as err:
                if consumer == "train":
                    train(run, tiny_train)
                else:
                    evaluate(run, EvaluateConfig(student=str(tiny_reranker), resamples=100, skip_base=True))
            assert err.value.code == ExitCode.INVALID_INPUT and "`score` did not finish" in err.value.message, err.value.line()
        follow_fix(cli, err.value, run, {"score": new_teacher})
        assert set(versions(run, SCORE_OUT, old, new).values()) == {"new"} and record(run, "score")["status"] == "ok"
        evaluate(run, EvaluateConfig(student=str(tiny_reranker), resamples=100, skip_base=True))
        heldout_never_trained(run)
    print(f"score --force: {len(boundaries)} boundaries, sweep {time.perf_counter() - started:.1f}s")


def test_kill_score_force_mid_chunks_of_a_model_teacher(cli, killer, tiny, base_run, tiny_reranker, tmp_path):
    """A model teacher in chunks of 8, killed (seeded) midway through its chunks: no `ok` record, the chunks stay, the rerun resumes."""
    from skill.score import collect_pairs, score
    from skill.train import train

    train_pairs, held = pq.read_table(base_run / "train_pairs.parquet"), pq.read_table(base_run / "heldout_candidates.parquet")
    dev = pq.read_table(base_run / "dev_candidates.parquet") if (base_run / "dev_candidates.parquet").exists() else None
    chunks = -(-len(collect_pairs(train_pairs, held, dev)) // 8)  # the dev candidates are scored too (the teacher gate)
    assert chunks >= 4
    flags = ["--teacher", tiny_reranker, "--chunk-size", "8", "--max-length", "64"]
    at = 4 + random.Random(12).randint(1, chunks - 2)  # running record + plan.json, lengths, plan; then chunk commits
    run = _fresh_copy(base_run, tmp_path / "run")
    code, crossed = run_killed(killer, ["score", "--run", run, *flags, "--force"], at=at, log=tmp_path / "log")
    assert code == -9 and crossed[-1].split("/")[-1].startswith("chunk-"), crossed[-3:]
    assert record(run, "score")["status"] == "running"
    assert snapshot(run, SCORE_OUT) == snapshot(base_run, SCORE_OUT)  # the old tables, untouched, but no longer vouched for
    committed = sorted(run.glob("score_work/*/chunk-*.npy"))
    assert 1 <= len(committed) < chunks
    with pytest.raises(SkillError) as err:
        train(run, TrainConfig(base=str(tiny_reranker), max_steps=1))
    assert err.value.code == ExitCode.INVALID_INPUT
    follow_fix(cli, err.value, run, {"score": flags})
    resumed = record(run, "score")
    assert resumed["status"] == "ok" and resumed["metrics"]["chunks_scored"] == chunks - len(committed)
    again = score(run, ScoreConfig(teachers=[TeacherSpec(model=str(tiny_reranker))], chunk_size=8, max_length=64))
    assert again.metrics["skipped"] is True


# --------------------------------------------------------------------------------------------- train, evaluate, export (seeded)


@pytest.fixture(scope="module")
def trained(toy_scored_run, tiny_base, tmp_path_factory) -> Path:
    """The toy run trained once (2 steps of the tiny ModernBERT): an `ok` train record over a student."""
    from skill.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(toy_scored_run, run)
    train(run, TrainConfig(base=str(tiny_base), max_steps=2, global_batch=8, per_device_batch=8, max_seq_length=64, eval_queries=4, seed=1))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("seed", [41])
def test_kill_train_at_a_seeded_boundary(cli, killer, trained, tiny_base, tiny_reranker, tmp_path, seed):
    """`train --force --seed 2` killed (whole process group, train.py included) after a seeded publish."""
    from skill.evaluate import evaluate
    from skill.export import export_model

    train_out = ["student", "train_result.json"]
    old = snapshot(trained, train_out)
    run = _fresh_copy(trained, tmp_path / "run")
    flags = ["--base", tiny_base, "--max-steps", "2", "--global-batch", "8", "--per-device-batch", "8", "--max-seq-length", "64", "--eval-queries", "4"]
    at = random.Random(seed).randint(5, 9)  # 1-4 render train.py; 5 running, 6 checkpoints/baseline.json, 7 student/, 8 train_result.json, 9 ok
    code, crossed = run_killed(killer, ["train", "--run", run, *flags, "--seed", "2", "--force"], at=at, log=tmp_path / "log")
    print(f"train killed at boundary {at}: {[c.rsplit('/', 1)[-1] for c in crossed]}")
    state = versions(run, train_out, old, None)
    train_record = record(run, "train")
    if train_record["status"] == "ok":  # killed before `train` began (while render published train.py), or after it finished
        assert set(state.values()) in ({"old"}, {"other"}), (at, state)
        return
    assert code == -9 and train_record["status"] == "running", (at, crossed)
    for consumer in ("evaluate", "export"):
        with pytest.raises(SkillError) as err:
            if consumer == "evaluate":
                evaluate(run, EvaluateConfig(resamples=100, skip_base=True))
            else:
                export_model(model=None, run=run)
        assert err.value.code in (ExitCode.MISSING_RESOURCE, ExitCode.INVALID_INPUT) and "reranker-skill train --run" in err.value.fix, err.value.line()
    follow_fix(cli, err.value, run, {})
    assert record(run, "train")["status"] == "ok"
    assert evaluate(run, EvaluateConfig(resamples=100, skip_base=True)).exit_code in (
        ExitCode.OK,
        ExitCode.RUNTIME_FAILURE,
    )  # a collapsed tiny student is exit 6, still evaluated
    assert record(run, "evaluate")["status"] == "ok"


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> Path:
    from skill.evaluate import evaluate

    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained, run)
    evaluate(run, EvaluateConfig(resamples=100, skip_base=True))
    return run


REPORT = ["report.json", "report.md", "report.png"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [51])
def test_kill_evaluate_at_a_seeded_boundary(cli, killer, evaluated, tmp_path, seed):
    old = snapshot(evaluated, REPORT)
    run = _fresh_copy(evaluated, tmp_path / "run")
    at = random.Random(seed).randint(1, 8)  # 1 running, 2-4 staged report files, 5-7 published, 8 ok
    code, crossed = run_killed(killer, ["evaluate", "--run", run, "--resamples", "200", "--skip-base", "--force"], at=at, log=tmp_path / "log")
    state = versions(run, REPORT, old, None)
    evaluate_record = record(run, "evaluate")
    if evaluate_record["status"] == "ok":
        assert set(state.values()) == {"other"}, (at, state)  # all three rewritten (resamples 200)
    else:
        assert code == -9 and evaluate_record["status"] == "running", (at, crossed)
        proc = cli("evaluate", "--run", run, "--resamples", "200", "--skip-base")  # the rerun the record calls for
        assert proc.returncode in (0, 6) and record(run, "evaluate")["status"] == "ok"
        assert set(versions(run, REPORT, old, None).values()) == {"other"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [61])
def test_kill_export_at_a_seeded_boundary(killer, trained, tiny_reranker, tmp_path, seed):
    """`export --force` with new settings over an earlier export: killed after a seeded publish, the folder is the old export or the new one, whole; the model is never touched."""
    from skill.export import export_model

    run = _fresh_copy(trained, tmp_path / "run")
    model = run / "model"
    shutil.copytree(tiny_reranker, model)
    out = tmp_path / "exported"
    export_model(model=model, run=run, out=out, queries=4, depth=5)
    old = _digest(out / "parity.json")
    model_digest = _digest(model)
    at = random.Random(seed).randint(1, 3)  # running, parity.json, (the folder swapped in atomically), ok
    code, crossed = run_killed(
        killer, ["export", "--model", model, "--run", run, "--out", out, "--queries", "5", "--depth", "5", "--force"], at=at, log=tmp_path / "log"
    )
    assert _digest(model) == model_digest
    export_record = record(run, "export")
    parity = json.loads((out / "parity.json").read_text()) if (out / "parity.json").exists() else None
    assert parity is not None and (out / "onnx" / "model.onnx").exists(), (at, crossed)  # never without a whole export
    if export_record["status"] == "ok":
        assert _digest(out / "parity.json") != old
    else:
        assert code == -9 and export_record["status"] == "running"
        result = export_model(model=model, run=run, out=out, queries=5, depth=5)
        assert result.exit_code == ExitCode.OK and record(run, "export")["status"] == "ok"
