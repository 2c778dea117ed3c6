"""`render`: turn a size (and overrides) into a standalone training script, runs/NAME/train.py.

Safe by construction: the Jinja environment is strict (an undefined variable is an error) and
every value reaches the template through `pyrepr`, which accepts only plain data and emits a
Python literal — a model id holding quotes, newlines or code stays an inert string.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from skill.config import TrainConfig
from skill.envelope import Result
from skill.errors import SkillError, invalid
from skill.io import hash_file, write_text
from skill.loading import PACKAGED_PREFIX, resolve_packaged
from skill.manifest import Run, Stage
from skill.resources import resource_dir
from skill.runfolder import DEV_CANDIDATES, HELDOUT_CANDIDATES, QRELS_DEV, SCORES, SCRIPT
from skill.sizes import SIZE_NAMES, shared, size_spec

TEMPLATE = "train_reranker.py.j2"
# On small data, aim for at least this many optimizer steps per epoch (see references/sizes-and-hyperparameters.md).
MIN_STEPS_PER_EPOCH = 100


def pyrepr(value: Any) -> str:
    """A validated Python literal for `value`: None, bool, int, finite float, str, or lists/dicts of them.

    Strings come out double-quoted when they hold no double quote, as `ruff format` writes them.
    """
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable
    _check_literal(value)
    return _literal(value)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value)  # repr escapes quotes, backslashes and line breaks: a str stays one inert literal
        return f'"{text[1:-1]}"' if text.startswith("'") and '"' not in value else text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _check_literal(value: Any, depth: int = 0) -> None:
    if depth > 8:
        raise TypeError("value nested too deeply for a template literal")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"non-finite float {value!r} cannot be a template literal")
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_literal(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"dict key {k!r} is not a string")
            _check_literal(v, depth + 1)
        return
    raise TypeError(f"{type(value).__name__} is not allowed in a rendered script (only plain literals)")


def is_local_folder(base: str) -> bool:
    try:
        return Path(base).is_dir()
    except OSError:  # e.g. a name too long to be a path: it can only be a (bad) hub id, which training will report
        return False


def detect_base_kind(base: str) -> str:
    """encoder, bi-encoder or reranker, from a local folder's files or, for a hub id, its name."""
    path = Path(base)
    if is_local_folder(base):
        from skill.modeling import model_folder_kind

        kind = model_folder_kind(path)
        return "reranker" if kind in ("reranker", "mxbai-v2", "multi-label") else "bi-encoder" if kind == "bi-encoder" else "encoder"
    lowered = base.lower()
    if lowered.startswith("cross-encoder/") or "rerank" in lowered:
        return "reranker"
    if lowered.startswith("sentence-transformers/"):
        return "bi-encoder"
    return "encoder"


# The values a template branches on, and the words they may take: anything else is refused before rendering.
CHOICES: dict[str, tuple[str, ...]] = {
    "size": SIZE_NAMES,
    "base_kind": ("encoder", "bi-encoder", "reranker"),
    "pooling": ("cls", "mean"),
    "head": ("ettin", "linear"),
    "loss": ("mse", "margin-mse", "listnet"),
    "label_transform": ("raw", "centred", "zscore"),
    "gold_positives": ("none", "lift"),
    "split": ("dev", "heldout"),
}


def resolve_base(base: str) -> str:
    """The base as train.py must see it: a `packaged:NAME` becomes the packaged model's absolute folder, and a
    folder that exists here becomes absolute (train.py runs inside the run folder); a hub id is kept as given."""
    if base.startswith(PACKAGED_PREFIX):
        base = resolve_packaged(base)
    return _absolute_if_local(base)


def resolve(cfg: TrainConfig, *, split: str = "dev") -> dict[str, Any]:
    """Every template value, concrete: the size's defaults from ettin_sizes.yaml under the overrides.

    `split`: the queries that choose the checkpoint, "dev" (training queries kept out of training) or
    "heldout" (a run folder without a dev split).
    """
    size = cfg.size or "17m"
    spec, common = size_spec(size), shared()
    base = resolve_base(cfg.base or spec.base)
    kind = cfg.base_kind if cfg.base_kind != "auto" else detect_base_kind(base)
    global_batch = cfg.global_batch or spec.global_batch
    per_device = min(cfg.per_device_batch or spec.per_device_batch, global_batch)
    return {
        "size": size,
        "base": base,
        "base_kind": kind,
        "pooling": cfg.pooling or ("mean" if kind == "bi-encoder" else "cls"),
        "head": cfg.head,
        "loss": cfg.loss,
        "label_transform": cfg.label_transform,
        "gold_positives": cfg.gold_positives,
        "gold_margin": float(cfg.gold_margin),
        "gold_guard_margin": float(cfg.gold_guard_margin),
        "list_size": cfg.list_size,
        "learning_rate": cfg.learning_rate or spec.learning_rate,
        "head_lr_multiplier": float(cfg.head_lr_multiplier),
        "global_batch": global_batch,
        "per_device_batch": per_device,
        "epochs": float(cfg.epochs or common.epochs),
        "warmup_ratio": float(cfg.warmup_ratio if cfg.warmup_ratio is not None else common.warmup_ratio),
        "max_steps": cfg.max_steps,
        "max_minutes": cfg.max_minutes,
        "max_seq_length": cfg.max_seq_length or common.max_seq_length,
        "eval_every": float(cfg.eval_every or common.eval_every),
        "eval_queries": cfg.eval_queries,
        "early_stopping_patience": cfg.early_stopping_patience if cfg.early_stopping_patience is not None else common.early_stopping_patience,
        "seed": cfg.seed if cfg.seed is not None else common.seed,
        "push_to_hub": cfg.push_to_hub,
        "trust_remote_code": cfg.trust_remote_code,
        "split": split,
    }


