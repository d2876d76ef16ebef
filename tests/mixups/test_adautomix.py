"""AdAutoMix: the 3-source mix block, the margin rules, targets and lambda, gradient routing of each loss,
the adversarial switch, seeded draws, bad settings, the read-out, the gallery preview, trainer runs and resume."""

import dataclasses
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from killing import run_until_killed
from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY, get_method
from mixnb.mixups._automix_ops import mask_loss, pool, reference_readout, training_forward
from mixnb.mixups.base import mixed_cross_entropy
from mixnb.mixups.adautomix import (
    AdAutoMix,
    AdAutoMixDraw,
    AdaptiveMask,
    adautomix,
    backbone_masks,
    co_mask_loss,
    co_mixed_cross_entropy,
    repeated_bn_updates,
    sample_adautomix,
)
from mixnb.models import build_model
from mixnb.train import fit

from helpers import H, W, batch, ctx, gen, tiny_setup  # tests/helpers.py, on sys.path


# ----------------------------------------------------------------------------- mix block, core, margin


def test_adaptive_mask_matches_the_co_attention_formula():
    torch.manual_seed(0)
    feat = torch.randn(4, 16, 4, 4)
    sources = torch.stack([torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2]), torch.tensor([2, 3, 0, 1])])
    block = AdaptiveMask(16)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3, generator=gen(1))
    masks = block(feat, sources, (16, 16))
    assert masks.shape == (4, 3, 16, 16) and masks.dtype == torch.float32
    assert torch.allclose(masks.sum(dim=1), torch.ones(4, 16, 16), atol=1e-6)  # softmax over the sources

    def conv(c, f):  # 1x1 conv of (N, C, h, w) -> (N, hw, out)
        return torch.einsum("oc,nchw->nhwo", c.weight[:, :, 0, 0], f).flatten(1, 2) + c.bias

    f = [feat[s] for s in sources]
    q, k = [conv(block.query, fi).relu() for fi in f], [conv(block.key, fi).relu() for fi in f]
    logits = []
    for i in range(3):  # the reference's loop: sum over j != i of q_i k_j^T, / sqrt(d), softmax, @ v_i
        attn = sum(q[i] @ k[j].transpose(1, 2) for j in range(3) if j != i) / math.sqrt(8)
        logits.append((attn.softmax(-1) @ conv(block.value, f[i])).reshape(4, 1, 4, 4))
    expect = F.interpolate(torch.cat(logits, 1), scale_factor=4, mode="bilinear").softmax(dim=1)
    assert torch.allclose(masks, expect, atol=1e-6)
    assert block.lam_mul_k is None and block.query.out_channels == 8  # no lambda input; reduction 2


def test_core_mixes_the_sources_and_the_margin_rules():
    x, _ = batch(4)
    sources = torch.stack([torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2]), torch.tensor([2, 3, 0, 1])])
    masks = torch.rand(4, 3, H, W, generator=gen(2)).softmax(dim=1)
    mixed = adautomix(x, masks, sources)
    expect = sum(masks[:, i:i + 1] * x[sources[i]] for i in range(3))
    assert torch.allclose(mixed, expect, atol=1e-6)
    assert torch.allclose(adautomix(torch.ones_like(x), masks, sources), torch.ones_like(x), atol=1e-6)
    cl = adautomix(x.to(memory_format=torch.channels_last), masks, sources)  # the CUDA layout is kept
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, mixed, atol=1e-6)
    lam = torch.tensor([0.5, 0.3, 0.2])
    plain = sum(lam[i] * x[sources[i]] for i in range(3))
    assert torch.allclose(adautomix(x, lam.view(1, 3, 1, 1), sources), plain, atol=1e-6)  # constant 3-way mixup

    def constant(lam_1, rule):
        lam = torch.tensor([lam_1, (1 - lam_1) / 2, (1 - lam_1) / 2])
        out = backbone_masks(masks, lam, lam_margin=0.03, rule=rule)
        return torch.equal(out, lam.view(1, 3, 1, 1).expand_as(masks))

    # the authors' rule: constant only at the extremes; OpenMixup HEAD's: constant unless lam_1 > 0.97
    assert [constant(v, "authors") for v in (0.02, 0.5, 0.9, 0.98)] == [True, False, False, True]
    assert [constant(v, "openmixup") for v in (0.02, 0.5, 0.9, 0.98)] == [True, True, True, False]
    inside = backbone_masks(masks, torch.tensor([0.5, 0.3, 0.2]), lam_margin=0.03, rule="authors")
    assert torch.equal(inside, masks)
    off = backbone_masks(masks, torch.tensor([0.99, 0.005, 0.005]), lam_margin=0.0, rule="authors")
    assert torch.equal(off, masks)  # margin 0 = off under the authors' rule


