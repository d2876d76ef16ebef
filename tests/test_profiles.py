"""Profiles: one record per protocol (mixnb.profiles), the CIFAR pipeline's padded crop, a cifar100 run end to end, and
the report's OpenMixup column following the profile's published table."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from mixnb.analysis.settings import PROFILE_SETTINGS
from mixnb.config import RunConfig
from mixnb.data import DatasetError
from mixnb.data.replicas import write_replica
from mixnb.data.loader import (AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, batch_flip_lr, normalize,
                               padded_crop, sample_crop_offsets)
from mixnb.mixups import CIFAR100, PUBLISHED, REGISTRY, TINY_IMAGENET, nearest_budget, published_top1
from mixnb.mixups.puzzlemix import CIFAR_MEAN, CIFAR_STD
from mixnb.profiles import PIPELINES, PROFILES, Profile
from mixnb.report import (benchmark_table, compares_with_openmixup, header_html, load_runs, table_intro_html,
                          table_notes_html, tidy_table)
from mixnb.sweep import expand
from test_report import TINY_DATA, write_run

CPU = torch.device("cpu")
SAMPLE_DATA = {"content_key": "c0", "classes": 10, "train_images": 1000, "val_images": 300}


# ----------------------------------------------------------------------------- the record
def test_every_profile_has_every_fact():
    for name, p in PROFILES.items():
        assert isinstance(p, Profile) and p.name == name
        for f in dataclasses.fields(Profile):
            assert hasattr(p, f.name), (name, f.name)
        assert p.pipeline in PIPELINES and all(a in AUGMENTS for a in p.augment)
        assert p.published is None or p.published in PUBLISHED
        assert (p.sample is None) == (p.classes is not None)  # real data names its classes, generated sets their spec
        assert name in PROFILE_SETTINGS  # the analysis settings come from the record
        cfg = RunConfig(profile=name)
        assert (cfg.num_epochs, cfg.model_width, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == \
            (p.epochs, p.width, p.batch_size, p.lr, p.momentum, p.weight_decay)
        assert [j.config.backbone for j in expand(name, ["vanilla"])] == list(p.backbones)


# The identities of existing profiles, written out: a change here renames or orphans every run on disk.
VANILLA_MATHS = {"method": "vanilla", "method_args": {}, "backbone": "resnet18", "seed": 0, "init": "paper",
                 "batch_size": 100, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.0001, "min_lr": 0.0,
                 "sync_bn": False, "bn_groups": 1, "crop_interpolation": "bilinear"}


@pytest.mark.parametrize("profile, epochs, width", [("sample", 3, 8), ("test", 2, 8), ("tiny-imagenet", 400, 64)])
def test_existing_profiles_keep_their_identity(profile, epochs, width):
    cfg = RunConfig(profile=profile, device="cpu", precision="fp32")
    assert cfg.identity(CPU, SAMPLE_DATA) == {**VANILLA_MATHS, "epochs": epochs, "width": width, "precision": "fp32",
                                              "device_type": "cpu", "dataset": SAMPLE_DATA}
    assert RunConfig(profile=profile).run_name() == "vanilla-resnet18-s0"
    cutmix = RunConfig(method="cutmix", backbone="resnext50", profile=profile, seed=1, device="cpu")
    assert cutmix.method_args == {} and cutmix.full_method_args()["alpha"] == 1.0  # the registry's, Tiny's
    assert cutmix.run_name() == "cutmix-resnext50-s1"
    automix = RunConfig(method="automix", backbone="resnext50", profile=profile)
    assert automix.batchnorm_groups == 2 and automix.maths()["running_stats"] == "first"  # Tiny's 2 GPUs x 50


def test_cifar100_takes_openmixups_settings():
    cfg = RunConfig(method="fmix", backbone="resnext50", profile="cifar100")
    maths = cfg.maths()
    assert (maths["lr"], maths["weight_decay"], maths["batch_size"], maths["epochs"]) == (0.1, 1e-4, 100, 400)
    assert maths["pipeline"] == "crop-pad" and cfg.augment == ("random_crop_pad", "flip_lr")
    assert maths["method_args"]["alpha"] == 0.2 and maths["method_args"]["size"] == [32, 32]  # the table's α; 32 px
    assert cfg.run_name() == "fmix-resnext50-s0"  # the profile's values are its defaults: no tokens
    assert RunConfig(method="fmix", profile="cifar100", method_args={"alpha": 1.0}).run_name() == "fmix-resnet18-s0-a1"
    assert RunConfig(method="automix", backbone="resnext50", profile="cifar100").batchnorm_groups == 1  # 1 GPU x 100
    assert RunConfig(profile="cifar100", lr=0.2).lr == 0.2  # an explicit value wins
    assert {m: CIFAR100.rows[m].alpha for m in ("cutmix", "manifoldmix", "saliencymix")} == \
        {"cutmix": 0.2, "manifoldmix": 2.0, "saliencymix": 0.2}
    im = RunConfig(profile="imagenet64")
    assert (im.num_epochs, im.lr, im.augment, "pipeline" in im.maths()) == (40, 0.2, PIPELINES["rrc"], False)


# ----------------------------------------------------------------------------- the padded crop
def _reference(x: torch.Tensor, offsets: torch.Tensor, mode: str) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4, padding_mode=mode) with the given offsets, image by image."""
    return torch.stack([v2.functional.crop(v2.functional.pad(img, [4], padding_mode=mode), int(t), int(l), 32, 32)
                        for img, (t, l) in zip(x, offsets.tolist())])


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_padded_crop_equals_torchvision_random_crop(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    offsets = sample_crop_offsets(64, 4, gen=gen)
    assert offsets.min() >= 0 and offsets.max() <= 8 and len(set(map(tuple, offsets.tolist()))) > 30
    out = padded_crop(x, offsets, 32, 4, mode)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, _reference(x, offsets, mode))


