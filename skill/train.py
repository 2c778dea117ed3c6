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
from skill.errors import ExitCode, SkillError, missing
from skill.io import read_json
from skill.manifest import Run, Stage
from skill.render import SCRIPT, render

REQUIRED_INPUTS = {
    "scores": ("scores.parquet", "reranker-skill score"),
    "heldout_candidates": ("heldout_candidates.parquet", "reranker-skill mine"),
    "qrels_heldout": ("qrels_heldout.json", "reranker-skill mine"),
}
DEV_INPUTS = {"dev_candidates": "dev_candidates.parquet", "qrels_dev": "qrels_dev.json"}  # absent in run folders from before dev splits


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
    script = run_.file(SCRIPT)
    if cfg is not None or not script.exists():
        rendered = render(run_.path, cfg or TrainConfig(), force=force)
        warnings += rendered.warnings
    for _, (name, producer) in REQUIRED_INPUTS.items():
        if not run_.file(name).exists():
            raise missing(f"{name} is missing", where=str(run_.file(name)), fix=f"run `{producer} --run {run_.path} ...` first")

    out_rel = "smoke/" if smoke else ""
    stage = Stage(
        run_,
        "train_smoke" if smoke else "train",
        config={"smoke": smoke},
        inputs={
            "script": script,
            **{k: run_.file(name) for k, (name, _) in REQUIRED_INPUTS.items()},
            **{k: run_.file(name) for k, name in DEV_INPUTS.items() if run_.file(name).exists()},
        },
    )
    if stage.fresh() and not force and not resume:
        prev = stage.previous or {}
        return Result(
            artifacts={k: str(run_.file(v)) for k, v in prev.get("outputs", {}).items()},
            metrics={**prev.get("metrics", {}), "skipped": True},
            warnings=[*warnings, "train is up to date (same script and data): skipped; pass --force to train again"],
            text=prev.get("metrics", {}).get("verdict_line", "train: up to date"),
        )

    # A smoke run is one step: always a single process.
    cmd = launch_command(script.resolve(), "python" if smoke else launcher, nproc_per_node) + (["--smoke"] if smoke else []) + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SMOKE", None)
    print(f"running: {' '.join(cmd)}", file=sys.stderr)
    with stage.running():
        code, tail, verdict_line = _stream(cmd, run_.path, env)
        log = run_.file(f"{out_rel}train_log.txt")
        if code != 0:
            last = next((line for line in reversed(tail) if line.strip()), "(no output)")
            has_checkpoint = any(run_.file(f"{out_rel}checkpoints").glob("checkpoint-*"))
            fix = f"read {log}; then rerun `reranker-skill train --run {run_.path}" + (
                " --resume` to continue from the last checkpoint" if has_checkpoint else "`"
            )
            raise SkillError(f"train.py exited with code {code}: {last[:300]}", code=ExitCode.RUNTIME_FAILURE, where=str(log), fix=fix)
        result_path = run_.file(f"{out_rel}train_result.json")
        if not result_path.exists() or verdict_line is None:
            raise SkillError("train.py finished without a result or a VERDICT line", where=str(log), fix=f"read {log} and report it")
        result = read_json(result_path)
        stage.outputs.update({"student": f"{out_rel}student", "result": f"{out_rel}train_result.json", "log": f"{out_rel}train_log.txt"})
        metrics = {
            "verdict": result["verdict"],
            "verdict_line": verdict_line,
            "ndcg@10": result["best"].get("ndcg@10"),
            "baseline_ndcg@10": result["baseline"].get("ndcg@10"),
            "first_stage_ndcg@10": (result.get("first_stage") or {}).get("ndcg@10"),
            "delta": result["delta"],
            "global_step": result["global_step"],
            "stopped_early": result["stopped_early"],
            "stopped_by_time_budget": result["stopped_by_time_budget"],
            "train_pairs_per_second": result["throughput"].get("train_pairs_per_second"),
            "effective_global_batch": result["batch"]["effective_global_batch"],
            "seconds": result.get("seconds"),
            "smoke": smoke,
            "resumed": result.get("resumed_from") is not None,
            "selection_split": result.get("selection_split"),
            "fusion_alpha": (result.get("fusion") or {}).get("alpha"),
            "fused_ndcg@10": (result.get("fusion") or {}).get("ndcg@10"),
        }
        stage.metrics.update(metrics)
    if result.get("push") and not result["push"].get("ok"):
        warnings.append(f"push to {result['push'].get('repo')} failed: {result['push'].get('error')} (the model is saved locally)")
    artifacts = {k: str(run_.file(v)) for k, v in stage.outputs.items()}
    text = "\n".join([verdict_line, f"student: {artifacts['student']}", f"result: {artifacts['result']}"])
    return Result(artifacts=artifacts, metrics=metrics, warnings=warnings, text=text)
