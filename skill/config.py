"""One typed configuration for a run: every CLI flag and every recipe key lands here.

Each stage reads its own section; `RunConfig` is what a recipe YAML validates against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skill.data import DEFAULT_MAX_DOC_CHARS, ColumnMapping


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
    seed: int = 12
    batch_size: int = Field(64, ge=1)


TeacherType = Literal["auto", "cross-encoder", "mxbai-v2", "bi-encoder", "file"]


class TeacherSpec(_Section):
    model: str
    type: TeacherType = "auto"
    weight: float = Field(1.0, gt=0)


class ScoreConfig(_Section):
    teachers: list[TeacherSpec] = []
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(512, ge=8)
    shard: str | None = None  # "i/n"


class TrainConfig(_Section):
    size: Literal["17m", "32m", "68m", "150m", "400m", "1b"] | None = None
    base: str | None = None


class EvaluateConfig(_Section):
    models: list[str] = []
    fail_on: Literal["regression", "marginal"] | None = None


class RunConfig(_Section):
    """A whole run, as a recipe describes it."""

    run: Path
    data: DataConfig = DataConfig()
    mine: MineConfig = MineConfig()
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        return self
