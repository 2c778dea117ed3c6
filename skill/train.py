"""`train`: run the rendered script as a subprocess, stream its progress, record its result.

The script (runs/NAME/train.py) is the unit of work: `train` renders it when it is missing or
when overrides are given, then runs it with the current Python; `--smoke` runs one step
(outputs under smoke/), `--resume` continues from the last checkpoint after an interruption.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

from skill.config import TrainConfig
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid
from skill.io import read_json
from skill.manifest import Run, Stage
from skill.render import render
from skill.runfolder import ARTIFACTS, CHECKPOINTS, SCORES, SCRIPT, SMOKE, SPLIT, STAGE_OUTPUTS, Split, TrainResult

# What train.py reads, by artifact key (skill.runfolder.ARTIFACTS); the dev ones only where `mine` wrote them.
REQUIRED_INPUTS = ("scores", "heldout_candidates", "qrels_heldout", "split")
DEV_INPUTS = ("dev_candidates", "qrels_dev")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `train` dies, even by kill -9 — an orphaned train.py would keep
    writing checkpoints while the user's `train --resume` starts a second one on the same folder."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _stream(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[str], str | None]:
    """Run `cmd`, copying its output line by line to stderr; returns (exit code, last lines, VERDICT line)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    verdict = None
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace", preexec_fn=_die_with_parent if sys.platform == "linux" else None
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip("\n"))
            if line.startswith("VERDICT: "):
                verdict = line.strip()
        return proc.wait(), list(tail), verdict
    except BaseException:  # Ctrl-C or a kill of this process: stop the child too, checkpoints stay for --resume
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def launch_command(script: Path, launcher: str = "python", nproc_per_node: int | None = None) -> list[str]:
    """The command that runs train.py: plain Python, `accelerate launch`, or `torchrun` over N processes."""
    if launcher == "python":
        return [sys.executable, str(script)]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", *(["--num_processes", str(nproc_per_node)] if nproc_per_node else []), str(script)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node or 1), str(script)]
    raise SkillError(f"unknown launcher {launcher!r}", code=ExitCode.USAGE, fix="use --launcher python, accelerate or torchrun")


def train(
    run: str | Path,
    cfg: TrainConfig | None = None,
    *,
    smoke: bool = False,
    resume: bool = False,
    force: bool = False,
    launcher: str = "python",
    nproc_per_node: int | None = None,
) -> Result:
    """Render if needed (or when `cfg` overrides are given), run train.py, record the `train` stage."""
    run_ = Run(run)
    warnings: list[str] = []
    mine_record = run_.stage("mine")
    dev = [k for k in DEV_INPUTS if mine_record is not None and k in mine_record.outputs]
    warnings += run_.require([*REQUIRED_INPUTS, *dev], needed_by="train")
    _check_no_heldout_in_training(run_)
    script = run_.file(SCRIPT)
    if cfg is not None or not script.exists():
        rendered = render(run_.path, cfg or TrainConfig(), force=force)
        warnings += rendered.warnings

    name = "train_smoke" if smoke else "train"
    stage = Stage(run_, name, config={"smoke": smoke}, inputs={"script": script, **{k: run_.file(ARTIFACTS[k].name) for k in (*REQUIRED_INPUTS, *dev)}})
    if not resume and (done := stage.skip(force=force, result=lambda prev: _skipped(run_, prev, warnings))) is not None:
        return done

    # A smoke run is one step: always a single process.
    cmd = launch_command(script.resolve(), "python" if smoke else launcher, nproc_per_node) + (["--smoke"] if smoke else []) + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SMOKE", None)
    outputs = STAGE_OUTPUTS[name]
    out_rel = f"{SMOKE}/" if smoke else ""
    print(f"running: {' '.join(cmd)}", file=sys.stderr)
    with stage.transaction() as tx:  # the record says `running` while train.py writes student/, train_result.json, checkpoints/
        code, tail, verdict_line = _stream(cmd, run_.path, env)
        log = run_.file(outputs["log"])
        if code != 0:
            last = next((line for line in reversed(tail) if line.strip()), "(no output)")
            has_checkpoint = any(run_.file(f"{out_rel}{CHECKPOINTS}").glob("checkpoint-*"))
            fix = f"read {log}; then rerun `reranker-skill train --run {run_.path}" + (" --resume` to continue from the last checkpoint" if has_checkpoint else "`")
            raise SkillError(f"train.py exited with code {code}: {last[:300]}", code=ExitCode.RUNTIME_FAILURE, where=str(log), fix=fix)
        result_path = run_.file(outputs["result"])
        if not result_path.exists() or verdict_line is None:
            raise SkillError("train.py finished without a result or a VERDICT line", where=str(log), fix=f"read {log} and report it")
        result = TrainResult.model_validate(read_json(result_path))
        for key, rel in outputs.items():
            tx.adopt(key, rel)
        fusion = result.fusion or {}
        metrics = {
            "verdict": result.verdict,
            "verdict_line": verdict_line,
            "ndcg@10": result.best.get("ndcg@10"),
            "baseline_ndcg@10": result.baseline.get("ndcg@10"),
            "first_stage_ndcg@10": (result.first_stage or {}).get("ndcg@10"),
            "delta": result.delta,
            "global_step": result.global_step,
            "stopped_early": result.stopped_early,
            "stopped_by_time_budget": result.stopped_by_time_budget,
            "train_pairs_per_second": result.throughput.get("train_pairs_per_second"),
            "effective_global_batch": result.batch.get("effective_global_batch"),
            "seconds": result.seconds,
            "smoke": smoke,
            "resumed": result.resumed_from is not None,
            "selection_split": result.selection_split,
            "fusion_alpha": fusion.get("alpha"),
            "fused_ndcg@10": fusion.get("ndcg@10"),
        }
        tx.metrics.update(metrics)
    if result.push and not result.push.get("ok"):
        warnings.append(f"push to {result.push.get('repo')} failed: {result.push.get('error')} (the model is saved locally)")
    artifacts = {k: str(run_.file(v)) for k, v in outputs.items()}
    text = "\n".join([verdict_line, f"student: {artifacts['student']}", f"result: {artifacts['result']}"])
    return Result(artifacts=artifacts, metrics=metrics, warnings=warnings, text=text)


def _skipped(run: Run, prev, warnings: list[str]) -> Result:
    return Result(
        artifacts={k: str(run.file(v)) for k, v in prev.outputs.items()},
        metrics={**prev.metrics, "skipped": True},
        warnings=[*warnings, "train is up to date (same script and data): skipped; pass --force to train again"],
        text=prev.metrics.get("verdict_line", "train: up to date"),
    )


def _check_no_heldout_in_training(run: Run) -> None:
    """No held-out or dev query in the labels train.py learns from (a last guard behind the manifest checks)."""
    import pyarrow.parquet as pq

    split = Split.model_validate(read_json(run.file(SPLIT)))
    trained = set(pq.read_table(run.file(SCORES), columns=["query_id"]).column("query_id").to_pylist())
    leaked = trained & (set(split.heldout) | set(split.dev))
    if leaked:
        raise invalid(
            f"{len(leaked)} held-out or dev queries of {SPLIT} are in {SCORES} (first: {sorted(leaked)[0]!r})",
            where=str(run.file(SCORES)),
            fix=f"rerun `{run.rerun('mine')}` and `{run.rerun('score')}`: the files come from different runs",
        )
