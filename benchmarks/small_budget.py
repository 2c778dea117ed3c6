"""Small-budget distillation on the standard-library docstring domain (issue 8).

Held-out NDCG@10 of the first stage, the teacher, the student and the student fused with the first
stage (α chosen by train.py on the dev queries) after 5, 10 and 20 CPU minutes of training, in one
table, with the paired test from `evaluate`. Mining and teacher scoring run once; each budget trains
from the same base with the quickstart recipe's small-budget settings.

    python benchmarks/small_budget.py                 # 5, 10, 20 minutes (about 45 minutes in all on 2 cores)
    python benchmarks/small_budget.py --minutes 5 10  # a shorter sweep
    python benchmarks/small_budget.py --set train.loss=mse --set train.label_transform=raw   # another configuration
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    parser.add_argument("--root", type=Path, default=Path("runs/bench-small-budget"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. train.loss=mse")
    args = parser.parse_args()

    from skill.domain import build_stdlib_domain
    from skill.evaluate import FUSED, evaluate
    from skill.mine import OUTPUTS as MINED
    from skill.mine import mine
    from skill.recipe import load_recipe
    from skill.render import render
    from skill.score import OUTPUTS as SCORED
    from skill.score import score
    from skill.train import train

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    paths = build_stdlib_domain(args.root / "data")
    shared = args.root / "shared"
    cfg = load_recipe(
        "quickstart-offline.yaml",
        [f"run={shared}", f"data.corpus={paths['corpus']}", f"data.queries={paths['queries']}", f"data.qrels={paths['qrels']}", *args.overrides],
    )
    t0 = time.time()
    for name, result in (("mine", mine(shared, cfg.data, cfg.mine)), ("score", score(shared, cfg.score))):
        if result.exit_code:
            sys.exit(f"{name} failed: {result.errors}")
    log(f"mine + score: {time.time() - t0:.0f}s")

    rows = []
    for minutes in args.minutes:
        run = args.root / f"train-{minutes:g}min"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        for name in ("manifest.json", *MINED.values(), *SCORED.values()):
            shutil.copy(shared / name, run / name)
        # The minutes end training, not the epoch count: at ~20 pairs/s one epoch of the quickstart data is ~9 minutes.
        train_cfg = cfg.train.model_copy(
            update={"max_minutes": minutes, "early_stopping_patience": 0, "epochs": max(cfg.train.epochs or 1.0, 10.0), "max_steps": None}
        )
        render(run, train_cfg, force=True)
        started = time.time()
        trained = train(run, None, force=True)
        if trained.exit_code:
            sys.exit(f"train ({minutes} min) failed: {trained.errors}")
        train_minutes = (time.time() - started) / 60
        report_result = evaluate(run, cfg.evaluate, force=True)
        report = json.loads((run / "report.json").read_text())
        ndcg = report["summary"]["ndcg@10"]
        rows.append(
            {
                "budget_min": minutes,
                "wall_min": round(train_minutes, 1),
                "steps": trained.metrics["global_step"],
                "pairs_per_s": trained.metrics["train_pairs_per_second"],
                "first_stage": ndcg.get("first stage"),
                "teacher": ndcg.get("teacher"),
                "student": ndcg.get("student"),
                "delta": report["verdict"]["delta"],
                "p": report["verdict"]["p_value"],
                "verdict": report["verdict"]["label"] if report_result.exit_code in (0, 7) else "COLLAPSED",
                "alpha": trained.metrics.get("fusion_alpha"),
                "fused": ndcg.get(FUSED),
                "fused_delta": report["summary"].get("fused_delta_ndcg@10"),
                "fused_p": report["summary"].get("fused_p_value"),
                "fused_verdict": report["summary"].get("fused_verdict"),
            }
        )
        log(json.dumps(rows[-1]))

    queries = report["data"]["queries_evaluated"]
    print(f"\nSmall-budget distillation, standard-library docstrings, {queries} held-out queries, NDCG@10 (first stage top-{cfg.mine.eval_top_k})")
    print(f"config: {json.dumps(cfg.train.model_dump(exclude_none=True, exclude_defaults=True))}")
    header = [
        "budget min",
        "wall min",
        "steps",
        "train pairs/s",
        "first stage",
        "teacher",
        "student",
        "Δ student−first",
        "p",
        "verdict",
        "α (dev)",
        "fused",
        "Δ fused−first",
        "p",
        "fused verdict",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            f"{r['budget_min']:g}",
            f"{r['wall_min']:.1f}",
            str(r["steps"]),
            f"{r['pairs_per_s']:.1f}",
            f"{r['first_stage']:.4f}",
            f"{r['teacher']:.4f}",
            f"{r['student']:.4f}",
            f"{r['delta']:+.4f}",
            f"{r['p']:.3f}",
            r["verdict"],
        ]
        if r["fused"] is not None:
            cells += [f"{r['alpha']:g}", f"{r['fused']:.4f}", f"{r['fused_delta']:+.4f}", f"{r['fused_p']:.3f}", r["fused_verdict"]]
        else:
            cells += ["–"] * 5
        print("| " + " | ".join(cells) + " |")
    (args.root / "small_budget.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
