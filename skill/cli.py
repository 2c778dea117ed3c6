"""The command line: a thin click layer over the stage modules.

Every command takes `--json` and then prints exactly one JSON envelope on stdout; anything a
library prints while the command runs goes to stderr. Expected failures are one line and a
fixed exit code (`skill.errors.ExitCode`); tracebacks only with `--debug`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from skill.envelope import Result, error_result, to_json
from skill.errors import ExitCode, SkillError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit(command: str, result: Result, as_json: bool) -> None:
    if as_json:
        click.echo(to_json(command, result))
        return
    if result.text:
        stream_err = result.exit_code not in (ExitCode.OK, ExitCode.PARTIAL)
        click.echo(result.text, err=stream_err)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)


def envelope_command(name: str, **settings) -> Callable:
    """Register a command that returns a `Result`; adds `--json` and the error handling."""

    def decorate(fn: Callable[..., Result]) -> click.Command:
        @click.option("--json", "as_json", is_flag=True, help="Print one JSON envelope on stdout.")
        @functools.wraps(fn)
        def wrapper(as_json: bool, **kwargs):
            debug = bool(os.environ.get("RERANKER_SKILL_DEBUG"))
            inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if v not in (None, (), [])}
            inputs.pop("token", None)  # never echo a hub token
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    result = fn(**kwargs)
                result.inputs = {**inputs, **result.inputs}
            except SkillError as err:
                result = error_result(err, inputs)
            except KeyboardInterrupt:
                result = error_result(SkillError("interrupted", code=ExitCode.RUNTIME_FAILURE, fix="rerun the same command; finished work is kept"), inputs)
            except Exception as exc:  # an unexpected failure: still one line, still an envelope
                if debug:
                    traceback.print_exc()
                err = SkillError(
                    f"unexpected {type(exc).__name__}: {exc}".splitlines()[0][:500],
                    code=ExitCode.RUNTIME_FAILURE,
                    fix="set RERANKER_SKILL_DEBUG=1 for the traceback and report it",
                )
                result = error_result(err, inputs)
            _emit(name, result, as_json)
            sys.exit(int(result.exit_code))

        return cli.command(name, **settings)(wrapper)

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reranker-skill")
def cli() -> None:
    """Fine-tune a domain reranker: inspect → mine → score → render → train → evaluate.

    Every command takes --json (one JSON envelope on stdout). Exit codes: 0 ok, 2 usage,
    3 missing prerequisite, 4 missing resource, 5 invalid input, 6 runtime failure,
    7 partial result / failed gate.
    """


class _RunFolder(click.Path):
    """A run folder: any path but an empty one (`--run ""` would mean the current folder, and overwrite its files)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            exc = click.BadParameter("the run folder is empty — fix: name a run folder, e.g. --run runs/NAME", ctx=ctx, param=param)
            exc.fix = "name a run folder, e.g. --run runs/NAME"  # type: ignore[attr-defined]
            raise exc
        return super().convert(value, param, ctx)


RUN_FOLDER = _RunFolder(path_type=Path)


class _EnsembleWeight(click.ParamType):
    """An ensemble weight: a number above 0, or `auto` (chosen by `score` on the training queries)."""

    name = "NUMBER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)
        if not (number > 0 and number < float("inf")):
            self.fail(f"{value!r}: a weight is above 0 (leave the teacher out instead) and finite", param, ctx)
        return number


ENSEMBLE_WEIGHT = _EnsembleWeight()


