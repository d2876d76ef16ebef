"""RunConfig: the one source of truth for a run's settings and its identity.

Slightly over ~450 lines on purpose: every setting of a run, its help text, checks, identity and name in one file.

Notebook parameter cells (``from_parameters``), the CLI (fields become options) and the sweep all
build a ``RunConfig``. Method defaults live only in the registry (``mixnb.mixups.REGISTRY``);
``method_args`` overrides them and is typed against them. Protocol numbers (lr 0.2, momentum 0.9,
wd 1e-4, batch 100, 400 epochs) come from docs/protocol.md §1.5.

``reference`` picks the OpenMixup code a run follows (docs/publication.md): "published" (default), per
method and backbone the code that published its Tiny-ImageNet number (2022); "head", OpenMixup's 2025 code.
It resolves the method's settings (the registry's ``defaults``, or with its ``head`` applied), the crop's
interpolation and the evaluation's BN statistics; each resolved value is a setting of its own, and the
run's identity and name hold the resolved values, not the choice.

A run is identified by what changes its result (``RunConfig.identity``): method and its resolved
arguments, backbone, seed, resolved epochs and width, crop, optimiser settings, precision, device type
and the dataset. Compile mode and capture, GPU index, ``log_every``, ``eval_batch_size`` and progress change
nothing beyond float reassociation and never block a resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from mixnb.device import autocast_dtype
from mixnb.data.loader import IMAGENET_MEAN, IMAGENET_STD, KERNELS
from mixnb.mixups import REFERENCES, get_method, get_spec, reference_code
from mixnb.models import BACKBONES, INITS
from mixnb.models.groupbn import RUNNING_STATS
from mixnb.profiles import PROFILES, Profile, get_profile, profile_method_args

# A profile fixes the data, width, epochs, pipeline and optimiser defaults (mixnb.profiles: one record per profile).
# "sample" proves the pipeline on a generated dataset on a 2-core CPU in minutes; it reproduces no published number.

# torch.compile settings: "auto" resolves per device (mixnb.train.resolve_compile); the others are
# torch.compile modes, or "off". Compiling changes no maths beyond float reassociation (docs/performance.md §8.5).
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# What a compile captures (mixnb.train.build_parts): "model" = the model's forward and backward (the measured
# CUDA default); "step" = the method's whole training step as well (mixing, every forward, the loss and their
# backward), its random draws and host solvers left eager (mixnb.mixups._helpers.eager).
CAPTURES = ("model", "step")
# Autocast precision: bf16 keeps fp32 master weights, optimizer state and BN statistics (docs/performance.md §8.1);
# "auto" resolves per device (mixnb.device.autocast_dtype).
PRECISIONS = ("auto", "bf16", "fp32")
INTERPOLATIONS = tuple(KERNELS)  # RandomResizedCrop: bicubic | bilinear
# The evaluation's BN statistics under bn_groups > 1, per reference: OpenMixup HEAD's ValidateHook broadcasts rank
# 0's buffers (openmixup/core/hooks/validate_hook.py, since dadfb9b 2023-03-17). The 2022 code (openmixup/hooks/
# validate_hook.py at e81ed85) evaluated each rank's val shard with that rank's own buffers: the ranks' buffers are
# exchangeable, so for every image rank 0's are equal in expectation: "first" for both.
REFERENCE_RUNNING_STATS = {"published": "first", "head": "first"}
MAX_SEED = 2**32  # CPU torch.Generator seeds keep 32 bits: seeds 0 and 2**32 would be one run
MAX_PARAMS = 2e9  # a model above this is a typo (width=1000000), not an experiment


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A field with its help text (CLI ``--help``) and choices; a type as ``default`` is its factory."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RunConfig:
    method: str = _f("vanilla", "a name in mixnb.mixups.REGISTRY", choices="methods")
    backbone: str = _f("resnet18", "CIFAR-variant backbone", choices=tuple(BACKBONES))
    profile: str = _f("sample", "tiny-imagenet | cifar100 | imagenet64 (real data, docs/datasets.md) | sample "
                                "(generated data, CPU minutes) | test (mixnb.profiles)", choices=tuple(PROFILES))
    seed: int = _f(0, "seeds the data-order, augmentation, mixing and init generators (0 <= seed < 2**32)")
    epochs: int | None = _f(None, "None: the profile's (400 for tiny-imagenet and cifar100)")
    width: int | None = _f(None, "base width of the backbone; None: the profile's (64 = the paper's)")
    reference: str = _f("published", "the OpenMixup code followed (docs/publication.md): published (per method and "
                                     "backbone the code that published its number, 2022) | head (OpenMixup's 2025 "
                                     "code); resolves the method settings, crop_interpolation and running_stats",
                        choices=REFERENCES)
    crop_interpolation: str | None = _f(None, "RandomResizedCrop resampling, bicubic | bilinear; None: the "
                                              "reference's (bilinear for the rows published on 2022-03-10)",
                                        choices=INTERPOLATIONS)
    init: str = _f("paper", "backbone init: paper (the 2022 code behind the published numbers: kaiming fan_out, "
                            "zero-init residual BN) | pytorch (PyTorch's default, OpenMixup HEAD's)", choices=INITS)
    # None: the profile's (mixnb.profiles); resolved when the config is made, so a built config holds the number
    batch_size: int | None = _f(None, "global batch; None: the profile's (100, docs/protocol.md §1.5)")
    lr: float | None = _f(None, "SGD learning rate; None: the profile's (0.2 Tiny, 0.1 CIFAR-100: docs/protocol.md)")
    momentum: float | None = _f(None, "SGD momentum; None: the profile's (0.9)")
    weight_decay: float | None = _f(None, "on every parameter, BN and bias included; None: the profile's (1e-4)")
    min_lr: float | None = _f(None, "cosine floor; None: the method's (0, or 0.05 for AutoMix/SAMix)")
    method_args: dict[str, Any] = _f(dict, "overrides of the method's registry defaults, e.g. {\"alpha\": 0.5}")
    data: str | None = _f(None, "tiny-imagenet-200 folder; None: $MIXNB_DATA, or the generated sample set")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    compile: str = _f("auto", "torch.compile mode; auto = the measured best on CUDA, off on the CPU",
                      choices=COMPILE_MODES)
    capture: str = _f("model", "with compile on: model = the model's passes (measured on an H100) | step = the "
                               "method's whole training step (mixing, every forward, the loss; draws stay eager)",
                      choices=CAPTURES)
    precision: str = _f("auto", "autocast; auto = bf16 where the device computes it natively (CUDA, AMX CPUs)",
                        choices=PRECISIONS)
    sync_bn: bool = _f(False, "multi-GPU runs: BatchNorm over the global batch; False = per GPU (the reference)")
    bn_groups: int | None = _f(None, "BatchNorm statistics per this many equal groups of the global batch (2: the "
                                     "reference's 2 GPUs x 50 on one GPU); None: the method's (2 for RX-50 "
                                     "AutoMix/SAMix, else 1)")
    running_stats: str | None = _f(None, "with bn_groups > 1: the BN running statistics evaluated, first (group 0's, "
                                          "as OpenMixup's rank-0 broadcast) | mean (the groups' mean); None: the "
                                          "reference's (first)", choices=RUNNING_STATS)
    eval_batch_size: int = _f(1000, "evaluation batch (no effect on the result)")
    log_every: int = _f(50, "iterations between host reads of the running loss")

    def __post_init__(self) -> None:
        profile = get_profile(self.profile)  # an unknown profile fails with the valid ones
        for name in ("batch_size", "lr", "momentum", "weight_decay"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(profile, name))
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "width", "bn_groups"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the profile's), got {getattr(self, name)}")
        for name, valid in (("compile", COMPILE_MODES), ("capture", CAPTURES), ("precision", PRECISIONS),
                            ("init", INITS), ("reference", REFERENCES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        for name in ("lr", "momentum", "weight_decay", "min_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.sync_bn and self.batchnorm_groups > 1:
            raise ValueError(f"sync_bn=True normalises over the global batch; bn_groups={self.batchnorm_groups} "
                             f"asks for groups of it: set one of them")
        if self.batch_size % self.batchnorm_groups:
            raise ValueError(f"batch_size {self.batch_size} does not split into bn_groups={self.batchnorm_groups} "
                             f"equal groups")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}: the cosine would rise; use min_lr <= lr")
        params = 11.3e6 * (self.model_width / 64) ** 2 * (2.1 if self.backbone == "resnext50" else 1)
        if params > MAX_PARAMS:
            raise ValueError(f"width {self.model_width} gives a {self.backbone} of ~{params / 1e9:.0f}G parameters "
                             f"(~{params * 16 / 2**30:.0f} GiB with SGD state); the paper's width is 64")
        for name, valid in (("crop_interpolation", INTERPOLATIONS), ("running_stats", RUNNING_STATS)):
            if getattr(self, name) not in (None, *valid):
                raise ValueError(f"{name} must be one of {', '.join(valid)} (or None: the reference's); "
                                 f"got {getattr(self, name)!r}")
        args = typed_method_args(self.method, self.method_args)
        if self.reference == "head":  # HEAD's settings where they differ from the registry's; explicit ones win
            args = {**get_spec(self.method).head, **args}
        args = {**profile_method_args(self.profile, self.method), **args}  # the protocol's (CIFAR-100's α); explicit win
        object.__setattr__(self, "method_args", args)
        get_method(self.method, **self.method_args)  # a bad value fails here, with the method's own message

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from plain values (a notebook's parameters, a params.json); unknown keys and wrong types fail."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown RunConfig key(s) {unknown}; valid keys: {', '.join(fields)}")
        values = dict(values)
        if isinstance(values.get("method_args"), str):
            values["method_args"] = parse_method_args(values["method_args"])
        for key, value in values.items():
            _check_type(key, value, fields[key].type)
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        """A params.json (its ``config``) or a plain JSON object of RunConfig fields."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read a config from it ({err}); pass a params.json") from err
        return cls.from_dict(values.get("config", values) if isinstance(values, dict) else values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # plain JSON values (tuples -> lists)

    def changes(self) -> dict[str, Any]:
        """The values that differ from the defaults."""
        default = RunConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if default[k] != v}

    # --- resolved values -------------------------------------------------------------
    @property
    def profile_spec(self) -> Profile:
        """The profile's record (mixnb.profiles)."""
        return PROFILES[self.profile]

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.profile_spec.epochs

    @property
    def model_width(self) -> int:
        return self.width if self.width is not None else self.profile_spec.width

    @property
    def augment(self) -> tuple[str, ...]:
        """The train augmentations (mixnb.data.loader.AUGMENTS keys): the profile's pipeline."""
        return self.profile_spec.augment

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the input normalisation, 0..1 units: the profile's (ImageNet's; CIFAR-100's for cifar100)."""
        return tuple(self.profile_spec.mean), tuple(self.profile_spec.std)

    @property
    def batchnorm_groups(self) -> int:
        if self.bn_groups is not None:
            return self.bn_groups
        return get_spec(self.method).bn_groups.get(self.backbone, 1) if self.profile_spec.registry_bn_groups else 1

    @property
    def crop(self) -> str:
        """The crop's interpolation: ``crop_interpolation``, else that of the code ``reference`` names."""
        return self.crop_interpolation or reference_code(self.method, self.backbone, self.reference).crop

    @property
    def bn_running_stats(self) -> str:
        """The BN running statistics evaluation uses: ``running_stats``, else the reference's with bn_groups > 1; with
        one group "mean", which under DDP's per-rank BN comes closest to the one batch's statistics."""
        return self.running_stats or (REFERENCE_RUNNING_STATS[self.reference] if self.batchnorm_groups > 1 else "mean")

    @property
    def floor_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else get_spec(self.method).min_lr

    def full_method_args(self) -> dict[str, Any]:
        """The method's settings as the run uses them: registry defaults with ``method_args`` applied."""
        return json.loads(json.dumps({**get_spec(self.method).defaults, **self.method_args}))

    def maths(self) -> dict[str, Any]:
        """Every setting that changes the result and is known without the device or the data, resolved."""
        return {"method": self.method, "method_args": self.full_method_args(), "backbone": self.backbone,
                "seed": self.seed, "epochs": self.num_epochs, "width": self.model_width, "init": self.init,
                "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "min_lr": self.floor_lr, "sync_bn": self.sync_bn,
                "bn_groups": self.batchnorm_groups, "crop_interpolation": self.crop,
                # the Tiny pipeline (RandomResizedCrop + flip) is every earlier run's: only another one is recorded
                **({"pipeline": self.profile_spec.pipeline} if self.profile_spec.pipeline != "rrc" else {}),
                # ImageNet's mean/std is every earlier run's: only another normalisation is recorded
                **({"normalisation": [list(v) for v in self.normalisation]}
                   if self.normalisation != (IMAGENET_MEAN, IMAGENET_STD) else {}),
                # one group has one set of statistics: the choice exists (and splits identities) only with several
                **({"running_stats": self.bn_running_stats} if self.batchnorm_groups > 1 else {})}

    def identity(self, device: torch.device, dataset: dict[str, Any]) -> dict[str, Any]:
        """What makes two runs the same run: ``maths()`` plus precision, device type and the dataset
        (``mixnb.runs.dataset_record``: its content key and sizes, then where and how it was read, which
        ``mixnb.runs.check_identity`` does not compare). Stored in params.json, checkpoints and summary.json."""
        precision = "bf16" if autocast_dtype(self.precision, device) == torch.bfloat16 else "fp32"
        return {**self.maths(), "precision": precision, "device_type": device.type, "dataset": dataset}

    def overrides(self) -> dict[str, Any]:
        """The maths settings that differ from the profile's and the method's defaults (the run name's tokens)."""
        base = RunConfig(method=self.method, backbone=self.backbone, profile=self.profile, seed=self.seed).maths()
        base.setdefault("running_stats", REFERENCE_RUNNING_STATS["published"])  # its default where groups add it
        mine = self.maths()
        out = {f"method_args.{k}": v for k, v in mine["method_args"].items() if base["method_args"].get(k) != v}
        out.update({k: v for k, v in mine.items() if k != "method_args" and base[k] != v})
        if self.precision != "auto":
            out["precision"] = self.precision
        # no ``data``: the dataset is in the identity by its content key, so the same data given as --set data=... or
        # MIXNB_DATA, or through another path, is one run folder; another dataset there is refused by check_identity
        return out

    def run_name(self) -> str:
        """Readable and unique: ``cutmix-resnet18-s0``, ``cutmix-resnet18-s0-a0.2``,
        ``mixup-resnet18-s1-ep100-lr0.1``; a short hash of every override replaces the tokens that
        would be ambiguous (non-numeric or signed values) or make the name too long."""
        base = f"{self.method}-{self.backbone}-s{self.seed}"
        overrides = self.overrides()
        overrides.pop("seed", None)
        tokens, hashed = [], False
        for key, value in overrides.items():
            token = _token(key, value)
            if token is None:
                hashed = True
            else:
                tokens.append(token)
        name = "-".join([base, *tokens])
        if hashed or len(name) > 80:
            digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
            name = "-".join([base, *(tokens if len(name) <= 80 else []), f"h{digest}"])
        return name

    def data_root(self) -> str | None:
        """The real dataset folder, or None when the profile uses the generated sample set."""
        if self.profile_spec.sample is not None and self.data is None:
            return None
        root = self.data or os.environ.get("MIXNB_DATA")
        if not root:
            raise ValueError(
                f"profile {self.profile!r} needs the dataset, {self.profile_spec.dataset}: get it as "
                f"docs/datasets.md says (e.g. http://cs231n.stanford.edu/tiny-imagenet-200.zip for tiny-imagenet) and set "
                f"MIXNB_DATA=/path/to/it (or pass data=...)"
            )
        return root


