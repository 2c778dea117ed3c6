"""Where `score` runs a teacher over its chunks: this process, one process per device, or a Ray cluster.

Every engine works on the same chunk store (skill.score.ChunkScorer): the unique pairs sorted by
token length (the plan), cut into fixed chunks of `chunk_size` pairs, each committed atomically as
`score_work/<teacher>/chunk-NNNNNN.npy`. A chunk's batches depend only on its content, so which
worker scored it does not change its numbers (beyond float summation order across thread counts),
and merge, resume, `--shard i/n` and the manifest are the same for every engine.

- local, one device (`--device`, or the default on a machine with at most one GPU): the chunks are
  scored in this process. This is the reference path.
- local, several devices (`--devices cuda:0,cuda:1`; `--devices cpu,cpu` on CPU; default: every
  visible GPU): one spawned worker process per device, each loading the teacher once on its device
  (CPU workers share the cores: `cores // workers` torch threads each). Workers take chunks in plan
  order and claim each with an O_EXCL claim file in a folder of this invocation, so no chunk is
  scored twice; each commits its own chunks. A worker that dies (kill -9, the OOM killer) loses only
  the chunk it held: the others go on with the rest, then the command fails (exit 6) naming it, and
  a rerun scores only what is missing — at most one chunk per worker is ever scored twice.
- ray (`--engine ray [--ray-address ADDR] [--workers N]`): one actor per GPU of the cluster (else one
  per node, or N), each loading the teacher once through the same adapters (skill.teacher.load_teacher)
  and scoring whole chunks; the driver reads each chunk's texts, sends them, and commits the returned
  scores itself, so the workers need no shared filesystem — only the package and the teacher (a hub id,
  or a folder at the same path on every node).

Before scoring, every engine prints the pairs left to score and, once the first batches are timed,
the expected wall time ("≈ N min at P pairs/s"), then a progress bar with its ETA on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

from skill.config import ScoreConfig, TeacherSpec
from skill.errors import ExitCode, SkillError, prerequisite
from skill.io import pid_alive

PLAN_PAIRS = "plan-pairs.parquet"  # the unique pairs in plan order, one row group per chunk (what workers read)
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


# ---------------------------------------------------------------------------------------------
# Devices


def visible_gpus() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def resolve_devices(devices: list[str] | None, device: str | None) -> list[str]:
    """The worker devices: --devices, else --device, else every visible GPU, else the CPU."""
    if devices is not None and device is not None:
        raise SkillError(
            "--device and --devices both given", code=ExitCode.USAGE, fix="pass one of them: --devices cuda:0,cuda:1 (one worker each) or --device cuda:0"
        )
    chosen = devices if devices is not None else [device] if device else visible_gpus() or ["cpu"]
    bad = [d for d in chosen if not _DEVICE.match(d)]
    if not chosen or bad:
        raise SkillError(
            f"--devices {','.join(chosen)!r}: {bad[0] if bad else 'empty'} is not a device",
            code=ExitCode.USAGE,
            fix="list torch devices separated by commas, e.g. cuda:0,cuda:1 or cpu,cpu",
        )
    kinds = {d.split(":")[0] for d in chosen}
    if len(kinds) > 1:
        raise SkillError(
            f"--devices mixes {' and '.join(sorted(kinds))}",
            code=ExitCode.USAGE,
            fix="use one kind of device (a teacher's precision differs between them, so their chunks would too)",
        )
    if "cuda" in kinds and len(chosen) > 1:
        gpus = visible_gpus()
        absent = [d for d in chosen if d != "cuda" and d not in gpus]
        if absent:
            raise SkillError(
                f"{absent[0]} is not a visible GPU (visible: {', '.join(gpus) or 'none'})",
                code=ExitCode.USAGE,
                fix="list visible GPUs only (CUDA_VISIBLE_DEVICES renumbers them from 0)",
            )
    return chosen


def threads_per_worker(devices: list[str]) -> int | None:
    """CPU workers split the cores evenly; GPU workers keep torch's default."""
    from skill.teacher import cpu_cores

    cpu = sum(d == "cpu" for d in devices)
    return max(1, cpu_cores() // cpu) if cpu else None


# ---------------------------------------------------------------------------------------------
# Progress and the time estimate


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class RateMeter:
    """Tokens per second of one worker, timed over its first batches (the very first is a warm-up unless it is slow)."""

    WARMUP_UNDER_S = 5.0  # a first batch quicker than this is warm-up, not throughput
    READY_AFTER_S = 1.0  # measured this long, or READY_AFTER_BATCHES batches
    READY_AFTER_BATCHES = 4

    def __init__(self) -> None:
        self.lens = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self.batches = 0
        self.tokens = 0
        self.seconds = 0.0
        self.last = time.perf_counter()

    def begin_chunk(self, lens) -> None:
        self.lens, self.pos = np.asarray(lens, dtype=np.int64), 0

    def update(self, n: int) -> None:
        now = time.perf_counter()
        tokens = int(self.lens[self.pos : self.pos + n].sum())
        self.pos += n
        self.batches += 1
        if self.batches > 1 or now - self.last >= self.WARMUP_UNDER_S:
            self.tokens += tokens
            self.seconds += now - self.last
        self.last = now

    @property
    def ready(self) -> bool:
        return self.tokens > 0 and self.seconds > 0 and (self.seconds >= self.READY_AFTER_S or self.batches > self.READY_AFTER_BATCHES)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """The bar on stderr, plus the one-time estimate: pairs left and the expected wall time at the measured rate.

    In this process it is fed batch by batch (`begin_chunk`, `update`); for worker processes the
    engine feeds it the workers' own meters (`from_workers`).
    """

    def __init__(self, *, total: int, done: int, remaining_tokens: int, workers: list[str], desc: str, upper_bound: bool = False) -> None:
        from tqdm.auto import tqdm

        self.upper_bound = upper_bound  # a bi-encoder embeds each text once: later pairs reuse embeddings and go faster
        self.remaining = total - done
        self.remaining_tokens = remaining_tokens
        self.workers = workers
        self.estimate: dict | None = None
        self.meter = RateMeter()
        self.started = time.perf_counter()
        if self.remaining:
            where = f"{len(workers)} workers ({', '.join(workers)})" if len(workers) > 1 else f"{workers[0]}"
            _say(f"score: {self.remaining:,} pairs to score ({total:,} in this shard, {done:,} already committed) on {where}; timing the first batches…")
        self.bar = tqdm(total=total, initial=done, unit="pair", unit_scale=True, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=not self.remaining)

    @classmethod
    def for_teacher(cls, teacher, *, total: int, remaining: int, tokens: int, workers: list[str], where: str = "") -> Progress:
        """The bar and estimate for scoring `remaining` of `total` pairs (`tokens` of text) with `teacher`."""
        return cls(
            total=total,
            done=total - remaining,
            remaining_tokens=tokens,
            workers=workers,
            desc=f"score {Path(teacher.name).name}{where}",
            upper_bound=getattr(teacher, "EMBEDS_TEXTS_ONCE", False),
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()
        if self.estimate is not None:
            self.estimate["actual_seconds"] = round(time.perf_counter() - self.started, 2)

    def begin_chunk(self, lens) -> None:
        self.meter.begin_chunk(lens)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.meter.update(n)
        if self.estimate is None and self.meter.ready:
            self._announce(self.meter.tokens_per_second)

    def from_workers(self, pairs_done: int, rates: list[float], *, all_ready: bool) -> None:
        """Set the bar to the pairs the workers have scored; estimate once every live worker has a rate."""
        if pairs_done > self.bar.n - self.bar.initial:
            self.bar.update(pairs_done - (self.bar.n - self.bar.initial))
        if self.estimate is None and all_ready and rates:
            self._announce(sum(rates))

    def _announce(self, tokens_per_second: float) -> None:
        if tokens_per_second <= 0 or not self.remaining:
            return
        seconds = self.remaining_tokens / tokens_per_second
        pairs_per_second = self.remaining / seconds
        self.estimate = {
            "pairs_to_score": self.remaining,
            "workers": len(self.workers),
            "tokens_per_pair": round(self.remaining_tokens / self.remaining, 1),
            "measured_tokens_per_second": round(tokens_per_second, 1),
            "pairs_per_second": round(pairs_per_second, 1),
            "expected_seconds": round(seconds, 1),
        }
        self.estimate["upper_bound"] = self.upper_bound
        bound = (
            "at most; a bi-encoder embeds each query and document once, so pairs that reuse them go faster"
            if self.upper_bound
            else f"{self.estimate['tokens_per_pair']:.0f} tokens/pair"
        )
        _say(f"score: ≈ {_duration(seconds)} for {self.remaining:,} pairs at {pairs_per_second:,.0f} pairs/s (measured on the first batches; {bound})")


def _say(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# What a worker does: load the teacher once, score whole chunks


class ChunkWorker:
    """One teacher, loaded once on one device, scoring whole chunks; the body of a worker process and of a Ray actor."""

    def __init__(self, *, spec: dict, config: dict, device: str | None, threads: int | None, onnx_cache: str | None = None) -> None:
        self.spec, self.config, self.device, self.threads, self.onnx_cache = spec, config, device, threads, onnx_cache
        self.scorer = None
        self.facts: dict | None = None

    def load(self, workdir: str | None = None) -> dict:
        """Load the teacher; returns its identity (fingerprint, description) or {"error": ...}."""
        try:
            import torch

            from skill.score import ChunkScorer
            from skill.teacher import load_teacher

            if self.threads:
                torch.set_num_threads(self.threads)
            config = ScoreConfig.model_validate(self.config)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            teacher = load_teacher(TeacherSpec.model_validate(self.spec), max_length=config.max_length, device=device, dtype=config.dtype)
            if config.backend == "onnx":
                from skill.teacher import OnnxCrossEncoderTeacher, onnx_fallback_reason

                if onnx_fallback_reason(teacher) is None:
                    teacher = OnnxCrossEncoderTeacher.wrap(teacher, Path(self.onnx_cache or "."), threads=self.threads)
            self.scorer = ChunkScorer(teacher, None, Path(workdir or "."), config)
            return {
                "fingerprint": teacher.fingerprint,
                "describe": teacher.describe(),
                "device": str(teacher.device),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "threads": torch.get_num_threads(),
            }
        except SkillError as err:
            return {"error": err.as_dict()}
        except Exception as exc:
            return {"error": _unexpected(exc)}

    def lengths(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return self.scorer.teacher.lengths(pairs)

    def score(self, queries: list[str], docs: list[str], lens: np.ndarray, where: list[tuple[str, str]], bar) -> np.ndarray:
        """Scores of one chunk's pairs (ascending length, as planned); SkillError on a broken teacher."""
        pairs = list(zip(queries, docs, strict=True))
        if self.facts is None:  # a backend checks itself on the first batch before anything is committed
            from skill.score import next_batch

            end = next_batch(np.asarray(lens), 0, token_budget=self.scorer.token_budget, max_pairs=self.scorer.max_pairs)
            self.facts = self.scorer.teacher.before_scoring(pairs[:end]) or {}
        return self.scorer.score_sorted(pairs, np.asarray(lens), bar, where=lambda i: where[i])

    def score_chunk(self, c: int, queries: list[str], docs: list[str], lens: np.ndarray, where: list[tuple[str, str]]) -> dict:
        """A Ray task: one chunk's scores and how long they took, or {"error": ...}."""
        meter = RateMeter()
        meter.begin_chunk(lens)
        started = time.perf_counter()
        try:
            scores = self.score(queries, docs, lens, where, meter)
        except SkillError as err:
            return {"chunk": c, "error": err.as_dict()}
        except Exception as exc:
            return {"chunk": c, "error": _unexpected(exc)}
        return {"chunk": c, "scores": scores, "seconds": time.perf_counter() - started, "tokens": int(np.asarray(lens).sum()), "facts": self.facts}


def _unexpected(exc: BaseException) -> dict:
    return {
        "code": int(ExitCode.RUNTIME_FAILURE),
        "message": f"unexpected {type(exc).__name__}: {exc}".splitlines()[0][:500],
        "where": None,
        "fix": "set RERANKER_SKILL_DEBUG=1 for the traceback and report it",
    }


def _error(err: dict, *, worker: str, keep_chunks: bool) -> SkillError:
    """A worker's error as the parent's SkillError; `keep_chunks`: the failure says nothing against the committed chunks."""
    out = SkillError(f"{worker}: {err['message']}", code=ExitCode(err["code"]), where=err.get("where"), fix=err.get("fix"))
    if keep_chunks:
        out.__cause__ = ChildProcessError(err["message"])  # skill.score keeps the chunks of a failure whose cause is an OSError
    return out


# ---------------------------------------------------------------------------------------------
# The plan's pairs on disk, one row group per chunk


def write_plan_pairs(scorer, order: np.ndarray) -> Path:
    """The unique pairs in plan order (query, document and the ids naming them), written once per teacher work folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skill.io import atomic_path

    path = scorer.workdir / PLAN_PAIRS
    if path.exists():
        meta = pq.ParquetFile(path).metadata
        if meta.num_rows == len(order) and meta.num_row_groups == scorer.n_chunks():
            return path
    pairs = scorer.pairs
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, pa.schema([(n, pa.string()) for n in ("query", "document", "query_id", "doc_id")])) as writer:
        for c in range(scorer.n_chunks()):
            idx = order[slice(*scorer.chunk_range(c, len(order)))]
            rows = {
                "query": [pairs.queries[j] for j in idx],
                "document": [pairs.docs[j] for j in idx],
                "query_id": [str(pairs.first_row[j][0]) for j in idx],
                "doc_id": [str(pairs.first_row[j][1]) for j in idx],
            }
            writer.write_table(pa.table(rows, schema=writer.schema), row_group_size=max(1, len(idx)))
    return path


def read_chunk(parquet_file, c: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    table = parquet_file.read_row_group(c)
    where = list(zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), strict=True))
    return table.column("query").to_pylist(), table.column("document").to_pylist(), where


def _todo_tokens(scorer, lengths: np.ndarray, todo: list[int]) -> tuple[int, int]:
    """(pairs, tokens) of the chunks still to score."""
    spans = [scorer.chunk_range(c, len(lengths)) for c in todo]
    return sum(hi - lo for lo, hi in spans), sum(int(lengths[lo:hi].sum()) for lo, hi in spans)


def _release(teacher) -> None:
    """Free the parent's copy of the model (workers load their own); the plan is computed, nothing else needs it."""
    import gc

    teacher.model = None
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Engines


class InProcessEngine:
    """One device, this process: ChunkScorer.run (the reference path)."""

    def __init__(self, config: ScoreConfig, device: str | None, loader=None) -> None:
        from skill.teacher import load_teacher

        self.config, self.device, self.loader = config, device, loader or load_teacher

    def load(self, spec: TeacherSpec):
        return self.loader(spec, max_length=self.config.max_length, device=self.device, dtype=self.config.dtype)

    def run(self, scorer, shard: tuple[int, int]) -> tuple[int, int, float]:
        return scorer.run(shard)

    def facts(self) -> dict:
        return {"engine": "local", "workers": 1}

    def close(self) -> None:
        pass


class ProcessEngine(InProcessEngine):
    """One spawned worker process per device, claiming chunks from the shared store."""

    POLL_S = 0.2

    def __init__(self, config: ScoreConfig, devices: list[str], cache_dir: Path, loader=None) -> None:
        super().__init__(config, devices[0], loader)
        self.devices = devices
        self.threads = threads_per_worker(devices)
        self.cache_dir = cache_dir
        self.worker_states: list[dict | None] = []  # the last run's, for benchmarks

    def facts(self) -> dict:
        return {"engine": "local", "workers": len(self.devices), "devices": self.devices, **({"threads_per_worker": self.threads} if self.threads else {})}

    def run(self, scorer, shard: tuple[int, int]) -> tuple[int, int, float]:
        import multiprocessing as mp

        order, lengths = scorer.plan()
        mine, todo = scorer.shard_chunks(shard)
        if not todo:
            return 0, 0, 0.0
        total, _ = _todo_tokens(scorer, lengths, mine)
        remaining, tokens = _todo_tokens(scorer, lengths, todo)
        write_plan_pairs(scorer, order)
        session = _new_session(scorer.workdir)
        fingerprint = scorer.teacher.fingerprint
        _release(scorer.teacher)
        job = {
            "spec": _spec_of(scorer.teacher, self.config),
            "config": self.config.model_dump(mode="json"),
            "workdir": str(scorer.workdir),
            "session": str(session),
            "todo": todo,
            "fingerprint": fingerprint,
            "threads": self.threads,
            "onnx_cache": str(self.cache_dir),
            "parent": os.getpid(),
        }
        ctx = mp.get_context("spawn")  # a forked CUDA or OpenMP runtime is unsafe; every worker starts clean
        procs = [ctx.Process(target=_worker_main, args=(job, k, device), name=f"score-worker-{k}") for k, device in enumerate(self.devices)]
        started = time.perf_counter()
        labels = [f"{d}" for d in self.devices]
        try:
            with Progress.for_teacher(scorer.teacher, total=total, remaining=remaining, tokens=tokens, workers=labels) as bar:
                for p in procs:
                    p.start()
                while any(p.is_alive() for p in procs):
                    time.sleep(self.POLL_S)
                    if any(p.exitcode and (session / f"worker-{k}.error.json").exists() for k, p in enumerate(procs)):
                        for p in procs:  # a worker reported an error (a broken teacher, a bad device): the others stop too
                            if p.is_alive():
                                p.terminate()
                        break
                    states = _states(session, len(procs))
                    live = [s for s, p in zip(states, procs, strict=True) if s and p.is_alive() and s.get("phase") == "scoring"]
                    bar.from_workers(
                        sum(s.get("pairs", 0) for s in states if s),
                        [s["tokens_per_second"] for s in live if s.get("tokens_per_second")],
                        all_ready=bool(live) and all(s.get("tokens_per_second") for s in live),
                    )
                bar.from_workers(sum(s.get("pairs", 0) for s in _states(session, len(procs)) if s), [], all_ready=False)
            scorer.estimate = bar.estimate
        except BaseException:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
            raise
        for p in procs:
            p.join()
        states = _states(session, len(procs))
        self.worker_states = states
        self._raise_failures(scorer, procs, states, session)
        _remove_session(session)
        facts = next((s["facts"] for s in states if s and s.get("facts")), None)
        if facts:
            scorer.backend_facts = facts
        done = [c for s in states if s for c in s.get("chunks", [])]
        return len(done), sum(s.get("pairs", 0) for s in states if s), time.perf_counter() - started

    def _raise_failures(self, scorer, procs, states, session: Path) -> None:
        reported, died = [], []  # a worker's own error explains the others' stop: it comes first
        for k, (p, state) in enumerate(zip(procs, states, strict=True)):
            if p.exitcode == 0:
                continue
            name = f"worker {k} ({self.devices[k]}, pid {p.pid})"
            err_file = session / f"worker-{k}.error.json"
            if err_file.exists():
                err = json.loads(err_file.read_text())
                reported.append(_error(err["error"], worker=name, keep_chunks=err.get("phase") != "scoring"))
                continue
            how = f"was killed by {signal.Signals(-p.exitcode).name}" if p.exitcode and p.exitcode < 0 else f"exited with code {p.exitcode}"
            held = f" while scoring chunk {state['chunk']}" if state and state.get("chunk") is not None else ""
            died.append(
                _error(
                    {
                        "code": int(ExitCode.RUNTIME_FAILURE),
                        "message": f"{how}{held}; {len(scorer.done())} of {scorer.n_chunks()} chunks are committed",
                        "where": str(scorer.workdir),
                        "fix": "rerun the same command: committed chunks are kept and only the missing ones are scored "
                        "(a worker killed by the system has often run out of memory: lower --batch-size, --max-length, or use fewer --devices)",
                    },
                    worker=name,
                    keep_chunks=True,
                )
            )
        if reported or died:
            _remove_session(session)
            raise (reported + died)[0]


def _spec_of(teacher, config: ScoreConfig) -> dict:
    """The TeacherSpec a worker loads (the one this teacher came from)."""
    spec = next(s for s in config.teachers if s.model == teacher.name)
    return spec.model_dump(mode="json")


def _new_session(workdir: Path) -> Path:
    """This invocation's claim folder; claim folders of dead invocations on this host are removed."""
    host = socket.gethostname()
    for old in workdir.glob(f"claims-{host}-*"):
        pid = old.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove_session(old)
    session = workdir / f"claims-{host}-{os.getpid()}-{time.time_ns()}"
    session.mkdir(parents=True)
    return session


def _remove_session(session: Path) -> None:
    import shutil

    shutil.rmtree(session, ignore_errors=True)


def _states(session: Path, n: int) -> list[dict | None]:
    out = []
    for k in range(n):
        try:
            out.append(json.loads((session / f"worker-{k}.json").read_text()))
        except (OSError, ValueError):
            out.append(None)
    return out


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, default=str))
    os.replace(tmp, path)


def _claim(session: Path, c: int) -> bool:
    try:
        fd = os.open(session / f"chunk-{c:06d}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


class _WorkerBar:
    """A worker's progress: pairs and measured rate, written to its state file (at most every half second)."""

    def __init__(self, path: Path, state: dict) -> None:
        self.path, self.state, self.meter, self.flushed = path, state, RateMeter(), 0.0

    def begin_chunk(self, lens) -> None:
        self.meter.begin_chunk(lens)

    def update(self, n: int) -> None:
        self.meter.update(n)
        self.state["pairs"] += n
        if self.meter.ready:
            self.state["tokens_per_second"] = self.meter.tokens_per_second
        if time.perf_counter() - self.flushed > 0.5:
            self.flush()

    def flush(self) -> None:
        _write_state(self.path, self.state)
        self.flushed = time.perf_counter()


def _worker_main(job: dict, k: int, device: str) -> None:
    """A worker process: load the teacher on `device`, then claim, score and commit chunks until none is left."""
    import pyarrow.parquet as pq

    # Nothing a library prints may reach the parent's stdout (it may be carrying a --json envelope).
    sys.stdout.flush()
    os.dup2(2, 1)
    session, workdir = Path(job["session"]), Path(job["workdir"])
    state = {"worker": k, "pid": os.getpid(), "device": device, "phase": "loading", "pairs": 0, "chunks": [], "chunk": None}
    state_file = session / f"worker-{k}.json"
    _write_state(state_file, state)
    try:
        worker = ChunkWorker(spec=job["spec"], config=job["config"], device=device, threads=job["threads"], onnx_cache=job["onnx_cache"])
        info = worker.load(str(workdir))
        if "error" in info:
            raise _error(info["error"], worker=f"worker {k}", keep_chunks=True)
        if info["fingerprint"] != job["fingerprint"]:
            raise SkillError(
                f"the teacher loaded on {device} is not the one planned (fingerprint {info['fingerprint'][:12]} vs {job['fingerprint'][:12]})",
                code=ExitCode.RUNTIME_FAILURE,
                fix="score with devices of one kind and one precision (--dtype), and do not change the teacher folder while scoring",
            )
        scorer = worker.scorer
        lengths = np.load(workdir / "lengths.npy", mmap_mode="r")
        pairs_file = pq.ParquetFile(workdir / PLAN_PAIRS)
        bar = _WorkerBar(state_file, state)
        state["phase"] = "scoring"
        state["scoring_started"] = time.time()
        for c in job["todo"]:
            if os.getppid() != job["parent"]:  # the command itself was killed: stop instead of scoring on as an orphan
                break
            if scorer.chunk_file(c).exists() or not _claim(session, c):
                continue
            state["chunk"] = c
            bar.flush()
            queries, docs, where = read_chunk(pairs_file, c)
            lens = np.asarray(lengths[slice(*scorer.chunk_range(c, len(lengths)))])
            bar.begin_chunk(lens)
            scorer.commit(c, worker.score(queries, docs, lens, where, bar))
            state["chunks"].append(c)
            state["chunk"] = None
            state["facts"] = worker.facts
            bar.flush()
        state["phase"] = "done"
        state["scoring_ended"] = time.time()
        _write_state(state_file, state)
    except SkillError as err:
        _write_state(session / f"worker-{k}.error.json", {"phase": state["phase"], "error": err.as_dict()})
        sys.exit(int(err.code))
    except BaseException as exc:
        _write_state(session / f"worker-{k}.error.json", {"phase": state["phase"], "error": _unexpected(exc)})
        sys.exit(int(ExitCode.RUNTIME_FAILURE))
    # Every chunk is committed (fsync'd, renamed) and the state written: skip the interpreter's slow teardown of torch.
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Ray


class RemoteTeacher:
    """The driver's view of a teacher loaded by Ray actors: its identity, and token lengths computed on the actors."""

    def __init__(self, spec: TeacherSpec, info: dict, actors: list) -> None:
        d = info["describe"]
        self.name, self.type, self.weight, self.score_space = spec.model, d["type"], spec.weight, d["score_space"]
        self.revision, self.dtype, self.backend = d.get("revision"), d.get("dtype"), d.get("backend", "torch")
        self.device = info["device"]
        self.fingerprint = info["fingerprint"]
        self.info = info
        self.actors = actors
        self.model = None

    def describe(self) -> dict:
        return dict(self.info["describe"])

    def lengths(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import ray

        n = len(self.actors)
        step = max(1, -(-len(pairs) // n))
        parts = [a.lengths.remote(pairs[i : i + step]) for a, i in zip(self.actors, range(0, len(pairs), step), strict=False)]
        return np.concatenate([np.asarray(p) for p in ray.get(parts)]) if parts else np.zeros(0, dtype=np.int32)

    def before_scoring(self, first_batch) -> dict:
        return {}


class RayEngine:
    """Actors on a Ray cluster, one per GPU (else one per node, or --workers), each loading the teacher once."""

    def __init__(self, config: ScoreConfig) -> None:
        try:
            import ray
        except ImportError:
            raise prerequisite("--engine ray needs Ray", fix='pip install "reranker-skill[cluster]" (or drop --engine ray to score on this machine)') from None
        if config.backend == "onnx":
            raise SkillError(
                "--backend onnx runs with the local engine only",
                code=ExitCode.USAGE,
                fix="drop --backend onnx with --engine ray (GPU actors score in bf16 with torch)",
            )
        if config.devices is not None or config.device is not None:
            raise SkillError(
                "--devices/--device choose local workers; Ray places its actors itself",
                code=ExitCode.USAGE,
                fix="with --engine ray use --workers N (default: one per GPU of the cluster)",
            )
        self.config = config
        self.started = False
        self.actors: list = []
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
            if config.ray_address is None and not os.environ.get("RAY_ADDRESS"):
                # A local cluster: its workers import this same checkout of the package.
                import skill

                root = str(Path(skill.__file__).resolve().parent.parent)
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
            try:
                ray.init(address=config.ray_address, **kwargs)
            except Exception as exc:
                raise SkillError(
                    f"cannot start or join the Ray cluster{f' at {config.ray_address}' if config.ray_address else ''}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                    code=ExitCode.MISSING_RESOURCE,
                    fix="check --ray-address (ray://HOST:10001 or HOST:6379 of a running `ray start --head`), or drop it to start a local cluster",
                ) from None
            self.started = True
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.n = config.workers or self.gpus or max(1, len(nodes))
        cpus = int(resources.get("CPU", 1))
        self.cpus_per_actor = 1 if self.gpus else max(1, min(cpus // self.n, min((int(n["Resources"].get("CPU", 1)) for n in nodes), default=cpus)))
        self.timings: list[float] = []

    def facts(self) -> dict:
        import ray

        return {
            "engine": "ray",
            "workers": self.n,
            "ray_gpus": self.gpus,
            **({} if self.gpus else {"threads_per_worker": self.cpus_per_actor}),
            "ray_nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        }

    def load(self, spec: TeacherSpec):
        import ray

        from skill.teacher import load_teacher, needs_model

        if not needs_model(spec):
            return load_teacher(spec, max_length=self.config.max_length)  # a scores file or the first stage needs no worker
        actor_cls = ray.remote(ChunkWorker).options(num_cpus=self.cpus_per_actor, num_gpus=1 if self.gpus else 0)
        actors = [
            actor_cls.remote(
                spec=spec.model_dump(mode="json"), config=self.config.model_dump(mode="json"), device=None, threads=None if self.gpus else self.cpus_per_actor
            )
            for _ in range(self.n)
        ]
        self.actors += actors
        infos = ray.get([a.load.remote() for a in actors])
        for i, info in enumerate(infos):
            if "error" in info:
                raise _error(info["error"], worker=f"Ray worker {i}", keep_chunks=True)
        prints = {i["fingerprint"] for i in infos}
        if len(prints) > 1:
            raise SkillError(
                f"Ray workers loaded different teachers for {spec.model!r} ({len(prints)} fingerprints across {', '.join(sorted({i['host'] for i in infos}))})",
                code=ExitCode.INVALID_INPUT,
                where=spec.model,
                fix="give every node the same teacher (a hub id, or an identical copy of the folder at the same path) and GPUs of one kind",
            )
        return RemoteTeacher(spec, infos[0], actors)

    def run(self, scorer, shard: tuple[int, int]) -> tuple[int, int, float]:
        import pyarrow.parquet as pq
        import ray
        from ray.util.actor_pool import ActorPool

        order, lengths = scorer.plan()
        mine, todo = scorer.shard_chunks(shard)
        if not todo:
            return 0, 0, 0.0
        total, _ = _todo_tokens(scorer, lengths, mine)
        remaining, tokens = _todo_tokens(scorer, lengths, todo)
        pairs_file = pq.ParquetFile(write_plan_pairs(scorer, order))
        teacher: RemoteTeacher = scorer.teacher

        def submit(actor, c):
            queries, docs, where = read_chunk(pairs_file, c)
            return actor.score_chunk.remote(c, queries, docs, np.asarray(lengths[slice(*scorer.chunk_range(c, len(order)))]), where)

        started = time.perf_counter()
        done_pairs, chunks = 0, 0
        labels = [f"ray:{'gpu' if self.gpus else 'cpu'}"] * len(teacher.actors)
        with Progress.for_teacher(teacher, total=total, remaining=remaining, tokens=tokens, workers=labels, where=" (ray)") as bar:
            try:
                for out in ActorPool(teacher.actors).map_unordered(submit, todo):
                    if "error" in out:
                        raise _error(out["error"], worker=f"Ray worker (chunk {out['chunk']})", keep_chunks=False)
                    scorer.commit(out["chunk"], out["scores"])
                    scorer.backend_facts = out.get("facts") or {}
                    chunks += 1
                    done_pairs += len(out["scores"])
                    bar.from_workers(done_pairs, [out["tokens"] / out["seconds"] * len(teacher.actors)] if out["seconds"] > 0 else [], all_ready=True)
            except ray.exceptions.RayError as exc:
                err = _error(
                    {
                        "code": int(ExitCode.RUNTIME_FAILURE),
                        "message": f"a Ray worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); {len(scorer.done())} of {scorer.n_chunks()} chunks are committed",
                        "where": str(scorer.workdir),
                        "fix": "rerun the same command: committed chunks are kept and only the missing ones are scored",
                    },
                    worker="ray",
                    keep_chunks=True,
                )
                raise err from err.__cause__  # a ChildProcessError: the committed chunks are kept
        scorer.estimate = bar.estimate
        return chunks, done_pairs, time.perf_counter() - started

    def close(self) -> None:
        with contextlib.suppress(Exception):
            import ray

            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if self.started:
                ray.shutdown()


def make_engine(config: ScoreConfig, *, cache_dir: Path, loader=None):
    """The engine `score` runs its teachers' chunks on; `loader` loads a teacher in this process (default skill.teacher.load_teacher)."""
    if config.engine == "ray":
        return RayEngine(config)
    if config.workers is not None or config.ray_address is not None:
        raise SkillError("--workers and --ray-address apply to --engine ray", code=ExitCode.USAGE, fix="add --engine ray, or list local devices with --devices")
    devices = resolve_devices(config.devices, config.device)
    if len(devices) == 1:
        return InProcessEngine(config, devices[0] if (config.devices is not None or config.device is not None) else None, loader)
    return ProcessEngine(config, devices, cache_dir, loader)