def _option_error(exc: ValueError) -> str:
    """`--flag: what is wrong` from a pydantic ValidationError (its last line is only a documentation link)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") + ": " if first.get("loc") else ""
        return flag + str(first["msg"]).removeprefix("Value error, ")
    return str(exc).splitlines()[0] if str(exc) else "invalid option"


def map_option(fn):
    return click.option(
        "--map",
        "mapping",
        multiple=True,
        metavar="KIND.FIELD=COLUMN",
        help="Map a column, e.g. corpus.text=contents, queries.id=qid, qrels.doc_id=pid. Repeatable.",
    )(fn)


# --------------------------------------------------------------------------------------------- doctor


@envelope_command("doctor")
def doctor_cmd() -> Result:
    """Check the environment: versions, accelerate, CUDA, bf16, FlashAttention, disk, hub, packaged models."""
    from skill.doctor import doctor

    return doctor()


# --------------------------------------------------------------------------------------------- inspect


@envelope_command("inspect")
@click.option("--corpus", type=click.Path(path_type=Path), required=True, help="Corpus file or datasets folder (_id/id, text[, title]).")
@click.option("--queries", type=click.Path(path_type=Path), required=True, help="Queries file (_id/id, text).")
@click.option("--qrels", type=click.Path(path_type=Path), help="Relevance labels (query-id, corpus-id, score).")
@click.option("--tokenizer", help="Student tokenizer (hub id or folder) for token-length statistics.")
@click.option("--max-doc-chars", type=click.IntRange(min=1), default=None, help="Reject documents longer than this (default 1,000,000).")
@map_option
def inspect_cmd(corpus: Path, queries: Path, qrels: Path | None, tokenizer: str | None, max_doc_chars: int | None, mapping: tuple[str, ...]) -> Result:
    """Preflight the data: READY, NEEDS MAPPING, NEEDS LABELS or INVALID, with the fix for each problem. Exit 0 only when READY.

    READY means mine, score, train and evaluate accept the data: unlabelled data (no qrels, or no
    grade above 0) is NEEDS LABELS, since train and evaluate need labelled queries.
    """
    from skill.data import DEFAULT_MAX_DOC_CHARS, ColumnMapping
    from skill.preflight import inspect_data

    return inspect_data(
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        mapping=ColumnMapping.parse(mapping),
        tokenizer=tokenizer,
        max_doc_chars=max_doc_chars or DEFAULT_MAX_DOC_CHARS,
    )


# --------------------------------------------------------------------------------------------- mine, score (issue 3)


@envelope_command("mine")
@click.option("--run", "run_dir", type=RUN_FOLDER, required=True, help="Run folder (created if missing).")
@click.option("--corpus", type=click.Path(path_type=Path), required=True, help="Corpus file or datasets folder.")
@click.option("--queries", type=click.Path(path_type=Path), required=True, help="Queries file.")
@click.option("--qrels", type=click.Path(path_type=Path), help="Relevance labels (needed for evaluation and the optional false-negative guard).")
@click.option("--retriever", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True, help="First stage.")
@click.option("--embedder", default="google/embeddinggemma-300m", show_default=True, help="Dense first stage: sentence-transformers hub id or local folder.")
@click.option("--train-top-k", type=click.IntRange(min=1), default=30, show_default=True, help="Candidates per training query.")
@click.option("--eval-top-k", type=int, default=100, show_default=True, help="Candidates per held-out query (2 or more; reranking is judged on them).")
@click.option("--heldout", type=float, default=0.2, show_default=True, help="Fraction of labelled queries held out.")
@click.option("--heldout-queries", type=click.Path(path_type=Path), help="File of held-out query ids, one per line (overrides --heldout).")
@click.option(
    "--dev-queries",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Training queries kept out of training to choose the checkpoint and fusion weight (at most a fifth; 0: none).",
)
@click.option("--seed", type=int, default=12, show_default=True)
@click.option("--negative-rank-min", type=click.IntRange(min=1), default=1, show_default=True, help="Skip negatives ranked above this (rank window start).")
@click.option("--num-negatives", type=click.IntRange(min=1), help="Keep at most this many negatives per training query (best ranked first).")
@click.option(
    "--relative-margin",
    type=click.FloatRange(min=0),
    help="Opt-in first-stage false-negative guard (for binary labels; off by default: the teacher labels every candidate): "
    "drop candidates whose guard score is above best positive - |best positive| x margin (0.05 = mine_hard_negatives' usual).",
)
@click.option("--absolute-margin", type=float, help="Opt-in guard: drop candidates whose guard score is above best positive - margin.")
@click.option("--max-score", type=float, help="Opt-in guard: drop candidates whose guard score exceeds this.")
@click.option(
    "--guard-score",
    type=click.Choice(["auto", "bm25", "dense"]),
    default="auto",
    show_default=True,
    help="The real score the guard compares: auto = the first stage's own (BM25 or dense cosine); on hybrid the dense cosine (or bm25), never RRF.",
)
@click.option("--no-guard", is_flag=True, help="No first-stage guard (the default); overrides --relative-margin, --absolute-margin and --max-score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Embedding batch size.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Corpus-embedding cache (default RUN/cache).")
@click.option("--max-doc-chars", type=click.IntRange(min=1), default=None, help="Reject documents longer than this (default 1,000,000).")
@click.option("--force", is_flag=True, help="Redo even if the stage is up to date.")
@map_option
def mine_cmd(
    run_dir: Path, corpus: Path, queries: Path, qrels: Path | None, mapping: tuple[str, ...], max_doc_chars: int | None, force: bool, no_guard: bool, **options
) -> Result:
    """Split queries and mine candidates: train pairs (the first stage's top-K; the teacher labels them), dev and held-out top-K."""
    from skill.config import DataConfig, MineConfig
    from skill.data import ColumnMapping
    from skill.mine import mine

    if no_guard:
        options["relative_margin"] = options["absolute_margin"] = options["max_score"] = None
    try:
        config = MineConfig(**options)
    except ValueError as exc:
        fix = "pass --eval-top-k 2 or more (default 100)" if "--eval-top-k" in _option_error(exc) else "see `reranker-skill mine --help`"
        raise SkillError(_option_error(exc), code=ExitCode.USAGE, fix=fix) from None
    data = DataConfig(
        corpus=corpus, queries=queries, qrels=qrels, mapping=ColumnMapping.parse(mapping), **({"max_doc_chars": max_doc_chars} if max_doc_chars else {})
    )
    return mine(run_dir, data, config, force=force)


@envelope_command("score")
@click.option("--run", "run_dir", type=RUN_FOLDER, required=True, help="Run folder that `mine` wrote.")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    required=True,
    help="Teacher: hub id, local model folder, scores file, or `first-stage` (the first stage's own scores, in an ensemble). Repeat for an ensemble.",
)
@click.option(
    "--teacher-type",
    "teacher_types",
    multiple=True,
    type=click.Choice(["auto", "cross-encoder", "mxbai-v2", "bi-encoder", "file", "first-stage"]),
    help="One per --teacher (or one for all). Default auto.",
)
@click.option(
    "--weight",
    "weights",
    multiple=True,
    type=ENSEMBLE_WEIGHT,
    help="Ensemble weight, one per --teacher (default 1); `auto` once: chosen for best NDCG@10 on the training queries.",
)
@click.option(
    "--score-space", type=click.Choice(["raw_logit", "probability", "cosine", "normalised"]), help="Score space of a `file` teacher (inferred when omitted)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Pairs per batch at full length; short pairs pack more.")
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=512,
    show_default=True,
    help="Max tokens of query + document text per pair; special tokens or a prompt template come on top.",
)
@click.option(
    "--token-budget",
    type=click.IntRange(min=8),
    help="Padded tokens per batch (default batch-size x (min(max-length, 256) + the teacher's special/template tokens)).",
)
@click.option("--chunk-size", type=click.IntRange(min=1), default=4096, show_default=True, help="Unique pairs per committed chunk (the most a kill can lose).")
@click.option("--shard", help="Score only shard i of n (1-based, e.g. 2/4); the last one to finish merges.")
@click.option("--merge", "merge_only", is_flag=True, help="Only merge finished shards into the tables.")
@click.option("--device", help="torch device for one worker in this process (default: see --devices).")
@click.option("--devices", help="Comma-separated devices, one worker process each, e.g. cuda:0,cuda:1 or cpu,cpu (default: every visible GPU, else cpu).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (--devices); ray: actors on a Ray cluster (needs reranker-skill[cluster]).",
)
@click.option("--ray-address", help="Ray cluster to join with --engine ray (default: RAY_ADDRESS, else a local cluster).")
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors (default: one per GPU of the cluster, else one per node).")
@click.option(
    "--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True, help="auto = bf16/fp16 on CUDA, fp32 elsewhere."
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="onnx: run cross-encoder teachers on CPU through onnxruntime (exported once to RUN/cache, parity-checked); others fall back to torch.",
)
@click.option("--fail-on-gate", is_flag=True, help="Exit 7 when the teacher does not beat the first stage on the dev queries.")
@click.option("--force", is_flag=True, help="Redo even if up to date (finished chunks are still reused).")
def score_cmd(
    run_dir: Path,
    teachers: tuple[str, ...],
    teacher_types: tuple[str, ...],
    weights: tuple[float | str, ...],
    score_space: str | None,
    force: bool,
    merge_only: bool,
    devices: str | None,
    **options,
) -> Result:
    """Score every mined pair (training, held-out, dev) with a teacher; raw scores, resumable, shardable; ends with the teacher gate on the dev queries."""
    from skill.config import ScoreConfig
    from skill.score import score, teacher_specs

    try:
        device_list = [d.strip() for d in devices.split(",")] if devices is not None else None
        config = ScoreConfig(teachers=teacher_specs(teachers, teacher_types, weights, score_space), devices=device_list, **options)
    except ValueError as exc:
        message = _option_error(exc)
        fix = (
            "write --shard i/n, e.g. --shard 1/4"
            if message.startswith("--shard")
            else "change the flags as the message says (see `reranker-skill score --help`)"
        )
        raise SkillError(message, code=ExitCode.USAGE, fix=fix) from None
    return score(run_dir, config, force=force, merge_only=merge_only)


