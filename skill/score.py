"""`score`: label every mined pair with a teacher — raw scores, resumable, shardable, fast.

How the work is laid out, so that a kill, a rerun or N shards all give the same table:

1. The training pairs and held-out candidates are deduplicated on (query text, document
   text): identical pairs are scored once.
2. The unique pairs are sorted by token length under the teacher's tokenizer (the "plan",
   saved once) and cut into fixed chunks of `chunk_size` pairs. Chunk c belongs to shard
   c mod n, so every shard sees short and long pairs alike.
3. Inside a chunk, batches are packed to a token budget (short pairs pack many to a batch,
   long pairs few), scored under `inference_mode`, and the chunk's scores are committed to
   `score_work/<teacher>/chunk-NNNNNN.npy` by an atomic rename. A rerun skips committed
   chunks, so `kill -9` loses at most the chunk in flight; since a chunk's batches depend
   only on its content, the rerun's numbers are bit-identical.
4. When every chunk of every teacher is present, the tables are assembled, labelled,
   checked (NaN, collapse, saturation) and written. Shards that finish early stop there; the
   last one (or `--merge`) writes the tables.

Where the chunks are scored — this process, one worker process per device (`--devices`), or Ray
actors (`--engine ray`) — is skill.score_engines' business; every engine fills the same chunk store.
The dev candidates are scored too, and the stage ends with the teacher gate (skill.gate).

`--backend onnx` runs CPU cross-encoder teachers through onnxruntime (skill.teacher.OnnxCrossEncoderTeacher):
the same plan, chunks and batches, a graph exported once into RUN/cache/onnx-<key>/, and a parity
check against torch on the first batch before anything is committed (exit 6 past 1e-3). Its chunks
live in their own work folder (the backend is part of the teacher's fingerprint). Other teachers,
and any teacher on a GPU, stay on torch with a warning.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skill.config import FIRST_STAGE_TEACHER, ScoreConfig, TeacherSpec
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid
from skill.io import atomic_path, hash_obj, read_json, read_parquet, write_json, write_parquet
from skill.manifest import Run, Stage
from skill.runfolder import CACHE, DEV_CANDIDATES, HELDOUT_CANDIDATES, QRELS_DEV, SCORE_WORK, SCORES_META, SPLIT, STAGE_OUTPUTS, TRAIN_PAIRS, ScoresMeta, Split
from skill.teacher import LOOKUP_TEACHERS, FileTeacher, FirstStageTeacher, ModelTeacher, Teacher, load_teacher

OUTPUTS = dict(STAGE_OUTPUTS["score"])  # dev_scores only when the run has a dev split (the teacher gate's table)
WORK = SCORE_WORK
COLLAPSE_RATIO = 0.1  # median within-query std below this share of the overall std: MSE learns the mean
COLLAPSE_ABS = 1e-3


def teacher_specs(teachers, types, weights, score_space: str | None) -> list[TeacherSpec]:
    """Pair up repeated --teacher / --teacher-type / --weight flags (one `--weight auto` stands for every teacher)."""
    teachers, types, weights = list(teachers), list(types), list(weights)
    if len(types) not in (0, 1, len(teachers)):
        raise SkillError(
            f"{len(types)} --teacher-type for {len(teachers)} --teacher", code=ExitCode.USAGE, fix="give one --teacher-type per --teacher, or one for all"
        )
    if weights == ["auto"]:
        weights = weights * len(teachers)
    if len(weights) not in (0, len(teachers)):
        raise SkillError(
            f"{len(weights)} --weight for {len(teachers)} --teacher", code=ExitCode.USAGE, fix="give one --weight per --teacher, or --weight auto once"
        )
    types = types * len(teachers) if len(types) == 1 else types or ["auto"] * len(teachers)
    if len(set(types)) == 1:  # one type for all: the first stage keeps its own (it is no model)
        types = ["first-stage" if m == FIRST_STAGE_TEACHER else k for m, k in zip(teachers, types, strict=True)]
    weights = weights or [1.0] * len(teachers)
    specs = []
    for model, kind, weight in zip(teachers, types, weights, strict=True):
        is_file = kind == "file" or (kind == "auto" and Path(model).expanduser().is_file())
        specs.append(TeacherSpec(model=model, type=kind, weight=weight, score_space=score_space if is_file else None))
    return specs


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/n' (1-based) → (i-1, n)."""
    if shard is None:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise SkillError(f"--shard {shard!r} is not i/n with 1 <= i <= n", code=ExitCode.USAGE, fix="shards count from 1: use --shard 1/4 … --shard 4/4")
    return int(m.group(1)) - 1, int(m.group(2))


