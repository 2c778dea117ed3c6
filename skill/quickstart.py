"""`quickstart`: the whole pipeline offline, on an embedded domain, in about ten CPU minutes.

The domain is built from the standard library's docstrings (query = a docstring's summary,
document = its body); BM25 is the first stage; the packaged all-MiniLM-L6-v2 is the offline
teacher (cosine) and the student's initial weights. These are stand-ins: they show the pipeline and
the small-budget recipe working end to end, not what mxbai-rerank-large-v2 and an Ettin student
reach on a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from skill.domain import build_stdlib_domain
from skill.envelope import Result
from skill.errors import ExitCode

RECIPE = "cpu-offline.yaml"
CONNECTED = (
    "reranker-skill run recipes/ettin-17m-gpu.yaml --set run=runs/mydomain "
    "--set data.corpus=corpus.jsonl --set data.queries=queries.jsonl --set data.qrels=qrels.tsv"
)
STAND_INS = (
    "Offline stand-ins: the domain is the standard library's docstrings (summary → body); the first stage is "
    "BM25; the teacher is the packaged all-MiniLM-L6-v2 (cosine), not a cross-encoder; the student starts from "
    "MiniLM's weights, not an Ettin encoder, and trains for about five CPU minutes. This shows every stage working "
    "end to end on 2 CPU cores, and the report above says whether the student, and the student fused with BM25 at the "
    "weight chosen on dev queries, beat BM25 on the held-out queries (measured curves: references/small-budgets.md). "
    "It cannot show what mxbai-rerank-large-v2 and an Ettin student reach with a GPU."
)


def quickstart(*, run_dir: Path, overrides: tuple[str, ...] = (), max_queries: int = 1600, force: bool = False, log=print) -> Result:
    from skill.pipeline import run_pipeline
    from skill.recipe import load_recipe

    started = time.time()
    data_dir = Path(run_dir) / "data"
    log(f"==> building the standard-library docstring domain in {data_dir}")
    paths = build_stdlib_domain(data_dir, max_pairs=max_queries)
    cfg = load_recipe(
        RECIPE,
        [f"run={run_dir}", f"data.corpus={paths['corpus']}", f"data.queries={paths['queries']}", f"data.qrels={paths['qrels']}", *overrides],
    )
    result = run_pipeline(cfg, force=force, log=log)
    minutes = round((time.time() - started) / 60, 2)
    result.metrics["minutes"] = minutes
    result.inputs.update({"recipe": RECIPE, "run": str(run_dir)})
    tail = [
        "",
        f"quickstart finished in {minutes:.1f} min" if result.exit_code == ExitCode.OK else f"quickstart stopped after {minutes:.1f} min",
        STAND_INS,
        f"With a GPU and the hub, run instead: {CONNECTED}",
    ]
    result.text = "\n".join([result.text, *tail])
    return result
