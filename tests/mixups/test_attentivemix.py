"""AttentiveMix+: the exact core on hand-made teacher features, the sampler, and where the teacher comes from (an
own Vanilla run, an ImageNet file), with one step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch.nn import functional as F

from mixnb.config import RunConfig
from mixnb.runs import needed_run
from mixnb.mixups import LOSS_DEFAULTS, REGISTRY, get_method, soft_target
from mixnb.mixups.attentivemix import (
    TEACHER_ENV,
    AttentiveMix,
    AttentiveMixDraw,
    attentivemix,
    sample_attentivemix,
)

from helpers import batch, ctx, gen, share_of_x, tiny_model  # tests/helpers.py, on sys.path


# ---------------------------------------------------------------------------- core


# nearest upsampling 7 -> 64 takes source cell floor(i * 7 / 64): cells of 10, 9, 9, 9, 9, 9, 9 px
_EDGES = [0, 10, 19, 28, 37, 46, 55, 64]


def _cells_mask(cells: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(64, 64)
    for r, c in cells:
        m[_EDGES[r] : _EDGES[r + 1], _EDGES[c] : _EDGES[c + 1]] = 1
    return m


def test_attentivemix_core_keeps_known_top_cells_with_exact_per_sample_lam() -> None:
    x, _ = batch(2)
    top = [[(0, 0), (0, 1), (1, 0), (3, 3)], [(2, 2), (2, 3), (4, 4), (6, 6)]]
    feats = torch.zeros(2, 3, 7, 7)
    for i, cells in enumerate(top):
        for rank, (r, c) in enumerate(cells):
            feats[i, :, r, c] = 10.0 - rank  # channel mean 10, 9, 8, 7
        feats[i, 0, 5, 0] = 18.0  # channel mean 6: the 5th cell, just below the top 4
    perm = torch.tensor([1, 0])
    draw = AttentiveMixDraw(torch.tensor(0.1), perm, feats)  # top_k = int(49 * 0.1) = 4
    x_mixed, lam, mask = attentivemix(x, draw, "sample")
    for i, cells in enumerate(top):
        expected_mask = _cells_mask(cells)
        assert torch.equal(mask[i, 0], expected_mask)
        assert torch.equal(x_mixed[i], torch.where(expected_mask.bool(), x[i], x[perm[i]]))
    # sample 0: 10*10 + 10*9 + 9*10 + 9*9 = 361 px; sample 1: 4 * 81 = 324 px
    assert lam.tolist() == [361 / 4096, 324 / 4096]
    assert attentivemix(x, draw)[1].tolist() == 361 / 4096  # lam_rule "first" (OpenMixup's): sample 0's for all
    grid = mask[:, :, _EDGES[:-1]][:, :, :, _EDGES[:-1]]  # (2, 1, 7, 7)
    assert torch.equal(mask, F.interpolate(grid, scale_factor=64 / 7, mode="nearest"))  # the reference's call


def test_attentivemix_core_lam_clip_and_identity() -> None:
    x, _ = batch(3)
    feats = torch.randn(3, 8, 7, 7, generator=gen(3))
    perm = torch.tensor([2, 0, 1])
    x_all, lam_all, _ = attentivemix(x, AttentiveMixDraw(torch.tensor(1.0), perm, feats))  # top_k 49
    assert torch.equal(x_all, x) and lam_all.tolist() == 1.0
    _, _, mask0 = attentivemix(x, AttentiveMixDraw(torch.tensor(0.0), perm, feats))  # top_k clipped to 1
    assert (mask0[:, 0, _EDGES[:-1]][:, :, _EDGES[:-1]].sum(dim=(1, 2)) == 1).all()
    _, _, mask75 = attentivemix(x, AttentiveMixDraw(torch.tensor(0.75), perm, feats))  # int(36.75) = 36
    assert (mask75[:, 0, _EDGES[:-1]][:, :, _EDGES[:-1]].sum(dim=(1, 2)) == 36).all()


@pytest.mark.parametrize("n", [1, 3, 5])
def test_attentivemix_lam_is_true_share_binary_and_targets_sum_to_one(n: int) -> None:
    x, y = batch(n)
    feats = torch.randn(n, 16, 7, 7, generator=gen(n))
    for seed in range(3):
        draw = sample_attentivemix(feats, gen=gen(seed), alpha=2.0)
        x_mixed, lam, mask = attentivemix(x, draw, "sample")
        assert torch.equal(attentivemix(x, draw)[1], lam[0])  # "first": sample 0's for the batch
        assert lam.shape == (n,) and lam.dtype == torch.float32 and mask.shape == (n, 1, 64, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        moved = draw.perm != torch.arange(n)
        assert torch.equal(share_of_x(x, x_mixed)[moved], lam[moved])
        assert torch.equal(x_mixed[~moved], x[~moved])
        target = soft_target(y, y[draw.perm], lam, 4)
        assert torch.allclose(target.sum(1), torch.ones(n))


def test_attentivemix_sampler_is_seeded() -> None:
    feats = torch.randn(5, 4, 7, 7, generator=gen(0))
    a = sample_attentivemix(feats, gen=gen(3), alpha=2.0)
    b = sample_attentivemix(feats, gen=gen(3), alpha=2.0)
    assert torch.equal(a.lam, b.lam) and torch.equal(a.perm, b.perm)
    assert 0 < a.lam.item() < 1 and sorted(a.perm.tolist()) == list(range(5))


def test_attentivemix_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="0.0"):
        AttentiveMix(alpha=0.0)
    with pytest.raises(ValueError, match="teacher_weights"):
        AttentiveMix(teacher_weights=3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="setup"):
        AttentiveMix().mix(*batch(2), gen=gen())


# ---------------------------------------------------------------------------- teachers


def _fake_vanilla_run(runs: Path, seed: int, *, finished: bool = True) -> torch.nn.Module:
    run = runs / f"vanilla-resnet18-s{seed}"
    run.mkdir(parents=True)
    model = tiny_model(seed)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial eval BN
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.weight.data.uniform_(0.5, 1.5)
    cfg = RunConfig(method="vanilla", profile="test", seed=seed)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "identity": {}, "rows": [], "epoch": 1},
               run / "checkpoint.pt")
    if finished:
        (run / "metrics.csv").write_text("epoch,top1\n1,1.0\n")
        (run / "summary.json").write_text(json.dumps({"epochs": 1, "top1": 1.0}))
    return model.eval()


def _setup(runs: Path, seed: int) -> AttentiveMix:
    method = get_method("attentivemix")
    cfg = RunConfig(method="attentivemix", profile="test", seed=seed)
    method.setup(tiny_model(), cfg=cfg, needed=needed_run(cfg, runs))
    return method


def test_missing_teacher_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    _fake_vanilla_run(tmp_path, 0, finished=False)  # an unfinished run is no teacher
    with pytest.raises(FileNotFoundError) as err:
        _setup(tmp_path, 0)
    for hint in (TEACHER_ENV, "resnet18-f37072fd.pth", "make sweep METHODS=vanilla", "vanilla-resnet18"):
        assert hint in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        get_method("attentivemix", teacher_weights=str(tmp_path / "nope.pth")).setup(None, cfg=None)


def test_teacher_from_own_vanilla_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    _fake_vanilla_run(tmp_path, 0)
    want = _fake_vanilla_run(tmp_path, 2)
    _fake_vanilla_run(tmp_path, 3, finished=False)
    method = _setup(tmp_path, 2)  # the same seed wins
    assert method.teacher_label == "own Vanilla run vanilla-resnet18-s2"
    assert method.summarize([]) == {"teacher": "own Vanilla run vanilla-resnet18-s2"}
    x, y = batch(3)
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(want.forward_stages(x)[-1], 7)  # (3, 64, 7, 7)
    assert torch.allclose(method.teacher(x), expected, atol=1e-6)
    assert _setup(tmp_path, 3).teacher_label == "own Vanilla run vanilla-resnet18-s0"  # s3 unfinished: fallback
    assert not method.teacher.net.training
    # one training step on CPU, teacher outside optimiser and checkpoint
    model = tiny_model()
    out = method.training_step(model, x, y, ctx(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.fc.weight.grad is not None
    assert all(p.grad is None for p in method.teacher.net.parameters())
    teacher_ids = {id(p) for p in method.teacher.net.parameters()}
    groups = method.param_groups(model, lr=0.1, min_lr=0.0)
    assert not teacher_ids & {id(p) for g in groups for p in g["params"]}
    assert len(method.state_dict()) == 0
    resumed = _setup(tmp_path, 2)
    resumed.load_state_dict(method.state_dict())  # resume after setup works


def test_teacher_from_imagenet_file_via_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-fake.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setenv(TEACHER_ENV, str(path))
    _fake_vanilla_run(tmp_path, 0)  # the file takes precedence over a Vanilla run
    method = _setup(tmp_path, 0)
    assert method.teacher_label.startswith("ImageNet R-18") and method.summarize([])["teacher"] == method.teacher_label
    assert method.teacher.net.training  # BN on batch statistics, as the reference
    x, y = batch(2)
    net.train()
    with torch.no_grad():
        up = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
        h = net.maxpool(net.relu(net.bn1(net.conv1(up))))
        expected = net.layer4(net.layer3(net.layer2(net.layer1(h))))  # (2, 512, 7, 7)
    feats = method.teacher(x)
    assert feats.shape == (2, 512, 7, 7) and torch.allclose(feats, expected, atol=1e-5)
    mixed = method.mix(x, y, gen=gen(0))
    assert mixed.lam.shape == () and len(method.state_dict()) == 0  # lam_rule "first": one lam for the batch
    # the setting works too, and wins over the env var
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "missing.pth"))
    by_setting = get_method("attentivemix", teacher_weights=str(path))
    by_setting.setup(None, cfg=None)
    assert by_setting.teacher_label.startswith("ImageNet R-18")


def test_attentivemix_registry_entry() -> None:
    spec = REGISTRY["attentivemix"]
    assert spec.label == "AttentiveMix+" and spec.defaults == {"alpha": 2.0, "teacher_weights": None, "lam_rule": "first",
                                                      **LOSS_DEFAULTS}
    assert isinstance(get_method("attentivemix"), AttentiveMix)
