"""Mixup methods and their registry: the one place that holds each method's protocol defaults.

Defaults come from protocol.md §2.1 (alpha per method) and §2.x (method settings). ``min_lr``
is the backbone's cosine floor (protocol.md §1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mixnb.mixups._helpers import mixed_cross_entropy, sample_beta, soft_target
from mixnb.mixups.attentivemix import AttentiveMix
from mixnb.mixups.automix import AutoMix
from mixnb.mixups.base import MixedBatch, MixMethod, StepContext, StepOutput
from mixnb.mixups.cutmix import CutMix
from mixnb.mixups.fmix import FMix
from mixnb.mixups.manifoldmix import ManifoldMix
from mixnb.mixups.mixup import MixUp
from mixnb.mixups.puzzlemix import PuzzleMix
from mixnb.mixups.resizemix import ResizeMix
from mixnb.mixups.saliencymix import SaliencyMix
from mixnb.mixups.samix import SAMix
from mixnb.mixups.vanilla import Vanilla


@dataclass(frozen=True)
class MethodSpec:
    cls: type[MixMethod]
    defaults: dict[str, Any] = field(default_factory=dict)
    min_lr: float = 0.0  # backbone cosine floor
    label: str = ""  # the name in the benchmark table
    auto_compile: bool = True  # RunConfig.compile="auto" compiles on CUDA; False where make bench found it slower


# AutoMix/SAMix settings (protocol.md §3.1-3.4): EMA momentum 0.999 -> 0.999999 after 10% of the
# iterations, lam margin 0.08, mask loss 0.1 with margin 0.1, MixBlock lr 0.1 -> 1e-3.
_AUTOMIX = {"alpha": 2.0, "momentum": 0.999, "end_momentum": 0.999999, "momentum_warmup": 0.1, "lam_margin": 0.08,
            "mask_loss": 0.1, "mask_margin": 0.1, "mixblock_lr": 0.1, "mixblock_min_lr": 1e-3}

REGISTRY: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(Vanilla, {}, label="Vanilla"),
    "mixup": MethodSpec(MixUp, {"alpha": 1.0}, label="MixUp"),
    "cutmix": MethodSpec(CutMix, {"alpha": 1.0}, label="CutMix"),
    "manifoldmix": MethodSpec(ManifoldMix, {"alpha": 0.2, "layers": ("input", "layer1", "layer2")},
                              label="ManifoldMix"),
    "saliencymix": MethodSpec(SaliencyMix, {"alpha": 1.0}, label="SaliencyMix"),
    "attentivemix": MethodSpec(AttentiveMix, {"alpha": 2.0, "teacher_weights": None}, label="AttentiveMix+"),
    "fmix": MethodSpec(FMix, {"alpha": 1.0, "decay_power": 3.0, "size": (64, 64), "max_soft": 0.0,
                              "spectrum": "openmixup"}, label="FMix*"),
    "puzzlemix": MethodSpec(PuzzleMix, {"alpha": 1.0, "block_nums": (2, 4, 8), "beta": 1.2, "gamma": 0.5, "eta": 0.2,
                                        "neigh_size": 4, "n_labels": 3, "t_eps": 0.8, "transport": True, "t_size": -1,
                                        "workers": 0}, label="PuzzleMix"),
    "resizemix": MethodSpec(ResizeMix, {"alpha": 1.0, "scope": (0.1, 0.8), "use_alpha": True,
                                        "interpolation": "nearest"}, label="ResizeMix*"),
    # auto_compile False: only ``model(x)`` is compiled, their encoder-k and forward_stages passes stay eager, and
    # with CUDA graphs the R-18 step measured 34.8 ms (AutoMix) against 29.0 ms eager (H100, BENCHMARKS.md)
    "automix": MethodSpec(AutoMix, dict(_AUTOMIX), min_lr=0.05, label="AutoMix", auto_compile=False),
    "samix": MethodSpec(SAMix, {**_AUTOMIX, "lam_mul_k": "auto"}, min_lr=0.05, label="SAMix*", auto_compile=False),
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
