"""AutoMix and what SAMix shares with it: MixBlock masks, gradient routing, EMA schedule, lam margin, read-out,
trainer runs (SAMix's own: test_samix.py)."""

import math

import pandas as pd
import pytest
import torch

from mixnb.config import RunConfig
from mixnb.mixups import get_method
from mixnb.mixups._automix_ops import (
    MixBlock,
    ema_momentum,
    mask_loss,
    pool,
    reference_readout,
)
from mixnb.mixups.base import mixed_cross_entropy
from mixnb.mixups.automix import AutoMix, AutoMixDraw, automix, sample_automix
from mixnb.mixups.samix import SAMix
from mixnb.train import fit

from helpers import H, W, batch, ctx, gen, tiny_setup  # tests/helpers.py, on sys.path


# ----------------------------------------------------------------------------- MixBlock and masks


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_masks_are_in_unit_range_and_the_two_weights_sum_to_one(name):
    model, method = tiny_setup(name)
    x, y = batch()
    with torch.no_grad():  # large weights: saturated masks still stay in [0, 1]
        for p in method.mix_block.parameters():
            p.mul_(300)
    feat = method.features_k(x)
    m = method.mix_block(feat, torch.tensor(0.3), torch.tensor([1, 2, 3, 4, 0]), (H, W))
    assert m.shape == (5, 1, H, W) and m.dtype == torch.float32
    assert m.min() >= 0 and m.max() <= 1 and m.std() > 0.05  # not a constant mask
    ones = torch.ones_like(x)  # x and x[perm] both 1: the mix is 1 everywhere iff the weights sum to 1
    draw = AutoMixDraw(torch.tensor([0.3, 0.5]), torch.tensor([1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0]))
    x_mixed, _, w = automix(ones, m, draw, lam_margin=0.08)
    assert torch.allclose(x_mixed, ones, atol=1e-6) and torch.equal(w, 1 - m)
    method.eval()
    mb = method.preview(model, x, y, gen=gen(3))
    assert mb.mask.shape == (5, 1, H, W) and 0 <= mb.mask.min() and mb.mask.max() <= 1
    draw = sample_automix(5, gen=gen(3), alpha=2.0)
    assert torch.allclose(mb.x, mb.mask * x + (1 - mb.mask) * x[draw.perm_bb], atol=1e-6)
    assert torch.equal(mb.y_b, y[draw.perm_bb]) and mb.lam == draw.lam[1]


def test_mixblock_matches_the_attention_formula_and_autoMix_ignores_lam():
    torch.manual_seed(0)
    feat = torch.randn(3, 16, 4, 4)
    perm = torch.tensor([2, 0, 1])
    block = MixBlock(16, pair_qk=False, value_neck=False, lam_mul_k=None, upsample="nearest")
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    m = block(feat, torch.tensor(0.7), perm, (16, 16))
    q = torch.einsum("dc,nchw->nhwd", block.query.weight[:, :, 0, 0], feat) + block.query.bias
    k = q[perm]  # shared conv: k = conv(x[perm])
    v = torch.einsum("c,nchw->nhw", block.value.weight[0, :, 0, 0], feat[perm]) + block.value.bias  # value of x[perm]
    logits = torch.einsum("nhwd,nijd->nhwij", q, k) / math.sqrt(8)
    attn = logits.flatten(3).softmax(-1).reshape(logits.shape)
    expect = torch.sigmoid(torch.einsum("nhwij,nij->nhw", attn, v))  # (N, 4, 4) share of x[perm]
    expect = expect.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]  # nearest x4
    assert torch.allclose(m, expect, atol=1e-6)
    assert torch.equal(m, block(feat, torch.tensor(0.1), perm, (16, 16)))  # no lam input on Tiny


def test_mask_loss_sign_and_variance():
    m = torch.full((2, 1, 4, 4), 0.3)  # share of x[perm] 0.3 -> share of x 0.7
    assert mask_loss(m, torch.tensor(0.7), margin=0.1, var_weight=0).item() == 0
    assert mask_loss(m, torch.tensor(0.4), margin=0.1, var_weight=0).item() == pytest.approx(0.2)
    binary = torch.zeros(2, 1, 4, 4)
    binary[..., :2, :] = 1  # mean 0.5, variance 0.25
    assert mask_loss(binary, torch.tensor(0.5), margin=0.1, var_weight=2).item() == pytest.approx(-0.5)


# ----------------------------------------------------------------------------- the step


def hand_draw(lam_bb: float, perm: torch.Tensor) -> AutoMixDraw:
    return AutoMixDraw(torch.tensor([0.5, lam_bb]), perm.flip(0), perm)


