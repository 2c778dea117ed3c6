"""`train`: run the rendered script as a subprocess, stream its progress, then judge the result with skill.metrics.

The script (runs/NAME/train.py) is the unit of work: `train` renders it when it is missing or
when overrides are given, then runs it with the current Python; `--smoke` runs one step
(outputs under smoke/), `--resume` continues from the last checkpoint after an interruption.

The script trains, keeps the best checkpoint and writes every dev candidate's score
(student_dev_scores.parquet). Every number shown afterwards comes from `skill.metrics`, the code
`evaluate` and `export` use: the NDCG of the first stage, the untrained and the trained student,
the fusion weight (student/fusion.json), the DEV CHECK line and the model card's section.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from skill import metrics as M
from skill.config import EvaluateConfig, TrainConfig
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid
from skill.io import read_json, read_parquet, write_json, write_text
from skill.manifest import Run, Stage
from skill.render import render
from skill.runfolder import (
    ARTIFACTS,
    CHECKPOINTS,
    FUSION,
    QRELS_DEV,
    QRELS_HELDOUT,
    SCORES,
    SCRIPT,
    SMOKE,
    SPLIT,
    STAGE_OUTPUTS,
    STUDENT,
    STUDENT_DEV_SCORES,
    TRAIN_RESULT,
    Split,
    TrainResult,
)

# What train.py reads, by artifact key (skill.runfolder.ARTIFACTS); the dev ones only where `mine` wrote them.
REQUIRED_INPUTS = ("scores", "heldout_candidates", "qrels_heldout", "split")
DEV_INPUTS = ("dev_candidates", "qrels_dev")
CARD_SECTION = "## Dev check (reranker-skill)"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `train` dies, even by kill -9 — an orphaned train.py would keep
    writing checkpoints while the user's `train --resume` starts a second one on the same folder."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _stream(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, *, append: bool) -> tuple[int, list[str], list[str]]:
    """Run `cmd`, copying its output line by line to stderr and to `log`; returns (exit code, last lines, warnings it printed)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    warnings: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if append else "w", encoding="utf-8", buffering=1) as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            errors="replace",
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                sys.stderr.flush()
                log_file.write(line)
                tail.append(line.rstrip("\n"))
                if line.startswith("warning: "):
                    warnings.append(line.strip().removeprefix("warning: "))
            return proc.wait(), list(tail), warnings
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
        # --multi_gpu is accelerate's launcher of N local processes (torchrun underneath); train.py picks gloo on a machine
        # without a GPU. Without it, and without a GPU, `accelerate launch --num_processes N` starts one process (--cpu: MPI only).
        processes = ["--multi_gpu", "--num_processes", str(nproc_per_node)] if (nproc_per_node or 1) > 1 else []
        return [sys.executable, "-m", "accelerate.commands.launch", *processes, str(script)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node or 1), str(script)]
    raise SkillError(f"unknown launcher {launcher!r}", code=ExitCode.USAGE, fix="use --launcher python, accelerate or torchrun")


def check_selection_queries(run: Run) -> None:
    """The queries that choose the checkpoint (dev, else held-out) need a positive, or there is nothing to choose by."""
    from skill.render import selection_split

    split = selection_split(run)
    qrels = run.file(QRELS_DEV if split == "dev" else QRELS_HELDOUT)
    if qrels.exists() and not any(g > 0 for grades in read_json(qrels).values() for g in grades.values()):
        raise invalid(
            f"no {split} query has a positive in {qrels.name}: nothing can choose the checkpoint",
            where=str(qrels),
            fix=f"rerun `reranker-skill mine --run {run.path} --force` with qrels that label the {split} queries",
        )