def test_padded_crop_offsets_place_the_padding():
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = padded_crop(x, torch.tensor([[0, 0], [8, 8]]), 32, 4, "constant")
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, :4] == 0).all() and (out[0, :, 4:, 4:] == 200).all()
    assert (out[1, :, -4:] == 0).all() and (out[1, :, :, -4:] == 0).all() and (out[1, :, :28, :28] == 200).all()
    assert torch.equal(padded_crop(x, torch.tensor([[4, 4], [4, 4]]), 32, 4, "constant"), x)  # the centre: the image
    ramp = torch.arange(32, dtype=torch.uint8).expand(1, 3, 32, 32)  # column index as the value
    assert padded_crop(ramp, torch.tensor([[4, 0]]), 32, 4, "reflect")[0, 0, 0, :6].tolist() == [4, 3, 2, 1, 0, 1]


def test_crop_pad_pipeline_flips_on_the_device_loader():
    x = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(10), batch_size=10, device="cpu", train=True, augment=PIPELINES["crop-pad"],
                          gen=torch.Generator().manual_seed(1), mean=(0, 0, 0), std=(1 / 255,) * 3)
    batch, y = next(iter(loader))
    gen = torch.Generator().manual_seed(1)  # replay: permutation, offsets, flips
    perm = torch.randperm(10, generator=gen)
    crop = padded_crop(x.permute(0, 3, 1, 2)[perm], sample_crop_offsets(10, 4, gen=gen), 32, 4, "reflect")
    assert torch.equal(y, perm) and torch.equal(batch, batch_flip_lr(crop, gen=gen).float())


# ----------------------------------------------------------------------------- a cifar100 run
@pytest.mark.slow
def test_cifar100_trains_one_epoch_on_a_cifar_replica(tmp_path):
    from mixnb.train import fit

    folder = write_replica("cifar-100-python", tmp_path / "cifar", num_classes=5, train_per_class=40, val_per_class=20)
    cfg = RunConfig(method="cutmix", profile="cifar100", data=str(folder), epochs=1, width=4, device="cpu",
                    eval_batch_size=100)
    summary = fit(cfg, tmp_path / "run", progress="none")
    identity = json.loads((tmp_path / "run" / "params.json").read_text())["identity"]
    assert summary["epochs"] == 1 and identity["pipeline"] == "crop-pad" and identity["dataset"]["classes"] == 100
    assert identity["lr"] == 0.1 and identity["method_args"]["alpha"] == 0.2 and np.isfinite(summary["median_top1"])
    assert identity["normalisation"] == [list(CIFAR_MEAN), list(CIFAR_STD)]  # OpenMixup's CIFAR-100 configs' statistics
    from mixnb.analysis import load_run  # the analysis normalises as the run trained

    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_run(tmp_path / "run", "cpu").normalise(x), normalize(x * 255, CIFAR_MEAN, CIFAR_STD))


def test_only_a_profile_off_imagenets_statistics_records_its_normalisation():
    """ImageNet's mean/std is every earlier run's: recorded only where it differs, so no earlier identity changes."""
    assert RunConfig(profile="cifar100").normalisation == (CIFAR_MEAN, CIFAR_STD)
    assert RunConfig(profile="cifar100").maths()["normalisation"] == [list(CIFAR_MEAN), list(CIFAR_STD)]
    for profile in ("tiny-imagenet", "imagenet64", "sample"):
        cfg = RunConfig(profile=profile)
        assert cfg.normalisation == (IMAGENET_MEAN, IMAGENET_STD) and "normalisation" not in cfg.maths()


@pytest.mark.parametrize("form, profile, reads_it", [("cifar-100-python", "tiny-imagenet", "cifar100"),
                                                     ("zip", "cifar100", "tiny-imagenet"),
                                                     ("imagenet64-npz", "tiny-imagenet", "imagenet64")])
def test_a_profile_refuses_another_profiles_data_naming_that_profile(tmp_path, form, profile, reads_it):
    from mixnb.runs import load_data

    folder = write_replica(form, tmp_path / form, num_classes=2, train_per_class=5, val_per_class=1)
    with pytest.raises(DatasetError, match=rf"profile {profile} runs on .* holds .*: use PROFILE={reads_it} for it"):
        load_data(RunConfig(profile=profile, data=str(folder)))


