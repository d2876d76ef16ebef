"""ResizeMix: the nearest-resized paste against F.interpolate, exact lam, the tau sampler and its draw order, the
index table against per-box indices."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixnb.mixups import get_method, soft_target
from mixnb.mixups._helpers import box_around, box_mask, lam_from_box, random_partner, sample_beta
from mixnb.mixups.resizemix import ResizeMix, ResizeMixDraw, _nearest_src, paste_index, resizemix, sample_resizemix

from helpers import (H, REV5, W, assert_mix_seeded_on_odd_batches, batch, bits, constant_batch, ctx,  # tests/helpers.py
                     gen, tiny_model)


def test_nearest_index_matches_interpolate():
    for start in (0, 5):
        ramp = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)
        for side in range(1, H - start + 1):
            ref = F.interpolate(ramp, size=(side, 1), mode="nearest").flatten().long()
            ours = _nearest_src(H, torch.tensor(start), torch.tensor(side))[start : start + side]
            assert torch.equal(ours, ref), side


@pytest.mark.parametrize(
    "tau, center", [(0.5, (32, 32)), (0.37, (3, 60)), (0.8, (63, 0)), (0.77, (20, 41)), (0.15, (0, 9))]
)
def test_resizemix_paste_equals_interpolate(tau, center):
    x, _ = batch()
    draw = ResizeMixDraw(torch.tensor(tau), REV5, torch.tensor(center))
    x_mixed, lam, keep = resizemix(x, draw)
    half = int(64 * tau) // 2
    y0, y1, x0, x1 = box_around(torch.tensor(center), torch.tensor([half, half]), H, W).tolist()
    ref = F.interpolate(x[REV5], size=(y1 - y0, x1 - x0), mode="nearest")
    assert torch.equal(x_mixed[:, :, y0:y1, x0:x1], ref)
    outside = keep.bool().expand_as(x)
    assert torch.equal(x_mixed[outside], x[outside])
    assert keep[..., y0:y1, x0:x1].sum() == 0 and keep.sum() == H * W - (y1 - y0) * (x1 - x0)
    assert lam.item() == 1 - (y1 - y0) * (x1 - x0) / (H * W)


def test_resizemix_core_hand_made_draw():
    x, _ = batch()
    draw = ResizeMixDraw(torch.tensor(0.5), REV5, torch.tensor([16, 16]))  # side 32 at the top-left corner
    x_mixed, lam, keep = resizemix(x, draw)
    assert torch.equal(x_mixed[:, :, :32, :32], x[REV5][:, :, ::2, ::2])  # nearest halving keeps even pixels
    assert torch.equal(x_mixed[:, :, 32:], x[:, :, 32:]) and torch.equal(x_mixed[:, :, :, 32:], x[:, :, :, 32:])
    assert lam.item() == 0.75 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x, batch()[0])  # input left alone


def test_resizemix_lam_is_true_share():
    x = constant_batch()
    for seed in range(6):
        draw = sample_resizemix(5, H, W, gen=gen(seed), alpha=1.0, scope=(0.1, 0.8), use_alpha=True)
        x_mixed, lam, keep = resizemix(x, draw)
        assert lam.item() == keep.mean().item()
        for i, j in enumerate(draw.perm.tolist()):
            if i != j:
                assert (x_mixed[i] == i).float().mean().item() == lam.item()
        assert torch.allclose(soft_target(torch.arange(5), draw.perm, lam, 5).sum(1), torch.ones(5))


def test_resizemix_empty_box_leaves_batch_unchanged():
    x, _ = batch()
    draw = ResizeMixDraw(torch.tensor(0.02), REV5, torch.tensor([10, 50]))  # side int(1.28) = 1: half 0, no box
    x_mixed, lam, keep = resizemix(x, draw)
    assert torch.equal(x_mixed, x) and lam.item() == 1.0 and keep.min() == 1


@pytest.mark.parametrize("alpha, use_alpha", [(1.0, True), (0.05, True), (50.0, True), (1.0, False)])
def test_resizemix_tau_sampler(alpha, use_alpha):
    lo, hi = 0.1, 0.8
    taus = []
    for seed in range(40):
        draw = sample_resizemix(5, H, W, gen=gen(seed), alpha=alpha, scope=(lo, hi), use_alpha=use_alpha)
        taus.append(draw.tau.item())
        assert 0 <= draw.center.min() and draw.center.max() < 64 and sorted(draw.perm.tolist()) == list(range(5))
    assert all(lo <= t <= hi for t in taus)
    if alpha == 50.0:  # Beta(50, 50) sits inside the scope: kept as drawn, near 0.5
        assert all(abs(t - 0.5) < 0.2 for t in taus)
    if alpha == 0.05:  # Beta(0.05, 0.05) is almost always outside: redrawn uniform, so spread out
        assert np.std(taus) > 0.1


def test_resizemix_seeded_reproduces_and_odd_batches():
    assert_mix_seeded_on_odd_batches("resizemix", 13)


def resizemix_reference(x: torch.Tensor, draw: ResizeMixDraw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """resizemix as it was before the index table: each box's resize indices computed per call."""
    h, w = x.shape[-2:]
    half = torch.stack([(h * draw.tau).floor().long() // 2, (w * draw.tau).floor().long() // 2])
    box = box_around(draw.center, half, h, w)
    src_r = _nearest_src(h, box[0], box[1] - box[0])
    src_c = _nearest_src(w, box[2], box[3] - box[2])
    keep = ~box_mask(box, h, w)
    small = x[draw.perm][:, :, src_r[:, None], src_c[None, :]]
    return torch.where(keep, x, small), lam_from_box(box, h, w), keep.to(x.dtype)[None, None]


@pytest.mark.parametrize("h, w", [(64, 64), (30, 7), (7, 30), (5, 5)])
def test_resizemix_is_bit_identical_to_the_per_box_indices(h, w):
    """Every box side (tau = k / size) at the corners, edges and inside, with a fixed point in perm."""
    x = torch.randn(3, 2, h, w, generator=gen(h * w))
    perm = torch.tensor([2, 1, 0])
    centers = {(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 3), (1, w - 2)}
    for k, center in itertools.product(range(max(h, w) + 1), centers):
        draw = ResizeMixDraw(torch.tensor(k / max(h, w)), perm, torch.tensor(center))
        for x_in in (x, x.contiguous(memory_format=torch.channels_last)):
            for ours, ref in zip(resizemix(x_in, draw), resizemix_reference(x_in, draw)):
                assert torch.equal(bits(ours), bits(ref)) and ours.stride() == ref.stride(), (k, center)


def test_paste_index_matches_nearest_src_for_every_box():
    table = paste_index(H, W, torch.device("cpu"))
    assert table.shape == (2, H + 1, H + 1, H)
    for y0, y1 in itertools.combinations_with_replacement(range(0, H + 1, 3), 2):
        src = _nearest_src(H, torch.tensor(y0), torch.tensor(y1 - y0))
        expect = torch.where((torch.arange(H) >= y0) & (torch.arange(H) < y1), src, -1)
        assert torch.equal(table[0, y0, y1], expect) and torch.equal(table[1, y0, y1], expect), (y0, y1)


@pytest.mark.parametrize("alpha, use_alpha", [(1.0, True), (0.2, True), (1.0, False)])
def test_sample_resizemix_draw_order(alpha, use_alpha):
    """The uniform tau, the Beta tau, the partner, then the centre row and column."""
    lo, hi = 0.1, 0.8
    for seed in range(20):
        ref = gen(seed)
        uniform = lo + (hi - lo) * torch.rand((), generator=ref)
        tau = uniform
        if use_alpha:
            tau = sample_beta(alpha, alpha, gen=ref)
            tau = torch.where((tau < lo) | (tau > hi), uniform, tau)
        perm = random_partner(5, gen=ref)
        center = torch.stack([torch.randint(H, (), generator=ref), torch.randint(W, (), generator=ref)])
        draw = sample_resizemix(5, H, W, gen=gen(seed), alpha=alpha, scope=(lo, hi), use_alpha=use_alpha)
        assert torch.equal(draw.tau, tau) and torch.equal(draw.perm, perm) and torch.equal(draw.center, center)


def test_resizemix_training_step_backward():
    x, y = batch()
    model = tiny_model(random_affine=True).train()
    out = get_method("resizemix").training_step(model, x, y, ctx())
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.fc.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scope": (0.0, 0.8)}, r"outside \(0, 1\)"),
        ({"scope": (0.5, 0.2)}, r"outside \(0, 1\)"),
        ({"scope": (0.1, 1.0)}, r"outside \(0, 1\)"),
        ({"scope": (0.1,)}, r"outside \(0, 1\)"),
        ({"alpha": 0.0, "use_alpha": True}, "alpha"),
        ({"interpolation": "bilinear"}, "nearest"),
    ],
)
def test_resizemix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("resizemix", **kwargs)


def test_resizemix_alpha_ignored_without_use_alpha():
    assert ResizeMix(alpha=0.0, use_alpha=False).use_alpha is False
