"""timm models as encoders (``model.backbone=timm/<name>``): every method trains with them, the
optimizer's groups follow the model (no decay on norms, biases and ViT embeddings), weights come
from a local file, and what cannot work is a one-line ConfigError naming its key.

Tiny timm models keep this fast: a ViT-Tiny at 32 px (patches of 16 or 8 px: 4 or 16 tokens),
ConvNeXt-Atto and ResNet-10t.
"""

from __future__ import annotations

import builtins
import json

import pytest
import torch

pytest.importorskip("timm", reason="timm backbones need timm: pip install 'mpcl[timm]'")

from mpcl import cli  # noqa: E402
from mpcl.config import ConfigError  # noqa: E402
from mpcl.config.compose import declared_only, load  # noqa: E402
from mpcl.data.batch import Batch  # noqa: E402
from mpcl.engine.optim import build_optimizer  # noqa: E402
from mpcl.methods import METHODS, build_method  # noqa: E402
from mpcl.methods.base import build_encoder  # noqa: E402
from tests.helpers.runs import tiny_overrides  # noqa: E402

VIT = "timm/vit_tiny_patch16_224"
TINY = [VIT, "timm/convnext_atto", "timm/resnet10t"]
N, CLASSES, SAMPLES = 6, 10, 40


def _config(method: str = "simclr", backbone: str = VIT, **extra):
    over = {"method.name": method, "model.backbone": backbone, "data.dataset": "cifar10", "data.batch_size": N,
            "data.loader": "torch", "model.projector_hidden": 16, "model.projector_out": 8,
            "model.predictor_hidden": 4, "method.queue_size": 4 * N, "method.embed_dim": 8, "out": "/tmp/unused",
            **extra}
    return load(None, declared_only(method, over))   # the method.* keys this method has


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(N, 3, 32, 32, generator=g) for _ in range(2)]
    return Batch(views, torch.arange(N) * 3, torch.tensor([1, 4, 1, 7, 4, 1]))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_a_training_step_with_a_timm_encoder(method):
    backbone = TINY[sorted(METHODS).index(method) % len(TINY)]   # each family meets one of them
    torch.manual_seed(0)
    m = build_method(_config(method, backbone), CLASSES, SAMPLES)
    optimizer = build_optimizer(_config(method, backbone), m.param_groups())
    before = {n: p.detach().clone() for n, p in m.backbone.named_parameters()}
    out = m.training_step(_batch(), epoch=0)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    moved = [n for n, p in m.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert moved, f"{method}: no backbone parameter moved"
    assert m(_batch().views[0]).shape == (N, m.feature_dim)


@pytest.mark.parametrize(("backbone", "width"), [(VIT, 192), ("timm/convnext_atto", 320), ("timm/resnet10t", 512)])
def test_the_feature_width_is_the_models(backbone, width):
    m = build_method(_config("simsiam", backbone), CLASSES, SAMPLES)
    assert m.feature_dim == width and m.projector[0].in_features == width
    assert m.probe.in_features == width


def test_a_vit_is_sized_to_the_crops_and_its_patches():
    net, dim = build_encoder(_config(backbone=VIT, **{"model.patch_size": 8}))
    assert net.patch_embed.grid_size == (4, 4) and net.pos_embed.shape[1] == 1 + 16
    assert net.timm_create_kwargs == {"model_name": "vit_tiny_patch16_224", "pretrained": False,
                                      "num_classes": 0, "img_size": 32, "patch_size": 8}
    net, _ = build_encoder(_config(backbone="timm/convnext_atto"))
    assert "img_size" not in net.timm_create_kwargs        # a convnet takes any size


def _group_names(m) -> dict[str, set[str]]:
    names = {id(p): n for n, p in m.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in m.param_groups()}


def test_a_vits_embeddings_norms_and_biases_take_no_decay():
    m = build_method(_config("simclr", VIT), CLASSES, SAMPLES)
    groups = _group_names(m)
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.norm.weight", "backbone.norm.bias",
                 "backbone.blocks.0.norm1.weight", "backbone.blocks.0.attn.qkv.bias", "backbone.patch_embed.proj.bias"):
        assert name in groups["no_decay"], name
    for name in ("backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight",
                 "backbone.blocks.11.mlp.fc2.weight", "projector.0.weight"):
        assert name in groups["decay"], name
    params = dict(m.named_parameters())
    assert all(params[n].ndim >= 2 for n in groups["decay"])
    optimizer = build_optimizer(_config("simclr", VIT, **{"optim.name": "adamw", "optim.beta2": 0.95}),
                                m.param_groups())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in optimizer.param_groups if g["name"] == "no_decay"] == [0.0]


