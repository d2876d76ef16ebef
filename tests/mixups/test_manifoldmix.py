"""ManifoldMix: the mix at the input and at hidden stages, lam 1, the sampler's streams, the loss, the preview."""

import pytest
import torch

from mixnb.mixups import get_method, soft_target
from mixnb.mixups.manifoldmix import ManifoldMixDraw, manifoldmix, sample_manifoldmix
from mixnb.mixups.mixup import MixUpDraw, mixup, sample_mixup

from helpers import K, REV5, batch, ctx, gen, tiny_model  # tests/helpers.py, on sys.path


def test_manifoldmix_input_equals_mixup_pixelwise():
    x, _ = batch()
    model = tiny_model(random_affine=True).eval()
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
    model = tiny_model(random_affine=True).eval()
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
    model = tiny_model(random_affine=True).eval()
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
    model = tiny_model(random_affine=True).eval()
    losses = [method.training_step(model, x, y, ctx(3)).loss for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    d1 = sample_manifoldmix(5, gen=gen(3), cpu_gen=gen(4), alpha=0.2)
    d2 = sample_manifoldmix(5, gen=gen(3), cpu_gen=gen(4), alpha=0.2)
    assert (d1.stage, d1.lam, d1.perm.tolist()) == (d2.stage, d2.lam, d2.perm.tolist())


def test_manifoldmix_loss_is_mixed_ce():
    x, y = batch()
    model = tiny_model(random_affine=True).eval()
    c = ctx(5)
    loss = get_method("manifoldmix").training_step(model, x, y, c).loss
    draw = sample_manifoldmix(5, gen=gen(5), cpu_gen=gen(6), alpha=0.2)  # the draws ctx(5) gives
    logits, lam = manifoldmix(model, x, draw)
    target = soft_target(y, y[draw.perm], lam, K)
    assert torch.allclose(target.sum(1), torch.ones(5))
    assert torch.allclose(loss, -(target * logits.log_softmax(1)).sum(1).mean(), atol=1e-6)


@pytest.mark.parametrize("n", [1, 5])
def test_manifoldmix_training_step_backward(n):
    x, y = batch(n)
    model = tiny_model(random_affine=True).train()
    out = get_method("manifoldmix").training_step(model, x, y, ctx())
    out.loss.backward()
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert model.fc.weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_manifoldmix_preview_is_input_mixup():
    x, y = batch()
    mb = get_method("manifoldmix").preview(tiny_model(random_affine=True), x, y, gen=gen(9))
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