def test_lam_margin_switches_to_plain_mixup():
    x, _ = batch(5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    m = torch.rand(5, 1, H, W, generator=gen(1))
    for lam in (0.05, 0.95):
        x_mixed, lam_out, w = automix(x, m, hand_draw(lam, perm), lam_margin=0.08)
        assert torch.allclose(x_mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
        assert lam_out.item() == pytest.approx(lam) and w.unique().tolist() == [pytest.approx(lam)]  # exact share
    x_mixed, _, w = automix(x, m, hand_draw(0.5, perm), lam_margin=0.08)  # inside: the learned mask
    assert torch.equal(w, 1 - m) and torch.allclose(x_mixed, (1 - m) * x + m * x[perm], atol=1e-6)
    assert torch.equal(automix(x, m, hand_draw(1.0, perm), lam_margin=0.08)[0], x)  # lam 1: unchanged
    x_off, _, _ = automix(x, m, hand_draw(0.05, perm), lam_margin=0.0)  # margin 0 = off
    assert torch.allclose(x_off, (1 - m) * x + m * x[perm], atol=1e-6)
    assert torch.equal(automix(x, torch.zeros_like(m), hand_draw(0.5, perm), lam_margin=0.08)[0], x)  # m = 0


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_mix_k_trains_only_the_mixblock(name):
    model, method = tiny_setup(name)
    x, y = batch()
    method.training_step(model, x, y, ctx(5)).loss.backward()
    assert all(p.grad is None for p in [*method.encoder_k.parameters(), *method.head_mix_k.parameters()])
    assert all(p.grad is not None for p in [*model.parameters(), *method.head_mix_q.parameters()])
    g_full = [p.grad.clone() for p in method.mix_block.parameters()]
    assert any(g.abs().sum() > 0 for g in g_full)

    # mix_k (+ the mask loss) alone, rebuilt from the same draw: the MixBlock gets exactly the full
    # step's gradient (the q losses see only the detached bb mask) and no online parameter any.
    model.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    draw = sample_automix(5, gen=gen(5), alpha=2.0)
    m_mb = method.mix_block(method.features_k(x), draw.lam[0], draw.perm_mb, (H, W))
    x_mb = (1 - m_mb) * x + m_mb * x[draw.perm_mb]
    logits = method.head_mix_k(pool(method.encoder_k.forward_stages(x_mb)[-1]))
    loss = mixed_cross_entropy(logits, y, y[draw.perm_mb], draw.lam[0])
    (loss + 0.1 * mask_loss(m_mb, draw.lam[0], margin=0.1, var_weight=method.mask_var_weight)).backward()
    for g, p in zip(g_full, method.mix_block.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in [*model.parameters(), *method.head_mix_q.parameters(),
                                        *method.encoder_k.parameters(), *method.head_mix_k.parameters()])


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="alpha"):
        AutoMix(alpha=0)
    with pytest.raises(ValueError, match=r"lam_margin must be in \[0, 0.5\), got 0.6"):
        AutoMix(lam_margin=0.6)
    with pytest.raises(ValueError, match="end_momentum"):
        AutoMix(momentum=0.999, end_momentum=0.99)
    with pytest.raises(ValueError, match="mixblock_min_lr"):
        AutoMix(mixblock_lr=0.1, mixblock_min_lr=0.2)
    with pytest.raises(ValueError, match="lam_mul_k"):
        SAMix(lam_mul_k=-0.5)
    with pytest.raises(ValueError, match="lam_mul_k"):
        SAMix(lam_mul_k="s-curve")
    with pytest.raises(ValueError, match="no setting"):
        get_method("automix", lam_mul_k=0.25)


# ----------------------------------------------------------------------------- EMA and optimizer


def test_ema_schedule_values():
    kw = {"base": 0.999, "end": 0.999999, "warmup": 0.1}
    assert ema_momentum(0, 1000, **kw) == 0.999
    assert ema_momentum(99, 1000, **kw) == 0.999  # held for the first 10%
    at_10 = 0.999999 - (0.999999 - 0.999) * (math.cos(math.pi * 0.1) + 1) / 2
    assert ema_momentum(100, 1000, **kw) == pytest.approx(at_10, abs=1e-12)
    assert at_10 == pytest.approx(0.9990245, abs=1e-7)  # starts just above the base at 10%
    assert ema_momentum(1000, 1000, **kw) == pytest.approx(0.999999, abs=1e-12)
    assert 0.999998 < ema_momentum(999, 1000, **kw) < 0.999999


@pytest.mark.parametrize("step", [0, 100, 999])
def test_ema_update_follows_the_formula(step):
    model, method = tiny_setup("automix")
    with torch.no_grad():  # q moves away from k
        for p in [*model.parameters(), *method.head_mix_q.parameters()]:
            p.add_(torch.randn(p.shape, generator=gen(7)))
    k_old = {n: t.clone() for n, t in method.encoder_k.state_dict().items()}
    h_old = [p.clone() for p in method.head_mix_k.parameters()]
    method.on_step_end(model, ctx(step=step, total_steps=1000))
    m = ema_momentum(step, 1000, base=0.999, end=0.999999, warmup=0.1)
    q = dict(model.named_parameters())
    for name, p in method.encoder_k.named_parameters():
        assert torch.allclose(p, m * k_old[name] + (1 - m) * q[name], rtol=0, atol=1e-6), name
    for name, buf in method.encoder_k.named_buffers():  # BN buffers are not EMA'd
        assert torch.equal(buf, k_old[name]), name
    for old, p, pq in zip(h_old, method.head_mix_k.parameters(), method.head_mix_q.parameters()):
        assert torch.allclose(p, m * old + (1 - m) * pq, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in method.encoder_k.parameters())


def test_param_groups_lr_and_floors():
    cfg = RunConfig(method="automix", profile="test", device="cpu")
    assert cfg.floor_lr == 0.05 and RunConfig(method="samix", profile="test").floor_lr == 0.05
    model, method = tiny_setup("automix")
    groups = method.param_groups(model, lr=cfg.lr, min_lr=cfg.floor_lr)
    assert [(g["lr"], g["min_lr"]) for g in groups] == [(0.2, 0.05), (0.1, 1e-3)]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in [*model.parameters(), *method.head_mix_q.parameters()]}
    assert ids[1] == {id(p) for p in method.mix_block.parameters()}
    frozen = {id(p) for p in [*method.encoder_k.parameters(), *method.head_mix_k.parameters()]}
    assert not (ids[0] | ids[1]) & frozen


