"""Memory model: the CUDA peak of a training step and of an analysis attack pass, measured on the CPU.

A peak is the sum of what a process holds (fp32 bytes unless said):

- weights: the model's and the method's parameters and buffers (AutoMix/SAMix/AdAutoMix's EMA copies and
  MixBlock, AttentiveMix+'s teacher), each storage once;
- gradients and SGD momentum: one copy each of every parameter the optimizer steps;
- data: the profile's uint8 train and val images on the device (Tiny-ImageNet: 1.14 + 0.11 GiB);
- activations: the tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``), each
  storage once and the run's own parameters left out, their peak over the step as they are saved and freed
  (PuzzleMix's saliency pass frees its graph before the training forward);
- workspace: backward's transient gradients, taken as twice the largest saved activation, plus ``WORKSPACE_GIB``
  (cuDNN workspaces, caching-allocator rounding).

Activations are measured on the CPU, eager, under bf16 autocast as on CUDA (CPU autocast saves the same
dtypes: bf16 conv/linear outputs, BN in its input dtype) at ``PROBE_BATCHES`` images and extrapolated as a
line to the config's batch: the fit's intercept is what does not scale (the bf16 weight casts). A step is not
measured on the meta device: PuzzleMix's graph cuts, SaliencyMix's OpenCV saliency and the samplers read
values. An analysis pass is ``mixnb.analysis.attacks.input_grad`` on the meta device (the plain model reads
no values): eval mode, fp32, forward + input gradient, plus the val images on the device twice (the moved set
and the attacked subset). Measurements are cached under ``mixnb.device.cache_dir() / "memory"``, keyed by method
(every resolved setting), backbone, width, BN groups, image size, classes, precision and torch version; the
26-run tiny-imagenet dry run measures once (~3 CPU-minutes on 2 cores; RX-50 AutoMix/SAMix ~20 s each on a
quiet machine) and then reads the files in a second.

Calibration against all 41 H100 peaks in BENCHMARKS.md (2026-11-27; bench's "peak MiB" is allocated above
what a run holds before its first step, so it is compared with gradients + momentum + activations + workspace):
the model is above every one, by 2-15 % on the eager rows (R-18 1.05-1.15x, RX-50 1.02-1.06x; AutoMix/SAMix
RX-50 20,723 / 20,990 MiB predicted against 20,293 / 20,558 measured) and by 2-31 % on the CUDA-graph rows
(R-18 ResizeMix 1,206 against 922 MiB: inductor frees or recomputes some of what eager saves); median 1.08x.
The per-row table is in BENCHMARKS.md ("Memory model against the H100 peaks"). Not calibrated on a GPU: the
attack pass (138 MiB per image for RX-50, 20 MiB for R-18, fp32, each storage once) and the fixed parts
(weights, data), which are exact sizes. Not modelled: the evaluation pass (batch 1000, no saved tensors) and
CUDA-graph pools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.config import PROFILES, RunConfig
from mixnb.device import cache_dir
from mixnb.data.tinyimagenet import IMAGE_SIZE
from mixnb.io import read_json, write_json

GIB = 2**30
CARD_GIB = 79.1  # an H100 80GB HBM3's total_memory (81,559 MiB): the sweep's card when no GPU is visible
# Two processes of a RUNS_PER_GPU=2 sweep each analysing at the budget, beside their cached training blocks, stay
# inside an 80 GB card; it is also about the costliest training step's own peak (RX-50 AutoMix/SAMix).
ANALYSIS_BUDGET_GIB = 20.0
WORKSPACE_GIB = 0.1  # cuDNN workspaces, allocator rounding: covers the largest shortfall of the calibration (22 MiB)
CONTEXT_GIB = 0.5  # per process, outside the allocator's count: CUDA context, cuDNN/cuBLAS handles (typical)
PROBE_BATCHES = (2, 4)  # images per measured step: two points of the line, even for bn_groups=2
TINY_IMAGENET = {"classes": 200, "train": 100_000, "val": 10_000}
CACHE_VERSION = 3  # bump when what is measured changes


@dataclass(frozen=True)
class Footprint:
    """A peak's parts, in GiB."""

    weights: float
    grads: float
    optimizer: float
    data: float
    activations: float
    workspace: float

    @property
    def total(self) -> float:
        return sum(dataclasses.astuple(self))


# ----------------------------------------------------------------------------- public API
def predict_step_gib(cfg: RunConfig) -> float:
    """Predicted peak GiB on CUDA of one training step of ``cfg`` (weights, grads, momentum, method state, data,
    the step's activations at ``cfg.batch_size``)."""
    return step_footprint(cfg).total


def predict_analysis_gib(cfg: RunConfig, batch: int) -> float:
    """Predicted peak GiB of one FGSM/PGD pass (fp32 forward + input gradient) of ``cfg``'s model at ``batch``
    images, with its weights and the val images on the device."""
    return analysis_footprint(cfg, batch).total


