"""Batched on-device SSL augmentations (mpcl.data.augment) against torchvision's functional ops."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from tests.helpers.data import awkward_images
from mpcl.data import augment as A

TV_JITTER = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]


def _per_sample(fn, x, factors):
    return torch.stack([fn(x[i], float(factors[i])) for i in range(x.shape[0])])


# ---------------------------------------------------------------------------------------------
# colour ops against torchvision, with fixed per-sample parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [(A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
     (A.adjust_saturation, TF.adjust_saturation)],
)
def test_cheap_colour_ops_match_torchvision(ours, theirs):
    x = awkward_images()
    f = torch.linspace(0.0, 2.0, x.shape[0])
    torch.testing.assert_close(ours(x, f), _per_sample(theirs, x, f), atol=1e-6, rtol=0)


def test_hue_matches_torchvision():
    x = awkward_images(n=16)
    f = torch.linspace(-0.5, 0.5, x.shape[0])
    ours = A.adjust_hue(x, f)
    theirs = _per_sample(TF.adjust_hue, x, f)
    assert (ours - theirs).abs().max() < 1e-5
    assert ours.min() >= 0 and ours.max() <= 1
    # zero shift is the identity (to rounding) and a shift of 1/3 permutes channels r->g->b
    torch.testing.assert_close(A.adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, 1.0 / 3.0), x[:, [2, 0, 1]], atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision():
    x = awkward_images()
    torch.testing.assert_close(A.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=0, rtol=0)
    torch.testing.assert_close(A.rgb_to_grayscale(x, 3), TF.rgb_to_grayscale(x, 3), atol=0, rtol=0)
    torch.testing.assert_close(A.random_grayscale(x, p=1.0), TF.rgb_to_grayscale(x, 3), atol=0, rtol=0)


@pytest.mark.parametrize("k, size", [(3, 16), (9, 24), (23, 40)])
def test_gaussian_blur_matches_torchvision(k, size):
    x = awkward_images(n=6, h=size, w=size + 4)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    ours = A.apply_gaussian_blur(x, sigma, k)
    theirs = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) for i in range(6)])
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)
    # sigma <= 0 means "not blurred": exactly the input
    assert torch.equal(A.apply_gaussian_blur(x, torch.zeros(6), k), x)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_solarize_matches_torchvision(threshold):
    x = awkward_images()
    x[6, :, 0, :5] = threshold  # exactly at the threshold
    torch.testing.assert_close(A.solarize(x, p=1.0, threshold=threshold), TF.solarize(x, threshold), atol=0, rtol=0)


def test_normalize_matches_torchvision():
    x = awkward_images()
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    torch.testing.assert_close(A.normalize(x, mean, std), TF.normalize(x, list(mean), list(std)), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the fused colour jitter: per-sample order, against torchvision applied op by op
# ---------------------------------------------------------------------------------------------


def _jitter_reference(x, params):
    out = []
    for i in range(x.shape[0]):
        xi = x[i]
        if params.apply[i]:
            for op in params.order[i].tolist():
                xi = TV_JITTER[op](xi, float(params.factors[i, op]))
        out.append(xi)
    return torch.stack(out)


@pytest.mark.parametrize(
    "jitter",
    [(0.4, 0.4, 0.4, 0.1), (0.8, 0.8, 0.8, 0.2), (0.0, 0.4, 0.4, 0.1), (0.4, 0.0, 0.0, 0.5), (0.4, 0.4, 0.4, 0.0),
     (0.0, 0.0, 0.0, 0.3)],
)
@pytest.mark.parametrize("block_size", [None, 5])
def test_color_jitter_matches_torchvision_per_sample_order(jitter, block_size):
    x = awkward_images(n=37, h=10, w=12)
    params = A.sample_jitter_params(x, *jitter, p=0.8, generator=torch.Generator().manual_seed(3))
    ours = A.apply_color_jitter(x, params, block_size=block_size)
    assert (ours - _jitter_reference(x, params)).abs().max() < 1e-5
    # the random wrapper draws the same parameters from the same seed
    again = A.color_jitter(x, *jitter, p=0.8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, ours, atol=1e-6, rtol=0)
    # samples whose coin said "no" are exactly untouched
    keep = ~params.apply
    assert keep.any() and torch.equal(ours[keep], x[keep])


@pytest.mark.parametrize(
    "jitter",
    [(0.4, 0.4, 0.4, 0.1), (0.8, 0.8, 0.8, 0.5), (0.0, 0.4, 0.0, 0.1), (0.4, 0.4, 0.4, 0.0)],
)
def test_cpu_colour_kernel_matches_torchvision(jitter):
    """The compiled CPU colour stage against torchvision, op by op in each sample's order,
    on the awkward pixels (gray, ties, saturated), then the grayscale coin."""
    from mpcl.data.augment import colour_cpu

    x = awkward_images(n=37, h=10, w=12)
    g = torch.Generator().manual_seed(4)
    params = A.sample_jitter_params(x, *jitter, p=0.8, generator=g)
    gray = torch.rand(37, generator=g) < 0.3
    expected = _jitter_reference(x, params)
    expected = torch.where(gray.view(-1, 1, 1, 1), TF.rgb_to_grayscale(expected, 3), expected)
    ours = colour_cpu.colour_(x.clone(), params.apply, params.factors, params.order, gray.float())
    assert (ours - expected).abs().max() < 2e-6
    assert torch.equal(ours[~params.apply & ~gray], x[~params.apply & ~gray])  # untouched exactly
    # float64 batches and a non-contiguous input give the same views
    ours64 = colour_cpu.colour_(x.double(), params.apply, params.factors, params.order, gray.double())
    assert (ours64 - expected.double()).abs().max() < 2e-6
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(colour_cpu.colour_(xt, params.apply, params.factors, params.order, gray.float()), ours,
                               atol=0, rtol=0)


@pytest.mark.parametrize("crop", [False, True])
def test_ssl_augment_cpu_kernel_equals_eager_ops(crop):
    """One seed, the compiled colour stage or the eager one: the same views to float rounding,
    whatever the block size, the input dtype and the number of threads."""
    g = torch.Generator().manual_seed(2)
    xu = torch.randint(0, 256, (45, 3, 24, 24), dtype=torch.uint8, generator=g)
    kw = dict(crop=crop, blur_prob=0.5, solarize_prob=0.3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    for x in (xu, xu.double() / 255, xu.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):
        eager = A.SSLAugment(24, cpu_kernel=False, **kw)(x, torch.Generator().manual_seed(7))
        compiled = A.SSLAugment(24, block_size=8, **kw)(x, torch.Generator().manual_seed(7))
        assert (compiled - eager).abs().max() < 2e-5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = A.SSLAugment(24, **kw)(xu, torch.Generator().manual_seed(7))
        torch.set_num_threads(3)
        three = A.SSLAugment(24, **kw)(xu, torch.Generator().manual_seed(7))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, three, atol=1e-6, rtol=0)


def test_color_jitter_factor_ranges_and_orders():
    x = torch.zeros(4000, 3, 1, 1)
    p = A.sample_jitter_params(x, 0.4, 0.3, 0.2, 0.1, p=1.0, generator=torch.Generator().manual_seed(0))
    f = p.factors
    for i, s in enumerate((0.4, 0.3, 0.2)):
        assert f[:, i].min() >= 1 - s and f[:, i].max() <= 1 + s
        assert f[:, i].min() < 1 - 0.9 * s and f[:, i].max() > 1 + 0.9 * s
    assert f[:, 3].min() >= -0.1 and f[:, 3].max() <= 0.1 and f[:, 3].min() < -0.09
    # every order is a permutation, all 24 occur, roughly uniformly (hue position quotas exact)
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(4000, 4))
    orders = {tuple(o) for o in p.order.tolist()}
    assert orders == set(itertools.permutations(range(4)))
    hue_pos = (p.order == A.HUE).float().argmax(1)
    assert torch.equal(torch.bincount(hue_pos, minlength=4), torch.full((4,), 1000))
    counts = torch.tensor([sum(1 for o in p.order.tolist() if tuple(o) == perm)
                           for perm in itertools.permutations(range(4))])
    assert counts.min() > 4000 / 24 * 0.6


def test_color_jitter_rejects_bad_ranges():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="hue"):
        A.color_jitter(x, hue=0.7)
    with pytest.raises(ValueError, match="brightness"):
        A.color_jitter(x, brightness=-0.1)


# ---------------------------------------------------------------------------------------------
# resized crop and flip
# ---------------------------------------------------------------------------------------------


def _tv_resized_crop(x, boxes, size, interpolation, antialias):
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    out = torch.stack([TF.resized_crop(x[i], *boxes[i].tolist(), [size, size], interpolation=mode, antialias=antialias)
                       for i in range(x.shape[0])])
    return out.clamp(0, 1) if interpolation == "bicubic" else out


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size", [32, 12, 80])  # up-, down-scaling; 80 takes the grid_sample path
def test_resized_crop_matches_torchvision(interpolation, antialias, size):
    x = awkward_images(n=10, h=30, w=36)
    boxes = A.sample_crop_boxes(x, generator=torch.Generator().manual_seed(1))
    boxes[0] = torch.tensor([0, 0, 30, 36])  # whole image
    boxes[1] = torch.tensor([29, 35, 1, 1])  # one pixel, bottom-right corner
    boxes[2] = torch.tensor([3, 5, 7, 20])  # wide
    ours = A.resized_crop(x, boxes, size, interpolation=interpolation, antialias=antialias)
    theirs = _tv_resized_crop(x, boxes, size, interpolation, antialias)
    assert ours.shape == (10, 3, size, size)
    assert (ours - theirs).abs().max() < 1e-5
    # the test would catch a wrong box or a transposed axis
    shifted = boxes.clone()
    shifted[:, :2] = (shifted[:, :2] + 1).clamp(max=torch.stack((30 - boxes[:, 2], 36 - boxes[:, 3]), 1))
    assert (A.resized_crop(x, shifted, size, interpolation=interpolation, antialias=antialias)
            - theirs).abs().max() > 0.05
    assert (A.resized_crop(x.transpose(2, 3), boxes[:, [1, 0, 3, 2]], size, interpolation=interpolation,
                           antialias=antialias) - theirs).abs().max() > 0.05


def test_resized_crop_flip_and_uint8():
    x = awkward_images(n=8, h=16, w=16)
    xu = (x * 255).round().to(torch.uint8)
    boxes = A.sample_crop_boxes(x, generator=torch.Generator().manual_seed(2))
    flip = torch.tensor([True, False] * 4)
    ours = A.resized_crop(xu, boxes, 16, flip=flip, interpolation="bilinear", antialias=False)
    theirs = _tv_resized_crop(xu.float() / 255, boxes, 16, "bilinear", False)
    theirs = torch.where(flip.view(-1, 1, 1, 1), theirs.flip(3), theirs)
    assert ours.dtype == torch.float32
    assert (ours - theirs).abs().max() < 1e-5


def test_crop_boxes_follow_torchvision_rules():
    x = torch.zeros(5000, 3, 30, 40)
    boxes = A.sample_crop_boxes(x, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= 30).all() and (left + w <= 40).all()
    area = (h * w).float() / (30 * 40)
    assert area.min() > 0.05 and area.max() <= 1.0
    ar = w.float() / h.float()
    assert ar.min() > 0.5 and ar.max() < 2.0  # 3/4..4/3 up to rounding of tiny boxes
    assert len({tuple(b) for b in boxes.tolist()}) > 2500  # independent per sample
    # offsets are uniform over each box's free range, both ends included: as a fraction of
    # that range they reach 0 and 1 and average 1/2
    for offset, free in ((top, 30 - h), (left, 40 - w)):
        room = free >= 8
        assert room.sum() > 2000
        u = offset[room].float() / free[room].float()
        assert u.min() == 0.0 and u.max() == 1.0
        assert abs(u.mean().item() - 0.5) < 0.03
    # impossible scale/ratio -> torchvision's centre-crop fallback
    fb = A.sample_crop_boxes(torch.zeros(4, 3, 20, 20), scale=(1.0, 1.0), ratio=(2.0, 3.0))
    assert fb.tolist() == [[5, 0, 10, 20]] * 4


def test_random_flip_probabilities():
    x = awkward_images(n=6)
    assert torch.equal(A.random_flip(x, p=0.0), x)
    assert torch.equal(A.random_flip(x, p=1.0), x.flip(3))
    big = torch.arange(4).float().view(1, 1, 1, 4).expand(4000, 3, 2, 4) / 3
    flipped = (A.random_flip(big, p=0.5, generator=torch.Generator().manual_seed(0))[:, 0, 0, 0] == 1).float().mean()
    assert abs(flipped - 0.5) < 0.04


# ---------------------------------------------------------------------------------------------
# probabilities, independence, reproducibility
# ---------------------------------------------------------------------------------------------

RANDOM_OPS = {
    "jitter": lambda x, p, g: A.color_jitter(x, p=p, generator=g),
    "grayscale": lambda x, p, g: A.random_grayscale(x, p=p, generator=g),
    # sigma 0.1 ~ identity
    "blur": lambda x, p, g: A.gaussian_blur(x, p=p, sigma=(0.5, 2.0), kernel_size=3, generator=g),
    "solarize": lambda x, p, g: A.solarize(x, p=p, generator=g),
    "flip": lambda x, p, g: A.random_flip(x, p=p, generator=g),
}


def _changed(x, y):
    return (x - y).flatten(1).abs().amax(1) > 1e-4


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_probabilities(name):
    op = RANDOM_OPS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3000, 3, 6, 6, generator=g)
    assert torch.equal(op(x, 0.0, g), x)
    assert _changed(x, op(x, 1.0, g)).all()
    frac = _changed(x, op(x, 0.3, g)).float().mean()
    assert abs(frac - 0.3) < 0.04, frac


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_per_sample_parameters_and_seed(name):
    op = RANDOM_OPS[name]
    x = torch.rand(1, 3, 8, 8).expand(64, 3, 8, 8).contiguous()
    a = op(x, 0.5, torch.Generator().manual_seed(7))
    b = op(x, 0.5, torch.Generator().manual_seed(7))
    c = op(x, 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = len({tuple(v) for v in a.flatten(1).mul(1e4).round().tolist()})
    assert distinct >= (2 if name in ("flip", "grayscale", "solarize") else 20)


def test_random_resized_crop_independent_and_seeded():
    x = torch.rand(1, 3, 32, 32).expand(32, 3, 32, 32).contiguous()
    a = A.random_resized_crop(x, 16, generator=torch.Generator().manual_seed(0))
    b = A.random_resized_crop(x, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (32, 3, 16, 16)
    assert len({tuple(v) for v in a.flatten(1).mul(1e4).round().tolist()}) == 32


def test_inputs_are_not_modified():
    x = awkward_images(n=10, h=16, w=16)
    keep = x.clone()
    A.SSLAugment(16, crop=False, blur_prob=0.5, solarize_prob=0.5, mean=(0.5,) * 3, std=(0.2,) * 3)(x)
    A.SSLAugment(16, crop=False, jitter=(0.4, 0.4, 0.4, 0.0), block_size=3)(x)
    A.SSLAugment(16, crop=True, blur_prob=0.5)(x)
    for op in RANDOM_OPS.values():
        op(x, 0.5, None)
    A.color_jitter(x, hue=0.0, p=1.0)
    A.adjust_contrast(x, 0.5)
    assert torch.equal(x, keep)
