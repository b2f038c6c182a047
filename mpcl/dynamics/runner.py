"""``run.py dynamics``: simulate every variant on one graph and write the numbers.

Output directory:
  dynamics.json   settings, graph statistics, per-variant metric histories and final values,
                  and the largest gap between the message-passing update and autograd's gradient
  arrays.npz      the graph (adjacency, labels, origin), the start and every variant's final features

The page drawn from the two files is ``mpcl.report.dynamics`` (``run.py report DIR``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mpcl.dynamics.graph import AugmentationGraph
from mpcl.dynamics.messages import Variant
from mpcl.dynamics.simulate import Settings, initial_features, simulate
from mpcl.files import write_text_atomic


def run_dynamics(graph: AugmentationGraph, variants: tuple[Variant, ...], settings: Settings,
                 out_dir: str | os.PathLike, command: str = "") -> dict:
    """Simulate each variant from the same start; write dynamics.json and arrays.npz."""
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # n x n matrices of a few hundred: extra threads only add waiting
    try:
        t0 = time.perf_counter()
        f0 = initial_features(graph.n, settings.dim, settings.seed)
        results = {v.name: simulate(graph, v, settings, f0) for v in variants}
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    summary = {"command": command, "graph": {"description": graph.description, **graph.stats()},
               "settings": asdict(settings), "simulation_seconds": round(seconds, 2),
               "variants": {name: {k: v for k, v in r.items() if k != "features"} for name, r in results.items()}}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "arrays.npz", adjacency=graph.adjacency.numpy(), labels=graph.labels.numpy(),
                        origin=graph.origin.numpy(), start=f0.numpy(),
                        **{f"final_{name}": r["features"].numpy() for name, r in results.items()})
    write_text_atomic(out / "dynamics.json", json.dumps(summary, indent=1) + "\n")
    return summary


def summary_table(summary: dict) -> str:
    """The final state of each variant, one line each (what ``run.py dynamics`` prints)."""
    lines = [f"{'variant':18s} {'eff. rank':>9s} {'kNN':>6s} {'equilibrium':>11s} {'alignment':>9s} "
             f"{'uniformity':>10s}"]
    for name, v in summary["variants"].items():
        f = v["final"]
        lines.append(f"{name:18s} {f['effective_rank']:9.2f} {f['knn_accuracy']:6.3f} "
                     f"{f['equilibrium_distance']:11.3f} {f['alignment']:9.3f} {f['uniformity']:10.3f}")
    return "\n".join(lines)