def analysis_batch(cfg: RunConfig, budget_gib: float = ANALYSIS_BUDGET_GIB) -> int:
    """The largest attack/CAM batch, at most the profile's analysis batch, predicted to stay under ``budget_gib``
    (1 when even one image does not)."""
    from mixnb.analysis.settings import settings_for

    top = settings_for(cfg.profile).batch_size
    fixed, per_image = analysis_footprint(cfg, 0).total, _per_image_gib(cfg)
    return max(1, min(top, math.floor((budget_gib - fixed) / per_image)))


# ----------------------------------------------------------------------------- footprints
def step_footprint(cfg: RunConfig) -> Footprint:
    """The parts of ``predict_step_gib``."""
    m = _measured(_step_key(cfg), lambda: _measure_step(cfg))
    train, val, _ = _dataset(cfg.profile)
    return Footprint(weights=m["weights"] / GIB, grads=m["trainable"] / GIB,
                     optimizer=m["trainable"] / GIB if cfg.momentum > 0 else 0.0,
                     data=(train + val) * 3 * IMAGE_SIZE**2 / GIB,
                     activations=_line(m["saved"], cfg.batch_size) / GIB,
                     workspace=2 * _line(m["largest"], cfg.batch_size) / GIB + WORKSPACE_GIB)


def analysis_footprint(cfg: RunConfig, batch: int) -> Footprint:
    """The parts of ``predict_analysis_gib`` (no gradients or optimizer: only the input's gradient is taken)."""
    m = _measured(_attack_key(cfg), lambda: _measure_attack(cfg))
    _, val, _ = _dataset(cfg.profile)
    return Footprint(weights=m["weights"] / GIB, grads=0.0, optimizer=0.0, data=2 * val * 3 * IMAGE_SIZE**2 / GIB,
                     activations=_line(m["saved"], batch) / GIB,
                     workspace=2 * _line(m["largest"], batch) / GIB + WORKSPACE_GIB)


def _per_image_gib(cfg: RunConfig) -> float:
    """GiB one more attacked image adds (activations and transient gradients)."""
    return analysis_footprint(cfg, 1).total - analysis_footprint(cfg, 0).total


def _line(points: list[float], batch: int) -> float:
    """The line through (PROBE_BATCHES, points) at ``batch``, never below 0."""
    (b0, b1), (v0, v1) = PROBE_BATCHES, points
    return max(0.0, v0 + (v1 - v0) / (b1 - b0) * (batch - b0))


def _dataset(profile: str) -> tuple[int, int, int]:
    """(train images, val images, classes) of a profile."""
    sample = PROFILES[profile].sample
    if sample is None:
        return TINY_IMAGENET["train"], TINY_IMAGENET["val"], TINY_IMAGENET["classes"]
    k = sample["num_classes"]
    return k * sample["train_per_class"], k * sample["val_per_class"], k


# ----------------------------------------------------------------------------- measurement
class SavedTensors:
    """Bytes of the storages autograd saves while active (each storage once, ``exclude``'s storages left out):
    live now, their peak, and the largest activation (a saved tensor of ``batch`` rows)."""

    def __init__(self, exclude: Iterable[Tensor] = (), *, batch: int = 0) -> None:
        self.batch = batch
        self.exclude = {t.untyped_storage()._cdata for t in exclude}
        self.count: dict[int, int] = {}  # storage (its C pointer: unique while alive) -> saved references alive
        self.live = self.peak = self.largest = 0

    def pack(self, t: Tensor) -> Any:
        storage = t.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.exclude or size == 0:
            return t
        if key not in self.count:
            self.live += size
            self.peak = max(self.peak, self.live)
        if t.dim() and t.shape[0] == self.batch:  # an activation, not a weight cast: it scales with the batch
            self.largest = max(self.largest, size)
        self.count[key] = self.count.get(key, 0) + 1
        return _Saved(self, t.detach(), key, size)  # detached: holding a saved output must not make a cycle

    def release(self, key: int, size: int) -> None:
        self.count[key] -= 1
        if not self.count[key]:
            del self.count[key]
            self.live -= size

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack)


class _Saved:
    """One saved reference; gives its bytes back when autograd drops it."""

    def __init__(self, owner: SavedTensors, tensor: Tensor, key: int, size: int) -> None:
        self.owner, self.tensor, self.key, self.size = owner, tensor, key, size

    def __del__(self) -> None:
        self.owner.release(self.key, self.size)


def _unpack(saved: Any) -> Tensor:
    return saved.tensor if isinstance(saved, _Saved) else saved


def _state_tensors(*objs: Any) -> list[Tensor]:
    """Parameters and buffers of ``objs`` and of the modules they hold as plain attributes (AttentiveMix+'s
    teacher is outside the module tree)."""
    modules = [o for o in objs if isinstance(o, nn.Module)]
    for o in objs:
        for v in vars(o).values():
            inner = [getattr(v, f.name) for f in dataclasses.fields(v)] if dataclasses.is_dataclass(v) else [v]
            modules += [m for m in inner if isinstance(m, nn.Module)]
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def _bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


