"""`install` / `uninstall`: put the skill where Claude Code or Codex looks for it, and take back only what we put.

Targets: `<root>/.claude/skills/reranker-skill` (claude) or `<root>/.agents/skills/reranker-skill`
(codex), where root is the project (the git root above the working directory, else the working
directory, or `--dest`) or, with `--global`, the home directory.

Safety rules:
- a folder we did not create is never overwritten or removed; `--force` replaces only our own;
- the target must stay inside the root: `..` in `--dest` is refused, and so is a symlinked
  `.claude`/`.agents`/`skills` parent that points outside the root;
- a copy is assembled in a temporary folder beside the target and renamed into place;
- a marker (`.reranker-skill-install.json`, inside the copy, or beside a symlink) lists what
  install created, so uninstall removes exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from skill import __version__
from skill.envelope import Result
from skill.errors import invalid, missing
from skill.io import make_temp_dir, swap_in, write_json
from skill.resources import skill_root

SKILL_NAME = "reranker-skill"
MARKER = ".reranker-skill-install.json"
PARTS = ("SKILL.md", "references", "templates", "recipes")
AGENT_DIRS = {"claude": (".claude", "skills"), "codex": (".agents", "skills")}
Agent = Literal["claude", "codex"]
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def project_root(start: Path) -> Path:
    """The git root at or above `start`, else `start` itself."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def _root(global_: bool, dest: Path | None) -> Path:
    if global_ and dest is not None:
        raise invalid("--global and --dest exclude each other", fix="give one of them")
    if global_:
        return Path.home().resolve()
    if dest is not None:
        if ".." in Path(dest).parts:
            raise invalid("--dest must not contain '..'", where=str(dest), fix="give the destination project folder without '..' (an absolute path works)")
        return Path(dest).absolute()
    return project_root(Path.cwd())


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def target_path(agent: Agent, *, global_: bool = False, dest: Path | None = None) -> tuple[Path, Path]:
    """(root, target) after checking that no existing parent leads outside the root."""
    root = _root(global_, dest)
    real_root = root.resolve()
    current = root
    for part in AGENT_DIRS[agent]:
        current = current / part
        if current.is_symlink() or current.exists():
            real = current.resolve()
            if not _inside(real, real_root):
                raise invalid(
                    f"{current} leads outside {root} (to {real}); refusing to install through it",
                    where=str(current),
                    fix="remove or repoint that symlink, or install elsewhere with --dest (or --global)",
                )
            if not real.is_dir():
                raise invalid(f"{current} exists and is not a folder", where=str(current), fix="move it away, then rerun")
    return root, current / SKILL_NAME


def _sidecar(target: Path) -> Path:
    return target.parent / MARKER


def read_marker(target: Path) -> dict[str, Any] | None:
    """Our install record for `target`, or None when `target` is not ours."""
    marker = _sidecar(target) if target.is_symlink() else target / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("installed_by") != SKILL_NAME:
        return None
    if target.is_symlink() and (data.get("mode") != "symlink" or data.get("link") != os.readlink(target)):
        return None
    return data


def _sources() -> tuple[Path, list[Path]]:
    root = skill_root()
    parts = [root / p for p in PARTS if (root / p).exists()]
    return root, parts


def _copy_tree(src_root: Path, parts: list[Path], tmp: Path) -> list[str]:
    for src in parts:
        if src.is_dir():
            shutil.copytree(src, tmp / src.name, ignore=_IGNORE, symlinks=False)
        else:
            shutil.copy2(src, tmp / src.name)
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())


