"""The feature-space dynamics: the message-passing update is the gradient of the feature-space
loss at every step, and on a small graph alignment alone collapses, uniformity alone ignores the
classes, both together separate them, and the two techniques change the dynamics as measured."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mpcl import cli
from mpcl.dynamics import (GraphError, Settings, Variant, default_variants, fashion_mnist_graph, messages, simulate,
                           synthetic_graph)
from mpcl.dynamics import metrics
from mpcl.dynamics.simulate import initial_features

SMALL = dict(classes=3, naturals=5, views=3, p_intra=0.2, p_inter=0.02, seed=0)


@pytest.fixture(scope="module")
def runs():
    """Every default variant for 300 steps on a 45-view graph, 8-d features, from one start."""
    g = synthetic_graph(**SMALL)
    assert g.components() == 1  # otherwise alignment collapses each component to its own point
    st = Settings(steps=300, lr=0.1, dim=8, knn_k=5, check_gradient=False)
    f0 = initial_features(g.n, st.dim, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 45 x 45 matrices: threads only wait on each other
    try:
        return {v.name: simulate(g, v, st, f0)["history"] for v in default_variants(stage_steps=10)}
    finally:
        torch.set_num_threads(threads)


def reference_loss(f, a_hat, snapshot, v: Variant, t: float):
    """The feature-space loss written from its definition, pair by pair, independently of
    mpcl.dynamics.messages: -(a/n) sum_ij A_ij W_ij f_i.((1 - b) f_j + 2 b s_j)
    + u (t/n) sum_i log sum_j exp(f_i.f_j / t), W = (1 - alpha) + alpha e_ij / (sum A e / sum A)."""
    n = len(f)
    with torch.no_grad():
        e = torch.exp(torch.einsum("id,jd->ij", f, f) / v.attention_temperature)
        w = (1 - v.attention) + v.attention * e * a_hat.sum() / (a_hat * e).sum()
    target = ((1 - v.bank_mix) * torch.einsum("id,jd->ij", f, f)
              + 2 * v.bank_mix * torch.einsum("id,jd->ij", f, snapshot))
    align = -(a_hat * w * target).sum() / n
    uniform = t / n * sum(torch.log(torch.exp(torch.einsum("d,jd->j", f[i], f) / t).sum()) for i in range(n))
    return v.align * align + v.uniform * uniform


@pytest.mark.parametrize("variant", [
    Variant("align", uniform=0.0), Variant("uniform", align=0.0), Variant("both"),
    Variant("attention", attention=0.7, attention_temperature=0.5),
    Variant("multi_stage", bank_mix=0.5, stage_steps=5),
    Variant("weighted_attention_multi", align=2.0, uniform=0.5, attention=1.0, bank_mix=0.3, stage_steps=4),
], ids=lambda v: v.name)
def test_message_passing_update_is_the_gradient_step_at_every_step(variant):
    g = synthetic_graph(classes=2, naturals=3, views=3, p_intra=0.3, p_inter=0.05, seed=1)
    a_hat, t, lr, n = g.normalized(), 0.3, 0.1, g.n
    assert torch.allclose(a_hat, a_hat.T) and a_hat.dtype == torch.float64
    st = Settings(steps=25, lr=lr, temperature=t, dim=5, check_gradient=True)
    f = snapshot = initial_features(n, st.dim, 3)
    for s in range(st.steps):
        if s % variant.stage_steps == 0:
            snapshot = f.clone()
        x = f.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(reference_loss(x, a_hat, snapshot, variant, t), x)
        m = messages(f, a_hat, snapshot, variant, t)
        torch.testing.assert_close(m, -n * grad, rtol=1e-10, atol=1e-12, msg=f"step {s}")
        f = torch.nn.functional.normalize(f + lr * m, dim=1)
    # the simulator takes exactly these steps, and its own autograd check agrees
    result = simulate(g, variant, st, initial_features(n, st.dim, 3))
    torch.testing.assert_close(result["features"], f, rtol=0, atol=1e-12)
    assert result["max_gradient_error"] < 1e-12


def test_alignment_alone_collapses_the_features(runs):
    rank = runs["align"]["effective_rank"]
    assert rank[0] > 7.5                      # 8-d features start spread
    assert rank[-1] < 1.5                     # and end on (nearly) one point
    assert runs["align"]["alignment"][-1] < 1e-2
    assert runs["align"]["uniformity"][-1] > -0.05   # log E exp(-2 d^2) -> 0: no spread left


def test_uniformity_alone_spreads_the_features_regardless_of_class(runs):
    h = runs["uniform"]
    assert h["effective_rank"][-1] > 0.98 * 8
    assert h["uniformity"][-1] < h["uniformity"][0]
    assert h["knn_accuracy"][-1] < 0.45       # 3 classes: chance is 1/3
    assert h["knn_accuracy"][-1] <= h["knn_accuracy"][0] + 0.05
    assert h["alignment"][-1] > 1.9           # positive pairs stay as far as random pairs


def test_both_together_separate_the_latent_classes_at_an_equilibrium(runs):
    both = runs["both"]
    assert both["knn_accuracy"][0] < 0.4
    assert both["knn_accuracy"][-1] >= 0.8
    assert both["effective_rank"][-1] > 6     # no collapse
    # the affinity graph comes closest to the augmentation graph when both messages act
    assert both["equilibrium_distance"][-1] < both["equilibrium_distance"][0] - 0.4
    assert both["equilibrium_distance"][-1] < min(runs["align"]["equilibrium_distance"][-1],
                                                  runs["uniform"]["equilibrium_distance"][-1]) - 0.4
    # and it is an equilibrium: the last 50 steps barely move it
    assert abs(both["equilibrium_distance"][-1] - both["equilibrium_distance"][-50]) < 0.01


def test_multi_stage_aggregation_slows_the_collapse_and_keeps_the_equilibrium(runs):
    plain, multi = runs["align"]["effective_rank"], runs["align_multi_stage"]["effective_rank"]
    assert all(m >= p for m, p in zip(multi[20:], plain[20:]))
    assert multi[80] > plain[80] + 0.4        # measured 3.27 vs 2.60
    # with uniformity: the equilibrium is reached later, but it is the same one
    eq_both, eq_multi = runs["both"]["equilibrium_distance"], runs["multi_stage"]["equilibrium_distance"]
    assert eq_multi[20] > eq_both[20] + 0.03  # measured 0.397 vs 0.342
    assert abs(eq_multi[-1] - eq_both[-1]) < 0.01


def test_attention_slows_the_alignment_of_hard_pairs(runs):
    """exp(similarity) weights favour the pairs that are already close: the least similar
    quarter of positive pairs aligns later, the most similar quarter as fast as without."""
    both, att = runs["both"], runs["attention"]
    hard_gap = att["hard_pair_alignment"][20] - both["hard_pair_alignment"][20]
    easy_gap = att["easy_pair_alignment"][20] - both["easy_pair_alignment"][20]
    assert hard_gap > 0.3                     # measured 1.657 vs 1.089
    assert abs(easy_gap) < hard_gap / 5       # measured 0.637 vs 0.622
    assert att["knn_accuracy"][-1] >= 0.8     # the classes still separate


def test_technique_knobs_at_zero_are_the_plain_update():
    g = synthetic_graph(**SMALL)
    st = Settings(steps=15, lr=0.1, dim=6, check_gradient=False)
    f0 = initial_features(g.n, st.dim, 0)
    plain = simulate(g, Variant("both"), st, f0)["features"]
    for v in (Variant("a0", attention=0.0, attention_temperature=0.3), Variant("b0", bank_mix=0.0, stage_steps=3)):
        assert torch.equal(simulate(g, v, st, f0)["features"], plain)
    assert not torch.allclose(simulate(g, Variant("a1", attention=1.0), st, f0)["features"], plain)
    assert not torch.allclose(simulate(g, Variant("b1", bank_mix=0.5, stage_steps=3), st, f0)["features"], plain)


# -- the graph and the metrics ----------------------------------------------------------------

def test_synthetic_graph_overlaps_more_within_a_class():
    g = synthetic_graph(classes=3, naturals=6, views=4, p_intra=0.3, p_inter=0.02, seed=0)
    a = g.adjacency
    assert a.shape == (72, 72) and torch.equal(a, a.T) and (a >= 0).all()
    same_origin = g.origin[:, None] == g.origin[None, :]
    assert (a[same_origin] >= 1).all()        # views of one natural sample share it as a source
    assert g.stats()["intra_class_edge_weight"] > 0.8
    # no overlap: one clique per natural sample, nothing across
    iso = synthetic_graph(classes=3, naturals=6, views=4, p_intra=0.0, p_inter=0.0)
    assert iso.components() == 18
    assert torch.equal(iso.adjacency > 0, iso.origin[:, None] == iso.origin[None, :])
    with pytest.raises(GraphError, match="p_intra"):
        synthetic_graph(p_intra=1.5)


def test_fashion_mnist_graph_joins_views_of_one_image_and_overlapping_views(fmnist_path):
    g = fashion_mnist_graph(fmnist_path, images=20, views=3, overlap_k=0, seed=0)
    assert g.n == 60 and g.components() == 20   # shared source only: one clique per image
    assert torch.equal(torch.bincount(g.labels), torch.full((10,), 6))
    assert torch.equal(g.adjacency > 0, g.origin[:, None] == g.origin[None, :])
    o = fashion_mnist_graph(fmnist_path, images=20, views=3, overlap_k=2, seed=0)
    across = (o.adjacency > 0) & (o.origin[:, None] != o.origin[None, :])
    assert across.any(1).all()                  # every view now also reaches another image
    assert torch.equal(o.adjacency, o.adjacency.T) and o.components() < 20


def test_metrics_on_known_features():
    n, d = 12, 4
    same = torch.zeros(n, d, dtype=torch.float64)
    same[:, 0] = 1
    assert metrics.effective_rank(same) == pytest.approx(1.0)
    assert metrics.effective_rank(torch.eye(d, dtype=torch.float64)) == pytest.approx(d)
    g = synthetic_graph(classes=2, naturals=2, views=3, p_intra=0.5, p_inter=0.0, seed=0)
    # all views on one point: P is uniform, its distance to D^-1 A is computable by hand
    f = torch.zeros(g.n, 3, dtype=torch.float64)
    f[:, 0] = 1
    target = g.adjacency / g.adjacency.sum(1, keepdim=True)
    expected = float(0.5 * (target - 1 / g.n).abs().sum(1).mean())
    assert metrics.equilibrium_distance(f, g.adjacency, 0.2) == pytest.approx(expected)
    assert metrics.alignment(f, g.adjacency) == pytest.approx(0.0, abs=1e-12)
    assert metrics.uniformity(f) == pytest.approx(0.0, abs=1e-12)
    # alignment and uniformity against their pairwise definitions
    x = initial_features(g.n, 3, 1)
    d2 = torch.cdist(x, x) ** 2
    off = ~torch.eye(g.n, dtype=torch.bool)
    w = g.adjacency * off
    assert metrics.alignment(x, g.adjacency) == pytest.approx(float((w * d2).sum() / w.sum()))
    assert metrics.uniformity(x) == pytest.approx(math.log(float(torch.exp(-2 * d2[off]).mean())))


def test_knn_ignores_views_of_the_same_natural_sample():
    # two views per natural sample, at one angle each; samples 0, 1 are class 0, samples 2, 3 class 1
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    origin = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def at(degrees):
        rad = torch.tensor(degrees, dtype=torch.float64).repeat_interleave(2) * math.pi / 180
        return torch.stack([rad.cos(), rad.sin()], 1)

    assert metrics.knn_accuracy(at([0, 10, 180, 170]), labels, origin, k=2) == 1.0
    # sample 0 drifts nearer to sample 3 than to sample 1: its own views would outvote that, but
    # they do not count, so its two views are wrong and the six others right
    assert metrics.knn_accuracy(at([95, 10, 180, 170]), labels, origin, k=2) == pytest.approx(6 / 8)


# -- the command --------------------------------------------------------------------------------

def test_cli_writes_numbers_plots_and_a_self_contained_page(tmp_path, capsys):
    out = tmp_path / "dyn"
    cli.main(["dynamics", "--out", str(out), "--classes", "2", "--naturals", "3", "--views", "2",
              "--steps", "12", "--dim", "4", "--stage-steps", "4"])
    printed = capsys.readouterr().out
    assert "multi_stage" in printed and "report:" in printed
    summary = json.loads((out / "dynamics.json").read_text())
    assert set(summary["variants"]) == {"align", "uniform", "both", "attention", "multi_stage", "align_multi_stage"}
    for v in summary["variants"].values():
        assert all(len(h) == 13 for h in v["history"].values())
        assert v["max_gradient_error"] < 1e-12
    assert summary["graph"]["views"] == 12 and summary["settings"]["steps"] == 12
    page = (out / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 9 and "http" not in page.replace("http-equiv", "")
    for png in ("effective_rank", "knn_accuracy", "equilibrium_distance", "graphs", "features"):
        assert (out / "report" / f"{png}.png").stat().st_size > 1000
    # run.py report redraws the page from the numbers
    (out / "report" / "index.html").unlink()
    cli.main(["report", str(out)])
    assert (out / "report" / "index.html").read_text().count("data:image/png;base64,") == 9


@pytest.mark.parametrize("argv, words", [
    (["--p-intra", "1.5"], "p_intra=1.5"),
    (["--temperature", "0"], "temperature=0"),
    (["--bank-mix", "2"], "bank_mix=2"),
    (["--graph", "fashion_mnist", "--data", "/nonexistent/fmnist"], "/nonexistent/fmnist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "dyn"
    with pytest.raises(SystemExit) as e:
        cli.main(["dynamics", "--out", str(out), "--steps", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    with pytest.raises(SystemExit) as e:
        cli.main(["dynamics", "--out", str(out), "--steps", "2"])
    assert e.value.code == 2 and str(out) in capsys.readouterr().err
    assert out.read_text() == "mine"
