"""``mpcl export RUN``: a run's encoder as plain files that other tools load without mpcl.

Formats (``FORMATS``), each written atomically into the export folder:

- ``torchvision``: ``encoder_torchvision.pt``, a state dict that ``torchvision.models.resnet18``
  / ``resnet50`` loads with ``strict=True`` once its classifier is ``fc = nn.Identity()`` (and,
  for the CIFAR stem, ``conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)``, ``maxpool =
  nn.Identity()``); the model card lists these swaps. The torchvision ResNets, and timm's
  ``resnet18`` / ``resnet50``, whose tensors are torchvision's.
- ``timm``: ``encoder_timm.pt``, a state dict that the model card's ``architecture.timm`` call
  (``timm.create_model(name, pretrained=False, num_classes=0, img_size=..., ...)``) loads with
  ``strict=True``. timm backbones only.
- ``onnx``: ``encoder.onnx`` (opset ``ONNX_OPSET``, a dynamic batch axis), input ``images``
  (N, 3, H, W) float32, output ``features`` (N, D); what onnxruntime runs.
- ``safetensors``: ``encoder.safetensors``, the backbone's state dict with the model card's
  main fields in its metadata.

Beside them, ``model_card.json``: the architecture and how to rebuild it, the input (size,
value range, the normalisation the encoder was trained with), the method and its knobs, the
epochs trained, the last evaluation's metrics, the data manifest's hash and mpcl's version.
The encoder is the one kNN and the probes evaluate (MCL: ``method.eval_network``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcl.launch import LaunchError
from mpcl.models.timm_backbone import create_call, is_timm

FORMATS = ("torchvision", "timm", "onnx", "safetensors")
ONNX_OPSET = 17              # onnxruntime 1.16 and later run it on CPU and CUDA
FILES = {"torchvision": "encoder_torchvision.pt", "timm": "encoder_timm.pt", "onnx": "encoder.onnx",
         "safetensors": "encoder.safetensors"}
CARD = "model_card.json"
RESNETS = ("resnet18", "resnet50")


def torchvision_arch(backbone: str) -> str | None:
    """The torchvision ResNet whose state dict ``backbone``'s is: mpcl's own ResNets, and timm's
    ``resnet18`` / ``resnet50`` (the same modules under the same names, ImageNet stem)."""
    name = backbone.removeprefix("timm/")
    return name if name in RESNETS else None


def load_encoder(checkpoint: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(the encoder in eval mode, its run's Config, the checkpoint) from a checkpoint file."""
    from mpcl.config import ConfigError
    from mpcl.config.compose import from_dict
    from mpcl.engine.checkpoint import CheckpointError
    from mpcl.engine.checkpoint import load as load_checkpoint
    from mpcl.methods import method_class
    from mpcl.methods.base import build_encoder

    try:
        state = load_checkpoint(checkpoint)
        cfg = from_dict(state["config"], {"model.weights": ""})   # the checkpoint's weights replace them
    except (CheckpointError, ConfigError) as e:
        raise LaunchError(str(e)) from None
    prefix = method_class(cfg.method.name).encoder_prefix(cfg.method)
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    encoder, _ = build_encoder(cfg, initial_weights=False)
    encoder.load_state_dict(weights, strict=True)
    return encoder.float().eval(), cfg, state


