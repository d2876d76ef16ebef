"""GridMix: the vectorised mask against the reference's slices (crops past the edge included), the core on hand-made
draws, the sampler's ranges and draw order, settings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mixnb.mixups import get_method
from mixnb.mixups._helpers import random_partner, sample_beta
from mixnb.mixups.gridmix import GridMix, GridMixDraw, gridmix, gridmix_mask, sample_gridmix

from helpers import H, ID5, REV5, W, batch, constant_batch, gen  # tests/helpers.py, on sys.path


TINY = {"n_holes": (2, 6), "hole_aspect_ratio": (1.0, 1.0), "cut_area_ratio": (0.5, 1.0),
        "cut_aspect_ratio": (0.5, 2.0)}  # the protocol's GridMix ranges


def gridmix_reference(draw: GridMixDraw, h: int, w: int) -> torch.Tensor:
    """The reference's arithmetic in Python ints over the draw's values, holes cut by Python slices
    (negative ends count from the far edge): the oracle for the vectorised mask."""
    n = int(draw.n_holes)
    hole_aspect, area_share, aspect = draw.ratios.unbind()
    area = int(area_share * (h * w))
    cw = int((torch.tensor(area) / aspect).sqrt())
    ch = int(cw * aspect)
    row0, col0 = int((h - ch) * draw.corner[0]), int((w - cw) * draw.corner[1])  # int() truncates toward 0
    p = math.ceil(cw / n)
    q = int(p * hole_aspect)
    ratio = (1 - draw.lam).sqrt()
    hole_w, hole_h = min(max(int(p * ratio), 1), p - 1), min(max(int(q * ratio), 1), q - 1)
    mask = torch.zeros(h, w, dtype=torch.bool)
    for i, j in itertools.product(range(n + 1), range(math.ceil(ch / q) + 1)):
        x1, y1 = min(p * i, cw), min(q * j, ch)
        x2, y2 = min(x1 + hole_w, cw), min(y1 + hole_h, ch)
        mask[row0 + y1: row0 + y2, col0 + x1: col0 + x2] = True
    return mask


def grid_draw(lam: float, perm: torch.Tensor, n: int, ratios: list[float], corner: list[float]) -> GridMixDraw:
    """A hand-made draw: ratios = (hole aspect, crop area share, crop aspect), corner = (row, col) shares."""
    return GridMixDraw(torch.tensor(lam), perm, torch.tensor(n), torch.tensor(ratios), torch.tensor(corner))


WIDE = {"n_holes": (1, 4), "hole_aspect_ratio": (0.5, 2.0), "cut_area_ratio": (0.2, 1.0),
        "cut_aspect_ratio": (0.2, 5.0)}  # n 1 and long crops: holes longer than the image


@pytest.mark.parametrize("settings", [TINY, WIDE], ids=["tiny", "wide"])
def test_gridmix_mask_equals_the_reference_slices(settings):
    negative = 0
    for (h, w), seed in itertools.product([(64, 64), (32, 32), (17, 23)], range(120)):
        draw = sample_gridmix(3, h, w, gen=gen(seed), alpha=0.2, **settings)
        got = gridmix_mask(draw, h, w)
        try:
            ref = gridmix_reference(draw, h, w)
        except ZeroDivisionError:  # q = 0: the reference fails; the mask has no holes
            assert not got.any()
            continue
        assert torch.equal(got, ref), (h, w, seed, draw)
        cw = int((int(draw.ratios[1] * h * w) / draw.ratios[2]).sqrt())
        negative += bool(cw > w or int(cw * draw.ratios[2]) > h)
    assert negative > 50  # crops larger than the image (negative corners) were exercised


def test_gridmix_core_hand_made_draw():
    """r 0.5, aspect 2 -> area 2048, crop 32 wide x 64 high at (0, 16); n 2 -> patches 16 x 16;
    lam 0.75 -> 8 x 8 holes at rows 0, 16, 32, 48 and columns 16, 32."""
    x = constant_batch()
    draw = grid_draw(0.75, REV5, 2, [1.0, 0.5, 2.0], [0.5, 0.5])
    x_mixed, lam, keep = gridmix(x, draw)
    rows = torch.zeros(H, dtype=torch.bool)
    cols = torch.zeros(W, dtype=torch.bool)
    for r in (0, 16, 32, 48):
        rows[r: r + 8] = True
    for c in (16, 32):
        cols[c: c + 8] = True
    holes = rows[:, None] & cols[None, :]
    assert torch.equal(gridmix_mask(draw, H, W), holes)
    assert torch.equal(keep, (~holes).float()[None, None]) and lam.dtype == torch.float32
    assert lam.item() == 1 - 4 * 8 * 2 * 8 / 4096 == keep.mean().item()
    assert torch.equal(x_mixed, torch.where(holes, x[REV5], x))
    assert torch.equal(x, constant_batch())  # the input is left alone


def test_gridmix_crop_past_the_edge_wraps_like_python_slices():
    """r 1, aspect 2 -> crop 45 wide x 90 high; corner row int(-26 * 0.5) = -13; n 3 -> patches 15,
    lam 0.75 -> holes of 7: the hole at crop rows [0, 7) is image rows [-13, -6) = [51, 58)."""
    draw = grid_draw(0.75, ID5, 3, [1.0, 1.0, 2.0], [0.5, 0.0])
    rows = gridmix_mask(draw, H, W).any(dim=1)
    expect = set()
    for start in range(-13, -13 + 90, 15):
        expect |= set(range(H)[start: start + 7])
    assert set(rows.nonzero().flatten().tolist()) == expect
    assert {51, 57, 62, 63} <= expect and 58 not in expect  # wrapped [51, 58) and the cut [62, 64)
    assert torch.equal(gridmix_mask(draw, H, W), gridmix_reference(draw, H, W))


def test_gridmix_lam_one_gives_one_pixel_holes_and_identity_partner_no_change():
    x, _ = batch()
    draw = grid_draw(1.0, REV5, 2, [1.0, 0.5, 2.0], [0.5, 0.5])
    holes = gridmix_mask(draw, H, W)
    assert holes.sum() == 4 * 2  # a 1 x 1 px hole in each patch, not the identity (the reference's clip)
    x_mixed, lam, _ = gridmix(x, draw)
    assert lam.item() == 1 - 8 / 4096 and not torch.equal(x_mixed, x)
    same = GridMixDraw(draw.lam, ID5, draw.n_holes, draw.ratios, draw.corner)
    assert torch.equal(gridmix(x, same)[0], x)


def test_gridmix_sampler_ranges_order_and_seed():
    for seed in range(20):
        ref = gen(seed)
        lam = sample_beta(0.2, 0.2, gen=ref)
        n = torch.randint(2, 7, (), generator=ref)
        ratios = torch.empty(3)
        for i, (lo, hi) in enumerate([(1.0, 1.0), (0.5, 1.0), (0.5, 2.0)]):
            ratios[i].uniform_(lo, hi, generator=ref)
        perm = random_partner(6, gen=ref)
        corner = torch.rand(2, generator=ref)
        draw = sample_gridmix(6, H, W, gen=gen(seed), alpha=0.2, **TINY)
        for got, want in zip((draw.lam, draw.n_holes, draw.ratios, draw.perm, draw.corner),
                             (lam, n, ratios, perm, corner)):
            assert torch.equal(got, want)
    draws = [sample_gridmix(4, H, W, gen=gen(s), alpha=0.2, **TINY) for s in range(200)]
    assert {int(d.n_holes) for d in draws} == {2, 3, 4, 5, 6}
    ratios = torch.stack([d.ratios for d in draws])
    assert (ratios[:, 0] == 1).all() and ratios[:, 1].min() >= 0.5 and ratios[:, 1].max() <= 1
    assert ratios[:, 2].min() >= 0.5 and ratios[:, 2].max() <= 2
    lams = torch.stack([gridmix_mask(d, H, W).float().mean() for d in draws])
    assert 0.2 < lams.mean() < 0.38  # docs/methods.md §2 (sim): mean lam 0.713, i.e. holes ~0.29 of the image


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"n_holes": 0}, r"n_holes .*integer >= 1.*got 0"),
        ({"n_holes": (6, 2)}, r"lo <= hi.*\(6, 2\)"),
        ({"n_holes": (2, 4.5)}, r"n_holes.*\(2, 4.5\)"),
        ({"hole_aspect_ratio": (1.0, 2.0, 3.0)}, r"hole_aspect_ratio.*\(1.0, 2.0, 3.0\)"),
        ({"cut_area_ratio": (0.5, 1.5)}, r"cut_area_ratio.*in \(0, 1\].*1.5"),
        ({"cut_area_ratio": 0.0}, r"cut_area_ratio.*got 0.0"),
        ({"cut_aspect_ratio": -1.0}, r"cut_aspect_ratio.*> 0.*-1.0"),
        ({"cut_aspect_ratio": "wide"}, r"cut_aspect_ratio.*'wide'"),
    ],
)
def test_gridmix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("gridmix", **kwargs)


def test_gridmix_accepts_numbers_and_pairs():
    method = GridMix(n_holes=4, hole_aspect_ratio=[1, 2], cut_area_ratio=1, cut_aspect_ratio=(1, 1))
    assert method.n_holes == (4, 4) and method.hole_aspect_ratio == (1.0, 2.0) and method.cut_area_ratio == (1.0, 1.0)
