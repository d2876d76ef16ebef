"""CutMix: the pure core on hand-made boxes, exact lam, the host and device paste paths, the sampler's draw order."""

import itertools

import pytest
import torch

import mixnb.mixups.cutmix as cutmix_module
from mixnb.mixups._helpers import NO_REPEAT_TRIES, random_partner
from mixnb.mixups.cutmix import CutMixDraw, cutmix, paste_slices, paste_where, sample_cutmix

from helpers import Ops, gen  # tests/helpers.py, on sys.path


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


def test_cutmix_device_path_is_a_few_kernels(monkeypatch):
    """A proxy for GPU launches: the core's non-view aten ops on the CUDA path (was 37)."""
    x = torch.randn(3, 3, 64, 64, generator=gen())
    draw = sample_cutmix(3, 64, 64, gen=gen(), alpha=1.0)
    monkeypatch.setattr(cutmix_module, "paste_slices", paste_where)
    with Ops() as seen:
        cutmix(x, draw)
    calls = [f for f in seen.ops if not f.is_view]
    assert len(calls) <= 22, calls


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
