"""What holds across methods: the registry (entries, order, published numbers, errors), seeded mixes whose targets sum
to one, the mixed cross-entropy step, the device path (no host reads, a few kernels), a Trainer epoch. A test of one
method lives in its test_<method>.py."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mixnb.mixups.cutmix as cutmix_module
from mixnb.config import RunConfig
from mixnb.mixups import LOSS_DEFAULTS, REGISTRY, get_method, mixed_cross_entropy, soft_target
from mixnb.mixups._helpers import NO_REPEAT_TRIES
from mixnb.mixups.cutmix import CutMixDraw, cutmix, paste_slices, paste_where, sample_cutmix
from mixnb.mixups.fmix import FMix, spectrum_weight
from mixnb.mixups.gridmix import GridMix, GridMixDraw, gridmix
from mixnb.mixups.manifoldmix import ManifoldMix
from mixnb.mixups.mixup import MixUpDraw, mixup, sample_mixup
from mixnb.mixups.resizemix import ResizeMix, paste_index
from mixnb.mixups.smoothmix import SmoothMix, SmoothMixDraw, smoothmix
from mixnb.train import fit

from helpers import H, K, W, HostReads, Ops, batch, ctx, gen, tiny_model  # tests/helpers.py, on sys.path
from mixups.test_gridmix import TINY


# ---------------------------------------------------------------------------- the registry


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


def test_registry_entries():
    assert isinstance(get_method("manifoldmix"), ManifoldMix) and REGISTRY["manifoldmix"].label == "ManifoldMix"
    assert isinstance(get_method("fmix"), FMix) and REGISTRY["fmix"].label == "FMix*"
    assert isinstance(get_method("resizemix"), ResizeMix) and REGISTRY["resizemix"].label == "ResizeMix*"
    assert get_method("manifoldmix").alpha == 0.2 and get_method("manifoldmix").layers == ("input", "layer1", "layer2")
    assert get_method("resizemix").scope == (0.1, 0.8) and get_method("fmix").size == (64, 64)


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


def test_cutmix_and_fmix_use_the_shared_no_repeat_draw():
    """HEAD's 11 draws come from _helpers (the registry's ``head``), not a copy of the number; the published
    reference's plain permutation is 1 draw (tests/test_reference.py)."""
    from mixnb.mixups import get_spec

    for name in ("cutmix", "fmix"):
        spec = get_spec(name)
        assert spec.defaults["partner_tries"] == 1 and spec.head == {"partner_tries": NO_REPEAT_TRIES}, name
        source = open(spec.cls.__module__.replace(".", "/") + ".py").read()
        assert "NO_REPEAT_TRIES =" not in source and "tries=partner_tries" in source, name


# ---------------------------------------------------------------------------- every method: seeded, targets sum to one


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


@pytest.mark.parametrize("name, kwargs", METHODS)
def test_training_step_is_the_mixed_ce_and_backpropagates(name, kwargs):
    x, y = batch()
    model = tiny_model()
    method = get_method(name, **kwargs)
    out = method.training_step(model, x, y, ctx(2))
    mixed = method.mix(x, y, gen=gen(2))
    assert torch.allclose(out.loss, mixed_cross_entropy(model(mixed.x), mixed.y_a, mixed.y_b, mixed.lam))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------- on the device: no host reads, few ops


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


# ---------------------------------------------------------------------------- through the Trainer


@pytest.mark.parametrize("name", ["smoothmix", "gridmix"])
def test_one_epoch_through_the_trainer(name, tmp_path):
    summary = fit(RunConfig(method=name, profile="test", epochs=1, device="cpu"), tmp_path, progress="none")
    assert 0 <= summary["median_top1"] <= 100 and summary["method"] == name
