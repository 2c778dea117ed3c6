"""Teacher adapters: everything that can put a number on a (query, document) pair.

Every model adapter exposes `lengths(pairs)` (token counts, for bucketing) and
`score_batch(pairs)` (raw float32 scores, no activation). `score.py` owns batching, chunking,
resuming and sharding; an adapter only turns one batch into numbers.

Score spaces: a cross-encoder and mxbai-rerank v2 give raw logits (`raw_logit`); a bi-encoder
gives cosines (`cosine`); a precomputed file gives whatever it holds (declared, or inferred:
all labels in [0, 1] → `probability`); the first stage (`first-stage`, an ensemble member only)
gives its own retrieval scores; an ensemble gives per-query z-scores (`normalised`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skill.config import FIRST_STAGE_TEACHER, TeacherSpec
from skill.errors import ExitCode, SkillError, invalid, missing
from skill.io import hash_file, hash_obj
from skill.loading import PACKAGED_PREFIX, hub_offline, load_failure, model_identity, resolve_model, resolve_packaged, revision

SCORE_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".gz")
__all__ = [
    "BiEncoderTeacher",
    "CrossEncoderTeacher",
    "FileTeacher",
    "FirstStageTeacher",
    "ModelTeacher",
    "MxbaiTeacher",
    "OnnxCrossEncoderTeacher",
    "detect_type",
    "load_teacher",
    "model_identity",
]


def detect_type(name: str) -> str:
    """Guess the adapter from what is on disk (or the hub id); `auto` never guesses a hub id's architecture offline."""
    if name.startswith(PACKAGED_PREFIX):
        name = resolve_packaged(name)
    path = Path(name).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        from skill.modeling import model_folder_kind

        kind = model_folder_kind(path)
        adapter = {"reranker": "cross-encoder", "mxbai-v2": "mxbai-v2", "causal-lm": "mxbai-v2", "bi-encoder": "bi-encoder"}.get(kind)
        if adapter is not None:
            return adapter
        raise invalid(
            "cannot tell what kind of teacher this folder holds",
            where=str(path),
            fix="pass --teacher-type cross-encoder, bi-encoder or mxbai-v2",
        )
    if name.lower().endswith(SCORE_FILE_SUFFIXES):
        raise missing("teacher scores file not found", where=name, fix="check the path")
    resolve_model(name, role="teacher", flag="--teacher")  # a path that does not exist: exit 4 here
    lowered = name.lower()
    if "mxbai-rerank" in lowered and "v2" in lowered:
        return "mxbai-v2"
    if hub_offline():
        raise load_failure(name, None, role="teacher", flag="--teacher")
    return "cross-encoder"


# ---------------------------------------------------------------------------------------------
# Model adapters
#
# `max_length` means the same for every model teacher: at most that many tokens of query and
# document text per pair. What the model adds on top — a cross-encoder's special tokens
# ([CLS] … [SEP] … [SEP]), mxbai-rerank v2's prompt template, a bi-encoder's special tokens
# around each text — is `overhead_tokens`, counted by `lengths()` and by the token budget,
# never taken out of the text's share. Where the model's own limit is lower, the text's share
# shrinks to fit and `max_length` records what was really used.


