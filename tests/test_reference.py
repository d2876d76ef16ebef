"""RunConfig.reference: what "published" (the OpenMixup code that published each Tiny-ImageNet cell) and "head"
(OpenMixup's 2025 code) resolve to, the bilinear crop, PuzzleMix at 16 x 16 blocks, the partner's self-pair rate,
the MixBlock's q/k BatchNorm and earlier runs keeping their identity (docs/publication.md); rank 0's BN buffers
under DDP are in test_distributed.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import R18, RX50  # tests/helpers.py, on sys.path
from mixnb.config import RunConfig
from mixnb.data import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, resized_crop, sample_crop_boxes
from mixnb.mixups import REGISTRY, get_method, get_spec
from mixnb.mixups._helpers import random_partner
from mixnb.mixups.puzzlemix import CIFAR_MEAN, CIFAR_STD, PuzzleMixArgs, PuzzleMixDraw, puzzle_mask, puzzlemix
from mixnb.runs import RunConflict, check_identity, complete_identity

DATASET = {"root": None, "manifest_key": "test"}

# Written out, not read from the registry: (method, backbone) -> crop under "published" (HEAD: bicubic everywhere)
PUBLISHED_CROP = {
    **{(m, b): "bilinear" for m in ("vanilla", "mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix",
                                    "automix", "samix") for b in (R18, RX50)},
    ("puzzlemix", R18): "bilinear", ("puzzlemix", RX50): "bicubic",  # RX-50 published 2022-03-25: undetermined, picked
    ("attentivemix", R18): "bicubic", ("attentivemix", RX50): "bicubic",  # 2022-03-25: undetermined, picked
    ("smoothmix", R18): "bicubic", ("smoothmix", RX50): "bicubic", ("gridmix", R18): "bicubic",
    ("gridmix", RX50): "bicubic",
}
# method -> {setting: (published, head)}
METHOD_SETTINGS = {
    "cutmix": {"partner_tries": (1, 11)},
    "fmix": {"partner_tries": (1, 11)},
    "puzzlemix": {"block_nums": ((2, 4, 8, 16), (2, 4, 8)), "t_size": (4, -1), "mean": (CIFAR_MEAN, IMAGENET_MEAN),
                  "std": (CIFAR_STD, IMAGENET_STD)},
    "resizemix": {"use_alpha": (False, True)},
    "automix": {"att_norm": (True, False)},
    "samix": {"att_norm": (True, False)},
    "attentivemix": {"lam_rule": ("first", "first")},  # both codes take sample 0's lam
}


# ---------------------------------------------------------------------------------------------
# What each reference resolves to


@pytest.mark.parametrize("method, backbone", sorted(PUBLISHED_CROP))
def test_each_setting_resolves_per_reference(method, backbone):
    published = RunConfig(method=method, backbone=backbone)
    head = RunConfig(method=method, backbone=backbone, reference="head")
    assert published.reference == "published" and published.crop == PUBLISHED_CROP[method, backbone]
    assert head.crop == "bicubic"
    for name, (pub, hd) in METHOD_SETTINGS.get(method, {}).items():
        assert published.maths()["method_args"][name] == json.loads(json.dumps(pub)), name
        assert head.maths()["method_args"][name] == json.loads(json.dumps(hd)), name
        assert _value(_built(published), name) == pub and _value(_built(head), name) == hd
    for cfg in (published, head):
        groups = 2 if method in ("automix", "samix") and backbone == RX50 else 1
        assert cfg.batchnorm_groups == groups
        # one group: no choice, not in the identity; two: rank 0's (both codes), recorded
        assert cfg.maths().get("running_stats") == ("first" if groups > 1 else None)
        assert cfg.maths()["crop_interpolation"] == cfg.crop
    same = all(p == h for p, h in METHOD_SETTINGS.get(method, {}).values()) and published.crop == "bicubic"
    assert (published.run_name() == head.run_name()) == same  # new names exactly where the maths differ


def _built(cfg: RunConfig):
    return get_method(cfg.method, **cfg.method_args)


def _value(method, name: str):
    """A built method's setting (PuzzleMix keeps its solver settings in ``args``)."""
    return getattr(method.args if name in ("t_size", "mean", "std") else method, name)


