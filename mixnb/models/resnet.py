"""CIFAR-variant ResNet-18 and ResNeXt-50 (32x4d), as OpenMixup's Tiny-ImageNet benchmark uses them.

Protocol: docs/protocol.md §1.3. A 3x3 stride-1 stem without max-pool, stage strides (1, 2, 2, 2),
global average pool and one Linear. Initialisation (``init``, a recorded RunConfig setting):
"paper" (default) follows the 2022 code the published numbers came from (kaiming fan_out, zero-init
of each residual branch's last BN, fc N(0, 0.01)); "pytorch" is PyTorch's default init, which
OpenMixup HEAD gives the hand-crafted methods' backbone, since ``MixUpClassification.init_weights``
calls no backbone init without pretrained weights (AutoMix/SAMix at HEAD still get the paper's;
docs/protocol.md §1.3, §7.1). The difference is what ``init`` lets one measure.

``forward(x, mix=FeatureMix(...))`` mixes hidden features after a named stage (ManifoldMix); any
``StageMix`` plugs in the same way (AlignMix's ``FeatureAlign`` after layer4); ``forward_stages``
returns every stage's features without hooks (AttentiveMix, AutoMix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

STAGES = ("input", "layer1", "layer2", "layer3", "layer4")
INITS = ("paper", "pytorch")  # the 2022 code's init (the published numbers) | PyTorch's default (OpenMixup HEAD)


class StageMix(Protocol):
    """What ``forward(x, mix=...)`` takes: ``apply`` maps the batch's features after ``stage`` (one of STAGES)."""

    @property
    def stage(self) -> str: ...

    def apply(self, h: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class FeatureMix:
    """Mix hidden features after ``stage``: ``lam * h + (1 - lam) * h[perm]`` (ManifoldMix)."""

    stage: str  # one of STAGES
    lam: Tensor  # () float32
    perm: Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"FeatureMix stage {self.stage!r} is not one of {STAGES}")

    def apply(self, h: Tensor) -> Tensor:
        """Mix in float32 (under bf16 autocast lam would otherwise be rounded to 8 bits)."""
        hf = h.float()
        return torch.lerp(hf[self.perm], hf, self.lam).to(h.dtype)  # = lam * h + (1 - lam) * h[perm]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        mid = planes * base_width * groups // 64  # ResNeXt 32x4d: 128/256/512/1024 at width 64
        groups = math.gcd(mid, groups)  # narrow sample-profile widths: fewer groups than 32 (never at width >= 16)
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)  # "pytorch" style: stride on 3x3
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    """1x1 conv + BN when the shape changes (no avg-down), identity otherwise."""
    if stride == 1 and inplanes == outplanes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNetCifar(nn.Module):
    """ResNet/ResNeXt with a 3x3 stride-1 stem and no max-pool; ``width`` scales every stage."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 200,
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        init: str = "paper",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        inplanes, stages = width, []
        for i, (n_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * 2**i
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, groups, width_per_group))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        if init == "paper":  # "pytorch": the modules' own default init, as constructed
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero_init_residual: each residual branch starts as identity
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stages(self, x: Tensor, upto: int = 4) -> list[Tensor]:
        """Features after layer1..layer``upto``; at 64 px: 64, 32, 16, 8 px maps."""
        h, feats = self.stem(x), []
        for stage in self.stages[:upto]:
            h = stage(h)
            feats.append(h)
        return feats

    def forward_head(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))  # (N, num_classes)

    def forward(self, x: Tensor, mix: StageMix | None = None) -> Tensor:
        if mix is not None and mix.stage == "input":
            x = mix.apply(x)
        h = self.stem(x)  # (N, width, 64, 64)
        for name, stage in zip(STAGES[1:], self.stages):
            h = stage(h)
            if mix is not None and mix.stage == name:
                h = mix.apply(h)
        return self.forward_head(h)


def resnet18_cifar(num_classes: int = 200, width: int = 64, init: str = "paper") -> ResNetCifar:
    return ResNetCifar(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, width=width, init=init)


def resnext50_32x4d_cifar(num_classes: int = 200, width: int = 64, init: str = "paper") -> ResNetCifar:
    return ResNetCifar(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, width=width, groups=32, width_per_group=4,
                       init=init)


BACKBONES: dict[str, Callable[..., ResNetCifar]] = {
    "resnet18": resnet18_cifar,
    "resnext50": resnext50_32x4d_cifar,
}


def build_model(backbone: str, *, num_classes: int, width: int = 64, init: str = "paper") -> ResNetCifar:
    """Build a backbone by name; unknown names fail with the valid ones."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[backbone](num_classes=num_classes, width=width, init=init)
