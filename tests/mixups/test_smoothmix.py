"""SmoothMix: the Gaussian mask against the reference's rolled grid, the core on a hand-made draw, the code's and the
paper's label weights, the sampler's ranges and draw order."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mixnb.mixups import get_method
from mixnb.mixups._helpers import random_partner
from mixnb.mixups.smoothmix import SmoothMixDraw, sample_smoothmix, smoothmix, smoothmix_mask

from helpers import H, ID5, REV5, W, batch, constant_batch, gen  # tests/helpers.py, on sys.path


def rolled_gaussian(h: int, shift_row: int, shift_col: int, sigma: torch.Tensor) -> torch.Tensor:
    """The reference's construction (docs/methods.md §1): a 2H x 2H grid of (col, row) coordinates,
    circularly shifted, its central H x H crop, exp(-|p - (2H - 1) / 2|^2 / (2 sigma^2))."""
    s = 2 * h
    cols = torch.arange(s).repeat(s, 1)  # (2H, 2H): the column index
    grid = torch.stack([cols, cols.t()], dim=-1).roll(shift_row, 0).roll(shift_col, 1)
    crop = grid[s // 4: s - s // 4, s // 4: s - s // 4]
    return torch.exp(-((crop - (s - 1) / 2) ** 2).sum(-1) / (2 * sigma**2))


def test_smoothmix_mask_equals_the_reference_rolled_grid():
    """randint(H) - H/2 shifts of the rolled grid put the peak at (row - 1/2, col - 1/2), never wrapped."""
    for seed in range(40):
        draw = sample_smoothmix(3, H, W, gen=gen(seed))
        row, col = draw.center.tolist()
        assert torch.equal(smoothmix_mask(draw, H, W), rolled_gaussian(H, row - H // 2, col - W // 2, draw.sigma))
    for row, col in [(0, 0), (63, 63), (0, 63)]:  # the extreme shifts
        draw = SmoothMixDraw(ID5, torch.tensor([row, col]), torch.tensor(16.0))
        assert torch.equal(smoothmix_mask(draw, H, W), rolled_gaussian(H, row - 32, col - 32, draw.sigma))


def test_smoothmix_core_hand_made_draw():
    x = constant_batch()
    draw = SmoothMixDraw(REV5, torch.tensor([10, 20]), torch.tensor(16.0))
    x_mixed, lam, keep = smoothmix(x, draw)
    i, j = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    g = torch.exp(-((i - 9.5) ** 2 + (j - 19.5) ** 2) / (2 * 16.0**2))  # (H, W)
    torch.testing.assert_close(keep, (1 - g)[None, None], rtol=0, atol=1e-6)
    expect = (1 - g) * x + g * x[REV5]
    torch.testing.assert_close(x_mixed, expect, rtol=0, atol=1e-5)
    assert lam.shape == () and lam.dtype == torch.float32
    torch.testing.assert_close(lam, g.mean(), rtol=0, atol=1e-7)  # "openmixup": the partner's share goes to y
    assert g.max() == g[9, 19] == g[10, 20] and math.isclose(g.max().item(), math.exp(-0.5 / 512), rel_tol=1e-6)
    assert torch.equal(x_mixed[2], x[2])  # the fixed point mixes with itself
    assert torch.equal(x, constant_batch())  # the input is left alone


def test_smoothmix_label_weights_code_vs_paper():
    """Same mixed image; "paper" gives each label its pixel share, "openmixup" the swapped one."""
    x, y = constant_batch(), torch.arange(5)
    draw = sample_smoothmix(5, H, W, gen=gen(3))
    om, paper = smoothmix(x, draw, label_weights="openmixup"), smoothmix(x, draw, label_weights="paper")
    assert torch.equal(om[0], paper[0]) and torch.equal(om[2], paper[2])
    assert paper[1] == paper[2].mean()  # the share of x
    torch.testing.assert_close(om[1], (1 - paper[2]).mean(), rtol=0, atol=1e-6)  # the share of x[perm]
    # for constant images the mean pixel is the label mix: paper's lam * y + (1 - lam) * y[perm]
    share = paper[0].mean(dim=(1, 2, 3))  # (N,)
    for mode, lam in (("paper", paper[1]), ("openmixup", om[1])):
        labels = lam * y.float() + (1 - lam) * y[draw.perm].float()
        paired = draw.perm != y
        ok = torch.allclose(labels[paired], share[paired], atol=1e-4)
        assert ok == (mode == "paper"), mode
    m_om = get_method("smoothmix").mix(x, y, gen=gen(3))
    m_paper = get_method("smoothmix", label_weights="paper").mix(x, y, gen=gen(3))
    assert torch.equal(m_om.x, m_paper.x) and torch.equal(m_om.lam, om[1]) and torch.equal(m_paper.lam, paper[1])


def test_smoothmix_identity_partner_leaves_the_batch():
    x, _ = batch()
    draw = SmoothMixDraw(ID5, torch.tensor([30, 31]), torch.tensor(20.0))
    assert torch.equal(smoothmix(x, draw)[0], x)  # lerp(x, x, G) is x exactly


def test_smoothmix_sampler_ranges_order_and_seed():
    for seed, (h, w) in itertools.product(range(20), [(64, 64), (30, 7)]):
        ref = gen(seed)
        perm = random_partner(6, gen=ref)
        center = torch.stack([torch.randint(h, (), generator=ref), torch.randint(w, (), generator=ref)])
        sigma = (torch.rand((), generator=ref) / 4 + 0.25) * h
        draw = sample_smoothmix(6, h, w, gen=gen(seed))
        assert torch.equal(draw.perm, perm) and torch.equal(draw.center, center) and torch.equal(draw.sigma, sigma)
        assert h / 4 <= draw.sigma < h / 2 and draw.sigma.dtype == torch.float32
    lams = torch.stack([smoothmix_mask(sample_smoothmix(2, H, W, gen=gen(s)), H, W).mean() for s in range(300)])
    assert 0.40 < lams.mean() < 0.46 and lams.min() > 0.1 and lams.max() < 0.75  # docs/methods.md §1: mean 0.430


def test_smoothmix_alpha_has_no_effect():
    x, y = batch()
    a, b = (get_method("smoothmix", alpha=alpha).mix(x, y, gen=gen(5)) for alpha in (0.2, 5.0))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 0.0}, "alpha must be > 0.*0.0"), ({"label_weights": "swapped"}, "label_weights.*'swapped'")],
)
def test_smoothmix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("smoothmix", **kwargs)
