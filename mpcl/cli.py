"""The ``mpcl`` command: train | eval | export | sweep | report | bench | dynamics | reproduce | demo.

``mpcl`` once installed (the console script), ``python -m mpcl``, or ``python run.py`` in a checkout.

Thin on purpose: parse the arguments, load and validate the config, dispatch into ``mpcl``.
A bad config value is one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

DEMO_SWEEP = "fmnist_demo"   # a sweep file shipped with mpcl (mpcl/config/sweep_files)
EXIT_USAGE = 2
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")   # section.key=value (a path like runs/a=b is none)


def program() -> str:
    """How the user called mpcl, for the commands it prints: ``python run.py`` in a checkout,
    ``python -m mpcl``, else ``mpcl``."""
    name = Path(sys.argv[0]).name
    return {"run.py": "python run.py", "__main__.py": "python -m mpcl"}.get(name, "mpcl")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_config(paths: list[str] | None, overrides: list[str]):
    """The config of ``--config`` files (none: the defaults; several: each later one over the
    earlier) and the overrides; a bad one exits with one line."""
    from mpcl.config import ConfigError
    from mpcl.config.compose import load

    try:
        return load(paths, overrides)
    except ConfigError as e:
        fail(str(e))


def cmd_train(args) -> None:
    from mpcl.files import exclusive
    from mpcl.launch import LaunchError
    from mpcl.launch.preflight import preflight
    from mpcl.launch.storage import Mirror

    cfg = load_config(args.config, args.overrides)
    address = None
    if args.no_ray and "://" in cfg.out:
        raise LaunchError(f"out={cfg.out}: --no-ray writes a local run directory; a URI needs Ray (drop --no-ray)")
    if not args.no_ray:
        from mpcl.launch.cluster import check_address

        address = check_address(args.address)
    cfg = preflight(cfg, local_gpus=address is None)   # paths made absolute once: Ray workers run elsewhere
    with exclusive(Mirror(cfg.out).local, "out"):   # a URI out: its local mirror on this machine
        metrics = train_without_ray(cfg) if args.no_ray else train_with_ray(cfg, address)
    print(json.dumps({k: metrics[k] for k in ("epoch", "train/loss", "val/knn_top1", "val/online_top1")
                      if k in metrics}))
    print(f"run directory: {cfg.out}")


def train_without_ray(cfg) -> dict:
    from mpcl.config import ConfigError
    from mpcl.engine.checkpoint import CheckpointError
    from mpcl.engine.local import LocalReporter
    from mpcl.engine.loop import fit

    reporter = LocalReporter(cfg)
    try:
        return fit(cfg, reporter)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:  # SourceError: a missing dataset
        fail(str(e))
    finally:
        reporter.close()


def train_with_ray(cfg, address: str | None) -> dict:
    from mpcl.files import storage_failure
    from mpcl.launch.train import train

    try:
        return train(cfg, address)
    except Exception as e:  # ray.train.TrainingFailedError: the worker traceback is in out/logs/
        if hasattr(e, "exit_code") or storage_failure(e) is not None:   # one line, from main
            raise
        fail(f"training failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
             code=1)


def cmd_sweep(args) -> None:
    from mpcl.launch.sweep import run_sweep
    from mpcl.tracking.sweep_results import format_table

    rows, spec, sweep_dir = run_sweep(args.sweep_file, address=args.address, resume=args.resume,
                                      out=args.out, storage=args.storage, overrides=args.overrides)
    print(format_table(rows, spec.metric))
    print(f"sweep directory: {sweep_dir}")
    if spec.scheduler["type"] != "pbt":   # PBT runs without Optuna
        print(f"optuna study:    optuna-dashboard {spec.study}")
    print(f"report:          {program()} report {sweep_dir}")


def cmd_report(args) -> None:
    from mpcl.launch.storage import fetch_for_report, is_uri
    from mpcl.report import ReportError, write_report

    try:
        directory = fetch_for_report(args.directory) if is_uri(args.directory) else args.directory
        path = write_report(directory, args.out)
    except (ReportError, FileNotFoundError) as e:
        fail(str(e))
    print(f"report: {path}")


def eval_target(args) -> tuple[str, list[str]]:
    """(RUN, the key=value overrides) of ``eval``'s positional arguments: RUN is the one that is
    no ``key=value`` (``--checkpoint`` names it instead, for the older form)."""
    overrides = [a for a in args.overrides if OVERRIDE.match(a)]
    runs = [a for a in args.overrides if not OVERRIDE.match(a)]
    if args.checkpoint:
        runs = [args.checkpoint, *runs]
    if len(runs) != 1:
        fail(f"eval takes one RUN (a run directory, a checkpoint file or URI); got {len(runs)}: {' '.join(runs)}")
    return runs[0], overrides


def cmd_eval(args) -> None:
    from mpcl.engine.evaluate import evaluate_checkpoint
    from mpcl.launch.repeat import find_checkpoint
    from mpcl.launch.storage import fetch, is_uri

    run, overrides = eval_target(args)
    if args.finetune_epochs < 1:
        fail(f"--finetune-epochs {args.finetune_epochs}: must be at least 1")
    try:
        path = fetch(run) if is_uri(run) else find_checkpoint(run)
        result = evaluate_checkpoint(str(path), overrides, linear_epochs=args.linear_epochs,
                                     finetune_epochs=args.finetune_epochs if args.finetune else 0)
        if is_uri(run):
            result["checkpoint"] = run
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    print(json.dumps(result, indent=2))


def cmd_export(args) -> None:
    from mpcl.launch.export import export

    formats = None if args.format == "all" else [f for f in args.format.split(",") if f]
    folder, card = export(args.run, formats, args.out)
    for name in card["format_files"].values():
        print(f"exported: {folder / name}")
    print(f"model card: {folder / 'model_card.json'}")


def cmd_reproduce(args) -> None:
    """The paper's four methods at equal budget, N seeds each: RESULTS.md and the report."""
    import shlex

    from mpcl.files import exclusive, write_text_atomic
    from mpcl.launch.reproduce import build_runs, default_out, run_reproduce
    from mpcl.report import write_report
    from mpcl.report.comparison import results_markdown

    out = Path(args.out or default_out(args.dataset, args.budget)).resolve()
    runs = build_runs(args.dataset, args.budget, args.seeds, out, args.overrides)
    with exclusive(out, "--out"):
        summary = run_reproduce(runs, out, args.dataset, args.budget, args.seeds, use_ray=not args.no_ray,
                                address=args.address, overrides=args.overrides)
        command = f"{program()} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        results = results_markdown(summary, command)
        write_text_atomic(out / "RESULTS.md", results)
        print(results)
        print(f"results: {out / 'RESULTS.md'}")
        print(f"report:  {write_report(out)}")


