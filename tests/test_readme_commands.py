"""The docs' commands, as written, from the repository root: the ```bash blocks are read from
README.md and docs/**/*.md (a command shown in both is one command), each command is run in a
copy of the repository (so that its relative paths, the presets' data/fmnist and runs/...,
land in the copy, not in the real checkout), shortened only by ``key=value`` overrides and
options appended at the end (argparse keeps an option's last value). Every ```bash command is
run by a test here or is in NOT_RUN_HERE, with the reason it cannot run on this machine
(test_every_bash_command_is_run_or_listed); output samples are in ```text blocks. The Ray
commands run in worker processes whose working directory is not the repository: relative
paths (``--config``, ``data.path``, ``out``) must have been resolved by the driver.

The training commands read the raw Fashion-MNIST files through a relative ``data.path``
(``data.loader=torch``: no FFCV compilation in every process, which would take minutes on two
cores); FFCV's loader and the .beton files written on a fresh checkout are tested in
test_ffcv_loader.py and test_launch.py."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.source import parse

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("run.py", "mpcl", "data_prep", "configs", "sweeps", "README.md", "pyproject.toml")
RAW = "data/raw/fashion-mnist"   # in the copy: a link to the raw files, read through a relative path
SMALL = ["data.loader=torch", f"data.path={RAW}", "data.subset=512", "data.val_subset=512", "data.batch_size=128",
         "train.progress=false"]


DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")))

# ```bash commands that need what this machine lacks, as (pattern, why); every pattern must match
# some command, so that the list shrinks with the docs
NOT_RUN_HERE = (
    (r"^make ", "make targets set up .venv and run the whole demo, suite or lint; test_the_demo_... runs "
                "`python run.py demo` and the suites run themselves"),
    (r"^(sbatch|scancel|kubectl|ray) |--address auto", "a cluster: SLURM, Kubernetes (KubeRay) or a Ray cluster"),
    (r"^docker ", "Docker and the base image's registry"),
    (r"s3://|^export AWS_", "object storage and its credentials (tests/test_storage.py runs these paths on moto)"),
    (r"--budget short", "a CUDA GPU (one H100 for about 20 minutes)"),
)


def readme_commands() -> list[str]:
    """Every distinct command of the ```bash blocks of README.md and docs/, continuation lines
    joined, comments dropped, in the order first shown."""
    commands: dict[str, None] = {}
    for name in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / name).read_text(), flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    commands[line] = None
    return list(commands)


def select(prefix: str, commands: list[str]) -> list[str]:
    """The commands equal to ``prefix`` or, when none is, those starting with it."""
    return [c for c in commands if c == prefix] or [c for c in commands if c.startswith(prefix)]


def readme_command(prefix: str) -> list[str]:
    """The one docs command equal to or starting with ``prefix``, as argv."""
    found = select(prefix, readme_commands())
    assert len(found) == 1, f"README / docs: {len(found)} commands start with {prefix!r}: {found}"
    return shlex.split(found[0])


def prefixes_run_here() -> list[str]:
    """The prefixes this module's tests pass to ``readme_command``."""
    tree = parse(Path(__file__).read_text())
    return [node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "readme_command"
            and isinstance(node.args[0], ast.Constant)]


def test_every_bash_command_is_run_or_listed():
    commands = readme_commands()
    run = {c for prefix in prefixes_run_here() for c in select(prefix, commands)}
    for prefix in prefixes_run_here():
        assert len(select(prefix, commands)) == 1, f"{prefix!r} selects {select(prefix, commands)}"
    unlisted = [c for c in commands if c not in run and not any(re.search(p, c) for p, _ in NOT_RUN_HERE)]
    assert not unlisted, f"```bash commands that no test runs (run them in a test, or show them as text): {unlisted}"
    for pattern, why in NOT_RUN_HERE:
        assert any(re.search(pattern, c) for c in commands), f"NOT_RUN_HERE {pattern!r} ({why}) matches no command"
        assert not [c for c in run if re.search(pattern, c)], f"{pattern!r}: a command a test runs is listed"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_path) -> Path:
    """A copy of the repository without data/ or runs/, as on a fresh checkout."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, copy / name)
    (copy / RAW).parent.mkdir(parents=True)
    (copy / RAW).symlink_to(fmnist_path)
    return copy


def run_as_written(repo: Path, argv: list[str], *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    assert argv[0] == "python"
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, *argv[1:], *overrides], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_without_ray(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml --no-ray")
    assert "out=runs/r" in argv
    run_as_written(repo, argv, *SMALL)
    assert [r["epoch"] for r in _metrics(repo / "runs/r")] == [0]
    assert (repo / "runs/r/checkpoints/last.pt").is_file()


@pytest.mark.slow
def test_eval_of_the_trained_checkpoint(repo):
    proc = run_as_written(repo, readme_command("python run.py eval runs/r"), "data.val_subset=512")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["epoch"] == 0 and 0 <= result["knn_top1"] <= 100
    proc = run_as_written(repo, readme_command("python run.py eval runs/r --finetune"), "data.val_subset=512")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert len(result["finetune_train_loss"]) == 1 and 0 <= result["finetune_top1"] <= 100


@pytest.mark.slow
def test_export_of_the_trained_run(repo):
    """The export of the run trained above, read back by onnxruntime: its features are the
    encoder's (mpcl's own, rebuilt from the checkpoint) on the same images."""
    import numpy as np
    import onnxruntime

    from mpcl.launch.export import load_encoder

    proc = run_as_written(repo, readme_command("python run.py export runs/r"))
    folder = repo / "runs/r/export"
    assert f"model card: {folder / 'model_card.json'}" in proc.stdout
    card = json.loads((folder / "model_card.json").read_text())
    assert card["epochs_trained"] == 1 and card["architecture"]["backbone"] == "small_cnn"
    images = np.random.default_rng(0).random((4, *card["input"]["shape"]), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    encoder, _, _ = load_encoder(repo / "runs/r/checkpoints/last.pt")
    with torch.no_grad():
        expected = encoder(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_data_prep_fashion_mnist(repo, fmnist_path):
    argv = readme_command("python -m data_prep fashion_mnist")
    assert argv[argv.index("--src") + 1] == fmnist_path
    run_as_written(repo, argv)
    manifest = json.loads((repo / "data/fmnist/manifest.json").read_text())
    assert manifest["sizes"] == {"train": 60000, "val": 10000}


@pytest.mark.slow
@pytest.mark.ray
def test_train_through_ray_with_two_workers(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml scale.workers=2")
    proc = run_as_written(repo, argv, "train.epochs=1", "model.backbone=small_cnn", *SMALL, "out=runs/r_ray")
    assert [r["epoch"] for r in _metrics(repo / "runs/r_ray")] == [0]
    assert list((repo / "runs/r_ray").glob("checkpoint_*"))
    assert not (repo / "runs/r_ray/FAILED.json").exists()
    # what --no-ray shows: the epoch's line; Ray's own lines are in the run's logs/, one file a worker
    assert re.search(r"^epoch 0  train/loss=\S+  val/knn_top1=", proc.stdout, re.M), proc.stdout
    assert "RayTrainWorker" not in proc.stdout + proc.stderr and "\x1b[" not in proc.stdout + proc.stderr
    for rank in (0, 1):
        assert "Reporting training result" in (repo / f"runs/r_ray/logs/worker-{rank}.log").read_text()


@pytest.mark.slow
def test_dynamics_commands(repo, fmnist_path):
    """The three dynamics commands, 20 steps each; the Fashion-MNIST graph reads the raw files
    from where the command's default --data says (conftest's fmnist_path)."""
    commands = [readme_command("python run.py dynamics"), readme_command("python run.py dynamics --p-intra"),
                readme_command("python run.py dynamics --graph fashion_mnist")]
    for i, argv in enumerate(commands):
        out = f"runs/dynamics_{i}"
        proc = run_as_written(repo, argv, "--steps", "20", "--out", out)
        summary = json.loads((repo / out / "dynamics.json").read_text())
        assert summary["settings"]["steps"] == 20, summary["settings"]
        assert (repo / out / "report/index.html").is_file() and "report:" in proc.stdout


@pytest.mark.slow
def test_reproduce_smoke_without_ray(repo):
    """The smoke budget with one seed (--seeds 1 appended) on 512 samples: the four methods,
    RESULTS.md and the report in the default --out."""
    argv = readme_command("python run.py reproduce --dataset fashion_mnist --budget smoke")
    assert "--no-ray" in argv
    proc = run_as_written(repo, argv, "--seeds", "1", *SMALL)
    out = repo / "runs/reproduce/fashion_mnist_smoke"
    for method in ("simclr", "simclr_attn", "simsiam", "simsiam_multi"):
        result = json.loads((out / "runs" / method / "seed0" / "result.json").read_text())
        assert 0 < result["eval"]["linear_top1"] <= 100
    assert (out / "RESULTS.md").read_text() in proc.stdout and (out / "report/index.html").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_then_report(repo):
    run_as_written(repo, readme_command("python run.py sweep sweeps/fmnist_demo.yaml"),
                   "num_samples=1", "train.epochs=1", *SMALL)
    sweep_dir = repo / "runs/sweeps/fmnist_demo"
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [t["state"] for t in results["trials"]] == ["complete"]
    proc = run_as_written(repo, readme_command("python run.py report runs/sweeps/fmnist_demo"))
    assert (sweep_dir / "report/index.html").is_file() and "report:" in proc.stdout


def _merged(repo: Path, argv: list[str], env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``argv`` (python ...) in the copy, stdout and stderr into one pipe (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    return proc.returncode, proc.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.ray
def test_the_demo_prints_a_short_plain_account_with_its_summary_last(repo):
    """The docs' ``run.py demo``, two trials of one epoch, the one at attention weight 1 made to crash
    (tests/faults): at most 60 plain lines, no Ray worker line, the crash in one line naming
    the log that holds its traceback, and the summary last."""
    faults = ROOT / "tests" / "faults"
    rc, lines = _merged(repo, [*readme_command("python run.py demo"), "--out", "runs/demo_small", "num_samples=2",
                               "train.epochs=1", "data.subset=1024", "data.val_subset=512"],
                        {"PYTHONPATH": f"{faults}{os.pathsep}{repo}", "MPCL_TEST_FAULT": "crash_full_attention"})
    text = "\n".join(lines)
    assert rc == 0, text[-3000:]
    assert len(lines) <= 60, text
    assert "\x1b[" not in text
    for ray_line in ("RayTrainWorker", "TrainController", "(raylet)", "Trial status", "tensorboard"):
        assert ray_line not in text, ray_line
    (failed,) = [line for line in lines if " failed: " in line and line.startswith("trial ")]
    log = Path(re.fullmatch(r"trial \w+ failed: .*injected crash for the test.* \(log: (\S+)\)", failed)[1])
    assert "Traceback (most recent call last)" in log.read_text() and "injected crash" in log.read_text()
    assert lines[-1].startswith("demo: done in ") and lines[-2].startswith("report: ")
    assert [line.split(":")[0] for line in lines[-5:-2]] == ["sweep directory", "optuna study", "report"]


@pytest.mark.slow
@pytest.mark.ray
def test_verbose_brings_ray_s_worker_lines_back(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml scale.workers=2")
    rc, lines = _merged(repo, [*argv, "--verbose", "train.epochs=1", "model.backbone=small_cnn", *SMALL,
                               "out=runs/r_verbose"])
    text = "\n".join(lines)
    assert rc == 0, text[-3000:]
    assert "(RayTrainWorker pid=" in text and "Reporting training result" in text
    assert not list((repo / "runs/r_verbose").glob("logs/worker-*.log"))


@pytest.fixture(scope="module")
def own_images(repo, fmnist_path) -> Path:
    """docs/own-data.md's two image folders in the copy: Fashion-MNIST as 48 px PNG files in
    class folders (10 classes), and other images of 5 of its classes (the transfer target)."""
    from tests.helpers.data import fmnist_image_folder

    fmnist_image_folder(fmnist_path, repo / "data/raw/my_images", {"train": 30, "val": 10})
    fmnist_image_folder(fmnist_path, repo / "data/raw/other_images", {"train": 20, "val": 10}, classes=5, offset=100)
    return repo


OWN_SMALL = ["data.batch_size=64", "data.num_workers=1", "data.blur_prob=0", "train.progress=false"]


@pytest.mark.slow
def test_own_images_are_written_and_trained_on(own_images):
    repo = own_images
    run_as_written(repo, readme_command("python -m data_prep imagefolder --src data/raw/my_images"))
    run_as_written(repo, readme_command("python -m data_prep imagefolder --src data/raw/other_images"))
    mine, other = (json.loads((repo / f"data/{d}/manifest.json").read_text()) for d in ("mine", "other"))
    assert (mine["num_classes"], mine["sizes"]) == (10, {"train": 300, "val": 100})
    assert (other["num_classes"], other["sizes"]) == (5, {"train": 100, "val": 50})
    argv = readme_command("python run.py train --no-ray --config folder_simclr data.path=data/mine")
    run_as_written(repo, argv, "train.epochs=2", *OWN_SMALL)
    rows = _metrics(repo / "runs/mine_simclr")
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["val/knn_top1"] > 20, rows


@pytest.mark.slow
@pytest.mark.ray
def test_own_images_train_through_ray(own_images):
    if not (own_images / "data/mine/manifest.json").is_file():
        pytest.skip("needs test_own_images_are_written_and_trained_on's folders")
    argv = readme_command("python run.py train --config folder_simsiam_multi data.path=data/mine")
    run_as_written(own_images, argv, "train.epochs=1", *OWN_SMALL)
    assert [r["epoch"] for r in _metrics(own_images / "runs/mine_simsiam_multi")] == [0]


@pytest.mark.slow
def test_own_encoder_exported_in_four_formats(own_images):
    import onnxruntime
    import timm
    import torchvision
    from safetensors.torch import load_file

    from mpcl.launch.export import load_encoder

    run = own_images / "runs/mine_simclr"
    if not (run / "checkpoints/last.pt").is_file():
        pytest.skip("needs the run test_own_images_are_written_and_trained_on trains")
    run_as_written(own_images, readme_command("python run.py export runs/mine_simclr --format"))
    folder = run / "export"
    card = json.loads((folder / "model_card.json").read_text())
    images = torch.rand(3, *card["input"]["shape"], generator=torch.Generator().manual_seed(0))
    encoder, _, _ = load_encoder(run / "checkpoints/last.pt")
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(torch.load(folder / "encoder_torchvision.pt", weights_only=True), strict=True)
    tm = eval(card["architecture"]["timm"], {"timm": timm})
    tm.load_state_dict(load_file(folder / "encoder.safetensors"), strict=True)
    session = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = encoder(images)
        for features in (tv.eval()(images), tm.eval()(images),
                         torch.from_numpy(session.run(None, {"images": images.numpy()})[0])):
            assert (features - expected).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_own_encoder_evaluated_on_another_folder(own_images):
    """The run trained on 10 classes, evaluated on another folder of 5: the encoder at its own
    crop, kNN and the linear probe on the new classes, and a fine-tuning that trains."""
    if not (own_images / "runs/mine_simclr/checkpoints/last.pt").is_file():
        pytest.skip("needs the run test_own_images_are_written_and_trained_on trains")
    proc = run_as_written(own_images, readme_command("python run.py eval runs/mine_simclr data.path=data/other"),
                          "--linear-epochs", "20")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["dataset"]["num_classes"] == 5 and not result["dataset"]["same_as_training"]
    assert result["knn_top1"] > 30 and result["linear_top1"] > 30, result   # 5 classes: chance is 20
    assert "online_top1" not in result
    proc = run_as_written(own_images, readme_command("python run.py eval runs/mine_simclr data.path=data/other "
                                                     "--finetune"), "--linear-epochs", "5", "--finetune-epochs", "1",
                          "data.batch_size=32")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert len(result["finetune_train_loss"]) == 1 and 0 <= result["finetune_top1"] <= 100