def failure_fix(run: Path, log: Path, *, smoke: bool, has_checkpoint: bool) -> str:
    """What to do after train.py failed: a failed smoke is fixed and smoked again, never followed by the full run."""
    if smoke:
        return f"read {log}, fix what it reports, then rerun the smoke: `reranker-skill train --run {run} --smoke`"
    return f"read {log}; then rerun `reranker-skill train --run {run}" + (" --resume` to continue from the last checkpoint" if has_checkpoint else "`")


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
    mine_record = run_.stage("mine")
    dev = [k for k in DEV_INPUTS if mine_record is not None and k in mine_record.outputs]
    warnings += run_.require([*REQUIRED_INPUTS, *dev], needed_by="train")
    _check_no_heldout_in_training(run_)
    check_selection_queries(run_)

    name = "train_smoke" if smoke else "train"
    stage = Stage(run_, name, config={"smoke": smoke}, inputs={"script": script, **{k: run_.file(ARTIFACTS[k].name) for k in (*REQUIRED_INPUTS, *dev)}})
    if not resume and (done := stage.skip(force=force, result=lambda prev: _skipped(run_, prev, warnings))) is not None:
        return done

    # A smoke run is one step: always a single process.
    cmd = launch_command(script.resolve(), "python" if smoke else launcher, nproc_per_node) + (["--smoke"] if smoke else []) + (["--resume"] if resume else [])
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("SMOKE", None)
    print(f"running: {' '.join(cmd)}", file=sys.stderr)
    outputs = STAGE_OUTPUTS[name]
    out_rel = f"{SMOKE}/" if smoke else ""
    with stage.transaction() as tx:  # the record says `running` while train.py writes student/, train_result.json, checkpoints/
        log = run_.file(outputs["log"])
        code, tail, script_warnings = _stream(cmd, run_.path, env, log, append=resume)
        if code != 0:
            last = next((line for line in reversed(tail) if line.strip()), "(no output)")
            has_checkpoint = any(run_.file(f"{out_rel}{CHECKPOINTS}").glob("checkpoint-*"))
            raise SkillError(
                f"train.py exited with code {code}: {last[:300]}",
                code=ExitCode.RUNTIME_FAILURE,
                where=str(log),
                fix=failure_fix(run_.path, log, smoke=smoke, has_checkpoint=has_checkpoint),
            )
        if not run_.file(outputs["result"]).exists() or not run_.file(outputs["student_dev_scores"]).exists():
            raise SkillError(f"train.py finished without {TRAIN_RESULT} and {STUDENT_DEV_SCORES}", where=str(log), fix=f"read {log} and report it")
        check = dev_check(run_, out_rel)
        with open(log, "a", encoding="utf-8") as log_file:
            log_file.write(check["line"] + "\n")
        result = TrainResult.model_validate(read_json(run_.file(outputs["result"])))
        for key, rel in outputs.items():
            tx.adopt(key, rel)
        metrics = {
            "dev_check": check["label"],
            "dev_check_line": check["line"],
            "ndcg@10": check["student"]["ndcg@10"],
            "baseline_ndcg@10": check["baseline"]["ndcg@10"],
            "first_stage_ndcg@10": check["first_stage"]["ndcg@10"],
            "delta_first_stage": check["delta"],
            "p_value": check["p_value"],
            "global_step": result.global_step,
            "ended_by": result.ended_by,
            "train_pairs_per_second": result.throughput.get("train_pairs_per_second"),
            "effective_global_batch": result.effective_global_batch,
            "seconds": result.seconds,
            "smoke": smoke,
            "resumed": result.resumed_from is not None,
            "selection_split": result.selection_split,
            "dev_queries": check["queries"],
            "fusion_alpha": check["fusion"]["alpha"],
            "fused_ndcg@10": check["fusion"]["ndcg@10"],
        }
        tx.metrics.update(metrics)
    warnings += script_warnings
    if result.selection_split != "dev":
        warnings.append(
            "no dev queries in this run folder: the checkpoint and the fusion weight were chosen on held-out queries, so `evaluate` on them is optimistic"
        )
    if result.push and not result.push.get("ok") and not any(w.startswith("push to") for w in script_warnings):
        warnings.append(f"push to {result.push.get('repo')} failed: {result.push.get('error')} (the model is saved locally)")
    artifacts = {k: str(run_.file(v)) for k, v in outputs.items()}
    text = "\n".join([check["line"], f"student: {artifacts['student']}", f"result: {artifacts['result']}"])
    return Result(artifacts=artifacts, metrics=metrics, warnings=warnings, text=text)


