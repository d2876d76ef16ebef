"""DecoupleMix, the loss option of every input-space method: the decoupled regulariser by hand, its settings as
registry data, and off = the plain loss bit for bit on each method."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from mixnb.config import RunConfig, parse_method_args
from mixnb.mixups import (LOSS_DEFAULTS, REGISTRY, MixLoss, MixMethod, get_method, get_spec,
                          mixed_cross_entropy)
from mixnb.mixups.base import decoupled_nll
from mixnb.mixups.attentivemix import Teacher
from mixnb.sweep import expand, parse_method_axes

from helpers import HostReads, ctx, gen, tiny_model  # tests/helpers.py, on sys.path

K = 10
LOSS_METHODS = [n for n, s in REGISTRY.items() if set(LOSS_DEFAULTS) <= set(s.defaults)]


def uniform_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform images from gen(0), labels in [0, 10) from gen(1): the draws the regulariser's ``reg > 0`` below was
    written against (helpers.batch draws normal images and labels from one generator)."""
    return torch.rand(n, 3, 64, 64, generator=gen(0)), torch.randint(0, K, (n,), generator=gen(1))


torch.manual_seed(0)
TEACHER = Teacher(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(7)), "test")  # any (N, C, 7, 7)


def built(name: str, **kwargs) -> MixMethod:
    method = get_method(name, **kwargs)
    if name == "attentivemix":
        method.teacher = TEACHER
    return method


# --- DecoupleMix: the loss ------------------------------------------------------------------------------


def _sp(t: float) -> float:
    return math.log1p(math.exp(-t))  # -log(e^z / (e^z + e^(z - t))): a two-class softmax NLL


def test_decoupled_loss_by_hand_both_forms():
    """Rows: (a=2, b=0) with logits [1, 0, 2]; a same-class pair; (a=0, b=1) with equal logits. lam = 0.25."""
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, -1.0], [0.0, 0.0, 0.0]])
    y_a, y_b, lam, eta = torch.tensor([2, 1, 0]), torch.tensor([0, 1, 1]), torch.tensor(0.25), 0.3
    # decoupled NLLs: row 0, class 2 without class 0 and class 0 without class 2; row 2, log 2 each
    nll_a, nll_b = decoupled_nll(logits, y_a, y_b)
    assert torch.allclose(nll_a[[0, 2]], torch.tensor([_sp(2.0), math.log(2)]))
    assert torch.allclose(nll_b[[0, 2]], torch.tensor([_sp(1.0), math.log(2)]))
    lse0, lse1 = math.log(math.e + 1 + math.e**2), math.log(math.exp(0.5) + math.exp(1.5) + math.exp(-1))
    mce = ((lse0 - 0.25 * 2.0 - 0.75 * 1.0) + (lse1 - 1.5) + math.log(3)) / 3
    assert math.isclose(mixed_cross_entropy(logits, y_a, y_b, lam).item(), mce, rel_tol=1e-6)

    paper = MixLoss(decouple=True, decouple_eta=eta, decouple_form="paper")(logits, y_a, y_b, lam)
    assert math.isclose(paper.item(), mce + eta * (_sp(2.0) + _sp(1.0) + 2 * math.log(2)) / 3, rel_tol=1e-6)
    # openmixup: the first mixed row has y_a = 2 > y_b = 0, so eta*lam goes to y_b (class-index order) in every row
    om = MixLoss(decouple=True, decouple_eta=eta)(logits, y_a, y_b, lam)
    swapped = 0.75 * _sp(2.0) + 0.25 * _sp(1.0) + 0.75 * math.log(2) + 0.25 * math.log(2)
    assert math.isclose(om.item(), mce + eta * swapped / 3, rel_tol=1e-6)
    # the same rows with the (a=0, b=1) pair first: in class order, eta*lam goes to y_a
    order = torch.tensor([2, 1, 0])
    om = MixLoss(decouple=True, decouple_eta=eta)(logits[order], y_a[order], y_b[order], lam)
    aligned = 0.25 * math.log(2) + 0.75 * math.log(2) + 0.25 * _sp(2.0) + 0.75 * _sp(1.0)
    assert math.isclose(om.item(), mce + eta * aligned / 3, rel_tol=1e-6)
    # openmixup skips a batch at lam = 0.5 exactly or within 1e-3 of 0 or 1; the paper's form only at 0 and 1
    for lam_skip in (0.5, 0.0005, 0.9995, 1.0):
        skip = torch.tensor(lam_skip)
        plain = mixed_cross_entropy(logits, y_a, y_b, skip)
        assert torch.equal(MixLoss(decouple=True, decouple_eta=eta)(logits, y_a, y_b, skip), plain)
    half = MixLoss(decouple=True, decouple_eta=eta, decouple_form="paper")(logits, y_a, y_b, torch.tensor(0.5))
    assert half > mixed_cross_entropy(logits, y_a, y_b, torch.tensor(0.5))
    one = MixLoss(decouple=True, decouple_eta=eta, decouple_form="paper")(logits, y_a, y_b, torch.tensor(1.0))
    assert torch.equal(one, mixed_cross_entropy(logits, y_a, y_b, torch.tensor(1.0)))


