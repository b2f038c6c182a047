"""A real learning check: SimCLR on a few thousand Fashion-MNIST images, a few epochs on CPU,
must lift kNN top-1 clearly above the same encoder at its random initialisation."""

import json

import pytest

from mpcl.config.compose import load
from mpcl.data.loaders import build_loaders
from mpcl.engine.evaluate import evaluate
from mpcl.engine.local import LocalReporter
from mpcl.engine.loop import fit
from mpcl.engine.runtime import build, runtime

LEARNING_RUN = {  # about 1,300 steps: ~3 minutes on a 2-core laptop CPU
    "model.backbone": "small_cnn", "data.subset": 4096, "data.val_subset": 2000, "data.batch_size": 64,
    "data.crop_scale_min": 0.3, "train.epochs": 20, "optim.name": "sgd", "optim.lr": 1.0,
    "optim.scale_lr": False, "optim.weight_decay": 1e-4, "optim.warmup_epochs": 0.5,
    "method.temperature": 0.2, "train.eval_every": 20, "train.progress": "false",
}


@pytest.mark.slow
def test_simclr_learns_beyond_random_init(tmp_path, fmnist_path):
    overrides = {**LEARNING_RUN, "data.loader": "torch", "data.path": fmnist_path, "out": str(tmp_path)}
    cfg = load("configs/fmnist_simclr.yaml", overrides)
    rt = runtime(cfg)
    loaders = build_loaders(cfg, 0, 1, rt.device)
    untrained, _ = build(cfg, rt, loaders)            # the same seed: the encoder fit starts from
    random_init = evaluate(untrained, loaders, rt, cfg)["val/knn_top1"]
    trained = fit(cfg, LocalReporter(cfg, echo=False))["val/knn_top1"]
    (tmp_path / "learning.json").write_text(json.dumps({"random_init": random_init, "trained": trained}))
    print(f"kNN top-1: random init {random_init:.2f}% -> trained {trained:.2f}%")
    # Random init scores 75.75. Trained, the result moves with float rounding over 1,300 steps
    # (earlier tests in the same process, the order of reductions): 80.35 and 78.75 alone, 78.15
    # inside the full suite, at this recipe. The bar sits below that spread; a run whose training
    # does not help (a flipped loss, a dead optimiser) stays at or falls below random init.
    # 2,000 val images: 1 SE of one accuracy ~ 0.9 points, less for this paired difference.
    assert trained >= random_init + 1.5
