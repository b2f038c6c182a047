"""Encoders: torchvision ResNets (optionally with the CIFAR stem), a small CNN for CPU runs and,
by the name ``timm/<model>``, any timm model (``mpcl.models.timm_backbone``).

Every backbone maps (B, 3, H, W) images to (B, D) features (after global average pooling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mpcl.models.timm_backbone import check_fit, check_name, create, is_timm, load_weights


def _resnet(arch: str, cifar_stem: bool, zero_init_residual: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        # small images: 3x3 stride-1 conv1 and no max-pool (SimCLR / SimSiam CIFAR recipes)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (32-64-128-256), the last three with stride 2, global average pool.

    About 0.4M parameters: a few seconds per thousand 32x32 images on a laptop CPU. Strided
    convolutions rather than max-pooling downsample, as in ResNets: max-pooled random
    features are already a strong kNN baseline on small grey images, which hides what
    training adds.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _small_cnn(cifar_stem: bool, zero_init_residual: bool) -> tuple[nn.Module, int]:
    net = SmallCNN()
    return net, net.out_dim


BACKBONES: dict[str, Callable[[bool, bool], tuple[nn.Module, int]]] = {
    "resnet18": lambda stem, zir: _resnet("resnet18", stem, zir),
    "resnet50": lambda stem, zir: _resnet("resnet50", stem, zir),
    "small_cnn": _small_cnn,
}


def build_backbone(name: str, cifar_stem: bool = True, zero_init_residual: bool = False, *,
                   image_size: int = 0, patch_size: int = 0, dynamic_size: bool = False,
                   weights: str = "") -> tuple[nn.Module, int]:
    """(encoder, feature width). ``cifar_stem`` and ``zero_init_residual`` shape the torchvision
    ResNets only; ``image_size`` (the crop side), ``patch_size`` (0: the model's own) and
    ``dynamic_size`` (views of several sizes) shape timm models. ``weights``: a state-dict file
    loaded strictly after creation ("" = random initialisation)."""
    if is_timm(name):
        net, dim = create(name, image_size, patch_size, dynamic_size)
    elif name in BACKBONES:
        net, dim = BACKBONES[name](cifar_stem, zero_init_residual)
    else:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))} or timm/<model>")
    if weights:
        load_weights(net, weights, name)
    return net, dim


def check_backbone(name: str, cifar_stem: bool = True, zero_init_residual: bool = False, *,
                   image_size: int = 0, patch_size: int = 0, dynamic_size: bool = False,
                   weights: str = "") -> None:
    """What ``build_backbone`` would raise, found before any work: timm missing or no such
    timm model, kwargs the model does not take, weights that do not fit (BackboneError, one line
    naming the key). Builds on the meta device: no memory, no initialisation cost."""
    if is_timm(name):
        check_name(name)
    if is_timm(name) or weights:
        with torch.device("meta"):
            net, _ = build_backbone(name, cifar_stem, zero_init_residual, image_size=image_size,
                                    patch_size=patch_size, dynamic_size=dynamic_size)
        if weights:
            check_fit(net, weights, name)