def test_every_published_cell_names_its_code():
    for name, spec in REGISTRY.items():
        for backbone in spec.published if spec.reproduced else ():
            code = spec.code[backbone]
            assert len(code.commit) == 7 and code.date.startswith("2022-") and code.crop in ("bilinear", "bicubic")
            assert bool(code.undetermined) == (code.commit == "7bf8bcf"), (name, backbone)


# ---------------------------------------------------------------------------------------------
# The bilinear crop


def test_bilinear_crop_equals_pil_and_the_loader_uses_it():
    """PIL's BILINEAR resize of each crop (torchvision's RandomResizedCrop default on PIL images), exactly."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (200, 3, 64, 64), generator=gen, dtype=torch.uint8)
    boxes = sample_crop_boxes(len(x), 64, 64, gen=gen)
    pil = []
    for xi, (top, left, h, w) in zip(x, boxes.tolist()):
        im = Image.fromarray(xi.permute(1, 2, 0).numpy()).crop((left, top, left + w, top + h))
        pil.append(torch.tensor(np.asarray(im.resize((64, 64), Image.BILINEAR))).permute(2, 0, 1))
    assert torch.equal(resized_crop(x, boxes, 64, "bilinear"), torch.stack(pil).float())
    assert not torch.equal(resized_crop(x, boxes, 64, "bilinear"), resized_crop(x, boxes, 64))

    images, labels = x[:20].permute(0, 2, 3, 1).contiguous(), torch.arange(20)
    batches = {i: next(iter(DeviceLoader(images, labels, batch_size=10, device="cpu", train=True, interpolation=i,
                                         gen=torch.Generator().manual_seed(0))))[0] for i in ("bicubic", "bilinear")}
    assert not torch.equal(batches["bicubic"], batches["bilinear"])  # same draws, other resampling
    with pytest.raises(ValueError, match="interpolation"):
        DeviceLoader(images, labels, batch_size=10, device="cpu", train=False, interpolation="nearest")


# ---------------------------------------------------------------------------------------------
# PuzzleMix with the published settings: a 16 x 16-block case by hand


def test_puzzlemix_published_settings_on_16x16_blocks_by_hand():
    """B = 16 (4-px blocks), beta 1.2, gamma 0.5, eta 0.2, 3 labels, t_size 4, CIFAR stats; lam 0.5, perm [1, 0].
    x0 is the constant 1.0 (normalised), x1 the constant -1.0; x0's saliency is all in block (5, 7), x1's in (10, 2).

    Edges: beta' = 1.2 / 16 / 16 = 0.0046875; between blocks showing different images the un-normalised gap is
    2 * mean(std) = 0.40180 (CIFAR; ImageNet: 0.452), so each edge weighs beta' (1 + 0.5 * 0.4018), as gco's
    integer trunc(1000 * 16^2 * 0.0046875 * 1.2009) = trunc(1441.08) = 1441 (ImageNet: 1200 * 1.226 -> 1471).
    Unaries of sample 0 (the label-independent data-term halves aside): background blocks pay only the
    binomial prior eta / 256 * -log(0.25, 0.5, 0.25) = (1.083, 0.541, 1.083) e-3, so "half" (label 1);
    block (5, 7) pays 0 + 1.1e-3 for x, 0.5 for half, 1 for the partner: x (its 4 half-edges cost
    4 * 0.0056 / 4 < 0.5); block (10, 2) pays 1 for x, 0.5, 0 for the partner: the partner. Sample 1 mirrors it.
    Transport: every block's own position costs 0 (or less), so nothing moves."""
    x = torch.cat([torch.ones(1, 3, 64, 64), -torch.ones(1, 3, 64, 64)])
    sal = torch.zeros(2, 64, 64)
    sal[0, 20:24, 28:32] = 1.0  # block (5, 7)
    sal[1, 40:44, 8:12] = 1.0  # block (10, 2)
    draw = PuzzleMixDraw(torch.tensor(0.5), torch.tensor([1, 0]), 16)
    args = get_method("puzzlemix").args  # the registry's published settings
    assert (args.t_size, args.mean, args.std) == (4, CIFAR_MEAN, CIFAR_STD)

    mask = puzzle_mask(x, sal, draw, args)[:, 0]  # (2, 16, 16)
    expect = torch.full((2, 16, 16), 0.5)
    expect[0, 5, 7], expect[0, 10, 2], expect[1, 10, 2], expect[1, 5, 7] = 1.0, 0.0, 1.0, 0.0
    assert torch.equal(mask, expect)

    from mixnb.mixups import _puzzlemix_ops as ops

    def weights(stats: tuple) -> set[int]:
        mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
        terms = ops.cut_terms(x, draw.perm, ops.block_saliency(sal, 4), draw.lam, beta=1.2, gamma=0.5, eta=0.2,
                              neigh_size=4, n_labels=3, mean=mean, std=std)
        return set(terms.cost_v.flatten().tolist()) | set(terms.cost_h.flatten().tolist())

    assert weights((CIFAR_MEAN, CIFAR_STD)) == {1441} and weights((IMAGENET_MEAN, IMAGENET_STD)) == {1471}

    x_mixed, lam, full = puzzlemix(x, sal, draw, args)
    assert lam.tolist() == [0.5, 0.5] and torch.equal(full[:, 0, ::4, ::4], expect)
    assert x_mixed[0, :, 20:24, 28:32].eq(1).all() and x_mixed[0, :, 40:44, 8:12].eq(-1).all()
    assert x_mixed[1, :, 40:44, 8:12].eq(-1).all() and x_mixed[1, :, 20:24, 28:32].eq(1).all()
    background = torch.ones(64, 64, dtype=torch.bool)
    background[20:24, 28:32] = background[40:44, 8:12] = False
    assert x_mixed[:, :, background].eq(0).all()  # 0.5 * 1 + 0.5 * -1


