"""One typed configuration for a run: every CLI flag and every recipe key lands here.

Each stage reads its own section; `RunConfig` is what a recipe YAML validates against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skill.data import DEFAULT_MAX_DOC_CHARS, MIN_DOCUMENTS, ColumnMapping


class _Section(BaseModel):
    # No NaN/inf anywhere: they pass gt/ge bounds and would fail later (a rendered literal, int(inf)) as "unexpected" errors.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class DataConfig(_Section):
    corpus: Path | None = None
    queries: Path | None = None
    qrels: Path | None = None
    mapping: ColumnMapping = ColumnMapping()
    max_doc_chars: int = Field(DEFAULT_MAX_DOC_CHARS, gt=0)


class MineConfig(_Section):
    retriever: Literal["bm25", "dense", "hybrid"] = "hybrid"
    embedder: str = "google/embeddinggemma-300m"
    train_top_k: int = Field(30, ge=1)
    eval_top_k: int = Field(100, ge=1)
    heldout: float = Field(0.2, gt=0, lt=1)
    heldout_queries: Path | None = None
    dev_queries: int = Field(50, ge=0)  # training queries kept out of training: checkpoint choice and fusion weight
    seed: int = 12
    batch_size: int = Field(64, ge=1)
    # hard negatives: a rank window, and an optional first-stage false-negative guard (off by default:
    # the teacher labels every candidate; mine_hard_negatives semantics when on, on a real score)
    negative_rank_min: int = Field(1, ge=1)
    num_negatives: int | None = Field(None, ge=1)
    relative_margin: float | None = Field(None, ge=0)
    absolute_margin: float | None = None
    max_score: float | None = None
    guard_score: Literal["auto", "bm25", "dense"] = "auto"  # auto: the first stage's own score; the dense cosine on hybrid
    rrf_k: int = Field(60, ge=1)
    cache_dir: Path | None = None  # corpus-embedding cache; default RUN/cache

    @model_validator(mode="after")
    def _check_guard_score(self) -> MineConfig:
        if self.guard_score != "auto" and self.retriever != "hybrid" and self.guard_score != self.retriever:
            raise ValueError(
                f"guard_score {self.guard_score!r} needs a first stage that computes it; the {self.retriever} first stage has {self.retriever} scores only"
            )
        return self

    @field_validator("eval_top_k")
    @classmethod
    def _meaningful_depth(cls, value: int) -> int:
        if value < MIN_DOCUMENTS:
            raise ValueError(
                f"{value} candidate per held-out query: a reranker cannot change the order of one candidate, so evaluation would measure nothing (use {MIN_DOCUMENTS} or more; 100 is the default)"
            )
        return value


TeacherType = Literal["auto", "cross-encoder", "mxbai-v2", "bi-encoder", "file", "first-stage"]
FIRST_STAGE_TEACHER = "first-stage"  # the `--teacher` name of the first stage's own scores (an ensemble member)
MAX_AUTO_WEIGHTED = 4  # `--weight auto` searches a 0.1 grid over the weights of at most this many teachers


ScoreSpace = Literal["raw_logit", "probability", "cosine", "normalised"]


class TeacherSpec(_Section):
    model: str
    type: TeacherType = "auto"
    # An ensemble member's weight; "auto": `score` chooses every member's weight on the training queries.
    weight: float | Literal["auto"] = 1.0
    score_space: ScoreSpace | None = None  # for `file` teachers; inferred when unset

    @field_validator("weight")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and not value > 0:
            raise ValueError(f"weight {value}: a teacher's weight must be above 0 (leave a teacher out instead), or auto")
        return value

    @model_validator(mode="after")
    def _first_stage(self) -> TeacherSpec:
        if self.model == FIRST_STAGE_TEACHER and self.type == "auto":
            self.type = "first-stage"
        if self.model == FIRST_STAGE_TEACHER and self.type != "first-stage":
            raise ValueError(
                f"{FIRST_STAGE_TEACHER} is the first stage's own scores, not a {self.type}: a model folder of that name is ./{FIRST_STAGE_TEACHER}"
            )
        if self.type == "first-stage" and self.model != FIRST_STAGE_TEACHER:
            raise ValueError(f"teacher type first-stage takes the model name {FIRST_STAGE_TEACHER!r} (the mined candidates' own scores), not {self.model!r}")
        return self

    @property
    def is_first_stage(self) -> bool:
        return self.type == "first-stage"


class ScoreConfig(_Section):
    teachers: list[TeacherSpec] = []
    batch_size: int = Field(32, ge=1)  # pairs per batch at full length; short pairs pack more (token budget)
    max_length: int = Field(512, ge=8)  # tokens of query + document text per pair; special tokens / template on top
    token_budget: int | None = Field(None, ge=8)  # padded tokens per batch; default batch_size * (min(max_length, 256) + the teacher's special/template tokens)
    chunk_size: int = Field(4096, ge=1)  # unique pairs per atomically committed chunk
    shard: str | None = Field(None, pattern=r"^\d+/\d+$")  # "i/n", 1-based
    device: str | None = None
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 elsewhere
    # onnx: cross-encoder teachers on CPU run through onnxruntime (others fall back to torch with a warning)
    backend: Literal["torch", "onnx"] = "torch"
    # Where the chunks are scored (skill.score_engines). local: this machine, one worker process per entry of
    # `devices` (default: every visible GPU, else the CPU; one entry scores in this process); ray: actors on a Ray cluster.
    engine: Literal["local", "ray"] = "local"
    devices: list[str] | None = None  # e.g. ["cuda:0", "cuda:1"] or ["cpu", "cpu"]
    ray_address: str | None = None  # default: RAY_ADDRESS, else a local cluster started for the run
    workers: int | None = Field(None, ge=1)  # Ray actors (default: one per GPU of the cluster, else one per node)
    fail_on_gate: bool = False  # exit 7 when the teacher does not beat the first stage on the dev queries

    @model_validator(mode="after")
    def _ensemble(self) -> ScoreConfig:
        auto = [t.weight == "auto" for t in self.teachers]
        if any(auto) and not all(auto):
            raise ValueError("weight auto is for every teacher of the ensemble or none: give numbers to all, or auto once")
        if any(auto) and not 2 <= len(self.teachers) <= MAX_AUTO_WEIGHTED:
            raise ValueError(f"weight auto chooses the weights of 2 to {MAX_AUTO_WEIGHTED} teachers; {len(self.teachers)} given")
        if sum(t.is_first_stage for t in self.teachers) > 1:
            raise ValueError(f"{FIRST_STAGE_TEACHER} is given twice: name it once (its weight sets how much it counts)")
        if self.teachers and all(t.is_first_stage for t in self.teachers):
            raise ValueError(
                f"the first stage alone cannot teach the student more than the first stage: pair {FIRST_STAGE_TEACHER} with a model teacher or scores file"
            )
        return self

    @property
    def auto_weights(self) -> bool:
        return any(t.weight == "auto" for t in self.teachers)


class TrainConfig(_Section):
    """The knobs of the rendered training script (`render`, `train`); None = the size's default
    from skill/ettin_sizes.yaml (or, for pooling, cls — mean for a bi-encoder base)."""

    size: Literal["17m", "32m", "68m", "150m", "400m", "1b"] | None = None
    base: str | None = None
    # encoder: a plain encoder (new head); bi-encoder: a sentence-transformers embedding model folder/id
    # (its encoder, new head); reranker: a CrossEncoder whose head and score scale are kept.
    base_kind: Literal["auto", "encoder", "bi-encoder", "reranker"] = "auto"
    pooling: Literal["cls", "mean"] | None = None
    head: Literal["ettin", "linear"] = "ettin"
    loss: Literal["mse", "margin-mse", "listnet"] = "mse"
    label_transform: Literal["raw", "centred", "zscore"] = "raw"
    # lift: a training query's qrels positives get label max(teacher labels of the query) + gold_margin,
    # so gold labels outrank whatever the teacher preferred (never applied to held-out queries).
    gold_positives: Literal["none", "lift"] = "none"
    gold_margin: float = Field(2.0, ge=0, le=100)
    # With lift, a candidate whose label is >= its query's gold positive's label - gold_guard_margin is a likely
    # unlabelled positive (the teacher rates it as high as the gold one): it is left out, never demoted below the lift.
    gold_guard_margin: float = Field(0.0, ge=-100, le=100)
    list_size: int = Field(8, ge=2, le=256)  # documents per query group (listnet)
    head_lr_multiplier: float = Field(1.0, gt=0, le=1000)
    learning_rate: float | None = Field(None, gt=0, lt=1)
    global_batch: int | None = Field(None, ge=1)
    per_device_batch: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0, le=100)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    max_seq_length: int | None = Field(None, ge=16, le=8192)
    eval_every: float | None = Field(None, gt=0)  # < 1: a fraction of training; >= 1: every N steps
    eval_queries: int | None = Field(None, ge=1)  # cap on held-out queries evaluated during training
    early_stopping_patience: int | None = Field(None, ge=0)  # 0 = never stop early
    seed: int | None = Field(None, ge=0)
    push_to_hub: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check_train(self) -> TrainConfig:
        if self.eval_every is not None and self.eval_every >= 1 and self.eval_every != int(self.eval_every):
            raise ValueError(f"eval_every={self.eval_every}: give a fraction below 1 or a whole number of steps")
        if self.base is not None and (not self.base.strip() or "\x00" in self.base):
            raise ValueError("base must be a non-empty model id or folder")
        if self.global_batch and self.per_device_batch and self.per_device_batch > self.global_batch:
            raise ValueError(f"per_device_batch {self.per_device_batch} is larger than global_batch {self.global_batch}")
        return self


class EvaluateConfig(_Section):
    """`evaluate`: which systems to compare on the held-out queries, and the verdict thresholds."""

    models: list[str] = []  # extra rerankers shown side by side (e.g. a released one)
    student: str | None = None  # default: RUN/student
    base: str | None = None  # default: the `base` recorded by render in manifest.json
    skip_base: bool = False  # do not score the base (one pass less; train.py already measured its baseline)
    # time the teacher model(s) of scores.meta.json: None = when cheap (a local bi-encoder or cross-encoder folder), True = always, False = never
    teacher: bool | None = None
    fail_on: Literal["regression", "marginal"] | None = None  # not part of the stage's hash: a gate on the report
    margin: float = Field(0.01, ge=0, lt=1)  # WIN needs ΔNDCG@10 ≥ +margin; REGRESSION is Δ ≤ −margin
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the paired test
    collapse_ratio: float = Field(0.1, ge=0, lt=1)  # collapse: student spread < ratio × teacher's spread
    collapse_floor: float = Field(1e-4, ge=0)  # collapse: student spread below this, teacher or not
    resamples: int = Field(10_000, ge=100, le=1_000_000)
    seed: int = 12
    batch_size: int = Field(64, ge=1)
    max_length: int | None = Field(None, ge=8, le=8192)
    device: str | None = None
    nanobeir: bool = False  # general-domain check (needs the Hugging Face Hub)


class ExportConfig(_Section):
    """`export`: format, quantisation, the parity pairs and the tolerances past which it fails."""

    format: Literal["onnx"] = "onnx"
    quantize: Literal["int8"] | None = None
    out: Path | None = None  # default RUN/export/onnx (or onnx-int8)
    queries: int = Field(32, ge=1)  # held-out queries whose candidates are scored for parity
    depth: int = Field(30, ge=1)  # candidates per query (first-stage order)
    batch_size: int = Field(32, ge=1)
    max_drift: float = Field(1e-3, gt=0)  # fp32: max |exported - original| raw score
    int8_min_overlap: float = Field(0.7, ge=0, le=1)  # int8: mean top-10 overlap
    int8_max_ndcg_drop: float = Field(0.02, ge=0, le=1)  # int8: NDCG@10 original - exported


Stage = Literal["mine", "score", "render", "train", "evaluate", "export"]


class RunConfig(_Section):
    """A whole run, as a recipe describes it."""

    run: Path
    stages: list[Stage] = ["mine", "score", "render", "train", "evaluate"]
    smoke_first: bool = True  # `train --smoke` before the full run (skipped when training is up to date)
    launcher: Literal["python", "accelerate", "torchrun"] = "python"  # how `train` starts train.py
    nproc_per_node: int | None = Field(None, ge=1)  # processes (GPUs) for accelerate / torchrun
    data: DataConfig = DataConfig()
    mine: MineConfig = MineConfig()
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("run", mode="before")
    @classmethod
    def _run_named(cls, value):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("the run folder is empty: name one, e.g. runs/NAME (an empty path would write into the current folder)")
        return value

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        order = ["mine", "score", "render", "train", "evaluate", "export"]
        if self.stages != sorted(set(self.stages), key=order.index):
            raise ValueError(f"stages must be distinct and in pipeline order {order}")
        if "mine" in self.stages and (self.data.corpus is None or self.data.queries is None):
            raise ValueError("data.corpus and data.queries are required when the recipe mines")
        if "score" in self.stages and not self.score.teachers:
            raise ValueError("score.teachers is empty: name at least one teacher (model id, folder or scores file)")
        return self
