"""`evaluate`: is search better on the held-out queries, by how much, and at what cost.

Reranks the first stage's held-out top-K (as mined; positives never forced in) with every
system, computes the metrics against ALL held-out positives, tests the differences that
matter over queries, checks teacher↔student fidelity and score collapse, measures cost, tests
every system against every other and recommends what to serve (the cheapest system that no other
measured system beats significantly), and writes report.json, report.md (verdict and SERVE line
first) and report.png. `evaluate(run_dir, cfg)` is the plain function behind the CLI;
`run RECIPE.yaml` calls it too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skill import metrics as M
from skill.config import EvaluateConfig
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid, missing
from skill.io import read_json, read_parquet, write_json
from skill.loading import PACKAGED_PREFIX, load_cross_encoder, looks_like_hub_id, resolve_packaged
from skill.manifest import Run, Stage
from skill.runfolder import (
    FUSION,
    HELDOUT_CANDIDATES,
    HELDOUT_SCORES,
    QRELS_HELDOUT,
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    SCORES_META,
    STUDENT,
    Fusion,
    RenderSettings,
    ScoreSettings,
    ScoresMeta,
)

FUSION_FILE = FUSION  # written by train.py next to the student's weights
FUSED = "student + first stage (fused)"
REQUIRED_COLUMNS = ("query_id", "doc_id", "query", "document", "rank")
NANOBEIR_SKIPPED_OFFLINE = "NanoBEIR general-domain check skipped: the Hugging Face Hub is unreachable (offline or HF_HUB_OFFLINE=1)"
# Quality comes from every held-out pair, scored in length-sorted batches across queries (throughput); serving cost
# (ms per query, one request per query's candidates) is timed on this many held-out queries, for every system alike.
LATENCY_QUERIES = 32
TEACHER_AUTO_MAX_MB = 600  # without --teacher/--no-teacher, a local bi-encoder or cross-encoder teacher up to this size is timed
# Serving cost tiers, cheapest first: the first stage (no reranking), systems timed here (by p50, then p95 ms/query),
# systems not timed (after every timed one, by structure), external scorers (last).
COST_TIERS = {"baseline": 0, "measured": 1, "unmeasured": 2, "external": 3}
STRUCTURE = {"first stage": 0, "bi-encoder": 1, "cross-encoder": 2, "mxbai-v2": 3, "external": 4}  # query-time work, least first


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class HeldOut:
    path: Path
    query_ids: list[str]
    doc_ids: list[str]
    queries: list[str]
    documents: list[str]
    ranks: np.ndarray
    teacher: np.ndarray | None
    qrels: dict[str, dict[str, float]]
    first_stage: np.ndarray | None = None  # the first stage's own scores, for the fused system
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return max((len(ix) for ix in self.groups.values()), default=0)


def load_heldout(run: Run) -> HeldOut:
    if not run.path.is_dir():
        raise missing("run folder not found", where=str(run.path), fix="pass the folder `mine` wrote (--run runs/NAME)")
    scored, candidates = run.file(HELDOUT_SCORES), run.file(HELDOUT_CANDIDATES)
    path = scored if scored.exists() else candidates
    if not path.exists():
        raise missing(
            "no held-out data in the run folder (heldout_candidates.parquet)",
            where=str(run.path),
            fix=f"run `reranker-skill mine --run {run.path} ...` first: it holds out queries and writes their candidates",
        )
    qrels_path = run.file(QRELS_HELDOUT)
    if not qrels_path.exists():
        raise missing(
            "no held-out relevance labels (qrels_heldout.json)", where=str(run.path), fix=f"rerun `reranker-skill mine --run {run.path} --force` with --qrels"
        )
    try:
        table = read_parquet(path)
    except Exception as exc:
        raise invalid(f"not a readable Parquet file ({type(exc).__name__})", where=str(path), fix="rerun `mine` (or `score`) with --force") from None
    absent = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if absent:
        raise invalid(
            f"missing column(s) {', '.join(absent)} (columns: {', '.join(table.column_names)})",
            where=str(path),
            fix="rerun `mine` (or `score`) with --force; see references/run-folder.md",
        )
    if table.num_rows == 0:
        raise invalid("no held-out candidates (0 rows)", where=str(path), fix="hold out more queries (`mine --heldout 0.2`) and rerun mine with --force")
    try:
        qrels_raw = read_json(qrels_path)
        qrels = {str(q): {str(d): float(g) for d, g in docs.items()} for q, docs in qrels_raw.items()}
    except (ValueError, AttributeError, TypeError):
        raise invalid("not a {query_id: {doc_id: grade}} JSON object", where=str(qrels_path), fix="rerun `mine` with --force") from None
    col = {c: table.column(c).to_pylist() for c in ("query_id", "doc_id", "query", "document")}
    teacher = None
    if "teacher_score" in table.column_names:
        t = np.asarray(table.column("teacher_score").to_numpy(zero_copy_only=False), dtype=np.float64)
        teacher = t if np.isfinite(t).any() else None
    ho = HeldOut(
        path=path,
        query_ids=[str(q) for q in col["query_id"]],
        doc_ids=[str(d) for d in col["doc_id"]],
        queries=col["query"],
        documents=col["document"],
        ranks=np.asarray(table.column("rank").to_numpy(zero_copy_only=False), dtype=np.int64),
        teacher=teacher,
        qrels=qrels,
        first_stage=np.asarray(table.column("first_stage_score").to_numpy(zero_copy_only=False), dtype=np.float64)
        if "first_stage_score" in table.column_names
        else None,
    )
    ho.groups = M.per_query_groups(ho.query_ids)
    if not any(M.has_positive(g) for g in qrels.values()):
        raise invalid(
            "no held-out query has a positive (grade > 0) in qrels_heldout.json",
            where=str(qrels_path),
            fix="give qrels with positives to `mine` and rerun it with --force",
        )
    return ho


# ---------------------------------------------------------------------------------------------
# Models


def check_reranker(spec: str, role: str) -> str:
    """Raise a clear error when `spec` is a local folder that is not a reranker; return it unchanged.

    A reranker is a CrossEncoder folder (config_sentence_transformers.json model_type
    CrossEncoder) or a transformers sequence classifier with one label. Hub ids pass here and
    fail at load time when unreachable.
    """
    if spec.startswith(PACKAGED_PREFIX):
        spec = resolve_packaged(spec)
    path = Path(spec).expanduser()
    flag = f"--{role}" if role in ("student", "base") else "--model"
    if not path.exists():
        if _looks_like_path(spec):
            raise missing(f"{role} model folder not found", where=spec, fix=f"check the path given to {flag}")
        return spec
    if not path.is_dir():
        raise invalid(f"{role} is a file, not a model folder", where=spec, fix="pass the folder a CrossEncoder was saved to (model.save(FOLDER))")
    kind = model_kind(path)
    if kind == "reranker":
        return spec
    what = {
        "bi-encoder": "a sentence-transformers embedding model (bi-encoder), not a reranker",
        "encoder": "an encoder without a reranking head (a base model, not a reranker)",
        "multi-label": "a classifier with more than one label, not a one-score reranker",
        "none": "not a model folder (no config.json)",
    }[kind]
    fix = "pass a CrossEncoder folder (e.g. runs/NAME/student) or a reranker id like cross-encoder/ettin-reranker-17m-v1"
    if kind in ("encoder", "bi-encoder"):
        fix += "; to compare with the untrained base, pass it as --base"
    raise invalid(f"{role} model is {what}", where=str(path), fix=fix)


def model_kind(path: Path) -> str:
    """ "reranker", "bi-encoder", "encoder", "multi-label" or "none" for a local folder."""
    from skill.modeling import model_folder_kind

    kind = model_folder_kind(path)
    return {"mxbai-v2": "reranker", "causal-lm": "encoder"}.get(kind, kind)


def _looks_like_path(spec: str) -> bool:
    """The loader's path-vs-hub rule: anything that is not ORG/NAME is a path."""
    return not spec.startswith(PACKAGED_PREFIX) and not looks_like_hub_id(spec)


