"""Shared helpers, the method interface, the registry, and Vanilla / MixUp / CutMix."""

import itertools

import pytest
import scipy.stats
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import mixnb.mixups.cutmix as cutmix_module
from mixnb.mixups import REGISTRY, get_method, mixed_cross_entropy, sample_beta, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES, box_around, box_from_lam, box_mask, lam_from_box, random_partner
from mixnb.mixups.cutmix import CutMixDraw, cutmix, paste_slices, paste_where, sample_cutmix
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


def test_cutmix_host_slice_paste_equals_device_mask_paste_bit_for_bit(monkeypatch):
    """The CPU path copies only the box (its corners are free to read on the host); the CUDA path
    pastes with a mask and torch.where. Forced on the CPU, both give the same bits."""
    cases = [(n, h, w, seed) for n, (h, w) in itertools.product([1, 2, 5], [(64, 64), (13, 9)]) for seed in range(10)]
    for n, h, w, seed in cases:
        x = torch.randn(n, 3, h, w, generator=gen(seed))
        x[0, 0, 0, :2] = torch.tensor([-0.0, float("nan")])  # copies keep every bit
        for x_in in (x, x.contiguous(memory_format=torch.channels_last)):
            draw = sample_cutmix(n, h, w, gen=gen(seed), alpha=0.5)
            host = cutmix(x_in, draw)
            with monkeypatch.context() as m:
                m.setattr(cutmix_module, "paste_slices", paste_where)
                device = cutmix(x_in, draw)
            assert host[0].view(torch.int32).equal(device[0].view(torch.int32))
            assert torch.equal(host[1], device[1]) and torch.equal(host[2], device[2])
            assert host[0].stride() == device[0].stride() == x_in.stride()  # memory format kept
    box, x, perm = torch.tensor([1, 3, 0, 2]), torch.arange(32.0).reshape(2, 1, 4, 4), torch.tensor([1, 0])
    for u, v in zip(paste_slices(x, perm, box), paste_where(x, perm, box)):
        assert torch.equal(u, v)
    x.requires_grad_()
    grad_slices, grad_where = (torch.autograd.grad((paste(x, perm, box)[0] * x.detach()).sum(), x)[0]
                               for paste in (paste_slices, paste_where))
    assert torch.equal(grad_slices, grad_where)


class HostReads(TorchDispatchMode):
    """Records aten ops that need tensor data on the host (``.item()``, ``bool()``, ``int()``) or
    make a tensor from host data (``torch.tensor``): on CUDA a sync or a pageable host-to-device copy."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_and_cutmix_device_paths_never_read_tensors_on_the_host(alpha, monkeypatch):
    with HostReads() as probe:
        torch.tensor(1.0).item()
    assert probe.seen == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]  # the probe works
    x, y = torch.randn(5, 3, 16, 16, generator=gen()), torch.arange(5)
    monkeypatch.setattr(cutmix_module, "paste_slices", paste_where)  # the CUDA path, on the CPU
    with HostReads() as probe:
        for name in ("mixup", "cutmix"):
            get_method(name, alpha=alpha).mix(x, y, gen=gen(3))
    assert probe.seen == []
    monkeypatch.undo()
    # Fake CUDA tensors (no GPU needed) take the real dispatch; a host read of their data raises.
    with FakeTensorMode():
        x = torch.empty(5, 3, 16, 16, device="cuda")
        draw = CutMixDraw(torch.empty((), device="cuda"), torch.zeros(5, dtype=torch.int64, device="cuda"),
                          torch.zeros(2, dtype=torch.int64, device="cuda"))
        out, lam, keep = cutmix(x, draw)
        assert out.device.type == "cuda" and lam.shape == () and keep.shape == (1, 1, 16, 16)
        mixup(x, MixUpDraw(draw.lam, draw.perm))
        with pytest.raises(Exception, match="local_scalar_dense|data-dependent|DataDependent"):
            paste_slices(x, draw.perm, torch.zeros(4, dtype=torch.int64, device="cuda"))


def test_cutmix_device_path_is_a_few_kernels(monkeypatch):
    """A proxy for GPU launches: the core's non-view aten ops on the CUDA path (was 37)."""
    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.extend([] if func.is_view else [func])
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 3, 64, 64, generator=gen())
    draw = sample_cutmix(3, 64, 64, gen=gen(), alpha=1.0)
    monkeypatch.setattr(cutmix_module, "paste_slices", paste_where)
    with Count():
        cutmix(x, draw)
    assert len(calls) <= 22, calls


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


@pytest.mark.parametrize("tries", [1, NO_REPEAT_TRIES])
def test_sample_cutmix_draw_order(tries):
    """lam, then perm, then the centre row and column: seeded runs keep their values."""
    for seed, (h, w) in itertools.product(range(20), [(64, 64), (30, 7)]):
        ref = gen(seed)
        lam = torch.rand((), generator=ref)
        perm = random_partner(6, gen=ref, tries=tries)
        center = torch.stack([torch.randint(h, (), generator=ref), torch.randint(w, (), generator=ref)])
        draw = sample_cutmix(6, h, w, gen=gen(seed), alpha=1.0, partner_tries=tries)
        assert torch.equal(draw.lam, lam) and torch.equal(draw.perm, perm) and torch.equal(draw.center, center)


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