def test_sampler_weights_sum_to_one_and_draws_are_seeded():
    draw = sample_adautomix(7, gen=gen(3), alpha=1.0, k=3)
    w = draw.weights
    assert w.shape == (3,) and w.dtype == torch.float32 and (w > 0).all() and w.sum().item() == pytest.approx(1)
    assert w[0] == draw.lam and draw.rest.sum().item() == pytest.approx(1)
    for perms in (draw.perm_mb, draw.perm_bb):
        assert perms.shape == (3, 7) and all(sorted(p.tolist()) == list(range(7)) for p in perms)
    again = sample_adautomix(7, gen=gen(3), alpha=1.0, k=3)
    assert all(torch.equal(getattr(draw, f.name), getattr(again, f.name)) for f in dataclasses.fields(draw))
    many = torch.stack([sample_adautomix(4, gen=gen(s), alpha=1.0).lam for s in range(400)])
    assert 0.28 < many.mean().item() < 0.39  # E[lam_1] = 1/3 for normalised Betas
    assert sample_adautomix(4, gen=gen(0), alpha=2.0, k=4).weights.shape == (4,)
    perm = torch.arange(4)
    hand = AdAutoMixDraw(torch.tensor(0.5), torch.tensor([0.6, 0.4]), perm.expand(3, 4), perm.expand(3, 4))
    assert torch.allclose(hand.weights, torch.tensor([0.5, 0.3, 0.2]), atol=1e-7)  # lam_1, then (1 - lam_1) * rest


def test_losses_reduce_to_the_two_image_forms():
    logits = torch.randn(6, 5, generator=gen(4))
    y_a, y_b = torch.randint(0, 5, (6,), generator=gen(5)), torch.randint(0, 5, (6,), generator=gen(6))
    lam = torch.tensor(0.3)
    two = co_mixed_cross_entropy(logits, torch.stack([y_a, y_b]), torch.stack([lam, 1 - lam]))
    assert two.item() == pytest.approx(mixed_cross_entropy(logits, y_a, y_b, lam).item(), abs=1e-6)
    m = torch.rand(6, 1, 8, 8, generator=gen(7))  # the partner's share
    masks = torch.cat([1 - m, m], dim=1)
    for var_weight in (0.0, 2.0):
        got = co_mask_loss(masks, torch.stack([lam, 1 - lam]), margin=0.1, var_weight=var_weight)
        assert got.item() == pytest.approx(mask_loss(m, lam, margin=0.1, var_weight=var_weight).item(), abs=1e-6)
    third = torch.full((2, 3, 4, 4), 1 / 3)  # flat masks: L1 only, mean of (|1/3 - lam_i| - 0.1)_+
    lam3 = torch.tensor([0.6, 0.3, 0.1])
    assert co_mask_loss(third, lam3, margin=0.1, var_weight=2).item() == pytest.approx((0.1667 + 0 + 0.1333) / 3,
                                                                                       abs=1e-4)


def test_one_forward_with_repeated_bn_updates_equals_k_forwards():
    torch.manual_seed(0)
    a = build_model("resnet18", num_classes=4, width=8)
    b = build_model("resnet18", num_classes=4, width=8)
    b.load_state_dict(a.state_dict())
    x, _ = batch(6)
    perms = [torch.randperm(6, generator=gen(i)) for i in range(3)]
    with torch.no_grad():
        outs = [a(x[p]) for p in perms]  # the reference: K forwards on permutations of x
        with repeated_bn_updates(b, 3):
            out = b(x)
    assert all(torch.allclose(o, out[p], atol=1e-5) for o, p in zip(outs, perms))
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if key.endswith(("running_mean", "running_var")):
            assert torch.allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6), key
    assert all(m.momentum == 0.1 for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))  # restored


# ----------------------------------------------------------------------------- the step: gradients, switch, seeds


