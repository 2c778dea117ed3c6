"""The evaluation report as a person or an agent reads it: report.md (verdict first) and report.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skill.io import atomic_path, write_text

LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "map": "MAP", "recall@10": "Recall@10"}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("recall@", "Recall@"))


def _f(x, digits: int = 4, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def headline(report: dict) -> list[str]:
    """The lines that come before any table: the verdict, what to serve, then anything that makes them moot."""
    lines = [f"**{report['verdict']['line']}**", ""]
    if report.get("recommendation"):
        lines += [f"**{report['recommendation']['line']}**", ""]
    if report.get("fused_verdict"):
        lines += [report["fused_verdict"]["line"], ""]
    collapse = report["collapse"]
    if collapse["collapsed"]:
        lines += [
            f"**COLLAPSE — the student's scores barely vary within a query: {collapse['detail']}.** Rule: {collapse['rule']}. Its ranking is meaningless; retrain before using it.",
            "",
        ]
    gate = report["teacher_gate"]
    if gate["status"] == "fail":
        lines += [
            f"**TEACHER GATE FAILED — the teacher does not beat the first stage on held-out queries: {gate['detail']}. Distilling it cannot help.** Rule: {gate['rule']}. What to change:"
        ]
        lines += [f"- {a}" for a in gate.get("advice", [])]
        lines.append("")
    return lines


def summary_text(report: dict) -> str:
    return "\n".join(headline(report)).strip()


def serving_section(report: dict) -> list[str]:
    """What to serve: every system, cheapest first, with its quality, cost, needs and who beats it; then every pair's test."""
    rec = report.get("recommendation")
    if not rec:
        return []
    k = report["data"]["k"]
    out = [
        f"## What to serve (cheapest first; NDCG@10 on {report['data']['queries_evaluated']} held-out queries, cost at top-{k})",
        "",
        "| # | system | NDCG@10 | p50 ms/query | p95 ms/query | size MB | serving needs | beaten by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report["serving"].items():
        mean = report["systems"][name]["metrics"]["ndcg@10"]["mean"]
        beaten = ", ".join(f"{b['by']} ({_f(b['delta'], signed=True)}, p (Holm) {_p(b['p_holm'])})" for b in rec["beaten_by"][name]) or "nobody"
        p50 = _f(e["latency_ms_p50"], 1) if e["basis"] in ("measured", "baseline") else "not measured"
        p95 = _f(e["latency_ms_p95"], 1) if e["basis"] in ("measured", "baseline") else "–"
        mark = f"**{name}** (recommended)" if name == rec["system"] else name
        needs = e["needs"] + (f" ({e['unmeasured']})" if e.get("unmeasured") else "")
        out.append(f"| {e['cost_rank']} | {mark} | {_f(mean)} | {p50} | {p95} | {_f(e['size_mb'], 1)} | {needs} | {beaten} |")
    out += ["", f"Rule: {rec['rule']}. Cost order: {rec['cost_rule']}.", ""]
    out += [f"- {r}" for r in rec["reasons"]]
    out += [
        "",
        f"### Every pair of systems (NDCG@10; paired randomisation test; p Holm-adjusted over {len(report['pairwise'])} pairs)",
        "",
        "| a − b | Δ | 95% CI | p | p (Holm) | a beats b |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["pairwise"]:
        out.append(
            f"| {r['a']} − {r['b']} | {_f(r['delta'], signed=True)} | [{_f(r['ci_low'], signed=True)}, {_f(r['ci_high'], signed=True)}] | {_p(r['p_value'])} | "
            f"{_p(r['p_holm'])} | {'yes' if r['beats'] else 'no'} |"
        )
    return [*out, ""]


def markdown(report: dict) -> str:
    names = report["metric_names"]
    data = report["data"]
    out = [f"# Held-out evaluation — {report['run']}", "", *headline(report), *serving_section(report)]
    out += [
        f"## Systems ({data['queries_evaluated']} held-out queries, first-stage top-{data['k']}; mean [95% bootstrap CI])",
        "",
        "| system | " + " | ".join(_label(m) for m in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, s in report["systems"].items():
        cells = [f"{_f(s['metrics'][m]['mean'])} [{_f(s['metrics'][m]['ci95'][0], 3)}, {_f(s['metrics'][m]['ci95'][1], 3)}]" for m in names]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    missed = data["positives_missed_by_first_stage"]
    out += [
        "",
        f"Metrics count all {data['positives']} held-out positives; the first stage missed {missed} of them "
        f"(so no reranker can exceed Recall@{data['k']} = {_f(data['max_recall_at_k'], 3)}).",
        "",
        "## Differences (paired randomisation test over queries; 95% bootstrap CI)",
        "",
        "| comparison | metric | Δ | 95% CI | p | better / worse queries |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(report["comparisons"]):
        for m in names if i == 0 else names[:1]:  # every metric for the verdict's comparison; NDCG@10 for the rest (all in report.json)
            r = c["metrics"][m]
            out.append(
                f"| {c['a']} − {c['b']} | {_label(m)} | {_f(r['delta'], signed=True)} | [{_f(r['ci_low'], signed=True)}, {_f(r['ci_high'], signed=True)}] | {_p(r['p_value'])} | {r['better']} / {r['worse']} |"
            )
    out += ["", "## Teacher ↔ student fidelity (held-out pairs, raw scores)", ""]
    if report["fidelity"]:
        out += ["| system | Spearman (mean per query) | Kendall τ-b | MSE | median per-query spread |", "|---|---|---|---|---|"]
        for name, f in report["fidelity"].items():
            out.append(
                f"| {name} | {_f(f['spearman_mean'], 3)} | {_f(f['kendall_mean'], 3)} | {_f(f['mse'], 3)} | {_f(report['spread'][name]['median_std'], 3)} |"
            )
        if "teacher" in report["spread"]:
            out.append(f"| teacher | 1 | 1 | 0 | {_f(report['spread']['teacher']['median_std'], 3)} |")
    else:
        out.append("No teacher scores: fidelity not measured.")
    out += [
        "",
        f"Collapse check: {report['collapse']['detail']} — {'COLLAPSED' if report['collapse']['collapsed'] else 'ok'} ({report['collapse']['rule']}).",
        "",
    ]
    out += ["## Cost (this machine, the same held-out pairs, one query's candidates per request)", ""]
    if report["cost"]:
        out += ["| system | pairs/s | p50 ms/query | p95 ms/query | size on disk MB | parameters | device |", "|---|---|---|---|---|---|---|"]
        for name, c in report["cost"].items():
            params = f"{c['parameters']:,}" if c.get("parameters") else "–"
            out.append(
                f"| {name} | {_f(c['pairs_per_s'], 1)} | {_f(c['latency_ms_p50'], 1)} | {_f(c['latency_ms_p95'], 1)} | {_f(c['size_mb'], 1)} | {params} | {c['device']} |"
            )
        if report.get("speedup_vs_teacher"):
            out.append(f"\nStudent speed-up over the teacher: **{report['speedup_vs_teacher']:.1f}×** (pairs/s).")
    gate = report["teacher_gate"]
    if gate["status"] == "pass":
        out += ["", f"Teacher gate: pass — {gate['detail']}."]
    nb = report.get("nanobeir") or {}
    out += ["", "## General domain (NanoBEIR)", ""]
    if "skipped" in nb:
        out.append(nb["skipped"])
    else:
        for name, r in nb.items():
            out.append(f"- {name}: " + (f"NDCG@10 {_f(r.get('ndcg@10'))}" if "skipped" not in r else r["skipped"]))
    if report["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    s = report["settings"]
    out += [
        "",
        f"_Method: {s['test']}, {s['resamples']} resamples, seed {s['seed']}; {s['relevance']}; ties {s['ties']}; metrics by {s['metrics_engine']}._",
        "",
    ]
    return "\n".join(out)


def write_markdown(path: str | Path, report: dict) -> Path:
    return write_text(path, markdown(report))


def write_png(path: str | Path, report: dict, *, teacher: np.ndarray | None, student: np.ndarray) -> Path:
    """Metric bars per system with their 95% intervals; teacher-vs-student score scatter beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["metric_names"]
    systems = list(report["systems"])
    fig, (ax_bars, ax_scatter) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(names))
    for i, name in enumerate(systems):
        m = report["systems"][name]["metrics"]
        means = np.array([m[k]["mean"] for k in names])
        lo = np.array([m[k]["ci95"][0] for k in names])
        hi = np.array([m[k]["ci95"][1] for k in names])
        yerr = np.vstack([np.clip(means - lo, 0, None), np.clip(hi - means, 0, None)])
        ax_bars.bar(x + (i - (len(systems) - 1) / 2) * width, means, width, yerr=yerr, capsize=3, label=name)
    ax_bars.set_xticks(x, [_label(k) for k in names])
    ax_bars.set_ylim(0, 1.05)
    ax_bars.set_ylabel("mean over held-out queries (95% CI)")
    ax_bars.set_title(report["verdict"]["line"].split(" — ")[0], loc="left", fontsize=11, fontweight="bold")
    ax_bars.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(systems), 5), frameon=False)
    ax_bars.grid(axis="y", alpha=0.3)
    if teacher is not None:
        ok = np.isfinite(teacher) & np.isfinite(student)
        ax_scatter.scatter(teacher[ok], student[ok], s=6, alpha=0.4)
        lo, hi = float(np.nanmin([teacher[ok].min(), student[ok].min()])), float(np.nanmax([teacher[ok].max(), student[ok].max()]))
        ax_scatter.plot([lo, hi], [lo, hi], lw=0.8, color="grey", ls="--")
        fid = report["fidelity"].get("student", {})
        rho = fid.get("spearman_mean")
        ax_scatter.set_title(f"raw scores, Spearman/query {rho:.2f}" if rho is not None else "raw scores", fontsize=10)
        ax_scatter.set_xlabel("teacher score")
        ax_scatter.set_ylabel("student score")
    else:
        ax_scatter.text(0.5, 0.5, "no teacher scores\n(run `score`)", ha="center", va="center")
        ax_scatter.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
