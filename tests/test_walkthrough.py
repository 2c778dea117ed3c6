"""Issue 14: SKILL.md's CPU, offline path walked as a new agent would, on a domain that is not the
quickstart's (numpy's docstrings): every command of the block exactly as written, `packaged:` names,
smoke then full, each exiting 0; the recipe the block names then finds every stage done."""

from __future__ import annotations

import json
import time

import pytest
from conftest import REPO, run_cli
from test_skill_docs import doc_commands

from skill.domain import build_docstring_domain

BUDGET_MINUTES = "0.25"  # the block's --max-minutes 5.5, cut for the suite; every other flag as written


@pytest.mark.slow
def test_skill_md_offline_block_runs_on_a_new_domain(tmp_path):
    pytest.importorskip("numpy")
    commands = doc_commands(REPO / "SKILL.md", offline=True)
    stages = [words[0] for words in commands]
    assert stages == ["inspect", "mine", "score", "render", "train", "train", "evaluate", "run"], stages
    assert all("packaged:all-MiniLM-L6-v2" in " ".join(words) for words in commands if words[0] in ("inspect", "score", "render"))

    work = tmp_path / "work"
    paths = build_docstring_domain(work, packages=("numpy",), max_pairs=150)
    assert {p.name for p in paths.values()} == {"corpus.jsonl", "queries.jsonl", "qrels.tsv"}  # the names the block uses
    transcript = []
    for words in commands:
        args = [w.replace("runs/NAME", "runs/walk") for w in words]
        if "--max-minutes" in args:
            args[args.index("--max-minutes") + 1] = BUDGET_MINUTES
        if args[0] == "run":
            args += ["--set", f"train.max_minutes={BUDGET_MINUTES}"]
        started = time.perf_counter()
        proc = run_cli(*args, "--json", cwd=work, timeout=900)
        transcript.append(f"$ reranker-skill {' '.join(words)}\n-> exit {proc.returncode} in {time.perf_counter() - started:.0f} s")
        assert proc.returncode == 0, "\n".join(transcript) + f"\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        envelope = json.loads(proc.stdout)
        if args[0] == "inspect":
            assert envelope["metrics"]["status"] == "READY", envelope
        if args[0] == "render":
            assert envelope["metrics"]["estimate"]["seconds"] > 0, envelope["warnings"]  # the expected wall time, measured here
        if args[0] == "train":
            assert "dev_check" in envelope["metrics"], envelope["metrics"]
        if args[0] == "evaluate":
            assert envelope["metrics"]["recommended"], envelope["metrics"]
        if args[0] == "run":
            # The block is the recipe, stage by stage: the recipe finds every stage up to date.
            stages_run = envelope["metrics"]["stages"]
            assert {name for name, stage in stages_run.items() if stage["skipped"]} == {"mine", "score", "render", "train", "evaluate"}, stages_run
    print("\n".join(transcript))