# --------------------------------------------------------------------------------------------- render, train (issue 4)

_TRAIN_OPTIONS = [
    click.option(
        "--size",
        type=click.Choice(["17m", "32m", "68m", "150m", "400m", "1b"]),
        help="Ettin student size (defaults from skill/ettin_sizes.yaml; 17m if no size is given).",
    ),
    click.option("--base", help="Start from another encoder, a bi-encoder folder, or a reranker to continue (hub id or folder)."),
    click.option("--base-kind", type=click.Choice(["auto", "encoder", "bi-encoder", "reranker"]), help="What --base is (auto: from its files or name)."),
    click.option("--pooling", type=click.Choice(["cls", "mean"]), help="Pooling for a new head (default cls; mean for a bi-encoder base)."),
    click.option("--head", type=click.Choice(["ettin", "linear"]), help="ettin: Dense+GELU → LayerNorm → Dense; linear: one Dense."),
    click.option("--loss", type=click.Choice(["mse", "margin-mse", "listnet"]), help="Distillation loss (default mse on raw teacher scores)."),
    click.option(
        "--label-transform",
        type=click.Choice(["raw", "centred", "zscore"]),
        help="centred: minus each query's mean teacher score; zscore: also divide by its spread.",
    ),
    click.option(
        "--gold-positives",
        type=click.Choice(["none", "lift"]),
        help="lift: qrels positives of training queries get the query's top teacher label + --gold-margin.",
    ),
    click.option("--gold-margin", type=float, help="How far above the teacher's best a gold positive is lifted (default 2.0)."),
    click.option(
        "--gold-guard-margin",
        type=float,
        help="With lift: leave out candidates the teacher scores at or above a gold positive's label minus this (likely unlabelled positives; default 0).",
    ),
    click.option("--list-size", type=int, help="Documents per query group for listnet (default 8)."),
    click.option("--head-lr-multiplier", type=float, help="Learning rate of the head = learning rate × this (default 1)."),
    click.option("--learning-rate", type=float, help="Peak learning rate (default: the size's)."),
    click.option("--global-batch", type=int, help="Scored pairs per optimizer step over all devices (default: the size's)."),
    click.option("--per-device-batch", type=int, help="Scored pairs per forward pass on one device."),
    click.option("--epochs", type=float, help="Passes over the scored pairs (default 1)."),
    click.option("--warmup-ratio", type=float, help="Linear warm-up as a fraction of training (default 0.03)."),
    click.option("--max-steps", type=int, help="Stop after this many optimizer steps."),
    click.option("--max-minutes", type=float, help="Wall-clock budget: stop cleanly, then evaluate and save."),
    click.option("--max-seq-length", type=int, help="Tokens per (query, document) pair (default 256)."),
    click.option("--eval-every", type=float, help="Evaluate and save every N steps (>= 1) or fraction of training (< 1; default 0.05)."),
    click.option("--eval-queries", type=int, help="Choose checkpoints on at most this many dev queries (held-out ones if the run has no dev split)."),
    click.option("--early-stopping-patience", type=int, help="Evaluations without improvement before stopping (0 = off; default 4)."),
    click.option("--seed", type=int, help="Random seed (default 12)."),
    click.option("--push-to-hub", metavar="USER/REPO", help="Push the best model to this hub repo (private); a failed push never fails the run."),
    click.option("--trust-remote-code", is_flag=True, default=None, help="Allow custom model code from --base."),
]


