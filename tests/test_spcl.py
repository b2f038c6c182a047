"""SPCL: k-means, pseudo-labels aligned with dataset indices, label blindness, and the
method's step against the reference (stoneMo/SPCL) with its three switches."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcl.config import ConfigError
from mpcl.data.augment import EvalTransform, SSLAugment
from mpcl.data.batch import Batch
from mpcl.data.datasets import DATASETS
from mpcl.data.loaders import EvalLoader, TensorTrainLoader
from mpcl.losses import prototype_pairs, spcl_terms
from mpcl.methods import build_method
from mpcl.methods.clustering import cluster_features, kmeans
from mpcl.methods.spcl import dataset_order, loader_order_draws
from tests.helpers.references import gen, small_method

D64 = torch.float64


def test_kmeans_recovers_well_separated_clusters():
    g = gen(80)
    centres = torch.randn(5, 8, generator=g) * 20
    truth = torch.randint(5, (400,), generator=g)
    x = centres[truth] + torch.randn(400, 8, generator=g)
    labels, centroids = kmeans(x, 5, iters=30, seed=0)
    assert centroids.shape == (5, 8)
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({p for _, p in pairs}) == 5    # a bijection
    assert torch.equal(kmeans(x, 5, iters=30, seed=0)[0], labels)  # deterministic


def test_dataset_order_of_sharded_eval_loaders():
    images, labels = torch.zeros(23, 3, 4, 4, dtype=torch.uint8), torch.zeros(23, dtype=torch.long)
    feats = torch.arange(23, dtype=torch.float32)[:, None]      # feature = the sample's index
    order, gathered = [], []
    for rank in range(2):                       # what extract + gather_uneven produce for world 2
        ld = EvalLoader(images, labels, 5, EvalTransform(4), torch.device("cpu"), rank, 2)
        idx = ld.sample_indices()
        order.append(idx)
        gathered.append(feats[idx])
        assert sum(len(y) for _, y in ld) == len(idx)
    out = dataset_order(torch.cat(gathered), torch.cat(order), 23)
    assert torch.equal(out, feats)


class _ColourMean(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


def _spcl_setup(n=60):
    """Images whose colour encodes a group (i % 3): interleaved, so index order != group order."""
    g = gen(90)
    group = torch.arange(n) % 3
    images = torch.full((n, 3, 8, 8), 30, dtype=torch.uint8)
    images[torch.arange(n), group] = 220
    images = (images.int() + torch.randint(-10, 10, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    cfg = small_method("spcl", **{"method.num_prototypes": 3, "method.pca_dim": 2, "data.batch_size": 12})
    torch.manual_seed(0)
    method = build_method(cfg, 10, n)
    method.backbone = _ColourMean()          # features that cluster by group, no training needed
    loaders = type("L", (), {})()
    loaders.train_eval = EvalLoader(images, torch.full((n,), 10**6), 16, EvalTransform(8), torch.device("cpu"))
    return method, loaders, images, group


def test_spcl_pseudo_labels_line_up_with_indices_after_a_shuffled_epoch():
    method, loaders, images, group = _spcl_setup()
    reset = method.on_epoch_start(0, loaders, contextlib.nullcontext)
    assert reset == list(method.classifier.parameters())
    assert int(method.clustered_epoch) == 0 and method.classifier.out_features == 3
    mapping = dict(zip(group.tolist(), method.pseudo_labels.tolist()))
    assert len(set(mapping.values())) == 3                                  # clusters = groups
    train = TensorTrainLoader(images, group, 12, 0, 1, 0, SSLAugment(8), torch.device("cpu"))
    train.set_epoch(3)
    seen = 0
    assert next(iter(train)).index.tolist() != list(range(12))   # a shuffled epoch
    for batch in train:                       # look pseudo-labels up by dataset index
        want = torch.tensor([mapping[int(c)] for c in batch.label])
        assert torch.equal(method.pseudo_labels[batch.index], want)
        seen += len(batch.index)
    assert seen == 60
    assert method.on_epoch_start(1, loaders, contextlib.nullcontext)  # reassign=1: again


class _Poison(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"a ground-truth label was read ({func})")


def test_spcl_loss_never_reads_ground_truth_labels():
    method, loaders, images, group = _spcl_setup()
    method.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(4, method.feature_dim))
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    views = [images[:12].float() / 255, images[12:24].float() / 255]
    honest = Batch(views, torch.arange(12), group[:12])
    garbage = Batch(views, torch.arange(12), torch.full((12,), -7))
    poisoned = Batch(views, torch.arange(12), torch.zeros(12, dtype=torch.long).as_subclass(_Poison))
    with pytest.raises(AssertionError, match="ground-truth"):
        torch.sum(poisoned.label)             # the poison works
    losses = [method.ssl_loss(b, 0) for b in (honest, garbage, poisoned)]
    assert losses[0].loss.item() == losses[1].loss.item() == losses[2].loss.item()
    assert {"train/cluster_ce", "train/metric_bce", "train/nce"} <= losses[0].metrics.keys()


def _released_nt_xent(zi, zj, T):
    """The reference's SPCLCriterion as a loop: anchor a_r's positive is b_r, its negatives
    a_k and b_k (k != r); anchor b_r likewise; CE with the positive first, mean over 2B."""
    B = zi.shape[0]
    a = [zi[r] / zi[r].norm() for r in range(B)]
    b = [zj[r] / zj[r].norm() for r in range(B)]
    total = 0.0
    for anchors, others in ((a, b), (b, a)):
        for r in range(B):
            pos = anchors[r] @ others[r] / T
            negs = [anchors[r] @ anchors[k] / T for k in range(B) if k != r] + \
                   [anchors[r] @ others[k] / T for k in range(B) if k != r]
            total = total - (pos - torch.logsumexp(torch.stack([pos] + negs), 0))
    return total / (2 * B)


def _released_ce(logits, labels):
    return sum(-(logits[r, labels[r]] - torch.logsumexp(logits[r], 0)) for r in range(len(labels))) / len(labels)


def _released_bce(head, x, y, target):
    """BCEWithLogitsLoss(head(|x - y|), target), mean over rows."""
    total = 0.0
    for r in range(x.shape[0]):
        s = head((x[r] - y[r]).abs())[0]
        p = 1 / (1 + torch.exp(-s))
        total = total - (target[r] * torch.log(p) + (1 - target[r]) * torch.log(1 - p))
    return total / x.shape[0]


def released_spcl_loss(zh_i, zh_j, zv_i, zv_j, h_i, h_j, v_i, v_j, y_hi, y_hj, y_vi, y_vj, lab_h, lab_v, sim, head,
                       T, cluster_weight, metric_weight):
    """The reference's pretrain_cluster_metric step: contras_weight (1) x (NT-Xent(h) + NT-Xent(v))
    + metric_weight x MetricCriterion + cluster_weight x the four CE terms."""
    cl = _released_nt_xent(zh_i, zh_j, T) + _released_nt_xent(zv_i, zv_j, T)
    ce = ((_released_ce(y_hi, lab_h) + _released_ce(y_hj, lab_h))
          + (_released_ce(y_vi, lab_v) + _released_ce(y_vj, lab_v)))
    ones = torch.ones_like(sim)
    metric = (_released_bce(head, h_i, h_j, ones) + _released_bce(head, v_i, v_j, ones)
              + _released_bce(head, h_i, v_i, sim) + _released_bce(head, h_i, v_j, sim)
              + _released_bce(head, h_j, v_i, sim) + _released_bce(head, h_j, v_j, sim))
    return cl + metric_weight * metric + cluster_weight * ce


def test_spcl_terms_match_the_reference_with_gradients():
    g = gen(11)
    B, dz, dh, P, T, cw, mw = 5, 4, 6, 3, 0.5, 0.7, 1.3
    leaves = {k: torch.randn(B, dz, generator=g, dtype=D64) for k in ("zhi", "zhj", "zvi", "zvj")}
    leaves.update({k: torch.randn(B, dh, generator=g, dtype=D64) for k in ("hi", "hj", "vi", "vj")})
    leaves.update({k: torch.randn(B, P, generator=g, dtype=D64) for k in ("yhi", "yhj", "yvi", "yvj")})
    lab_h, lab_v = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 1, 0, 0, 2])
    sim = (lab_h == lab_v).to(D64)
    assert 0 < sim.sum() < B
    head = nn.Linear(dh, 1).double()

    def run_(fn):
        x = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        head.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss.item(), {k: v.grad for k, v in x.items()}, [p.grad.clone() for p in head.parameters()]

    def ours(x):
        cat = torch.cat
        terms = spcl_terms(F.normalize(cat([x["zhi"], x["zhj"]]), dim=1), F.normalize(cat([x["zvi"], x["zvj"]]), dim=1),
                           cat([x["hi"], x["hj"]]), cat([x["vi"], x["vj"]]), cat([x["yhi"], x["yhj"]]),
                           cat([x["yvi"], x["yvj"]]), lab_h, lab_v, sim, head, T)
        return terms["nce"] + cw * terms["cluster"] + mw * terms["metric"]

    def released(x):
        return released_spcl_loss(x["zhi"], x["zhj"], x["zvi"], x["zvj"], x["hi"], x["hj"], x["vi"], x["vj"],
                                  x["yhi"], x["yhj"], x["yvi"], x["yvj"], lab_h, lab_v, sim, head, T, cw, mw)

    got, got_grads, got_head = run_(ours)
    want, want_grads, want_head = run_(released)
    assert abs(got - want) < 1e-6
    for k in leaves:
        assert torch.allclose(got_grads[k], want_grads[k], atol=1e-6, rtol=0), k
        assert got_grads[k].abs().max() > 1e-4, k
    for a, b in zip(got_head, want_head):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_prototype_pairs_follow_the_reference_sampler():
    """Odd pair slots: two samples of one label; even slots: two labels; disjoint pairs."""
    labels = torch.tensor([3, 1, 3, 2, 1, 1, 2, 3, 0, 2, 0, 1])
    first, second = prototype_pairs(labels)
    assert len(first) == 6
    assert sorted(first.tolist() + second.tolist()) == list(range(12))
    same = (labels[first] == labels[second]).tolist()
    assert same == [False, True, False, True, False, True]
    # no partner of the same label left: the slot falls back to a different one (and says so)
    f, s = prototype_pairs(torch.tensor([0, 1, 2, 3]))
    assert (torch.tensor([0, 1, 2, 3])[f] != torch.tensor([0, 1, 2, 3])[s]).all()
    f, s = prototype_pairs(torch.tensor([5, 5, 5, 5, 5]))       # one label: different pairs impossible
    assert len(f) == 2 and len(set(f.tolist()) | set(s.tolist())) == 4
    f, s = prototype_pairs(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert (torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[f] == torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[s]).tolist() == \
        [False, True, False, True]


def _released_method_loss(method, batch, pair_by):
    """What the reference computes on the pairs the method forms (float32 inputs)."""
    mc = method.params
    n = batch.index.shape[0]
    h, z = method.encode_views(batch)
    logits = method.classifier(h).float()
    first, second = prototype_pairs(pair_by)
    pseudo = method.pseudo_labels[batch.index]
    sim = (pair_by[first] == pair_by[second]).float()
    head = lambda x: method.metric_head(x).float()     # noqa: E731
    return released_spcl_loss(z[first], z[n + first], z[second], z[n + second], h[first], h[n + first], h[second],
                              h[n + second], logits[first], logits[n + first], logits[second], logits[n + second],
                              pseudo[first], pseudo[second], sim, head, mc.temperature, mc.cluster_weight,
                              mc.metric_weight)


def test_spcl_method_step_is_the_reference_step():
    method, loaders, images, group = _spcl_setup()
    method.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(4, method.feature_dim))
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    method.eval()                                   # BN in eval mode: the same forward twice
    views = [images[:12].float() / 255, images[12:24].float() / 255]
    batch = Batch(views, torch.arange(12), group[:12])
    out = method.ssl_loss(batch, 0)
    want = _released_method_loss(method, batch, method.pseudo_labels[batch.index])
    assert abs(out.loss.item() - want.item()) < 1e-5
    assert 0 < out.metrics["train/metric_same_frac"] < 1


def test_spcl_classifier_outputs_switch():
    """prototypes (default): one output per prototype; classes: the released width."""
    cfg = small_method("spcl", **{"method.num_prototypes": 3})
    assert build_method(cfg, 10, 20).classifier.out_features == 3
    cfg = small_method("spcl", **{"method.num_prototypes": 3, "method.classifier_outputs": "classes"})
    assert build_method(cfg, 10, 20).classifier.out_features == 10
    with pytest.raises(ConfigError, match="method.classifier_outputs='classes': method.num_prototypes=20"):
        small_method("spcl", **{"method.num_prototypes": 20, "method.classifier_outputs": "classes"})


def test_spcl_pseudo_label_order_switch():
    """index (default): sample r's own cluster; loader: the cluster of the r-th draw of a
    with-replacement sampler, as the released code read them."""
    method, loaders, images, group = _spcl_setup()
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    by_index = method.pseudo_labels.clone()
    method.params.pseudo_label_order = "loader"
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    draws = loader_order_draws(60, method.seed, 0)
    assert len(set(draws.tolist())) < 60                    # with replacement
    assert torch.equal(method.pseudo_labels, by_index[draws])
    assert not torch.equal(method.pseudo_labels, by_index)


def test_spcl_pair_labels_switch():
    """pseudo (default): pairs and their targets from pseudo-labels, labels never read (see the
    poison test); true: from the batch's ground-truth labels, as released."""
    method, loaders, images, group = _spcl_setup()
    method.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(4, method.feature_dim))
    method.params.pair_labels = "true"
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    method.eval()
    views = [images[:12].float() / 255, images[12:24].float() / 255]
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    batch = Batch(views, torch.arange(12), truth)
    got = method.ssl_loss(batch, 0).loss
    assert abs(got.item() - _released_method_loss(method, batch, truth).item()) < 1e-5
    other = method.ssl_loss(Batch(views, torch.arange(12), torch.arange(12)), 0).loss
    assert got.item() != other.item()


