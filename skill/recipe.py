"""Recipes: validated YAML run configurations, with `--set key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from skill.config import RunConfig
from skill.errors import ExitCode, SkillError, invalid, missing

MAX_RECIPE_BYTES = 16 * 1024  # the bundled recipes are ~1 KB; the worst 16 KB of YAML parses in well under a second
MAX_YAML_NODES = 10_000  # scalars, lists and mappings after every alias is expanded
MAX_YAML_DEPTH = 32  # a recipe is sections of keys, three or four levels deep
MAX_YAML_ALIASES = 100


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses documents whose aliases would expand past MAX_YAML_NODES.

    Aliases share one object when loaded (a 601-byte "billion laughs" loads in milliseconds) but every
    later walk over the data (overrides, validation, dumps) visits each copy: the
    size that matters is the expanded one, counted here on the composed node graph before anything
    is built from it. Nesting deeper than MAX_YAML_DEPTH is refused while composing (before the rest is read).
    """

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooDeep
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise _TooBig
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooDeep(Exception):
    pass


class _TooBig(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes in `node` with every alias expanded; memoised on shared nodes, stops counting past `limit`."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node that contains itself (a recursive alias) expands without end
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = total
    return total


def safe_yaml(text: str, *, where: str) -> Any:
    """`yaml.safe_load`, bounded: a document expanding past MAX_YAML_NODES nodes or nested too deeply is refused (exit 5)."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise _TooBig
        return loader.construct_document(node)
    except _TooBig:
        raise invalid(
            f"the YAML uses more than {MAX_YAML_ALIASES} aliases (*name) or expands to more than {MAX_YAML_NODES:,} values once they are followed",
            where=where,
            fix="write the recipe out without nested aliases (anchors &name / aliases *name); a recipe needs a few dozen values",
        ) from None
    except (_TooDeep, RecursionError):
        raise invalid(
            f"the YAML is nested more than {MAX_YAML_DEPTH} levels deep", where=where, fix="a recipe is a mapping of sections a few levels deep: flatten it"
        ) from None
    finally:
        loader.dispose()


__all__ = ["apply_override", "load_recipe"]


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
    try:
        target[parts[-1]] = safe_yaml(raw, where=f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SkillError(
            f"--set {key}: the value is not YAML ({getattr(exc, 'problem', exc)})",
            code=ExitCode.USAGE,
            fix="quote the value, e.g. --set 'train.base=\"org/model\"'",
        ) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    if not path.exists():
        from skill.resources import resource_dir

        bundled = resource_dir("recipes") / path.name
        if not bundled.exists():
            raise missing("recipe not found", where=str(path), fix=f"pass a YAML file, or one of the bundled recipes in {resource_dir('recipes')}")
        path = bundled
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise invalid(
            f"the recipe is {size:,} bytes (limit {MAX_RECIPE_BYTES:,})",
            where=str(path),
            fix="a recipe is a short YAML file (~1 KB): start from one of the bundled recipes",
        )
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"), where=str(path)) or {}
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
    # `packaged:NAME` stays as written: each stage resolves it as its CLI flag does, so a recipe and the
    # same flags record the same configuration (and a run of either finds the other's stages up to date).
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        if not loc:  # a check across keys (a model validator) names no single key
            raise invalid(msg, where=str(path), fix="correct the recipe (see the bundled recipes for complete examples)") from None
        raise invalid(f"{loc}: {msg}", where=str(path), fix=f"correct `{loc}` in the recipe or with --set {loc}=...") from None
