"""ManifoldMix, FMix and ResizeMix: pure cores with hand-made draws, samplers, methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixnb.mixups import REGISTRY, StepContext, get_method, soft_target
from mixnb.mixups._helpers import box_around
from mixnb.mixups.fmix import FMix, FMixDraw, fmix, fmix_field, fmix_mask, sample_fmix
from mixnb.mixups.manifoldmix import ManifoldMix, ManifoldMixDraw, manifoldmix, sample_manifoldmix
from mixnb.mixups.mixup import MixUpDraw, mixup, sample_mixup
from mixnb.mixups.resizemix import ResizeMix, ResizeMixDraw, _nearest_src, resizemix, sample_resizemix
from mixnb.models import build_model

H = W = 64
K = 4  # classes of the tiny test model


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return torch.randn(n, 3, H, W, generator=g), torch.randint(K, (n,), generator=g)


def constant_batch(n: int = 5) -> torch.Tensor:
    """Image i is the constant i, so every pixel says which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, H, W).clone()


def tiny_model(seed: int = 0) -> nn.Module:
    """Tiny ResNet-18 with random BN affines, so no residual branch starts as the identity."""
    model = build_model("resnet18", num_classes=K, width=8)
    g = gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        model.fc.weight.normal_(0, 0.5, generator=g)
    return model


def ctx(seed: int = 0) -> StepContext:
    return StepContext(gen=gen(seed), cpu_gen=gen(seed + 1000))


REV5 = torch.tensor([4, 3, 2, 1, 0])  # a partner with one fixed point (2)


# ---------------------------------------------------------------------------- ManifoldMix


def test_manifoldmix_input_equals_mixup_pixelwise():
    x, _ = batch()
    model = tiny_model().eval()
    seen = {}
    model.stem.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    lam = torch.tensor(0.75)
    logits, out_lam = manifoldmix(model, x, ManifoldMixDraw(lam, REV5, "input"))
    torch.testing.assert_close(seen["x"], 0.75 * x + 0.25 * x[REV5], rtol=0, atol=1e-6)  # lerp: rounding only
    assert torch.equal(seen["x"], mixup(x, MixUpDraw(lam, REV5))[0])  # the same lerp: exact pixels
    assert torch.allclose(logits, model(mixup(x, MixUpDraw(lam, REV5))[0]))
    assert out_lam is lam


@pytest.mark.parametrize("stage", ["layer1", "layer2", "layer3"])
def test_manifoldmix_hidden_stage_is_mixed_there(stage):
    x, _ = batch()
    model = tiny_model().eval()
    lam = torch.tensor(0.7)
    logits, _ = manifoldmix(model, x, ManifoldMixDraw(lam, REV5, stage))
    # manual stepping through the stages, mixing after the named one
    h = model.stem(x)
    for name, layer in zip(("layer1", "layer2", "layer3", "layer4"), model.stages):
        h = layer(h)
        if name == stage:
            h = lam * h + (1 - lam) * h[REV5]
    assert torch.allclose(logits, model.forward_head(h), atol=1e-5)
    assert not torch.allclose(logits, model(x), atol=1e-3)  # the mix did something
    input_mixed, _ = manifoldmix(model, x, ManifoldMixDraw(lam, REV5, "input"))
    assert not torch.allclose(logits, input_mixed, atol=1e-3)  # and not at the input


def test_manifoldmix_lam_one_is_unmixed():
    x, _ = batch()
    model = tiny_model().eval()
    for stage in ("input", "layer1", "layer2"):
        logits, _ = manifoldmix(model, x, ManifoldMixDraw(torch.tensor(1.0), REV5, stage))
        assert torch.equal(logits, model(x))


def test_manifoldmix_sampler_layers_and_streams():
    stages = {sample_manifoldmix(5, gen=gen(0), cpu_gen=gen(s), alpha=0.2).stage for s in range(60)}
    assert stages == {"input", "layer1", "layer2"}
    only = {sample_manifoldmix(5, gen=gen(0), cpu_gen=gen(s), alpha=0.2, layers=("layer3",)).stage for s in range(5)}
    assert only == {"layer3"}
    # the layer comes from the CPU generator only: lam and perm do not depend on it
    a = sample_manifoldmix(5, gen=gen(7), cpu_gen=gen(1), alpha=0.2)
    b = sample_manifoldmix(5, gen=gen(7), cpu_gen=gen(2), alpha=0.2)
    assert torch.equal(a.lam, b.lam) and torch.equal(a.perm, b.perm)
    assert 0 <= float(a.lam) <= 1 and sorted(a.perm.tolist()) == list(range(5))


