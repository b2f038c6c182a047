"""Comparisons over seeds: the ``run.py reproduce`` table (RESULTS.md and its HTML page) and a
sweep's confirmation section. The numbers come from ``reproduce.json`` / ``results.json``;
this module only lays them out."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mpcl.report.page import curves, html_page, html_table, img_tag
from mpcl.tracking import read_metrics
from mpcl.files import write_text_atomic

LABELS = {"simclr": "SimCLR", "simclr_attn": "SimCLR-Attn", "simsiam": "SimSiam", "simsiam_multi": "SimSiam-Multi"}
# The paper's Table (linear top-1 %, their released recipes): backbone -> method -> (CIFAR-10, CIFAR-100, ImageNet-100)
PAPER_DATASETS = ("CIFAR-10", "CIFAR-100", "ImageNet-100")
PAPER = {
    "ResNet-18": {"simsiam": (83.8, 56.3, 68.8), "simsiam_multi": (84.8, 58.9, 70.5),
                  "simclr": (84.5, 56.1, 62.3), "simclr_attn": (85.4, 56.9, 63.1)},
    "ResNet-50": {"simsiam": (85.9, 58.4, 70.9), "simsiam_multi": (87.0, 59.8, 72.3),
                  "simclr": (88.2, 59.8, 66.0), "simclr_attn": (89.4, 60.7, 66.7)},
}


def mean_sd(s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.2f} ± {s['sd']:.2f}" if s.get("sd") is not None else f"{s['mean']:.2f} (1 seed)"


def interval(d: dict[str, Any]) -> str:
    if not d or d.get("mean") is None:
        return "-"
    if d.get("low") is None:
        return f"{d['mean']:+.2f} (n={d['n']}: no interval)"
    verdict = "beyond the noise" if d["excludes_zero"] else "within the noise"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({verdict})"


def _failures(summary: dict[str, Any]) -> list[str]:
    return [f"{m} seed {r['seed']}: {r['failed']}" for m, v in summary["methods"].items()
            for r in v["runs"] if r.get("failed")]


def _setup_line(s: dict[str, Any]) -> str:
    subset = f"first {s['subset']} training samples" if s.get("subset") else "full training set"
    extra = f"; overrides {' '.join(s['overrides'])}" if s.get("overrides") else ""
    return (f"dataset {s['dataset']}, budget `{s['budget']}`: {s['backbone']}, {s['epochs']} epochs, {subset}, "
            f"{s['seeds']} seed(s) per method; linear probe {s['linear_epochs']} epochs on frozen features"
            f"{extra}")


def results_markdown(summary: dict[str, Any], command: str = "") -> str:
    """RESULTS.md: our table (mean ± sd over seeds, paired differences) and the paper's."""
    lines = ["# Results: the paper's comparison at equal budget", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Setup: {_setup_line(summary)}.", "",
              "Training time summed over epochs (s): " + ", ".join(
                  f"{LABELS.get(m, m)} {t:.0f}" for m, t in summary.get("train_s", {}).items()) +
              f"; wall time of the last call: {summary.get('wall_s_this_call', 0):.0f} s ({summary.get('mode')}).", "",
              "| method | kNN top-1 (%) | linear top-1 (%) | seeds |", "| --- | ---: | ---: | ---: |"]
    for m, v in summary["methods"].items():
        lines.append(f"| {LABELS.get(m, m)} | {mean_sd(v['knn_top1'])} | {mean_sd(v['linear_top1'])} | "
                     f"{v['knn_top1']['n']} |")
    lines += ["", "Difference to the base, paired by seed: mean [95 % t interval]:", "",
              "| comparison | kNN top-1 | linear top-1 |", "| --- | --- | --- |"]
    for p in summary["pairs"]:
        lines.append(f"| {LABELS.get(p['variant'])} - {LABELS.get(p['base'])} | {interval(p['knn_top1'])} | "
                     f"{interval(p['linear_top1'])} |")
    fails = _failures(summary)
    if fails:
        lines += ["", "Runs without a result: " + "; ".join(fails) + "."]
    lines += ["", "## The paper's numbers (not ours)", "",
              "Linear top-1 (%) from the paper, with the released recipes (hundreds of epochs):", "",
              "| backbone | method | " + " | ".join(PAPER_DATASETS) + " |", "| --- | --- | ---: | ---: | ---: |"]
    for backbone, rows in PAPER.items():
        for m in ("simclr", "simclr_attn", "simsiam", "simsiam_multi"):
            lines.append(f"| {backbone} | {LABELS[m]} | " + " | ".join(f"{v:.1f}" for v in rows[m]) + " |")
    return "\n".join(lines) + "\n"


