"""FMix: the pure core on hand-made draws, the ceil/floor choice, exact lam, the low-frequency field against numpy's
irfftn and the reference's indexing, the soft mask, the sampler's draw order, the select against the blend."""

import itertools
import math

import numpy as np
import pytest
import torch

from mixnb.mixups import get_method, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES, random_partner, sample_beta
from mixnb.mixups.fmix import SPECTRA, FMix, FMixDraw, fmix, fmix_field, fmix_mask, sample_fmix, spectrum_weight

from helpers import (H, REV5, W, assert_mix_seeded_on_odd_batches, batch, bits, constant_batch, ctx,  # tests/helpers.py
                     gen, tiny_model)


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
    assert_mix_seeded_on_odd_batches("fmix", 11)
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
    model = tiny_model(random_affine=True).train()
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