def _load(spec: str, role: str, cfg: EvaluateConfig):
    flag = f"--{role}" if role in ("student", "base") else "--model"
    return load_cross_encoder(spec, role=f"{role} model", flag=flag, device=cfg.device, max_seq_length=cfg.max_length)


def folder_size_mb(spec: str) -> float | None:
    path = Path(spec).expanduser()
    if not path.is_dir():
        return None
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 3)


@dataclass
class Scored:
    scores: np.ndarray  # every held-out pair
    latencies_s: list[float]  # one request per query, the first LATENCY_QUERIES queries
    timed_pairs: int  # the pairs of those queries
    device: str
    parameters: int
    batched_pairs_per_s: float | None = None  # every pair, length-sorted batches across queries


def score_with_timing(model, ho: HeldOut, *, batch_size: int, desc: str) -> Scored:
    """Every held-out pair scored by a CrossEncoder in length-sorted batches across queries; the serving latency timed
    on the first LATENCY_QUERIES queries, one request per query's candidates."""

    def predict(pairs):
        return model.predict(pairs, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)

    _, latencies = time_scoring(predict, ho, desc=f"timing {desc}", max_queries=LATENCY_QUERIES)
    start = time.perf_counter()
    scores = np.asarray(
        model.predict(list(zip(ho.queries, ho.documents, strict=True)), batch_size=batch_size, show_progress_bar=len(ho.queries) > 2000, convert_to_numpy=True),
        dtype=np.float64,
    ).reshape(-1)
    seconds = time.perf_counter() - start
    timed = sum(len(ix) for ix in list(ho.groups.values())[:LATENCY_QUERIES])
    parameters = int(sum(p.numel() for p in model.parameters()))
    return Scored(scores, latencies, timed, str(model.device), parameters, round(len(scores) / seconds, 2) if seconds > 0 else None)


def time_scoring(score_fn, ho: HeldOut, *, desc: str, max_queries: int | None = None) -> tuple[np.ndarray, list[float]]:
    """`score_fn(pairs) -> scores` over each query's candidates (the first `max_queries`); returns the scores (NaN where not scored) and the seconds per query."""
    from tqdm.auto import tqdm

    scores = np.full(len(ho.query_ids), np.nan, dtype=np.float64)
    first = next(iter(ho.groups.values()))
    score_fn([(ho.queries[i], ho.documents[i]) for i in first])  # warm-up, not timed
    latencies = []
    for ix in tqdm(list(ho.groups.values())[:max_queries], desc=desc, unit="query", file=sys.stderr, leave=False):
        pairs = [(ho.queries[i], ho.documents[i]) for i in ix]
        start = time.perf_counter()
        out = score_fn(pairs)
        latencies.append(time.perf_counter() - start)
        scores[ix] = np.asarray(out, dtype=np.float64).reshape(-1)
    return scores, latencies


def cost_summary(latencies_s: list[float], pairs: int, *, size_mb: float | None, parameters: int | None, device: str, batch_size: int) -> dict:
    total = float(sum(latencies_s))
    ms = np.asarray(latencies_s) * 1000
    return {
        "pairs": pairs,
        "queries": len(latencies_s),
        "seconds": round(total, 4),
        "pairs_per_s": round(pairs / total, 2) if total > 0 else None,
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 3) if len(ms) else None,
        "size_mb": size_mb,
        "parameters": parameters,
        "device": device,
        "batch_size": batch_size,
    }


def scored_cost(scored: Scored, *, size_mb: float | None, batch_size: int, latencies_s: list[float] | None = None) -> dict:
    """`cost_summary` of a model scored by `score_with_timing` (optionally with other per-query latencies, e.g. the fused blend)."""
    cost = cost_summary(
        scored.latencies_s if latencies_s is None else latencies_s,
        scored.timed_pairs,
        size_mb=size_mb,
        parameters=scored.parameters,
        device=scored.device,
        batch_size=batch_size,
    )
    cost["batched_pairs_per_s"] = scored.batched_pairs_per_s
    return cost


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class System:
    name: str
    kind: str  # first_stage | base | student | fused | teacher | model
    source: str
    scores: np.ndarray  # one per held-out pair; for the first stage, -rank
    cost: dict | None = None
    note: str | None = None
    serving: dict = field(default_factory=dict)  # what serving it needs: structure, why its cost is unmeasured, facts for the text


