"""MixUp: the pure core on a hand-made draw (its sampler and method: test_registry.py, beside CutMix's)."""

import torch

from mixnb.mixups.mixup import MixUpDraw, mixup

from helpers import gen  # tests/helpers.py, on sys.path


def test_mixup_core_exact_and_lam_one_identity():
    x = torch.randn(4, 3, 8, 8, generator=gen())
    perm = torch.tensor([1, 0, 3, 2])
    lam = torch.rand((), generator=gen(1))
    out, out_lam = mixup(x, MixUpDraw(lam, perm))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm], rtol=0, atol=1e-6)  # lerp: rounding only
    assert out_lam is lam
    out, _ = mixup(x, MixUpDraw(torch.tensor(1.0), perm))
    assert torch.equal(out, x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert mixup(x_cl, MixUpDraw(lam, perm))[0].is_contiguous(memory_format=torch.channels_last)
