"""Teacher adapters: everything that can put a number on a (query, document) pair.

Every model adapter exposes `lengths(pairs)` (token counts, for bucketing) and
`score_batch(pairs)` (raw float32 scores, no activation). `score.py` owns batching, chunking,
resuming and sharding; an adapter only turns one batch into numbers.

Score spaces: a cross-encoder and mxbai-rerank v2 give raw logits (`raw_logit`); a bi-encoder
gives cosines (`cosine`); a precomputed file gives whatever it holds (declared, or inferred:
all labels in [0, 1] → `probability`); an ensemble gives per-query z-scores (`normalised`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skill.config import TeacherSpec
from skill.errors import ExitCode, SkillError, invalid, missing, prerequisite
from skill.io import hash_file, hash_obj

SCORE_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".gz")
MXBAI_TRUE, MXBAI_FALSE = "1", "0"


def _hub_unreachable() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def _load_failure(name: str, exc: Exception | None, *, what: str = "teacher") -> SkillError:
    local = Path(name).expanduser().exists()
    if not local and _hub_unreachable():
        why = "not a local file or folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
    elif not local:
        why = f"not a local file or folder, and not loadable from the hub ({type(exc).__name__ if exc else 'not found'})"
    else:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if exc and str(exc) else "unreadable"
    return missing(
        f"cannot load {what} {name!r}: {why}",
        where=name,
        fix="pass a local model folder (download it where the hub is reachable, then copy it over), or a scores file with --teacher-type file",
    )


def model_identity(name: str) -> str:
    """A cheap fingerprint: a folder's file names, sizes and mtimes; a file's content hash; else the hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hash_obj([(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    if path.is_file():
        return hash_file(path)
    return name


def _revision(name: str, model=None) -> str | None:
    """The hub commit for a hub model; `local:<fingerprint>` for a folder."""
    path = Path(name).expanduser()
    if path.exists():
        return f"local:{model_identity(name)[:16]}"
    try:
        config = model[0].model.config if model is not None else None
        commit = getattr(config, "_commit_hash", None)
        return commit
    except Exception:
        return None


def detect_type(name: str) -> str:
    """Guess the adapter from what is on disk (or the hub id); `auto` never guesses a hub id's architecture offline."""
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
    if name.lower().endswith(SCORE_FILE_SUFFIXES) or name.startswith((".", "/", "~")):
        raise missing("teacher file or folder not found", where=name, fix="check the path")
    lowered = name.lower()
    if "mxbai-rerank" in lowered and "v2" in lowered:
        return "mxbai-v2"
    if _hub_unreachable():
        raise _load_failure(name, None)
    return "cross-encoder"


# ---------------------------------------------------------------------------------------------
# Model adapters


@dataclass
class ModelTeacher:
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

    @property
    def fingerprint(self) -> str:
        key = {"model": model_identity(self.name), "type": self.type, "max_length": self.max_length, "dtype": self.dtype}
        if self.backend != "torch":  # another backend's numbers differ in the last bits: its chunks are its own
            key["backend"] = self.backend
        return hash_obj(key)

    def describe(self) -> dict:
        return {"id": self.name, "type": self.type, "revision": self.revision, "weight": self.weight, "score_space": self.score_space, "dtype": self.dtype, "backend": self.backend}

    def lengths(self, pairs: list[tuple[str, str]]) -> np.ndarray:
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


def _resolve_dtype(dtype: str, device: str) -> str:
    """Half precision only on a GPU (bf16 autocast on CPU is ~180x slower)."""
    import torch

    if not device.startswith("cuda"):
        if dtype in ("fp16", "bf16"):
            raise SkillError(f"--dtype {dtype} needs a CUDA GPU; on {device} scoring runs in fp32", code=ExitCode.USAGE, fix="drop --dtype (auto picks fp32 on CPU)")
        return "fp32"
    if dtype == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return dtype


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _pair_lengths(tokenizer, pairs: list[tuple[str, str]], max_length: int, *, extra: int = 0, chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.int32)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        enc = tokenizer([q for q, _ in part], [d for _, d in part], truncation=True, max_length=max_length)
        out[start : start + len(part)] = [len(ids) + extra for ids in enc["input_ids"]]
    return np.minimum(out, max_length + extra)


class CrossEncoderTeacher(ModelTeacher):
    """Any sentence-transformers CrossEncoder, forced to raw scores (activation Identity)."""

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str, kind: str = "cross-encoder") -> CrossEncoderTeacher:
        from skill.modeling import load_reranker

        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        path = Path(spec.model).expanduser()
        try:
            model = load_reranker(str(path) if path.exists() else spec.model, device=device)
        except SkillError:
            raise
        except Exception as exc:
            raise _load_failure(spec.model, exc) from None
        if model.num_labels != 1:
            raise invalid(f"teacher {spec.model!r} has {model.num_labels} outputs; a teacher must give one score per pair", where=spec.model, fix="use a single-output reranker (num_labels=1)")
        # The model's own limit wins when lower (ModernBERT-style configs allow 8192 but were trained shorter).
        max_length = min(max_length, model.max_seq_length or max_length)
        model.max_seq_length = max_length
        model.eval()
        if dtype != "fp32":
            model.to(_torch_dtype(dtype))
        teacher = cls(name=spec.model, type=kind, weight=spec.weight, score_space="raw_logit", max_length=max_length, device=device, model=model, dtype=dtype)
        teacher.revision = _revision(spec.model, model)
        return teacher

    def lengths(self, pairs):
        return _pair_lengths(self.model.tokenizer, pairs, self.max_length)

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
    from skill.export import onnx_unsupported

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


def _weights_digest(module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: the model's content, wherever it was loaded from."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


class OnnxCrossEncoderTeacher(CrossEncoderTeacher):
    """A CPU cross-encoder whose transformer runs as an ONNX graph in onnxruntime; pooling and head stay in torch.

    The graph is traced once (skill.export.trace_onnx) into `cache_dir/onnx-<key>/`, keyed by the
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

    def cache_key(self) -> str:
        import torch
        import transformers

        from skill.export import onnx_input_names

        hf = self.model[0].model
        config = hf.config
        return hash_obj(
            {
                "weights": _weights_digest(hf),
                "config": config.to_json_string(use_diff=False),
                "attn": getattr(config, "_attn_implementation", None),
                "task": self.model[0].transformer_task,
                "inputs": onnx_input_names(self.model),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "opset": 17,
            }
        )[:16]

    def _export(self) -> tuple[Path, bool, float]:
        """The cached graph (exported now if absent): (folder, cache hit, export seconds)."""
        import shutil
        import tempfile
        import time

        from skill.export import ONNX_FILE, trace_onnx
        from skill.io import write_json

        folder = self.cache_dir / f"onnx-{self.cache_key()}"
        if (folder / ONNX_FILE).exists():
            return folder, True, 0.0
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=self.cache_dir))
        try:
            start = time.perf_counter()
            graph = trace_onnx(self.model, tmp / ONNX_FILE)
            seconds = time.perf_counter() - start
            write_json(tmp / "export.json", {"teacher": self.name, "revision": self.revision, "graph": graph, "export_seconds": round(seconds, 2)})
            try:
                os.replace(tmp, folder)  # atomic: a folder under the final name is complete
            except OSError:
                if not (folder / ONNX_FILE).exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another shard published the same graph first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder, False, seconds

    def before_scoring(self, first_batch):
        import shutil

        from skill.export import _OUTPUT_NAMES, ONNX_FILE, _OrtBackbone, ort_session

        transformer = self.model[0]
        if "onnx" in self.extra:  # already switched over (the graph's parity was checked then)
            return self.extra["onnx"]
        torch_model = transformer.model
        folder, hit, seconds = self._export()
        session = ort_session(folder / ONNX_FILE, threads=self.threads, optimise=True)
        transformer.model = _OrtBackbone(session, torch_model.config, _OUTPUT_NAMES[transformer.transformer_task])
        onnx_scores = self.score_batch(first_batch)
        transformer.model = torch_model
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
        transformer.model = _OrtBackbone(session, torch_model.config, _OUTPUT_NAMES[transformer.transformer_task])
        del torch_model  # the graph holds its own copy of the weights
        self.extra["onnx"] = {
            "onnx_cache": "hit" if hit else "miss",
            "onnx_graph": str(folder / ONNX_FILE),
            "onnx_export_seconds": round(seconds, 2),
            "onnx_threads": self.threads,
            "onnx_parity_max_drift": drift,
        }
        return self.extra["onnx"]


class MxbaiPackageTeacher(ModelTeacher):
    """mxbai-rerank v2 through the `mxbai-rerank` package: logit("1") − logit("0"), unnormalised."""

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> MxbaiPackageTeacher:
        try:
            from mxbai_rerank import MxbaiRerankV2
        except ImportError:
            raise prerequisite(
                f"teacher {spec.model!r} is mxbai-rerank v2, which this sentence-transformers cannot load with its LogitScore head",
                fix='pip install "reranker-skill[mxbai]" (the mxbai-rerank package)',
            ) from None
        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        try:
            model = MxbaiRerankV2(spec.model, device=device, torch_dtype=_torch_dtype(dtype), max_length=max_length)
        except Exception as exc:
            raise _load_failure(spec.model, exc) from None
        teacher = cls(name=spec.model, type="mxbai-v2", weight=spec.weight, score_space="raw_logit", max_length=max_length, device=device, model=model, dtype=dtype)
        teacher.revision = _revision(spec.model)
        return teacher

    def lengths(self, pairs):
        return _pair_lengths(self.model.tokenizer, pairs, self.max_length, extra=self.model.predefined_length)

    def score_batch(self, pairs):
        scores = self.model.predict([q for q, _ in pairs], [d for _, d in pairs], normalize=False)
        return scores.float().reshape(-1).numpy()


def load_mxbai(spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> ModelTeacher:
    """Through sentence-transformers when it loads the model with a LogitScore("1", "0") head, else the package."""
    try:
        teacher = CrossEncoderTeacher.load(spec, max_length=max_length, device=device, dtype=dtype, kind="mxbai-v2")
    except SkillError as err:
        if err.code == ExitCode.MISSING_RESOURCE and not Path(spec.model).expanduser().exists() and _hub_unreachable():
            raise
        teacher = None
    if teacher is not None:
        from sentence_transformers.cross_encoder.modules import LogitScore

        head = next((m for m in teacher.model if isinstance(m, LogitScore)), None)
        tok = teacher.model.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in (MXBAI_TRUE, MXBAI_FALSE)]
        if head is not None and [head.true_token_id, head.false_token_id] == ids:
            return teacher
    return MxbaiPackageTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)


class BiEncoderTeacher(ModelTeacher):
    """A sentence-transformers bi-encoder: cosine(query, document). For air-gapped or weak setups."""

    @classmethod
    def load(cls, spec: TeacherSpec, *, max_length: int, device: str | None, dtype: str) -> BiEncoderTeacher:
        from skill.mine import load_sentence_transformer

        device = _resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        model = load_sentence_transformer(spec.model, role="teacher", flag="--teacher", device=device)
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        model.eval()
        if dtype != "fp32":
            model.to(_torch_dtype(dtype))
        teacher = cls(name=spec.model, type="bi-encoder", weight=spec.weight, score_space="cosine", max_length=max_length, device=device, model=model, dtype=dtype)
        teacher.revision = _revision(spec.model)
        return teacher

    def lengths(self, pairs):
        tok = self.model.tokenizer
        enc = tok([d for _, d in pairs], truncation=True, max_length=self.max_length)
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


Teacher = ModelTeacher | FileTeacher


def load_teacher(spec: TeacherSpec, *, max_length: int, device: str | None = None, dtype: str = "auto") -> Teacher:
    kind = spec.type if spec.type != "auto" else detect_type(spec.model)
    if kind == "file":
        return FileTeacher.load(spec)
    if spec.score_space is not None:
        raise SkillError("--score-space applies only to a scores file (--teacher-type file)", code=ExitCode.USAGE, fix="drop --score-space for model teachers: their space is known")
    if kind == "bi-encoder":
        return BiEncoderTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)
    if kind == "mxbai-v2":
        return load_mxbai(spec, max_length=max_length, device=device, dtype=dtype)
    return CrossEncoderTeacher.load(spec, max_length=max_length, device=device, dtype=dtype)


def normalise_per_query(scores: np.ndarray, groups: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """z-score within each query group (a group of one maps to 0)."""
    out = np.zeros_like(scores, dtype=np.float64)
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    s = scores.astype(np.float64)[order]
    for a, b in itertools.pairwise(bounds):
        part = s[a:b]
        std = part.std()
        out[order[a:b]] = (part - part.mean()) / std if std > eps else 0.0
    return out