def _render_base(run: Run) -> RenderSettings:
    record = run.stage("render")
    return record.settings(RenderSettings) if record is not None else RenderSettings()


def _base_system(spec: str, render_cfg: RenderSettings, ho: HeldOut, cfg: EvaluateConfig, notes: list[str]) -> System | None:
    """The base before training: itself when it is a reranker; an encoder gets the student's untrained head."""
    if spec.startswith(PACKAGED_PREFIX):
        spec = resolve_packaged(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            notes.append(f"base {spec!r} not found: student − base skipped")
            return None
        from skill.doctor import hub_reachable

        if not hub_reachable():
            notes.append(f"base {spec!r} is a hub id and the hub is unreachable: student − base skipped (pass --base FOLDER)")
            return None
        kind = "reranker" if render_cfg.base_kind == "reranker" else "encoder"
    else:
        kind = model_kind(path)
    if kind in ("none", "multi-label"):
        notes.append(f"base {spec!r} is not loadable as an encoder or reranker ({kind}): student − base skipped")
        return None
    try:
        if kind == "reranker":
            model, label = _load(spec, "base", cfg), "base"
        else:
            from skill.modeling import build_ettin_reranker

            pooling = render_cfg.pooling or ("mean" if kind == "bi-encoder" else "cls")
            max_len = cfg.max_length or render_cfg.max_seq_length or 512
            seed = render_cfg.seed if render_cfg.seed is not None else 12
            model = build_ettin_reranker(spec, max_seq_length=int(max_len), pooling=pooling, head=render_cfg.head or "ettin", seed=seed, device=cfg.device)
            label = "base (untrained head)"
            notes.append(
                f"base {spec} is an encoder: it was scored with the student's head freshly initialised (seed {seed}), i.e. chance level — student − base shows what training learned"
            )
    except SkillError as err:
        notes.append(f"base {spec!r} could not be loaded ({err.message}): student − base skipped")
        return None
    except Exception as exc:
        notes.append(f"base {spec!r} could not be loaded ({type(exc).__name__}): student − base skipped")
        return None
    scored = score_with_timing(model, ho, batch_size=cfg.batch_size, desc="base")
    cost = scored_cost(scored, size_mb=folder_size_mb(spec), batch_size=cfg.batch_size)
    return System(label, "base", spec, scored.scores, cost)


def _local_folder(spec: str) -> str | None:
    """The folder a model spec names on this machine (a `packaged:` name resolved), or None (a hub id, a file, nothing)."""
    if not spec:
        return None
    try:
        folder = resolve_packaged(spec) if spec.startswith(PACKAGED_PREFIX) else spec
    except SkillError:
        return None
    return folder if Path(folder).expanduser().is_dir() else None


def teacher_profile(run: Run) -> dict:
    """What `score` recorded about the teacher(s) (scores.meta.json): types, ids, and whether timing them is cheap."""
    meta_path = run.file(SCORES_META)
    teachers = (read_json(meta_path).get("teachers") or []) if meta_path.exists() else []
    members = []
    for t in teachers:
        tid, ttype = str(t.get("id") or t.get("model") or ""), str(t.get("type") or "auto")
        folder = _local_folder(tid)
        members.append({"id": tid, "type": ttype, "local": folder is not None, "size_mb": folder_size_mb(folder) if folder else None})
    external = any(m["type"] == "file" for m in members)
    structure = "external" if external else max((m["type"] for m in members if m["type"] in STRUCTURE), key=STRUCTURE.get, default="cross-encoder")
    models = [m for m in members if m["type"] != "first-stage"]  # the first stage's scores come with the candidates
    cheap = bool(models) and all(m["local"] and m["type"] in ("bi-encoder", "cross-encoder") and (m["size_mb"] or 0) <= TEACHER_AUTO_MAX_MB for m in models)
    return {"members": members, "structure": structure, "external": external, "cheap_to_time": cheap}


def _teacher_cost(run: Run, ho: HeldOut, cfg: EvaluateConfig, notes: list[str]) -> dict | None:
    """Load the teacher(s) as `score` did (skill.teacher) and time what serving them costs on held-out queries.

    A cross-encoder (or mxbai) teacher scores every (query, candidate) pair, as the student does. A
    bi-encoder teacher serves from document embeddings computed once at index time: per query, one
    query embedding and K dot products (timed against a K × D matrix; the values do not change the cost).
    """
    meta_path = run.file(SCORES_META)
    if not meta_path.exists():
        notes.append("teacher cost not measured: no scores.meta.json (run `score` first)")
        return None
    teachers = ScoresMeta.model_validate(read_json(meta_path)).teachers
    if not teachers:
        notes.append("teacher cost not measured: scores.meta.json lists no teachers")
        return None
    from skill.config import TeacherSpec
    from skill.teacher import load_teacher

    score_record = run.stage("score")
    max_length = score_record.settings(ScoreSettings).max_length if score_record is not None else 512
    latencies: np.ndarray | None = None
    sizes, params, devices, ids, modes = [], [], [], [], []
    index_docs_per_s = None
    for t in teachers:
        tid, ttype = str(t.get("id") or t.get("model") or ""), t.get("type", "auto")
        if ttype == "first-stage":
            modes.append("first stage: its scores come with the candidates (a per-query z-score blend, no model)")
            continue
        if ttype == "file" or not tid:
            notes.append(f"teacher {tid or '?'} is a scores file (an external scorer): there is no local model to time")
            return None
        try:
            teacher = load_teacher(
                TeacherSpec(model=tid, type=ttype, weight=float(t.get("weight", 1.0))), max_length=max_length, device=cfg.device, dtype=t.get("dtype") or "auto"
            )
        except SkillError as err:
            notes.append(f"teacher {tid} not loadable here ({err.message}): teacher cost not measured")
            return None
        except Exception as exc:
            notes.append(f"teacher {tid} not loadable here ({type(exc).__name__}): teacher cost not measured")
            return None
        bs = cfg.batch_size
        if getattr(teacher, "type", None) == "bi-encoder":
            st = teacher.model
            first = next(iter(ho.groups.values()))
            start = time.perf_counter()
            docs = st.encode_document([ho.documents[i] for i in first], batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
            index_docs_per_s = round(len(first) / max(time.perf_counter() - start, 1e-9), 2)
            width = max(len(ix) for ix in ho.groups.values())
            doc_matrix = np.resize(np.asarray(docs, dtype=np.float32), (width, docs.shape[1]))  # K × D, as an index would hold

            def score_fn(pairs, st=st, doc_matrix=doc_matrix):
                q = st.encode_query([pairs[0][0]], normalize_embeddings=True, convert_to_numpy=True)[0]
                return doc_matrix[: len(pairs)] @ q

            modes.append("bi-encoder: one query embedding + K dot products with precomputed document embeddings")
        else:

            def score_fn(pairs, teacher=teacher, bs=bs):
                return np.concatenate([np.asarray(teacher.score_batch(pairs[i : i + bs]), dtype=np.float64) for i in range(0, len(pairs), bs)])

            modes.append(f"{getattr(teacher, 'type', 'reranker')}: every (query, candidate) pair scored")

        _, lat = time_scoring(score_fn, ho, desc=f"timing teacher {Path(tid).name}", max_queries=LATENCY_QUERIES)
        latencies = np.asarray(lat) if latencies is None else latencies + np.asarray(lat)  # an ensemble runs every member
        model = getattr(teacher, "model", None)
        sizes.append(folder_size_mb(_local_folder(tid) or tid))
        params.append(int(sum(p.numel() for p in model.parameters())) if hasattr(model, "parameters") else None)
        devices.append(str(getattr(teacher, "device", "?")))
        ids.append(tid)
        del teacher, model
    timed = list(ho.groups.values())[:LATENCY_QUERIES]
    cost = cost_summary(
        list(latencies),
        sum(len(ix) for ix in timed),
        size_mb=sum(sizes) if all(x is not None for x in sizes) else None,
        parameters=sum(params) if all(x is not None for x in params) else None,
        device=",".join(sorted(set(devices))),
        batch_size=cfg.batch_size,
    )
    cost["models"] = ids
    cost["mode"] = "; ".join(modes)
    if index_docs_per_s is not None:
        cost["index_docs_per_s"] = index_docs_per_s
    return cost


def _nanobeir(systems: list[System], cfg: EvaluateConfig, notes: list[str]) -> dict:
    from skill.doctor import hub_reachable

    if not hub_reachable():
        notes.append(NANOBEIR_SKIPPED_OFFLINE)
        return {"skipped": NANOBEIR_SKIPPED_OFFLINE}
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    out: dict[str, Any] = {}
    for s in systems:
        if s.kind not in ("student", "model") and not (s.kind == "base" and s.name == "base"):
            continue
        try:
            evaluator = CrossEncoderNanoBEIREvaluator(batch_size=cfg.batch_size, show_progress_bar=True, write_csv=False)
            res = evaluator(_load(s.source, s.kind, cfg))
            out[s.name] = {"ndcg@10": next((v for k, v in res.items() if k.endswith("_mean_ndcg@10")), None), "all": res}
        except Exception as exc:
            msg = f"NanoBEIR check failed for {s.name} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
            notes.append(msg)
            out[s.name] = {"skipped": msg}
    return out


def _fused_system(student: str, scored: Scored, ho: HeldOut, notes: list[str], cfg: EvaluateConfig) -> System | None:
    """The student fused with the first stage at the weight train.py chose on dev queries (student/fusion.json).

    Its cost per query is the student's plus the per-query blend, timed here.
    """
    path = Path(student).expanduser() / FUSION_FILE
    if not path.is_file():
        return None
    try:
        fusion = Fusion.model_validate(read_json(path))
    except ValueError:  # broken JSON, or no alpha in [0, 1]
        notes.append(f"{path} is not a fusion file with an alpha in [0, 1]: the fused system is skipped")
        return None
    alpha = fusion.alpha
    if ho.first_stage is None or not np.isfinite(ho.first_stage).all():
        notes.append("fused system skipped: the held-out candidates have no finite first_stage_score")
        return None
    chosen_on, split = fusion.chosen_on, fusion.split
    source = f"{alpha:g}·z(student) + {1 - alpha:g}·z(first stage), alpha from {FUSION_FILE}" + (
        f" (chosen on {chosen_on} {split} queries)" if chosen_on else ""
    )
    if split != "dev":
        notes.append(f"the fusion weight was chosen on {split} queries, not dev ones: the fused system's held-out numbers are optimistic")
    fused = M.fuse(scored.scores, ho.first_stage, ho.groups, alpha)
    latencies = []  # the student's request per timed query, plus that query's blend
    for (q, ix), student_s in zip(list(ho.groups.items())[: len(scored.latencies_s)], scored.latencies_s, strict=True):
        start = time.perf_counter()
        M.fuse(scored.scores[ix], ho.first_stage[ix], {q: np.arange(len(ix))}, alpha)
        latencies.append(student_s + time.perf_counter() - start)
    cost = scored_cost(scored, size_mb=folder_size_mb(student), batch_size=cfg.batch_size, latencies_s=latencies)
    return System(FUSED, "fused", source, fused, cost, serving={"structure": "cross-encoder", "alpha": alpha})


def _teacher_system(run: Run, ho: HeldOut, cfg: EvaluateConfig, notes: list[str]) -> System:
    """The teacher's quality from its held-out scores; its serving cost timed when asked (--teacher) or cheap (a small local model)."""
    profile = teacher_profile(run)
    serving: dict[str, Any] = {"structure": profile["structure"], "members": profile["members"]}
    cost = None
    if profile["external"]:
        serving["unmeasured"] = "an external scorer (scores file: API / LLM judge): no local serving cost to measure"
    elif cfg.teacher or (cfg.teacher is None and profile["cheap_to_time"]):
        cost = _teacher_cost(run, ho, cfg, notes)
        if cost is None:
            serving["unmeasured"] = "the teacher model could not be loaded here (see the notes)"
    elif cfg.teacher is False:
        serving["unmeasured"] = "not timed (--no-teacher)"
    else:
        serving["unmeasured"] = (
            f"not timed by default (only a local bi-encoder or cross-encoder folder up to {TEACHER_AUTO_MAX_MB} MB is): pass --teacher to load and time it"
        )
    return System("teacher", "teacher", f"{ho.path.name}:teacher_score", ho.teacher, cost, serving=serving)


def _heldout_key(ho: HeldOut) -> str:
    """The artifact key of the held-out table evaluate reads: the teacher-scored one when `score` wrote it."""
    return "heldout_scores" if ho.path.name == HELDOUT_SCORES else "heldout_candidates"


def _stage_inputs(run: Run, ho: HeldOut, student: str, base: str | None, models: list[str]) -> dict[str, str | Path | None]:
    inputs: dict[str, str | Path | None] = {
        _heldout_key(ho): ho.path,
        "qrels_heldout": run.file(QRELS_HELDOUT),
        "student": student if Path(student).exists() else None,
    }
    if base:
        inputs["base"] = base if Path(base).exists() else None
    for i, m in enumerate(models):
        inputs[f"model{i}"] = m if Path(m).exists() else None
    return inputs


def evaluate(run_dir: str | Path, cfg: EvaluateConfig | None = None, *, force: bool = False) -> Result:
    """Evaluate the run's student (and every other system) on the held-out queries; write the report."""
    cfg = cfg or EvaluateConfig()
    run = Run(run_dir)
    scored = run.stage("score")
    if scored is not None and scored.status != "ok":
        run.require(["heldout_scores"], needed_by="evaluate")  # `score` killed or failed: refused before anything is read
    ho = load_heldout(run)
    heldout_key = "heldout_scores" if scored is not None and "heldout_scores" in scored.outputs else _heldout_key(ho)
    student = cfg.student or str(run.file(STUDENT))
    if student.startswith(PACKAGED_PREFIX):
        student = resolve_packaged(student)
    if not Path(student).expanduser().exists() and _looks_like_path(student):
        raise missing(
            "no trained student in the run folder" if cfg.student is None else "student model folder not found",
            where=student,
            fix=f"run `reranker-skill train --run {run.path}` first, or pass --student FOLDER",
        )
    check_reranker(student, "student")
    models = [check_reranker(m, "model") for m in cfg.models]
    # The held-out table, its qrels and (unless --student names another) the student come from finished, unchanged stages.
    run.require([heldout_key, "qrels_heldout", *(["student"] if cfg.student is None else [])], needed_by="evaluate")
    render_cfg = _render_base(run)
    base = None if cfg.skip_base else cfg.base or render_cfg.base
    hashed = cfg.model_dump(mode="json", exclude={"fail_on"})
    hashed["student"], hashed["base"] = student, base
    stage = Stage(run, "evaluate", config=hashed, inputs=_stage_inputs(run, ho, student, base, models))
    if (done := stage.skip(force=force, result=lambda prev: _result(run, read_json(run.file(REPORT_JSON)), cfg, skipped=True))) is not None:
        return done

    notes: list[str] = []
    systems: list[System] = [System("first stage", "first_stage", "heldout candidates (rank order)", -ho.ranks.astype(np.float64))]
    if base:
        s = _base_system(base, render_cfg, ho, cfg, notes)
        if s:
            systems.append(s)
    elif cfg.skip_base:
        notes.append("base not scored (--skip-base): the untrained student's baseline is in train_result.json")
    else:
        notes.append("no base recorded by `render` and no --base: student − base skipped")
    model = _load(student, "student", cfg)
    scored = score_with_timing(model, ho, batch_size=cfg.batch_size, desc="student")
    del model
    systems.append(System("student", "student", student, scored.scores, scored_cost(scored, size_mb=folder_size_mb(student), batch_size=cfg.batch_size)))
    fused = _fused_system(student, scored, ho, notes, cfg)
    if fused:
        systems.append(fused)
    if ho.teacher is not None:
        systems.append(_teacher_system(run, ho, cfg, notes))
    else:
        notes.append(f"no teacher scores ({ho.path.name} has no teacher_score): fidelity and the teacher gate skipped — run `score`")
        if cfg.teacher:
            notes.append("--teacher: teacher cost needs `score` to have run (scores.meta.json)")
    taken = {s.name for s in systems}
    for spec in models:
        name = Path(spec).name or spec
        while name in taken:
            name += "'"
        taken.add(name)
        m = _load(spec, "model", cfg)
        sc = score_with_timing(m, ho, batch_size=cfg.batch_size, desc=name)
        del m
        systems.append(System(name, "model", spec, sc.scores, scored_cost(sc, size_mb=folder_size_mb(spec), batch_size=cfg.batch_size)))
    nanobeir = _nanobeir(systems, cfg, notes) if cfg.nanobeir else {"skipped": "not requested (--nanobeir)"}

    with stage.transaction() as tx:
        report = build_report(run, ho, systems, cfg, notes, nanobeir)
        write_json(tx.path("report_json"), report)
        from skill.report import write_markdown, write_png

        write_markdown(tx.path("report_md"), report)
        student_sys = next(s for s in systems if s.kind == "student")
        write_png(tx.path("report_png"), report, teacher=ho.teacher, student=student_sys.scores)
        tx.metrics.update(report["summary"])
    return _result(run, report, cfg, skipped=False)


def build_report(run: Run, ho: HeldOut, systems: list[System], cfg: EvaluateConfig, notes: list[str], nanobeir: dict) -> dict:
    k = ho.k
    names = M.metric_names(k)
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for s in systems:
        rankings = {q: M.rank([ho.doc_ids[i] for i in ix], s.scores[ix], ho.ranks[ix]) for q, ix in ho.groups.items()}
        per_query[s.name] = M.evaluate_rankings(rankings, ho.qrels, k)
    queries = sorted(per_query["first stage"])
    heldout_with_pos = [q for q, g in ho.qrels.items() if M.has_positive(g)]
    missed = sum(1 for q in heldout_with_pos for d, g in ho.qrels[q].items() if g > 0 and d not in {ho.doc_ids[i] for i in ho.groups.get(q, [])})
    total_pos = sum(1 for q in heldout_with_pos for g in ho.qrels[q].values() if g > 0)
    no_candidates = [q for q in heldout_with_pos if q not in ho.groups]
    if no_candidates:
        notes.append(f"{len(no_candidates)} held-out queries have positives but no candidates: they score 0 for every system")
    without_pos = [q for q in ho.groups if not M.has_positive(ho.qrels.get(q, {}))]
    if without_pos:
        notes.append(f"{len(without_pos)} held-out queries with candidates have no positive in the qrels: not scored")

    summary_systems: dict[str, Any] = {}
    for s in systems:
        summary_systems[s.name] = {
            "kind": s.kind,
            "source": s.source,
            "metrics": {
                m: {
                    "mean": float(np.mean(M.column(per_query[s.name], m, queries))),
                    "ci95": list(M.mean_ci(M.column(per_query[s.name], m, queries), resamples=cfg.resamples, seed=cfg.seed)),
                }
                for m in names
            },
        }

    def compare(a: str, b: str) -> dict:
        out = {"a": a, "b": b, "metrics": {}}
        for m in names:
            out["metrics"][m] = M.paired_test(
                M.column(per_query[a], m, queries), M.column(per_query[b], m, queries), resamples=cfg.resamples, seed=cfg.seed
            ).as_dict()
        return out

    comparisons = [compare("student", "first stage")]
    base = next((s for s in systems if s.kind == "base"), None)
    if base:
        comparisons.append(compare("student", base.name))
    teacher = next((s for s in systems if s.kind == "teacher"), None)
    if teacher:
        comparisons.append(compare("teacher", "first stage"))
        comparisons.append(compare("student", "teacher"))
    for s in systems:
        if s.kind == "model":
            comparisons.append(compare("student", s.name))
    fused = next((s for s in systems if s.kind == "fused"), None)
    if fused:
        comparisons.append(compare(fused.name, "first stage"))

    spreads = {s.name: M.spread(s.scores, ho.query_ids) for s in systems if s.kind != "first_stage"}
    fid = {s.name: M.fidelity(s.scores, teacher.scores, ho.query_ids) for s in systems if teacher and s.kind in ("student", "base", "model")}
    is_collapsed, collapse_detail = M.collapsed(
        spreads["student"]["median_std"], spreads["teacher"]["median_std"] if teacher else None, ratio=cfg.collapse_ratio, floor=cfg.collapse_floor
    )
    collapse = {
        "collapsed": is_collapsed,
        "detail": collapse_detail,
        "rule": f"collapsed when the student's median per-query score standard deviation is < {cfg.collapse_floor:g}, or < {cfg.collapse_ratio:g} × the teacher's",
    }

    head = comparisons[0]["metrics"]["ndcg@10"]
    label = M.verdict(head["delta"], head["p_value"], margin=cfg.margin, alpha=cfg.alpha)
    thresholds = (
        f"WIN = ΔNDCG@10 vs first stage ≥ +{cfg.margin:g} with p < {cfg.alpha:g}; "
        f"REGRESSION = Δ ≤ −{cfg.margin:g}, or Δ < 0 with p < {cfg.alpha:g}; otherwise MARGINAL"
    )
    fs, st = summary_systems["first stage"]["metrics"]["ndcg@10"]["mean"], summary_systems["student"]["metrics"]["ndcg@10"]["mean"]
    line = (
        f"VERDICT: {label} — student NDCG@10 {st:.4f} vs first stage {fs:.4f} (Δ {head['delta']:+.4f}, 95% CI [{head['ci_low']:+.4f}, {head['ci_high']:+.4f}], "
        f"p = {head['p_value']:.4g}, {head['queries']} queries). {thresholds}."
    )

    fused_verdict = None
    if fused:
        fc = next(c for c in comparisons if c["a"] == fused.name)["metrics"]["ndcg@10"]
        fused_label = M.verdict(fc["delta"], fc["p_value"], margin=cfg.margin, alpha=cfg.alpha)
        fused_mean = summary_systems[fused.name]["metrics"]["ndcg@10"]["mean"]
        fused_verdict = {
            "label": fused_label,
            "line": (
                f"FUSED: {fused_label} — student fused with the first stage NDCG@10 {fused_mean:.4f} vs first stage {fs:.4f} (Δ {fc['delta']:+.4f}, "
                f"95% CI [{fc['ci_low']:+.4f}, {fc['ci_high']:+.4f}], p = {fc['p_value']:.4g}). Score = {fused.source}; serving it needs the first stage's scores."
            ),
            "delta": fc["delta"],
            "p_value": fc["p_value"],
            "source": fused.source,
        }

    gate: dict[str, Any] = {"status": "n/a", "detail": "no teacher scores"}
    if teacher:
        tc = next(c for c in comparisons if c["a"] == "teacher")["metrics"]["ndcg@10"]
        tm = summary_systems["teacher"]["metrics"]["ndcg@10"]["mean"]
        passed = tc["delta"] >= cfg.margin
        gate = {
            "status": "pass" if passed else "fail",
            "delta": tc["delta"],
            "p_value": tc["p_value"],
            "rule": f"the teacher must beat the first stage by ≥ +{cfg.margin:g} NDCG@10 on the held-out queries",
            "detail": f"teacher NDCG@10 {tm:.4f} vs first stage {fs:.4f} (Δ {tc['delta']:+.4f}, p = {tc['p_value']:.4g})",
        }
        if not passed:
            gate["advice"] = [
                "use a stronger teacher (e.g. `score --teacher mixedbread-ai/mxbai-rerank-large-v2`) or an ensemble of teachers",
                "check the teacher reads the same text as the first stage (title + body) and is not truncated (`score --max-length`)",
                "check the score space: teachers should emit raw logits (Identity), not saturated probabilities",
                "check the qrels: unlabelled relevant documents (false negatives) make every reranker look worse than it is",
                "if the first stage is already strong, rerank deeper (`mine --eval-top-k`) or keep it — distillation cannot beat its teacher",
            ]

    cost = {s.name: s.cost for s in systems if s.cost}
    load = _cpu_load()
    if load is not None and load > (os.cpu_count() or 1):
        notes.append(
            f"the CPU was busy while timing (load {load:.1f} on {os.cpu_count()} cores): pairs/s and latencies are pessimistic and noisy — rerun with --force on an idle machine for cost numbers"
        )
    speedup = None
    if "teacher" in cost and cost["teacher"].get("pairs_per_s") and cost["student"].get("pairs_per_s"):
        speedup = float(f"{cost['student']['pairs_per_s'] / cost['teacher']['pairs_per_s']:.4g}")  # 4 significant digits, also below 1
    elif teacher and teacher.serving.get("unmeasured"):
        notes.append(f"teacher cost: {teacher.serving['unmeasured']}")
    serving = serving_profiles(systems, k)
    ndcg_per_query = {s.name: M.column(per_query[s.name], "ndcg@10", queries) for s in systems}
    pairs = M.all_pairs(ndcg_per_query, margin=cfg.margin, alpha=cfg.alpha, resamples=cfg.resamples, seed=cfg.seed)
    recommendation = recommend(serving, pairs, {n: v["metrics"]["ndcg@10"]["mean"] for n, v in summary_systems.items()}, cfg, k)

    summary = {
        "verdict": label,
        "delta_ndcg@10": head["delta"],
        "p_value": head["p_value"],
        "ndcg@10": {n: v["metrics"]["ndcg@10"]["mean"] for n, v in summary_systems.items()},
        "collapsed": is_collapsed,
        "teacher_gate": gate["status"],
        "student_pairs_per_s": cost["student"]["pairs_per_s"],
        "speedup_vs_teacher": speedup,
        "fused_verdict": fused_verdict["label"] if fused_verdict else None,
        "fused_delta_ndcg@10": fused_verdict["delta"] if fused_verdict else None,
        "fused_p_value": fused_verdict["p_value"] if fused_verdict else None,
        "recommended": recommendation["system"],
        "recommended_kind": recommendation["kind"],
        "recommendation": recommendation["line"],
    }
    return {
        "report_version": 1,
        "run": str(run.path),
        "summary": summary,
        "verdict": {
            "label": label,
            "line": line,
            "metric": "ndcg@10",
            "comparison": "student − first stage",
            "delta": head["delta"],
            "ci95": [head["ci_low"], head["ci_high"]],
            "p_value": head["p_value"],
            "thresholds": {"margin": cfg.margin, "alpha": cfg.alpha, "text": thresholds},
        },
        "fused_verdict": fused_verdict,
        "recommendation": recommendation,
        "collapse": collapse,
        "teacher_gate": gate,
        "data": {
            "heldout_file": ho.path.name,
            "queries_evaluated": len(queries),
            "queries_with_candidates": len(ho.groups),
            "pairs": len(ho.query_ids),
            "k": k,
            "positives": total_pos,
            "positives_missed_by_first_stage": missed,
            "max_recall_at_k": (total_pos - missed) / total_pos if total_pos else None,
        },
        "metric_names": names,
        "systems": summary_systems,
        "comparisons": comparisons,
        "pairwise": pairs,
        "serving": serving,
        "fidelity": fid,
        "spread": spreads,
        "cost": cost,
        "speedup_vs_teacher": speedup,
        "nanobeir": nanobeir,
        "notes": notes,
        "settings": {
            "test": "paired randomisation (sign-flip) test, two-sided; 95% percentile bootstrap CIs over queries",
            "multiple_comparisons": (
                "the verdict and FUSED lines are single planned comparisons (p as tested); the recommendation weighs every pair of systems, "
                "so its p-values are Holm-adjusted over all pairs (family-wise error ≤ alpha)"
            ),
            "resamples": cfg.resamples,
            "seed": cfg.seed,
            "ties": "broken by first-stage rank",
            "relevance": "graded from qrels (gain = grade); relevant when grade > 0; ideal and recall over ALL held-out positives",
            "metrics_engine": "pytrec_eval" if M._pytrec_available() else "exact",
        },
        "per_query": per_query,
    }


# ---------------------------------------------------------------------------------------------
# What to serve


def _needs(s: System, k: int) -> str:
    """What serving the system takes, in words, at the candidate depth `k`."""
    if s.kind == "first_stage":
        return f"nothing more: the first stage's own top-{k} order (no reranking)"
    if s.kind == "fused":
        return f"the student scoring {k} (query, candidate) pairs per query, plus every candidate's first-stage score, blended per query (α = {s.serving['alpha']:g}, student/fusion.json)"
    if s.kind != "teacher":
        return f"the reranker scoring {k} (query, candidate) pairs per query"
    member_needs = {
        "file": "an external scorer (API / LLM judge) called for every query: its latency and price are the provider's, not measurable here",
        "bi-encoder": f"the embedding model, with document embeddings computed once at index time; per query one query embedding and {k} dot products",
        "mxbai-v2": f"the mxbai-rerank LLM scoring {k} pairs per query (a GPU in practice)",
        "cross-encoder": f"the teacher cross-encoder scoring {k} pairs per query",
        "first-stage": "every candidate's first-stage score, blended per query",
    }
    members = s.serving.get("members") or [{"type": "cross-encoder"}]
    texts = [member_needs.get(m["type"], member_needs["cross-encoder"]) for m in members]
    return texts[0] if len(texts) == 1 else "every member of the teacher ensemble: " + "; ".join(texts)


def serving_profiles(systems: list[System], k: int) -> dict[str, dict]:
    """Per system: what serving it needs and what it costs at depth `k`, with its place in the cost order (1 = cheapest)."""
    out: dict[str, dict] = {}
    for s in systems:
        c = s.cost or {}
        if s.kind == "first_stage":
            basis, structure = "baseline", "first stage"
        else:
            structure = s.serving.get("structure") or "cross-encoder"
            basis = "external" if structure == "external" else "measured" if c.get("latency_ms_p50") is not None else "unmeasured"
        out[s.name] = {
            "kind": s.kind,
            "basis": basis,
            "structure": structure,
            "latency_ms_p50": 0.0 if basis == "baseline" else c.get("latency_ms_p50"),
            "latency_ms_p95": 0.0 if basis == "baseline" else c.get("latency_ms_p95"),
            "size_mb": c.get("size_mb"),
            "parameters": c.get("parameters"),
            "device": c.get("device"),
            "queries_timed": c.get("queries"),
            "needs": _needs(s, k),
            "unmeasured": s.serving.get("unmeasured") if basis != "measured" and basis != "baseline" else None,
        }

    def key(item: tuple[int, str]) -> tuple:
        i, name = item
        e = out[name]
        measured = e["basis"] == "measured"
        return (COST_TIERS[e["basis"]], e["latency_ms_p50"] if measured else 0.0, e["latency_ms_p95"] if measured else 0.0, STRUCTURE.get(e["structure"], 2), i)

    for rank, (_, name) in enumerate(sorted(enumerate(out), key=key), start=1):
        out[name]["cost_rank"] = rank
    return dict(sorted(out.items(), key=lambda kv: kv[1]["cost_rank"]))


COST_RULE = (
    "cheapest first: the first stage (no reranking, 0 ms); then every system timed here, by p50 then p95 ms per query at the candidate depth "
    "(one query's candidates per request, this machine; the fused system = the student's time + the blend); then systems not timed, after every timed one, "
    "by structure (bi-encoder < cross-encoder < mxbai LLM); external scorers (a scores-file teacher) last"
)


def _cost_text(e: dict, k: int) -> str:
    if e["basis"] == "baseline":
        return "no reranking cost"
    if e["basis"] == "measured":
        return f"{e['latency_ms_p50']:.1f} ms/query p50, {e['latency_ms_p95']:.1f} p95 at top-{k} on {e['device']}"
    return f"cost not measured — {e['unmeasured']}"


def recommend(serving: dict[str, dict], pairs: list[dict], ndcg: dict[str, float], cfg: EvaluateConfig, k: int) -> dict:
    """The cheapest system that no other measured system beats significantly (skill.metrics.cheapest_unbeaten), and why."""
    order = list(serving)
    chosen, beaten_by = M.cheapest_unbeaten(order, pairs)
    e = serving[chosen]
    pair_of = {frozenset((p["a"], p["b"])): p for p in pairs}

    def fmt(p: dict) -> str:
        return f"Δ {p['delta']:+.4f}, p (Holm) {p['p_holm']:.3g}"

    reasons = []
    for name in order:
        if name == chosen:
            continue
        p = pair_of[frozenset((name, chosen))]
        if order.index(name) < order.index(chosen):
            by = max(beaten_by[name], key=lambda x: x["delta"])
            reasons.append(f"{name} is cheaper but beaten by {by['a']} ({fmt(by)})")
        elif p["delta"] == 0:
            reasons.append(f"{name} costs more and scores the same ({fmt(p)})")
        elif p["a"] == name:
            reasons.append(f"{name} costs more and does not beat it ({name} − {chosen}: {fmt(p)})")
        else:
            reasons.append(f"{name} costs more and scores lower ({chosen} − {name}: {fmt(p)}{'; it beats it' if p['beats'] else ''})")
    if chosen == order[0]:
        rivals = [pair_of[frozenset((n, chosen))] for n in order[1:]]
        best = max((p for p in rivals if p["a"] != chosen), key=lambda p: p["delta"], default=None)
        closest = f" (closest: {best['a']}, {fmt(best)})" if best else ""
        why = f"no measured system beats it significantly{closest}: reranking would cost more without a significant gain"
    else:
        why = "the cheapest system that no other measured system beats significantly; " + "; ".join(r for r in reasons if "is cheaper" in r)
    line = f"SERVE: {chosen} — NDCG@10 {ndcg[chosen]:.4f}; {_cost_text(e, k)}; {why}."
    return {
        "system": chosen,
        "kind": e["kind"],
        "line": line,
        "needs": e["needs"],
        "reasons": reasons,
        "rule": (
            f"serve the cheapest system that no other measured system beats significantly; A beats B when NDCG@10 A − B ≥ +{cfg.margin:g} and the paired "
            f"randomisation test's p-value, Holm-adjusted over all {len(pairs)} pairs of systems, is < {cfg.alpha:g}"
        ),
        "cost_order": order,
        "cost_rule": COST_RULE,
        "significance": {"metric": "ndcg@10", "margin": cfg.margin, "alpha": cfg.alpha, "correction": "holm", "pairs": len(pairs)},
        "beaten_by": {n: [{"by": p["a"], "delta": p["delta"], "p_value": p["p_value"], "p_holm": p["p_holm"]} for p in beaten_by[n]] for n in order},
    }


def _cpu_load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _result(run: Run, report: dict, cfg: EvaluateConfig, *, skipped: bool) -> Result:
    from skill.report import summary_text

    warnings = list(report.get("notes", []))
    errors: list[dict] = []
    code, status = ExitCode.OK, "ok"
    if report["collapse"]["collapsed"]:
        errors.append(
            SkillError(
                f"the student collapsed: {report['collapse']['detail']} — its scores barely vary within a query ({report['collapse']['rule']})",
                code=ExitCode.RUNTIME_FAILURE,
                where=str(run.file(STUDENT)),
                fix="check the student is trained on raw teacher scores with Identity activation; lower the learning rate or raise the head's (--head-lr-multiplier); try mean pooling from a bi-encoder base; train longer",
            ).as_dict()
        )
        code, status = ExitCode.RUNTIME_FAILURE, "error"
    label = report["verdict"]["label"]
    if cfg.fail_on and (label == "REGRESSION" or (cfg.fail_on == "marginal" and label == "MARGINAL")):
        errors.append(
            SkillError(
                f"gate failed: verdict {label} (--fail-on {cfg.fail_on})",
                code=ExitCode.PARTIAL,
                where=str(run.file(REPORT_MD)),
                fix="see the report; the verdict line states the thresholds",
            ).as_dict()
        )
        if code == ExitCode.OK:
            code, status = ExitCode.PARTIAL, "error"
    text = run.file(REPORT_MD).read_text(encoding="utf-8") if run.file(REPORT_MD).exists() else summary_text(report)
    metrics = {**report["summary"], "skipped": skipped}
    if skipped:
        warnings.insert(0, "evaluate is up to date: report reused (pass --force to recompute)")
    return Result(
        artifacts={"report_json": str(run.file(REPORT_JSON)), "report_md": str(run.file(REPORT_MD)), "report_png": str(run.file(REPORT_PNG))},
        metrics=metrics,
        warnings=warnings,
        errors=errors,
        status=status,  # type: ignore[arg-type]
        exit_code=code,
        text=text,
    )
