"""Shared fixtures: offline by construction, tiny real models, tiny real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Model-identity hashes are cached per user; tests keep theirs out of the user's home.
os.environ.setdefault("RERANKER_SKILL_CACHE", tempfile.mkdtemp(prefix="reranker-skill-test-cache-"))

import pytest

REPO = Path(__file__).resolve().parent.parent
# The checkout under test, not whatever `skill` an environment has installed (a worktree, a fresh clone).
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "skill"]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stdout exactly as a user sees them)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO, env=full_env, timeout=timeout)


def run_json(*args: str, **kwargs) -> tuple[int, dict]:
    proc = run_cli(*args, "--json", **kwargs)
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON object:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}") from exc
    return proc.returncode, payload


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny randomly initialised ModernBERT (Ettin's architecture) with its tokenizer."""
    from skill.testing import build_tiny_modernbert

    return build_tiny_modernbert(tmp_path_factory.mktemp("models") / "tiny-modernbert")


@pytest.fixture(scope="session")
def tiny_reranker(tiny_base, tmp_path_factory) -> Path:
    """A tiny Ettin-shaped CrossEncoder (Identity activation) saved to disk."""
    from skill.testing import build_tiny_reranker

    return build_tiny_reranker(tmp_path_factory.mktemp("models") / "tiny-reranker", base_dir=tiny_base)


@pytest.fixture(scope="session")
def stdlib_domain(tmp_path_factory) -> dict[str, Path]:
    """The standard-library docstring domain, cut to 120 queries (BEIR layout)."""
    from skill.domain import build_stdlib_domain

    return build_stdlib_domain(tmp_path_factory.mktemp("domain"), max_pairs=120, distractors=40)


def rendered_constants(script: str) -> dict:
    """The module-level constants of a rendered train.py (`NAME = literal`), read with Python's own parser."""
    import ast

    out = {}
    for node in ast.parse(script).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_beir(tmp_path) -> dict[str, Path]:
    """A hand-made 4-document, 3-query BEIR dataset."""
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
            {"_id": "d2", "text": "Berlin is the capital of Germany."},
            {"_id": "d3", "text": "The Seine flows through Paris."},
            {"_id": "d4", "text": "Bread is baked in an oven."},
        ],
    )
    queries = write_jsonl(
        tmp_path / "queries.jsonl",
        [{"_id": "q1", "text": "capital of France"}, {"_id": "q2", "text": "capital of Germany"}, {"_id": "q3", "text": "how is bread made"}],
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq3\td4\t1\n", encoding="utf-8")
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


@pytest.fixture(scope="session")
def toy_scored_run(stdlib_domain, tmp_path_factory) -> Path:
    """A run folder as `mine` + `score` leave it (lexical first stage and teacher); copy it before writing to it."""
    from skill.testing import write_toy_scored_run

    return write_toy_scored_run(tmp_path_factory.mktemp("runs") / "toy", stdlib_domain)


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """The CLI's `main()` in this process (what the console script runs), exit code and output captured.

    For long tables of fast failures; `run_cli` runs the same thing in a subprocess.
    """
    from skill.cli import main

    def invoke(*args) -> subprocess.CompletedProcess:
        argv = ["reranker-skill", *map(str, args)]
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, exit_info.value.code, out, err)

    return invoke
