"""The paper's comparison: SimCLR, SimCLR-Attn, SimSiam and SimSiam-Multi at equal budget,
N seeds each, then mean / sd per method and each variant's difference to its base with a
95 % interval paired by seed (``run.py reproduce``).

Every run starts from its preset ``configs/<dataset>_<method>.yaml`` (the released recipes),
then the budget's overrides (the part ``configs/parts/budget/<budget>.yaml``), the paper's
knobs, the user's overrides, and the seed. A base and its variant differ only in ``method.*``
keys: ``build_runs`` checks it.

Layout of ``out``: ``runs/<method>/seed<k>/`` (each a run directory with ``result.json`` when
finished), ``reproduce.json`` (the summary), and, written by the caller, ``RESULTS.md`` and
``report/index.html``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mpcl.config import Config, ConfigError, flatten, parse_override, to_dict
from mpcl.config.compose import declared_only, load
from mpcl.config.presets import read_preset, shipped_dir
from mpcl.launch import LaunchError
from mpcl.launch.repeat import run_all
from mpcl.stats import paired_difference, summarize
from mpcl.tracking import read_metrics, write_json

METHODS = ("simclr", "simclr_attn", "simsiam", "simsiam_multi")
PAIRS = (("simclr", "simclr_attn"), ("simsiam", "simsiam_multi"))
PRESET_PREFIX = {"fashion_mnist": "fmnist"}  # the presets' file names; other datasets: their name
SUMMARY_FILE = "reproduce.json"
# The paper's settings of the two methods' knobs (SimCLR-Attn: a = 1 at attention temperature
# 1; SimSiam-Multi: b = 0.5). Each method gets the method.* keys it declares.
KNOBS = {"method.attention_weight": 1.0, "method.attention_temperature": 1.0, "method.bank_mix": 0.5}
# The budgets: each one's overrides are the preset part configs/parts/budget/<name>.yaml (also
# applicable to one run: train --config PRESET --config parts/budget/<name>); here, the epochs of
# the linear probe that evaluates each finished run, which is no key of a run's config.
LINEAR_EPOCHS = {"smoke": 10, "short": 100, "paper": 100}
BUDGETS = tuple(LINEAR_EPOCHS)


def budget_overrides(budget: str) -> dict[str, Any]:
    """The budget's overrides (``section.key``: value), read from its shipped part (never a file
    of that name in the working directory)."""
    return flatten(read_preset(shipped_dir("preset") / "parts" / "budget" / f"{budget}.yaml"))


def preset_path(dataset: str, method: str) -> Path:
    """The shipped preset of ``method`` on ``dataset`` (``configs/<dataset>_<method>.yaml``)."""
    return shipped_dir("preset") / f"{PRESET_PREFIX.get(dataset, dataset)}_{method}.yaml"


def _scaled(preset: Config, epochs: int) -> dict[str, Any]:
    """The preset's epoch-counted keys scaled from its train.epochs to ``epochs``, when a budget
    shortens the preset's run (the released bank warm-up, 50 of 1,000 epochs, becomes its share
    of the budget's epochs)."""
    ratio = epochs / preset.train.epochs
    scaled = {"optim.warmup_epochs": preset.optim.warmup_epochs * ratio}
    if hasattr(preset.method, "bank_warmup_epochs"):
        scaled["method.bank_warmup_epochs"] = round(preset.method.bank_warmup_epochs * ratio)
    return scaled


