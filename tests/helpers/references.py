"""Reference computations shared by the method and loss tests (direct loops, float64), and a
small method config for building methods without data."""

from __future__ import annotations

import math

import torch

from mpcl.config.compose import load


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_method(name, **extra):
    """The config of method ``name`` on a small CNN with small heads, batch 4, then ``extra``."""
    over = {"method.name": name, "model.backbone": "small_cnn", "data.batch_size": 4, "model.projector_hidden": 16,
            "model.projector_out": 8, "out": "/tmp/unused", **extra}
    return load(None, [f"{k}={v}" for k, v in over.items()])


def reference_barlow(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape
    def std(z):
        out = torch.empty_like(z)
        for j in range(d):
            col = z[:, j]
            mu = sum(col.tolist()) / n
            var = sum((v - mu) ** 2 for v in col.tolist()) / n
            out[:, j] = (col - mu) / math.sqrt(var + eps)
        return out
    a, b = std(z1), std(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def released_attention_loss(u, h, T, a=1.0, attention_temperature=1.0):
    """The released GRAPH-ATTENTION NTXent, re-derived as a loop over anchors: z = u / |u|,
    logprob_i = s(i, p(i))/T - log sum_{k != i} exp(s(i, k)/T), pair weights from detached
    features. At a = 1 and attention temperature 1 the weight is exp(cos(h_i, h_p(i)) + 1) as
    released; otherwise c_i = (1 - a) + a * N softmax_i(cos_i / t). Loss = -sum c_i logprob_i /
    sum c_i (the weights' sum carries no gradient)."""
    N = u.shape[0]
    n = N // 2
    z = [u[i] / u[i].norm() for i in range(N)]
    cos = [float(h[i] @ h[(i + n) % N] / (h[i].norm() * h[(i + n) % N].norm())) for i in range(N)]
    if a == 1.0 and attention_temperature == 1.0:
        c = [math.exp(cs + 1.0) for cs in cos]
    else:
        e = [math.exp((cs - max(cos)) / attention_temperature) for cs in cos]   # softmax, shifted
        c = [(1 - a) + a * N * ei / sum(e) for ei in e]
    total = 0.0
    for i in range(N):
        logits = [z[i] @ z[k] / T for k in range(N) if k != i]
        logprob = z[i] @ z[(i + n) % N] / T - torch.logsumexp(torch.stack(logits), 0)
        total = total - c[i] * logprob
    return total / sum(c)
