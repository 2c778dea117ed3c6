"""The Ettin ladder's per-size defaults, read from `ettin_sizes.yaml` (the one source of truth)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SIZES_FILE = Path(__file__).resolve().parent / "ettin_sizes.yaml"
SIZE_NAMES = ("17m", "32m", "68m", "150m", "400m", "1b")


class SizeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    reranker: str
    params_m: float = Field(gt=0)
    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    global_batch: int = Field(gt=0)
    per_device_batch: int = Field(gt=0)
    train_memory_gb: float = Field(gt=0)
    released_ndcg10_mteb: float
    released_ndcg10_nanobeir: float
    h100_pairs_per_s: float = Field(gt=0)
    cpu_pairs_per_s: float = Field(gt=0)


class SharedDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    scheduler: str
    seed: int
    eval_every: float = Field(gt=0)
    early_stopping_patience: int = Field(ge=0)
    max_seq_length: int = Field(gt=0)
    metric: str


class Ladder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared: SharedDefaults
    sizes: dict[str, SizeSpec]


@functools.lru_cache(maxsize=1)
def ladder() -> Ladder:
    import yaml

    raw = yaml.safe_load(SIZES_FILE.read_text(encoding="utf-8"))
    raw["sizes"] = {str(k): {"name": str(k), **v} for k, v in raw["sizes"].items()}
    data = Ladder.model_validate(raw)
    if tuple(data.sizes) != SIZE_NAMES:
        raise ValueError(f"{SIZES_FILE}: sizes must be {SIZE_NAMES}, got {tuple(data.sizes)}")
    return data


def size_spec(name: str) -> SizeSpec:
    return ladder().sizes[name]


def shared() -> SharedDefaults:
    return ladder().shared