def reproduce_section(summary: dict[str, Any], out_dir: Path) -> list[str]:
    """HTML of ``reproduce.json``: ours beside the paper's, and kNN curves of every run."""
    body = [f"<p>{html.escape(_setup_line(summary).replace('`', ''))}.</p><h2>Ours: mean ± sd over seeds</h2>",
            html_table(["method", "kNN top-1 (%)", "linear top-1 (%)", "seeds"],
                       [[LABELS.get(m, m), mean_sd(v["knn_top1"]), mean_sd(v["linear_top1"]), v["knn_top1"]["n"]]
                        for m, v in summary["methods"].items()]),
            "<h2>Variant − base, paired by seed (95 % t interval)</h2>",
            html_table(["comparison", "kNN top-1", "linear top-1"],
                       [[f"{LABELS.get(p['variant'])} − {LABELS.get(p['base'])}", interval(p["knn_top1"]),
                         interval(p["linear_top1"])] for p in summary["pairs"]])]
    fails = _failures(summary)
    if fails:
        body.append(f"<p class='note'>Runs without a result: {html.escape('; '.join(fails))}.</p>")
    body.append("<h2>The paper's numbers (not ours): linear top-1 (%), released recipes</h2>")
    body.append(html_table(["backbone", "method", *PAPER_DATASETS],
                           [[b, LABELS[m], *rows[m]] for b, rows in PAPER.items()
                            for m in ("simclr", "simclr_attn", "simsiam", "simsiam_multi")]))
    runs = {f"{m} s{r['seed']}": read_metrics(r["run_dir"]) for m, v in summary["methods"].items() for r in v["runs"]}
    body.append("<h2>Learning curves</h2>")
    body.append(img_tag(curves(runs, "val/knn_top1", "val/knn_top1 per run", out_dir, "reproduce_knn")))
    body.append(img_tag(curves(runs, "train/loss", "train/loss per run", out_dir, "reproduce_loss")))
    return body


def confirm_section(confirm: dict[str, Any]) -> list[str]:
    """HTML of a sweep's confirmation stage (``results.json``'s ``confirm``)."""
    if confirm.get("objectives"):
        return _pareto_confirm_section(confirm)
    metric = confirm["metric"]
    rows = []
    for c in confirm["configs"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items())
        rows.append([c["label"], params, mean_sd(c["summary"]),
                     "baseline" if c["label"] == confirm["baseline"] else interval(c["difference"])])
    winner = confirm.get("winner")
    body = [f"<h2>Confirmation: {confirm['seeds']} fresh seed(s), full budget, no early stopping</h2>",
            f"<p>The top {confirm['top_k']} configuration(s) of the search and the baseline (the first "
            f"<code>points</code> entry) trained again; {html.escape(metric)} mean ± sd and the difference to "
            f"the baseline paired by seed (95 % t interval).</p>",
            html_table(["configuration", "parameters", f"{metric} mean ± sd", "difference to the baseline"], rows)]
    if winner:
        body.append(f"<p><b>{html.escape(confirm['verdict'])}</b></p>")
    return body


def _pareto_confirm_section(confirm: dict[str, Any]) -> list[str]:
    """HTML of the confirmation of a sweep with several objectives: each one's mean ± sd."""
    metrics = [o["metric"] for o in confirm["objectives"]]
    rows = []
    for c in confirm["configs"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items())
        rows.append([c["label"], params, *(mean_sd(c["objectives"][m]["summary"]) for m in metrics)])
    return [f"<h2>Confirmation: {confirm['seeds']} fresh seed(s), full budget</h2>",
            "<p>Every Pareto point of the search and the baseline (the first <code>points</code> entry) "
            "trained again; each objective's mean ± sd over the seeds.</p>",
            html_table(["configuration", "parameters", *(f"{m} mean ± sd" for m in metrics)], rows)]


def reproduce_report(out_dir: Path, out_file: Path) -> Path:
    summary = json.loads((out_dir / "reproduce.json").read_text())
    body = reproduce_section(summary, out_file.parent)
    title = f"The paper's comparison on {summary['dataset']} ({summary['budget']} budget)"
    write_text_atomic(out_file, html_page(title, body))
    return out_file
