"""The run-folder contract: the name of every artifact of `runs/NAME/`, which stage writes it,
and the typed shape of the JSON files that stages read from one another.

Every stage names files through this module (never through string literals), and reads other
stages' JSON through these models, so a change of shape fails here, at load, with one clear line.
`references/run-folder.md` is the prose version of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------------------
# Names

MANIFEST = "manifest.json"
CACHE = "cache"  # content-keyed caches (corpus embeddings, ONNX graphs of teachers); safe to delete
STAGING_PREFIX = ".staging-"  # `.staging-<stage>-<pid>/`: a stage's outputs before they are published

# mine
SPLIT = "split.json"
TRAIN_PAIRS = "train_pairs.parquet"
HELDOUT_CANDIDATES = "heldout_candidates.parquet"
QRELS_HELDOUT = "qrels_heldout.json"
DEV_CANDIDATES = "dev_candidates.parquet"
QRELS_DEV = "qrels_dev.json"
MINE_SUMMARY = "mine.json"

# score
SCORES = "scores.parquet"
HELDOUT_SCORES = "heldout_scores.parquet"
DEV_SCORES = "dev_scores.parquet"  # the teacher's scores of the dev candidates (the dev-query teacher gate)
SCORES_META = "scores.meta.json"
SCORE_WORK = "score_work"  # committed teacher chunks, keyed by teacher and pairs: the resumable part of `score`

# render
SCRIPT = "train.py"

# train (written by train.py itself; `train` records them)
STUDENT = "student"
FUSION = "fusion.json"  # inside the student folder
TRAIN_RESULT = "train_result.json"
TRAIN_LOG = "train_log.txt"
STUDENT_DEV_SCORES = "student_dev_scores.parquet"  # every selection (dev) candidate's score before and after training
CHECKPOINTS = "checkpoints"
SMOKE = "smoke"  # `train --smoke` writes the same names under smoke/

# evaluate
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"

# export
EXPORT = "export"  # default parent of `export`'s output folders (onnx/, onnx-int8/)

StageName = Literal["mine", "score", "render", "train", "train_smoke", "evaluate", "export"]

# What each stage writes, by output key (the keys of a manifest record's `outputs`). A stage's
# transaction publishes the outputs it wrote and removes those it declares but did not write this time.
STAGE_OUTPUTS: dict[str, dict[str, str]] = {
    "mine": {
        "split": SPLIT,
        "train_pairs": TRAIN_PAIRS,
        "heldout_candidates": HELDOUT_CANDIDATES,
        "qrels_heldout": QRELS_HELDOUT,
        "dev_candidates": DEV_CANDIDATES,
        "qrels_dev": QRELS_DEV,
        "mine": MINE_SUMMARY,
    },
    "score": {"scores": SCORES, "heldout_scores": HELDOUT_SCORES, "dev_scores": DEV_SCORES, "meta": SCORES_META},
    "render": {"script": SCRIPT},
    "train": {"student": STUDENT, "result": TRAIN_RESULT, "log": TRAIN_LOG, "student_dev_scores": STUDENT_DEV_SCORES},
    "train_smoke": {
        "student": f"{SMOKE}/{STUDENT}",
        "result": f"{SMOKE}/{TRAIN_RESULT}",
        "log": f"{SMOKE}/{TRAIN_LOG}",
        "student_dev_scores": f"{SMOKE}/{STUDENT_DEV_SCORES}",
    },
    "evaluate": {"report_json": REPORT_JSON, "report_md": REPORT_MD, "report_png": REPORT_PNG},
    "export": {},  # its output folder is wherever --out points
}

# The stages whose outputs other stages train or evaluate on: a record that consumed one of them
# must have consumed the version that is in the folder now (render's train.py may be edited by hand).
DATA_STAGES = ("mine", "score", "train")


@dataclass(frozen=True)
class Artifact:
    key: str  # the output key in the producing stage's record (also the input key of its consumers)
    stage: str
    name: str  # path relative to the run folder


ARTIFACTS: dict[str, Artifact] = {
    key: Artifact(key, stage, name) for stage in ("mine", "score", "render", "train", "evaluate") for key, name in STAGE_OUTPUTS[stage].items()
}


def artifact(key: str) -> Artifact:
    return ARTIFACTS[key]


# ------------------------------------------------------------------------------------------------
# Typed files


class Split(BaseModel):
    """`split.json`: train / dev / held-out query ids, seeded and recorded in the run folder.

    `dev` queries come out of the training side: never trained on, they choose the checkpoint and the
    fusion weight, so the held-out queries stay untouched until `evaluate`.
    """

    seed: int
    heldout_fraction: float | None
    train: list[str]
    heldout: list[str]
    dev: list[str] = []


class ScoresMeta(BaseModel):
    """`scores.meta.json` (written by `score`): who labelled the pairs and in which score space."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    teachers: list[dict[str, Any]]
    score_space: Literal["raw_logit", "probability", "cosine", "normalised"]
    backend: str = "torch"
    max_length: int | None = None
    warnings: list[str] = []


