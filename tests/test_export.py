"""``mpcl export``: every format loaded by its real consumer (torchvision, onnxruntime,
safetensors) gives the features of mpcl's own encoder on the same batch, and the model card
says how to rebuild and feed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcl import cli
from mpcl.config import to_dict
from mpcl.config.compose import load
from mpcl.methods import build_method
from mpcl.models import build_backbone

TOL = 1e-4


def _randomized(method: torch.nn.Module, seed: int) -> None:
    """Weights and BatchNorm statistics away from their initial values, so that a format that
    drops the running statistics or a layer differs from the encoder."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in method.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.1)


def make_run(root: Path, backbone: str, method: str = "simclr", **extra) -> tuple[Path, torch.nn.Module]:
    """A run directory with a checkpoint of epoch 2 and its metrics, as training leaves them;
    returns it and the method in eval mode."""
    overrides = {"method.name": method, "model.backbone": backbone, "data.dataset": "cifar10",
                 "out": str(root), **extra}
    cfg = load(None, overrides)
    m = build_method(cfg, 10, 64)
    _randomized(m, seed=len(backbone))
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"model": m.state_dict(), "epoch": 2, "config": to_dict(cfg)}, root / "checkpoints" / "last.pt")
    lines = [{"epoch": e, "train/loss": 5.0 - e, "val/knn_top1": 40.0 + e} for e in range(3)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, m.eval()


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("stem", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["cifar_stem", "imagenet_stem"])
def test_every_format_gives_the_encoders_features(tmp_path, batch, stem, capsys):
    import onnxruntime
    import torchvision
    from safetensors import safe_open
    from safetensors.torch import load_file

    run, method = make_run(tmp_path / "run", "resnet18", **{"model.cifar_stem": stem})
    cli.main(["export", str(run)])
    folder = run / "export"
    printed = capsys.readouterr().out
    assert f"model card: {folder / 'model_card.json'}" in printed and printed.count("exported: ") == 3
    card = json.loads((folder / "model_card.json").read_text())
    with torch.no_grad():
        expected = method(batch).numpy()

    net = torchvision.models.resnet18(weights=None)
    for swap in card["architecture"]["module_swaps"]:    # the card's own instructions, as written
        exec(f"net.{swap}", {"torch": torch, "net": net})
    net.load_state_dict(torch.load(folder / "encoder_torchvision.pt", weights_only=True), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(batch).numpy(), expected, atol=TOL, rtol=0)

    session = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": batch.numpy()})      # batch 5: the batch axis is free
    np.testing.assert_allclose(features, expected, atol=TOL, rtol=0)

    encoder, dim = build_backbone("resnet18", stem)
    encoder.load_state_dict(load_file(folder / "encoder.safetensors"), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(encoder.eval()(batch).numpy(), expected, atol=TOL, rtol=0)
    with safe_open(folder / "encoder.safetensors", "pt") as f:
        assert f.metadata()["backbone"] == "resnet18" and f.metadata()["cifar_stem"] == str(stem).lower()
    assert features.shape == (5, dim) == (5, 512)


def test_the_model_card(tmp_path):
    run, _ = make_run(tmp_path / "run", "small_cnn", "simclr_attn", **{"data.normalize": True,
                                                                       "method.temperature": 0.3})
    cli.main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x")])
    card = json.loads((tmp_path / "x" / "model_card.json").read_text())
    assert card["format_files"] == {"onnx": "encoder.onnx"} and sorted(p.name for p in (tmp_path / "x").iterdir()) \
        == [".lock", "encoder.onnx", "model_card.json"]
    assert card["epochs_trained"] == 3 and card["metrics"] == {"val/knn_top1": 42.0}
    assert card["method"]["name"] == "simclr_attn" and card["method"]["temperature"] == 0.3
    assert card["input"]["shape"] == [3, 32, 32] and card["input"]["range"] == [0.0, 1.0]
    assert card["input"]["normalize"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert card["architecture"]["torchvision"] is None and card["data"]["manifest_sha256"] is None
    from mpcl import __version__
    assert card["mpcl_version"] == __version__


def test_mcl_exports_the_network_it_evaluates(tmp_path, batch):
    """MCL trains several networks; the export is ``method.eval_network``'s, as kNN reads it."""
    import onnxruntime

    run, method = make_run(tmp_path / "run", "small_cnn", "mcl", **{"method.num_networks": 2,
                                                                     "method.eval_network": 1})
    cli.main(["export", str(run / "checkpoints" / "last.pt"), "--format", "onnx,safetensors"])
    session = onnxruntime.InferenceSession(str(run / "export" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected, other = method(batch).numpy(), method.backbone(batch).numpy()
    (features,) = session.run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(features, expected, atol=TOL, rtol=0)
    assert np.abs(features - other).max() > 1e-2            # not network 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "torchvision"], "--format torchvision: model.backbone='small_cnn' is not a torchvision model"),
    (["--format", "tflite"], "--format tflite: allowed: torchvision, timm, onnx, safetensors"),
    (["--format", "timm"], "--format timm: model.backbone='small_cnn' is not a timm model"),
])
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    run, _ = make_run(tmp_path / "run", "small_cnn")
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(run), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (run / "export").exists()


def test_all_formats_are_those_that_fit_the_backbone(tmp_path):
    run, _ = make_run(tmp_path / "run", "small_cnn")
    cli.main(["export", str(run)])
    assert sorted(p.name for p in (run / "export").iterdir()) == [".lock", "encoder.onnx", "encoder.safetensors",
                                                                   "model_card.json"]


def test_a_folder_without_a_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(tmp_path)])
    assert e.value.code == 2 and "no checkpoint" in capsys.readouterr().err


# a ViT-Tiny at the 32 px crops of CIFAR-10 with 8 px patches (16 tokens): a second or two on a CPU
VIT = {"model.backbone": "timm/vit_tiny_patch16_224", "model.patch_size": 8}


def test_a_timm_encoder_exports_as_timm_loads_it(tmp_path, batch):
    timm = pytest.importorskip("timm", reason="the timm format needs timm: pip install 'mpcl[timm]'")
    import onnxruntime

    run, method = make_run(tmp_path / "run", VIT["model.backbone"], **VIT)
    cli.main(["export", str(run)])
    files = sorted(p.name for p in (run / "export").iterdir())
    assert files == [".lock", "encoder.onnx", "encoder.safetensors", "encoder_timm.pt", "model_card.json"]
    card = json.loads((run / "export" / "model_card.json").read_text())
    call = card["architecture"]["timm"]
    assert call == ("timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0, img_size=32, "
                    "patch_size=8)")
    rebuilt = eval(call, {"timm": timm})   # the card's call, as a user would run it
    rebuilt.load_state_dict(torch.load(run / "export" / "encoder_timm.pt", weights_only=True), strict=True)
    with torch.no_grad():
        expected, features = method(batch), rebuilt.eval()(batch)
    assert (features - expected).abs().max().item() <= TOL
    session = onnxruntime.InferenceSession(str(run / "export" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(onnx_features, expected.numpy(), atol=TOL, rtol=0)


@pytest.mark.slow   # the fast suite has the timm and torchvision formats each on their own
def test_timms_resnet18_exports_in_all_four_formats(tmp_path, batch):
    """timm's resnet18 is torchvision's modules under torchvision's names: the torchvision file
    loads into torchvision.models.resnet18 (classifier swapped only) as the timm file into timm."""
    timm = pytest.importorskip("timm", reason="timm backbones need timm: pip install 'mpcl[timm]'")
    import torchvision
    from safetensors.torch import load_file

    run, method = make_run(tmp_path / "run", "timm/resnet18")
    cli.main(["export", str(run), "--format", "torchvision,timm,onnx,safetensors"])
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["architecture"]["torchvision"] == "torchvision.models.resnet18(weights=None)"
    assert card["architecture"]["module_swaps"] == ["fc = torch.nn.Identity()"]
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(run / "export" / "encoder_torchvision.pt", weights_only=True), strict=True)
    rebuilt = eval(card["architecture"]["timm"], {"timm": timm})
    rebuilt.load_state_dict(load_file(run / "export" / "encoder.safetensors"), strict=True)
    with torch.no_grad():
        expected = method(batch)
        for model in (net, rebuilt):
            assert (model.eval()(batch) - expected).abs().max().item() <= TOL


def test_torchvision_refuses_a_timm_resnet(tmp_path, capsys):
    pytest.importorskip("timm", reason="timm backbones need timm: pip install 'mpcl[timm]'")
    run, _ = make_run(tmp_path / "run", "timm/resnet10t")
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(run), "--format", "torchvision"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --format torchvision: model.backbone='timm/resnet10t' is not a torchvision model")
    assert "use timm, onnx or safetensors" in err