# ----------------------------------------------------------------------------- the published tables
def test_published_tables():
    assert nearest_budget(CIFAR100, 1) == 200 and nearest_budget(CIFAR100, 1000) == 800  # a tie: the shorter
    assert nearest_budget(CIFAR100, 1001) == 1200 and nearest_budget(TINY_IMAGENET, 1) == 400
    assert published_top1(CIFAR100, "samix", "resnext50", 800) == 84.42
    assert published_top1(CIFAR100, "vanilla", "resnet18", 200) == 76.42
    assert CIFAR100.rows["comixup"].mark == "📖" and not CIFAR100.rows["comixup"].implemented
    assert "comixup" not in REGISTRY  # listed, never run
    assert {m: published_top1(TINY_IMAGENET, m, "resnet18", 400) for m in ("vanilla", "cutmix")} == \
        {m: REGISTRY[m].published["resnet18"] for m in ("vanilla", "cutmix")}  # Tiny's numbers stay the registry's


CIFAR_DATA = {**TINY_DATA, "classes": 100, "train_images": 50_000, "val_images": 10_000, "form": "cifar-100-python"}


def test_report_compares_cifar100_runs_with_cifar100_numbers(tmp_path):
    write_run(tmp_path, [70.0] * 4, profile="cifar100", dataset=CIFAR_DATA, epochs=4)
    write_run(tmp_path, [72.0] * 4, method="cutmix", profile="cifar100", dataset=CIFAR_DATA, epochs=4)
    s = load_runs("cifar100", tmp_path).summaries
    assert compares_with_openmixup(s) and not s["on_protocol"].any()  # 4 epochs: beside 200's, no Δ
    table = benchmark_table(s, reference=compares_with_openmixup(s))
    assert table.loc["Vanilla (epochs 4)", ("R-18", "OpenMixup 200 ep")] == "76.42"  # CIFAR-100's, not Tiny's 61.68
    assert table.loc["CutMix (epochs 4)", ("R-18", "OpenMixup 200 ep")] == "79.45"
    assert table.loc["CutMix (epochs 4)", ("R-18", "Δ OpenMixup")] == "–"
    assert table.loc["CutMix (epochs 4)", ("R-18", "α")] == "0.2"  # the CIFAR-100 table's α is the profile's default
    assert tidy_table(s).set_index("method").loc["CutMix", "openmixup"] == 79.45
    assert "OpenMixup 200 ep: CIFAR-100's published numbers at 200 epochs" in table_intro_html(s, "cifar100")
    header = header_html(load_runs("cifar100", tmp_path), "cifar100")
    assert "Protocol: OpenMixup&#x27;s CIFAR-100 benchmark (SGD lr 0.1" in header and "Tiny-ImageNet" not in header
    assert "epochs 4 in 2 of 2 runs (protocol: 200/400/800/1200)" in header
    assert "(read as <code>cifar-100-python</code>" in header  # the form the runs read
    assert not any(col[1] == "code" for col in table.columns)  # Tiny-ImageNet's code provenance does not apply
    notes = table_notes_html(["vanilla", "cutmix"], s)
    assert "Settings: OpenMixup's CIFAR-100 configs" in notes and "e81ed85" not in notes

    write_run(tmp_path / "long", [75.0] * 400, profile="cifar100", dataset=CIFAR_DATA)
    s = load_runs("cifar100", tmp_path / "long").summaries
    assert s["on_protocol"].all() and "Off the protocol" not in header_html(load_runs("cifar100", tmp_path / "long"),
                                                                             "cifar100")
    table = benchmark_table(s, reference=True)
    assert table.loc["Vanilla", ("R-18", "OpenMixup 400 ep")] == "77.73"
    assert table.loc["Vanilla", ("R-18", "Δ OpenMixup")] == "-2.73"


def test_report_has_no_openmixup_column_for_imagenet64(tmp_path):
    data = {**TINY_DATA, "classes": 1000, "train_images": 1_281_167, "val_images": 50_000, "form": "imagenet64-npz"}
    write_run(tmp_path, [50.0] * 4, profile="imagenet64", dataset=data, epochs=4)
    s = load_runs("imagenet64", tmp_path).summaries
    assert not compares_with_openmixup(s)
    assert "No OpenMixup column: OpenMixup published no mixup table on Downsampled ImageNet" in \
        table_intro_html(s, "imagenet64")
    header = header_html(load_runs("imagenet64", tmp_path), "imagenet64")
    assert "Protocol: Downsampled ImageNet 64x64 through" in header and "epochs 4 in 1 of 1 runs (protocol: 40)" in header
    assert "Downsampled ImageNet 64x64 (1000 classes" in header_html(load_runs("imagenet64", tmp_path / "none"),
                                                                      "imagenet64")  # no runs yet: the profile's