def _absolute_if_local(base: str) -> str:
    """A base that exists as a folder here, made absolute: train.py runs inside the run folder."""
    try:
        path = Path(base).expanduser()
        return str(path.resolve()) if path.exists() else base
    except (OSError, ValueError):  # not a usable path (too long, a NUL): a hub id or an error for training to report
        return base


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only a {% tag %} leaves nothing behind
        lstrip_blocks=True,
    )
    env.filters["pyrepr"] = pyrepr
    return env


def render_script(values: dict[str, Any]) -> str:
    """The training script's text; compiled once here so a broken render never reaches disk."""
    import jinja2

    for name, allowed in CHOICES.items():
        if name in values and values[name] not in allowed:
            raise SkillError(f"cannot render {TEMPLATE}: {name}={values[name]!r} is not one of {', '.join(allowed)}", fix="choose one of the listed values")
    try:
        text = _environment().get_template(TEMPLATE).render(**values)
    except (jinja2.UndefinedError, TypeError) as exc:
        raise SkillError(f"cannot render {TEMPLATE}: {exc}", fix="report this: the template and the configuration disagree") from None
    compile(text, SCRIPT, "exec")
    return text


def small_data_advice(n_pairs: int, values: dict[str, Any]) -> str | None:
    """A warning with exact flags when the published global batch leaves too few optimizer steps."""
    steps = n_pairs * values["epochs"] / values["global_batch"]
    if values["max_steps"] or steps >= MIN_STEPS_PER_EPOCH:
        return None
    batch = max(16, 2 ** int(math.log2(max(16, n_pairs // MIN_STEPS_PER_EPOCH))))
    lr = values["learning_rate"] * math.sqrt(batch / values["global_batch"])
    return (
        f"{n_pairs:,} training pairs at global batch {values['global_batch']} is only {steps:.0f} optimizer steps per epoch; "
        f"for small data try --global-batch {batch} --learning-rate {lr:.2g} (references/sizes-and-hyperparameters.md)"
    )


def run_commands(run: Path) -> list[str]:
    script = run / SCRIPT
    return [f"python {script}", f"accelerate launch {script}", f"torchrun --nproc_per_node N {script}", f"python {script} --smoke", f"python {script} --resume"]


def selection_split(run: Run) -> str:
    """ "heldout" for a run folder that has held-out candidates but no dev split (from before dev splits); else "dev"."""
    has_dev = run.file(DEV_CANDIDATES).exists() and run.file(QRELS_DEV).exists()
    return "heldout" if not has_dev and run.file(HELDOUT_CANDIDATES).exists() else "dev"


def size_meaning(values: dict[str, Any]) -> str:
    """What --size means for this render: the Ettin model itself, or only the defaults taken from its row of the ladder."""
    spec = size_spec(values["size"])
    taken = [
        f"{name} {values[key]:g}"
        for key, name, default in (("learning_rate", "lr", spec.learning_rate), ("global_batch", "global batch", spec.global_batch))
        if values[key] == default
    ]
    if values["base"] == spec.base:
        return (
            f"Ettin {values['size']} ({spec.params_m:g}M parameters; {', '.join(taken) or 'lr and global batch overridden'} from its row of ettin_sizes.yaml)"
        )
    verb = "comes" if len(taken) == 1 else "come"
    defaults = (
        f"{' and '.join(taken)} {verb} from the Ettin {values['size']} row of ettin_sizes.yaml"
        if taken
        else f"the Ettin {values['size']} row's lr and global batch are both overridden"
    )
    return f"base {values['base']} as {values['base_kind']}, not an Ettin model: --size only picks defaults ({defaults})"


def measure_stage(run: Run, *, timeout: float = 900) -> dict:
    """Run `train.py --estimate`: the script measures training and scoring pairs/s on this machine on real pairs and
    prints the expected wall time of the whole `train` stage. Returns its ESTIMATE record; raises SkillError when it fails."""
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    script = run.file(SCRIPT).resolve()  # absolute: the script runs in the run folder, and --run may be relative
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--estimate"], cwd=run.path, env=env, capture_output=True, text=True, timeout=timeout, errors="replace"
        )
    except subprocess.TimeoutExpired:
        raise SkillError(
            f"measuring the speed took over {timeout:.0f} s", fix="skip it with --no-estimate; `train` prints the estimate when it starts"
        ) from None
    found = [line for line in proc.stdout.splitlines() if line.startswith("ESTIMATE ")]
    if proc.returncode != 0 or not found:
        last = next((line for line in reversed((proc.stdout + proc.stderr).splitlines()) if line.strip()), "(no output)")
        raise SkillError(f"train.py --estimate failed: {last[:300]}", fix=f"run `python {script} --estimate` to see why")
    plan = next((line for line in proc.stdout.splitlines() if line.startswith("plan: ")), "")
    return {**json.loads(found[-1].removeprefix("ESTIMATE ")), "plan": plan}


def render(run: str | Path, cfg: TrainConfig, *, force: bool = False, estimate: bool = False) -> Result:
    """Write runs/NAME/train.py for `cfg`; with `estimate`, also measure the speed here and say how long `train` will take."""
    run_ = Run(run)
    values = resolve(cfg, split=selection_split(run_))
    text = render_script(values)
    target = run_.file(SCRIPT)
    previous = run_.stage("render")
    warnings: list[str] = []
    if target.exists() and not force and (previous is None or previous.status == "ok"):  # after an interrupted render, the file is ours
        recorded = previous.metrics.get("script_sha256") if previous else None
        if recorded != hash_file(target) and target.read_text(encoding="utf-8") != text:
            raise invalid(
                "train.py was edited by hand (it differs from what render last wrote)",
                where=str(target),
                fix="keep your edits and run `python train.py`, or pass --force to overwrite it",
            )
    spec = size_spec(values["size"])
    scores = run_.file(SCORES)
    n_pairs = None
    if scores.exists():
        import pyarrow.parquet as pq

        n_pairs = pq.ParquetFile(scores).metadata.num_rows
        if advice := small_data_advice(n_pairs, values):
            warnings.append(advice)
    else:
        warnings.append(f"{scores} does not exist yet: run `reranker-skill mine` and `reranker-skill score` before training")
    if values["split"] != "dev":
        warnings.append("no dev split in this run folder: checkpoints will be chosen on held-out queries (optimistic) — re-run `reranker-skill mine`")
    # Rewriting an identical script is a no-op: the manifest and the file stay as they are.
    stage = Stage(run_, "render", config=values, inputs={})
    unchanged = stage.fresh() is not None and target.read_text(encoding="utf-8") == text
    if not unchanged:
        with stage.transaction() as tx:
            staged = write_text(tx.path("script"), text)
            tx.metrics.update({"script_sha256": hash_file(staged), "train_memory_gb_estimate": spec.train_memory_gb})
    commands = run_commands(run_.path)
    lines = [
        f"wrote {target} ({len(text.splitlines())} lines): {size_meaning(values)}; loss {values['loss']} on {values['label_transform']} labels,"
        f" lr {values['learning_rate']:g}, global batch {values['global_batch']}"
        + (f", {values['max_minutes']:g}-minute budget for train.py after its imports" if values["max_minutes"] else ""),
    ]
    measured = None
    offline_hub_base = not is_local_folder(values["base"]) and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if estimate and n_pairs and offline_hub_base:
        warnings.append(f"no time estimate: the base {values['base']!r} is a hub id and HF_HUB_OFFLINE is set; `train` prints the estimate when it starts")
    elif estimate and n_pairs:
        try:
            measured = measure_stage(run_)
            lines.append(f"expected wall time of `train`: {measured['seconds'] / 60:.1f} min — {measured['plan'].removeprefix('plan: ')}")
        except SkillError as err:
            warnings.append(f"no time estimate: {err.message} ({err.fix})")
    lines += ["run it with one of:", *(f"  {c}" for c in commands), f"or: reranker-skill train --run {run_.path}"]
    metrics = {**values, "size_meaning": size_meaning(values), "train_pairs": n_pairs, "train_memory_gb_estimate": spec.train_memory_gb, "commands": commands}
    metrics |= {"skipped": unchanged, "estimate": measured, "script_lines": len(text.splitlines())}
    return Result(artifacts={"script": str(target)}, metrics=metrics, warnings=warnings, text="\n".join(lines))
