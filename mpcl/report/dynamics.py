"""The dynamics page (``run.py dynamics``), drawn from dynamics.json and arrays.npz alone, so
that ``run.py report DIR`` can redraw it."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from mpcl.report.page import ReportError, fmt, html_page, img_tag, pyplot, save_png
from mpcl.files import write_text_atomic

CURVES = (
    ("alignment", "alignment (Wang & Isola: E ||f_i - f_j||^2 over positive pairs; lower = aligned)"),
    ("uniformity", "uniformity (log E exp(-2 ||f_i - f_j||^2); lower = more uniform)"),
    ("effective_rank", "effective rank of F (exp entropy of singular values; 1 = collapsed)"),
    ("knn_accuracy", "kNN accuracy of the latent classes (neighbours from other natural samples)"),
    ("equilibrium_distance", "distance of the affinity graph P from the augmentation graph D^-1 A (TV)"),
    ("hard_pair_alignment", "alignment of the hardest quarter of positive pairs (least similar at the start)"),
    ("easy_pair_alignment", "alignment of the easiest quarter of positive pairs (most similar at the start)"),
)

EXPLAIN = """<p>In feature space, with free features <i>F</i> (one unit vector per augmented view) and the
normalised augmentation graph <i>&Acirc; = D<sup>-1/2</sup>AD<sup>-1/2</sup></i>, a gradient step of
the contrastive loss is two messages: <b>alignment</b> <i>2&Acirc;F</i> (every view moves towards its
positives) and <b>uniformity</b> <i>-(P + P<sup>T</sup>)F</i> with the affinity graph
<i>P = rowsoftmax(FF<sup>T</sup>/t)</i> (every view moves away from the views it resembles), then the
projection back to the sphere. Alignment alone is repeated smoothing on the augmentation graph: it
first groups the views of a class, then collapses everything to one point. Uniformity alone ignores
the graph. Together they settle where the two messages balance: where <i>P</i> resembles the
augmentation graph. Attention reweights the alignment edges by the detached exp of their similarity
(as SimCLR-Attn); multi-stage aggregation sends, along the edges, a mix of the current features and
those at the start of the stage (as SimSiam-Multi's memory bank).</p>"""


def _curve(history: dict[str, dict], key: str, title: str, out_dir: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, h in history.items():
        ax.plot(range(len(h[key])), h[key], label=name, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, out_dir, key)


def _graphs(arrays, variant: str | None, temperature: float, out_dir: Path):
    """The augmentation graph D^-1 A beside the final affinity graph P, views sorted by class."""
    plt = pyplot()
    order = np.lexsort((arrays["origin"], arrays["labels"]))
    a = arrays["adjacency"][np.ix_(order, order)]
    panels = [("augmentation graph D^-1 A", a / a.sum(1, keepdims=True))]
    if variant is not None:
        f = arrays[f"final_{variant}"][order]
        logits = f @ f.T / temperature
        p = np.exp(logits - logits.max(1, keepdims=True))
        panels.append((f"affinity graph P, final, {variant}", p / p.sum(1, keepdims=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (title, m) in zip(np.atleast_1d(axes), panels):
        ax.imshow(m, cmap="viridis", vmin=0, vmax=np.quantile(m, 0.995), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_png(fig, out_dir, "graphs")


def _features(arrays, names: list[str], out_dir: Path):
    """The start and each variant's final features, projected on their top two singular directions."""
    plt = pyplot()
    panels = [("start", arrays["start"])] + [(n, arrays[f"final_{n}"]) for n in names]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, f) in zip(axes.flat, panels):
        # not centred, same scale everywhere: collapsed features stay one point
        _, _, vt = np.linalg.svd(f, full_matrices=False)
        xy = f @ vt[:2].T
        ax.scatter(xy[:, 0], xy[:, 1], c=arrays["labels"], cmap="tab10", s=6, vmin=0, vmax=9)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_png(fig, out_dir, "features")


def write_page(run_dir: str | Path, out_file: str | Path) -> Path:
    run_dir, out_file = Path(run_dir), Path(out_file)
    if not (run_dir / "dynamics.json").is_file() or not (run_dir / "arrays.npz").is_file():
        raise ReportError(f"{run_dir}: needs dynamics.json and arrays.npz (written by run.py dynamics)")
    summary = json.loads((run_dir / "dynamics.json").read_text())
    arrays = np.load(run_dir / "arrays.npz")
    out_dir = out_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = summary["variants"]
    history = {name: v["history"] for name, v in variants.items()}
    graph, settings = summary["graph"], summary["settings"]
    body = [EXPLAIN,
            f"<p>Graph: {html.escape(graph['description'])}: {graph['views']} views, {graph['edges']} edges, "
            f"{graph['components']} connected component(s), {graph['intra_class_edge_weight']:.0%} of the edge "
            f"weight within a class. Settings: " + ", ".join(f"{k}={fmt(v)}" for k, v in settings.items()) +
            f". Simulated in {summary['simulation_seconds']} s.</p>"]
    if summary.get("command"):
        body.append(f"<pre>{html.escape(summary['command'])}</pre>")
    keys = [k for k, _ in CURVES]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["variant", "align", "uniform", "attention", "bank_mix",
                                                          *keys, "max gradient error"])
    rows = []
    for name, v in variants.items():
        spec, final = v["variant"], v["final"]
        err = v.get("max_gradient_error")
        cells = [name, spec["align"], spec["uniform"], spec["attention"], spec["bank_mix"],
                 *[final[k] for k in keys], "not checked" if err is None else f"{err:.1e}"]
        rows.append("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in cells) + "</tr>")
    body.append(f"<h2>Final values (step {settings['steps']})</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
                "<p class='note'>max gradient error: the largest |message-passing update + n dL/dF| relative to "
                "the largest message, over every step (autograd of the feature-space loss, float64).</p>")
    body.append("<h2>Per step</h2>")
    body += [img_tag(_curve(history, key, title, out_dir)) for key, title in CURVES]
    both = next((n for n, v in variants.items() if v["variant"]["align"] and v["variant"]["uniform"]), None)
    body.append("<h2>The two graphs</h2><p>Left the augmentation graph (row-normalised), right the affinity "
                "graph of the final features of the first variant with both losses, views sorted by latent class: "
                "at equilibrium the right resembles the left.</p>")
    body.append(img_tag(_graphs(arrays, both, settings["temperature"], out_dir)))
    body.append("<h2>Features</h2><p>Each variant's final features (unit vectors) projected on their top two "
                "singular directions, coloured by latent class; a collapsed variant is a single point.</p>")
    body.append(img_tag(_features(arrays, list(variants), out_dir)))
    write_text_atomic(out_file, html_page("Contrastive learning as message passing: feature-space dynamics", body))
    return out_file