def test_decoupled_nll_is_exact_where_the_other_class_dominates():
    logits = torch.tensor([[0.0, 100.0, -3.0]])  # p_b ~ 1: 1 - p_b would cancel to 0 in float32
    nll_a, _ = decoupled_nll(logits, torch.tensor([0]), torch.tensor([1]))
    assert math.isclose(nll_a.item(), math.log1p(math.exp(-3.0)), rel_tol=1e-6)


def test_decoupled_loss_never_reads_the_device_on_the_host():
    logits, y_a, y_b = torch.randn(8, K, generator=gen(0)), torch.arange(8), torch.arange(8).flip(0)
    lams = torch.tensor(0.3), torch.rand(8, generator=gen(1))
    with HostReads() as probe:
        for form in ("openmixup", "paper"):
            for lam in lams:
                MixLoss(decouple=True, decouple_form=form)(logits, y_a, y_b, lam)
    assert probe.seen == []


# --- DecoupleMix: every input-space method, through the registry ------------------------------------------


def test_loss_settings_are_registry_data_on_input_space_methods_only():
    assert LOSS_DEFAULTS == dataclasses.asdict(MixLoss())  # the class's defaults mirror the registry's
    assert LOSS_METHODS == ["mixup", "cutmix", "smoothmix", "saliencymix", "attentivemix", "fmix", "resizemix",
                            "gridmix"]
    assert all(REGISTRY[n].cls.training_step is MixMethod.training_step for n in LOSS_METHODS)
    assert get_spec("cutmix").defaults == {"alpha": 1.0, "partner_tries": 1, **LOSS_DEFAULTS}
    for name in ("vanilla", "manifoldmix", "puzzlemix", "automix", "samix", "mixup+cutmix"):
        with pytest.raises(ValueError, match=r"has no setting\(s\) \['decouple'\]"):
            get_method(name, decouple=True)
    assert get_method("puzzlemix", eta=0.3).args.eta == 0.3  # PuzzleMix's own eta still reaches PuzzleMix
    method = get_method("cutmix", decouple=True, decouple_eta=0.05, decouple_form="paper")
    assert method.mix_loss == MixLoss(True, 0.05, "paper") and type(get_method("cutmix").mix_loss) is MixLoss
    # typed from the CLI and the sweep like any method setting; recorded in the run's identity
    cfg = RunConfig(method="cutmix", method_args=parse_method_args("decouple=true,decouple_eta=0.05"))
    assert cfg.method_args == {"decouple": True, "decouple_eta": 0.05}
    assert cfg.full_method_args() == {"alpha": 1.0, "partner_tries": 1, "decouple": True, "decouple_eta": 0.05,
                                      "decouple_form": "openmixup"}
    jobs = expand("test", methods=["cutmix"], args=parse_method_axes(["cutmix:decouple=true,false"]))
    assert [j.config.method_args for j in jobs] == [{"decouple": True}, {"decouple": False}]
    assert len({j.config.run_name() for j in jobs}) == 2 and jobs[1].config.run_name() == "cutmix-resnet18-s0"


@pytest.mark.parametrize("kwargs, match", [
    ({"decouple": "yes"}, "decouple must be true or false, got 'yes'"),
    ({"decouple_eta": 0.0}, r"decouple_eta must be a finite number > 0 .* got 0.0"),
    ({"decouple_eta": -0.1}, r"decouple_eta must be a finite number > 0 .* got -0.1"),
    ({"decouple_eta": float("nan")}, r"decouple_eta must be a finite number > 0 .* got nan"),
    ({"decouple_eta": float("inf")}, r"decouple_eta must be a finite number > 0 .* got inf"),
    ({"decouple_form": "om"}, "decouple_form must be one of openmixup, paper, got 'om'"),
])
def test_bad_loss_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("cutmix", **kwargs)


@pytest.mark.parametrize("name", ["vanilla", *LOSS_METHODS])
def test_decouple_off_is_the_plain_loss_bit_for_bit_and_on_adds_the_regulariser(name):
    x, y = uniform_batch()
    model = tiny_model(num_classes=K, width=4)
    out = built(name).training_step(model, x, y, ctx(2))
    mixed = built(name).mix(x, y, gen=gen(2))
    logits = model(mixed.x)
    assert torch.equal(out.loss, mixed_cross_entropy(logits, mixed.y_a, mixed.y_b, mixed.lam))  # today's loss
    if name == "vanilla":
        return
    off = built(name, decouple=False, decouple_eta=0.5, decouple_form="paper").training_step(model, x, y, ctx(2))
    assert torch.equal(off.loss, out.loss)
    for form in ("openmixup", "paper"):
        on = built(name, decouple=True, decouple_eta=0.5, decouple_form=form).training_step(model, x, y, ctx(2))
        reg = MixLoss(decouple=True, decouple_eta=0.5, decouple_form=form).regulariser(logits, mixed.y_a, mixed.y_b, mixed.lam)
        assert torch.allclose(on.loss - out.loss, reg, atol=1e-6) and torch.isfinite(on.loss)
    assert reg > 0  # paper form: the batch holds pairs of two classes with 0 < lam < 1
    on.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