def train_options(fn):
    for option in reversed(_TRAIN_OPTIONS):
        fn = option(fn)
    return fn


def _train_config(overrides: dict):
    """A validated TrainConfig from the flags that were given; None when none were."""
    from pydantic import ValidationError

    from skill.config import TrainConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return None
    try:
        return TrainConfig(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first.get("loc"):
            message = "--" + str(first["loc"][0]).replace("_", "-") + ": " + message
        raise SkillError(message, code=ExitCode.USAGE, fix="see `reranker-skill render --help`") from None


@envelope_command("render")
@click.option("--run", "run_dir", type=RUN_FOLDER, required=True, help="The run folder (runs/NAME).")
@train_options
@click.option("--force", is_flag=True, help="Overwrite a train.py that was edited by hand.")
@click.option("--no-estimate", is_flag=True, help="Do not measure the speed here (the estimate loads the base and times a few training passes).")
def render_cmd(run_dir: Path, force: bool, no_estimate: bool, **overrides) -> Result:
    """Write runs/NAME/train.py, a standalone training script for the chosen size, and print how to run it and how long it will take."""
    from skill.config import TrainConfig
    from skill.render import render

    return render(run_dir, _train_config(overrides) or TrainConfig(), force=force, estimate=not no_estimate)


@envelope_command("train")
@click.option("--run", "run_dir", type=RUN_FOLDER, required=True, help="The run folder (runs/NAME).")
@train_options
@click.option("--smoke", is_flag=True, help="One training step end to end (outputs under runs/NAME/smoke/).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint after an interruption.")
@click.option(
    "--launcher",
    type=click.Choice(["python", "accelerate", "torchrun"]),
    default="python",
    show_default=True,
    help="How to start train.py: one process, accelerate launch, or torchrun.",
)
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Processes (GPUs) for accelerate/torchrun.")
@click.option("--force", is_flag=True, help="Train again even if up to date; re-render over a hand-edited train.py.")
def train_cmd(run_dir: Path, smoke: bool, resume: bool, launcher: str, nproc_per_node: int | None, force: bool, **overrides) -> Result:
    """Run runs/NAME/train.py (rendering it first if needed) with live progress; record the verdict in manifest.json."""
    from skill.train import train

    return train(run_dir, _train_config(overrides), smoke=smoke, resume=resume, force=force, launcher=launcher, nproc_per_node=nproc_per_node)


# --------------------------------------------------------------------------------------------- evaluate (issue 5)


@envelope_command("evaluate")
@click.option("--run", "run_dir", type=RUN_FOLDER, required=True, help="The run folder (held-out candidates, qrels, student/).")
@click.option("--model", "models", multiple=True, metavar="PATH", help="An extra reranker to show side by side (folder or hub id). Repeatable.")
@click.option("--student", metavar="PATH", help="The student to judge (default: RUN/student).")
@click.option("--base", metavar="PATH", help="The base before training (default: the base recorded by render).")
@click.option("--skip-base", is_flag=True, help="Do not score the base (saves a pass; train.py already measured its baseline).")
@click.option(
    "--teacher/--no-teacher",
    default=None,
    help="Time the teacher model(s) of scores.meta.json for the serving recommendation (default: only a small local bi-encoder or cross-encoder).",
)
@click.option("--fail-on", type=click.Choice(["regression", "marginal"]), help="Exit 7 when the verdict is REGRESSION (or MARGINAL or worse).")
@click.option("--margin", type=click.FloatRange(0, 1, max_open=True), default=None, help="ΔNDCG@10 a WIN needs (default 0.01).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, help="Significance level (default 0.05).")
@click.option("--resamples", type=click.IntRange(100, 1_000_000), default=None, help="Bootstrap / randomisation resamples (default 10000).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per forward pass (default 64).")
@click.option("--max-length", type=click.IntRange(8, 8192), default=None, help="Truncate pairs to this many tokens (default: each model's own).")
@click.option("--device", help="cpu, cuda, cuda:1, mps (default: best available).")
@click.option("--nanobeir", is_flag=True, help="Also run the NanoBEIR general-domain check (needs the Hugging Face Hub).")
@click.option("--force", is_flag=True, help="Recompute even when the report is up to date.")
def evaluate_cmd(
    run_dir: Path,
    models: tuple[str, ...],
    student,
    base,
    skip_base,
    teacher,
    fail_on,
    margin,
    alpha,
    resamples,
    batch_size,
    max_length,
    device,
    nanobeir,
    force,
) -> Result:
    """Held-out verdict and what to serve: every system vs every other, significance, fidelity, collapse, cost. Writes report.json/.md/.png."""
    from skill.config import EvaluateConfig
    from skill.evaluate import evaluate

    given = {"margin": margin, "alpha": alpha, "resamples": resamples, "batch_size": batch_size, "max_length": max_length, "device": device}
    cfg = EvaluateConfig(
        models=list(models),
        student=student,
        base=base,
        skip_base=skip_base,
        teacher=teacher,
        fail_on=fail_on,
        nanobeir=nanobeir,
        **{k: v for k, v in given.items() if v is not None},
    )
    return evaluate(run_dir, cfg, force=force)


# --------------------------------------------------------------------------------------------- export (issue 7)


@envelope_command("export")
@click.option("--model", type=click.Path(path_type=Path), help="The reranker folder to export (default: RUN/student).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="Export format.")
@click.option("--quantize", type=click.Choice(["int8"]), help="Also write a dynamic int8 model (onnx/model_qint8_quantized.onnx).")
@click.option("--run", "run_dir", type=RUN_FOLDER, help="Run folder: parity on its held-out candidates; output under RUN/export/.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: RUN/export/onnx or onnx-int8).")
@click.option("--queries", type=click.IntRange(min=1), default=None, help="Held-out queries scored for parity (default 32).")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Candidates per query scored for parity (default 30).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per batch when timing (default 32).")
@click.option("--max-drift", type=click.FloatRange(min=0, min_open=True), default=None, help="fp32 tolerance: max |score drift| (default 1e-3).")
@click.option("--int8-min-overlap", type=click.FloatRange(0, 1), default=None, help="int8 tolerance: mean top-10 overlap (default 0.7).")
@click.option("--int8-max-ndcg-drop", type=click.FloatRange(0, 1), default=None, help="int8 tolerance: NDCG@10 drop (default 0.02).")
@click.option("--force", is_flag=True, help="Redo even when the export is up to date.")
def export_cmd(model, fmt, quantize, run_dir, out, queries, depth, batch_size, max_drift, int8_min_overlap, int8_max_ndcg_drop, force) -> Result:
    """Export a reranker to ONNX (fp32, optional int8) with a parity check. Exit 6: fp32 parity failed; 7: only int8 failed."""
    from skill.config import ExportConfig
    from skill.export import Tolerances, export_model

    given = {
        "queries": queries,
        "depth": depth,
        "batch_size": batch_size,
        "max_drift": max_drift,
        "int8_min_overlap": int8_min_overlap,
        "int8_max_ndcg_drop": int8_max_ndcg_drop,
    }
    cfg = ExportConfig(format=fmt, quantize=quantize, out=out, **{k: v for k, v in given.items() if v is not None})
    tol = Tolerances(fp32_max_drift=cfg.max_drift, int8_min_top10_overlap=cfg.int8_min_overlap, int8_max_ndcg_drop=cfg.int8_max_ndcg_drop)
    return export_model(
        model=model,
        fmt=cfg.format,
        quantize=cfg.quantize,
        run=run_dir,
        out=cfg.out,
        queries=cfg.queries,
        depth=cfg.depth,
        batch_size=cfg.batch_size,
        tolerances=tol,
        force=force,
    )


# --------------------------------------------------------------------------------------------- install, run, quickstart (issue 6)


@envelope_command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set train.max_steps=100. Repeatable.")
@click.option("--force", is_flag=True, help="Redo every stage even if up to date.")
def run_cmd(recipe: Path, overrides: tuple[str, ...], force: bool) -> Result:
    """Run a recipe's stages in order in one run folder (mine → score → render → train → evaluate [→ export]).

    Stages whose inputs and configuration are unchanged are skipped; the first failure stops
    the run with its message. Bundled recipes are found by file name (e.g. cpu-small.yaml).
    """
    from skill.pipeline import run_pipeline
    from skill.recipe import load_recipe

    return run_pipeline(load_recipe(recipe, overrides), force=force, log=lambda line: click.echo(line, err=True))


@envelope_command("quickstart")
@click.option("--run", "run_dir", type=RUN_FOLDER, default=Path("runs/quickstart"), show_default=True, help="Run folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the quickstart recipe. Repeatable.")
@click.option("--max-queries", type=click.IntRange(min=20), default=1600, show_default=True, help="Cap on the embedded domain's queries (it has ~1,400).")
@click.option("--force", is_flag=True, help="Redo every stage even if up to date.")
def quickstart_cmd(run_dir: Path, overrides: tuple[str, ...], max_queries: int, force: bool) -> Result:
    """The whole pipeline offline on an embedded domain (standard-library docstrings, packaged MiniLM), ~10 CPU minutes."""
    from skill.quickstart import quickstart

    return quickstart(run_dir=run_dir, overrides=overrides, max_queries=max_queries, force=force, log=lambda line: click.echo(line, err=True))


def _agent_options(fn):
    fn = click.option("--dest", type=click.Path(path_type=Path), help="Project folder to use instead of the git root above the working directory.")(fn)
    fn = click.option("--global", "global_", is_flag=True, help="User level: ~/.claude/skills or ~/.agents/skills.")(fn)
    return click.option("--agent", type=click.Choice(["claude", "codex"]), required=True, help="claude: .claude/skills/; codex: .agents/skills/.")(fn)


@envelope_command("install")
@_agent_options
@click.option("--symlink", is_flag=True, help="Link to this package's skill folder instead of copying (follows upgrades).")
@click.option("--force", is_flag=True, help="Replace an earlier install of reranker-skill (never someone else's folder).")
def install_cmd(agent: str, global_: bool, dest: Path | None, symlink: bool, force: bool) -> Result:
    """Install the skill (SKILL.md, references, templates, recipes) for Claude Code or Codex."""
    from skill.install import install

    return install(agent, global_=global_, symlink=symlink, dest=dest, force=force)  # type: ignore[arg-type]


@envelope_command("uninstall")
@_agent_options
def uninstall_cmd(agent: str, global_: bool, dest: Path | None) -> Result:
    """Remove what `install` created (and nothing else)."""
    from skill.install import uninstall

    return uninstall(agent, global_=global_, dest=dest)  # type: ignore[arg-type]


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(int(ExitCode.RUNTIME_FAILURE))
    except click.ClickException as exc:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if "--json" in sys.argv:
            err = SkillError(exc.format_message(), code=ExitCode.USAGE, fix=getattr(exc, "fix", None) or f"see `reranker-skill {command} --help`")
            click.echo(to_json(command, error_result(err)))
        else:
            exc.show()
        sys.exit(int(ExitCode.USAGE))
