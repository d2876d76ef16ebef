"""ManifoldMix, FMix and ResizeMix: pure cores with hand-made draws, samplers, methods."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mixnb.mixups import REGISTRY, StepContext, get_method, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES, box_around, box_mask, lam_from_box, random_partner, sample_beta
from mixnb.mixups.fmix import SPECTRA, FMix, FMixDraw, fmix, fmix_field, fmix_mask, sample_fmix, spectrum_weight
from mixnb.mixups.manifoldmix import ManifoldMix, ManifoldMixDraw, manifoldmix, sample_manifoldmix
from mixnb.mixups.mixup import MixUpDraw, mixup, sample_mixup
from mixnb.mixups.resizemix import ResizeMix, ResizeMixDraw, _nearest_src, paste_index, resizemix, sample_resizemix
from mixnb.models import build_model

from test_core_methods import HostReads  # tests/ is on sys.path (pytest's rootdir)

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


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float bits as integers: equal only if every value, -0.0 and NaN included, is the same."""
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int64)


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


def field_reference(noise: torch.Tensor, h: int, w: int, decay_power: float, spectrum: str) -> torch.Tensor:
    """fmix_field as it was before its constants were cached: the spectrum assembled on every call."""
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.rfftfreq(w)[None, :]
    scale = torch.sqrt(fy**2 + fx**2).clamp_min(1 / max(h, w)) ** -decay_power
    if spectrum == "paper":
        spec = torch.complex(scale * noise[0], scale * noise[1])
    else:
        k = min(h, w // 2 + 1)
        spec = torch.zeros(h, w // 2 + 1, dtype=torch.complex64)
        spec[:k, :2] = torch.complex(scale[0, :k, None] * noise[0, :k, :2], scale[1, :k, None] * noise[1, :k, :2])
    rows = torch.fft.ifft(spec, dim=0)
    imag = rows.imag.clone()
    imag[:, 0] = 0
    if w % 2 == 0:
        imag[:, w // 2] = 0
    return torch.fft.irfft(torch.complex(rows.real, imag), n=w, dim=1)


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_fmix_field_is_bit_identical_to_the_uncached_formula(spectrum):
    for (h, w), decay_power in itertools.product([(64, 64), (30, 7), (7, 30), (2, 2), (63, 65)], [3.0, 1.0]):
        noise = torch.randn(2, h, w // 2 + 1, generator=gen(h + w))
        ours = fmix_field(noise, h, w, decay_power=decay_power, spectrum=spectrum)
        assert torch.equal(bits(ours), bits(field_reference(noise, h, w, decay_power, spectrum))), (h, w)
    weight, zero = spectrum_weight(H, W, 3.0, spectrum, torch.device("cpu"))
    assert weight.shape == (2, H, W // 2 + 1) and zero.item() == 0
    support = 2 * 33 * 2 if spectrum == "openmixup" else weight.numel()  # openmixup: rows 0..32, columns 0, 1
    assert (weight[:, :33, :2] > 0).all() and (weight > 0).sum() == support


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_sample_fmix_draw_order(spectrum):
    """lam, noise, the ceil coin, then the partner: seeded runs keep their values."""
    for seed, alpha in itertools.product(range(6), [1.0, 0.2]):
        ref = gen(seed)
        lam = sample_beta(alpha, alpha, gen=ref)
        noise = torch.randn((2, H, W // 2 + 1), generator=ref)
        ceil = torch.rand((), generator=ref) > 0.5
        perm = random_partner(5, gen=ref, tries=NO_REPEAT_TRIES)
        draw = sample_fmix(5, H, W, gen=gen(seed), alpha=alpha, decay_power=3.0, spectrum=spectrum,
                           partner_tries=NO_REPEAT_TRIES)
        assert torch.equal(draw.lam, lam) and torch.equal(draw.ceil, ceil) and torch.equal(draw.perm, perm)
        assert torch.equal(bits(draw.field), bits(fmix_field(noise, H, W, decay_power=3.0, spectrum=spectrum)))


def test_fmix_select_equals_the_blend():
    """The binary mask picks pixels with torch.where: the blend's exact values, memory format kept."""
    x, _ = batch(6)
    for seed, spectrum in itertools.product(range(4), SPECTRA):
        draw = sample_fmix(6, H, W, gen=gen(seed), alpha=1.0, decay_power=3.0, spectrum=spectrum)
        mask = fmix_mask(draw.field, draw.lam, draw.ceil)[None, None]
        for x_in in (x, x.contiguous(memory_format=torch.channels_last)):
            x_mixed, lam, out_mask = fmix(x_in, draw)
            blend = mask * x_in + (1 - mask) * x_in[draw.perm]
            assert torch.equal(bits(x_mixed), bits(blend)) and x_mixed.stride() == blend.stride() == x_in.stride()
            assert torch.equal(out_mask, mask) and torch.equal(lam, mask.mean())


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
        ({"alpha": 0.0, "use_alpha": True}, "alpha"),
        ({"interpolation": "bilinear"}, "nearest"),
    ],
)
def test_resizemix_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("resizemix", **kwargs)


def test_resizemix_alpha_ignored_without_use_alpha():
    assert ResizeMix(alpha=0.0, use_alpha=False).use_alpha is False


# ---------------------------------------------------------------------------- FMix and ResizeMix on the device

DEVICE_CASES = [("fmix", {}), ("fmix", {"spectrum": "paper"}), ("fmix", {"max_soft": 0.1}), ("resizemix", {}),
                ("resizemix", {"use_alpha": True}), ("resizemix", {"alpha": 0.2, "use_alpha": True})]


@pytest.mark.parametrize("name, kwargs", DEVICE_CASES)
def test_fmix_resizemix_never_read_tensors_on_the_host(name, kwargs):
    """No .item(), bool(), int() or host-made tensor in mix(), the first call (which builds the
    cached constants) included: on CUDA each would be a sync or a pageable copy."""
    spectrum_weight.cache_clear()
    paste_index.cache_clear()
    x, y = batch()
    method = get_method(name, **kwargs)
    with HostReads() as probe:
        for seed in range(3):
            method.mix(x, y, gen=gen(seed))
    assert probe.seen == []


class Ops(TorchDispatchMode):
    """Every aten op dispatched, views included; a non-view op is about one GPU kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "name, kwargs, most_ops, most_kernels",
    [("fmix", {}, 40, 31), ("fmix", {"spectrum": "paper"}, 40, 31), ("resizemix", {}, 44, 31)],
)  # before the cached constants: fmix 77 / 52, paper 65 / 50, resizemix 87 / 66
def test_fmix_resizemix_mix_is_a_few_kernels(name, kwargs, most_ops, most_kernels):
    """mix() runs eagerly next to a CUDA-graphed model, where each launch costs a few us."""
    x, y = batch(6)
    method = get_method(name, **kwargs)
    method.mix(x, y, gen=gen())  # builds the constants once
    with Ops() as seen:
        method.mix(x, y, gen=gen(1))
    kernels = [f for f in seen.ops if not f.is_view]
    assert len(seen.ops) <= most_ops and len(kernels) <= most_kernels, [str(f) for f in seen.ops]


@pytest.mark.parametrize("name", ["fmix", "resizemix"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_fmix_resizemix_channels_last_and_batch_sizes(name, n):
    x, y = batch(n)
    method = get_method(name)
    ref = method.mix(x, y, gen=gen(4))
    out = method.mix(x.contiguous(memory_format=torch.channels_last), y, gen=gen(4))
    assert out.x.is_contiguous(memory_format=torch.channels_last) and ref.x.is_contiguous()
    assert torch.equal(out.x, ref.x) and torch.equal(out.lam, ref.lam) and torch.equal(out.mask, ref.mask)
    assert torch.equal(out.y_b, ref.y_b) and out.lam.item() == out.mask.mean().item()
    assert torch.allclose(soft_target(out.y_a, out.y_b, out.lam, K).sum(1), torch.ones(n))


# ---------------------------------------------------------------------------- registry


def test_registry_entries():
    assert isinstance(get_method("manifoldmix"), ManifoldMix) and REGISTRY["manifoldmix"].label == "ManifoldMix"
    assert isinstance(get_method("fmix"), FMix) and REGISTRY["fmix"].label == "FMix*"
    assert isinstance(get_method("resizemix"), ResizeMix) and REGISTRY["resizemix"].label == "ResizeMix*"
    assert get_method("manifoldmix").alpha == 0.2 and get_method("manifoldmix").layers == ("input", "layer1", "layer2")
    assert get_method("resizemix").scope == (0.1, 0.8) and get_method("fmix").size == (64, 64)
