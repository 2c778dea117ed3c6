"""`run RECIPE.yaml`: every stage in order in one run folder.

Each stage skips itself when its configuration and inputs are unchanged (the manifest), so a
rerun after a failure or an edit redoes only what changed. The first failing stage stops the run
and its one-line error is the run's error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from skill.config import RunConfig
from skill.envelope import Result, error_result
from skill.errors import ExitCode, SkillError


def _stage_calls(cfg: RunConfig, force: bool) -> dict[str, Callable[[], Result]]:
    from skill.evaluate import evaluate
    from skill.export import Tolerances, export_model
    from skill.mine import mine
    from skill.render import render
    from skill.score import score
    from skill.train import train

    run = Path(cfg.run)
    ex = cfg.export
    return {
        "mine": lambda: mine(run, cfg.data, cfg.mine, force=force),
        "score": lambda: score(run, cfg.score, force=force),
        "render": lambda: render(run, cfg.train, force=force),
        "train_smoke": lambda: train(run, None, smoke=True),
        "train": lambda: train(run, None, force=force, launcher=cfg.launcher, nproc_per_node=cfg.nproc_per_node),
        "evaluate": lambda: evaluate(run, cfg.evaluate, force=force),
        "export": lambda: export_model(
            model=None,
            fmt=ex.format,
            quantize=ex.quantize,
            run=run,
            out=ex.out,
            queries=ex.queries,
            depth=ex.depth,
            batch_size=ex.batch_size,
            tolerances=Tolerances(fp32_max_drift=ex.max_drift, int8_min_top10_overlap=ex.int8_min_overlap, int8_max_ndcg_drop=ex.int8_max_ndcg_drop),
            force=force,
        ),
    }


def run_pipeline(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Result:
    from skill.manifest import Run, content_hash
    from skill.runfolder import SCRIPT

    calls = _stage_calls(cfg, force)
    order: list[str] = []
    for stage in cfg.stages:
        if stage == "train" and cfg.smoke_first:
            order.append("train_smoke")
        order.append(stage)

    results: dict[str, dict] = {}
    artifacts: dict[str, str] = {}
    warnings: list[str] = []
    texts: list[str] = []
    started = time.time()
    for name in order:
        if name == "train_smoke":
            train_record = Run(cfg.run).stage("train")
            script = Path(cfg.run) / SCRIPT
            done = not force and train_record is not None and train_record.status == "ok" and script.exists()
            if done and train_record.input_hashes.get("script") == content_hash(script):
                continue  # the full run is already done with this script: no smoke needed
        log(f"==> {name}")
        t0 = time.time()
        try:
            result = calls[name]()
        except SkillError as err:
            result = error_result(err)
        seconds = round(time.time() - t0, 1)
        skipped = bool(result.metrics.get("skipped"))
        results[name] = {"exit_code": int(result.exit_code), "status": result.status, "seconds": seconds, "skipped": skipped}
        artifacts.update({f"{name}.{k}": v for k, v in result.artifacts.items()})
        warnings += [f"{name}: {w}" for w in result.warnings]
        log(f"    {name}: {'skipped (up to date)' if skipped else result.status} in {seconds:.1f}s")
        if result.text:
            texts.append(f"## {name}\n{result.text}")
        if result.exit_code not in (ExitCode.OK,):
            results[name]["errors"] = result.errors
            return Result(
                artifacts=artifacts,
                metrics={"stages": results, "failed_stage": name, "minutes": round((time.time() - started) / 60, 2), **_headline(results, result)},
                warnings=warnings,
                errors=result.errors,
                status="partial" if result.exit_code == ExitCode.PARTIAL else "error",
                exit_code=result.exit_code,
                text="\n\n".join([*texts, f"stopped at `{name}` (exit {int(result.exit_code)})"]),
            )
        if name == "evaluate":
            evaluation = result
    metrics = {"stages": results, "minutes": round((time.time() - started) / 60, 2)}
    if "evaluate" in results:
        metrics.update(_headline(results, evaluation))
    return Result(artifacts=artifacts, metrics=metrics, warnings=warnings, text="\n\n".join(texts))


def _headline(results: dict, evaluation: Result) -> dict:
    m = evaluation.metrics
    return {k: m[k] for k in ("verdict", "delta_ndcg@10", "p_value", "ndcg@10", "collapsed", "teacher_gate", "recommended", "recommendation") if k in m}
