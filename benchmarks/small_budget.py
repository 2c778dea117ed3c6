"""Small-budget distillation on the standard-library docstring domain (issues 8 and 15).

Held-out NDCG@10 of the first stage, the teacher, the student and the student fused with the first
stage (α chosen by train.py on the dev queries) after 5, 10 and 20 CPU minutes of training, each
with several seeds, in one table: mean and range over the seeds, and how many seeds the student
alone (and the fused system) won against the first stage (ΔNDCG@10 ≥ +0.01, p < 0.05, `evaluate`'s
paired test). A seed sets both the query split (`mine --seed`) and the training seed; mining and
teacher scoring run once per seed, then each budget trains from the same base with the quickstart
recipe's settings.

    python benchmarks/small_budget.py                      # 5, 10, 20 minutes x 3 seeds (about 2.5 hours on 2 idle cores)
    python benchmarks/small_budget.py --minutes 5 --seeds 1  # one budget, one seed (the quickstart's own split and seed)
    python benchmarks/small_budget.py --steps 370 740      # budgets in optimizer steps instead of minutes (a loaded machine)
    python benchmarks/small_budget.py --set train.loss=mse --set train.label_transform=raw   # another configuration
    python benchmarks/small_budget.py --table runs/a/small_budget.json runs/b/small_budget.json  # one table from earlier runs

Wall-clock budgets are only comparable on an idle machine: on a shared one the same minutes give
fewer steps (the table shows the steps each budget reached).
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

FIRST_SEED = 12  # the recipe's default split and training seed: seed 1 of the sweep is the quickstart itself
SYSTEMS = ("first stage", "teacher", "student", "fused")


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    """`mean [min–max]` over seeds (just the value for one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    return fmt.format(mean) if len(values) == 1 else f"{fmt.format(mean)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, nargs="+", help="training budgets in wall-clock minutes (default 5 10 20)")
    budget.add_argument("--steps", type=int, nargs="+", help="training budgets in optimizer steps instead of minutes")
    parser.add_argument(
        "--seeds", type=int, default=3, help=f"how many seeds ({FIRST_SEED}, {FIRST_SEED + 1}, …): each sets the query split and the training seed"
    )
    parser.add_argument("--root", type=Path, default=Path("runs/bench-small-budget"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. train.loss=mse")
    parser.add_argument(
        "--table",
        type=Path,
        nargs="+",
        metavar="SMALL_BUDGET_JSON",
        help="print one table from the small_budget.json of earlier runs (e.g. one run per budget) and exit",
    )
    args = parser.parse_args()
    if args.table:
        rows = [row for path in args.table for row in json.loads(path.read_text())]
        print_tables(rows, [(r["unit"], r["budget"]) for r in rows])
        return
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    budgets = [("steps", float(s)) for s in args.steps] if args.steps else [("minutes", m) for m in (args.minutes or [5.0, 10.0, 20.0])]

    from skill.domain import build_stdlib_domain
    from skill.evaluate import FUSED, evaluate
    from skill.mine import OUTPUTS as MINED
    from skill.mine import mine
    from skill.quickstart import RECIPE as QUICKSTART_RECIPE
    from skill.recipe import load_recipe
    from skill.render import render
    from skill.score import OUTPUTS as SCORED
    from skill.score import score
    from skill.train import train

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    paths = build_stdlib_domain(args.root / "data")
    data = [f"data.corpus={paths['corpus']}", f"data.queries={paths['queries']}", f"data.qrels={paths['qrels']}"]
    rows = []
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        shared = args.root / f"seed-{seed}" / "shared"
        cfg = load_recipe(QUICKSTART_RECIPE, [f"run={shared}", *data, f"mine.seed={seed}", f"train.seed={seed}", *args.overrides])
        t0 = time.time()
        for name, result in (("mine", mine(shared, cfg.data, cfg.mine)), ("score", score(shared, cfg.score))):
            if result.exit_code:
                sys.exit(f"{name} (seed {seed}) failed: {result.errors}")
        mine_score_min = (time.time() - t0) / 60
        log(f"seed {seed}: mine + score {mine_score_min * 60:.0f}s")
        for unit, amount in budgets:
            run = args.root / f"seed-{seed}" / f"train-{amount:g}{'steps' if unit == 'steps' else 'min'}"
            if run.exists():
                shutil.rmtree(run)
            run.mkdir(parents=True)
            for name in ("manifest.json", *MINED.values(), *SCORED.values()):
                shutil.copy(shared / name, run / name)
            if unit == "minutes":
                # The minutes end training, not the epoch count: at ~20 pairs/s one epoch of the quickstart data is ~9 minutes.
                update = {"max_minutes": amount, "max_steps": None, "epochs": max(cfg.train.epochs or 1.0, 10.0)}
            else:
                update = {"max_minutes": None, "max_steps": int(amount)}
            train_cfg = cfg.train.model_copy(update={**update, "early_stopping_patience": 0})
            render(run, train_cfg, force=True)
            started = time.time()
            trained = train(run, None, force=True)
            if trained.exit_code:
                sys.exit(f"train ({amount:g} {unit}, seed {seed}) failed: {trained.errors}")
            train_minutes = (time.time() - started) / 60
            started = time.time()
            report_result = evaluate(run, cfg.evaluate, force=True)
            evaluate_minutes = (time.time() - started) / 60
            report = json.loads((run / "report.json").read_text())
            ndcg = report["summary"]["ndcg@10"]
            rows.append(
                {
                    "unit": unit,
                    "budget": amount,
                    "seed": seed,
                    "wall_min": round(train_minutes, 2),
                    "mine_score_min": round(mine_score_min, 2),
                    "evaluate_min": round(evaluate_minutes, 2),
                    "steps": trained.metrics["global_step"],
                    "pairs_per_s": trained.metrics["train_pairs_per_second"],
                    "first stage": ndcg.get("first stage"),
                    "teacher": ndcg.get("teacher"),
                    "student": ndcg.get("student"),
                    "fused": ndcg.get(FUSED),
                    "delta": report["verdict"]["delta"],
                    "p": report["verdict"]["p_value"],
                    "verdict": report["verdict"]["label"] if report_result.exit_code in (0, 7) else "COLLAPSED",
                    "alpha": trained.metrics.get("fusion_alpha"),
                    "fused_delta": report["summary"].get("fused_delta_ndcg@10"),
                    "fused_p": report["summary"].get("fused_p_value"),
                    "fused_verdict": report["summary"].get("fused_verdict"),
                    "serve": report["recommendation"]["system"],
                    "heldout_queries": report["data"]["queries_evaluated"],
                    "load": round(os.getloadavg()[0], 2),
                }
            )
            log(json.dumps(rows[-1]))

    print_tables(rows, budgets, config=cfg.train.model_dump(exclude_none=True, exclude_defaults=True), depth=cfg.mine.eval_top_k)
    (args.root / "small_budget.json").write_text(json.dumps(rows, indent=2) + "\n")


def print_tables(rows: list[dict], budgets: list[tuple[str, float]], *, config: dict | None = None, depth: int | str = 20) -> None:
    """One table of mean [min–max] over seeds per budget, then one row per seed."""
    seeds = sorted({r["seed"] for r in rows})
    queries = sorted({r["heldout_queries"] for r in rows})
    unit_label = "budget (steps or min)"
    print(
        f"\nSmall-budget distillation, standard-library docstrings, seeds {', '.join(map(str, seeds))} (split and training), {'/'.join(map(str, queries))} held-out queries,"
    )
    print(f"NDCG@10 of the first stage's top-{depth}: mean [min–max] over seeds; WIN = ΔNDCG@10 ≥ +0.01 and p < 0.05 against the first stage")
    if config is not None:
        print(f"config: {json.dumps(config)}")
    header = [
        unit_label,
        "seeds",
        "train wall min",
        "steps",
        "train pairs/s",
        *SYSTEMS,
        "Δ student−first",
        "student WIN",
        "α (dev), per seed",
        "Δ fused−first",
        "fused WIN",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for unit, amount in dict.fromkeys(budgets):
        group = [r for r in rows if r["budget"] == amount and r["unit"] == unit]
        cells = [
            f"{amount:g} {unit}",
            str(len(group)),
            spread([r["wall_min"] for r in group], "{:.1f}"),
            spread([r["steps"] for r in group], "{:.0f}"),
            spread([r["pairs_per_s"] for r in group], "{:.1f}"),
        ]
        cells += [spread([r[s] for r in group]) for s in SYSTEMS]
        cells += [spread([r["delta"] for r in group], "{:+.4f}"), f"{sum(r['verdict'] == 'WIN' for r in group)}/{len(group)}"]
        cells += [", ".join(f"{r['alpha']:g}" if r["alpha"] is not None else "–" for r in group), spread([r["fused_delta"] for r in group], "{:+.4f}")]
        cells += [f"{sum(r['fused_verdict'] == 'WIN' for r in group)}/{len(group)}"]
        print("| " + " | ".join(cells) + " |")
    print("\nPer seed:")
    per_seed = [unit_label, "seed", "steps", *SYSTEMS, "student Δ, p", "verdict", "α", "fused Δ, p", "fused verdict", "SERVE", "load"]
    print("| " + " | ".join(per_seed) + " |")
    print("|" + "---|" * len(per_seed))
    for r in rows:
        fused = f"{r['fused_delta']:+.4f}, p = {r['fused_p']:.3g}" if r["fused_delta"] is not None else "–"
        systems = [f"{r[s]:.4f}" if r[s] is not None else "–" for s in SYSTEMS]
        print(
            f"| {r['budget']:g} {r['unit']} | {r['seed']} | {r['steps']} | {' | '.join(systems)} | {r['delta']:+.4f}, p = {r['p']:.3g} | {r['verdict']} | {r['alpha']} | {fused} | {r['fused_verdict']} | {r.get('serve', '–')} | {r.get('load', '–')} |"
        )


if __name__ == "__main__":
    main()
