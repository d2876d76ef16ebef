"""SmoothMix and GridMix: pure cores with hand-made draws, samplers, methods; the no-repeat partner."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from mixnb.config import RunConfig
from mixnb.mixups import LOSS_DEFAULTS, REGISTRY, StepContext, get_method, mixed_cross_entropy, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES, random_partner, sample_beta
from mixnb.mixups.gridmix import GridMix, GridMixDraw, gridmix, gridmix_mask, sample_gridmix
from mixnb.mixups.smoothmix import SmoothMix, SmoothMixDraw, sample_smoothmix, smoothmix, smoothmix_mask
from mixnb.models import build_model
from mixnb.train import fit

from test_core_methods import HostReads  # tests/ is on sys.path (pytest's rootdir)
from test_mixups_manifold_fmix_resize import H, K, W, batch, constant_batch, gen

TINY = {"n_holes": (2, 6), "hole_aspect_ratio": (1.0, 1.0), "cut_area_ratio": (0.5, 1.0),
        "cut_aspect_ratio": (0.5, 2.0)}  # the protocol's GridMix ranges
REV5 = torch.tensor([4, 3, 2, 1, 0])  # a partner with one fixed point (2)
ID5 = torch.arange(5)


# ---------------------------------------------------------------------------- SmoothMix


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


# ---------------------------------------------------------------------------- GridMix


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


# ---------------------------------------------------------------------------- both methods

METHODS = [("smoothmix", {}), ("smoothmix", {"label_weights": "paper"}), ("gridmix", {})]


@pytest.mark.parametrize("name, kwargs", METHODS)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_methods_reproduce_and_targets_sum_to_one(name, kwargs, n):
    x, y = batch(n)
    method = get_method(name, **kwargs)
    a, b = method.mix(x, y, gen=gen(7)), method.mix(x, y, gen=gen(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
    assert a.x.shape == x.shape and a.x.dtype == torch.float32 and torch.equal(a.y_a, y)
    assert a.lam.shape == () and a.mask.shape == (1, 1, H, W) and 0 <= a.lam <= 1
    assert torch.allclose(soft_target(a.y_a, a.y_b, a.lam, K).sum(1), torch.ones(n))
    if name == "gridmix" or kwargs:  # lam is the share of x: the mean of the mask
        torch.testing.assert_close(a.lam, a.mask.mean(), rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(a.lam, 1 - a.mask.mean(), rtol=0, atol=1e-6)
    cl = method.mix(x.contiguous(memory_format=torch.channels_last), y, gen=gen(7))
    assert torch.allclose(cl.x, a.x, atol=1e-6) and torch.equal(cl.lam, a.lam)


@pytest.mark.parametrize("name", ["smoothmix", "gridmix"])
def test_mix_never_reads_tensors_on_the_host(name):
    """No .item(), bool(), int() or host-made tensor in mix(): on CUDA each would be a sync."""
    x, y = batch()
    method = get_method(name)
    with HostReads() as probe:
        for seed in range(3):
            method.mix(x, y, gen=gen(seed))
    assert probe.seen == []


@pytest.mark.parametrize("h, w", [(64, 64), (17, 23)])
def test_cores_take_the_device_path_on_fake_cuda_tensors(h, w):
    """Fake CUDA tensors (no GPU needed) take the real dispatch; any host read of their data raises."""
    with FakeTensorMode():
        x, perm = torch.empty(5, 3, h, w, device="cuda"), torch.zeros(5, dtype=torch.int64, device="cuda")
        one = torch.ones((), dtype=torch.int64, device="cuda")
        grid = GridMixDraw(torch.empty((), device="cuda"), perm, one, torch.empty(3, device="cuda"),
                           torch.empty(2, device="cuda"))
        smooth = SmoothMixDraw(perm, torch.zeros(2, dtype=torch.int64, device="cuda"), torch.empty((), device="cuda"))
        for x_mixed, lam, keep in (gridmix(x, grid), smoothmix(x, smooth)):
            assert x_mixed.device.type == "cuda" and lam.shape == () and keep.shape == (1, 1, h, w)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=K, width=8)


@pytest.mark.parametrize("name, kwargs", METHODS)
def test_training_step_is_the_mixed_ce_and_backpropagates(name, kwargs):
    x, y = batch()
    model = tiny_model()
    method = get_method(name, **kwargs)
    out = method.training_step(model, x, y, StepContext(gen=gen(2), cpu_gen=gen(3)))
    mixed = method.mix(x, y, gen=gen(2))
    assert torch.allclose(out.loss, mixed_cross_entropy(model(mixed.x), mixed.y_a, mixed.y_b, mixed.lam))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["smoothmix", "gridmix"])
def test_one_epoch_through_the_trainer(name, tmp_path):
    summary = fit(RunConfig(method=name, profile="test", epochs=1, device="cpu"), tmp_path, progress="none")
    assert 0 <= summary["median_top1"] <= 100 and summary["method"] == name


def test_registry_entries_order_and_published_numbers():
    table = [m for m, spec in REGISTRY.items() if spec.sweep]  # OpenMixup's table; the newer rows come after it
    assert table == ["vanilla", "mixup", "cutmix", "manifoldmix", "smoothmix", "saliencymix", "attentivemix",
                     "fmix", "puzzlemix", "resizemix", "gridmix", "automix", "samix"]
    smooth, grid = REGISTRY["smoothmix"], REGISTRY["gridmix"]
    assert smooth.cls is SmoothMix and smooth.label == "SmoothMix"
    assert smooth.defaults == {"alpha": 0.2, "label_weights": "openmixup", **LOSS_DEFAULTS}
    assert grid.cls is GridMix and grid.label == "GridMix" and grid.defaults == {"alpha": 0.2, **TINY, **LOSS_DEFAULTS}
    assert smooth.published == {"resnet18": 66.65, "resnext50": 69.65} and smooth.published_alpha == 0.2
    assert grid.published == {"resnet18": 65.14, "resnext50": 66.53} and grid.published_alpha == 0.2
    assert "no effect" in smooth.note and "64.01 / 66.84" in REGISTRY["attentivemix"].note
    for name in table:
        spec = REGISTRY[name]
        assert set(spec.published) == {"resnet18", "resnext50"} and spec.reproduced, name
        assert (spec.published_alpha is None) == (name == "vanilla"), name
        assert spec.published_alpha in (None, spec.defaults.get("alpha")), name  # the table's alpha is the default's
    assert REGISTRY["cutmix"].published == {"resnet18": 65.53, "resnext50": 66.47}
    assert REGISTRY["samix"].published == {"resnet18": 68.89, "resnext50": 72.18}


# ---------------------------------------------------------------------------- no-repeat partner (CutMix, FMix)


def test_no_repeat_partner_matches_the_reference_eleven_draws():
    """The reference draws a randperm and redraws up to 10 times while it has a fixed point, keeping
    the 11th unchecked: a batch keeps a self-pair with P(fixed point)^11 (0.64% at N = 100), where 10
    draws give 1.02%. 30,000 seeded batches: the count must be within 4 sd of the 11-draw rate."""
    assert NO_REPEAT_TRIES == 1 + 10
    n, batches = 100, 30_000
    p_fixed = 1 - sum((-1) ** k / math.factorial(k) for k in range(n + 1))  # 1 - D_n / n! ~ 1 - 1/e
    expect, old = batches * p_fixed**NO_REPEAT_TRIES, batches * p_fixed**10
    tol = 4 * math.sqrt(expect)
    assert old - expect > tol + 3 * math.sqrt(old)  # the tolerance rejects 10 draws
    g, ident = gen(0), torch.arange(n)
    count = sum(bool((random_partner(n, gen=g, tries=NO_REPEAT_TRIES) == ident).any()) for _ in range(batches))
    assert abs(count - expect) < tol, (count, expect, old)


def test_cutmix_and_fmix_use_the_shared_no_repeat_draw():
    """HEAD's 11 draws come from _helpers (the registry's ``head``), not a copy of the number; the published
    reference's plain permutation is 1 draw (tests/test_reference.py)."""
    from mixnb.mixups import get_spec

    for name in ("cutmix", "fmix"):
        spec = get_spec(name)
        assert spec.defaults["partner_tries"] == 1 and spec.head == {"partner_tries": NO_REPEAT_TRIES}, name
        source = open(spec.cls.__module__.replace(".", "/") + ".py").read()
        assert "NO_REPEAT_TRIES =" not in source and "tries=partner_tries" in source, name
