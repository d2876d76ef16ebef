"""RunConfig and profiles: the one source of truth for a run's settings.

Notebook parameter cells, the CLI and the sweep all build a ``RunConfig``. Method defaults
live only in the registry (``mixnb.mixups.REGISTRY``); ``method_args`` overrides them.
Protocol numbers (lr 0.2, momentum 0.9, wd 1e-4, batch 100, 400 epochs) come from
protocol.md §1.5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixnb.models import BACKBONES

# A profile fixes the data and the model width. "sample" proves the pipeline on a generated
# dataset on a 2-core CPU in minutes; it does not reproduce the published numbers.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny-imagenet": {"epochs": 400, "width": 64, "sample": None},
    "sample": {"epochs": 4, "width": 8, "sample": {"num_classes": 10, "train_per_class": 100, "val_per_class": 30}},
    "test": {"epochs": 2, "width": 8, "sample": {"num_classes": 4, "train_per_class": 16, "val_per_class": 8}},
}

# Fields that name a run rather than change its maths (kept out of the override hash).
_IDENTITY = ("method", "backbone", "profile", "seed", "data", "device", "compile")

# torch.compile settings: "auto" resolves per device (mixnb.train.resolve_compile); the others are
# torch.compile modes, or "off". Compiling changes no maths beyond float reassociation (performance.md §8.5).
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
# Autocast precision: bf16 keeps fp32 master weights, optimizer state and BN statistics (performance.md §8.1);
# "auto" resolves per device (mixnb.train.resolve_precision).
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class RunConfig:
    method: str = "vanilla"  # a name in mixnb.mixups.REGISTRY
    backbone: str = "resnet18"  # resnet18 | resnext50
    profile: str = "sample"  # tiny-imagenet | sample | test
    seed: int = 0  # seeds the data-order, augmentation, mixing and init generators
    epochs: int | None = None  # None: the profile's (400 for tiny-imagenet)
    width: int | None = None  # base width of the backbone; None: the profile's (64 = the paper's)
    batch_size: int = 100  # protocol.md §1.5
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on every parameter, BN and bias included
    min_lr: float | None = None  # cosine floor; None: the method's (0, or 0.05 for AutoMix/SAMix)
    method_args: dict[str, Any] = field(default_factory=dict)  # overrides of the registry defaults
    data: str | None = None  # tiny-imagenet-200 folder; None: $MIXNB_DATA, or the generated sample set
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # COMPILE_MODES: auto = the measured best on CUDA, off on the CPU
    precision: str = "auto"  # PRECISIONS: auto = bf16 where the device computes it natively (CUDA, AMX CPUs)
    sync_bn: bool = False  # multi-GPU runs: BatchNorm over the global batch (SyncBN); False = per GPU (reference)
    eval_batch_size: int = 1000
    log_every: int = 50  # iterations between host reads of the running loss

    def __post_init__(self) -> None:
        from mixnb.mixups import get_method

        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; valid: {', '.join(PROFILES)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the profile's), got {getattr(self, name)}")
        for name, valid in (("compile", COMPILE_MODES), ("precision", PRECISIONS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        get_method(self.method, **self.method_args)  # unknown method, unknown setting or bad value fails here

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from plain values (a notebook's parameters); unknown keys and wrong types fail."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown RunConfig key(s) {unknown}; valid keys: {', '.join(fields)}")
        for key, value in values.items():
            _check_type(key, value, fields[key].type)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """The values that differ from the defaults."""
        default = RunConfig()
        return {k: v for k, v in self.to_dict().items() if getattr(default, k) != v}

    # --- resolved values -------------------------------------------------------------
    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else PROFILES[self.profile]["epochs"]

    @property
    def model_width(self) -> int:
        return self.width if self.width is not None else PROFILES[self.profile]["width"]

    @property
    def floor_lr(self) -> float:
        from mixnb.mixups import get_spec

        return self.min_lr if self.min_lr is not None else get_spec(self.method).min_lr

    def run_name(self) -> str:
        """``<method>-<backbone>-s<seed>``, plus a hash of the maths-changing overrides."""
        name = f"{self.method}-{self.backbone}-s{self.seed}"
        overrides = {k: v for k, v in self.changes().items() if k not in _IDENTITY}
        if overrides:
            digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
            name += f"-{digest}"
        return name

    def data_root(self) -> str | None:
        """The real dataset folder, or None when the profile uses the generated sample set."""
        if PROFILES[self.profile]["sample"] is not None and self.data is None:
            return None
        root = self.data or os.environ.get("MIXNB_DATA")
        if not root:
            raise ValueError(
                "profile 'tiny-imagenet' needs the dataset: download "
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and set "
                "MIXNB_DATA=/path/to/tiny-imagenet-200 (or pass data=...)"
            )
        return root


def _check_type(key: str, value: Any, annotation: str) -> None:
    """Reject values whose type does not match the field annotation (ints pass as floats)."""
    allowed = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}
    kinds = [part.strip().split("[")[0] for part in str(annotation).split("|")]
    types = tuple(t for k in kinds for t in allowed.get(k, (dict,) if k == "dict" else ()))
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"RunConfig.{key} must be {annotation}, got {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"RunConfig.{key} must be {annotation}, got {type(value).__name__} {value!r}")


def default_cache_dir() -> Path:
    """Where generated sample sets and dataset caches go ($MIXNB_CACHE, default ~/.cache/mixnb)."""
    return Path(os.environ.get("MIXNB_CACHE", Path.home() / ".cache" / "mixnb"))
