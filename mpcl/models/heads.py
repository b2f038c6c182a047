"""Projector and predictor MLPs with the layouts of the original implementations."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], last_bn: bool = False, last_bn_affine: bool = True, bias: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU for every hidden layer, then a Linear (optionally followed by BN).

    Hidden linears have no bias (BN follows them); ``bias`` applies to the last linear only
    when it is not followed by BN.
    """
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=bias and not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
    return nn.Sequential(*layers)


def projector(kind: str, in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """``simclr``: in-hidden(BN, ReLU)-out(BN), the paper's SimCLR head (512-512-128 for ResNet-18).
    ``simsiam``: in-hidden-hidden-out, Linear-BN-ReLU twice then Linear + BN without affine
    (2048-2048-2048 in the SimSiam recipe).
    """
    if kind == "simclr":
        return mlp([in_dim, hidden, out], last_bn=True)
    if kind == "simsiam":
        return mlp([in_dim, hidden, hidden, out], last_bn=True, last_bn_affine=False)
    raise KeyError(f"unknown projector kind {kind!r}; known: simclr, simsiam")


def predictor(dim: int, hidden: int) -> nn.Sequential:
    """SimSiam bottleneck predictor: dim-hidden(BN, ReLU)-dim (2048-512-2048)."""
    return mlp([dim, hidden, dim], last_bn=False, bias=True)