def test_manifoldmix_seeded_step_reproduces():
    x, y = batch()
    method = get_method("manifoldmix")
    model = tiny_model().eval()
    losses = [method.training_step(model, x, y, ctx(3)).loss for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    d1 = sample_manifoldmix(5, gen=gen(3), cpu_gen=gen(4), alpha=0.2)
    d2 = sample_manifoldmix(5, gen=gen(3), cpu_gen=gen(4), alpha=0.2)
    assert (d1.stage, d1.lam, d1.perm.tolist()) == (d2.stage, d2.lam, d2.perm.tolist())


def test_manifoldmix_loss_is_mixed_ce():
    x, y = batch()
    model = tiny_model().eval()
    c = ctx(5)
    loss = get_method("manifoldmix").training_step(model, x, y, c).loss
    draw = sample_manifoldmix(5, gen=gen(5), cpu_gen=gen(1005), alpha=0.2)  # the draws ctx(5) gives
    logits, lam = manifoldmix(model, x, draw)
    target = soft_target(y, y[draw.perm], lam, K)
    assert torch.allclose(target.sum(1), torch.ones(5))
    assert torch.allclose(loss, -(target * logits.log_softmax(1)).sum(1).mean(), atol=1e-6)


@pytest.mark.parametrize("n", [1, 5])
def test_manifoldmix_training_step_backward(n):
    x, y = batch(n)
    model = tiny_model().train()
    out = get_method("manifoldmix").training_step(model, x, y, ctx())
    out.loss.backward()
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert model.fc.weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_manifoldmix_preview_is_input_mixup():
    x, y = batch()
    mb = get_method("manifoldmix").preview(tiny_model(), x, y, gen=gen(9))
    ref = sample_mixup(5, gen=gen(9), alpha=0.2)  # same draws, same order
    assert torch.equal(mb.x, mixup(x, ref)[0]) and torch.equal(mb.lam, ref.lam)
    assert torch.equal(mb.y_b, y[ref.perm])
    assert torch.allclose(soft_target(mb.y_a, mb.y_b, mb.lam, K).sum(1), torch.ones(5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"layers": ("input", "fc")}, "layers"),
        ({"layers": ()}, "layers"),
        ({"layers": ("layer1", "layer1")}, "layers"),
        ({"layers": "input"}, "layers"),
    ],
)
def test_manifoldmix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("manifoldmix", **kwargs)


# ---------------------------------------------------------------------------- FMix


def ramp_field() -> torch.Tensor:
    """Strictly decreasing in row-major order: the top-num pixels are the first num."""
    return -torch.arange(H * W, dtype=torch.float32).view(H, W)


def test_fmix_core_hand_made_draw():
    x, _ = batch()
    draw = FMixDraw(torch.tensor(0.75), REV5, ramp_field(), torch.tensor(True))
    x_mixed, lam, mask = fmix(x, draw)
    assert torch.equal(x_mixed[:, :, :48], x[:, :, :48])  # 3072 ones = rows 0..47 keep x
    assert torch.equal(x_mixed[:, :, 48:], x[REV5][:, :, 48:])
    assert lam.item() == 0.75 and mask.shape == (1, 1, H, W)
    assert torch.equal(x, batch()[0])  # input left alone


@pytest.mark.parametrize("ceil, num", [(True, 1229), (False, 1228)])  # 0.3 * 4096 = 1228.8
def test_fmix_ceil_floor_choice(ceil, num):
    mask = fmix_mask(ramp_field(), torch.tensor(0.3), torch.tensor(ceil))
    assert mask.sum().item() == num
    assert torch.equal(mask.flatten()[:num], torch.ones(num)) and mask.flatten()[num:].sum() == 0


