"""Validate SKILL.md against the Agent Skills specification (agentskills.io)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ALLOWED_KEYS = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def read_frontmatter(path: str | Path) -> tuple[dict, str]:
    text = Path(path).read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, flags=re.DOTALL)
    if not m:
        raise ValueError(f"{path}: no YAML frontmatter between --- lines at the top")
    meta = yaml.safe_load(m.group(1))
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: frontmatter is not a mapping")
    return meta, m.group(2)


def validate_skill_md(path: str | Path, *, folder_name: str | None = None) -> list[str]:
    """Every way `path` departs from the spec; an empty list means it conforms."""
    problems: list[str] = []
    try:
        meta, body = read_frontmatter(path)
    except (ValueError, yaml.YAMLError) as exc:
        return [str(exc)]
    unknown = set(meta) - ALLOWED_KEYS
    if unknown:
        problems.append(f"unknown frontmatter keys: {sorted(unknown)}")
    name = meta.get("name")
    if not isinstance(name, str) or not (1 <= len(name) <= 64) or not NAME_RE.match(name):
        problems.append(f"name {name!r}: 1-64 lowercase letters, digits and single hyphens, not at either end")
    if folder_name is not None and name != folder_name:
        problems.append(f"name {name!r} differs from its folder {folder_name!r}")
    desc = meta.get("description")
    if not isinstance(desc, str) or not desc.strip() or len(desc) > 1024:
        problems.append("description: required, non-empty, at most 1024 characters")
    elif "<" in desc or ">" in desc:
        problems.append("description: must not contain < or >")
    comp = meta.get("compatibility")
    if comp is not None and (not isinstance(comp, str) or len(comp) > 500):
        problems.append("compatibility: a string of at most 500 characters")
    md = meta.get("metadata")
    if md is not None and (not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())):
        problems.append("metadata: a map of string keys to string values")
    tools = meta.get("allowed-tools")
    if tools is not None and not isinstance(tools, str):
        problems.append("allowed-tools: a space-separated string")
    if len(body.splitlines()) > 500:
        problems.append(f"body is {len(body.splitlines())} lines; keep it under 500 and move details to references/")
    for ref in re.findall(r"\]\((references/[^)#]+)", body):
        if not (Path(path).parent / ref).exists():
            problems.append(f"link to missing file {ref}")
        elif ref.count("/") > 1:
            problems.append(f"reference {ref} is more than one level deep")
    return problems