def cmd_demo(args) -> None:
    """Fashion-MNIST .beton files (once), then the demo sweep on a local Ray, its table and report."""
    import time

    from mpcl.data.datasets import get_dataset
    from mpcl.launch import LaunchError
    from mpcl.launch.preflight import write_fashion_mnist_betons_if_missing

    t0 = time.perf_counter()
    try:
        write_fashion_mnist_betons_if_missing(get_dataset("fashion_mnist").beton_dir)
    except LaunchError as e:  # the demo sweep itself reads the raw files (data.loader=torch)
        print(f"demo: {e}; going on", file=sys.stderr)
    print("demo: sweeps/fmnist_demo.yaml: SimCLR-Attn, temperature x attention weight, TPE + ASHA on a local Ray")
    sweep_args = build_parser().commands["sweep"].parse_intermixed_args([DEMO_SWEEP, "--out", args.out,
                                                                          *args.overrides])
    sweep_args.resume = (Path(args.out) / "tune").is_dir()  # a second `make demo` continues / reprints
    cmd_sweep(sweep_args)
    cmd_report(build_parser().parse_args(["report", args.out]))
    print(f"demo: done in {time.perf_counter() - t0:.0f} s")


def cmd_dynamics(args) -> None:
    from mpcl.data.sources import SourceError
    from mpcl.dynamics import GraphError, Settings, default_variants, fashion_mnist_graph, synthetic_graph
    from mpcl.dynamics.runner import run_dynamics, summary_table
    from mpcl.files import exclusive
    from mpcl.report.dynamics import write_page

    try:
        settings = Settings(steps=args.steps, lr=args.lr, temperature=args.temperature, dim=args.dim,
                            knn_k=args.knn_k, check_gradient=not args.no_gradient_check, seed=args.seed)
        variants = default_variants(args.attention, args.attention_temperature, args.bank_mix, args.stage_steps)
        if args.graph == "synthetic":
            graph = synthetic_graph(args.classes, args.naturals, args.views, args.p_intra, args.p_inter, args.seed)
        else:
            graph = fashion_mnist_graph(args.data, args.images, args.views, args.overlap_k, args.seed)
    except (GraphError, ValueError, SourceError) as e:
        fail(str(e))
    with exclusive(args.out, "--out"):
        summary = run_dynamics(graph, variants, settings, args.out, command=f"{program()} " + " ".join(sys.argv[1:]))
        page = write_page(args.out, Path(args.out) / "report" / "index.html")
    print(summary_table(summary))
    print(f"simulated in {summary['simulation_seconds']} s; numbers: {Path(args.out) / 'dynamics.json'}")
    print(f"report: {page}")