@pytest.mark.parametrize("spectrum", ["openmixup", "paper"])
def test_fmix_sampled_mask_counts_and_lam(spectrum):
    x = constant_batch()
    for seed in range(8):
        draw = sample_fmix(5, H, W, gen=gen(seed), alpha=1.0, decay_power=3.0, spectrum=spectrum)
        x_mixed, lam, mask = fmix(x, draw)
        target = draw.lam.item() * H * W
        expect = math.ceil(target) if draw.ceil.item() else math.floor(target)
        assert mask.sum().item() == expect
        assert set(mask.unique().tolist()) <= {0.0, 1.0}  # binary
        assert lam.item() == mask.mean().item() == expect / (H * W)  # exact share of the ones
        assert abs(lam.item() - draw.lam.item()) <= 1 / (H * W)  # the reference's sampled lam
        for i, j in enumerate(draw.perm.tolist()):
            if i != j:  # the ones of the mask carry image i (x), the zeros its partner
                assert (x_mixed[i] == i).float().mean().item() == pytest.approx(lam.item(), abs=0)
        assert torch.allclose(soft_target(torch.arange(5), draw.perm, lam, 5).sum(1), torch.ones(5))


def test_fmix_lam_one_and_zero():
    x, _ = batch()
    field = sample_fmix(5, H, W, gen=gen(1), alpha=1.0, decay_power=3.0).field
    same, lam1, _ = fmix(x, FMixDraw(torch.tensor(1.0), REV5, field, torch.tensor(False)))
    assert torch.equal(same, x) and lam1.item() == 1.0
    swapped, lam0, _ = fmix(x, FMixDraw(torch.tensor(0.0), REV5, field, torch.tensor(True)))
    assert torch.equal(swapped, x[REV5]) and lam0.item() == 0.0


def agreement(mask: torch.Tensor) -> float:
    """Share of horizontally or vertically adjacent pixel pairs with the same value."""
    m = mask.squeeze()
    pairs = torch.cat([(m[:, 1:] == m[:, :-1]).flatten(), (m[1:] == m[:-1]).flatten()])
    return pairs.float().mean().item()


@pytest.mark.parametrize("spectrum", ["openmixup", "paper"])
def test_fmix_mask_is_low_frequency(spectrum):
    half = torch.tensor(0.5)
    for seed in range(5):
        field = sample_fmix(5, H, W, gen=gen(seed), alpha=1.0, decay_power=3.0, spectrum=spectrum).field
        white = torch.rand(H, W, generator=gen(seed))
        assert agreement(fmix_mask(field, half, torch.tensor(True))) > 0.9
        assert agreement(fmix_mask(white, half, torch.tensor(True))) < 0.6


