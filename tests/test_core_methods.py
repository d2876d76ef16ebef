"""Shared helpers, the method interface, the registry, and Vanilla / MixUp / CutMix."""

import pytest
import scipy.stats
import torch

from mixnb.mixups import REGISTRY, get_method, mixed_cross_entropy, sample_beta, soft_target
from mixnb.mixups._helpers import box_from_lam, box_mask, lam_from_box, random_partner
from mixnb.mixups.cutmix import CutMixDraw, cutmix, sample_cutmix
from mixnb.mixups.mixup import MixUpDraw, mixup, sample_mixup


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_sample_beta_matches_scipy_distribution(alpha):
    draws = sample_beta(alpha, alpha, gen=gen(1), shape=(20000,))
    assert draws.dtype == torch.float32 and draws.min() >= 0 and draws.max() <= 1
    # KS test away from the ends: float32 rounds ~2% of Beta(0.2, 0.2) draws to exactly 0 or 1
    ref = scipy.stats.beta(alpha, alpha)
    eps = 1e-6
    inner = draws.double()[(draws > eps) & (draws < 1 - eps)].numpy()
    ks = scipy.stats.kstest(inner, lambda v: (ref.cdf(v) - ref.cdf(eps)) / (1 - 2 * ref.cdf(eps)))
    assert ks.pvalue > 1e-3, ks
    assert abs(draws.double().var() - 1 / (4 * (2 * alpha + 1))) < 0.005


def test_sample_beta_is_reproducible_and_rejects_bad_alpha():
    assert torch.equal(sample_beta(1.0, 1.0, gen=gen(3), shape=(5,)), sample_beta(1.0, 1.0, gen=gen(3), shape=(5,)))
    with pytest.raises(ValueError, match="> 0"):
        sample_beta(0.0, 1.0, gen=gen())


def test_random_partner_takes_the_first_draw_without_fixed_points():
    n, tries = 7, 10
    with_fixed = 0
    for seed in range(200):
        perm = random_partner(n, gen=gen(seed), tries=tries)
        assert sorted(perm.tolist()) == list(range(n))
        draws = torch.rand((tries, n), generator=gen(seed)).argsort(dim=1)
        ok = [i for i in range(tries) if not (draws[i] == torch.arange(n)).any()]
        assert torch.equal(perm, draws[ok[0] if ok else -1])
        with_fixed += bool((perm == torch.arange(n)).any())
    assert with_fixed < 10  # (1 - 1/e)^10 ~ 1% of batches keep a self-pair, as the reference
    assert random_partner(1, gen=gen(), tries=10).tolist() == [0]  # size 1 falls back to the last draw


def test_box_helpers_exact_area():
    box = box_from_lam(torch.tensor(0.75), torch.tensor([10, 20]), 64, 64)  # side int(64*0.5)=32 -> half 16
    assert box.tolist() == [0, 26, 4, 36]  # rows clipped at 0
    mask = box_mask(box, 64, 64)
    assert mask.sum().item() == 26 * 32
    assert lam_from_box(box, 64, 64).item() == pytest.approx(1 - 26 * 32 / 4096)


def test_mixed_cross_entropy_equals_soft_target_and_two_term_form():
    logits = torch.randn(6, 5, generator=gen())
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 0, 2, 3, 4])
    for lam in (torch.tensor(0.3), torch.rand(6, generator=gen(2))):
        target = soft_target(y_a, y_b, lam, 5)
        assert torch.allclose(target.sum(1), torch.ones(6))
        soft = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        assert torch.allclose(mixed_cross_entropy(logits, y_a, y_b, lam), soft, atol=1e-6)
    ce = torch.nn.functional.cross_entropy
    two_term = 0.3 * ce(logits, y_a) + 0.7 * ce(logits, y_b)
    assert torch.allclose(mixed_cross_entropy(logits, y_a, y_b, torch.tensor(0.3)), two_term, atol=1e-6)


def test_mixup_core_exact_and_lam_one_identity():
    x = torch.randn(4, 3, 8, 8, generator=gen())
    perm = torch.tensor([1, 0, 3, 2])
    out, lam = mixup(x, MixUpDraw(torch.tensor(0.75), perm))
    assert torch.allclose(out, 0.75 * x + 0.25 * x[perm]) and lam.item() == 0.75
    out, _ = mixup(x, MixUpDraw(torch.tensor(1.0), perm))
    assert torch.equal(out, x)


def test_cutmix_core_hand_made_box():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    draw = CutMixDraw(torch.tensor(0.75), torch.tensor([1, 0]), torch.tensor([2, 2]))  # side 4, half 2: box [0,4)x[0,4)
    out, lam, keep = cutmix(x, draw)
    assert torch.equal(out[0, 0, :4, :4], x[1, 0, :4, :4]) and torch.equal(out[0, 0, 4:], x[0, 0, 4:])
    assert torch.equal(out[0, 0, :, 4:], x[0, 0, :, 4:])
    assert lam.item() == 1 - 16 / 64 and keep.mean().item() == lam.item()
    out, lam, _ = cutmix(x, CutMixDraw(torch.tensor(1.0), torch.tensor([1, 0]), torch.tensor([3, 3])))
    assert torch.equal(out, x) and lam.item() == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_lam_is_exact_unpasted_share(seed):
    x = torch.randn(3, 3, 64, 64, generator=gen(seed))
    draw = sample_cutmix(3, 64, 64, gen=gen(seed), alpha=1.0)
    out, lam, keep = cutmix(x, draw)
    unchanged = (out == x).all(dim=1).float().mean(dim=(1, 2))  # share of each image kept
    paired = draw.perm != torch.arange(3)  # a self-pair (possible after 10 redraws) changes nothing
    assert torch.allclose(unchanged[paired], lam.expand(3)[paired]) and keep.mean() == lam


@pytest.mark.parametrize("name", ["vanilla", "mixup", "cutmix"])
@pytest.mark.parametrize("n", [1, 5])
def test_methods_reproducible_targets_sum_to_one(name, n):
    method = get_method(name)
    x, y = torch.randn(n, 3, 64, 64, generator=gen()), torch.randint(0, 10, (n,), generator=gen())
    a, b = method.mix(x, y, gen=gen(7)), method.mix(x, y, gen=gen(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
    assert torch.allclose(soft_target(a.y_a, a.y_b, a.lam, 10).sum(1), torch.ones(n))
    assert a.x.shape == x.shape and torch.equal(a.y_a, y)


def test_samplers_draw_on_generator_device_and_are_seeded():
    d1, d2 = sample_mixup(9, gen=gen(4), alpha=1.0), sample_mixup(9, gen=gen(4), alpha=1.0)
    assert torch.equal(d1.perm, d2.perm) and torch.equal(d1.lam, d2.lam)
    c = sample_cutmix(9, 64, 64, gen=gen(5), alpha=1.0)
    assert 0 <= c.center.min() and c.center.max() < 64 and c.lam.device.type == "cpu"


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="valid methods: vanilla"):
        get_method("mixupp")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        get_method("cutmix", alpha=0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        get_method("mixup", alpha=-1.0)
    with pytest.raises(ValueError, match="no setting"):
        get_method("mixup", beta=1.0)
    assert list(REGISTRY)[0] == "vanilla"