def test_puzzlemix_published_transport_cells_are_4px_at_every_block_count():
    """t_size 4 transports on a 16 x 16 grid whatever the cut's block count; HEAD's -1 on the cut's blocks."""
    from mixnb.mixups.puzzlemix import _block_sizes

    x = torch.zeros(1, 3, 64, 64)
    for block_num in (2, 4, 8, 16):
        assert _block_sizes(x, block_num, PuzzleMixArgs(t_size=4))[2] == 4
        assert _block_sizes(x, block_num, PuzzleMixArgs(t_size=-1))[2] == 64 // block_num


# ---------------------------------------------------------------------------------------------
# CutMix/FMix partners: the self-pair rate per reference


@pytest.mark.parametrize("method", ["cutmix", "fmix"])
def test_partner_self_pair_rate_per_reference(method):
    """Batches of 100 holding a self-pair: 1 - D_100 / 100! = 0.632 with a plain permutation (published), that to
    the 11th power, 0.64%, with HEAD's up-to-11 draws; 4000 seeded batches, within 4 sd."""
    n, batches = 100, 4000
    p_fixed = 1 - sum((-1) ** k / math.factorial(k) for k in range(n + 1))
    for reference, p in (("published", p_fixed), ("head", p_fixed**11)):
        tries = _built(RunConfig(method=method, reference=reference)).partner_tries
        g, ident = torch.Generator().manual_seed(0), torch.arange(n)
        count = sum(bool((random_partner(n, gen=g, tries=tries) == ident).any()) for _ in range(batches))
        assert abs(count / batches - p) < 4 * math.sqrt(p * (1 - p) / batches) + 1 / batches, (reference, count)


# ---------------------------------------------------------------------------------------------
# The MixBlock's q/k BatchNorm