class Fusion(BaseModel):
    """`student/fusion.json` (written by train.py): the weight of α·z(student) + (1 − α)·z(first stage)."""

    model_config = ConfigDict(extra="allow")

    alpha: float = Field(ge=0, le=1)
    chosen_on: int | None = None  # how many queries chose it
    split: str = "dev"


class TrainResult(BaseModel):
    """`train_result.json` (written by train.py, completed by `train` with `dev_check`): the fields `train` reads."""

    model_config = ConfigDict(extra="allow")

    global_step: int
    planned_steps: int | None = None
    ended_by: str  # "the plan" | "time budget" | "early stopping"
    best_checkpoint: str | None = None
    resumed_from: str | None = None
    selection_split: str  # the queries that chose the checkpoint: "dev" (or "heldout" in a folder without a dev split)
    effective_global_batch: int
    batch: dict[str, Any] = {}
    throughput: dict[str, Any] = {}
    seconds: float | None = None
    push: dict[str, Any] | None = None
    dev_check: dict[str, Any] | None = None  # added by `train` (skill.metrics on student_dev_scores.parquet)


class RenderSettings(BaseModel):
    """The part of `render`'s record (its resolved template values) that `evaluate` reads to rebuild the base."""

    model_config = ConfigDict(extra="allow")

    base: str | None = None
    base_kind: str | None = None
    pooling: str | None = None
    head: str | None = None
    seed: int | None = None
    max_seq_length: int | None = None


class ScoreSettings(BaseModel):
    """The part of `score`'s record that `evaluate --teacher` reads to time the teachers as they scored."""

    model_config = ConfigDict(extra="allow")

    max_length: int = 512


Status = Literal["running", "ok", "failed"]


class StageRecord(BaseModel):
    """One stage's entry in `manifest.json`.

    `running`: the stage began changing its outputs and has not finished (a kill leaves this);
    `ok`: every output was published and hashed; `failed`: the stage raised (`error` says what).
    """

    model_config = ConfigDict(extra="allow")

    status: Status
    config: dict[str, Any] = {}
    config_hash: str | None = None
    inputs: dict[str, str | None] = {}  # absolute paths (or hub ids) of what the stage read
    input_hashes: dict[str, str | None] = {}
    outputs: dict[str, str] = {}  # output key -> path relative to the run folder (absolute when outside it)
    output_hashes: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    started: str | None = None
    seconds: float | None = None
    versions: dict[str, str] = {}
    error: str | None = None
    pid: int | None = None

    def settings(self, model: type[BaseModel]):
        """This record's configuration read through `model` (RenderSettings, ScoreSettings)."""
        return model.model_validate(self.config)


MANIFEST_VERSION = 1


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    manifest_version: int = MANIFEST_VERSION
    stages: dict[str, StageRecord] = {}
