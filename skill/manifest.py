"""The run folder's `manifest.json` and the stage runner: skip when up to date, refuse mixed inputs, transactions.

A stage runs in three steps, the same for every stage:

1. `Run.require(...)` refuses inputs whose producing record is missing (exit 4), `running`,
   `failed`, changed since it was written, or made from an older version of its own inputs (exit 5).
2. `Stage.skip(...)` returns the last result when the configuration, the input hashes and the
   output hashes all match the last `ok` record (unless `--force`).
3. `with Stage.transaction() as tx:` withdraws the stage's record (status `running`) before any
   output changes, collects the outputs in a staging folder inside the run folder, publishes them
   together (renames) and records `ok` with their hashes; an exception records `failed` with its
   one-line error. A kill at any point leaves `running` (or the previous consistent state).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from skill import __version__
from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid, missing
from skill.io import hash_file, hash_obj, pid_alive, read_json, swap_in, write_json
from skill.runfolder import ARTIFACTS, DATA_STAGES, MANIFEST, MANIFEST_VERSION, STAGE_OUTPUTS, STAGING_PREFIX, Manifest, StageRecord

__all__ = ["MANIFEST", "Run", "Stage", "Transaction", "content_hash", "library_versions"]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "reranker-skill": __version__}
    for name in ("torch", "transformers", "sentence-transformers", "datasets", "bm25s", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------------------
# Content hashes, computed once per process for an unchanged file


_HASHES: dict[tuple, str] = {}


def _signature(path: Path) -> tuple:
    if path.is_dir():
        return ("dir", str(path.resolve()), tuple((str(p.relative_to(path)), *_stat(p)) for p in sorted(path.rglob("*")) if p.is_file()))
    return ("file", str(path.resolve()), _stat(path))


def _stat(path: Path) -> tuple:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def content_hash(path: str | Path) -> str:
    """sha256 of a file or folder (skill.io.hash_file), remembered while the file is unchanged (same inode, size, mtime)."""
    path = Path(path)
    key = _signature(path)
    if key not in _HASHES:
        _HASHES[key] = hash_file(path)
    return _HASHES[key]


def _hash_inputs(paths: dict[str, str | Path | None]) -> dict[str, str | None]:
    return {k: (content_hash(p) if p is not None and Path(p).exists() else None) for k, p in paths.items()}


def _recorded_path(value: str | Path | None) -> str | None:
    """A path as the manifest keeps it: absolute (resolved against the caller's working folder) when it exists."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, SkillError):
        return f"{exc.where}: {exc.message}" if exc.where else exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# The command that redoes a stage; `...` stands for the flags the user gave it before.
RERUN = {
    "mine": "reranker-skill mine --run {run} ... --force",
    "score": "reranker-skill score --run {run} --teacher ... --force",
    "render": "reranker-skill render --run {run} --force",
    "train": "reranker-skill train --run {run}",
    "train_smoke": "reranker-skill train --run {run} --smoke",
    "evaluate": "reranker-skill evaluate --run {run} --force",
    "export": "reranker-skill export --run {run} --force",
}


class Run:
    """A run folder (`--run runs/NAME`)."""

    def __init__(self, path: str | Path) -> None:
        if isinstance(path, str) and not path.strip():
            raise SkillError("the run folder is empty", code=ExitCode.USAGE, fix="name a run folder, e.g. --run runs/NAME")
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def rerun(self, stage: str) -> str:
        return RERUN[stage].format(run=self.path)

    def manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest()
        try:
            data = read_json(self.manifest_path)
        except ValueError:
            raise invalid(
                "manifest.json is not valid JSON", where=str(self.manifest_path), fix="delete the run folder's manifest.json and rerun every stage with --force"
            ) from None
        version = data.get("manifest_version") if isinstance(data, dict) else None
        if version != MANIFEST_VERSION:
            raise invalid(
                f"run folder written by an incompatible version (manifest_version {version!r}, expected {MANIFEST_VERSION})",
                where=str(self.manifest_path),
                fix="start a new run folder (--run runs/NEW_NAME)",
            )
        try:
            return Manifest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise invalid(
                f"manifest.json does not match the run-folder contract ({loc}: {first['msg']})",
                where=str(self.manifest_path),
                fix="start a new run folder (--run runs/NEW_NAME)",
            ) from None

    def stage(self, name: str) -> StageRecord | None:
        return self.manifest().stages.get(name)

    def write_record(self, name: str, record: StageRecord) -> None:
        manifest = self.manifest()
        manifest.stages[name] = record
        write_json(self.manifest_path, manifest.model_dump(mode="json"))

    # -------------------------------------------------------------------------------------------
    # Refusing mixed inputs

    def require(self, keys: Iterable[str], *, needed_by: str, sources: bool = False) -> list[str]:
        """Check every artifact `keys` (runfolder.ARTIFACTS keys) before `needed_by` reads it; returns warnings.

        Refused: a producer that has not run (exit 4), an artifact file that is gone (exit 4), a producer
        `running` or `failed`, a file that changed since its producer hashed it, a producer whose own
        inputs are not the versions in the folder now (exit 5). `sources`: also re-hash the data files
        `mine` read (corpus, queries, qrels) and refuse when they changed since.
        """
        manifest = self.manifest()
        warnings: list[str] = []
        checked: set[str] = set()
        for key in keys:
            art = ARTIFACTS[key]
            record = self._usable(manifest, art.stage, needed_by=needed_by, wanted=art.name)
            path = self.file(art.name)
            recorded = record.output_hashes.get(key)
            if recorded is None:
                raise invalid(
                    f"`{art.stage}`'s record does not list {art.name} with its hash (written by an older version, or by hand)",
                    where=str(self.manifest_path),
                    fix=f"rerun `{self.rerun(art.stage)}`",
                )
            if not path.exists():
                raise missing(f"{art.name} is missing although `{art.stage}` recorded it", where=str(path), fix=f"rerun `{self.rerun(art.stage)}`")
            if content_hash(path) != recorded:
                raise invalid(
                    f"{art.name} changed after `{art.stage}` wrote it",
                    where=str(path),
                    fix=f"rerun `{self.rerun(art.stage)}` to rewrite it, then `{needed_by}`",
                )
            self._consistent(manifest, art.stage, needed_by=needed_by, checked=checked)
        if sources and "mine" in manifest.stages:
            warnings += self._sources_unchanged(manifest.stages["mine"], needed_by=needed_by)
        return warnings

    def _usable(self, manifest: Manifest, stage: str, *, needed_by: str, wanted: str) -> StageRecord:
        record = manifest.stages.get(stage)
        if record is None:
            raise missing(
                f"`{needed_by}` needs {wanted} from `{stage}`, which has not run in this folder", where=str(self.path), fix=f"run `{self.rerun(stage)}` first"
            )
        if record.status == "running":
            raise invalid(
                f"`{stage}` did not finish (its record says running: killed, or still running elsewhere), so its outputs may mix two runs",
                where=str(self.manifest_path),
                fix=f"rerun `{self.rerun(stage)}` to completion, then `{needed_by}`",
            )
        if record.status == "failed":
            raise invalid(
                f"the last `{stage}` failed ({record.error or 'no message'}), so its outputs are not usable",
                where=str(self.manifest_path),
                fix=f"rerun `{self.rerun(stage)}` to completion, then `{needed_by}`",
            )
        return record

    def _consistent(self, manifest: Manifest, stage: str, *, needed_by: str, checked: set[str]) -> None:
        """`stage` consumed the versions of the data artifacts that are in the folder now (recursively)."""
        if stage in checked:
            return
        checked.add(stage)
        record = manifest.stages[stage]
        for key, used in record.input_hashes.items():
            art = ARTIFACTS.get(key)
            if art is None or art.stage == stage or art.stage not in DATA_STAGES:
                continue
            upstream = self._usable(manifest, art.stage, needed_by=needed_by, wanted=art.name)
            if upstream.output_hashes.get(key) != used:
                raise invalid(
                    f"`{stage}`'s outputs were made from an older {art.name} (`{art.stage}` ran again after `{stage}`)",
                    where=str(self.manifest_path),
                    fix=f"rerun `{self.rerun(stage)}` on the new {art.name}, then `{needed_by}`",
                )
            self._consistent(manifest, art.stage, needed_by=needed_by, checked=checked)

    def _sources_unchanged(self, mine: StageRecord, *, needed_by: str) -> list[str]:
        warnings = []
        for key, used in mine.input_hashes.items():
            where = mine.inputs.get(key)
            if used is None or where is None or key in ARTIFACTS:
                continue
            if not Path(where).exists():
                warnings.append(f"{where} ({key} read by `mine`) is gone: cannot check that the mined pairs still match it")
                continue
            if content_hash(where) != used:
                raise invalid(
                    f"the {key} file changed after `mine` read it: the mined pairs and splits describe the old data",
                    where=where,
                    fix=f"rerun `{self.rerun('mine')}` on the new data, then `{needed_by}`",
                )
        return warnings


# ------------------------------------------------------------------------------------------------
# The stage runner


@dataclass
class Transaction:
    """A stage's outputs while it runs: written under `staging`, published together on success."""

    stage: Stage
    staging: Path
    outputs: dict[str, str] = field(default_factory=dict)
    in_place: set[str] = field(default_factory=set)
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    def path(self, key: str) -> Path:
        """Where to write output `key` now (inside the staging folder); published under its contract name."""
        name = STAGE_OUTPUTS[self.stage.name][key]
        self.outputs[key] = name
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def adopt(self, key: str, rel: str) -> None:
        """Record an output that was written where it lives (by train.py, or export's own swap)."""
        self.outputs[key] = rel
        self.in_place.add(key)

    def fail(self, message: str) -> None:
        """End as `failed` without raising (a stage that returns its own error result); nothing staged is published."""
        self.failure = message


@dataclass
class Stage:
    """One execution of a stage inside a run folder.

    Usage::

        stage = Stage(run, "mine", config=cfg, inputs={"corpus": path})
        if (done := stage.skip(force=force)) is not None:
            return done
        ...  # validate and compute; nothing written yet
        with stage.transaction() as tx:
            write_json(tx.path("split"), ...)
            tx.metrics.update(...)
    """

    run: Run
    name: str
    config: dict[str, Any]
    inputs: dict[str, str | Path | None]
    _input_hashes: dict[str, str | None] | None = None

    @property
    def input_hashes(self) -> dict[str, str | None]:
        if self._input_hashes is None:
            self._input_hashes = _hash_inputs(self.inputs)
        return self._input_hashes

    def fresh(self) -> StageRecord | None:
        """The last record when it is `ok`, with this configuration and these inputs, and its outputs are as it wrote them."""
        prev = self.run.stage(self.name)
        if prev is None or prev.status != "ok":
            return None
        if prev.config_hash != hash_obj(self.config) or prev.input_hashes != self.input_hashes:
            return None
        for key, rel in prev.outputs.items():
            path = self.run.file(rel)
            if not path.exists() or prev.output_hashes.get(key) != content_hash(path):
                return None
        return prev

    def skip(
        self,
        *,
        force: bool,
        text: str | None = None,
        warnings: Iterable[str] = (),
        result: Callable[[StageRecord], Result] | None = None,
    ) -> Result | None:
        """The stage runner's first step: the last result when the stage is up to date (and not forced), else None."""
        if force:
            return None
        prev = self.fresh()
        if prev is None:
            return None
        if result is not None:
            return result(prev)
        return Result(
            artifacts={k: str(self.run.file(v)) for k, v in prev.outputs.items()},
            metrics={**prev.metrics, "skipped": True},
            warnings=list(warnings),
            text=text or f"{self.name}: up to date in {self.run.path} (use --force to redo)",
        )

    def _record(self, status: str, **fields) -> StageRecord:
        return StageRecord(
            status=status,  # type: ignore[arg-type]
            config=self.config,
            config_hash=hash_obj(self.config),
            inputs={k: _recorded_path(v) for k, v in self.inputs.items()},
            input_hashes=self.input_hashes,
            versions=library_versions(),
            pid=os.getpid(),
            **fields,
        )

    def _clear_staging(self) -> None:
        for old in self.run.path.glob(f"{STAGING_PREFIX}{self.name}-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue  # another live process's transaction
            shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Withdraw the record (running), stage the outputs, publish them together, record ok — or failed."""
        self.run.path.mkdir(parents=True, exist_ok=True)
        _ = self.input_hashes  # hashed before anything changes
        started = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        self.run.write_record(self.name, self._record("running", started=stamp))
        self._clear_staging()
        staging = self.run.file(f"{STAGING_PREFIX}{self.name}-{os.getpid()}")
        staging.mkdir()
        tx = Transaction(self, staging)
        try:
            yield tx
            if tx.failure is not None:
                shutil.rmtree(staging, ignore_errors=True)
                self.run.write_record(self.name, self._record("failed", error=tx.failure, started=stamp, seconds=round(time.time() - started, 3)))
                return
            hashes = {key: content_hash(self.run.file(rel) if key in tx.in_place else staging / rel) for key, rel in tx.outputs.items()}
            for key, rel in STAGE_OUTPUTS[self.name].items():  # declared, not written this time: an older run's file must not linger
                if key not in tx.outputs:
                    _remove(self.run.file(rel))
            for key, rel in tx.outputs.items():
                if key not in tx.in_place:
                    target = self.run.file(rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if (staging / rel).is_dir():
                        swap_in(staging / rel, target)
                    else:
                        os.replace(staging / rel, target)
            shutil.rmtree(staging, ignore_errors=True)
            self.run.write_record(
                self.name,
                self._record("ok", outputs=tx.outputs, output_hashes=hashes, metrics=tx.metrics, started=stamp, seconds=round(time.time() - started, 3)),
            )
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(Exception):  # a full disk may refuse even this: the record then stays `running`
                self.run.write_record(self.name, self._record("failed", error=_error_line(exc), started=stamp, seconds=round(time.time() - started, 3)))
            raise


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