@dataclass
class ModelTeacher:
    EMBEDS_TEXTS_ONCE = False  # True where the cost is per distinct text, not per pair (a bi-encoder)

    name: str
    type: str
    weight: float
    score_space: str
    max_length: int
    device: str
    model: object = None
    revision: str | None = None
    dtype: str = "fp32"
    extra: dict = field(default_factory=dict)
    backend: str = "torch"
    overhead_tokens: int = 0  # special/template tokens on top of max_length text tokens

    @property
    def fingerprint(self) -> str:
        key = {"model": model_identity(self.name), "type": self.type, "max_length": self.max_length, "dtype": self.dtype}
        if self.backend != "torch":  # another backend's numbers differ in the last bits: its chunks are its own
            key["backend"] = self.backend
        return hash_obj(key)

    def describe(self) -> dict:
        return {
            "id": self.name,
            "type": self.type,
            "revision": self.revision,
            "weight": self.weight,
            "score_space": self.score_space,
            "dtype": self.dtype,
            "backend": self.backend,
            "max_length": self.max_length,
            "overhead_tokens": self.overhead_tokens,
        }

    def lengths(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Tokens each pair occupies in the model's input, overhead included (for bucketing and the token budget)."""
        raise NotImplementedError

    def score_batch(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        raise NotImplementedError

    def before_scoring(self, first_batch: list[tuple[str, str]]) -> dict:
        """Called once before the first batch a run scores; returns facts for the metrics."""
        return {}


def _resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str, *, fp16_fallback: bool = True) -> str:
    """Half precision only on a GPU (bf16 autocast on CPU is ~180x slower); `auto` is bf16 where supported."""
    import torch

    if not device.startswith("cuda"):
        if dtype in ("fp16", "bf16"):
            raise SkillError(
                f"--dtype {dtype} needs a CUDA GPU; on {device} scoring runs in fp32", code=ExitCode.USAGE, fix="drop --dtype (auto picks fp32 on CPU)"
            )
        return "fp32"
    if dtype == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16" if fp16_fallback else "fp32"
    return dtype


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _pair_lengths(tokenizer, pairs: list[tuple[str, str]], max_length: int, *, chunk: int = 8192) -> np.ndarray:
    """Token counts of the (query, document) inputs as the tokenizer builds them (special tokens included), cut at `max_length`."""
    out = np.empty(len(pairs), dtype=np.int32)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        enc = tokenizer([q for q, _ in part], [d for _, d in part], truncation=True, max_length=max_length)
        out[start : start + len(part)] = [len(ids) for ids in enc["input_ids"]]
    return np.minimum(out, max_length)


def _special_tokens(tokenizer, *, pair: bool) -> int:
    try:
        return int(tokenizer.num_special_tokens_to_add(pair=pair))
    except Exception:
        return 0


def _refuse_untrained_head(model, spec: TeacherSpec) -> None:
    """A cross-encoder whose score head is not in its checkpoint would label with random numbers: exit 5."""
    from skill.loading import untrained_head
    from skill.modeling import model_folder_kind

    found = untrained_head(model)
    if found is None:
        return
    names, weights = found
    source = resolve_model(spec.model, role="teacher", flag="--teacher")
    kind = model_folder_kind(Path(source)) if Path(source).is_dir() else None
    if kind == "bi-encoder":
        fix = "it is a sentence-transformers embedding model: pass --teacher-type bi-encoder (cosine scores), or a trained cross-encoder"
    elif kind == "causal-lm":
        fix = "it is a causal LM: for mxbai-rerank v2 pass --teacher-type mxbai-v2"
    else:
        fix = "pass a trained reranker (a CrossEncoder folder or a *ForSequenceClassification checkpoint with its head); an encoder without a head can teach as --teacher-type bi-encoder, or be a student base (render --base)"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise invalid(
        f"teacher {spec.model!r} has no trained score head: {shown} are not in its weights, so they would be randomly initialised and the labels random",
        where=weights,
        fix=fix,
    )


class CrossEncoderTeacher(ModelTeacher):
    """Any sentence-transformers CrossEncoder with a trained head, forced to raw scores (activation Identity)."""

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> CrossEncoderTeacher:
        from skill.loading import load_cross_encoder

        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        model = load_cross_encoder(spec.model, role="teacher", flag="--teacher", device=device)
        if model.num_labels != 1:
            raise invalid(
                f"teacher {spec.model!r} has {model.num_labels} outputs; a teacher must give one score per pair",
                where=spec.model,
                fix="use a single-output reranker (num_labels=1)",
            )
        _refuse_untrained_head(model, spec)
        special = _special_tokens(model.tokenizer, pair=True)
        # The model's own limit wins when lower (ModernBERT-style configs allow 8192 but were trained shorter).
        seq = min(max_length + special, model.max_seq_length or max_length + special)
        model.max_seq_length = seq
        model.eval()
        if dtype != "fp32":
            model.to(_torch_dtype(dtype))
        teacher = cls(
            name=spec.model,
            type="cross-encoder",
            weight=spec.weight,
            score_space="raw_logit",
            max_length=seq - special,
            device=device,
            model=model,
            dtype=dtype,
        )
        teacher.overhead_tokens = special
        teacher.revision = revision(spec.model, model)
        return teacher

    def lengths(self, pairs):
        return _pair_lengths(self.model.tokenizer, pairs, self.max_length + self.overhead_tokens)

    def score_batch(self, pairs):
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            features = batch_to_device(self.model.preprocess(list(pairs)), self.model.device)
            scores = self.model(features)["scores"]
            return scores.float().reshape(len(pairs), -1)[:, 0].cpu().numpy()


ONNX_PARITY_TOLERANCE = 1e-3  # max |onnx - torch| on the first batch, raw-score units


def onnx_fallback_reason(teacher) -> str | None:
    """Why `--backend onnx` does not apply to this teacher (None: it does)."""
    if not isinstance(teacher, CrossEncoderTeacher) or teacher.type != "cross-encoder":
        return f"a {teacher.type} teacher has no ONNX path (cross-encoders only)"
    if not str(teacher.device).startswith("cpu"):
        return f"the ONNX path is for CPU; on {teacher.device} torch with {teacher.dtype} is the fast path"
    from skill.onnx import onnx_unsupported

    return onnx_unsupported(teacher.model)


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parity_drift(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| where both are finite; inf where only one is (a NaN teacher is caught later, as NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if (fa != fb).any():
        return math.inf
    return float(np.abs(a[fa] - b[fb]).max()) if fa.any() else 0.0


class OnnxCrossEncoderTeacher(CrossEncoderTeacher):
    """A CPU cross-encoder whose transformer runs as an ONNX graph in onnxruntime; pooling and head stay in torch.

    The graph is traced once (skill.onnx.cached_graph) into `cache_dir/onnx-<key>/`, keyed by the
    transformer's weights, config and the exporter's versions, and reused by later runs. Before
    the first batch is committed it is scored by torch too; past ONNX_PARITY_TOLERANCE the run stops.
    """

    cache_dir: Path
    threads: int

    @classmethod
    def wrap(cls, teacher: CrossEncoderTeacher, cache_dir: Path, *, threads: int | None = None) -> OnnxCrossEncoderTeacher:
        from dataclasses import fields

        out = cls(**{f.name: getattr(teacher, f.name) for f in fields(teacher)})
        out.backend = "onnx"
        out.extra = dict(teacher.extra)
        out.cache_dir = Path(cache_dir)
        out.threads = threads or cpu_cores()
        return out

    def before_scoring(self, first_batch):
        import shutil

        from skill.onnx import ONNX_FILE, cached_graph, ort_session, use_graph

        if "onnx" in self.extra:  # already switched over (the graph's parity was checked then)
            return self.extra["onnx"]
        folder, hit, seconds = cached_graph(self.model, self.cache_dir, note={"teacher": self.name, "revision": self.revision})
        session = ort_session(folder / ONNX_FILE, threads=self.threads, optimise=True)
        torch_model = use_graph(self.model, session)
        onnx_scores = self.score_batch(first_batch)
        self.model[0].model = torch_model
        torch_scores = self.score_batch(first_batch)
        drift = parity_drift(onnx_scores, torch_scores)
        if not drift <= ONNX_PARITY_TOLERANCE:
            shutil.rmtree(folder, ignore_errors=True)
            raise SkillError(
                f"the ONNX graph of teacher {self.name!r} does not reproduce torch: max |score drift| {drift:.3g} > {ONNX_PARITY_TOLERANCE:g} on the first {len(first_batch)} pairs",
                code=ExitCode.RUNTIME_FAILURE,
                where=str(folder),
                fix="rerun with --backend torch (the default); the cached graph was removed, so a rerun with --backend onnx exports it afresh; nothing was written",
            )
        use_graph(self.model, session)
        del torch_model  # the graph holds its own copy of the weights
        self.extra["onnx"] = {
            "onnx_cache": "hit" if hit else "miss",
            "onnx_graph": str(folder / ONNX_FILE),
            "onnx_export_seconds": round(seconds, 2),
            "onnx_threads": self.threads,
            "onnx_parity_max_drift": drift,
        }
        return self.extra["onnx"]


class MxbaiTeacher(ModelTeacher):
    """mxbai-rerank v2 scored natively (skill.mxbai): logit("1") − logit("0") of the reference's prompt, unnormalised."""

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> MxbaiTeacher:
        from skill.mxbai import load_scorer

        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device, fp16_fallback=False)  # fp16 overflows in Qwen2's activations: fp32 where bf16 is missing
        source = resolve_model(spec.model, role="teacher", flag="--teacher")
        try:
            scorer = load_scorer(source, max_length=max_length, device=device, dtype=dtype)
        except SkillError:
            raise
        except Exception as exc:
            raise load_failure(
                spec.model,
                exc,
                role="teacher",
                flag="--teacher",
                fix="pass a mxbai-rerank v2 folder in the hub layout (a Qwen2ForCausalLM: config.json, weights, tokenizer), or another --teacher-type",
            ) from None
        teacher = cls(
            name=spec.model,
            type="mxbai-v2",
            weight=spec.weight,
            score_space="raw_logit",
            max_length=scorer.max_length,
            device=device,
            model=scorer,
            dtype=dtype,
        )
        teacher.overhead_tokens = scorer.prompt.template_length
        teacher.revision = revision(spec.model, scorer.model)
        return teacher

    def lengths(self, pairs):
        return self.model.lengths(list(pairs))

    def score_batch(self, pairs):
        return self.model.score(list(pairs))


class BiEncoderTeacher(ModelTeacher):
    """A sentence-transformers bi-encoder: cosine(query, document). For air-gapped or weak setups."""

    EMBEDS_TEXTS_ONCE = True

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> BiEncoderTeacher:
        from skill.loading import load_sentence_transformer

        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        model = load_sentence_transformer(spec.model, role="teacher", flag="--teacher", device=device)
        special = _special_tokens(model.tokenizer, pair=False)
        seq = min(max_length + special, model.max_seq_length or max_length + special)
        model.max_seq_length = seq
        model.eval()
        if dtype != "fp32":
            model.to(_torch_dtype(dtype))
        teacher = cls(
            name=spec.model, type="bi-encoder", weight=spec.weight, score_space="cosine", max_length=seq - special, device=device, model=model, dtype=dtype
        )
        teacher.overhead_tokens = special
        teacher.revision = revision(spec.model, model)
        return teacher

    def lengths(self, pairs):
        """The document's tokens (queries are short and embedded once each), special tokens included."""
        tok = self.model.tokenizer
        enc = tok([d for _, d in pairs], truncation=True, max_length=self.max_length + self.overhead_tokens)
        return np.asarray([len(ids) for ids in enc["input_ids"]], dtype=np.int32)

    # Texts embedded so far: each query and document is encoded once however many pairs it is in
    # (batches are length-sorted, so a document's pairs are spread over many batches).
    CACHE_LIMIT = 500_000

    def _embed(self, texts: list[str], *, query: bool) -> np.ndarray:
        cache = self.__dict__.setdefault("_query_cache" if query else "_doc_cache", {})
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            if len(cache) + len(todo) > self.CACHE_LIMIT:
                cache.clear()
            encode = self.model.encode_query if query else self.model.encode_document
            for text, emb in zip(todo, encode(todo, batch_size=min(len(todo), 64), normalize_embeddings=True, convert_to_numpy=True), strict=True):
                cache[text] = emb
        return np.stack([cache[t] for t in texts])

    def score_batch(self, pairs):
        qe = self._embed([q for q, _ in pairs], query=True)
        de = self._embed([d for _, d in pairs], query=False)
        return np.einsum("ij,ij->i", qe, de).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Precomputed scores


@dataclass
class FileTeacher:
    """Scores from a file (an API reranker, an LLM judge): validated on load with `skill.data.load_pairs`."""

    name: str
    weight: float
    score_space: str
    by_ids: dict[tuple[str, str], float]
    by_text: dict[tuple[str, str], float]
    rows: int
    inferred_space: bool
    type: str = "file"
    revision: str | None = None

    @property
    def fingerprint(self) -> str:
        return hash_obj({"file": model_identity(self.name), "space": self.score_space})

    def describe(self) -> dict:
        return {"id": self.name, "type": "file", "revision": self.revision, "weight": self.weight, "score_space": self.score_space, "rows": self.rows}

    @classmethod
    def load(cls, spec: TeacherSpec) -> FileTeacher:
        from skill.data import load_pairs

        path = Path(spec.model).expanduser()
        if not path.exists():
            raise missing("scores file not found", where=spec.model, fix="check the path")
        pairs = load_pairs(path, require_label=True).require()
        if not pairs.label:
            raise invalid("the scores file has no rows", where=str(path), fix="give one row per (query, document) pair with a numeric label")
        by_ids: dict[tuple[str, str], float] = {}
        by_text: dict[tuple[str, str], float] = {}
        for i, (q, d, y) in enumerate(zip(pairs.query, pairs.document, pairs.label, strict=True)):
            by_text[q, d] = y
            if pairs.query_id is not None and pairs.doc_id is not None and pairs.query_id[i] and pairs.doc_id[i]:
                key = (pairs.query_id[i], pairs.doc_id[i])
                if key in by_ids and by_ids[key] != y:  # which label is right is not ours to guess
                    raise invalid(
                        f"pair (query {key[0]!r}, document {key[1]!r}) is scored twice with different labels ({by_ids[key]:g} and {y:g}; data row {i + 1})",
                        where=str(path),
                        fix="keep one score per (query_id, doc_id) pair",
                    )
                by_ids[key] = y
        labels = np.asarray(pairs.label, dtype=np.float64)
        space = spec.score_space
        inferred = space is None
        if space is None:
            space = "probability" if labels.min() >= 0 and labels.max() <= 1 else "raw_logit"
        return cls(spec.model, spec.weight, space, by_ids, by_text, len(labels), inferred, revision=f"sha256:{hash_file(path)[:16]}")

    def lookup(self, qids: list[str], dids: list[str], queries: list[str], docs: list[str]) -> np.ndarray:
        """Scores for the given rows: by (query_id, doc_id) when the file has ids, else by text; NaN when absent."""
        out = np.full(len(qids), math.nan, dtype=np.float32)
        for i, (qid, did, q, d) in enumerate(zip(qids, dids, queries, docs, strict=True)):
            y = self.by_ids.get((qid, did))
            if y is None:
                y = self.by_text.get((q, d))
            if y is not None:
                out[i] = y
        return out


@dataclass
class FirstStageTeacher:
    """The first stage's own scores (`first_stage_score` of the mined tables) as an ensemble member.

    Combined with a model teacher by per-query z-scores, it brings what the first stage knows (exact
    terms, for BM25) into the labels: a student distilled from the ensemble learns the fused system
    and needs no first-stage scores at serving time. A training pair the first stage did not retrieve
    (a gold positive added by `mine`, rank 0) has no score; it gets its query's lowest retrieved
    score — the first stage ranked it below every candidate it kept.
    """

    weight: float | str
    name: str = FIRST_STAGE_TEACHER
    type: str = "first-stage"
    score_space: str = "first-stage"

    def describe(self) -> dict:
        return {"id": self.name, "type": self.type, "weight": self.weight, "score_space": self.score_space}

    def table_scores(self, table, *, where: str) -> np.ndarray:
        """The table's first-stage scores, a not-retrieved row (NaN) at its query's lowest retrieved score."""
        if "first_stage_score" not in table.column_names:
            raise invalid(
                "the mined table has no first_stage_score column, so the first stage cannot be a teacher",
                where=where,
                fix=f"rerun `mine` with this version, or drop --teacher {FIRST_STAGE_TEACHER}",
            )
        scores = np.asarray(table.column("first_stage_score").to_numpy(zero_copy_only=False), dtype=np.float64)
        groups = np.asarray(table.column("query_id").to_pylist(), dtype=object)
        missing = np.isnan(scores)
        if missing.any():
            for q in set(groups[missing]):
                rows = groups == q
                retrieved = scores[rows & ~missing]
                if not len(retrieved):
                    raise invalid(
                        f"query {q!r} has no candidate with a first-stage score",
                        where=where,
                        fix=f"rerun `mine`, or drop --teacher {FIRST_STAGE_TEACHER}",
                    )
                scores[rows & missing] = retrieved.min()
        return scores


Teacher = ModelTeacher | FileTeacher | FirstStageTeacher
LOOKUP_TEACHERS = (FileTeacher, FirstStageTeacher)  # scores read from a table or file: nothing to score, no worker


def needs_model(spec: TeacherSpec) -> bool:
    """Whether the teacher is a model that scores pairs (a worker's job), not scores read from a file or the mined tables."""
    if spec.is_first_stage or spec.type == "file":
        return False
    return not (spec.type == "auto" and Path(spec.model).expanduser().is_file() and detect_type(spec.model) == "file")


def load_teacher(spec: TeacherSpec, *, max_length: int, device: str | None = None, dtype: str = "auto") -> Teacher:
    if spec.is_first_stage:
        return FirstStageTeacher(weight=spec.weight)
    kind = spec.type if spec.type != "auto" else detect_type(spec.model)
    if kind == "file":
        return FileTeacher.load(spec)
    if spec.score_space is not None:
        raise SkillError(
            "--score-space applies only to a scores file (--teacher-type file)",
            code=ExitCode.USAGE,
            fix="drop --score-space for model teachers: their space is known",
        )
    if kind == "bi-encoder":
        return BiEncoderTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)
    if kind == "mxbai-v2":
        return MxbaiTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)
    return CrossEncoderTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)