def test_cluster_features_shapes():
    x = torch.randn(50, 6, generator=gen(3))
    assert cluster_features(x, 4, pca_dim=3, iters=5, seed=0).shape == (50,)


def test_prototype_pairs_fill_the_same_label_slots_over_several_passes():
    """Round-robin: one label with eight samples still fills every odd slot (three passes)."""
    labels = torch.tensor([0] * 8 + [1, 2, 3, 4])
    f, s = prototype_pairs(labels)
    assert (labels[f] == labels[s]).tolist() == [False, True, False, True, False, True]
    # five pairs: two same-label ones (slots 1 and 3) although five labels have two samples
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    f, s = prototype_pairs(labels)
    assert (labels[f] == labels[s]).tolist() == [False, True, False, True, False]


def test_prototype_pairs_pair_each_rest_sample_with_the_one_half_a_list_on():
    """Five labels, no same-label pair: the sorted rest [0..4] pairs r with r + 5 // 2; the last
    sample is left out."""
    f, s = prototype_pairs(torch.tensor([0, 1, 2, 3, 4]))
    assert (f.tolist(), s.tolist()) == ([0, 1], [2, 3])


def test_prototype_pairs_of_one_sample_are_empty_positions():
    labels = torch.tensor([7])
    f, s = prototype_pairs(labels)
    assert f.dtype == s.dtype == torch.long and len(f) == len(s) == 0
    assert labels[f].numel() == 0                 # still usable as positions


