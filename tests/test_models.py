"""Backbones: parameter counts pinned at 200 classes, shapes, init, and the feature-mix hook."""

import pytest
import torch

from mixnb.models import FeatureMix, build_model


@pytest.mark.parametrize("backbone,params", [("resnet18", 11_271_432), ("resnext50", 23_382_024)])
def test_parameter_counts_at_200_classes(backbone, params):
    # docs/protocol.md §1.3: torchvision counts minus the 7x7 stem difference (7,680) with a 200-way fc
    model = build_model(backbone, num_classes=200)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("backbone,channels", [("resnet18", (64, 128, 256, 512)), ("resnext50", (256, 512, 1024, 2048))])
def test_shapes_and_stage_features(backbone, channels):
    model = build_model(backbone, num_classes=200, width=64 if backbone == "resnet18" else 16)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 200)
    scale = 1 if backbone == "resnet18" else 4
    for feat, c, s in zip(model.forward_stages(x), channels, (64, 32, 16, 8)):
        assert feat.shape == (2, c // scale, s, s)


def test_init_follows_the_2022_code():
    model = build_model("resnet18", num_classes=200, width=8)
    assert model.layer1[0].bn2.weight.abs().sum() == 0  # zero-init residual
    assert model.fc.bias.abs().sum() == 0 and 0.005 < model.fc.weight.std() < 0.015
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)


def test_feature_mix_hook_mixes_after_the_named_stage():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5, width=8).eval()
    for m in model.modules():  # make residual branches non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x, perm, lam = torch.randn(4, 3, 64, 64), torch.tensor([2, 3, 0, 1]), torch.tensor(0.3)
    h = model.layer1(model.stem(x))
    h = lam * h + (1 - lam) * h[perm]
    expected = model.forward_head(model.layer4(model.layer3(model.layer2(h))))
    got = model(x, mix=FeatureMix("layer1", lam, perm))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model(x), atol=1e-3)
    assert torch.allclose(model(x, mix=FeatureMix("input", lam, perm)), model(lam * x + (1 - lam) * x[perm]), atol=1e-5)
    with pytest.raises(ValueError, match="stage"):
        FeatureMix("layer9", lam, perm)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="valid: resnet18, resnext50"):
        build_model("resnet50", num_classes=10)


def test_init_setting_paper_or_pytorch_default():
    """init="paper" (the 2022 code: zero-init residual BN, fc N(0, 0.01)); "pytorch": the modules' defaults,
    as OpenMixup HEAD leaves the hand-crafted methods' backbone (docs/protocol.md §1.3)."""
    from mixnb.config import RunConfig

    torch.manual_seed(0)
    paper = build_model("resnet18", num_classes=10, width=8)
    torch.manual_seed(0)
    default = build_model("resnet18", num_classes=10, width=8, init="pytorch")
    assert torch.all(paper.layer1[0].bn2.weight == 0) and torch.all(default.layer1[0].bn2.weight == 1)
    assert paper.fc.weight.std() < 0.02 < default.fc.weight.std()  # N(0, 0.01) vs U(+-1/sqrt(fan_in))
    assert RunConfig(init="pytorch").maths()["init"] == "pytorch" != RunConfig().maths()["init"]
    with pytest.raises(ValueError, match="init must be one of paper, pytorch"):
        RunConfig(init="xavier")