def reference_scale() -> np.ndarray:
    """1 / max(|f|, 1/64)^3 over the reference's grid: fftfreq rows, the first 33 fftfreq bins as columns."""
    fy, fx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[: W // 2 + 1][None, :]
    return 1 / np.maximum(np.sqrt(fy**2 + fx**2), 1 / 64) ** 3


def standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std()


def test_fmix_field_paper_matches_numpy_irfftn():
    noise = torch.randn(2, H, W // 2 + 1, generator=gen(2))
    ours = fmix_field(noise, H, W, decay_power=3.0, spectrum="paper").double().numpy()
    n = noise.double().numpy()
    ref = np.fft.irfftn(reference_scale() * (n[0] + 1j * n[1]), s=(H, W), axes=(0, 1))
    assert np.allclose(standardise(ours), standardise(ref), atol=1e-4)
    assert np.abs(np.fft.rfft2(ref)[:, 2:]).max() > 1e-3 * np.abs(np.fft.rfft2(ref)).max()  # full spectrum


def test_fmix_field_openmixup_layout_matches_reference_indexing():
    noise = torch.randn(2, H, W // 2 + 1, generator=gen(3))
    ours = fmix_field(noise, H, W, decay_power=3.0, spectrum="openmixup").double().numpy()
    # the reference's (H, W//2+1, 2) Gaussian array; it only reads rows 0, 1 and columns 0..32, parts 0, 1
    g = np.random.default_rng(0).standard_normal((H, W // 2 + 1, 2))
    n = noise.double().numpy()
    g[0], g[1] = n[0, : W // 2 + 1, :2], n[1, : W // 2 + 1, :2]
    s = reference_scale()[..., None] * g
    ref = np.fft.irfftn(s[0] + 1j * s[1], s=(H, W), axes=(0, 1))  # its "spectrum[:, 0] + 1j * spectrum[:, 1]"
    assert np.allclose(standardise(ours), standardise(ref), atol=1e-4)
    spec = np.abs(np.fft.rfft2(ours))
    assert spec[:, 2:].max() < 1e-6 * spec.max()  # at most one period along the width


def test_fmix_soft_mask():
    field = sample_fmix(5, H, W, gen=gen(4), alpha=1.0, decay_power=3.0).field
    lam = torch.tensor(0.3)
    mask = fmix_mask(field, lam, torch.tensor(True), max_soft=0.1)
    assert mask.min() >= 0 and mask.max() <= 1
    assert ((mask > 0) & (mask < 1)).sum() >= 2 * 409 - 2  # a ramp of 2 * int(0.1 * 4096) pixels (ends are 1, 0)
    assert mask.sum().item() == pytest.approx(1229, abs=1e-2)  # the ramp keeps the mean at num / HW
    x, _ = batch()
    _, out_lam, out_mask = fmix(x, FMixDraw(lam, REV5, field, torch.tensor(True)), max_soft=0.1)
    assert out_lam.item() == out_mask.mean().item()


def test_fmix_seeded_reproduces_and_odd_batches():
    for n in (1, 5):
        x, y = batch(n)
        method = get_method("fmix")
        a, b = method.mix(x, y, gen=gen(11)), method.mix(x, y, gen=gen(11))
        assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
        assert a.x.shape == x.shape and a.mask.shape == (1, 1, H, W)
    x1, y1 = batch(1)
    assert torch.equal(get_method("fmix").mix(x1, y1, gen=gen(0)).x, x1)  # a batch of one pairs with itself


@pytest.mark.parametrize("spectrum", ["openmixup", "paper"])
def test_fmix_training_step_backward(spectrum):
    x, y = batch()
    model = tiny_model().train()
    out = get_method("fmix", spectrum=spectrum).training_step(model, x, y, ctx())
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.fc.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"decay_power": 0.0}, "decay_power"),
        ({"size": (64,)}, "size"),
        ({"size": (1, 64)}, "size"),
        ({"max_soft": 0.6}, "max_soft"),
        ({"spectrum": "ecs"}, "spectrum"),
    ],
)
def test_fmix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("fmix", **kwargs)


def test_fmix_size_must_match_images():
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="size"):
        FMix().mix(x, torch.zeros(2, dtype=torch.long), gen=gen())


# ---------------------------------------------------------------------------- ResizeMix


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
    for n in (1, 5):
        x, y = batch(n)
        method = get_method("resizemix")
        a, b = method.mix(x, y, gen=gen(13)), method.mix(x, y, gen=gen(13))
        assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
        assert a.x.shape == x.shape and a.mask.shape == (1, 1, H, W)


def test_resizemix_training_step_backward():
    x, y = batch()
    model = tiny_model().train()
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
        ({"alpha": 0.0}, "alpha"),
        ({"interpolation": "bilinear"}, "nearest"),
    ],
)
def test_resizemix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("resizemix", **kwargs)


def test_resizemix_alpha_ignored_without_use_alpha():
    assert ResizeMix(alpha=0.0, use_alpha=False).use_alpha is False


# ---------------------------------------------------------------------------- registry


def test_registry_entries():
    assert isinstance(get_method("manifoldmix"), ManifoldMix) and REGISTRY["manifoldmix"].label == "ManifoldMix"
    assert isinstance(get_method("fmix"), FMix) and REGISTRY["fmix"].label == "FMix*"
    assert isinstance(get_method("resizemix"), ResizeMix) and REGISTRY["resizemix"].label == "ResizeMix*"
    assert get_method("manifoldmix").alpha == 0.2 and get_method("manifoldmix").layers == ("input", "layer1", "layer2")
    assert get_method("resizemix").scope == (0.1, 0.8) and get_method("fmix").size == (64, 64)