# Maths settings added after runs were first recorded, with the value every earlier run had: a record without
# one is the same run when the setting is at that value (mixnb.runs.check_identity). ``running_stats`` is
# recorded only with bn_groups > 1 (``maths``), so it is filled in only there.
ADDED_SETTINGS = {"init": "paper", "bn_groups": 1, "crop_interpolation": "bicubic"}
ADDED_GROUPED_SETTINGS = {"running_stats": "mean"}
# Method settings added with ``reference`` whose registry default is not what earlier runs ran (they ran OpenMixup
# HEAD's code, and AttentiveMix+ with per-sample lam); settings whose default they ran need no entry.
ADDED_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "cutmix": {"partner_tries": 11}, "fmix": {"partner_tries": 11}, "automix": {"att_norm": False},
    "samix": {"att_norm": False}, "attentivemix": {"lam_rule": "sample"},
    "puzzlemix": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
}

_TOKENS = {"method_args.alpha": "a", "epochs": "ep", "width": "w", "batch_size": "bs", "lr": "lr", "momentum": "mom",
           "weight_decay": "wd", "min_lr": "minlr", "sync_bn": "syncbn", "precision": "",
           "method_args.decouple_eta": "eta", "bn_groups": "bng", "crop_interpolation": "crop",
           "running_stats": "bnstats", "method_args.partner_tries": "tries"}


