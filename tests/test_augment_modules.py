"""The augmentation modules (mpcl.data.augment.SSLAugment, EvalTransform) as a whole: shapes,
ranges, seeding, blocking, each stage alone, argument checks, and CUDA against CPU."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from tests.helpers.data import awkward_images
from mpcl.data import augment as A


def test_ssl_augment_shapes_dtypes_range():
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (20, 3, 40, 48), dtype=torch.uint8, generator=g)
    aug = A.SSLAugment(32, blur_prob=0.5, solarize_prob=0.2)
    y = aug(xu, g)
    assert y.shape == (20, 3, 32, 32) and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    y64 = aug(xu.double() / 255, g)
    assert y64.dtype == torch.float64 and y64.shape == (20, 3, 32, 32)
    # crop=False: dtype conversion + colour ops only, on an already-sized batch
    x32 = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = A.SSLAugment(32, crop=False)(x32, g)
    assert y.shape == (20, 3, 32, 32) and y.min() >= 0 and y.max() <= 1
    plain = A.SSLAugment(32, crop=False, jitter=None, grayscale_prob=0.0)(x32)
    torch.testing.assert_close(plain, TF.to_dtype(x32, torch.float32, scale=True), atol=0, rtol=0)


def test_ssl_augment_seeded_blocked_and_normalized():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (50, 3, 24, 24), dtype=torch.uint8, generator=g)
    kw = dict(blur_prob=0.5, solarize_prob=0.3)
    a = A.SSLAugment(24, **kw)(x, torch.Generator().manual_seed(5))
    b = A.SSLAugment(24, block_size=7, **kw)(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # blocking does not change the result
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    n = A.SSLAugment(24, mean=mean, std=std, **kw)(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(n, A.normalize(a, mean, std), atol=1e-5, rtol=0)
    c = A.SSLAugment(24, **kw)(x, torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)
    # two calls with one generator give two different views of the same images
    g2 = torch.Generator().manual_seed(5)
    aug = A.SSLAugment(24, **kw)
    assert not torch.equal(aug(x, g2), aug(x, g2))


def test_ssl_augment_single_ops():
    x = awkward_images(n=8, h=16, w=16)
    off = dict(crop=False, jitter=None, grayscale_prob=0.0)
    gray = TF.rgb_to_grayscale(x, 3)
    torch.testing.assert_close(A.SSLAugment(16, cpu_kernel=False, **{**off, "grayscale_prob": 1.0})(x), gray,
                               atol=0, rtol=0)
    # the compiled CPU kernel sums the luma without fused multiply-adds: within one float32 ulp
    torch.testing.assert_close(A.SSLAugment(16, **{**off, "grayscale_prob": 1.0})(x), gray, atol=1.2e-7, rtol=0)
    torch.testing.assert_close(A.SSLAugment(16, **{**off, "solarize_prob": 1.0})(x), TF.solarize(x, 0.5),
                               atol=0, rtol=0)
    blurred = A.SSLAugment(16, **{**off, "blur_prob": 1.0, "blur_sigma": (1.0, 1.0), "blur_kernel": 5})(x)
    torch.testing.assert_close(blurred, TF.gaussian_blur(x, [5, 5], [1.0, 1.0]), atol=2e-6, rtol=0)


def test_ssl_augment_validates_arguments():
    with pytest.raises(ValueError, match="jitter_prob"):
        A.SSLAugment(32, jitter_prob=1.5)
    with pytest.raises(ValueError, match="mean and std"):
        A.SSLAugment(32, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="interpolation"):
        A.SSLAugment(32, interpolation="nearest")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        A.SSLAugment(32)(torch.zeros(3, 32, 32))


def test_eval_transform():
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8, generator=g)
    y = A.EvalTransform()(xu)
    torch.testing.assert_close(y, TF.to_dtype(xu, torch.float32, scale=True), atol=0, rtol=0)
    y = A.EvalTransform(size=32, resize=36, mean=(0.5,) * 3, std=(0.25,) * 3)(xu)
    ref = TF.center_crop(TF.resize(xu.float() / 255, [36], antialias=True), [32, 32])
    assert y.shape == (4, 3, 32, 32)
    torch.testing.assert_close(y, TF.normalize(ref.clamp(0, 1), [0.5] * 3, [0.25] * 3), atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_given_parameters():
    x = awkward_images(n=16)
    params = A.sample_jitter_params(x, generator=torch.Generator().manual_seed(0))
    xc = x.cuda()
    pc = A.JitterParams(params.apply.cuda(), params.factors.cuda(), params.order.cuda(), params.perm.cuda(),
                        params.cheap, params.hue)
    torch.testing.assert_close(A.apply_color_jitter(xc, pc).cpu(), A.apply_color_jitter(x, params), atol=1e-5, rtol=0)
    boxes = A.sample_crop_boxes(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(A.resized_crop(xc, boxes.cuda(), 32).cpu(), A.resized_crop(x, boxes, 32),
                               atol=1e-5, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    y = A.SSLAugment(16, blur_prob=0.5, solarize_prob=0.2)((xc * 255).to(torch.uint8), g)
    assert y.device.type == "cuda" and y.shape == (16, 3, 16, 16)