def dev_check(run: Run, out_rel: str = "") -> dict:
    """Judge the trained student on the queries that chose its checkpoint, with skill.metrics (what `evaluate` uses).

    Reads student_dev_scores.parquet; writes student/fusion.json, a section of the model card, and `dev_check` in
    train_result.json. The label follows `metrics.verdict` (student vs first stage, paired test), but these queries
    chose the checkpoint: it is a check, optimistic by construction, not the held-out verdict.
    """
    out = run.file(out_rel) if out_rel else run.path
    result = read_json(out / TRAIN_RESULT)
    split = result["selection_split"]
    table = read_parquet(out / STUDENT_DEV_SCORES)
    query_ids = [str(q) for q in table.column("query_id").to_pylist()]
    doc_ids = [str(d) for d in table.column("doc_id").to_pylist()]
    column = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in ("rank", "first_stage_score", "score", "baseline_score")}
    groups = M.per_query_groups(query_ids)
    qrels_all = read_json(run.file(QRELS_DEV if split == "dev" else QRELS_HELDOUT))
    qrels = {q: {str(d): float(g) for d, g in qrels_all[q].items()} for q in groups}
    k = max(len(ix) for ix in groups.values())
    common = {"doc_ids": doc_ids, "first_stage_rank": column["rank"], "groups": groups, "qrels": qrels, "k": k}
    per_query = {
        "first_stage": M.system_metrics(-column["rank"], **common),
        "baseline": M.system_metrics(column["baseline_score"], **common),
        "student": M.system_metrics(column["score"], **common),
    }
    fusion = {**M.choose_fusion_weight(column["score"], column["first_stage_score"], **common), "split": split}
    queries = sorted(per_query["student"])
    means = {name: {m: float(np.mean(M.column(rows, m, queries))) for m in ("ndcg@10", "mrr@10")} for name, rows in per_query.items()}
    defaults = EvaluateConfig()
    paired = M.paired_test(
        M.column(per_query["student"], "ndcg@10", queries),
        M.column(per_query["first_stage"], "ndcg@10", queries),
        resamples=defaults.resamples,
        seed=defaults.seed,
    )
    label = M.verdict(paired.delta, paired.p_value, margin=defaults.margin, alpha=defaults.alpha)
    line = (
        f"DEV CHECK: {label} | student ndcg@10={means['student']['ndcg@10']:.4f} vs first stage {means['first_stage']['ndcg@10']:.4f}"
        f" (Δ {paired.delta:+.4f}, p = {paired.p_value:.3g}) | before training {means['baseline']['ndcg@10']:.4f}"
        f" | fused α={fusion['alpha']:g} {fusion['ndcg@10']:.4f} | on {len(queries)} {split} queries that chose the checkpoint:"
        " optimistic, not the held-out verdict (run `reranker-skill evaluate`)"
    )
    check = {
        "label": label,
        "line": line,
        "queries": len(queries),
        "split": split,
        "first_stage": means["first_stage"],
        "baseline": means["baseline"],
        "student": means["student"],
        "delta": paired.delta,
        "p_value": paired.p_value,
        "fusion": fusion,
        "rule": f"metrics.verdict: student vs first stage, margin {defaults.margin:g}, p < {defaults.alpha:g} (paired randomisation test)",
    }
    student = out / STUDENT
    write_json(student / FUSION, fusion)
    write_text(student / "README.md", card_with_section((student / "README.md").read_text(encoding="utf-8"), check))
    write_json(out / TRAIN_RESULT, {**result, "dev_check": check})
    return check


def card_with_section(card: str, check: dict) -> str:
    """The sentence-transformers model card with our section (numbers from skill.metrics) replacing any earlier one."""
    card = card.split(f"\n{CARD_SECTION}\n")[0].rstrip("\n")
    split = "dev" if check["split"] == "dev" else "held-out"
    rows = [
        ("first stage", check["first_stage"]),
        ("student before training", check["baseline"]),
        ("**this model**", check["student"]),
    ]
    lines = [
        "",
        CARD_SECTION,
        "",
        f"Reranking the first stage's candidates of the {check['queries']} {split} queries that chose this checkpoint, measured with",
        "`skill.metrics` (NDCG@10 with graded gains over every judged positive, as `reranker-skill evaluate` computes it):",
        "",
        "| system | NDCG@10 | MRR@10 |",
        "|---|---|---|",
        *(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} |" for name, m in rows),
        f"| fused with the first stage, α = {check['fusion']['alpha']:g} (`{FUSION}`) | {check['fusion']['ndcg@10']:.4f} | |",
        "",
        f"Dev check: **{check['label']}** (Δ vs first stage {check['delta']:+.4f}, p = {check['p_value']:.3g}; {check['rule']}).",
        "These queries chose the checkpoint, so the numbers are optimistic: the held-out report of `reranker-skill evaluate` is the one to trust.",
        "The evaluation results above come from sentence-transformers' CrossEncoderRerankingEvaluator, which chose the checkpoint; it counts",
        "only the positives the first stage retrieved, so it reads higher. Fused score, per query over its candidates:",
        "α·z(this model's score) + (1 − α)·z(first-stage score), z = (x − mean) / std. `predict`/`rank` return raw scores (Identity activation).",
        "",
    ]
    return card + "\n" + "\n".join(lines)


def _skipped(run: Run, prev, warnings: list[str]) -> Result:
    return Result(
        artifacts={k: str(run.file(v)) for k, v in prev.outputs.items()},
        metrics={**prev.metrics, "skipped": True},
        warnings=[*warnings, "train is up to date (same script and data): skipped; pass --force to train again"],
        text=prev.metrics.get("dev_check_line", "train: up to date"),
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