def build_runs(dataset: str, budget: str, seeds: int, out: Path, overrides: list[str] | None = None) -> list[Config]:
    """The configs of every (method, seed), methods in ``METHODS`` order; raises ``LaunchError``
    (one line) on a missing preset, a bad override or a pair that would not be comparable."""
    if budget not in BUDGETS:
        raise LaunchError(f"--budget {budget!r}: allowed: {', '.join(BUDGETS)}")
    if seeds < 1:
        raise LaunchError(f"--seeds {seeds}: need at least 1")
    try:
        budgeted = budget_overrides(budget)
        user = dict(parse_override(o) for o in overrides or [])
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    runs: list[Config] = []
    trees: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        path = preset_path(dataset, method)
        if not path.is_file():
            raise LaunchError(f"--dataset {dataset}: no preset configs/{path.name} "
                              f"(reproduce needs configs/<dataset>_<method>.yaml for {', '.join(METHODS)})")
        try:
            preset = load(str(path), {"data.dataset": dataset})
            tree = declared_only(method, {**budgeted, **KNOBS, **user})
            epochs = load(str(path), tree).train.epochs  # validates the overrides first
            if budget != "paper" and epochs != preset.train.epochs:
                tree = {**_scaled(preset, epochs), **tree}
            for seed in range(seeds):
                runs.append(load(str(path), {**tree, "train.seed": seed,
                                             "out": str(out / "runs" / method / f"seed{seed}")}))
        except ConfigError as e:
            raise LaunchError(f"configs/{path.name}: {e}") from None
        trees[method] = flatten(to_dict(runs[-1]))
    for base, variant in PAIRS:  # equal budget: a pair differs in the method's own keys only
        differ = sorted(k for k in set(trees[base]) | set(trees[variant])
                        if trees[base].get(k) != trees[variant].get(k) and not k.startswith("method.") and k != "out")
        if differ:
            raise LaunchError(f"{base} and {variant} would not train at equal budget: their presets differ in "
                              f"{', '.join(differ)} (set them with overrides)")
    return runs


def summarize_runs(runs: list[Config], results: list[dict | None]) -> dict[str, Any]:
    """Per method: each seed's kNN / linear top-1 and their mean and sd; per pair: the paired
    difference variant - base with its 95 % interval."""
    methods: dict[str, dict[str, Any]] = {}
    for cfg, result in zip(runs, results):
        m = methods.setdefault(cfg.method.name, {"runs": []})
        row: dict[str, Any] = {"seed": cfg.train.seed, "run_dir": cfg.out}
        if result is None:
            row["failed"] = "did not finish (rerun to resume it)"
        elif "failed" in result:
            row["failed"] = result["failed"]
        else:
            ev = result.get("eval", {})
            row["knn_top1"] = ev.get("knn_top1", result["metrics"].get("val/knn_top1"))
            row["linear_top1"] = ev.get("linear_top1")
            row["epochs"] = int(result["metrics"].get("epoch", -1)) + 1
        m["runs"].append(row)
    for m in methods.values():
        for key in ("knn_top1", "linear_top1"):
            m[key] = summarize([r[key] for r in m["runs"] if r.get(key) is not None]).as_dict()
    pairs = []
    for base, variant in PAIRS:
        pair = {"base": base, "variant": variant}
        for key in ("knn_top1", "linear_top1"):
            by_seed = [{r["seed"]: r[key] for r in methods[name]["runs"] if r.get(key) is not None}
                       for name in (base, variant)]
            pair[key] = paired_difference(*by_seed).as_dict()
        pairs.append(pair)
    return {"methods": methods, "pairs": pairs}


def default_out(dataset: str, budget: str) -> str:
    return f"runs/reproduce/{dataset}_{budget}"


def run_reproduce(runs: list[Config], out_dir: Path, dataset: str, budget: str, seeds: int, use_ray: bool = True,
                  address: str | None = None, overrides: list[str] | None = None) -> dict:
    """Trains what is not finished of ``runs`` (:func:`build_runs`), writes ``reproduce.json``
    into ``out_dir``; returns the summary. The caller holds ``out_dir``'s lock
    (:func:`mpcl.files.exclusive`)."""
    t0 = time.perf_counter()
    linear_epochs = LINEAR_EPOCHS[budget]
    results = run_all(runs, use_ray, address, linear_epochs=linear_epochs, log_dir=out_dir)
    wall = time.perf_counter() - t0
    example = runs[0]
    summary = {
        "dataset": dataset, "budget": budget, "seeds": seeds, "overrides": overrides or [],
        "linear_epochs": linear_epochs, "backbone": example.model.backbone, "epochs": example.train.epochs,
        "subset": example.data.subset, "wall_s_this_call": wall, "mode": "ray" if use_ray else "local",
        "train_s": {c.method.name: 0.0 for c in runs}, **summarize_runs(runs, results),
    }
    for c in runs:  # training time summed over epochs (kept across resumed calls)
        summary["train_s"][c.method.name] += sum(float(r.get("time/epoch_s", 0)) for r in read_metrics(c.out))
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
