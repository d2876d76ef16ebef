"""mixnb/mixups/_helpers.py: Beta draws, the no-repeat partner, boxes, the mixed cross-entropy and soft targets."""

import itertools
import math

import pytest
import scipy.stats
import torch

from mixnb.mixups import mixed_cross_entropy, sample_beta, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES, box_around, box_from_lam, box_mask, lam_from_box, random_partner

from helpers import gen  # tests/helpers.py, on sys.path


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
    n, tries = 7, NO_REPEAT_TRIES
    with_fixed = 0
    for seed in range(200):
        perm = random_partner(n, gen=gen(seed), tries=tries)
        assert sorted(perm.tolist()) == list(range(n))
        draws = torch.rand((tries, n), generator=gen(seed)).argsort(dim=1)
        ok = [i for i in range(tries) if not (draws[i] == torch.arange(n)).any()]
        assert torch.equal(perm, draws[ok[0] if ok else -1])
        with_fixed += bool((perm == torch.arange(n)).any())
    assert with_fixed < 10  # (1 - 1/e)^11 ~ 0.6% of batches keep a self-pair, as the reference
    assert random_partner(1, gen=gen(), tries=NO_REPEAT_TRIES).tolist() == [0]  # size 1 falls back to the last draw


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


def test_box_helpers_exact_area():
    box = box_from_lam(torch.tensor(0.75), torch.tensor([10, 20]), 64, 64)  # side int(64*0.5)=32 -> half 16
    assert box.tolist() == [0, 26, 4, 36]  # rows clipped at 0
    mask = box_mask(box, 64, 64)
    assert mask.sum().item() == 26 * 32
    assert lam_from_box(box, 64, 64).item() == pytest.approx(1 - 26 * 32 / 4096)


def test_box_from_lam_matches_the_protocol_formula_for_any_size():
    lams = torch.cat([torch.rand(20000, generator=gen(8)), torch.tensor([0.0, 1.0, 2**-24, 1 - 2**-24])])
    ratio = torch.sqrt(1 - lams)
    for h, w in [(64, 64), (55, 55), (64, 48), (7, 9), (1, 1)]:
        half = torch.stack([(h * ratio).floor().long() // 2, (w * ratio).floor().long() // 2], dim=1)  # (L, 2)
        for lam, hf in list(zip(lams, half))[::50] + list(zip(lams, half))[-4:]:
            for center in ([0, 0], [h - 1, w - 1], [h // 2, w // 3]):
                (cy, cx), (hy, hx) = center, hf.tolist()
                expect = [max(cy - hy, 0), min(cy + hy, h), max(cx - hx, 0), min(cx + hx, w)]
                assert box_from_lam(lam, torch.tensor(center), h, w).tolist() == expect, (h, w, lam.item(), center)


def test_box_mask_and_lam_for_any_box():
    rows, cols = torch.arange(8)[:, None], torch.arange(10)[None, :]
    for box in itertools.product([-3, 0, 2, 5, 8, 11], repeat=4):  # inverted and out-of-range boxes too
        y0, y1, x0, x1 = box
        expect = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        assert torch.equal(box_mask(torch.tensor(box), 8, 10), expect), box
    for half in ([0, 0], [3, 1], [9, 20]):  # box_around as ResizeMix calls it, with a (2,) half
        box = box_around(torch.tensor([6, 2]), torch.tensor(half), 8, 10)
        assert box.tolist() == [max(6 - half[0], 0), min(6 + half[0], 8), max(2 - half[1], 0), min(2 + half[1], 10)]
        assert lam_from_box(box, 8, 10) == 1 - box_mask(box, 8, 10).float().mean()


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