# --verbose: Ray's own output (worker lines, Tune's tables) on the terminal, as Ray prints it
VERBOSE = argparse.ArgumentParser(add_help=False)
VERBOSE.add_argument("--verbose", action="store_true", help="Ray's logs on the terminal (default: in DIR/logs/)")


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train one config (section.key=value overrides)", parents=[VERBOSE])
    t.add_argument("--config", action="append", help="YAML preset, e.g. configs/fmnist_simclr.yaml; repeat it "
                   "to apply parts on top, later over earlier (--config fmnist_simclr --config parts/budget/smoke)")
    t.add_argument("--no-ray", action="store_true", help="run the engine in this process, without Ray")
    t.add_argument("--address", help="join this Ray cluster (host:port, 'auto', ray://...; default: "
                   "RAY_ADDRESS, else start a local Ray)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. method.temperature=0.2 out=/tmp/r")
    t.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="kNN, linear probe and fine-tuning of a saved encoder, on its dataset or another")
    e.add_argument("--checkpoint", help="RUN given as an option (the same as the positional RUN)")
    e.add_argument("--linear-epochs", type=int, default=100, help="epochs of the linear probe")
    e.add_argument("--finetune", action="store_true", help="also train the encoder and a new linear head end to "
                   "end on the dataset's training split; report the validation top-1")
    e.add_argument("--finetune-epochs", type=int, default=5, help="epochs of --finetune")
    e.add_argument("overrides", nargs="*", metavar="RUN [key=value ...]",
                   help="RUN: a run directory (its newest checkpoint), a checkpoint file or a URI; then config "
                   "overrides, e.g. data.dataset=cifar100 data.path=... to evaluate on another dataset")
    e.set_defaults(func=cmd_eval)


def _add_sweep(sub) -> None:
    s = sub.add_parser("sweep", help="Ray Tune + Optuna sweep over a sweeps/*.yaml file", parents=[VERBOSE])
    s.add_argument("sweep_file")
    s.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    s.add_argument("--resume", action="store_true", help="continue the interrupted sweep in its directory")
    s.add_argument("--out", help="sweep directory (default: the sweep file's out); a URI (s3://, gs://) "
                   "when the nodes share no file system")
    s.add_argument("--storage", help="the Optuna study's database URL, e.g. postgresql://... (default: "
                   "SQLite, <out>/optuna.db; for a URI out, on the driver with a copy in out)")
    s.add_argument("overrides", nargs="*", help="num_samples=N, max_concurrent=N, or section.key=value "
                   "for every trial (added to the file's overrides)")
    s.set_defaults(func=cmd_sweep)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="a run's encoder as files other tools load: torchvision, timm, onnx, "
                       "safetensors")
    x.add_argument("run", help="a run directory (its newest checkpoint) or a checkpoint file")
    x.add_argument("--format", default="all", help="comma-separated of torchvision, timm, onnx, safetensors; or all "
                   "(default: every one that fits the backbone; torchvision: its ResNets only; timm: "
                   "timm/<model> backbones only)")
    x.add_argument("--out", help="the folder of the files and model_card.json (default: RUN/export)")
    x.set_defaults(func=cmd_export)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="HTML results dashboard of a run or sweep directory")
    r.add_argument("directory", help="a sweep directory (results.json / optuna.db) or a run directory; "
                   "a path or a URI (s3://, gs://)")
    r.add_argument("--out", help="the HTML file (default: DIRECTORY/report/index.html)")
    r.set_defaults(func=cmd_report)


