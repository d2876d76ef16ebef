"""Mixup methods and their registry: the one place that holds each method's protocol defaults.

Defaults come from protocol.md §2.1 (alpha per method) and §2.x (method settings). ``min_lr``
is the backbone's cosine floor (protocol.md §1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mixnb.mixups._helpers import mixed_cross_entropy, sample_beta, soft_target
from mixnb.mixups.base import MixedBatch, MixMethod, StepContext, StepOutput
from mixnb.mixups.cutmix import CutMix
from mixnb.mixups.mixup import MixUp
from mixnb.mixups.vanilla import Vanilla


@dataclass(frozen=True)
class MethodSpec:
    cls: type[MixMethod]
    defaults: dict[str, Any] = field(default_factory=dict)
    min_lr: float = 0.0  # backbone cosine floor
    label: str = ""  # the name in the benchmark table


REGISTRY: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(Vanilla, {}, label="Vanilla"),
    "mixup": MethodSpec(MixUp, {"alpha": 1.0}, label="MixUp"),
    "cutmix": MethodSpec(CutMix, {"alpha": 1.0}, label="CutMix"),
}


def get_spec(name: str) -> MethodSpec:
    """The registry entry for ``name``; unknown names fail with the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def get_method(name: str, **overrides: Any) -> MixMethod:
    """Build a method with its protocol defaults, ``overrides`` replacing some of them."""
    spec = get_spec(name)
    unknown = set(overrides) - set(spec.defaults)
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(f"method {name!r} has no setting(s) {sorted(unknown)}; its settings: {valid}")
    return spec.cls(**{**spec.defaults, **overrides})


__all__ = [
    "REGISTRY",
    "MethodSpec",
    "MixMethod",
    "MixedBatch",
    "StepContext",
    "StepOutput",
    "get_method",
    "get_spec",
    "mixed_cross_entropy",
    "sample_beta",
    "soft_target",
]