def test_without_the_exclusion_everything_decays():
    m = build_method(_config("simclr", VIT, **{"optim.exclude_bn_bias": False}), CLASSES, SAMPLES)
    assert "no_decay" not in _group_names(m) and "backbone.pos_embed" in _group_names(m)["decay"]


def test_weights_from_a_file_are_loaded_strictly(tmp_path):
    from safetensors.torch import save_file

    source, _ = build_encoder(_config(backbone="timm/resnet10t"))
    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for file in ("w.pt", "w.safetensors"):
        net, _ = build_encoder(_config(backbone="timm/resnet10t", **{"model.weights": str(tmp_path / file)}))
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items()), file
    with pytest.raises(ConfigError, match=r"^model\.weights=.*w\.pt: does not fit model\.backbone=timm/resnet18: "
                                          r"\d+ missing .*unexpected"):
        _config(backbone="timm/resnet18", **{"model.weights": str(tmp_path / "w.pt")})


@pytest.mark.parametrize(("over", "message"), [
    ({"model.weights": "/no/such/w.pt"}, r"^model\.weights=/no/such/w\.pt: no such file$"),
    ({"model.backbone": "timm/vit_tiny_patch4_32"},
     r"^model\.backbone=timm/vit_tiny_patch4_32: no such timm model; close: .*vit_tiny_patch16_224.*model\.patch_size"),
    ({"model.backbone": "timm/resnet10t", "model.patch_size": 8}, r"^model\.patch_size=8: .*not a ViT"),
    ({"model.backbone": "small_cnn", "model.patch_size": 8}, r"^model\.patch_size=8: for timm models only"),
    ({"model.backbone": "timm_resnet18"}, r"^model\.backbone='timm_resnet18': unknown; allowed: .*timm/<model>"),
    ({"model.backbone": VIT, "model.patch_size": 5},
     r"^model\.patch_size=5: 5 px patches do not tile the 32 px crop .* divisor of 32 \(e\.g\. 4, 8, 16, 32\)$"),
    ({"model.backbone": VIT, "data.image_size": 24},
     rf"^model\.backbone={VIT}: 16 px patches do not tile the 24 px crop"),
])
def test_what_cannot_work_is_one_line_naming_the_key(over, message):
    with pytest.raises(ConfigError, match=message) as e:
        _config(**over)
    assert "\n" not in str(e.value)


def test_without_timm_a_timm_backbone_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError, match=r"^model\.backbone=timm/resnet10t: needs timm: pip install 'mpcl\[timm\]'$"):
        _config(backbone="timm/resnet10t")


def test_the_vit_part_composes_on_a_preset():
    cfg = load(["fmnist_simclr", "parts/backbone/vit_tiny"])
    assert cfg.model.backbone == VIT and cfg.model.patch_size == 4 and cfg.method.name == "simclr"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.scale_lr) == ("adamw", 1.5e-4, 0.1, True)


def _losses(out) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_vit_tinys_simclr_loss_falls_over_three_epochs(tmp_path, fmnist_path):
    out = tmp_path / "run"
    cli.main(["train", "--no-ray", "--config", "fmnist_simclr", "--config", "parts/backbone/vit_tiny",
              *tiny_overrides(out, "simclr", **{
                  "model.backbone": VIT, "model.patch_size": 16, "data.path": fmnist_path, "data.subset": 256,
                  "data.val_subset": 128, "data.batch_size": 64, "train.epochs": 3, "train.eval_every": 3,
                  "optim.lr": 1e-3, "optim.warmup_epochs": 0, "tracking.wandb": "disabled"})])
    losses = _losses(out)
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.05, losses
