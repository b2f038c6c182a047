#!/usr/bin/env python
"""mpcl command line: train | sweep | report | eval | bench | demo.

Thin on purpose: parse the arguments, load and validate the config, dispatch into ``mpcl``.
A bad config value is one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEMO_CONFIG = ROOT / "configs" / "fmnist_simclr_attn.yaml"
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_config(path: str | None, overrides: list[str]):
    from mpcl.config import ConfigError, load

    try:
        return load(path, overrides)
    except ConfigError as e:
        fail(str(e))


def cmd_train(args) -> None:
    cfg = load_config(args.config, args.overrides)
    if not args.no_ray:
        fail("training through Ray Train arrives with issue #4; run with --no-ray for the "
             "single-process engine")
    from mpcl.data.sources import SourceError
    from mpcl.engine.local import LocalReporter
    from mpcl.engine.loop import DivergedError, fit

    try:
        metrics = fit(cfg, LocalReporter(cfg))
    except (SourceError, FileNotFoundError) as e:
        fail(str(e))
    except DivergedError as e:
        fail(str(e), code=1)
    print(json.dumps({k: metrics[k] for k in ("epoch", "train/loss", "val/knn_top1", "val/online_top1")
                      if k in metrics}))
    print(f"run directory: {cfg.out}")


def cmd_eval(args) -> None:
    from mpcl.engine.loop import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(args.checkpoint, args.overrides, linear_epochs=args.linear_epochs)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    print(json.dumps(result, indent=2))


def cmd_demo(args) -> None:
    out = args.out
    argv = ["--config", str(DEMO_CONFIG), "--no-ray", "model.backbone=small_cnn", "train.epochs=2",
            "data.subset=4096", "data.val_subset=2000", "data.batch_size=256", f"out={out}"]
    print("demo: SimCLR-Attn, small CNN, 4,096 Fashion-MNIST images, 2 epochs, CPU-friendly")
    cmd_train(build_parser().parse_args(["train", *argv]))


def not_yet(issue: int, what: str):
    def run(args) -> None:
        fail(f"{what} arrives with issue #{issue}", code=EXIT_USAGE)
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one config (section.key=value overrides)")
    t.add_argument("--config", help="YAML preset, e.g. configs/fmnist_simclr.yaml")
    t.add_argument("--no-ray", action="store_true", help="run the engine in this process, without Ray")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. method.temperature=0.2 out=/tmp/r")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="kNN and linear probe of a saved encoder")
    e.add_argument("--checkpoint", required=True, help="a checkpoint file (out/checkpoints/last.pt)")
    e.add_argument("--linear-epochs", type=int, default=100, help="epochs of the linear probe")
    e.add_argument("overrides", nargs="*", help="config overrides (e.g. data.path=...)")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sweep", help="Ray Tune + Optuna sweep over a sweeps/*.yaml file")
    s.add_argument("sweep_file")
    s.add_argument("--address")
    s.add_argument("--resume", action="store_true")
    s.set_defaults(func=not_yet(4, "run.py sweep"))

    r = sub.add_parser("report", help="HTML results dashboard of a run or sweep directory")
    r.add_argument("directory")
    r.add_argument("--out")
    r.set_defaults(func=not_yet(4, "run.py report"))

    b = sub.add_parser("bench", help="benchmarks (loader, step)")
    b.add_argument("what", choices=["loader"])
    b.set_defaults(func=not_yet(3, "run.py bench loader"))

    d = sub.add_parser("demo", help="the embedded default job (what `make demo` runs)")
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
