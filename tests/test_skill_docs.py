"""Issue 6: SKILL.md conforms to the Agent Skills spec, recipes validate, and every command the
docs show runs (smoke-sized, on the tiny model) so the docs cannot rot."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from skill.recipe import load_recipe
from skill.skill_md import read_frontmatter, validate_skill_md

DOCS = {"SKILL.md": REPO / "SKILL.md", "README.md": REPO / "README.md"}


def test_skill_md_conforms_to_the_spec(tmp_path):
    assert validate_skill_md(REPO / "SKILL.md", folder_name="reranker-skill") == []
    meta, body = read_frontmatter(REPO / "SKILL.md")
    assert len(body.splitlines()) < 200
    first_words = meta["description"][:200].lower()
    for trigger in ("rerank", "cross-encoder", "fine-tune", "distil", "domain search", "rag"):
        assert trigger in meta["description"].lower(), trigger
    assert "rerank" in first_words
    assert meta["license"] and meta["compatibility"]


def test_validator_catches_violations(tmp_path):
    bad = tmp_path / "SKILL.md"
    bad.write_text("---\nname: Reranker_Skill\ndescription: uses <tags>\nfoo: 1\n---\nSee [x](references/missing.md)\n")
    problems = " | ".join(validate_skill_md(bad, folder_name="reranker-skill"))
    for expected in ("unknown frontmatter keys", "name 'Reranker_Skill'", "differs from its folder", "< or >", "missing file references/missing.md"):
        assert expected in problems


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_every_recipe_validates(recipe, tmp_path):
    text = (REPO / "recipes" / recipe).read_text()
    assert text.startswith("#"), "each recipe starts with a header comment"
    cfg = load_recipe(REPO / "recipes" / recipe, [f"data.corpus={tmp_path}/c.jsonl", f"data.queries={tmp_path}/q.jsonl", f"data.qrels={tmp_path}/r.tsv"])
    assert cfg.stages[0] == "mine" and cfg.score.teachers


OFFLINE_BLOCK = "# CPU, offline"  # SKILL.md's no-GPU, no-hub block: walked on its own by tests/test_walkthrough.py


def doc_commands(path: Path, *, offline: bool = False) -> list[list[str]]:
    """Every `reranker-skill ...` command in the doc's bash blocks, continuation lines joined, `&&` split
    (with `offline`, only those of the CPU, offline block; without, all the others)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL):
        if block.startswith(OFFLINE_BLOCK) != offline:
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words and words[0] == "reranker-skill":
                    commands.append(words[1:])
    return commands


def _substitute(words: list[str], env: dict[str, str], *, rendered: bool) -> list[str]:
    """Map the docs' placeholders onto the tiny offline world; keep every flag the doc shows."""
    out = []
    for w in words:
        for placeholder, value in env.items():
            w = w.replace(placeholder, value)
        out.append(w)
    command = out[0]
    tiny = ["--base", env["@base"], "--max-steps", "2", "--per-device-batch", "8", "--global-batch", "8", "--max-seq-length", "64", "--eval-queries", "6"]
    if command == "render" or (command == "train" and "--smoke" not in out and not rendered):
        out += tiny
    if command == "run":
        out += [
            "--set", "run=runs/doc-run",
            "--set", "mine.retriever=bm25",
            "--set", f"score.teachers=[{{model: '{env['mixedbread-ai/mxbai-rerank-large-v2']}', type: cross-encoder}}]",
            "--set", f"train.base={env['@base']}",
            "--set", "train.max_steps=2", "--set", "train.per_device_batch=8", "--set", "train.global_batch=8",
            "--set", "train.max_seq_length=64", "--set", "train.eval_queries=6", "--set", "mine.eval_top_k=10", "--set", "mine.train_top_k=6",
        ]  # fmt: skip
    return out


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path, stdlib_domain, tiny_base, tiny_reranker):
    """Both docs' commands in one folder, SKILL.md first: README's repeat of a stage is then skipped
    by the manifest (same configuration and inputs), so each command runs for real without paying twice."""
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    for name in ("corpus", "queries", "qrels"):
        shutil.copy(stdlib_domain[name], work / stdlib_domain[name].name)
    env = {
        "runs/NAME": "runs/doc",
        "runs/demo": "runs/doc",
        "runs/mydomain": "runs/doc-run",
        "mixedbread-ai/mxbai-rerank-large-v2": str(tiny_reranker),
        "google/embeddinggemma-300m": str(tiny_base),
        "MODEL": str(tiny_base),
        "@base": str(tiny_base),
    }
    for doc in ("SKILL.md", "README.md"):
        commands = doc_commands(DOCS[doc])
        assert len(commands) >= 7, f"{doc} shows the workflow"
        seen = set()
        for words in commands:
            if words[0] == "quickstart":
                continue  # ten minutes on purpose; covered by `make quickstart` and tests/test_quickstart.py
            args = _substitute(words, env, rendered=(work / "runs" / "doc" / "train.py").exists())
            proc = run_cli(*args, cwd=work, timeout=900)
            assert proc.returncode == 0, f"{doc}: `reranker-skill {' '.join(words)}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            seen.add(words[0])
        assert {"inspect", "mine", "score", "render", "train", "evaluate", "export"} <= seen, doc
