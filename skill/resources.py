"""Find the templates and recipes both in a checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

from skill.errors import missing

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`templates`, `recipes`, `references` or the skill root (`""`).

    An installed wheel carries them under `skill/_bundle/`; a checkout has them at the root.
    """
    for root in (_PACKAGE / "_bundle", _PACKAGE.parent):
        candidate = root / name if name else root
        if (root / "SKILL.md").exists() and candidate.exists():
            return candidate
    raise missing(
        f"cannot find the skill's {name or 'root'} folder", where=str(_PACKAGE), fix="reinstall reranker-skill (pip install --force-reinstall reranker-skill)"
    )


def skill_root() -> Path:
    return resource_dir("")