# ----------------------------------------------------------------------------- read-out


def rows_from(values: dict[str, list[float]], first_epoch: int = 1) -> list[dict[str, float]]:
    cols = {"one_q": "top1", "mix_q": "mix_q_top1", "one_k": "one_k_top1", "mix_k": "mix_k_top1"}
    n = len(values["one_q"])
    return [{"epoch": first_epoch + i, **{cols[h]: v[i] for h, v in values.items()}} for i in range(n)]


def test_reference_readout_on_hand_made_rows():
    # 20 epochs: the rule keeps epochs >= 20 - 11 = 9, i.e. 12 rows (9..20)
    one_q = [10.0] * 8 + [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61]
    mix_q = [10.0] * 8 + [49.0] * 12
    one_k = [10.0] * 8 + [60] * 6 + [62] * 5 + [70]  # a good last epoch
    mix_k = [10.0] * 20
    out = reference_readout(rows_from({"one_q": one_q, "mix_q": mix_q, "one_k": one_k, "mix_k": mix_k}))
    # full window (12 rows): median one_k 61; prefix of 11: 60 -> the full window wins
    assert out["reference_epochs"] == [9, 20]
    assert out["reference_top1_k"] == 61 and out["reference_top1_q"] == 55.5 and out["reference_top1"] == 61
    assert out["reference_medians"]["mix_q"] == 49
    # a tie between the windows keeps the first one tried, the prefix of 11 (np.argmax)
    flat_k = [10.0] * 8 + [60] * 12
    out2 = reference_readout(rows_from({"one_q": one_q, "mix_q": mix_q, "one_k": flat_k, "mix_k": mix_k}))
    assert out2["reference_epochs"] == [9, 19] and out2["reference_top1"] == 60
    assert out2["reference_top1_q"] == 55  # one_q median over epochs 9..19
    # the prefix wins outright when the last epoch collapses
    one_k3 = [10.0] * 8 + [60] * 5 + [62] * 6 + [1]  # 12 rows: median 61; first 11: median 62 -> prefix
    out3 = reference_readout(rows_from({"one_q": one_q, "mix_q": mix_q, "one_k": one_k3, "mix_k": mix_k}))
    assert out3["reference_epochs"] == [9, 19] and out3["reference_top1"] == 62
    # short runs: every row kept, a single row works, rows without the heads give nothing
    assert reference_readout(rows_from({h: [5.0] for h in ("one_q", "mix_q", "one_k", "mix_k")}))["reference_top1"] == 5
    assert reference_readout([{"epoch": 1, "top1": 3.0}]) == {}
    assert "find_automix_val_median" in out["reference_rule"]


# ----------------------------------------------------------------------------- through the Trainer (width 4: fast)


def check_trainer_run(summary, run_dir):
    metrics = pd.read_csv(run_dir / "metrics.csv")
    heads = ("top1", "mix_q_top1", "one_k_top1", "mix_k_top1", "mix_k_val_loss")
    for col in (*heads, "train_loss_mix_k", "train_loss_mask"):
        assert col in metrics and metrics[col].notna().all(), col
    assert summary["readout"].startswith("median_top1") and 0 <= summary["reference_top1"] <= 100
    assert summary["reference_top1"] >= summary["median_top1"]  # best-of-heads includes the reported head
    assert metrics["lr"].iloc[0] == pytest.approx(0.2) and metrics["lr"].iloc[1] == pytest.approx(0.125)  # floor 0.05


def test_automix_runs_through_the_trainer(tmp_path):
    summary = fit(RunConfig(method="automix", profile="test", epochs=2, width=4, device="cpu"), tmp_path, progress="none")
    check_trainer_run(summary, tmp_path)