_QK = {  # (method, att_norm) -> the q/k parameters (in_channels 256: R-18 at width 64)
    ("automix", True): {"query.0.weight": (128, 256, 1, 1), "query.1.weight": (128,), "query.1.bias": (128,)},
    ("automix", False): {"query.weight": (128, 256, 1, 1), "query.bias": (128,)},
    ("samix", True): {"query.0.weight": (128, 512, 1, 1), "query.1.weight": (128,), "query.1.bias": (128,),
                      "key.0.weight": (128, 512, 1, 1), "key.1.weight": (128,), "key.1.bias": (128,)},
    ("samix", False): {"query.weight": (128, 512, 1, 1), "query.bias": (128,), "key.weight": (128, 512, 1, 1),
                       "key.bias": (128,)},
}


@pytest.mark.parametrize("method", ["automix", "samix"])
@pytest.mark.parametrize("reference", ["published", "head"])
def test_mixblock_parameters_per_reference(method, reference):
    cfg = RunConfig(method=method, reference=reference)
    block = _built(cfg).build_mix_block(256, cfg)
    qk = {k: tuple(v.shape) for k, v in block.named_parameters() if k.startswith(("query", "key"))}
    assert qk == _QK[method, reference == "published"]
    value = {k: tuple(v.shape) for k, v in block.named_parameters() if k.startswith("value")}
    assert value == ({"value.weight": (1, 256, 1, 1), "value.bias": (1,)} if method == "automix" else
                     {"value.0.weight": (128, 256, 1, 1), "value.1.weight": (128,), "value.1.bias": (128,),
                      "value.3.weight": (1, 128, 1, 1)})
    if reference == "published":  # train mode: q (and k) normalised over the batch, BN at weight 1, bias 0
        feat = torch.randn(6, 256, 4, 4)
        q = block.query(torch.cat([feat, feat], 1) if method == "samix" else feat)
        assert q.mean((0, 2, 3)).abs().max() < 1e-5 and (q.var((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
        m = block(feat, torch.tensor(0.3), torch.tensor([1, 2, 3, 4, 5, 0]), (16, 16))
        assert m.shape == (6, 1, 16, 16) and ((m > 0) & (m < 1)).all()


def test_mixblock_bn_is_grouped_like_the_method_s_other_bns():
    """RX-50 AutoMix/SAMix (bn_groups 2): the q/k BN becomes a GroupedBatchNorm2d with the run's running_stats."""
    from mixnb.models.groupbn import GroupedBatchNorm2d
    from mixnb.train import build_parts

    for method in ("automix", "samix"):
        cfg = RunConfig(method=method, backbone=RX50, profile="test")
        _, mixer, _, _ = build_parts(cfg, torch.device("cpu"), num_classes=4, run_dir=None)
        norms = [m for name, m in mixer.mix_block.named_modules() if name in ("query.1", "key.1")]
        assert len(norms) == (1 if method == "automix" else 2)
        assert all(type(m) is GroupedBatchNorm2d and m.groups == 2 and m.running_stats == "first" for m in norms)


# ---------------------------------------------------------------------------------------------
# Runs made before the reference keep their identity


def _old_record(cfg: RunConfig) -> dict:
    """The identity mixnb wrote before this change: no crop, running_stats or new method settings."""
    identity = json.loads(json.dumps(cfg.identity(torch.device("cpu"), DATASET)))
    identity.pop("crop_interpolation")
    identity.pop("running_stats", None)
    for name in METHOD_SETTINGS.get(cfg.method, {}):
        if name not in ("block_nums", "t_size", "use_alpha"):  # recorded before: they were settings already
            identity["method_args"].pop(name)
    return identity


@pytest.mark.parametrize("method, backbone, old_args", [
    ("vanilla", R18, {}), ("cutmix", R18, {}), ("fmix", RX50, {}), ("puzzlemix", RX50, {}),
    ("resizemix", R18, {}), ("automix", RX50, {}), ("samix", R18, {}), ("attentivemix", R18, {"lam_rule": "sample"}),
    ("smoothmix", R18, {}),
])
def test_an_earlier_run_keeps_its_identity(tmp_path, method, backbone, old_args):
    """Earlier runs ran HEAD's code (bicubic, 11 partner draws, no att_norm, ImageNet stats, {2, 4, 8}, t_size -1,
    use_alpha), per-sample AttentiveMix+ lam and the groups' mean of BN statistics: their records complete to
    exactly that configuration, which ``reference="head"`` (plus those two settings) names."""
    stats = {"running_stats": "mean"} if method in ("automix", "samix") and backbone == RX50 else {}
    then = RunConfig(method=method, backbone=backbone, reference="head", method_args=old_args, **stats)
    old = _old_record(then)
    assert complete_identity(old) == json.loads(json.dumps(then.identity(torch.device("cpu"), DATASET)))
    (tmp_path / "params.json").write_text(json.dumps({"identity": old}))
    check_identity(tmp_path, then.identity(torch.device("cpu"), DATASET))  # the same run: no conflict
    now = RunConfig(method=method, backbone=backbone)
    if now.maths() != then.maths():
        with pytest.raises(RunConflict):
            check_identity(tmp_path, now.identity(torch.device("cpu"), DATASET))
    else:
        check_identity(tmp_path, now.identity(torch.device("cpu"), DATASET))
    assert (now.maths() == then.maths()) == (method == "smoothmix")  # only SmoothMix/GridMix ran their published code


def test_multimode_keeps_head_settings_for_its_modes():
    """mixup+cutmix has no published number: its CutMix keeps HEAD's no-repeat partner, as its earlier runs."""
    method = get_method("mixup+cutmix")
    assert [type(m).__name__ for m in method.modes] == ["MixUp", "CutMix"] and method.modes[1].partner_tries == 11
    assert get_spec("cutmix").head == {"partner_tries": 11}


# ---------------------------------------------------------------------------------------------
# The report names the code each cell follows


def test_report_names_the_code_of_each_cell():
    import pandas as pd

    from mixnb.report import benchmark_table, code_followed, table_notes_html

    def identity(**kw) -> dict:
        return json.loads(json.dumps(RunConfig(**kw).identity(torch.device("cpu"), DATASET)))

    assert code_followed("vanilla", R18, identity(method="vanilla")) == "e81ed85 (2022-03-10)"
    assert code_followed("puzzlemix", RX50, identity(method="puzzlemix", backbone=RX50)) == "7bf8bcf (2022-03-25) ‡"
    assert code_followed("cutmix", R18, identity(method="cutmix", reference="head")) == "HEAD 37e1372 (2025-10-15)"
    assert code_followed("smoothmix", RX50, identity(method="smoothmix", backbone=RX50)) == "e014301 (2022-09-12)"
    old = complete_identity(_old_record(RunConfig(method="attentivemix", reference="head",
                                                  method_args={"lam_rule": "sample"})))
    assert code_followed("attentivemix", R18, old) == "neither: lam_rule sample"
    rows = []
    for reference in ("published", "head"):
        cfg = RunConfig(method="fmix", reference=reference)
        key = json.dumps({k: v for k, v in identity(method="fmix", reference=reference).items() if k != "seed"},
                         sort_keys=True)
        rows.append({"method": "fmix", "backbone": R18, "settings": reference, "alpha": 1.0, "group_key": key,
                     "config_key": key, "median_top1": 60.0, "readout_top1": 60.0, "readout": "online",
                     "run": cfg.run_name()})
    table = benchmark_table(pd.DataFrame(rows))
    assert table[("R-18", "code")].tolist() == ["HEAD 37e1372 (2025-10-15)", "e81ed85 (2022-03-10)"]
    assert "AttentiveMix+: published by R-18 7bf8bcf (2022-03-25, crop bicubic, ‡ crop undetermined" in \
        table_notes_html(["attentivemix"]) and "teacher" in table_notes_html(["attentivemix"])