def _token(key: str, value: Any) -> str | None:
    """``ep100``, ``lr0.1``, ``a0.2``, ``fp32``; None where a readable token could be ambiguous."""
    if isinstance(value, bool):  # sync_bn, DecoupleMix's decouple, ...: the name when on, no<name> when off
        return ("" if value else "no") + _TOKENS.get(key, key.removeprefix("method_args.").replace("_", ""))
    prefix = _TOKENS.get(key, key.removeprefix("method_args.").replace("_", ""))
    text = _float_text(value) if isinstance(value, float) else str(value)
    return prefix + text if re.fullmatch(r"[A-Za-z0-9.]+", text) and not text.startswith(".") else None


def _float_text(value: float) -> str:
    """``:g`` where it reads back as ``value`` (the names existing runs have), else the shortest exact form
    (``repr``): 0.2 and 0.2000001 never share a run folder."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


# ----------------------------------------------------------------------------- method_args
def parse_method_args(text: str) -> dict[str, Any]:
    """``'{"alpha": 0.2}'`` (JSON) or ``alpha=0.2,spectrum=paper`` (values JSON where they parse)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"method_args {text!r} is not valid JSON ({err.msg}); e.g. '{{\"alpha\": 0.2}}'") from err
        if not isinstance(value, dict):
            raise ValueError(f"method_args must be a JSON object, got {text!r}")
        return value
    return parse_pairs(split_top(text, ",") if text else [])