def _probe_config(cfg: RunConfig, batch: int) -> RunConfig:
    """``cfg`` as measured: on the CPU, eager, at ``batch``, bf16 unless the run asks for fp32 (CUDA's "auto")."""
    args = dict(cfg.method_args)
    if cfg.method == "attentivemix" and args.get("teacher_weights") is None:
        args["teacher_weights"] = str(_random_teacher())  # an ImageNet R-18's cost; no download
    return dataclasses.replace(cfg, device="cpu", compile="off", batch_size=batch, method_args=args,
                               bn_groups=cfg.batchnorm_groups, precision="fp32" if cfg.precision == "fp32" else "bf16")


def _measure_step(cfg: RunConfig) -> dict[str, Any]:
    """Saved bytes of one training step (mix, forwards, loss) at each of ``PROBE_BATCHES``, and the weights and
    trainable bytes, on the CPU."""
    from mixnb.mixups import StepContext
    from mixnb.train import build_parts

    _, _, classes = _dataset(cfg.profile)
    out: dict[str, Any] = {"saved": [], "largest": []}
    with torch.random.fork_rng(devices=[]):
        model, method, optimizer, autocast = build_parts(_probe_config(cfg, max(PROBE_BATCHES)), torch.device("cpu"),
                                                         num_classes=classes, run_dir=None)
        state = _state_tensors(model, method)
        gen = torch.Generator().manual_seed(0)
        ctx = StepContext(gen=gen, cpu_gen=torch.Generator().manual_seed(0), total_steps=10**6)
        for b in PROBE_BATCHES:
            x = torch.randn(b, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)  # (B, 3, H, W) as the loader gives it
            y = torch.randint(classes, (b,), generator=gen)
            saved = SavedTensors(state, batch=b)
            with saved.hooks(), autocast:
                method.training_step(model, x, y, ctx)  # its graph is dropped here: only the peak is kept
            out["saved"].append(saved.peak)
            out["largest"].append(saved.largest)
    trainable = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    return {**out, "weights": _bytes(state), "trainable": _bytes(trainable)}


def _measure_attack(cfg: RunConfig) -> dict[str, Any]:
    """Saved bytes of one attack pass (fp32, eval mode, input gradient) at each of ``PROBE_BATCHES``, on the meta
    device (the plain model reads no values)."""
    from mixnb.analysis.attacks import input_grad
    from mixnb.models import build_model

    _, _, classes = _dataset(cfg.profile)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.backbone, num_classes=classes, width=cfg.model_width).to("meta").eval()
    state = _state_tensors(model)
    out: dict[str, Any] = {"saved": [], "largest": [], "weights": _bytes(state)}
    for b in PROBE_BATCHES:
        x, y = torch.empty(b, 3, IMAGE_SIZE, IMAGE_SIZE, device="meta"), torch.empty(b, dtype=torch.long, device="meta")
        saved = SavedTensors(state, batch=b)
        with saved.hooks():
            input_grad(model, x, y)
        out["saved"].append(saved.peak)
        out["largest"].append(saved.largest)
    return out


def _random_teacher() -> Any:
    """A random-init torchvision ResNet-18 state_dict in the cache: the ImageNet teacher's size."""
    from mixnb.bench import random_teacher

    folder = cache_dir() / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    return random_teacher(folder)


# ----------------------------------------------------------------------------- cache
def _step_key(cfg: RunConfig) -> dict[str, Any]:
    # every resolved setting, not only the overrides: a changed registry default (the MixBlock's q/k BN) re-measures
    return {"kind": "step", "method": cfg.method, "method_args": cfg.full_method_args(), "backbone": cfg.backbone,
            "width": cfg.model_width, "bn_groups": cfg.batchnorm_groups, "classes": _dataset(cfg.profile)[2],
            "precision": "fp32" if cfg.precision == "fp32" else "bf16", **_common()}


def _attack_key(cfg: RunConfig) -> dict[str, Any]:
    return {"kind": "attack", "backbone": cfg.backbone, "width": cfg.model_width, "classes": _dataset(cfg.profile)[2],
            "precision": "fp32", **_common()}


def _common() -> dict[str, Any]:
    return {"image_size": IMAGE_SIZE, "probe_batches": list(PROBE_BATCHES), "torch": torch.__version__,
            "version": CACHE_VERSION}


_MEMO: dict[str, dict[str, Any]] = {}


def _measured(key: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The measurement of ``key``: from this process, else the cache file, else ``measure()`` (then cached)."""
    key = json.loads(json.dumps(key, sort_keys=True))  # as the file holds it (tuples -> lists)
    name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if name not in _MEMO:
        path = cache_dir() / "memory" / f"{key['kind']}-{name}.json"
        try:
            record = read_json(path)
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or record.get("key") != key:
            record = {"key": key, **measure()}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, record)
        _MEMO[name] = record
    return _MEMO[name]
