"""Any timm model as an encoder (``model.backbone=timm/<name>``), and weights from a local file.

timm is an optional dependency (``pip install 'mpcl[timm]'``) imported inside these functions
only, so ``import mpcl`` never imports it. A timm encoder is
``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``: globally pooled
features (B, ``num_features``), nothing downloaded. The kwargs follow the data: ``img_size`` (the
crop side) for models that take one (ViTs: their patch grid and position embeddings follow it),
``patch_size`` when ``model.patch_size`` is set, ``dynamic_img_size=True`` with multi-crop (views
of two sizes).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn


class BackboneError(ValueError):
    """A backbone that cannot be built as configured; one line naming the config key
    (``mpcl.config.compose`` reports it as a ConfigError)."""

PREFIX = "timm/"


def is_timm(backbone: str) -> bool:
    return backbone.startswith(PREFIX)


def _timm(backbone: str):
    try:
        import timm
    except ImportError:
        raise BackboneError(f"model.backbone={backbone}: needs timm: pip install 'mpcl[timm]'") from None
    return timm


def check_name(backbone: str) -> None:
    """One-line BackboneErrors: timm missing, or no timm model of that name (with close names)."""
    timm = _timm(backbone)
    name = backbone[len(PREFIX):]
    if timm.is_model(name):
        return
    names = timm.list_models()
    stem = name.split("_")[0]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6) or timm.list_models(f"{stem}*")[:5]
    hint = f"; close: {', '.join(close)}" if close else ""
    raise BackboneError(f"model.backbone={backbone}: no such timm model{hint} "
                        "(timm.list_models('pattern*') lists them; ViT patch sizes: model.patch_size)")


def create(backbone: str, image_size: int = 0, patch_size: int = 0,
           dynamic_size: bool = False) -> tuple[nn.Module, int]:
    """(the timm model without its classifier, its feature width). The exact call's kwargs are
    kept as ``module.timm_create_kwargs`` (what export writes in the model card)."""
    timm = _timm(backbone)
    kwargs: dict[str, Any] = {"model_name": backbone[len(PREFIX):], "pretrained": False, "num_classes": 0}
    if image_size:
        kwargs["img_size"] = image_size
    if patch_size:
        kwargs["patch_size"] = patch_size
    if dynamic_size:
        kwargs["dynamic_img_size"] = True
    while True:
        try:
            net = timm.create_model(**kwargs)
            break
        except TypeError as e:
            unexpected = [k for k in ("img_size", "patch_size", "dynamic_img_size")
                          if f"keyword argument '{k}'" in str(e)]
            if not unexpected or (unexpected[0] == "img_size" and "img_size" not in kwargs):
                raise
            if unexpected[0] == "patch_size":
                raise BackboneError(f"model.patch_size={patch_size}: model.backbone={backbone} has no patch "
                                    "size (not a ViT); set model.patch_size=0") from None
            if unexpected[0] == "dynamic_img_size":
                raise BackboneError(f"data.num_small_crops: model.backbone={backbone} takes one image size "
                                    "(no dynamic_img_size), so no multi-crop; set data.num_small_crops=0") from None
            # a convnet: it takes any image size, nothing to size
            kwargs.pop("img_size"), kwargs.pop("dynamic_img_size", None)
    _check_patches(net, backbone, image_size, patch_size)
    net.timm_create_kwargs = kwargs
    return net, int(net.num_features)


def _check_patches(net: nn.Module, backbone: str, image_size: int, patch_size: int) -> None:
    """A ViT's patches must tile the crop: timm would otherwise drop the pixels past the last
    whole patch without a word."""
    embed = getattr(net, "patch_embed", None)
    side = getattr(embed, "patch_size", None)
    side = side[0] if isinstance(side, tuple) else side
    if not image_size or not isinstance(side, int) or image_size % side == 0:
        return
    fits = [p for p in (4, 8, 14, 16, 32) if image_size % p == 0]
    key = f"model.patch_size={patch_size}" if patch_size else f"model.backbone={backbone}"
    raise BackboneError(f"{key}: {side} px patches do not tile the {image_size} px crop (data.image_size); "
                        f"set model.patch_size to a divisor of {image_size}"
                        + (f" (e.g. {', '.join(map(str, fits))})" if fits else ""))


def create_call(kwargs: dict[str, Any]) -> str:
    """The Python call that rebuilds a timm encoder from its ``timm_create_kwargs``."""
    args = [repr(kwargs["model_name"]), *(f"{k}={v!r}" for k, v in kwargs.items() if k != "model_name")]
    return f"timm.create_model({', '.join(args)})"


def _read(path: str, shapes_only: bool) -> dict[str, Any]:
    """``path``'s tensors (or, when ``shapes_only``, their shapes, without reading the data)."""
    if not Path(path).is_file():
        raise BackboneError(f"model.weights={path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.torch import load_file
            if not shapes_only:
                return load_file(path)
            with safe_open(path, "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=shapes_only)
    except Exception as e:  # a torn or foreign file: one line saying which
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneError(f"model.weights={path}: not a readable state dict ({detail})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"model.weights={path}: not a state dict (a mapping of names to tensors)")
    return {k: tuple(v.shape) for k, v in state.items()} if shapes_only else state


def check_fit(net: nn.Module, path: str, backbone: str) -> None:
    """Whether ``path``'s state dict fits ``net`` (a meta-device copy will do): the same keys,
    the same shapes; a BackboneError naming ``model.weights`` when not."""
    shapes = _read(path, shapes_only=True)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, extra = sorted(own.keys() - shapes.keys()), sorted(shapes.keys() - own.keys())
    other = sorted(k for k in own.keys() & shapes.keys() if own[k] != shapes[k])
    if missing or extra or other:
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", extra), ("of another shape", other)) if v]
        raise BackboneError(f"model.weights={path}: does not fit model.backbone={backbone}: {'; '.join(parts)}")


def load_weights(net: nn.Module, path: str, backbone: str) -> None:
    """``path``'s state dict into ``net``, strictly: every key present, none extra, shapes equal."""
    check_fit(net, path, backbone)
    net.load_state_dict(_read(path, shapes_only=False), strict=True)
