"""SAMix: its lambda-aware MixBlock and lam curve, seeded steps, a killed run's resume (what it shares with AutoMix is
tested in test_automix.py, parametrised over both)."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from killing import run_until_killed
from mixnb.config import RunConfig
from mixnb.mixups._automix_ops import lam_rescale
from mixnb.mixups.samix import SAMix
from mixnb.train import fit

from helpers import H, W, batch, ctx, gen, tiny_setup  # tests/helpers.py, on sys.path
from mixups.test_automix import check_trainer_run


def test_samix_block_uses_lam_and_its_layout():
    _, method = tiny_setup("samix")
    block = method.mix_block
    qconv = block.query[0]  # att_norm (the published configs'): conv without bias, then BN
    assert block.key is not None and qconv.in_channels == 2 * 32 and qconv.out_channels == 16 and qconv.bias is None
    assert isinstance(block.value, torch.nn.Sequential) and block.upsample == "bilinear" and block.lam_mul_k == -1
    assert all(c.bias is None for c in block.value if isinstance(c, torch.nn.Conv2d))
    feat = torch.randn(4, 32, 16, 16)
    perm = torch.tensor([1, 0, 3, 2])
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    lam_2, lam_8 = torch.tensor(0.2), torch.tensor(0.8)
    assert not torch.allclose(block(feat, lam_2, perm, (H, W)), block(feat, lam_8, perm, (H, W)))
    _, auto = tiny_setup("automix")
    assert auto.mix_block.key is None and auto.mix_block.lam_mul_k is None and auto.mix_block.upsample == "nearest"


def test_samix_lam_curve():
    lam = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(lam_rescale(lam, -1), lam)  # identity
    curve = lam_rescale(lam, 0.25)  # RX-50: K = 1.25
    assert lam_rescale(torch.tensor(0.5, dtype=torch.float64), 0.25).item() == pytest.approx(0.5)
    assert torch.allclose(lam_rescale(1 - lam, 0.25), 1 - curve, atol=1e-12)  # symmetric
    assert curve[0] == 0 and curve[-1].item() == pytest.approx(1) and (curve.diff() > 0).all()
    assert not torch.allclose(curve, lam)
    assert SAMix().build_mix_block(32, SimpleNamespace(backbone="resnext50")).lam_mul_k == 0.25
    assert SAMix().build_mix_block(32, SimpleNamespace(backbone="resnet18")).lam_mul_k == -1
    assert SAMix(lam_mul_k=0.25).build_mix_block(32, None).lam_mul_k == 0.25
    with pytest.raises(ValueError, match="backbone"):
        SAMix().build_mix_block(32, None)

@pytest.mark.parametrize("n", [1, 3])
def test_odd_and_single_batches_and_seeded_draws(n):
    model, method = tiny_setup("samix")
    x, y = batch(n)
    out = method.training_step(model, x, y, ctx(2))
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.logs) >= {"loss", "loss_mix_q", "loss_one_q", "loss_mix_k", "loss_mask"}
    method.eval()
    a, b = method.preview(model, x, y, gen=gen(4)), method.preview(model, x, y, gen=gen(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and a.lam == b.lam

@pytest.mark.slow
def test_samix_runs_and_a_killed_run_restores_the_ema_encoder_and_mixblock(tmp_path):
    cfg = RunConfig(method="samix", profile="test", epochs=2, width=4, device="cpu")
    straight = fit(cfg, tmp_path / "straight", progress="none")
    check_trainer_run(straight, tmp_path / "straight")
    killed = tmp_path / "killed"
    run_until_killed(cfg, killed, 1)
    resumed = fit(cfg, killed, progress="none")
    a, b = pd.read_csv(tmp_path / "straight" / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    cols = [c for c in a.columns if "seconds" not in c and c not in ("peak_mem_mb", "load_avg")]  # machine-measured
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert resumed["reference_top1"] == straight["reference_top1"]
    sa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(killed / "checkpoint.pt", weights_only=True)["method"]
    assert any(k.startswith("encoder_k.") for k in sa) and any(k.startswith("mix_block.") for k in sa)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
