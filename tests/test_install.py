"""Issue 6: `install` / `uninstall` in a temporary HOME and project — placement, symlinks, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_json

from skill.install import MARKER, SKILL_NAME
from skill.resources import skill_root

AGENT_DIR = {"claude": ".claude/skills", "codex": ".agents/skills"}


@pytest.fixture
def home_and_project(tmp_path) -> tuple[Path, Path, dict]:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    (project / ".git").mkdir()  # the project root the installer should find from a subfolder
    (project / "src" / "pkg").mkdir(parents=True)
    return home, project, {"HOME": str(home)}


def _cli(*args, cwd: Path, env: dict) -> tuple[int, dict]:
    return run_json(*args, cwd=cwd, env=env)


@pytest.mark.parametrize("agent", ["claude", "codex"])
@pytest.mark.parametrize("scope", ["project", "global"])
def test_install_then_uninstall_copy(home_and_project, agent, scope):
    home, project, env = home_and_project
    flags = ["--global"] if scope == "global" else []
    code, payload = _cli("install", "--agent", agent, *flags, cwd=project / "src" / "pkg", env=env)
    assert code == 0, payload["errors"]
    base = home if scope == "global" else project
    target = base / AGENT_DIR[agent] / SKILL_NAME
    assert Path(payload["artifacts"]["skill"]) == target and target.is_dir() and not target.is_symlink()
    assert (target / "SKILL.md").read_text() == (skill_root() / "SKILL.md").read_text()
    assert "name: reranker-skill" in (target / "SKILL.md").read_text()
    for part in ("references", "templates"):
        src = sorted(p.name for p in (skill_root() / part).iterdir() if not p.name.startswith("."))
        assert sorted(p.name for p in (target / part).iterdir()) == src
    record = json.loads((target / MARKER).read_text())
    assert record["agent"] == agent and record["scope"] == scope and "SKILL.md" in record["files"]
    other = project if scope == "global" else home
    assert not (other / AGENT_DIR[agent]).exists()  # nothing written to the other scope

    code, payload = _cli("uninstall", "--agent", agent, *flags, cwd=project, env=env)
    assert code == 0, payload["errors"]
    assert not target.exists() and not (base / AGENT_DIR[agent].split("/")[0]).exists()  # parents we created are gone too


def test_symlink_install_and_uninstall(home_and_project):
    _home, project, env = home_and_project
    code, payload = _cli("install", "--agent", "claude", "--symlink", cwd=project, env=env)
    assert code == 0, payload["errors"]
    target = project / ".claude/skills" / SKILL_NAME
    assert target.is_symlink() and target.resolve() == skill_root().resolve()
    assert (target / "SKILL.md").exists()
    assert not (skill_root() / MARKER).exists()  # the marker sits beside the link, never in the source
    code, payload = _cli("install", "--agent", "claude", "--symlink", cwd=project, env=env)
    assert code == 5 and "--force" in payload["errors"][0]["fix"]
    code, _ = _cli("install", "--agent", "claude", "--force", cwd=project, env=env)  # symlink → copy, ours so allowed
    assert code == 0 and target.is_dir() and not target.is_symlink()
    code, _ = _cli("uninstall", "--agent", "claude", cwd=project, env=env)
    assert code == 0 and not target.exists() and not (project / ".claude").exists()
    assert (skill_root() / "SKILL.md").exists()  # uninstalling never touches the source


def test_refuses_to_overwrite_a_foreign_folder(home_and_project):
    _home, project, env = home_and_project
    foreign = project / ".agents/skills" / SKILL_NAME
    foreign.mkdir(parents=True)
    (foreign / "SKILL.md").write_text("my own skill")
    for extra in ([], ["--force"]):
        code, payload = _cli("install", "--agent", "codex", *extra, cwd=project, env=env)
        assert code == 5 and "not installed by reranker-skill" in payload["errors"][0]["message"]
    assert (foreign / "SKILL.md").read_text() == "my own skill"
    code, payload = _cli("uninstall", "--agent", "codex", cwd=project, env=env)
    assert code == 5 and "not installed by reranker-skill" in payload["errors"][0]["message"]
    assert (foreign / "SKILL.md").read_text() == "my own skill"


def test_refuses_a_symlinked_parent_that_escapes(home_and_project, tmp_path):
    _home, project, env = home_and_project
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, project / ".claude")
    code, payload = _cli("install", "--agent", "claude", cwd=project, env=env)
    assert code == 5 and "leads outside" in payload["errors"][0]["message"]
    assert list(elsewhere.iterdir()) == []
    code, payload = _cli("install", "--agent", "claude", "--dest", "../project", cwd=project, env=env)
    assert code == 5 and "'..'" in payload["errors"][0]["message"]


def test_uninstall_keeps_files_install_did_not_create(home_and_project):
    home, project, env = home_and_project
    code, _ = _cli("install", "--agent", "claude", "--dest", project, cwd=home, env=env)
    assert code == 0
    target = project / ".claude/skills" / SKILL_NAME
    (target / "my-notes.md").write_text("keep me")
    code, payload = _cli("uninstall", "--agent", "claude", "--dest", project, cwd=home, env=env)
    assert code == 0 and payload["metrics"]["kept"] == ["my-notes.md"]
    assert sorted(p.name for p in target.iterdir()) == ["my-notes.md"]
    code, payload = _cli("uninstall", "--agent", "claude", "--dest", project / "nowhere", cwd=home, env=env)
    assert code == 4