def _add_dynamics(sub) -> None:
    dy = sub.add_parser("dynamics", help="feature-space contrastive dynamics as message passing on a visible graph")
    dy.add_argument("--out", default="runs/dynamics", help="output directory (dynamics.json, arrays.npz, report/)")
    dy.add_argument("--graph", choices=["synthetic", "fashion_mnist"], default="synthetic")
    dy.add_argument("--classes", type=int, default=4, help="synthetic: latent classes")
    dy.add_argument("--naturals", type=int, default=8, help="synthetic: natural samples per class")
    dy.add_argument("--views", type=int, default=4, help="augmented views per natural sample / image")
    dy.add_argument("--p-intra", type=float, default=0.1,
                    help="synthetic: probability that a view can also come from another natural sample of its class")
    dy.add_argument("--p-inter", type=float, default=0.01,
                    help="synthetic: probability that a view can also come from a natural sample of another class")
    dy.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="fashion_mnist: the idx files")
    dy.add_argument("--images", type=int, default=80, help="fashion_mnist: images (class-balanced)")
    dy.add_argument("--overlap-k", type=int, default=3,
                    help="fashion_mnist: nearest views of other images (pixel space) joined to each view (0: none)")
    dy.add_argument("--steps", type=int, default=300)
    dy.add_argument("--lr", type=float, default=0.05, help="step size on each view's messages")
    dy.add_argument("--temperature", type=float, default=0.2, help="t of the uniformity loss / affinity graph")
    dy.add_argument("--dim", type=int, default=16, help="feature dimension")
    dy.add_argument("--knn-k", type=int, default=10)
    dy.add_argument("--attention", type=float, default=1.0, help="attention weight alpha of the attention variant")
    dy.add_argument("--attention-temperature", type=float, default=1.0)
    dy.add_argument("--bank-mix", type=float, default=0.5, help="weight of the previous stage in multi-stage targets")
    dy.add_argument("--stage-steps", type=int, default=20, help="steps per stage of multi-stage aggregation")
    dy.add_argument("--seed", type=int, default=0)
    dy.add_argument("--no-gradient-check", action="store_true",
                    help="skip comparing the messages with autograd's gradient at every step")
    dy.set_defaults(func=cmd_dynamics)


def _add_reproduce(sub) -> None:
    rp = sub.add_parser("reproduce", help="the paper's comparison: SimCLR(-Attn), SimSiam(-Multi), N seeds each",
                        parents=[VERBOSE])
    rp.add_argument("--dataset", default="fashion_mnist", help="a dataset with presets configs/<dataset>_<method>.yaml")
    rp.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 0..N-1)")
    rp.add_argument("--budget", default="smoke", choices=["smoke", "short", "paper"],
                    help="smoke: 2-core CPU minutes; short: ~20 min of one H100 (Fashion-MNIST); paper: the presets")
    rp.add_argument("--no-ray", action="store_true", help="train here, one run after another, without Ray")
    rp.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    rp.add_argument("--out", help="directory of the runs and RESULTS.md (default: runs/reproduce/DATASET_BUDGET)")
    rp.add_argument("overrides", nargs="*", help="section.key=value for every run, e.g. data.path=/data/fmnist")
    rp.set_defaults(func=cmd_reproduce)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the embedded default job (what `make demo` runs)", parents=[VERBOSE])
    d.add_argument("--out", default="runs/demo", help="the sweep directory")
    d.add_argument("overrides", nargs="*", help="as sweep's, e.g. num_samples=2 train.epochs=1")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program(), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    from mpcl.bench.cli import add_bench

    for add in (_add_train, _add_eval, _add_export, _add_sweep, _add_report, add_bench, _add_dynamics, _add_reproduce,
                _add_demo):
        add(sub)
    p.commands = sub.choices  # name -> subparser, for the intermixed parsing in main
    return p


# commands whose options and key=value overrides may come in any order (a=1 --no-ray b=2)
INTERMIXED = ("train", "eval", "sweep", "demo")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in INTERMIXED:
        args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    from mpcl.files import storage_failure

    if getattr(args, "verbose", False):
        os.environ["MPCL_VERBOSE"] = "1"   # read by mpcl.launch.console.verbose()
    # one line for mpcl's errors that carry their exit code (LaunchError, DivergedError, OutputError)
    # and for a library's write that the storage refused
    try:
        args.func(args)
    except Exception as e:
        if (failure := e if hasattr(e, "exit_code") else storage_failure(e)) is None:
            raise
        fail(str(failure), failure.exit_code)


if __name__ == "__main__":
    main()