def generator_loss(method, x, y, draw, *, adversarial):
    """L_gen + 0.1 * L_mask rebuilt from ``draw`` the reference's way (K forwards of k for the cosine targets)."""
    lam = draw.weights
    with torch.no_grad():
        feat = method.encoder_k.forward_stages(x)[2]
    m_mb = method.mix_block(feat, draw.perm_mb, (H, W))
    x_mb = sum(m_mb[:, i:i + 1] * x[draw.perm_mb[i]] for i in range(3))
    logits = method.head_mix_k(pool(method.encoder_k.forward_stages(x_mb)[-1]))
    with torch.no_grad():
        targets = [method.head_mix_k(pool(method.encoder_k.forward_stages(x[p])[-1])) for p in draw.perm_mb]
    sim = sum(lam[i] * F.cosine_similarity(logits, targets[i], dim=-1) for i in range(3)).mean()
    loss_k = sum(lam[i] * F.cross_entropy(logits, y[draw.perm_mb[i]]) for i in range(3))
    gen_loss = -0.4 * loss_k + 0.6 * sim if adversarial else loss_k
    return gen_loss + 0.1 * co_mask_loss(m_mb, lam, margin=0.1, var_weight=2.0), loss_k, sim


@pytest.mark.parametrize("step", [0, 1])  # 0: adversarial (every 2nd step from the first), 1: cooperative
def test_each_loss_reaches_only_its_parameters(step):
    model, method = tiny_setup("adautomix")
    x, y = batch()
    out = method.training_step(model, x, y, ctx(5, step=step))
    logs = out.logs
    expect_gen = -0.4 * logs["loss_mix_k"] + 0.6 * logs["cos_sim"] if step == 0 else logs["loss_mix_k"]
    assert logs["loss_gen"].item() == pytest.approx(expect_gen.item(), abs=1e-6)
    total = logs["loss_mix_q"] + 0.5 * logs["loss_one_q"] + 0.5 * logs["loss_co_q"] + logs["loss_gen"] \
        + 0.1 * logs["loss_mask"]
    assert out.loss.item() == pytest.approx(total.item(), abs=1e-5)
    out.loss.backward()
    frozen = [*method.encoder_k.parameters(), *method.head_mix_k.parameters()]
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in [*model.parameters(), *method.head_mix_q.parameters()])
    g_full = [p.grad.clone() for p in method.mix_block.parameters()]
    assert all(g.abs().sum() > 0 for g in g_full)

    # the generator's losses alone, rebuilt the reference's way: exactly the mix block's gradient, nothing else
    for module in (model, method):
        module.zero_grad(set_to_none=True)
    draw = sample_adautomix(5, gen=gen(5), alpha=1.0)
    loss, loss_k, sim = generator_loss(method, x, y, draw, adversarial=step == 0)
    assert loss_k.item() == pytest.approx(logs["loss_mix_k"].item(), abs=1e-5)
    assert sim.item() == pytest.approx(logs["cos_sim"].item(), abs=1e-5)
    loss.backward()
    for g, p in zip(g_full, method.mix_block.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-3, atol=1e-8)
    assert all(p.grad is None for p in [*model.parameters(), *method.head_mix_q.parameters(), *frozen])


def test_backbone_losses_use_the_drawn_targets_and_reach_only_q():
    model, method = tiny_setup("adautomix")
    x, y = batch()
    out = method.training_step(model, x, y, ctx(8, step=1))
    out.loss.backward()
    online = [*model.parameters(), *method.head_mix_q.parameters()]
    g_q = [p.grad.clone() for p in online]
    for module in (model, method):
        module.zero_grad(set_to_none=True)

    # q's three losses rebuilt from the draw: labels y[rho_i] at weights lam_i, the bb masks without a graph
    draw = sample_adautomix(5, gen=gen(8), alpha=1.0)
    lam, rho = draw.weights, draw.perm_bb
    assert 0.03 < lam[0] < 0.97  # the learned masks, not the margin's constant weights
    with torch.no_grad():
        m_bb = method.mix_block(method.encoder_k.forward_stages(x)[2], rho, (H, W))
    x_bb = sum(m_bb[:, i:i + 1] * x[rho[i]] for i in range(3))
    x_co = sum(lam[i] * x[rho[i]] for i in range(3))

    def mixed_ce(x_in):
        logits = method.head_mix_q(pool(model.forward_stages(x_in)[-1]))
        return sum(lam[i] * F.cross_entropy(logits, y[rho[i]]) for i in range(3))

    one, co, mix = F.cross_entropy(model(x), y), mixed_ce(x_co), mixed_ce(x_bb)
    for value, key in ((one, "loss_one_q"), (co, "loss_co_q"), (mix, "loss_mix_q")):
        assert value.item() == pytest.approx(out.logs[key].item(), abs=1e-5), key
    (mix + 0.5 * one + 0.5 * co).backward()  # L_mix + L_re with mixup_radio 0.5: all of q's gradient
    for g, p in zip(g_q, online):
        assert torch.allclose(p.grad, g, rtol=1e-3, atol=1e-7)
    assert all(p.grad is None for p in method.mix_block.parameters())