def _nt_xent_loop(anchors, keys, rank, T):
    """NT-Xent of one worker's 2B anchors [view 1; view 2] against every worker's keys (rank
    order): anchor r sits at key rank * 2B + r, its positive at rank * 2B + (r + B) % 2B."""
    m = anchors.shape[0]
    total = 0.0
    for r in range(m):
        own, pos = rank * m + r, rank * m + (r + m // 2) % m
        logits = torch.stack([anchors[r] @ keys[k] / T for k in range(keys.shape[0]) if k != own])
        total = total + torch.logsumexp(logits, 0) - anchors[r] @ keys[pos] / T
    return total / m


def _another_worker(x):
    """Keys as gathered on rank 1 of two workers: rank 0's rows (unit rows unlike x's) first."""
    return torch.cat([x.detach().flip(1), x])


def _conv_backbone(method):
    """A backbone with the method's feature width (the colour means cluster, but are too narrow)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, method.feature_dim))


def test_spcl_terms_contrast_against_every_workers_keys():
    g = gen(12)
    B, T = 3, 0.5
    z_a, z_b = (F.normalize(torch.randn(2 * B, 4, generator=g, dtype=D64), dim=1) for _ in range(2))
    h = torch.randn(2 * B, 5, generator=g, dtype=D64)
    logits, labels = torch.randn(2 * B, 3, generator=g, dtype=D64), torch.tensor([0, 1, 2])
    head = nn.Linear(5, 1).double()
    terms = spcl_terms(z_a, z_b, h, h.flip(0), logits, logits, labels, labels, torch.tensor([1.0, 0.0, 1.0], dtype=D64),
                       head, T, _another_worker(z_a), _another_worker(z_b), rank=1)
    want = _nt_xent_loop(z_a, _another_worker(z_a), 1, T) + _nt_xent_loop(z_b, _another_worker(z_b), 1, T)
    assert abs(terms["nce"].item() - want.item()) < 1e-10


def test_spcl_step_contrasts_against_the_keys_of_every_worker(monkeypatch):
    method, loaders, images, group = _spcl_setup()
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    method.backbone = _conv_backbone(method)
    method.eval()
    views = [images[:12].float() / 255, images[12:24].float() / 255]
    batch = Batch(views, torch.arange(12), group[:12])
    monkeypatch.setattr("mpcl.distributed.gather_with_grad", _another_worker)
    monkeypatch.setattr("mpcl.distributed.rank", lambda: 1)
    out = method.ssl_loss(batch, 0)
    _, z = method.encode_views(batch)
    first, second = prototype_pairs(method.pseudo_labels[batch.index])
    z_a, z_b = (torch.cat([z[i], z[12 + i]]) for i in (first, second))
    T = method.params.temperature
    want = _nt_xent_loop(z_a, _another_worker(z_a), 1, T) + _nt_xent_loop(z_b, _another_worker(z_b), 1, T)
    assert abs(out.metrics["train/nce"].item() - want.item()) < 1e-5


def test_spcl_step_reports_backbone_features_of_both_views():
    method, loaders, images, group = _spcl_setup()
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    method.backbone = _conv_backbone(method)
    method.eval()
    batch = Batch([images[:12].float() / 255, images[12:24].float() / 255], torch.arange(12), group[:12])
    out = method.ssl_loss(batch, 0)
    assert torch.equal(out.features, method.encode_views(batch)[0])
    assert out.features.shape[0] == 24


def test_spcl_before_any_clustering_is_simclr():
    """A model never clustered (outside the engine) has no prototypes yet (-1 everywhere, never
    clustered) and trains on NT-Xent over the two views alone."""
    method, loaders, images, group = _spcl_setup()
    assert torch.equal(method.pseudo_labels, torch.full((60,), -1))
    assert int(method.clustered_epoch) == -1
    method.backbone = _conv_backbone(method)
    method.eval()
    batch = Batch([images[:6].float() / 255, images[6:12].float() / 255], torch.arange(6), group[:6])
    out = method.ssl_loss(batch, 0)
    h, z = method.encode_views(batch)
    want = _nt_xent_loop(z, z, 0, method.params.temperature)
    assert abs(out.loss.item() - want.item()) < 1e-5
    assert out.metrics.keys() == {"train/nce"} and out.metrics["train/nce"].item() == out.loss.item()
    assert torch.equal(out.features, h)


def test_spcl_first_epoch_clusters_whatever_the_reassign_interval():
    """A fresh model clusters on the epoch it starts with, even mid-interval."""
    method, loaders, images, group = _spcl_setup()
    method.params.reassign = 2
    assert method.on_epoch_start(1, loaders, contextlib.nullcontext) == list(method.classifier.parameters())
    assert int(method.clustered_epoch) == 1 and (method.pseudo_labels >= 0).all()


def test_spcl_keeps_its_prototypes_between_reassignments_and_after_a_resume():
    method, loaders, images, group = _spcl_setup()
    method.params.reassign = 2
    method.on_epoch_start(0, loaders, contextlib.nullcontext)
    labels = method.pseudo_labels.clone()
    assert method.on_epoch_start(1, loaders, contextlib.nullcontext) == []      # mid-interval: kept
    assert torch.equal(method.pseudo_labels, labels) and int(method.clustered_epoch) == 0
    resumed, _, _, _ = _spcl_setup()             # a new process loading the checkpoint of epoch 0
    resumed.params.reassign = 2
    resumed.load_state_dict(method.state_dict())
    assert resumed.on_epoch_start(1, loaders, contextlib.nullcontext) == []
    resumed.backbone = _conv_backbone(resumed)
    batch = Batch([images[:12].float() / 255, images[12:24].float() / 255], torch.arange(12), group[:12])
    assert "train/cluster_ce" in resumed.ssl_loss(batch, 1).metrics           # the prototypes are used
    assert resumed.on_epoch_start(2, loaders, contextlib.nullcontext) == list(resumed.classifier.parameters())
    assert int(resumed.clustered_epoch) == 2


def test_spcl_classes_outputs_allow_as_many_prototypes_as_classes():
    cfg = small_method("spcl", **{"method.num_prototypes": 10, "method.classifier_outputs": "classes"})
    assert DATASETS[cfg.data.dataset].num_classes == 10
    assert build_method(cfg, 10, 20).classifier.out_features == 10


def test_dataset_order_rejects_a_feature_count_that_is_not_the_training_set():
    with pytest.raises(RuntimeError, match="SPCL: 5 features for 6 training samples"):
        dataset_order(torch.zeros(5, 3), torch.arange(5), 6)          # every sample seen, one missing
    with pytest.raises(RuntimeError, match="SPCL: 4 features for 5 training samples"):
        dataset_order(torch.zeros(4, 3), torch.arange(5), 5)