def parse_pairs(items: list[str]) -> dict[str, Any]:
    """``key=value`` items (later keys win); values parsed as JSON when they are JSON, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets: ``a=1,b=[2,4]`` -> ``["a=1", "b=[2,4]"]``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "[({") - (ch in "])}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p.strip()]


def typed_method_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` typed like the method's registry defaults (numbers from strings, lists as tuples); a value
    that cannot be typed fails naming the setting and what it expected. Unknown names pass through to
    ``get_method``, which lists the valid ones."""
    defaults = get_spec(method).defaults
    return {k: _typed(f"{method}: {k}", v, defaults[k]) if k in defaults else v for k, v in dict(args).items()}


def _typed(name: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{name} expects true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        number = value
        if isinstance(value, str):
            try:
                number = float(value) if isinstance(default, float) else int(value)
            except ValueError:
                number = None
        kind = "a number" if isinstance(default, float) else "an integer"
        if isinstance(number, bool) or not isinstance(number, (int, float)) or \
                (isinstance(default, int) and not float(number).is_integer()):
            raise ValueError(f"{name} expects {kind} (default {default}), got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(number) if isinstance(default, float) else int(number)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} expects a list like {list(default)}, got {value!r}")
        inner = default[0] if default else None
        return tuple(_typed(name, v, inner) for v in value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{name} expects a string (default {default!r}), got {value!r}")
    return value


# ----------------------------------------------------------------------------- notebook parameters
# The train notebook's parameters beyond RunConfig's fields (tests check the parameters cell against both).
NOTEBOOK_ONLY: dict[str, Any] = {"world_size": 1, "run_dir": None, "progress": "epoch", "analysis": True}
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def from_parameters(namespace: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """(RunConfig, notebook-only options) from a notebook's globals after its parameters cell.

    Papermill only warns about a parameter the notebook does not declare; here it fails with the valid
    names, so ``-p epoch 1`` cannot silently start a 400-epoch run."""
    names = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in _KERNEL_NAMES and not callable(v) and not isinstance(v, ModuleType)}
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(names) - set(fields) - set(NOTEBOOK_ONLY))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid: {', '.join([*fields, *NOTEBOOK_ONLY])}")
    cfg = RunConfig.from_dict({k: names[k] for k in fields if k in names})
    return cfg, {k: names.get(k, v) for k, v in NOTEBOOK_ONLY.items()}


def _check_type(key: str, value: Any, annotation: str) -> None:
    """Reject values whose type does not match the field annotation (ints pass as floats)."""
    allowed = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}
    kinds = [part.strip().split("[")[0] for part in str(annotation).split("|")]
    types = tuple(t for k in kinds for t in allowed.get(k, (dict,) if k == "dict" else ()))
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"RunConfig.{key} must be {annotation}, got {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"RunConfig.{key} must be {annotation}, got {type(value).__name__} {value!r}")
