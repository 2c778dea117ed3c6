"""`export`: a trained reranker to ONNX (fp32, optionally int8), checked for parity before it ships.

The exported folder is a sentence-transformers CrossEncoder folder in the layout the library's
backend helpers write — the modules (pooling, head) as saved by `CrossEncoder.save`, Identity
activation kept, and the transformer as `onnx/model.onnx` (int8: `onnx/model_qint8_quantized.onnx`)
— so `CrossEncoder(DIR, backend="onnx")` loads it. The graph is traced with `torch.onnx.export`
and quantised with onnxruntime's dynamic quantiser: Optimum's own exporter (which the helpers
call) does not run under transformers 5, while its loader does.

Parity: the original and the exported model score the same held-out pairs (the run's
`heldout_candidates.parquet`, or a small built-in sample); the drift, NDCG@10 of both and the
per-query top-10 overlap are reported, and the command fails past the tolerances
(`Tolerances`): exit 6 when fp32 fails (nothing is published), exit 7 when only int8 fails
(fp32 is published, the int8 file is not).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from skill.envelope import Result
from skill.errors import ExitCode, SkillError, invalid, missing, prerequisite
from skill.io import make_temp_dir, read_json, swap_in, write_json
from skill.onnx import ONNX_FILE, onnx_unsupported, trace_onnx, use_graph
from skill.runfolder import EXPORT, HELDOUT_CANDIDATES, QRELS_HELDOUT, STUDENT

__all__ = ["INT8_FILE", "ONNX_FILE", "Tolerances", "check_reranker_folder", "export_model", "trace_onnx"]

MARKER = "parity.json"
INT8_FILE = "onnx/model_qint8_quantized.onnx"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerances:
    """Past these the export fails. fp32 must reproduce scores; int8 must keep the ranking."""

    fp32_max_drift: float = 1e-3  # max |score_exported - score_original|, raw-score units
    int8_min_top10_overlap: float = 0.7  # mean over queries of |top10 ∩ top10'| / min(10, n)
    int8_max_ndcg_drop: float = 0.02  # NDCG@10(original) - NDCG@10(int8), when labels exist


# ---------------------------------------------------------------------------------------- the model


def check_reranker_folder(path: Path) -> str:
    """Fail clearly unless `path` is a local reranker folder; returns its kind."""
    from skill.modeling import model_folder_kind

    if not path.exists():
        raise missing(f"model folder not found: {path}", where=str(path), fix="pass --model a trained reranker folder (e.g. runs/NAME/student)")
    if not path.is_dir():
        raise invalid("--model must be a folder, not a file", where=str(path), fix="pass the folder that holds modules.json / config.json")
    kind = model_folder_kind(path)
    if kind == "reranker":
        return "sentence-transformers CrossEncoder" if (path / "modules.json").exists() else "transformers sequence classifier"
    if kind == "bi-encoder":
        raise invalid(
            "this folder is a SentenceTransformer (an embedding model), not a reranker",
            where=str(path),
            fix="export a CrossEncoder folder — the `student/` that `train` writes, or any sentence-transformers CrossEncoder",
        )
    if kind == "none":
        raise invalid(
            "not a model folder (no readable modules.json or config.json)", where=str(path), fix="pass a CrossEncoder folder (e.g. runs/NAME/student)"
        )
    raise invalid(
        f"a {kind} model, not a one-score reranker",
        where=str(path / "config.json"),
        fix="export a CrossEncoder / *ForSequenceClassification model with num_labels=1",
    )


def _load_original(path: Path):
    from skill.loading import load_cross_encoder

    model = load_cross_encoder(str(path), role="model", flag="--model", device="cpu")
    if model.num_labels != 1:
        raise invalid(f"the reranker emits {model.num_labels} scores per pair; export supports one", where=str(path), fix="export a num_labels=1 reranker")
    reason = onnx_unsupported(model)
    if reason:
        raise invalid(
            reason + "; export handles a transformer encoder or sequence classifier",
            where=str(path),
            fix="export a CrossEncoder whose first module is a Transformer",
        )
    return model


def _export_onnx(model, folder: Path, *, opset: int = 17) -> dict[str, Any]:
    """Write the torch modules (head, tokenizer, config) and the transformer as onnx/model.onnx."""
    model.save(str(folder))
    # The transformer's own weights now live in the ONNX graph; the head's stay in their module folders.
    for name in _WEIGHT_FILES:
        (folder / name).unlink(missing_ok=True)
    return trace_onnx(model, folder / ONNX_FILE, opset=opset)


def _quantize_int8(folder: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise prerequisite("int8 export needs onnxruntime", fix='pip install "reranker-skill[onnx]"') from None
    # Dynamic int8 of the matrix products only: quantising the embedding table costs ranking quality for little speed.
    quantize_dynamic(str(folder / ONNX_FILE), str(folder / INT8_FILE), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def load_exported(folder: Path, original_path: Path, file_name: str) -> tuple[Any, str, str | None]:
    """The exported model as a CrossEncoder: through `backend="onnx"` (Optimum), else through onnxruntime directly."""
    import torch
    from sentence_transformers import CrossEncoder

    try:
        with _quiet():
            model = CrossEncoder(
                str(folder),
                backend="onnx",
                device="cpu",
                activation_fn=torch.nn.Identity(),
                model_kwargs={"file_name": file_name, "provider": "CPUExecutionProvider"},
            )
        return model, 'sentence-transformers backend="onnx"', None
    except Exception as exc:  # Optimum missing or incompatible: still measure the graph itself
        reason = f'CrossEncoder(DIR, backend="onnx") did not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); parity measured with onnxruntime directly'
    model = _load_original(original_path)
    use_graph(model, folder / file_name)
    return model, "onnxruntime", reason


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("sentence_transformers", "optimum", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------- parity pairs


@dataclass
class ParitySet:
    source: str
    queries: list[str]  # query id per pair
    pairs: list[tuple[str, str]]
    doc_ids: list[str]
    qrels: dict[str, dict[str, float]]  # empty when unlabelled


def parity_from_run(run_path: Path, *, max_queries: int, depth: int) -> ParitySet:
    from skill.io import read_parquet

    path = run_path / HELDOUT_CANDIDATES
    if not path.exists():
        raise missing(
            "the run has no held-out candidates to check parity on",
            where=str(path),
            fix=f"run `reranker-skill mine --run {run_path} ...` first, or omit --run to use the built-in sample",
        )
    try:
        table = read_parquet(path).to_pylist()
    except Exception as exc:
        raise invalid(f"cannot read held-out candidates ({type(exc).__name__})", where=str(path), fix="rerun `mine --force`") from None
    need = {"query_id", "doc_id", "query", "document", "rank"}
    if table and not need <= set(table[0]):
        raise invalid(f"held-out candidates lack columns {sorted(need - set(table[0]))}", where=str(path), fix="rerun `mine --force` with this version")
    by_query: dict[str, list[dict]] = {}
    for row in table:
        by_query.setdefault(str(row["query_id"]), []).append(row)
    chosen = sorted(by_query)[:max_queries]
    if not chosen:
        raise invalid("held-out candidates are empty", where=str(path), fix="rerun `mine` with more held-out queries")
    qrels: dict[str, dict[str, float]] = {}
    qrels_path = run_path / QRELS_HELDOUT
    if qrels_path.exists():
        qrels = {str(q): {str(d): float(g) for d, g in docs.items()} for q, docs in read_json(qrels_path).items()}
    else:
        for row in table:
            if row.get("relevance"):
                qrels.setdefault(str(row["query_id"]), {})[str(row["doc_id"])] = float(row["relevance"])
    out = ParitySet(source=str(path), queries=[], pairs=[], doc_ids=[], qrels={q: qrels[q] for q in chosen if q in qrels})
    for q in chosen:
        rows = sorted(by_query[q], key=lambda r: (int(r["rank"]) <= 0, int(r["rank"])))[:depth]
        for r in rows:
            out.queries.append(q)
            out.pairs.append((str(r["query"]), str(r["document"])))
            out.doc_ids.append(str(r["doc_id"]))
    return out


def builtin_parity(*, max_queries: int, depth: int) -> ParitySet:
    """Standard-library docstrings: each summary against its own body and the next `depth - 1` bodies."""
    from skill.domain import _docstrings

    triples = _docstrings(max_queries + depth)
    n_queries = min(max_queries, len(triples))
    out = ParitySet(source="built-in sample (standard-library docstrings)", queries=[], pairs=[], doc_ids=[], qrels={})
    for i in range(n_queries):
        qid, summary, _ = triples[i]
        out.qrels[qid] = {triples[i][0]: 1.0}
        for j in range(min(depth, len(triples))):
            did, _, body = triples[(i + j) % len(triples)]
            out.queries.append(qid)
            out.pairs.append((summary, body))
            out.doc_ids.append(did)
    return out


# ---------------------------------------------------------------------------------------- metrics


def _ndcg10(ranked: list[str], gains: dict[str, float]) -> float:
    dcg = sum((2 ** gains.get(d, 0.0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(gains.values(), reverse=True)[:10]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def compare(ps: ParitySet, original, exported) -> dict[str, Any]:
    """Drift and ranking agreement of `exported` against `original` scores on the parity set."""
    import numpy as np

    a, b = np.asarray(original, dtype=np.float64), np.asarray(exported, dtype=np.float64)
    drift = np.abs(a - b)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(ps.queries):
        groups.setdefault(q, []).append(i)
    overlaps, nd_a, nd_b = [], [], []
    for q, idx in groups.items():
        top_a = [ps.doc_ids[i] for i in sorted(idx, key=lambda i: -a[i])]
        top_b = [ps.doc_ids[i] for i in sorted(idx, key=lambda i: -b[i])]
        k = min(10, len(idx))
        overlaps.append(len(set(top_a[:k]) & set(top_b[:k])) / k)
        if ps.qrels.get(q):
            nd_a.append(_ndcg10(top_a, ps.qrels[q]))
            nd_b.append(_ndcg10(top_b, ps.qrels[q]))
    spread = float(a.std()) or 1.0
    out: dict[str, Any] = {
        "pairs": len(a),
        "queries": len(groups),
        "max_abs_drift": float(drift.max()),
        "mean_abs_drift": float(drift.mean()),
        "max_drift_over_score_std": float(drift.max() / spread),
        "top10_overlap_mean": float(np.mean(overlaps)),
        "top10_overlap_min": float(np.min(overlaps)),
    }
    if nd_a:
        out["labelled_queries"] = len(nd_a)
        out["ndcg@10_original"] = float(np.mean(nd_a))
        out["ndcg@10_exported"] = float(np.mean(nd_b))
        out["ndcg@10_drop"] = out["ndcg@10_original"] - out["ndcg@10_exported"]
    return out


def gate(variant: Literal["fp32", "int8"], metrics: dict[str, Any], tol: Tolerances) -> list[str]:
    """The tolerances this variant broke, as sentences (empty: it passes)."""
    failures = []
    if variant == "fp32":
        if not metrics["max_abs_drift"] <= tol.fp32_max_drift:
            failures.append(f"fp32 max |score drift| {metrics['max_abs_drift']:.3g} > {tol.fp32_max_drift:g}")
        return failures
    if not metrics["top10_overlap_mean"] >= tol.int8_min_top10_overlap:
        failures.append(f"int8 mean top-10 overlap {metrics['top10_overlap_mean']:.3f} < {tol.int8_min_top10_overlap:g}")
    if "ndcg@10_drop" in metrics and not metrics["ndcg@10_drop"] <= tol.int8_max_ndcg_drop:
        failures.append(f"int8 NDCG@10 drop {metrics['ndcg@10_drop']:.4f} > {tol.int8_max_ndcg_drop:g}")
    return failures


def _timed_predict(model, pairs: list[tuple[str, str]], batch_size: int) -> tuple[Any, float]:
    import torch

    with torch.inference_mode():
        model.predict(pairs[:batch_size], batch_size=batch_size, show_progress_bar=False)  # warm-up
        start = time.perf_counter()
        scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        seconds = time.perf_counter() - start
    return scores, len(pairs) / seconds if seconds > 0 else float("inf")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ---------------------------------------------------------------------------------------- the command


def _is_ours(folder: Path) -> bool:
    try:
        return bool(read_json(folder / MARKER).get("reranker_skill_export"))
    except (OSError, ValueError, AttributeError):
        return False


def export_model(
    *,
    model: Path | None,
    fmt: str = "onnx",
    quantize: str | None = None,
    run: Path | None = None,
    out: Path | None = None,
    queries: int = 32,
    depth: int = 30,
    batch_size: int = 32,
    tolerances: Tolerances = Tolerances(),
    force: bool = False,
) -> Result:
    from skill.manifest import Run, Stage

    if fmt != "onnx":
        raise invalid(f"unknown format {fmt!r}", fix="use --format onnx")
    run_obj = Run(run) if run is not None else None
    model_from_run = model is None
    if model is None:
        if run is None:
            raise SkillError(
                "give --model PATH (or --run runs/NAME to export its student/)",
                code=ExitCode.USAGE,
                fix="reranker-skill export --model runs/NAME/student --out DIR",
            )
        model = run / STUDENT
    if out is None:
        if run is None:
            raise SkillError(
                "give --out DIR (or --run runs/NAME to write into its export/ folder)",
                code=ExitCode.USAGE,
                fix="reranker-skill export --model PATH --out exported/",
            )
        out = run / EXPORT / ("onnx-int8" if quantize else "onnx")
    from skill.loading import PACKAGED_PREFIX, resolve_packaged

    model, out = Path(resolve_packaged(str(model)) if str(model).startswith(PACKAGED_PREFIX) else model), Path(out)
    kind = check_reranker_folder(model)
    _check_out(model, out)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise prerequisite("ONNX export needs onnx and onnxruntime", fix='pip install "reranker-skill[onnx]"') from None

    ps = parity_from_run(run, max_queries=queries, depth=depth) if run is not None else builtin_parity(max_queries=min(queries, 16), depth=min(depth, 10))
    if len(ps.pairs) == 0:
        raise invalid("no parity pairs", where=ps.source, fix="check the held-out candidates")
    stage = None
    config = {"format": fmt, "quantize": quantize, "out": str(out.resolve()), "queries": queries, "depth": depth, "tolerances": asdict(tolerances)}
    if run_obj is not None:  # the parity pairs (and the default model) come from finished, unchanged stages
        run_obj.require(["heldout_candidates", "qrels_heldout", *(["student"] if model_from_run else [])], needed_by="export")
        stage = Stage(
            run_obj,
            "export",
            config=config,
            inputs={"model": model, "heldout_candidates": run_obj.file(HELDOUT_CANDIDATES), "qrels_heldout": run_obj.file(QRELS_HELDOUT)},
        )
        skipped = stage.skip(
            force=force,
            result=lambda prev: Result(
                artifacts={"export": str(out), "parity": str(out / MARKER)},
                metrics={**prev.metrics, "skipped": True},
                text=f"export is up to date (unchanged model and config): {out}  — rerun with --force to redo",
            ),
        )
        if skipped is not None:
            return skipped

    with _quiet():
        original = _load_original(model)
    # The record says `running` from here: a kill while the new folder is swapped in leaves no `ok` over it.
    with stage.transaction() if stage is not None else contextlib.nullcontext() as tx:
        result = _build_and_publish(original, model, kind, out, ps, fmt=fmt, quantize=quantize, batch_size=batch_size, tolerances=tolerances)
        if tx is not None:
            if result.exit_code != ExitCode.OK:
                tx.fail(result.errors[0]["message"])
            else:
                tx.adopt("export", _rel(out, run))
                tx.metrics.update(result.metrics)
    return result


def _check_out(model: Path, out: Path) -> None:
    """--out may replace an earlier export or an empty folder, never one holding (or held by) the model it exports."""
    m, o = model.resolve(), out.resolve()
    if o == m or m in o.parents:
        raise invalid("--out must not be inside the model folder", where=str(out), fix="choose an --out outside the model folder")
    if o in m.parents:
        raise invalid(
            "--out contains the model being exported: replacing it would delete the model",
            where=str(out),
            fix=f"choose an --out that does not contain {model} (e.g. a new folder beside {o.name})",
        )
    if out.exists() and not (out.is_dir() and (_is_ours(out) or not any(out.iterdir()))):
        raise invalid("--out exists and is not an earlier export", where=str(out), fix="choose another --out, or remove that folder yourself")


def _build_and_publish(
    original, model: Path, kind: str, out: Path, ps: ParitySet, *, fmt: str, quantize: str | None, batch_size: int, tolerances: Tolerances
) -> Result:
    """Trace (and quantise) into a temporary folder beside `out`, check parity, and swap it in when fp32 passes."""
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.")
    warnings_out: list[str] = []
    try:
        t0 = time.perf_counter()
        graph = _export_onnx(original, tmp)
        export_seconds = time.perf_counter() - t0
        variants = {"fp32": ONNX_FILE}
        if quantize == "int8":
            _quantize_int8(tmp)
            variants["int8"] = INT8_FILE

        orig_scores, orig_speed = _timed_predict(original, ps.pairs, batch_size)
        report: dict[str, Any] = {
            "reranker_skill_export": 1,
            "model": str(model),
            "model_kind": kind,
            "format": fmt,
            "graph": graph,
            "parity_source": ps.source,
            "tolerances": asdict(tolerances),
            "original": {"pairs_per_s": round(orig_speed, 1), "size_bytes": _size(model), "backend": "torch (cpu)"},
            "threads": {"torch": _torch_threads()},
            "variants": {},
        }
        failures: dict[str, list[str]] = {}
        for variant, file_name in variants.items():
            exported, loaded_with, reason = load_exported(tmp, model, file_name)
            if reason and reason not in warnings_out:
                warnings_out.append(reason)
            scores, speed = _timed_predict(exported, ps.pairs, batch_size)
            metrics = compare(ps, orig_scores, scores)
            failures[variant] = gate(variant, metrics, tolerances)
            report["variants"][variant] = {
                "file": file_name,
                "loaded_with": loaded_with,
                "size_bytes": _size(tmp / file_name),
                "pairs_per_s": round(speed, 1),
                "speedup": round(speed / orig_speed, 2) if orig_speed else None,
                **metrics,
                "passed": not failures[variant],
                "failures": failures[variant],
            }
            del exported
        report["export_seconds"] = round(export_seconds, 2)

        if failures["fp32"]:
            report["published"] = False
            shutil.rmtree(tmp, ignore_errors=True)
            err = SkillError(
                "the exported model does not reproduce the original: " + "; ".join(failures["fp32"]),
                code=ExitCode.RUNTIME_FAILURE,
                where=str(model),
                fix="nothing was published; serve the torch model and report the model's architecture",
            )
            result = Result(
                metrics=_flat(report),
                warnings=warnings_out,
                errors=[err.as_dict()],
                status="error",
                exit_code=err.code,
                text=_text(report, out) + "\nFAILED: " + err.line(),
            )
            return result
        if failures.get("int8"):
            (tmp / INT8_FILE).unlink()
            report["variants"]["int8"]["file"] = None
            report["variants"]["int8"]["removed"] = True
        report["size_bytes"] = _size(tmp)
        report["published"] = True
        write_json(tmp / MARKER, report)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    result = Result(artifacts={"export": str(out), "parity": str(out / MARKER)}, metrics=_flat(report), warnings=warnings_out, text=_text(report, out))
    if failures.get("int8"):
        result.status, result.exit_code = "partial", ExitCode.PARTIAL
        result.errors.append(
            {
                "code": int(ExitCode.PARTIAL),
                "message": "; ".join(failures["int8"]),
                "where": str(out),
                "fix": "ship the fp32 model.onnx, or keep serving the torch model; the int8 file was not kept",
            }
        )
        result.text += "\nPARTIAL: " + "; ".join(failures["int8"]) + " — the int8 file was not kept; fp32 passed and is published"
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _rel(path: Path, run: Path) -> str:
    try:
        return str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path.resolve())


def _flat(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "original_pairs_per_s": report["original"]["pairs_per_s"],
        "original_size_bytes": report["original"]["size_bytes"],
        "export_size_bytes": report.get("size_bytes"),
        "parity_source": report["parity_source"],
        "export_seconds": report["export_seconds"],
    }
    for variant, m in report["variants"].items():
        for key in (
            "pairs_per_s",
            "speedup",
            "size_bytes",
            "max_abs_drift",
            "mean_abs_drift",
            "top10_overlap_mean",
            "top10_overlap_min",
            "ndcg@10_original",
            "ndcg@10_exported",
            "ndcg@10_drop",
            "passed",
            "loaded_with",
            "pairs",
            "queries",
        ):
            if key in m:
                out[f"{variant}_{key}"] = m[key]
    return out


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _text(report: dict[str, Any], out: Path) -> str:
    lines = [
        f"export {report['format']}: {report['model']} → {out}",
        f"parity pairs: {report['parity_source']}",
        f"{'variant':<9}{'size':>10}{'pairs/s':>10}{'max drift':>12}{'top-10 ovl':>12}{'NDCG@10':>9}  verdict",
        f"{'original':<9}{_mb(report['original']['size_bytes']):>10}{report['original']['pairs_per_s']:>10}{'':>12}{'':>12}"
        + (f"{next(iter(report['variants'].values())).get('ndcg@10_original', float('nan')):>9.4f}" if report["variants"] else ""),
    ]
    for variant, m in report["variants"].items():
        nd = f"{m['ndcg@10_exported']:>9.4f}" if "ndcg@10_exported" in m else f"{'-':>9}"
        verdict = "PASS" if m["passed"] else "FAIL: " + "; ".join(m["failures"])
        lines.append(f"{variant:<9}{_mb(m['size_bytes']):>10}{m['pairs_per_s']:>10}{m['max_abs_drift']:>12.2e}{m['top10_overlap_mean']:>12.3f}{nd}  {verdict}")
    lines.append(
        f'load: CrossEncoder("{out}", backend="onnx"'
        + (', model_kwargs={"file_name": "' + INT8_FILE + '"})' if "int8" in report["variants"] and report["variants"]["int8"]["passed"] else ")")
    )
    return "\n".join(lines)