def model_card(cfg, state: dict[str, Any], run: Path, checkpoint: Path, files: dict[str, str],
               encoder: nn.Module) -> dict[str, Any]:
    """What a user of the exported files needs to know, as plain JSON values."""
    from data_prep import sha256_file
    from mpcl import __version__
    from mpcl.config import to_dict
    from mpcl.data.datasets import dataset_spec
    from mpcl.tracking import read_metrics

    spec = dataset_spec(cfg.data)
    arch = cfg.model.backbone
    tv = torchvision_arch(arch)
    swaps = ["fc = torch.nn.Identity()"]
    if arch in RESNETS and cfg.model.cifar_stem:
        swaps = ["conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                 "maxpool = torch.nn.Identity()", *swaps]
    metrics = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    last = metrics[-1] if metrics else {}
    manifest = Path(cfg.data.path) / "manifest.json"
    return {
        "format_files": files,
        "architecture": {"backbone": arch, "cifar_stem": cfg.model.cifar_stem,
                         "torchvision": f"torchvision.models.{tv}(weights=None)" if tv else None,
                         "module_swaps": swaps if tv else None,
                         "timm": create_call(encoder.timm_create_kwargs) if is_timm(arch) else None},
        "input": {"shape": [3, spec.image_size, spec.image_size], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": "RGB", "normalize": {"mean": list(spec.mean), "std": list(spec.std)}
                  if cfg.data.normalize else None},
        "output": {"features": "global-average-pooled backbone features, (N, D)"},
        "method": to_dict(cfg)["method"],
        "epochs_trained": int(state["epoch"]) + 1,
        "metrics": {k: v for k, v in last.items() if k.startswith("val/")},
        "data": {"dataset": cfg.data.dataset, "path": cfg.data.path,
                 "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None},
        "checkpoint": str(checkpoint),
        "mpcl_version": __version__,
    }


def export(run: str | Path, formats: list[str] | None = None,
           out: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``formats`` (default: every one that fits the backbone) of ``run``'s encoder and
    the model card into ``out`` (default ``RUN/export``); returns (the folder, the card). One
    writer per folder."""
    from mpcl.files import exclusive, write_atomic, write_text_atomic

    from mpcl.launch.repeat import find_checkpoint, run_of

    unknown = [f for f in formats or () if f not in FORMATS]
    if unknown or formats == []:
        raise LaunchError(f"--format {','.join(formats)}: allowed: {', '.join(FORMATS)} (comma-separated), or all")
    checkpoint = find_checkpoint(run)
    run_dir = Path(run) if Path(run).is_dir() else run_of(checkpoint)
    encoder, cfg, state = load_encoder(checkpoint)
    formats = _fitting_formats(cfg.model.backbone, formats)
    folder = (Path(out) if out else run_dir / "export").resolve()
    files = {f: FILES[f] for f in formats}
    card = model_card(cfg, state, run_dir, checkpoint, files, encoder)
    with exclusive(folder, "--out"):
        for f in formats:
            data = ENCODERS[f](encoder, cfg, card)
            write_atomic(folder / FILES[f], lambda file, data=data: file.write(data), needs=len(data))
        write_text_atomic(folder / CARD, json.dumps(card, indent=2) + "\n")
    return folder, card


def _fitting_formats(backbone: str, formats: list[str] | None) -> list[str]:
    """``formats``, or by default every format that fits ``backbone``; a format asked for that
    does not fit is a LaunchError (torchvision: the torchvision ResNets; timm: timm models)."""
    fits = {"torchvision": torchvision_arch(backbone) is not None, "timm": is_timm(backbone)}
    if formats is None:
        return [f for f in FORMATS if fits.get(f, True)]
    for f in formats:
        if not fits.get(f, True):
            kind = f"a torchvision model (torchvision: {', '.join(RESNETS)}, or timm's)" if f == "torchvision" \
                else "a timm model (model.backbone=timm/<name>)"
            other = "timm, " if is_timm(backbone) else ""
            raise LaunchError(f"--format {f}: model.backbone={backbone!r} is not {kind}; "
                              f"use {other}onnx or safetensors")
    return formats


def _state_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def _state_dict(encoder: nn.Module, cfg, card: dict) -> bytes:
    return _state_bytes({k: v.detach().clone() for k, v in encoder.state_dict().items()})


def _onnx(encoder: nn.Module, cfg, card: dict) -> bytes:
    size = card["input"]["shape"][1]
    buffer = io.BytesIO()
    with warnings.catch_warnings():   # the TorchScript-based exporter: no onnxscript needed
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.zeros(1, 3, size, size),), buffer, dynamo=False,
                          input_names=["images"], output_names=["features"], opset_version=ONNX_OPSET,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return buffer.getvalue()


def _safetensors(encoder: nn.Module, cfg, card: dict) -> bytes:
    try:
        from safetensors.torch import save
    except ImportError:
        raise LaunchError("--format safetensors needs the safetensors package: pip install 'mpcl[export]'") from None
    tensors = {k: v.detach().contiguous().clone() for k, v in encoder.state_dict().items()}
    metadata = {"backbone": cfg.model.backbone, "cifar_stem": str(cfg.model.cifar_stem).lower(),
                "method": cfg.method.name, "image_size": str(card["input"]["shape"][1]),
                "mpcl_version": card["mpcl_version"]}
    return save(tensors, metadata=metadata)


# format -> its bytes (the torchvision and timm files: the encoder's state dict as it is)
ENCODERS = {"torchvision": _state_dict, "timm": _state_dict, "onnx": _onnx, "safetensors": _safetensors}
