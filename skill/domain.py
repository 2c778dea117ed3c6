"""A small real retrieval domain built from the standard library's docstrings.

Every Python installation has it, so the quickstart, tests and benchmarks can run offline on
real English text. Query = a docstring's first paragraph (the summary); its one relevant
document = the rest of that docstring (the body). Hard enough for reranking to matter:
BM25 NDCG@10 ≈ 0.47, MiniLM dense ≈ 0.53.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pkgutil
import sys
import warnings
from pathlib import Path

from skill.io import atomic_path

# Modules that print, open windows, start services or are slow to import.
_SKIP_PREFIXES = (
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "pydoc_data",
    "msilib",
    "winreg",
    "winsound",
    "_",
)


def _module_names(packages: tuple[str, ...] | None = None) -> list[str]:
    """Modules to read docstrings from, sorted: the standard library's (packages None), or the named
    installed packages and their submodules."""
    if packages is None:
        tops = [
            info
            for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name)
            if info.name in sys.stdlib_module_names and not info.name.startswith(_SKIP_PREFIXES)
        ]
    else:
        tops = [info for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name) if info.name in packages]
        unknown = sorted(set(packages) - {info.name for info in tops})
        if unknown:
            raise ValueError(f"not installed: {', '.join(unknown)}")
    skipped_leaves = ("test", "tests", "idle_test") if packages is None else ("test", "tests", "testing", "conftest")
    names: list[str] = []
    for info in tops:
        names.append(info.name)
        if info.ispkg:
            try:
                package = importlib.import_module(info.name)
            except Exception:
                continue
            for sub in sorted(pkgutil.walk_packages(package.__path__, prefix=info.name + ".", onerror=lambda _: None), key=lambda m: m.name):
                leaf = sub.name.rsplit(".", 1)[-1]
                if leaf.startswith("_") or leaf in skipped_leaves or ".test" in sub.name:
                    continue
                names.append(sub.name)
    return names


def _docstrings(max_pairs: int, packages: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """(id, summary, body) triples, deterministic for a given Python (and package) version."""
    seen_bodies: set[str] = set()
    seen_summaries: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for mod_name in _module_names(packages):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(mod_name)
        except Exception:
            continue
        objects = [(mod_name, module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                objects.append((f"{mod_name}.{attr}", obj))
                if inspect.isclass(obj):
                    for meth_name, meth in sorted(vars(obj).items()):
                        if not meth_name.startswith("_") and inspect.isfunction(meth):
                            objects.append((f"{mod_name}.{attr}.{meth_name}", meth))
        for qualname, obj in objects:
            doc = inspect.getdoc(obj) or ""
            parts = [p.strip() for p in doc.split("\n\n") if p.strip()]
            if len(parts) < 2:
                continue
            summary = " ".join(parts[0].split())
            body = "\n\n".join(parts[1:])
            if not (20 <= len(summary) <= 300) or len(body) < 80 or summary in seen_summaries or body in seen_bodies:
                continue
            seen_summaries.add(summary)
            seen_bodies.add(body)
            out.append((qualname, summary, body[:2000]))
            if len(out) >= max_pairs:
                return out
    return out


def build_stdlib_domain(out_dir: str | Path, *, max_pairs: int = 1600, distractors: int = 0) -> dict[str, Path]:
    """Write corpus.jsonl, queries.jsonl and qrels.tsv (BEIR layout) to `out_dir`, from the standard library.

    Each query has exactly one relevant document. `distractors` adds that many extra
    bodies (from further docstrings) with no query, to make retrieval harder.
    """
    return build_docstring_domain(out_dir, packages=None, max_pairs=max_pairs, distractors=distractors)


def build_docstring_domain(out_dir: str | Path, *, packages: tuple[str, ...] | None, max_pairs: int = 1600, distractors: int = 0) -> dict[str, Path]:
    """The same layout from the docstrings of installed `packages` (e.g. ("numpy",)); None: the standard library.

    A second real domain for tests that must not be the quickstart's (another vocabulary, another style).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    triples = _docstrings(max_pairs + distractors, packages)
    pairs, extra = triples[:max_pairs], triples[max_pairs:]

    def doc_id(name: str) -> str:
        return "d" + hashlib.sha1(name.encode()).hexdigest()[:10]

    paths = {"corpus": out_dir / "corpus.jsonl", "queries": out_dir / "queries.jsonl", "qrels": out_dir / "qrels.tsv"}
    with atomic_path(paths["corpus"]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for name, _, body in pairs + extra:
            fh.write(json.dumps({"_id": doc_id(name), "title": "", "text": body}) + "\n")
    with atomic_path(paths["queries"]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for name, summary, _ in pairs:
            fh.write(json.dumps({"_id": "q" + doc_id(name)[1:], "text": summary}) + "\n")
    with atomic_path(paths["qrels"]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for name, _, _ in pairs:
            fh.write(f"q{doc_id(name)[1:]}\t{doc_id(name)}\t1\n")
    return paths