# ---------------------------------------------------------------------------------------------
# The unique pairs of a run


@dataclass
class PairSet:
    queries: list[str]  # unique pairs
    docs: list[str]
    first_row: list[tuple[str, str]]  # (query_id, doc_id) of a row holding each unique pair, for messages
    train_map: np.ndarray  # train row -> unique pair index
    held_map: np.ndarray
    digest: str
    dev_map: np.ndarray | None = None  # dev candidate row -> unique pair index (None: the run has no dev split)

    def __len__(self) -> int:
        return len(self.queries)


def collect_pairs(train, held, dev=None) -> PairSet:
    index: dict[tuple[str, str], int] = {}
    queries: list[str] = []
    docs: list[str] = []
    first: list[tuple[str, str]] = []
    maps = []
    for table in (train, held) if dev is None else (train, held, dev):
        q, d = table.column("query").to_pylist(), table.column("document").to_pylist()
        qid, did = table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()
        m = np.empty(len(q), dtype=np.int64)
        for i, key in enumerate(zip(q, d, strict=True)):
            j = index.get(key)
            if j is None:
                j = index[key] = len(queries)
                queries.append(key[0])
                docs.append(key[1])
                first.append((qid[i], did[i]))
            m[i] = j
        maps.append(m)
    import hashlib

    h = hashlib.sha256()
    for q, d in zip(queries, docs, strict=True):
        h.update(q.encode())
        h.update(b"\x00")
        h.update(d.encode())
        h.update(b"\x01")
    return PairSet(queries, docs, first, maps[0], maps[1], h.hexdigest(), maps[2] if dev is not None else None)


# ---------------------------------------------------------------------------------------------
# Scoring one teacher over the unique pairs, in committed chunks


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


def next_batch(lengths: np.ndarray, start: int, *, token_budget: int, max_pairs: int) -> int:
    """End of the batch starting at `start` over ascending lengths: at most `token_budget` padded tokens."""
    end = start + 1
    n = len(lengths)
    while end < n and end - start < max_pairs and (end + 1 - start) * int(lengths[end]) <= token_budget:
        end += 1
    return end