def install(agent: Agent, *, global_: bool = False, symlink: bool = False, dest: Path | None = None, force: bool = False) -> Result:
    root, target = target_path(agent, global_=global_, dest=dest)
    skills_dir = target.parent
    if target.is_symlink() or target.exists():
        record = read_marker(target)
        if record is None:
            raise invalid(
                f"{target} already exists and was not installed by reranker-skill; refusing to overwrite it",
                where=str(target),
                fix="move or delete that folder yourself, or install elsewhere with --dest",
            )
        if not force:
            raise invalid(
                f"reranker-skill is already installed at {target}",
                where=str(target),
                fix=f"add --force to replace it, or run `reranker-skill uninstall --agent {agent}{' --global' if global_ else ''}` first",
            )
    src_root, parts = _sources()
    created_dirs = [str(d) for d in (skills_dir.parent, skills_dir) if not d.exists()]
    skills_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "installed_by": SKILL_NAME,
        "version": __version__,
        "agent": agent,
        "scope": "global" if global_ else "project",
        "mode": "symlink" if symlink else "copy",
        "source": str(src_root),
        "target": str(target),
        "created_dirs": created_dirs,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    previous = read_marker(target) if (target.exists() or target.is_symlink()) else None
    if previous:  # keep the record of parent folders created by the first install
        record["created_dirs"] = sorted(set(previous.get("created_dirs", [])) | set(created_dirs))
    if symlink:
        link = str(src_root)
        record["link"] = link
        tmp_link = skills_dir / f".{SKILL_NAME}.link-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        os.symlink(link, tmp_link, target_is_directory=True)
        try:
            swap_in(tmp_link, target)
        except BaseException:
            tmp_link.unlink(missing_ok=True)
            raise
        write_json(_sidecar(target), record)
        files = [SKILL_NAME]
    else:
        tmp = make_temp_dir(skills_dir, prefix=f".{SKILL_NAME}.")
        try:
            files = _copy_tree(src_root, parts, tmp)
            record["files"] = files
            write_json(tmp / MARKER, record)
            swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _sidecar(target).unlink(missing_ok=True)  # a symlink install's record, now replaced
    text = f"installed reranker-skill for {agent} ({record['scope']}, {record['mode']}) at {target}"
    return Result(
        artifacts={"skill": str(target), "marker": str(_sidecar(target) if symlink else target / MARKER)},
        metrics={"agent": agent, "scope": record["scope"], "mode": record["mode"], "root": str(root), "files": len(files), "replaced": previous is not None},
        text=text,
    )


def uninstall(agent: Agent, *, global_: bool = False, dest: Path | None = None) -> Result:
    root, target = target_path(agent, global_=global_, dest=dest)
    if not (target.exists() or target.is_symlink()):
        raise missing(f"nothing installed at {target}", where=str(target), fix=f"check --agent/--global; `reranker-skill install --agent {agent}` installs it")
    record = read_marker(target)
    if record is None:
        raise invalid(
            f"{target} was not installed by reranker-skill (no install marker); leaving it alone",
            where=str(target),
            fix="remove it yourself if you are sure it is no longer needed",
        )
    removed: list[str] = []
    kept: list[str] = []
    if target.is_symlink():
        target.unlink()
        _sidecar(target).unlink(missing_ok=True)
        removed.append(str(target))
    else:
        for rel in record.get("files", []):
            f = target / rel
            if _inside(f.parent.resolve(), target.resolve()) and (f.is_file() or f.is_symlink()):
                f.unlink()
                removed.append(rel)
        (target / MARKER).unlink(missing_ok=True)
        for folder in sorted((p for p in target.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() or p.is_symlink())
        with contextlib.suppress(OSError):
            target.rmdir()
    ours = {target.parent, target.parent.parent}  # the only folders install ever creates: a tampered marker names no others
    for folder in sorted(record.get("created_dirs", []), key=len, reverse=True):
        if Path(folder) not in ours:
            continue
        with contextlib.suppress(OSError):
            Path(folder).rmdir()  # only when empty
    text = f"removed reranker-skill for {agent} from {target}"
    warnings = [f"kept {len(kept)} file(s) that install did not create: {', '.join(kept[:5])}"] if kept else []
    return Result(
        artifacts={"skill": str(target)}, metrics={"agent": agent, "removed": len(removed), "kept": kept, "root": str(root)}, warnings=warnings, text=text
    )