def test_seeded_steps_reproduce_and_odd_batches_work():
    x, y = batch(3)
    results = []
    for _ in range(2):
        model, method = tiny_setup("adautomix")
        out = method.training_step(model, x, y, ctx(2))
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in method.mix_block.parameters()],
                        [p.grad.clone() for p in model.parameters()]))
    (la, ga, qa), (lb, gb, qb) = results
    assert torch.equal(la, lb) and all(map(torch.equal, ga, gb)) and all(map(torch.equal, qa, qb))
    model, method = tiny_setup("adautomix")
    assert not torch.equal(method.training_step(model, x, y, ctx(9)).loss.detach(), la)  # another draw
    out = method.training_step(model, x[:1], y[:1], ctx(2))  # a single image: every source is itself
    assert torch.isfinite(out.loss) and set(out.logs) >= {"loss_mix_k", "cos_sim", "loss_gen", "loss_mask"}


def test_bad_settings_fail_clearly():
    bad = {
        "mix_samples": (2, r"mix_samples must be an integer >= 3 .*got 2"),
        "margin_rule": ("om", r"margin_rule must be one of authors, openmixup, got 'om'"),
        "mixup_radio": (1.5, r"mixup_radio must be in \[0, 1\], got 1.5"),
        "beta_radio": (-0.1, r"beta_radio must be in \[0, 1\], got -0.1"),
        "adv_interval": (1.5, r"adv_interval must be an integer >= 0 .*got 1.5"),
        "lam_margin": (0.6, r"lam_margin must be in \[0, 0.5\), got 0.6"),
        "alpha": (0, "alpha must be > 0"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            AdAutoMix(**{key: value})
    with pytest.raises(ValueError, match="mixblock_min_lr"):
        AdAutoMix(mixblock_lr=0.1, mixblock_min_lr=0.2)
    with pytest.raises(ValueError, match="no setting"):
        get_method("adautomix", lam_mul_k=0.25)
    with pytest.raises(ValueError, match="mix_samples"):
        RunConfig(method="adautomix", method_args={"mix_samples": 2})


# ----------------------------------------------------------------------------- registry, groups, read-out


def test_registry_entry_and_param_groups():
    spec = REGISTRY["adautomix"]
    assert list(REGISTRY).index("adautomix") == list(REGISTRY).index("samix") + 1
    assert spec.cls is AdAutoMix and spec.label == "AdAutoMix" and not spec.sweep and not spec.auto_compile
    assert spec.published == {"resnet18": 69.19, "resnext50": 72.89} and spec.published_alpha == 1.0
    assert not spec.reproduced and spec.min_lr == 0.0 and spec.note
    d = spec.defaults
    assert (d["alpha"], d["mix_samples"], d["lam_margin"]) == (1.0, 3, 0.03)
    assert (d["mixup_radio"], d["beta_radio"], d["mixblock_lr"], d["mixblock_min_lr"]) == (0.5, 0.4, 0.1, 0.0)
    assert (d["momentum"], d["end_momentum"], d["momentum_warmup"]) == (0.999, 0.999999, 0.1)
    assert (d["margin_rule"], d["adv_interval"], d["mask_loss"], d["mask_margin"]) == ("authors", 2, 0.1, 0.1)
    cfg = RunConfig(method="adautomix", profile="test", device="cpu")
    model, method = tiny_setup("adautomix")
    groups = method.param_groups(model, lr=cfg.lr, min_lr=cfg.floor_lr)
    assert [(g["lr"], g["min_lr"]) for g in groups] == [(0.2, 0.0), (0.1, 0.0)]  # the R-18 config: all to 0
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in [*model.parameters(), *method.head_mix_q.parameters()]}
    assert ids[1] == {id(p) for p in method.mix_block.parameters()}
    assert isinstance(method.mix_block, AdaptiveMask) and method.mix_block.query.in_channels == 32  # stage 3


def test_summarize_gives_the_authors_readout_and_openmixups_beside_it():
    cols = {"one_q": "top1", "mix_q": "mix_q_top1", "one_k": "one_k_top1", "mix_k": "mix_k_top1"}
    one_k = [10.0] * 8 + [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 90]  # 20 epochs: 10..20 kept (11 rows)
    rows = [{"epoch": e + 1, cols["one_q"]: 50.0, cols["mix_q"]: 40.0, cols["one_k"]: one_k[e], cols["mix_k"]: 30.0}
            for e in range(20)]
    out = AdAutoMix().summarize(rows)
    assert out["reference_epochs"] == [10, 20] and out["reference_top1"] == 66 and out["reference_head"] == "one_k"
    assert out["reference_medians"]["one_q"] == 50 and out["readout"].startswith("median_top1")
    assert out["openmixup_rule_top1"] == reference_readout(rows)["reference_top1"]
    assert AdAutoMix().summarize([{"epoch": 1, "top1": 3.0}]) == {"readout": out["readout"]}


# ----------------------------------------------------------------------------- preview (galleries)


def test_preview_gives_the_weight_of_x_and_follows_gallery_steering():
    model, method = tiny_setup("adautomix")
    with torch.no_grad():  # trained-scale weights: masks with structure
        for p in method.mix_block.parameters():
            p.mul_(300)
    method.eval()
    x, y = batch(6)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    a, b = method.preview(model, x, y, gen=gen(4)), method.preview(model, x, y, gen=gen(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and a.lam == b.lam  # seeded
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())  # BN stats untouched
    draw = sample_adautomix(6, gen=gen(4), alpha=1.0)
    assert a.mask.shape == (6, 1, H, W) and 0 <= a.mask.min() and a.mask.max() <= 1 and a.mask.std() > 0.05
    assert a.lam == draw.lam and torch.equal(a.y_a, y) and torch.equal(a.y_b, y[draw.perm_bb[1]])
    sources = torch.stack([torch.arange(6), draw.perm_bb[1], draw.perm_bb[2]])  # source 1 is x itself
    with torch.no_grad(), training_forward(method.encoder_k, method.mix_block):
        masks = method.mix_block(method.features_k(x), sources, (H, W))
    assert torch.allclose(a.mask, masks[:, :1]) and torch.allclose(a.x, adautomix(x, masks, sources), atol=1e-6)
    # the gallery's steering: lam set, every partner field a single (N,) permutation
    import mixnb.mixups.adautomix as module

    perm = torch.arange(6).roll(-1)
    real = module.sample_adautomix

    def steered(*args, **kwargs):
        d = real(*args, **kwargs)
        return dataclasses.replace(d, lam=torch.full_like(d.lam, 0.35), perm_mb=perm, perm_bb=perm)

    module.sample_adautomix = steered
    try:
        s = method.preview(model, x, y, gen=gen(4))
    finally:
        module.sample_adautomix = real
    assert s.lam.item() == pytest.approx(0.35) and torch.equal(s.y_b, y[perm])
    assert torch.allclose(s.x, s.mask * x + (1 - s.mask) * x[perm], atol=1e-5)  # one partner, weights M_1, 1 - M_1


# ----------------------------------------------------------------------------- through the Trainer (width 4: fast)


def test_one_epoch_through_the_trainer(tmp_path):
    summary = fit(RunConfig(method="adautomix", profile="test", epochs=1, width=4, device="cpu"), tmp_path,
                  progress="none")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    for col in ("top1", "mix_q_top1", "one_k_top1", "mix_k_top1", "train_loss_gen", "train_cos_sim",
                "train_loss_co_q", "train_loss_mask"):
        assert col in metrics and metrics[col].notna().all(), col
    assert summary["reference_top1"] == metrics["one_k_top1"].iloc[0] and summary["reference_head"] == "one_k"
    assert 0 <= summary["median_top1"] <= 100 and "openmixup_rule_top1" in summary


@pytest.mark.slow
def test_a_killed_run_restores_the_ema_encoder_mix_block_and_step_parity(tmp_path):
    cfg = RunConfig(method="adautomix", profile="test", epochs=2, width=4, device="cpu")
    straight = fit(cfg, tmp_path / "straight", progress="none")
    killed = tmp_path / "killed"
    run_until_killed(cfg, killed, 1)
    resumed = fit(cfg, killed, progress="none")
    a, b = pd.read_csv(tmp_path / "straight" / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    cols = [c for c in a.columns if "seconds" not in c and c not in ("peak_mem_mb", "load_avg")]  # machine-measured
    pd.testing.assert_frame_equal(a[cols], b[cols])  # epoch 2 is cooperative after the resume, as straight
    assert resumed["reference_top1"] == straight["reference_top1"]
    sa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(killed / "checkpoint.pt", weights_only=True)["method"]
    for prefix in ("encoder_k.", "mix_block.", "head_mix_q.", "head_mix_k."):
        assert any(k.startswith(prefix) for k in sa), prefix
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