def make_batches(lengths: np.ndarray, *, token_budget: int, max_pairs: int) -> list[tuple[int, int]]:
    """Cut ascending-length positions into [start, end) batches."""
    out, start = [], 0
    while start < len(lengths):
        end = next_batch(lengths, start, token_budget=token_budget, max_pairs=max_pairs)
        out.append((start, end))
        start = end
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class ChunkScorer:
    """Scores one teacher's chunks; the token budget halves on out-of-memory and stays halved."""

    def __init__(self, teacher: ModelTeacher, pairs: PairSet, workdir: Path, config: ScoreConfig) -> None:
        self.teacher = teacher
        self.pairs = pairs
        self.workdir = workdir
        self.chunk_size = config.chunk_size
        self.max_pairs = config.batch_size * 8
        # Lengths count the teacher's special/template tokens, so the default budget does too.
        self.token_budget = config.token_budget or config.batch_size * (min(config.max_length, 256) + getattr(teacher, "overhead_tokens", 0))
        self.halvings = 0
        self.backend_facts: dict = {}
        self.estimate: dict | None = None  # the expected wall time printed before scoring (skill.score_engines.Progress)

    # The plan: unique-pair positions sorted by (token length, index); computed once per teacher.
    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        plan_file, len_file = self.workdir / "plan.npy", self.workdir / "lengths.npy"
        if plan_file.exists() and len_file.exists():
            order, lengths = np.load(plan_file), np.load(len_file)
            if len(order) == len(self.pairs):
                return order, lengths
        raw = self.teacher.lengths(list(zip(self.pairs.queries, self.pairs.docs, strict=True)))
        order = np.lexsort((np.arange(len(raw)), raw)).astype(np.int64)
        lengths = raw[order].astype(np.int32)
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_json(
            self.workdir / "plan.json",
            {"teacher": self.teacher.describe(), "pairs": len(self.pairs), "pairs_sha256": self.pairs.digest, "chunk_size": self.chunk_size},
        )
        _save_npy(len_file, lengths)
        _save_npy(plan_file, order)
        return order, lengths

    def n_chunks(self) -> int:
        return max(1, math.ceil(len(self.pairs) / self.chunk_size))

    def chunk_file(self, c: int) -> Path:
        return self.workdir / f"chunk-{c:06d}.npy"

    def done(self) -> set[int]:
        return {c for c in range(self.n_chunks()) if self.chunk_file(c).exists()}

    def _score_range(self, batch: list[tuple[str, str]]) -> np.ndarray:
        import torch

        try:
            return self.teacher.score_batch(batch)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not _is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                raise SkillError(
                    "out of memory on a single pair",
                    code=ExitCode.RUNTIME_FAILURE,
                    fix="lower --max-length, use a smaller teacher, or a GPU with more memory",
                ) from None
            self.halvings += 1
            self.token_budget = max(1, self.token_budget // 2)
            self.max_pairs = max(1, self.max_pairs // 2)
            mid = len(batch) // 2
            return np.concatenate([self._score_range(batch[:mid]), self._score_range(batch[mid:])])

    def chunk_range(self, c: int, n_pairs: int) -> tuple[int, int]:
        return c * self.chunk_size, min((c + 1) * self.chunk_size, n_pairs)

    def score_chunk(self, c: int, order: np.ndarray, lengths: np.ndarray, bar) -> np.ndarray:
        lo, hi = self.chunk_range(c, len(order))
        idx = order[lo:hi]
        pairs = [(self.pairs.queries[j], self.pairs.docs[j]) for j in idx]
        return self.score_sorted(pairs, lengths[lo:hi], bar, where=lambda i: self.pairs.first_row[idx[i]])

    def score_sorted(self, pairs: list[tuple[str, str]], lens: np.ndarray, bar, *, where) -> np.ndarray:
        """Score pairs given in ascending token length, in token-budget batches; `where(i)` names pair i's (query_id, doc_id)."""
        out = np.empty(len(pairs), dtype=np.float32)
        pos = 0
        while pos < len(pairs):
            end = next_batch(lens, pos, token_budget=self.token_budget, max_pairs=self.max_pairs)
            out[pos:end] = self._score_range(pairs[pos:end])
            bar.update(end - pos)
            pos = end
        bad = np.flatnonzero(~np.isfinite(out))
        if len(bad):
            qid, did = where(int(bad[0]))
            raise SkillError(
                f"teacher {self.teacher.name!r} returned {out[bad[0]]} for {len(bad)} pair(s), first (query {qid!r}, document {did!r})",
                code=ExitCode.RUNTIME_FAILURE,
                where=self.teacher.name,
                fix="the teacher's weights or precision are broken: try --dtype fp32, or another teacher; nothing was written",
            )
        return out

    def shard_chunks(self, shard: tuple[int, int]) -> tuple[list[int], list[int]]:
        """(this shard's chunks, those of them not committed yet)."""
        i, n = shard
        mine = [c for c in range(self.n_chunks()) if c % n == i]
        return mine, [c for c in mine if not self.chunk_file(c).exists()]

    def commit(self, c: int, scores: np.ndarray) -> None:
        _save_npy(self.chunk_file(c), scores)

    def run(self, shard: tuple[int, int]) -> tuple[int, int, float]:
        """Score this shard's missing chunks in this process; returns (chunks scored, pairs scored, seconds)."""
        from skill.score_engines import Progress

        order, lengths = self.plan()
        mine, todo = self.shard_chunks(shard)
        total = sum(hi - lo for lo, hi in (self.chunk_range(c, len(order)) for c in mine))
        remaining = sum(hi - lo for lo, hi in (self.chunk_range(c, len(order)) for c in todo))
        if todo:
            # The first batch this run will commit: a backend checks itself on it before anything is written.
            lo, hi = self.chunk_range(todo[0], len(order))
            end = lo + next_batch(lengths[lo:hi], 0, token_budget=self.token_budget, max_pairs=self.max_pairs)
            self.backend_facts = self.teacher.before_scoring([(self.pairs.queries[j], self.pairs.docs[j]) for j in order[lo:end]])
        tokens = sum(int(lengths[slice(*self.chunk_range(c, len(order)))].sum()) for c in todo)
        started = time.perf_counter()
        with Progress.for_teacher(self.teacher, total=total, remaining=remaining, tokens=tokens, workers=["one worker in this process"]) as bar:
            for c in todo:
                bar.begin_chunk(lengths[slice(*self.chunk_range(c, len(order)))])
                self.commit(c, self.score_chunk(c, order, lengths, bar))
        self.estimate = bar.estimate
        return len(todo), remaining, time.perf_counter() - started

    def assemble(self) -> np.ndarray | None:
        if len(self.done()) < self.n_chunks():
            return None
        order, _ = self.plan()
        out = np.empty(len(order), dtype=np.float32)
        for c in range(self.n_chunks()):
            lo, hi = c * self.chunk_size, min((c + 1) * self.chunk_size, len(order))
            arr = np.load(self.chunk_file(c))
            if len(arr) != hi - lo:
                raise invalid(
                    f"chunk {c} holds {len(arr)} scores, expected {hi - lo}", where=str(self.chunk_file(c)), fix="delete the score_work folder and rerun score"
                )
            out[order[lo:hi]] = arr
        return out


# ---------------------------------------------------------------------------------------------
# Statistics and warnings


def label_statistics(labels: np.ndarray, groups: list[str]) -> tuple[dict, dict, dict]:
    """Overall stats, per-query stats {qid: {n, mean, std, min, max}} and a summary of per-query spread."""
    labels = labels.astype(np.float64)
    q = np.percentile(labels, [1, 5, 50, 95, 99])
    overall = {
        "n": len(labels),
        "mean": float(labels.mean()),
        "std": float(labels.std()),
        "min": float(labels.min()),
        "p01": float(q[0]),
        "p05": float(q[1]),
        "p50": float(q[2]),
        "p95": float(q[3]),
        "p99": float(q[4]),
        "max": float(labels.max()),
        "fraction_in_0_1": float(((labels >= 0) & (labels <= 1)).mean()),
    }
    per_query: dict[str, dict] = {}
    garr = np.asarray(groups, dtype=object)
    order = np.argsort(garr, kind="stable")
    g, s = garr[order], labels[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    stds = []
    for a, b in itertools.pairwise(bounds):
        part = s[a:b]
        per_query[str(g[a])] = {
            "n": int(b - a),
            "mean": round(float(part.mean()), 6),
            "std": round(float(part.std()), 6),
            "min": round(float(part.min()), 6),
            "max": round(float(part.max()), 6),
        }
        if b - a >= 2:
            stds.append(float(part.std()))
    spread = {}
    if stds:
        ps = np.percentile(stds, [10, 50, 90])
        spread = {"queries": len(stds), "within_query_std_p10": float(ps[0]), "within_query_std_p50": float(ps[1]), "within_query_std_p90": float(ps[2])}
        spread["ratio_to_overall_std"] = float(ps[1] / overall["std"]) if overall["std"] > 0 else 0.0
    return overall, per_query, spread


def label_warnings(overall: dict, spread: dict, space: str) -> list[str]:
    warnings = []
    if spread:
        med = spread["within_query_std_p50"]
        if med < COLLAPSE_ABS or (space != "normalised" and spread["ratio_to_overall_std"] < COLLAPSE_RATIO):
            warnings.append(
                f"per-query label spread has collapsed (median within-query std {med:.3g} vs overall std {overall['std']:.3g}): "
                "MSE would teach only each query's mean score — use a stronger teacher, an ensemble, or check that the candidates differ"
            )
    if overall["n"] >= 10 and space == "raw_logit" and overall["fraction_in_0_1"] == 1.0:
        warnings.append(
            f"every label lies in [0, 1] (min {overall['min']:.3g}, max {overall['max']:.3g}) although raw logits were expected: "
            "they look Sigmoid-squashed — make the teacher emit raw scores (activation Identity), or declare --score-space probability for a file"
        )
    if space == "probability":
        lo_hi = overall["p05"] < 0.02 and overall["p95"] > 0.98
        if lo_hi:
            warnings.append("labels are probabilities saturated near 0 and 1: MSE on them gives almost no gradient between candidates; prefer raw logits")
    return warnings


# ---------------------------------------------------------------------------------------------
# The stage


def _onnx_teachers(teachers: list[Teacher], cache_dir: Path, warnings: list[str]) -> list[Teacher]:
    """`--backend onnx`: CPU cross-encoders switch to onnxruntime; every other teacher stays on torch, with a warning."""
    from skill.teacher import OnnxCrossEncoderTeacher, onnx_fallback_reason

    out: list[Teacher] = []
    for t in teachers:
        reason = f"{t.type} scores are read, not computed by a model" if isinstance(t, LOOKUP_TEACHERS) else onnx_fallback_reason(t)
        if reason:
            warnings.append(f"--backend onnx does not apply to {t.name!r} ({reason}): it is scored with torch")
            out.append(t)
            continue
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SkillError(
                "--backend onnx needs onnx and onnxruntime",
                code=ExitCode.MISSING_PREREQUISITE,
                fix='pip install "reranker-skill[onnx]", or drop --backend onnx',
            ) from None
        out.append(OnnxCrossEncoderTeacher.wrap(t, cache_dir))
    return out


def _teacher_workdir(run: Run, teacher: ModelTeacher, pairs: PairSet, chunk_size: int) -> Path:
    key = hash_obj({"teacher": teacher.fingerprint, "pairs": pairs.digest, "chunk_size": chunk_size})[:16]
    return run.file(SCORE_WORK) / f"{Path(teacher.name).name[:40]}-{key}"


def score(run_dir: str | Path, config: ScoreConfig, *, force: bool = False, merge_only: bool = False) -> Result:
    """Score the run's training pairs, held-out and dev candidates; write scores.parquet, heldout_scores.parquet, dev_scores.parquet, scores.meta.json."""
    run = Run(run_dir)
    if not config.teachers:
        raise SkillError("no teacher given", code=ExitCode.USAGE, fix="pass --teacher MODEL_OR_FILE")
    shard = parse_shard(config.shard)
    dev_path, qrels_dev_path = run.file(DEV_CANDIDATES), run.file(QRELS_DEV)
    has_dev = dev_path.exists()  # absent in run folders from before dev splits
    wanted = ["split", "train_pairs", "heldout_candidates"] + (["dev_candidates", "qrels_dev"] if has_dev else [])
    source_warnings = run.require(wanted, needed_by="score", sources=True)
    train_path, held_path = run.file(TRAIN_PAIRS), run.file(HELDOUT_CANDIDATES)
    _check_no_heldout_in_training(run)

    from skill.loading import model_identity
    from skill.score_engines import make_engine

    cfg_dump = config.model_dump(mode="json")
    for key in ("shard", "device", "devices", "engine", "ray_address", "workers", "fail_on_gate", "batch_size", "token_budget"):
        cfg_dump.pop(key, None)  # how the work is split or batched does not change the labels
    if cfg_dump.get("backend") == "torch":
        cfg_dump.pop("backend")  # the default: manifests written before --backend existed stay fresh
    cfg_dump["teacher_identity"] = [t.model if t.is_first_stage else model_identity(t.model) for t in config.teachers]
    inputs = {"train_pairs": train_path, "heldout_candidates": held_path}
    if has_dev:
        inputs.update(dev_candidates=dev_path, qrels_dev=qrels_dev_path)
    stage = Stage(run, "score", config=cfg_dump, inputs=inputs)
    if (done := stage.skip(force=force or shard[1] != 1, warnings=source_warnings)) is not None:
        return done

    # Load (and validate) every teacher before any work, so a bad input writes nothing.
    engine = make_engine(config, cache_dir=run.file(CACHE), loader=load_teacher)
    try:
        return _score(
            run, config, stage, engine, shard, source_warnings, train_path, held_path, dev_path if has_dev else None, qrels_dev_path, merge_only=merge_only
        )
    finally:
        engine.close()


def _score(
    run: Run,
    config: ScoreConfig,
    stage: Stage,
    engine,
    shard,
    source_warnings,
    train_path: Path,
    held_path: Path,
    dev_path: Path | None,
    qrels_dev_path: Path,
    *,
    merge_only: bool,
) -> Result:
    from skill.gate import read_dev

    teachers: list[Teacher] = [engine.load(spec) for spec in config.teachers]
    train, held = read_parquet(train_path), read_parquet(held_path)
    dev = read_dev(dev_path) if dev_path is not None else None
    pairs = collect_pairs(train, held, dev)
    rows_train, rows_held, rows_dev = train.num_rows, held.num_rows, dev.num_rows if dev is not None else 0

    metrics: dict = {
        "pairs": rows_train,
        "heldout_pairs": rows_held,
        "dev_pairs": rows_dev,
        "unique_pairs": len(pairs),
        "duplicates_skipped": rows_train + rows_held + rows_dev - len(pairs),
    }
    warnings: list[str] = list(source_warnings)
    if config.backend == "onnx":
        teachers = _onnx_teachers(teachers, run.file(CACHE), warnings)
    looked_up = {  # validated before anything is written
        id(t): _file_teacher_scores(t, train, held, dev, warnings) if isinstance(t, FileTeacher) else _first_stage_scores(t, train, held, dev, run)
        for t in teachers
        if isinstance(t, LOOKUP_TEACHERS)
    }
    # One run scores inside its transaction (a failure is recorded); shards score their chunks outside it
    # (chunks are keyed by teacher and pairs, never outputs) and only the merge publishes.
    with contextlib.ExitStack() as transaction:
        tx = transaction.enter_context(stage.transaction()) if shard[1] == 1 and not merge_only else None
        return _label_and_publish(
            run,
            stage,
            tx,
            transaction,
            config,
            engine,
            teachers,
            looked_up,
            train,
            held,
            dev,
            qrels_dev_path,
            pairs,
            metrics,
            warnings,
            shard=shard,
            merge_only=merge_only,
        )


def _check_no_heldout_in_training(run: Run) -> None:
    """The held-out split never reaches the teacher's training labels (a last guard behind the manifest checks)."""
    import pyarrow.parquet as pq

    split = Split.model_validate(read_json(run.file(SPLIT)))
    leaked = set(pq.read_table(run.file(TRAIN_PAIRS), columns=["query_id"]).column("query_id").to_pylist()) & set(split.heldout)
    if leaked:
        raise invalid(
            f"{len(leaked)} held-out queries of {SPLIT} are in {TRAIN_PAIRS} (first: {sorted(leaked)[0]!r})",
            where=str(run.file(TRAIN_PAIRS)),
            fix=f"rerun `{run.rerun('mine')}`: the two files come from different runs",
        )


def _lookup(t: FileTeacher, table) -> np.ndarray:
    return t.lookup(
        table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), table.column("query").to_pylist(), table.column("document").to_pylist()
    )


def _file_teacher_scores(t: FileTeacher, train, held, dev, warnings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A scores file's labels for every training pair (all required), held-out and dev candidate (NaN where absent)."""
    rows_train, rows_held = train.num_rows, held.num_rows
    tr = _lookup(t, train)
    missing_rows = np.flatnonzero(np.isnan(tr))
    if len(missing_rows):
        r = int(missing_rows[0])
        raise invalid(
            f"the scores file has no score for {len(missing_rows)} of {rows_train} training pairs (first: query {train.column('query_id')[r].as_py()!r}, document {train.column('doc_id')[r].as_py()!r})",
            where=t.name,
            fix="score every row of train_pairs.parquet (match on query_id+doc_id or on query+document text); nothing was written",
        )
    hd = _lookup(t, held)
    n_missing = int(np.isnan(hd).sum())
    if n_missing:
        warnings.append(
            f"the scores file has no score for {n_missing} of {rows_held} held-out candidates: their teacher_score is NaN, so `evaluate` shows the teacher on the rest only"
        )
    if t.inferred_space and t.score_space == "probability":
        warnings.append(f"{t.name}: every score lies in [0, 1], so the score space was taken as `probability`; pass --score-space raw_logit if they are logits")
    return tr, hd, (_lookup(t, dev) if dev is not None else None)


def _first_stage_scores(t: FirstStageTeacher, train, held, dev, run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The mined tables' own first-stage scores (a not-retrieved training positive at its query's lowest)."""
    return (
        t.table_scores(train, where=str(run.file(TRAIN_PAIRS))),
        t.table_scores(held, where=str(run.file(HELDOUT_CANDIDATES))),
        t.table_scores(dev, where=str(run.file(DEV_CANDIDATES))) if dev is not None else None,
    )


def choose_weights_on_training_queries(train, raw_train: list[np.ndarray], *, k: int = 10) -> dict:
    """`--weight auto`: the ensemble weights with the best NDCG@k of the blended teacher on the training queries.

    Each query's candidates are those the first stage retrieved (rank ≥ 1), judged by every positive
    `mine` put in its training pairs (one it did not retrieve counts in the ideal ranking). The
    teachers are fixed models, so the training queries are fair to choose on, and many: the dev
    queries stay untouched for the teacher gate and the held-out ones for `evaluate`.
    """
    from skill import metrics as M

    qids = np.asarray(train.column("query_id").to_pylist(), dtype=object)
    dids = train.column("doc_id").to_pylist()
    ranks = np.asarray(train.column("rank").to_pylist())
    grades = np.asarray(train.column("relevance").to_numpy(zero_copy_only=False), dtype=np.float64)
    qrels: dict[str, dict[str, float]] = {}
    for q, d, g in zip(qids, dids, grades, strict=True):
        if g > 0:
            qrels.setdefault(q, {})[d] = float(g)
    retrieved = np.flatnonzero(ranks >= 1)
    groups = M.per_query_groups(list(qids[retrieved]))
    return M.choose_ensemble_weights(
        [s[retrieved] for s in raw_train],
        doc_ids=[dids[i] for i in retrieved],
        first_stage_rank=ranks[retrieved],
        groups=groups,
        qrels=qrels,
        k=k,
    )


def _label_and_publish(
    run: Run,
    stage: Stage,
    tx,
    transaction: contextlib.ExitStack,
    config: ScoreConfig,
    engine,
    teachers,
    looked_up,
    train,
    held,
    dev,
    qrels_dev_path,
    pairs,
    metrics,
    warnings,
    *,
    shard,
    merge_only,
) -> Result:
    """Score the chunks each model teacher still lacks, combine the teachers, gate, and publish the tables (inside `tx`, or a new one for a merge)."""
    from skill.gate import gate_lines, gate_warning, teacher_gate

    rows_train, rows_held, rows_dev = train.num_rows, held.num_rows, dev.num_rows if dev is not None else 0
    raw_train: list[np.ndarray] = []
    raw_held: list[np.ndarray] = []
    raw_dev: list[np.ndarray] = []
    incomplete: list[str] = []
    timing = {"pairs_scored": 0, "seconds": 0.0, "chunks_scored": 0}
    for t in teachers:
        if isinstance(t, LOOKUP_TEACHERS):
            tr, hd, dv = looked_up[id(t)]
            raw_train.append(tr)
            raw_held.append(hd)
            if dv is not None:
                raw_dev.append(dv)
            continue
        scorer = ChunkScorer(t, pairs, _teacher_workdir(run, t, pairs, config.chunk_size), config)
        if not merge_only:
            # No error path deletes committed chunks: each is a finished, checked score of this teacher on these pairs.
            chunks, n_scored, secs = engine.run(scorer, shard)
            timing["chunks_scored"] += chunks
            timing["pairs_scored"] += n_scored
            timing["seconds"] += secs
            metrics.update(scorer.backend_facts)
            if scorer.estimate:
                metrics.setdefault("estimate", []).append(scorer.estimate)
            if scorer.halvings:
                warnings.append(f"out of memory: halved the batch {scorer.halvings} time(s) (token budget now {scorer.token_budget})")
        full = scorer.assemble()
        if full is None:
            incomplete.append(f"{t.name}: {len(scorer.done())}/{scorer.n_chunks()} chunks")
            continue
        raw_train.append(full[pairs.train_map])
        raw_held.append(full[pairs.held_map])
        if pairs.dev_map is not None:
            raw_dev.append(full[pairs.dev_map])
        metrics.setdefault("chunks_total", 0)
        metrics["chunks_total"] += scorer.n_chunks()
    metrics.update(timing)
    metrics.update(engine.facts())
    if timing["seconds"] > 0:
        metrics["pairs_per_second"] = round(timing["pairs_scored"] / timing["seconds"], 1)
    if incomplete:
        text = f"score: shard {config.shard or '1/1'} done; waiting for other shards ({'; '.join(incomplete)}). Run `reranker-skill score --run {run.path} --teacher ... --merge` once all shards finish."
        return Result(metrics={**metrics, "merged": False, "incomplete": incomplete}, warnings=warnings, text=text)

    # Combine teachers: one teacher's own scores, or the ensemble's weighted per-query z-scores (skill.metrics.blend).
    ensemble = None
    if len(teachers) > 1:
        ensemble = {"normalisation": "per-query z-score", "combination": "weighted mean"}
        if config.auto_weights:
            chosen = choose_weights_on_training_queries(train, raw_train)
            for t, w in zip(teachers, chosen["weights"], strict=True):
                t.weight = w
            ensemble["weights_chosen"] = {"on": "training queries (the first stage's candidates)", **chosen}
            metrics["ensemble_weights"] = {t.name: t.weight for t in teachers}
            for t in teachers:
                if t.weight == 0:
                    warnings.append(
                        f"--weight auto gave {t.name} weight 0: on the training queries it adds nothing to the other teachers, so it is left out of the labels"
                    )

    def combine(table, raw: list[np.ndarray]) -> np.ndarray:
        if len(teachers) == 1:
            return raw[0]
        from skill.metrics import blend, per_query_groups

        groups = per_query_groups(table.column("query_id").to_pylist())
        combined = blend([np.nan_to_num(s) for s in raw], groups, [t.weight for t in teachers])
        return np.where(np.any([np.isnan(s) for s in raw], axis=0), np.nan, combined)

    label = combine(train, raw_train)
    space = teachers[0].score_space if len(teachers) == 1 else "normalised"
    teacher_score = np.asarray(combine(held, raw_held), dtype=np.float32)
    dev_score = np.asarray(combine(dev, raw_dev), dtype=np.float32) if dev is not None else None
    label = np.asarray(label, dtype=np.float32)
    if not np.isfinite(label).all():
        raise SkillError("teacher labels contain NaN or inf", code=ExitCode.RUNTIME_FAILURE, fix="check the teacher; nothing was written")

    groups = train.column("query_id").to_pylist()
    overall, per_query, spread = label_statistics(label, groups)
    warnings += label_warnings(overall, spread, space)
    held_valid = teacher_score[np.isfinite(teacher_score)]
    # The teacher gate: teacher vs first stage on the dev queries (never the held-out ones), before any training.
    gate = teacher_gate(dev, dev_score, qrels_dev_path)
    metrics["gate"] = gate
    if (w := gate_warning(gate, blended=any(isinstance(t, FirstStageTeacher) for t in teachers))) is not None:
        warnings.append(w)
    meta = {
        "teachers": [t.describe() for t in teachers],
        "score_space": space,
        "ensemble": ensemble,
        "label_stats": overall,
        "per_query_spread": spread,
        "per_query": per_query,
        "heldout_teacher_stats": {
            "n": len(held_valid),
            "mean": float(held_valid.mean()) if len(held_valid) else None,
            "std": float(held_valid.std()) if len(held_valid) else None,
        },
        "pairs": rows_train,
        "heldout_pairs": rows_held,
        "dev_pairs": rows_dev,
        "unique_pairs": len(pairs),
        "max_length": config.max_length,
        "chunk_size": config.chunk_size,
        "backend": config.backend,
        "gate": gate,
        "warnings": warnings,
    }

    import pyarrow as pa

    if tx is None:  # the merge of finished shards publishes in its own transaction
        tx = transaction.enter_context(stage.transaction())
    write_parquet(tx.path("scores"), train.append_column("label", pa.array(label, pa.float32())))
    write_parquet(tx.path("heldout_scores"), held.append_column("teacher_score", pa.array(teacher_score, pa.float32())))
    if dev is not None:
        write_parquet(tx.path("dev_scores"), dev.append_column("teacher_score", pa.array(dev_score, pa.float32())))
    write_json(tx.path("meta"), meta)
    tx.metrics.update(
        {**metrics, "score_space": space, "backend": config.backend, "label_mean": overall["mean"], "label_std": overall["std"], "warnings": len(warnings)}
    )

    lines = [
        f"score: {', '.join(t.name for t in teachers)} → {run.path}",
        f"  pairs: {rows_train:,} train + {rows_held:,} held-out + {rows_dev:,} dev ({metrics['duplicates_skipped']:,} duplicates scored once)",
        f"  score space: {space}; labels mean {overall['mean']:.3f}, std {overall['std']:.3f}, range [{overall['min']:.3f}, {overall['max']:.3f}]",
    ]
    if ensemble and "weights_chosen" in ensemble:
        chosen = ensemble["weights_chosen"]
        weights = ", ".join(f"{t.name} {t.weight:g}" for t in teachers)
        lines.append(f"  ensemble weights (auto): {weights} — NDCG@10 {chosen['ndcg@10']:.4f} on {chosen['chosen_on']:,} training queries")
    if spread:
        lines.append(
            f"  within-query std: median {spread['within_query_std_p50']:.3f} (p10 {spread['within_query_std_p10']:.3f}, p90 {spread['within_query_std_p90']:.3f})"
        )
    if metrics.get("pairs_per_second"):
        where = f"{metrics['workers']} workers, {metrics['engine']}" if metrics.get("workers", 1) > 1 else config.backend
        lines.append(f"  speed: {metrics['pairs_per_second']:,} pairs/s over {timing['pairs_scored']:,} newly scored pairs ({where})")
    for est in metrics.get("estimate", []):
        lines.append(
            f"  estimate before scoring: {est['expected_seconds']:,.0f} s at {est['pairs_per_second']:,} pairs/s; took {est.get('actual_seconds', 0):,.0f} s"
        )
    if "onnx_cache" in metrics:
        lines.append(
            f"  onnx: graph {metrics['onnx_cache']} ({metrics['onnx_graph']}), {metrics['onnx_threads']} threads, first-batch drift vs torch {metrics['onnx_parity_max_drift']:.1e}"
        )
    lines += gate_lines(gate)
    failed_gate = config.fail_on_gate and gate["status"] == "fail"
    return Result(
        artifacts={k: str(run.file(v)) for k, v in tx.outputs.items()},
        metrics={**metrics, "merged": True, "score_space": space},
        warnings=warnings,
        text="\n".join(lines),
        status="partial" if failed_gate else "ok",
        exit_code=ExitCode.PARTIAL if failed_gate else ExitCode.OK,
    )


def read_meta(run_dir: str | Path) -> ScoresMeta:
    return ScoresMeta.model_validate(read_json(Path(run_dir) / SCORES_META))
