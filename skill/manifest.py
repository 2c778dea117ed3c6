"""The run folder and its `manifest.json`: what each stage ran with, on what, and what it wrote.

A stage whose configuration and input hashes match its last successful record is skipped
(unless forced). Every write goes through a temporary file and a rename.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skill import __version__
from skill.errors import invalid
from skill.io import hash_file, hash_obj, read_json, write_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "reranker-skill": __version__}
    for name in ("torch", "transformers", "sentence-transformers", "datasets", "bm25s", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Run:
    """A run folder (`--run runs/NAME`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"manifest_version": MANIFEST_VERSION, "stages": {}}
        try:
            data = read_json(self.manifest_path)
        except ValueError:
            raise invalid("manifest.json is not valid JSON", where=str(self.manifest_path), fix="delete the run folder's manifest.json and rerun with --force") from None
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise invalid(
                f"run folder written by an incompatible version (manifest_version {data.get('manifest_version')!r}, expected {MANIFEST_VERSION})",
                where=str(self.manifest_path),
                fix="start a new run folder, or rerun every stage with --force",
            )
        return data

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(name)

    def require_stage(self, name: str, *, needed_by: str) -> dict[str, Any]:
        from skill.errors import missing

        record = self.stage(name)
        if not record or record.get("status") != "ok":
            raise missing(f"`{needed_by}` needs the output of `{name}`, which has not run in this folder", where=str(self.path), fix=f"run `reranker-skill {name} --run {self.path} ...` first")
        return record

    def record(self, name: str, record: dict[str, Any]) -> None:
        data = self.manifest()
        data["stages"][name] = record
        write_json(self.manifest_path, data)


def hash_inputs(paths: dict[str, str | Path | None]) -> dict[str, str | None]:
    return {k: (hash_file(p) if p is not None and Path(p).exists() else None) for k, p in paths.items()}


@dataclass
class Stage:
    """One execution of a stage inside a run folder.

    Usage::

        stage = Stage(run, "mine", config=cfg.model_dump(mode="json"), inputs={"corpus": path})
        if stage.fresh() and not force:
            return stage.previous  # skipped
        with stage.running():
            ...  # write artifacts
            stage.outputs["candidates"] = "candidates.parquet"
    """

    run: Run
    name: str
    config: dict[str, Any]
    inputs: dict[str, str | Path | None]
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None
    _input_hashes: dict[str, str | None] | None = None

    @property
    def input_hashes(self) -> dict[str, str | None]:
        if self._input_hashes is None:
            self._input_hashes = hash_inputs(self.inputs)
        return self._input_hashes

    def fresh(self) -> bool:
        """True when the last successful run had this config and these inputs, and its outputs still exist."""
        self.previous = self.run.stage(self.name)
        prev = self.previous
        if not prev or prev.get("status") != "ok":
            return False
        if prev.get("config_hash") != hash_obj(self.config) or prev.get("input_hashes") != self.input_hashes:
            return False
        return all(self.run.file(rel).exists() for rel in prev.get("outputs", {}).values())

    @contextlib.contextmanager
    def running(self) -> Iterator[Stage]:
        self.run.path.mkdir(parents=True, exist_ok=True)
        started = time.time()
        yield self
        self.run.record(
            self.name,
            {
                "status": "ok",
                "config": self.config,
                "config_hash": hash_obj(self.config),
                "inputs": {k: (str(v) if v is not None else None) for k, v in self.inputs.items()},
                "input_hashes": self.input_hashes,
                "outputs": self.outputs,
                "metrics": self.metrics,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "seconds": round(time.time() - started, 3),
                "versions": library_versions(),
            },
        )
