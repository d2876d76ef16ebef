"""Beyond top-1: calibration, FGSM/PGD, occlusion, corruptions, CAM localisation and FLOPs of a finished run.

``analyze_run(run_dir)`` rebuilds a finished run's model and method from its checkpoint (weights only),
evaluates it on its own val set on the run's device, writes ``run_dir/analysis.json`` atomically and
returns it. The file is keyed on the checkpoint's sha256 and the settings: a second call skips, a
retrained run is analysed again, ``force=True`` always re-runs. Facts and constants: analysis.md
(``/work/shared/spec/analysis.md``; sections cited as §n), written to avoid the reference tools' bugs (§7).

What each number is (``definitions()`` gives the same, one line each, for the report):
- Calibration (§1): softmax of the reported head; ECE / MCE over 15 equal-width, right-closed confidence
  bins ((m-1)/15, m/15], NLL, Brier (summed over classes, averaged over images), and the reliability bins.
  OpenMixup's ECE sorts the bins' accuracies and confidences before pairing them (§1 "Bug"); not done here.
- FGSM and PGD-10 (§2): pixel-space attacks at eps = 8/255 through the run's normalisation (ImageNet mean
  and std, as every run trains), clamped to [0, 1]; PGD: step 2/255, 10 steps, uniform random start,
  projection onto the eps-box around the clean image. The model is in eval mode (BN running statistics).
- Occlusion (§3): a seeded random order of the 64 8x8 patches of each 64 px image; at fraction r the first
  round(64 r) patches are set to 0 in the normalised input (the mean colour, as OpenMixup does); top-1 at
  r = 0, 0.1, ..., 0.9 and the trapezoid area under that curve divided by the range (0.9): a mean accuracy.
- Corruptions (§4): generated from the val set with Tiny-ImageNet-C's 64-px constants
  (hendrycks/robustness ``make_tinyimagenet_c.py``; §4.2), each image floored to uint8 and JPEG-coded at
  quality 85 as the release is; seeded, generated once per dataset on the CPU and cached. Not the official
  release (whose sources are ImageNet val crops, §4.1). 16 of the 19 are made; motion blur and snow need
  ImageMagick (skipped, with the reason), frost needs the reference's pictures (``$MIXNB_FROST``). With
  ``$MIXNB_TINC`` set to an official ``Tiny-ImageNet-C`` folder its per-corruption, per-severity top-1 is
  reported too (mCE against a reference run: ``mce_table``).
- Localisation (§5): Grad-CAM at layer4 (8x8 at 64 px) for the ground-truth class, bilinear to 64x64,
  min-max normalised; the box of the largest 8-connected region of pixels >= 0.2 of the map's maximum (the
  CAM paper's rule); top-1 loc = top-1 correct and IoU >= 0.5 with the val box, both boxes inclusive pixels
  and the intersection clamped at 0 (Co-Mixup's IoU does not clamp, §5). GT-known loc = IoU >= 0.5 alone.
- FLOPs (§6): ``torch.utils.flop_counter.FlopCounterMode`` (2 x MACs; convs and matmuls only) of one
  training step of the method (its ``training_step`` + backward, on a batch of the run's batch size),
  and of one 64 px image's forward.

Cost (2-core CPU VM, sample profile: 10 classes, 300 val images, a width-8 ResNet-18; cost.seconds of each
run): 2.6-3.3 s per run with 2 threads on a quiet machine, 4.6-7.0 s with 1 thread; with another job busy
on the VM, 1 thread stays at ~5-9 s while 2 threads took 33 s (OpenMP threads waiting on each other), hence
``--threads``. The first run in a process adds ~1.2 s of imports; the corrupted set is generated once per
dataset (1.0 s for the sample profile's 30 images x 16 corruptions x 3 severities; ~11 ms per image and
severity for all 16 on one core, so ~2 min for tiny-imagenet's 2,000 x 5). Every pass runs in batches on
the run's device with the data already there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.config import (
    PROFILES,
    RunConfig,
    default_cache_dir,
    resolve_device,
    resolve_precision,
)
from mixnb.data import DeviceLoader, normalize
from mixnb.io import atomic_torch_save, read_json, remove_stale_temps, write_json
from mixnb.runs import CHECKPOINT, failure, is_finished

ANALYSIS = "analysis.json"
VERSION = 1  # bump when a number's definition changes: every run is analysed again
TINC_ENV = "MIXNB_TINC"  # an official Tiny-ImageNet-C folder: <corruption>/<severity>/<wnid>/<image>
FROST_ENV = "MIXNB_FROST"  # a folder holding hendrycks/robustness's frost1.png ... frost5.jpg (create_c/)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class AnalysisSettings:
    """Everything that changes an analysis' numbers (the cache key holds all of it).

    Args:
        batch_size: images per forward pass (no effect on the numbers beyond float reassociation).
        n_bins: equal-width confidence bins of ECE / MCE and the reliability diagram (Guo et al.: 15).
        attack_images: val images attacked (a seeded subset), None = all.
        eps: L-inf radius in pixel units (0..1) of FGSM and PGD.
        pgd_step: PGD step in pixel units; pgd_steps: iterations; pgd_restarts: random starts (an image
            counts as robust only if it resists all of them).
        occlusion_patch: side of the square patches, px; occlusion_fractions: shares of patches zeroed;
            occlusion_images: val images occluded (a seeded subset), None = all.
        corruptions: names in ``CORRUPTIONS`` to generate (those that cannot be made are skipped with
            the reason); corruption_severities: 1..5; corruption_images: val images corrupted (a seeded
            subset), None = all.
        cam_threshold: share of the CAM's maximum kept for the box; iou_threshold: IoU for a hit.
        gallery_images: CAM maps kept for the gallery (one val image of each of the first n classes).
        flops: count the FLOPs of a training step (off: None in the file).
        seed: seeds every draw (subsets, PGD starts, occlusion orders, corruptions).
    """

    batch_size: int = 1000
    n_bins: int = 15
    attack_images: int | None = None
    eps: float = 8 / 255
    pgd_step: float = 2 / 255
    pgd_steps: int = 10
    pgd_restarts: int = 1
    occlusion_patch: int = 8
    occlusion_fractions: tuple[float, ...] = tuple(i / 10 for i in range(10))
    occlusion_images: int | None = None
    corruptions: tuple[str, ...] = ()  # filled in __post_init__: all of CORRUPTIONS
    corruption_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_images: int | None = None
    cam_threshold: float = 0.2
    iou_threshold: float = 0.5
    gallery_images: int = 8
    flops: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.corruptions:
            object.__setattr__(self, "corruptions", tuple(CORRUPTIONS))
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption(s) {unknown}; valid: {', '.join(CORRUPTIONS)}")
        if not set(self.corruption_severities) <= {1, 2, 3, 4, 5} or not self.corruption_severities:
            raise ValueError(f"corruption_severities must be a non-empty subset of 1..5, got {self.corruption_severities}")
        for name in ("batch_size", "n_bins", "pgd_steps", "pgd_restarts", "occlusion_patch", "gallery_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("attack_images", "occlusion_images", "corruption_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {getattr(self, name)}")
        if not all(0 <= r < 1 for r in self.occlusion_fractions) or sorted(self.occlusion_fractions) != list(
                self.occlusion_fractions) or len(self.occlusion_fractions) < 2:
            raise ValueError(f"occlusion_fractions must rise within [0, 1), at least 2, got {self.occlusion_fractions}")
        for name in ("eps", "pgd_step", "cam_threshold", "iou_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def key(self) -> str:
        """sha1 of every setting except batch_size (which changes no number)."""
        values = {k: v for k, v in self.to_dict().items() if k != "batch_size"}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()


def settings_for(profile: str) -> AnalysisSettings:
    """The settings of a profile (``PROFILE_SETTINGS``); unknown profiles fail with the valid ones."""
    if profile not in PROFILE_SETTINGS:
        raise ValueError(f"no analysis settings for profile {profile!r}; valid: {', '.join(PROFILE_SETTINGS)}")
    return PROFILE_SETTINGS[profile]


# ----------------------------------------------------------------------------- the run
# The normalisation every run trains with: fit's DeviceLoader uses its defaults (ImageNet mean and std),
# read from the loader itself so that a change there reaches the attacks (§2: OpenMixup's default 'cifar'
# statistics give a pixel eps of ~9/255 on Tiny-ImageNet).
_LOADER = inspect.signature(DeviceLoader).parameters
MEAN, STD = tuple(_LOADER["mean"].default), tuple(_LOADER["std"].default)


@dataclass
class Run:
    """A finished run rebuilt for evaluation: model and method in eval mode on ``device``."""

    run_dir: Path
    cfg: RunConfig
    ckpt: dict[str, Any]
    data: Any  # TinyImageNetTensors
    model: nn.Module
    method: Any  # MixMethod
    device: torch.device
    head: str  # how the reported head is computed
    logits: Callable[[Tensor], Tensor]  # normalised (N, 3, H, W) -> (N, K) logits of the reported head
    setup_error: str | None = None


def load_run(run_dir: str | Path, device: str = "auto") -> Run:
    """Model + method of ``run_dir``'s checkpoint (``weights_only``) on ``device``, in eval mode, and its data."""
    from mixnb.mixups import get_method
    from mixnb.models import build_model
    from mixnb.train import load_checkpoint, load_data

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, "cpu")
    if ckpt is None:
        raise FileNotFoundError(f"{path} not found: nothing to analyse (a run folder keeps its last checkpoint "
                                f"unless it was deleted to save space)")
    try:
        cfg = RunConfig.from_dict({**ckpt["config"], "device": str(dev)})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its config cannot be read by this mixnb ({err})") from None
    data = load_data(cfg)
    trained_on = ckpt.get("identity", {}).get("dataset", {}).get("manifest_key")
    if trained_on is not None and trained_on != data.manifest_key:
        raise ValueError(f"{path} was trained on another version of the dataset at {data.root} (manifest key "
                         f"{trained_on[:12]}, now {data.manifest_key[:12]}); analyse it with the data it trained on")
    model = build_model(cfg.backbone, num_classes=len(data.wnids), width=cfg.model_width)
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})  # compile prefix
    model = model.to(dev, memory_format=_layout(dev)).eval()
    method, setup_error = get_method(cfg.method, **cfg.method_args), None
    try:
        method.setup(model, cfg=cfg, run_dir=run_dir)
        method.load_state_dict(ckpt["method"])
    except (FileNotFoundError, RuntimeError) as err:  # AttentiveMix+ without its teacher: evaluation needs none
        method, setup_error = get_method(cfg.method, **cfg.method_args), f"{type(err).__name__}: {err}"
    method = method.to(dev).eval()
    run = Run(run_dir, cfg, ckpt, data, model, method, dev, "", model, setup_error)
    run.head, run.logits = _reported_head(run)
    return run


def _reported_head(run: Run) -> tuple[str, Callable[[Tensor], Tensor]]:
    """The logits the run reports (``eval_logits``'s "" head). Every method's is ``model(x)`` today (AutoMix:
    its backbone's fc), checked here on 8 val images; a method whose head differs is evaluated through
    ``eval_logits`` (all its heads computed, the "" one kept)."""
    x = _normalise(run.data.x_val[:8].to(run.device).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        own = run.method.eval_logits(run.model, x)[""]
        if torch.allclose(own, run.model(x), rtol=1e-4, atol=1e-5):
            return "model(x), equal to the method's reported head", run.model
    return "method.eval_logits(model, x)[''] (not model(x))", lambda x: run.method.eval_logits(run.model, x)[""]


def _layout(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (as training: +20-50% for convs); the default on the CPU, where torch 2.14's conv
    backward crashed on channels_last in train mode here (a double free) and was no faster."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _normalise(x: Tensor) -> Tensor:
    """(N, 3, H, W) pixels in [0, 1] -> the model's input (the run's mean/std) in the device's layout."""
    return normalize(x * 255, MEAN, STD).contiguous(memory_format=_layout(x.device))


def _images(x_uint8: Tensor, device: torch.device) -> Tensor:
    """(N, H, W, 3) uint8 (the data's layout) -> (N, 3, H, W) uint8 on ``device``, moved once."""
    return x_uint8.to(device).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(logits: Callable[[Tensor], Tensor], x: Tensor, *, batch_size: int) -> Tensor:
    """(N, K) float32 logits of (N, 3, H, W) uint8 or [0, 1] float images, ``batch_size`` at a time."""
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb
        out.append(logits(_normalise(xb)).float())
    return torch.cat(out)


def _subset(n: int, k: int | None, seed: int, stream: str) -> Tensor:
    """(k,) sorted int64 indices: a seeded subset of range(n) (all of it when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(_seed(seed, stream))
    return torch.randperm(n, generator=gen)[:k].sort().values


def _seed(seed: int, *parts: Any) -> int:
    """A 32-bit seed for one stream: distinct parts give unrelated seeds (as mixnb.train.stream_seed)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------- calibration (§1)
def reliability_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per equal-width bin ((m-1)/M, m/M] (right-closed, §1): mean confidence, accuracy (0 when empty), count."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=confidence.device)
    idx = torch.bucketize(confidence.double(), edges[1:-1], right=False)  # (N,) in 0..M-1; c = m/M -> bin m
    count = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(
        0, idx, torch.ones_like(confidence, dtype=torch.float64))
    conf = torch.zeros_like(count).index_add_(0, idx, confidence.double())
    acc = torch.zeros_like(count).index_add_(0, idx, correct.double())
    return {"lo": edges[:-1], "hi": edges[1:], "count": count,
            "confidence": conf / count.clamp(min=1), "accuracy": acc / count.clamp(min=1)}


def calibration(logits: Tensor, y: Tensor, *, n_bins: int = 15) -> dict[str, Any]:
    """ECE, MCE (both in %, over ``n_bins`` equal-width bins), NLL (nats), Brier and the reliability bins.

    ECE = sum_m |B_m|/N |acc_m - conf_m|; MCE = max_m |acc_m - conf_m| (empty bins: 0), as torchmetrics'
    multiclass_calibration_error (l1 / max); Brier = mean over images of sum over classes (p - onehot)^2 (not
    divided by the class count). Computed in float64 from float32 logits."""
    logits = logits.double()
    p = logits.softmax(dim=1)  # (N, K)
    conf, pred = p.max(dim=1)
    correct = pred == y
    bins = reliability_bins(conf, correct, n_bins)
    gap = (bins["accuracy"] - bins["confidence"]).abs()
    n = len(y)
    onehot = F.one_hot(y, p.shape[1]).double()
    return {
        "n_bins": n_bins,
        "bin_rule": "equal-width, right-closed ((m-1)/M, m/M]",
        "ece": 100 * float((bins["count"] / n * gap).sum()),
        "mce": 100 * float(gap.max()),
        "nll": float(F.cross_entropy(logits, y)),
        "brier": float(((p - onehot) ** 2).sum(dim=1).mean()),
        "top1": 100 * float(correct.double().mean()),
        "mean_confidence": 100 * float(conf.mean()),
        "bins": [{"lo": float(lo), "hi": float(hi), "confidence": float(c), "accuracy": float(a), "count": int(k)}
                 for lo, hi, c, a, k in zip(*(bins[f].tolist() for f in ("lo", "hi", "confidence", "accuracy",
                                                                            "count")))],
    }


# ----------------------------------------------------------------------------- FGSM / PGD (§2)
def _input_grad(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """d CE(f(normalise(x)), y) / dx for pixels x in [0, 1] (summed CE: each image's own gradient)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(logits(_normalise(x)).float(), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def fgsm(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: float = 8 / 255) -> Tensor:
    """x + eps sign(grad), clamped to [0, 1]; x: (N, 3, H, W) pixels in [0, 1] (§2, the standard form)."""
    return (x + eps * _input_grad(logits, x, y).sign()).clamp(0, 1).detach()


def pgd(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: float = 8 / 255, step: float = 2 / 255,
        steps: int = 10, gen: torch.Generator) -> Tensor:
    """Untargeted L-inf PGD in pixel space (§2 "standard"): x0 = clamp(x + U(-eps, eps), 0, 1), then ``steps``
    times x <- clamp(min(max(x + step sign(grad), x - eps), x + eps), 0, 1). The clean centre is fixed
    (OpenMixup's re-de-normalised centre collapses images to a flat colour, §2 bug 3)."""
    u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x_adv = (x + (2 * u - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv + step * _input_grad(logits, x_adv, y).sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


def adversarial(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, s: AnalysisSettings) -> dict[str, Any]:
    """Top-1 (%) on clean, FGSM and PGD images of (N, 3, H, W) uint8 ``x``, in batches; PGD over restarts."""
    gen = torch.Generator(x.device).manual_seed(_seed(s.seed, "pgd"))
    hits = {"clean": 0, "fgsm": 0, "pgd": 0}
    for i in range(0, len(x), s.batch_size):
        xb, yb = x[i:i + s.batch_size].float() / 255, y[i:i + s.batch_size]
        with torch.no_grad():
            hits["clean"] += int((logits(_normalise(xb)).argmax(1) == yb).sum())
        x_adv = fgsm(logits, xb, yb, eps=s.eps)
        with torch.no_grad():
            hits["fgsm"] += int((logits(_normalise(x_adv)).argmax(1) == yb).sum())
        robust = torch.ones_like(yb, dtype=torch.bool)
        for _ in range(s.pgd_restarts):
            x_adv = pgd(logits, xb, yb, eps=s.eps, step=s.pgd_step, steps=s.pgd_steps, gen=gen)
            with torch.no_grad():
                robust &= logits(_normalise(x_adv)).argmax(1) == yb
        hits["pgd"] += int(robust.sum())
    n = len(x)
    return {"images": n, "eps": s.eps, "eps_255": s.eps * 255, "clean_top1": 100 * hits["clean"] / n,
            "fgsm_top1": 100 * hits["fgsm"] / n, "pgd_top1": 100 * hits["pgd"] / n,
            "pgd": {"step": s.pgd_step, "steps": s.pgd_steps, "restarts": s.pgd_restarts, "random_start": True},
            "space": f"pixels in [0, 1], normalised inside the model with mean {MEAN} std {STD}"}


# ----------------------------------------------------------------------------- occlusion (§3)
def occlusion_masks(n: int, size: int, patch: int, fractions: Sequence[float], *, gen: torch.Generator) -> Tensor:
    """(F, N, 1, size / patch, size / patch) bool, True = zeroed patch: each image's patches in one seeded random
    order, the first round(P r) of them at fraction r (so each fraction's patches include the previous one's)."""
    side = size // patch
    p = side * side  # 64 patches of 8x8 at 64 px (§3: OpenMixup's 224 // drop_size fails at 64 px)
    rank = torch.rand(n, p, generator=gen, device=gen.device).argsort(dim=1).argsort(dim=1)  # (N, P) place of each patch
    k = torch.tensor([round(p * r) for r in fractions], device=gen.device)  # (F,)
    return (rank[None] < k[:, None, None]).view(len(fractions), n, 1, side, side)


def patch_mask(mask: Tensor, patch: int) -> Tensor:
    """(..., h, w) patch mask -> (..., h patch, w patch) pixel mask."""
    return mask.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)


def occlusion(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, s: AnalysisSettings) -> dict[str, Any]:
    """Top-1 (%) at each occlusion fraction of (N, 3, H, W) uint8 ``x`` and the normalised area under the curve."""
    gen = torch.Generator(x.device).manual_seed(_seed(s.seed, "occlusion"))
    masks = occlusion_masks(len(x), x.shape[-1], s.occlusion_patch, s.occlusion_fractions, gen=gen)
    top1 = []
    for mask in masks:  # one fraction at a time (10 of them), each in batches
        hits = 0
        for i in range(0, len(x), s.batch_size):
            with torch.no_grad():
                xb = _normalise(x[i:i + s.batch_size].float() / 255)
                xb = xb.masked_fill(patch_mask(mask[i:i + s.batch_size], s.occlusion_patch), 0.0)  # the mean colour
                hits += int((logits(xb).argmax(1) == y[i:i + s.batch_size]).sum())
        top1.append(100 * hits / len(x))
    return {"patch": s.occlusion_patch, "patches": (x.shape[-1] // s.occlusion_patch) ** 2,
            "fractions": list(s.occlusion_fractions), "top1": top1, "auc": curve_auc(s.occlusion_fractions, top1),
            "fill": "0 in the normalised input (the training mean colour)", "images": len(x)}


def curve_auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoid area under ys(xs) divided by the xs range: a mean of ys (in ys' units)."""
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])


# ----------------------------------------------------------------------------- corruptions (§4)
# Each corruption takes (N, 3, 64, 64) uint8 on the CPU, one severity's constants and a generator, and
# returns floats in 0..255 (the reference's `np.clip(x, 0, 1) * 255`) or uint8. Written batched in torch
# from hendrycks/robustness make_tinyimagenet_c.py (8190fe3); each agrees with its reference op up to float
# rounding (tests/test_analysis.py checks the ones with a library twin). The random streams are torch's,
# so a regenerated set is not bit-identical to the release (whose NumPy RNG was unseeded anyway, §4.1).
def _f(x: Tensor) -> Tensor:
    return x.float() / 255  # (N, 3, H, W) in [0, 1]


def _out(x: Tensor) -> Tensor:
    return x.clamp(0, 1) * 255


def _pad_index(n: int, r: int, mode: str, device: torch.device) -> Tensor:
    """(n + 2r,) source indices of a padded axis: 'nearest' (edge) or 'reflect' (scipy's: d c b a | a b c d)."""
    i = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    i = i % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur2d(x: Tensor, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes (skimage.filters.gaussian with channel_axis):
    radius int(truncate sigma + 0.5), borders 'nearest' or 'reflect'; (..., H, W) float."""
    if sigma <= 0:
        return x
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * t**2 / sigma**2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    shape = x.shape
    h, w = shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = y.index_select(2, _pad_index(h, r, mode, x.device)).index_select(3, _pad_index(w, r, mode, x.device))
    y = F.conv2d(F.conv2d(y, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))
    return y.reshape(shape)


def gaussian_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    return _out(x + c * torch.randn(x.shape, generator=gen))


def shot_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    return _out(torch.poisson(_f(x) * c, generator=gen) / c)


def impulse_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    """skimage random_noise 's&p': each value flipped with probability c, to 1 or 0 with equal chance."""
    x = _f(x)
    flipped = torch.rand(x.shape, generator=gen) < c
    salted = torch.rand(x.shape, generator=gen) < 0.5
    return _out(torch.where(flipped, salted.float(), x))


def speckle_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    return _out(x + x * c * torch.randn(x.shape, generator=gen))


def gaussian_blur(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    return _out(gaussian_blur2d(_f(x), c))


def glass_blur(x: Tensor, c: tuple[float, int, int], *, gen: torch.Generator) -> Tensor:
    """Blur, floor to uint8, copy a random neighbour into each interior pixel (``glass_blur_apply``), blur again."""
    _, d, iterations = c
    n, _, h, w = x.shape
    offsets = torch.randint(-d, d, (iterations, len(glass_positions(h, w, d)), n, 2), generator=gen)
    return glass_blur_apply(x, c, offsets)


def glass_positions(h: int, w: int, d: int) -> list[tuple[int, int]]:
    """The reference's swap order: rows, then columns, from 64 - d down to d + 1."""
    return [(i, j) for i in range(h - d, d, -1) for j in range(w - d, d, -1)]


def glass_blur_apply(x: Tensor, c: tuple[float, int, int], offsets: Tensor) -> Tensor:
    """Glass blur of (N, 3, H, W) uint8 with drawn ``offsets`` (iterations, positions, N, [dx, dy]) in
    [-d, d) (randint's upper bound is exclusive, so never +d). The reference's "swap"
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` pairs two NumPy views, so its second assignment reads the pixel
    the first one overwrote: it copies the neighbour into (h, w) and leaves the neighbour as it was. The
    release was made so, and so is this. The copies chain, so the positions stay a loop, batched over images."""
    sigma, d, iterations = c
    x = (gaussian_blur2d(_f(x), sigma) * 255).floor().clamp(0, 255)  # np.uint8(... * 255)
    rows = torch.arange(x.shape[0])
    pos = glass_positions(x.shape[2], x.shape[3], d)
    for it in range(iterations):
        for (i, j), off in zip(pos, offsets[it]):
            x[:, :, i, j] = x[rows, :, i + off[:, 1], j + off[:, 0]]  # (N, 3): h' = h + dy, w' = w + dx
    return _out(gaussian_blur2d(x / 255, sigma))


def _disk(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk kernel (17x17 up to radius 8), made with OpenCV as there."""
    import cv2

    size, ksize = (8, (3, 3)) if radius <= 8 else (int(radius), (5, 5))
    t = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    return torch.from_numpy(cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur))


def defocus_blur(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    k = _disk(*c)
    r = k.shape[-1] // 2
    x = _f(x)
    y = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (r, r, r, r), mode="reflect")  # cv2.filter2D: BORDER_REFLECT_101
    return _out(F.conv2d(y, k[None, None]).reshape(x.shape))


def _clipped_zoom(x: Tensor, z: float) -> Tensor:
    """The reference's clipped_zoom: the centre ceil(h / z) crop, scipy zoom order 1 (= bilinear with
    align_corners, size round(ch z)), trimmed back to h."""
    h = x.shape[-1]
    ch = math.ceil(h / z)
    top = (h - ch) // 2
    out = round(ch * z)
    y = F.interpolate(x[..., top:top + ch, top:top + ch], size=(out, out), mode="bilinear", align_corners=True)
    trim = (out - h) // 2
    return y[..., trim:trim + h, trim:trim + h]


def zoom_blur(x: Tensor, c: np.ndarray, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    out = sum(_clipped_zoom(x, float(z)) for z in c)
    return _out((x + out) / (len(c) + 1))


def plasma_fractal(n: int, *, mapsize: int = 64, wibbledecay: float = 3, gen: torch.Generator) -> Tensor:
    """(N, mapsize, mapsize) float64 in [0, 1]: the reference's diamond-square height maps, one per image."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a: Tensor) -> Tensor:
        return a / 4 + wibble * (torch.rand(a.shape, generator=gen, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbled_mean(square)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled_mean(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def fog(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    plasma = plasma_fractal(len(x), mapsize=64, wibbledecay=c[1], gen=gen)[:, None, :x.shape[-2], :x.shape[-1]]
    return _out((x + c[0] * plasma.float()) * max_val / (max_val + c[0]))


def frost(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    """c0 x + c1 frost, the frost a random 64x64 crop of one of 5 pictures (randint(5): frost6 never used)
    scaled x0.3 (cv2.resize, bilinear); the pictures come from ``$MIXNB_FROST``."""
    pics = _frost_pictures()
    n, _, h, w = x.shape
    pick = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty(n, h, w, 3)
    for i, pic in enumerate(pics):
        rows = (pick == i).nonzero().flatten()
        top = torch.randint(0, pic.shape[0] - h, (len(rows),), generator=gen)
        left = torch.randint(0, pic.shape[1] - w, (len(rows),), generator=gen)
        r = top[:, None, None] + torch.arange(h)[None, :, None]  # (n_i, h, 1)
        s = left[:, None, None] + torch.arange(w)[None, None, :]  # (n_i, 1, w)
        out[rows] = pic[r, s]
    return (c[0] * x.float() + c[1] * out.permute(0, 3, 1, 2)).clamp(0, 255)


def _frost_files() -> list[Path] | None:
    folder = os.environ.get(FROST_ENV)
    if not folder:
        return None
    files = [Path(folder) / f for f in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{FROST_ENV}={folder} lacks {', '.join(missing)} (hendrycks/robustness "
                                f"ImageNet-C/create_c/ holds them)")
    return files


def _frost_pictures() -> list[Tensor]:
    """The 5 frost pictures, x0.3 as the reference resizes them, RGB float (h, w, 3)."""
    import cv2

    files = _frost_files()
    if files is None:
        raise FileNotFoundError(f"frost needs its pictures: set {FROST_ENV}")
    pics = []
    for f in files:
        bgr = cv2.imread(str(f))
        if bgr is None:
            raise OSError(f"{f} cannot be read as an image")
        pics.append(torch.from_numpy(cv2.resize(bgr, (0, 0), fx=0.3, fy=0.3)[..., ::-1].copy()).float())
    return pics


def rgb_to_hsv(x: Tensor) -> Tensor:
    """skimage.color.rgb2hsv over dim 1 of (N, 3, H, W) in [0, 1] (hue in [0, 1); later max channels win)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2 + (b - r) / safe, h)
    h = torch.where(b == v, 4 + (r - g) / safe, h)
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6) % 1)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """skimage.color.hsv2rgb over dim 1 of (N, 3, H, W)."""
    h, s, v = x.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long() % 6
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table.gather(0, hi[None, :, None].expand(1, -1, 3, *hi.shape[1:]))[0]


def brightness(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(_f(x))
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return _out(hsv_to_rgb(hsv))


def saturate(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(_f(x))
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return _out(hsv_to_rgb(hsv))


def contrast(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as np.mean(x, axis=(0, 1))
    return _out((x - mean) * c + mean)


def jpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """(N, 3, H, W) uint8 through libjpeg at ``quality`` (torchvision.io; 4:2:0 as PIL's default)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    return torch.stack(decode_jpeg(encode_jpeg([im.contiguous() for im in x], quality=quality)))


def jpeg_compression(x: Tensor, c: int, *, gen: torch.Generator) -> Tensor:
    return jpeg_round_trip(x, c)


def _box_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) float64 weights of Pillow's BOX resampling along one axis (Resample.c precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            a[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        a[o] /= a[o].sum()
    return a


def pil_box_resize(x: Tensor, size: int) -> Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8 as Pillow's resize(BOX): the horizontal pass, rounded
    to uint8, then the vertical one (Pillow rounds its 22-bit fixed-point sums; here float64, within 1 level)."""
    aw = _box_matrix(x.shape[-1], size)
    ah = _box_matrix(x.shape[-2], size)
    y = torch.floor(x.double() @ aw.T + 0.5).clamp(0, 255)
    return torch.floor(ah @ y + 0.5).clamp(0, 255).to(torch.uint8)


def pixelate(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    h = x.shape[-1]
    return pil_box_resize(pil_box_resize(x, int(h * c)), h)


def elastic_transform(x: Tensor, c: tuple[float, float, float], *, gen: torch.Generator) -> Tensor:
    """A random affine, then a smoothed random displacement field (``elastic_apply``)."""
    n, _, h, w = x.shape
    shift = torch.rand(n, 3, 2, generator=gen, dtype=torch.float64) * 2 - 1  # the 3 points' moves / c2
    noise = torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64) * 2 - 1  # dx, dy fields before smoothing
    return elastic_apply(x, c, shift, noise)


def elastic_apply(x: Tensor, c: tuple[float, float, float], shift: Tensor, noise: Tensor) -> Tensor:
    """Elastic transform of (N, 3, H, W) uint8 with drawn ``shift`` (N, 3, 2) and ``noise`` (N, 2, H, W), both
    U(-1, 1): the 3 points (53, 53), (53, 11), (11, 11) moved by c2 shift (cv2.getAffineTransform), the image
    warped (cv2.warpAffine bilinear, BORDER_REFLECT_101 = grid_sample 'reflection' with align_corners), then
    displaced by the noise smoothed by a Gaussian of sigma c1 (scipy 'reflect', truncate 3) times c0 and
    sampled bilinearly with scipy's 'reflect' border (= grid_sample 'reflection' without align_corners)."""
    alpha, sigma, move = c
    x = _f(x)
    n, _, h, w = x.shape
    centre, side = torch.tensor([h // 2, w // 2], dtype=torch.float64), min(h, w) // 3
    pts1 = torch.stack([centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side])  # (3, 2) x, y
    pts2 = pts1 + shift * move  # (N, 3, 2)
    src = torch.cat([pts1, torch.ones(3, 1, dtype=torch.float64)], 1)  # (3, 3)
    m = torch.linalg.solve(src, pts2).transpose(1, 2)  # (N, 2, 3): pts2 = M [pts1; 1]
    full = torch.cat([m, torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(n, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2]  # (N, 2, 3): output pixel -> source pixel (warpAffine inverts M)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pix = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, h * w, 3)  # (1, HW, 3)
    srcxy = (pix @ inv.transpose(1, 2)).view(n, h, w, 2)  # (N, H, W, [x, y]) in pixels
    grid = torch.stack([srcxy[..., 0] / (w - 1), srcxy[..., 1] / (h - 1)], -1) * 2 - 1  # align_corners=True
    x = F.grid_sample(x, grid.float(), mode="bilinear", padding_mode="reflection", align_corners=True)
    dx, dy = (gaussian_blur2d(noise, sigma, mode="reflect", truncate=3) * alpha).float().unbind(1)
    gx = (2 * (xx.float() + dx) + 1) / w - 1  # pixel -> [-1, 1], align_corners=False
    gy = (2 * (yy.float() + dy) + 1) / h - 1
    return _out(F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="reflection",
                              align_corners=False))


def spatter(x: Tensor, c: tuple[float, ...], *, gen: torch.Generator) -> Tensor:
    """Water (c5 = 0: a pale-turquoise liquid layer shaped by Canny edges and a distance transform, OpenCV
    per image: its edge and histogram ops have no batched form; generation only) or mud (c5 = 1: batched)."""
    import cv2

    x = _f(x)
    n, _, h, w = x.shape
    liquid = torch.randn(n, h, w, generator=gen, dtype=torch.float64) * c[1] + c[0]
    liquid = gaussian_blur2d(liquid, c[2])
    liquid = torch.where(liquid < c[3], torch.zeros_like(liquid), liquid)
    if c[5] == 0:
        lq = (torch.floor(liquid * 255).long() & 255).to(torch.uint8).numpy()  # numpy's float -> uint8 cast wraps
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
        m = np.empty((n, h, w), np.float32)
        for i in range(n):
            dist = 255 - cv2.Canny(lq[i], 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
            dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
            m[i] = lq[i] * dist
        mt = torch.from_numpy(m)
        mt = mt / mt.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12) * c[4]
        colour = torch.tensor([175, 238, 238]).view(1, 3, 1, 1) / 255
        return _out(x + mt[:, None] * colour)
    mud = gaussian_blur2d((liquid > c[3]).float(), c[4])
    mud = torch.where(mud < 0.8, torch.zeros_like(mud), mud)[:, None]
    colour = torch.tensor([63, 42, 20]).view(1, 3, 1, 1) / 255
    return _out(x * (1 - mud) + colour * mud)


_ZOOMS = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.01),
          np.arange(1, 1.26, 0.01)]  # the script's aranges: float steps give 1.00..1.06 (7 zooms) at severity 1
_IMAGEMAGICK = ("needs ImageMagick's MagickMotionBlurImage (the reference calls it through Wand), a system "
                "library no Python registry package installs; not re-implemented, so as not to report another "
                "blur under its name")
# name -> (function, per-severity constants s1..s5 (§4.2), common (True) or extra, why it cannot be made or None)
CORRUPTIONS: dict[str, tuple[Callable[..., Tensor] | None, list[Any], bool, str | None]] = {
    "gaussian_noise": (gaussian_noise, [0.04, 0.08, 0.12, 0.15, 0.18], True, None),
    "shot_noise": (shot_noise, [250, 100, 50, 30, 15], True, None),
    "impulse_noise": (impulse_noise, [0.01, 0.02, 0.05, 0.08, 0.14], True, None),
    "defocus_blur": (defocus_blur, [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)], True, None),
    "glass_blur": (glass_blur, [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)], True, None),
    "motion_blur": (None, [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)], True, _IMAGEMAGICK),
    "zoom_blur": (zoom_blur, _ZOOMS, True, None),
    "snow": (None, [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)], True, _IMAGEMAGICK),
    "frost": (frost, [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)], True, None),
    "fog": (fog, [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)], True, None),
    "brightness": (brightness, [0.1, 0.2, 0.3, 0.4, 0.5], True, None),
    "contrast": (contrast, [0.4, 0.3, 0.2, 0.1, 0.05], True, None),
    "elastic_transform": (elastic_transform, [(64 * a, 64 * b, 64 * c) for a, b, c in
                                              ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                                               (0.16, 0.03, 0.02))], True, None),
    "pixelate": (pixelate, [0.9, 0.8, 0.7, 0.6, 0.5], True, None),
    "jpeg_compression": (jpeg_compression, [65, 58, 50, 40, 25], True, None),
    "speckle_noise": (speckle_noise, [0.15, 0.2, 0.25, 0.3, 0.35], False, None),
    "gaussian_blur": (gaussian_blur, [0.5, 0.75, 1, 1.25, 1.5], False, None),
    "spatter": (spatter, [(0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0), (0.65, 0.3, 1, 0.69, 0.6, 0),
                          (0.65, 0.1, 0.7, 0.68, 0.6, 1), (0.65, 0.1, 0.5, 0.67, 0.6, 1)], False, None),
    "saturate": (saturate, [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)], False, None),
}
SAVE_QUALITY = 85  # every Tiny-ImageNet-C image is a JPEG of quality 85 (§4.1)
GEN_CHUNK = 500  # images per generation call: bounds the glass-blur offsets (P x N x 2 int64) to ~60 MB
CORRUPTION_CACHE_VERSION = 1  # bump when a corruption's code changes


def skip_reason(name: str) -> str | None:
    """Why ``name`` cannot be generated here, or None."""
    why = CORRUPTIONS[name][3]
    if why is None and name == "frost" and _frost_files() is None:
        why = (f"needs the reference's frost pictures (frost1.png ... frost5.jpg, hendrycks/robustness "
               f"ImageNet-C/create_c/); the one registry package shipping them (imagecorruptions) requires "
               f"opencv-python, which clashes with opencv-contrib-python-headless here; set {FROST_ENV} to their folder")
    return why


def corrupt(x: Tensor, name: str, severity: int, *, seed: int = 0) -> Tensor:
    """(N, 3, H, W) uint8 -> uint8: corruption ``name`` at ``severity`` (1..5) with the 64-px constants, floored
    to uint8 and JPEG-coded at quality 85 as Tiny-ImageNet-C's images are; seeded per (seed, name, severity)."""
    fn, constants, _, why = CORRUPTIONS[name]
    why = skip_reason(name)
    if why is not None or fn is None:
        raise ValueError(f"{name} cannot be generated: {why}")
    gen = torch.Generator().manual_seed(_seed(seed, "corrupt", name, severity))
    out = []
    for i in range(0, len(x), GEN_CHUNK):
        y = fn(x[i:i + GEN_CHUNK].cpu(), constants[severity - 1], gen=gen)
        if y.dtype != torch.uint8:
            y = y.clamp(0, 255).floor().to(torch.uint8)  # the reference saves np.uint8(img): truncation
        out.append(jpeg_round_trip(y, SAVE_QUALITY))
    return torch.cat(out)


def _corruption_cache_path(data: Any, key: str) -> Path:
    tag = hashlib.sha1(str(data.root).encode()).hexdigest()[:12]
    return default_cache_dir() / f"tinyimagenet-c-generated-{Path(data.root).name}-{tag}-{key[:12]}.pt"


def generated_corruptions(data: Any, s: AnalysisSettings) -> dict[str, Any]:
    """The generated corruption set of ``data``'s val images: {"x": (C, S, K, 3, H, W) uint8, "idx": (K,),
    "names", "severities", "skipped": {name: reason}, "key", "generation_seconds"}; made once on the CPU (the
    same set whatever device analyses; CPU and CUDA generators differ), cached under
    ``mixnb.config.default_cache_dir()`` keyed on the dataset's manifest key, the settings that shape it and
    the frost pictures."""
    names = [c for c in s.corruptions if skip_reason(c) is None]
    skipped = {c: skip_reason(c) for c in s.corruptions if skip_reason(c) is not None}
    idx = _subset(len(data.y_val), s.corruption_images, s.seed, "corruption-images")
    frost = None
    if "frost" in names:
        frost = hashlib.sha1(b"".join(f.read_bytes() for f in _frost_files() or [])).hexdigest()
    key = hashlib.sha1(json.dumps({"manifest": data.manifest_key, "names": names, "severities": s.corruption_severities,
                                   "images": s.corruption_images, "seed": s.seed, "frost": frost,
                                   "version": CORRUPTION_CACHE_VERSION}, sort_keys=True).encode()).hexdigest()
    path = _corruption_cache_path(data, key)
    remove_stale_temps(path)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(blob, dict) and blob.get("key") == key:
                return {**blob, "skipped": skipped, "path": str(path), "cached": True}
        except Exception:  # noqa: BLE001, S110 (a corrupt or foreign file is rebuilt, never trusted)
            pass
    t0 = time.perf_counter()
    x = _images(data.x_val[idx], torch.device("cpu"))  # (K, 3, H, W) uint8
    stack = torch.stack([torch.stack([corrupt(x, c, sev, seed=s.seed) for sev in s.corruption_severities])
                         for c in names]) if names else torch.empty(0, len(s.corruption_severities), *x.shape, dtype=torch.uint8)
    blob = {"key": key, "x": stack, "idx": idx, "names": names, "severities": list(s.corruption_severities),
            "generation_seconds": time.perf_counter() - t0}
    try:
        atomic_torch_save(blob, path)
    except OSError as err:
        warnings.warn(f"could not cache the corrupted val set at {path} ({err}); set MIXNB_CACHE to a writable folder")
    return {**blob, "skipped": skipped, "path": str(path), "cached": False}


def corruption_accuracy(logits: Callable[[Tensor], Tensor], data: Any, s: AnalysisSettings,
                        device: torch.device) -> dict[str, Any]:
    """Top-1 (%) per generated corruption and severity, their mean (common 15 and extras apart), and why
    the missing ones are missing."""
    gen = generated_corruptions(data, s)
    x, names, sevs = gen["x"], gen["names"], gen["severities"]
    y = data.y_val[gen["idx"]].to(device)
    per: dict[str, list[float]] = {}
    if names:
        flat = x.reshape(-1, *x.shape[3:]).to(device)  # (C * S * K, 3, H, W) uint8
        hits = predict(logits, flat, batch_size=s.batch_size).argmax(1).view(len(names), len(sevs), -1) == y
        per = {c: (100 * hits[i].double().mean(1)).tolist() for i, c in enumerate(names)}
    common = [v for c, vs in per.items() if CORRUPTIONS[c][2] for v in vs]
    extra = [v for c, vs in per.items() if not CORRUPTIONS[c][2] for v in vs]
    return {
        "source": ("generated from this dataset's val images with Tiny-ImageNet-C's 64-px constants "
                   "(hendrycks/robustness make_tinyimagenet_c.py), seeded; not the official release"),
        "images": len(gen["idx"]), "severities": sevs, "top1": per,
        "mean_top1": float(np.mean(common + extra)) if per else None,
        "mean_top1_common": float(np.mean(common)) if common else None,
        "mean_top1_extra": float(np.mean(extra)) if extra else None,
        "common": [c for c in names if CORRUPTIONS[c][2]], "extra": [c for c in names if not CORRUPTIONS[c][2]],
        "skipped": gen["skipped"], "cache": gen["path"], "cached": gen["cached"],
        "generation_seconds": gen["generation_seconds"],
    }


def official_corruptions(logits: Callable[[Tensor], Tensor], root: str | Path, data: Any, s: AnalysisSettings,
                         device: torch.device) -> dict[str, Any]:
    """Top-1 (%) on an official Tiny-ImageNet-C folder (``<corruption>/<severity>/<wnid>/<image>``), every
    corruption folder and severity found; labels through this dataset's wnid order (not the folders' sorted
    order, §4.4). Decoded per (corruption, severity), in threads, and evaluated in batches."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{TINC_ENV}={root} is not a folder")
    label = {w: i for i, w in enumerate(data.wnids)}

    def decode(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (64, 64, 3):
            raise ValueError(f"{p} is {a.shape[1]}x{a.shape[0]}, not 64x64: not Tiny-ImageNet-C")
        return a

    per: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
            for sdir in sorted(p for p in cdir.iterdir() if p.is_dir() and p.name in {"1", "2", "3", "4", "5"}):
                files, ys = [], []
                for wdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
                    if wdir.name not in label:
                        raise ValueError(f"{wdir}: wnid {wdir.name} is not one of this dataset's classes")
                    imgs = sorted(f for f in wdir.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
                    files += imgs
                    ys += [label[wdir.name]] * len(imgs)
                if not files:
                    continue
                x = torch.from_numpy(np.stack(list(pool.map(decode, files))))  # (M, 64, 64, 3) uint8
                pred = predict(logits, _images(x, device), batch_size=s.batch_size).argmax(1).cpu()
                per.setdefault(cdir.name, {})[sdir.name] = 100 * float((pred == torch.tensor(ys)).double().mean())
                counts.setdefault(cdir.name, {})[sdir.name] = len(files)
    if not per:
        raise ValueError(f"{root} holds no <corruption>/<severity>/<wnid>/ images: not a Tiny-ImageNet-C folder")
    common = [v for c, d in per.items() if c in CORRUPTIONS and CORRUPTIONS[c][2] for v in d.values()]
    extra = [v for c, d in per.items() if c in CORRUPTIONS and not CORRUPTIONS[c][2] for v in d.values()]
    return {"root": str(root), "top1": per, "images": counts,
            "mean_top1": float(np.mean([v for d in per.values() for v in d.values()])),
            "mean_top1_common": float(np.mean(common)) if common else None,
            "mean_top1_extra": float(np.mean(extra)) if extra else None}


# ----------------------------------------------------------------------------- CAM localisation (§5)
def grad_cam(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (N, K), cam (N, h, w)) of normalised ``x``: Grad-CAM at the last stage (layer4 after its last
    ReLU; 8x8 at 64 px) for class ``target`` (N,): ReLU(sum_k mean_ij(dy_c/dA_k) A_k), min-max normalised per
    image as pytorch-grad-cam does ((cam - min) / (max + 1e-7) after the ReLU)."""
    with torch.no_grad():
        a = model.forward_stages(x)[-1]  # (N, F, h, w); no graph below layer4: the gradient stops there
    with torch.enable_grad():
        a.requires_grad_(True)
        logits = model.forward_head(a)
        g = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)[0]
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()  # (N, h, w)
    cam = cam - cam.flatten(1).amin(1)[:, None, None]
    return logits.detach(), cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-7)


def upsample_cam(cam: Tensor, size: int) -> Tensor:
    """(N, h, w) -> (N, size, size): bilinear, half-pixel centres (cv2.resize INTER_LINEAR, as
    pytorch-grad-cam), then min-max normalised again."""
    up = F.interpolate(cam[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.flatten(1).amin(1)[:, None, None]
    return up / (up.flatten(1).amax(1)[:, None, None] + 1e-7)


def largest_region_boxes(mask: Tensor) -> Tensor:
    """(N, 4) int64 x0, y0, x1, y1 (inclusive) of the largest 8-connected True region of each (N, H, W) mask,
    batched on its device. Each pixel's label starts as its own index; every round it takes the smallest label
    in its 3x3 neighbourhood, then the label its label's pixel holds (pointer jumping: O(log) rounds on a blob
    instead of its diameter), until nothing changes; a region's label is then its first pixel. An empty mask
    gives (0, 0, 0, 0) (Co-Mixup's no-contour box, §5)."""
    n, h, w = mask.shape
    big = h * w  # the background's label: never the smallest
    idx = torch.arange(big, device=mask.device).expand(n, big)
    label = torch.where(mask.flatten(1), idx, big)  # (N, HW) int64
    for _ in range(2 * big):  # a bound never reached: each round merges or stops
        pooled = -F.max_pool2d(-label.view(n, 1, h, w).float(), 3, 1, 1).view(n, big).long()
        new = torch.where(mask.flatten(1), pooled, big)
        padded = torch.cat([new, torch.full((n, 1), big, device=mask.device)], 1)  # index big -> big
        new = torch.minimum(new, padded.gather(1, new))  # jump: a label's own label is in the same region
        if torch.equal(new, label):
            break
        label = new
    size = torch.zeros(n, big + 1, device=mask.device).scatter_add_(1, label, torch.ones_like(label, dtype=torch.float))
    best = size[:, :big].argmax(1)  # (N,) the largest region's label
    region = (label == best[:, None]).view(n, h, w) & mask
    cols, rows = region.any(1), region.any(2)  # (N, W), (N, H)
    ar_w, ar_h = torch.arange(w, device=mask.device), torch.arange(h, device=mask.device)
    box = torch.stack([torch.where(cols, ar_w, w).amin(1), torch.where(rows, ar_h, h).amin(1),
                       torch.where(cols, ar_w, -1).amax(1), torch.where(rows, ar_h, -1).amax(1)], 1)
    return torch.where(mask.flatten(1).any(1)[:, None], box, torch.zeros_like(box))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,) IoU of (N, 4) boxes x0, y0, x1, y1 with inclusive pixel coordinates (width = x1 - x0 + 1); the
    intersection's sides are clamped at 0 (Co-Mixup's are not, §5)."""
    a, b = a.long(), b.long()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + 1).clamp(min=0)
    inter = iw * ih
    area = lambda t: (t[:, 2] - t[:, 0] + 1) * (t[:, 3] - t[:, 1] + 1)
    return inter / (area(a) + area(b) - inter)


def localisation(model: nn.Module, x: Tensor, y: Tensor, boxes: Tensor, s: AnalysisSettings,
                 gallery: Tensor) -> tuple[dict[str, Any], Tensor]:
    """(Top-1 and GT-known localisation (%) of (N, 3, H, W) uint8 ``x`` against its (N, 4) inclusive boxes with
    the 8x8 CAMs of the images ``gallery`` indexes, the (N, K) float32 logits of the same forward passes)."""
    top1_hit, iou_all, cams, all_logits = [], [], {}, []
    for i in range(0, len(x), s.batch_size):
        xb, yb = _normalise(x[i:i + s.batch_size].float() / 255), y[i:i + s.batch_size]
        logits, cam = grad_cam(model, xb, yb)
        up = upsample_cam(cam, x.shape[-1])
        box = largest_region_boxes(up >= s.cam_threshold)  # the map's max is 1 after normalising
        iou = box_iou(box, boxes[i:i + s.batch_size].to(box.device))
        top1_hit.append(logits.argmax(1) == yb)
        iou_all.append(iou)
        all_logits.append(logits.float())
        for k in gallery[(gallery >= i) & (gallery < i + len(yb))].tolist():  # a handful of images
            cams[k] = (cam[k - i], box[k - i], float(iou[k - i]), int(logits[k - i].argmax()))
    hit, iou = torch.cat(top1_hit), torch.cat(iou_all)
    ok = iou >= s.iou_threshold
    whole = (boxes[:, 0] == 0) & (boxes[:, 1] == 0) & (boxes[:, 2] == x.shape[-1] - 1) & (boxes[:, 3] == x.shape[-2] - 1)
    return {
        "layer": "layer4 (after its last block's ReLU)", "cam_size": list(cams[min(cams)][0].shape) if cams else None,
        "target": "the ground-truth class (= the top-1 class wherever top-1 is correct)",
        "threshold": s.cam_threshold, "iou_threshold": s.iou_threshold,
        "rule": (f"box of the largest 8-connected region of the upsampled, min-max normalised CAM >= "
                 f"{s.cam_threshold} of its max; IoU with inclusive pixel boxes, intersection clamped at 0"),
        "top1_loc": 100 * float((ok & hit.to(ok.device)).double().mean()), "gt_known_loc": 100 * float(ok.double().mean()),
        "mean_iou": float(iou.double().mean()), "whole_image_boxes": 100 * float(whole.double().mean()),
        "images": len(x),
        "gallery": [{"index": int(k), "label": int(y[k]), "pred": v[3], "iou": v[2], "box": v[1].tolist(),
                     "gt_box": boxes[k].tolist(), "cam": [[round(float(c), 4) for c in row] for row in v[0].tolist()]}
                    for k, v in ((k, cams[k]) for k in gallery.tolist())],  # in class order
    }, torch.cat(all_logits)


def gallery_indices(y: Tensor, n: int) -> Tensor:
    """The first val image of each of the first n classes (the gallery's fixed images, as run_gallery)."""
    classes = [c for c in range(n) if bool((y == c).any())]
    return torch.stack([(y == c).nonzero()[0, 0] for c in classes]) if classes else torch.zeros(0, dtype=torch.long)


# ----------------------------------------------------------------------------- FLOPs (§6)
class _NoModules:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks break ``torch.autograd.grad`` on an
    input (PuzzleMix's saliency pass: "A leaf node was passed to _will_engine_execute_node"); only the global
    total is read here, which needs no per-module attribution."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModules:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts while ``fn()`` runs (2 x MACs; §6)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()  # its formulas and dispatch mode, without module attribution
    with counter:
        fn()
    return int(counter.get_total_flops())


def flops(run: Run) -> dict[str, Any]:
    """FLOPs of one training step (the method's ``training_step`` + backward, batch = the run's batch size, on a
    copy of the model in train mode) and of one image's forward at 64 px; a step that cannot run here falls
    back to the model's forward + backward, and says so."""
    from mixnb.mixups import StepContext

    model, method = copy.deepcopy((run.model, run.method))  # train mode moves BN statistics: not the run's model
    b, dev = run.cfg.batch_size, run.device
    gen = torch.Generator(dev).manual_seed(_seed(0, "flops"))
    loader = DeviceLoader(run.data.x_train[:b], run.data.y_train[:b], batch_size=b, device=dev, train=True, gen=gen)
    x, y = next(iter(loader))
    x = x.contiguous(memory_format=_layout(dev))
    model.train()
    method.train()
    what = f"method.training_step + backward ({run.cfg.method}), batch {len(x)}"

    def step() -> None:
        ctx = StepContext(gen=gen, cpu_gen=torch.Generator().manual_seed(0), total_steps=1)
        method.training_step(model, x, y, ctx).loss.backward()

    def plain() -> None:
        F.cross_entropy(model(x), y).backward()

    try:
        if run.setup_error:
            raise RuntimeError(run.setup_error)
        step_flops = count_flops(step)
    except Exception as err:  # noqa: BLE001 (any method failure: fall back, say which)
        what = f"model forward + backward, batch {len(x)} (the method's step failed here: {type(err).__name__}: {err})"
        step_flops = count_flops(plain)
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(x[:1]))
    return {"train_step": step_flops, "train_step_per_image": step_flops / len(x), "what": what,
            "forward_per_image": forward, "image_size": int(x.shape[-1]), "batch": len(x),
            "counter": "torch.utils.flop_counter.FlopCounterMode: 2 x MACs of convs and matmuls (BN, ReLU, pooling "
                       "not counted)"}


# ----------------------------------------------------------------------------- analyze_run
def checkpoint_record(path: Path) -> dict[str, Any]:
    """sha256, size and mtime of a checkpoint: what an analysis is keyed on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    st = path.stat()
    return {"file": path.name, "sha256": h.hexdigest(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def analysis_key(ckpt: dict[str, Any], settings: AnalysisSettings, tinc: str | None) -> dict[str, Any]:
    return {"checkpoint_sha256": ckpt["sha256"], "settings": settings.key(), "tinc": tinc, "version": VERSION}


def read_analysis(run_dir: str | Path) -> dict[str, Any] | None:
    """analysis.json of a run folder, or None when it is missing or unreadable."""
    try:
        record = read_json(Path(run_dir) / ANALYSIS)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def analyze_run(run_dir: str | Path, *, settings: AnalysisSettings | None = None, device: str = "auto",
                force: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Analyse a finished run; writes ``run_dir/analysis.json`` (atomically) and returns it.

    Skipped (the file returned as it is) when it was made from the same checkpoint (sha256) with the same
    settings, official-set folder and ``VERSION``, unless ``force``; a run whose checkpoint was deleted keeps
    its analysis. ``settings``: None = ``settings_for(the run's profile)``. ``device``: "auto" | "cpu" |
    "cuda[:N]". ``progress``: called with a line per section (None: quiet).

    Raises:
        FileNotFoundError: no checkpoint.pt (and no analysis).
        ValueError: the run is not finished or diverged; its checkpoint or dataset cannot be used.
    """
    run_dir = Path(run_dir)
    out = run_dir / ANALYSIS
    remove_stale_temps(out)  # left by a killed write
    ckpt_path = run_dir / CHECKPOINT
    old = read_analysis(run_dir)
    if not ckpt_path.is_file():
        if old is not None and not force:
            return old
        raise FileNotFoundError(f"{ckpt_path} not found: nothing to analyse")
    if (failed := failure(run_dir)) is not None:
        raise ValueError(f"{run_dir} diverged ({failed.get('reason')}); it has nothing to analyse")
    if not is_finished(run_dir):
        raise ValueError(f"{run_dir} is not finished (no complete summary.json and metrics.csv); analyse it once "
                         f"it has finished")
    record = checkpoint_record(ckpt_path)
    tinc = os.environ.get(TINC_ENV) or None
    if settings is None:
        profile = (read_json(run_dir / "summary.json") or {}).get("profile")
        settings = settings_for(profile) if profile in PROFILE_SETTINGS else None
    if old is not None and not force and settings is not None and old.get("key") == analysis_key(record, settings, tinc):
        return old

    say = progress or (lambda line: None)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds[name] = time.perf_counter() - t0
        say(f"{run_dir.name}: {name} {seconds[name]:.1f}s")
        return result

    t0 = time.perf_counter()
    run = load_run(run_dir, device)
    if settings is None:
        settings = settings_for(run.cfg.profile)
    seconds["load"] = time.perf_counter() - t0
    s, data, dev = settings, run.data, run.device
    x = _images(data.x_val, dev)  # (N, 3, 64, 64) uint8, on the device once
    y = data.y_val.to(dev)
    boxes = data.val_boxes.to(dev)
    gallery = gallery_indices(data.y_val, s.gallery_images).to(dev)
    # one forward for the CAMs and the clean logits (the reported head is model(x): _reported_head checked)
    localization, logits = timed("clean + CAM", lambda: localisation(run.model, x, y, boxes, s, gallery))
    if run.logits is not run.model:
        logits = timed("clean", lambda: predict(run.logits, x, batch_size=s.batch_size))
    autocast = resolve_precision(run.cfg, dev) == torch.bfloat16
    result: dict[str, Any] = {
        "version": VERSION, "key": analysis_key(record, s, tinc), "checkpoint": {**record, "epoch": run.ckpt["epoch"]},
        "run": run.cfg.run_name(), "run_dir": str(run_dir), "method": run.cfg.method, "backbone": run.cfg.backbone,
        "seed": run.cfg.seed, "profile": run.cfg.profile, "settings": s.to_dict(), "device": str(dev),
        "precision": "fp32 (the run evaluated in bf16 autocast)" if autocast else "fp32",
        "head": run.head, "setup_error": run.setup_error, "normalisation": {"mean": MEAN, "std": STD},
        "clean": {"top1": 100 * float((logits.argmax(1) == y).double().mean()), "images": len(y)},
    }
    result["calibration"] = timed("calibration", lambda: calibration(logits, y, n_bins=s.n_bins))
    sub = _subset(len(y), s.attack_images, s.seed, "attack-images").to(dev)
    result["adversarial"] = timed("adversarial", lambda: adversarial(run.logits, x[sub], y[sub], s))
    occ = _subset(len(y), s.occlusion_images, s.seed, "occlusion-images").to(dev)
    result["occlusion"] = timed("occlusion", lambda: occlusion(run.logits, x[occ], y[occ], s))
    result["corruptions"] = {"generated": timed("corruptions", lambda: corruption_accuracy(run.logits, data, s, dev)),
                             "official": None}
    if tinc:
        result["corruptions"]["official"] = timed("official", lambda: official_corruptions(run.logits, tinc, data, s, dev))
    result["localization"] = localization
    result["flops"] = timed("flops", lambda: flops(run)) if s.flops else None
    seconds["total"] = time.perf_counter() - t_all
    n_att = len(sub)
    result["cost"] = {
        "seconds": seconds, "device": str(dev),
        "forward_images": len(y) * (1 + (run.logits is not run.model)) + len(occ) * len(s.occlusion_fractions) + n_att * (2 + s.pgd_restarts)
        + result["corruptions"]["generated"]["images"] * len(result["corruptions"]["generated"]["top1"]) * len(
            s.corruption_severities),
        "forward_backward_images": n_att * (1 + s.pgd_restarts * s.pgd_steps),
        "note": "image passes of the model: forward (clean, CAM (its backward stops at layer4), occlusion, attack "
                "read-outs, generated corruptions) and forward + backward to the input (FGSM, PGD); the FLOPs "
                "step and the generation of the corrupted set (once per dataset) are not counted",
    }
    write_json(out, result)
    return result


# ----------------------------------------------------------------------------- report helpers
def _records(rows: Any) -> list[dict[str, Any]]:
    """analysis.json dicts from dicts, run folders, or a DataFrame with a run_dir column."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        rows = list(rows["run_dir"]) if "run_dir" in rows else rows.to_dict("records")
    out = []
    for r in rows:
        if isinstance(r, (str, Path)):
            rec = read_analysis(r)
            if rec is None:
                raise FileNotFoundError(f"{Path(r) / ANALYSIS} is missing or unreadable: run `python -m mixnb analyze {r}`")
            out.append(rec)
        else:
            out.append(r)
    return out


BEYOND_COLUMNS = {  # column -> path in analysis.json
    "ECE": ("calibration", "ece"), "NLL": ("calibration", "nll"), "FGSM": ("adversarial", "fgsm_top1"),
    "PGD": ("adversarial", "pgd_top1"), "occlusion AUC": ("occlusion", "auc"),
    "corruption": ("corruptions", "generated", "mean_top1"), "localization": ("localization", "top1_loc"),
}


def _get(rec: dict[str, Any], path: Sequence[str]) -> Any:
    for k in path:
        rec = rec.get(k) if isinstance(rec, dict) else None
    return rec


def beyond_table(rows: Any) -> Any:
    """One row per (method, backbone): ECE (%), NLL, FGSM / PGD top-1 (%), occlusion AUC (%), generated-corruption
    mean top-1 (%) and top-1 localisation (%) (``definitions()``), the mean over the seeds in ``rows`` (a list of
    analysis.json dicts or run folders, or a DataFrame with a run_dir column); ``n`` = seeds pooled, and the
    official Tiny-ImageNet-C mean top-1 when any run has it. Index: the method name."""
    import pandas as pd

    recs = _records(rows)
    cols = {**BEYOND_COLUMNS, "corruption (official)": ("corruptions", "official", "mean_top1")}
    table = pd.DataFrame([{"method": r["method"], "backbone": r["backbone"],
                           **{c: _get(r, p) for c, p in cols.items()}} for r in recs],
                         columns=["method", "backbone", *cols])
    table[list(cols)] = table[list(cols)].astype(float)
    if table["corruption (official)"].isna().all():
        table = table.drop(columns="corruption (official)")
    grouped = table.groupby(["method", "backbone"], sort=False)
    out = grouped.mean()
    out.insert(0, "n", grouped.size())
    return out.reset_index().set_index("method")


def _errors(rec: dict[str, Any], source: str) -> dict[str, float]:
    """{corruption: sum over severities of top-1 error (%)} of one analysis (``source``: official | generated)."""
    per = _get(rec, ("corruptions", source, "top1")) or {}
    return {c: sum(100 - a for a in (v.values() if isinstance(v, dict) else v)) for c, v in per.items()}


def mce_table(rows: Any, *, reference: str = "vanilla", source: str = "official") -> Any:
    """Corruption errors normalised by the reference method's (Hendrycks & Dietterich, §4.4): per (method, backbone)
    and corruption, CE_c = 100 x sum_s E_{s,c} / sum_s E_{s,c}^{reference} with E = top-1 error (%), each the mean
    over seeds; mCE = the mean of CE_c over the 15 common corruptions present. ``source``: "official"
    (``$MIXNB_TINC``) or "generated". Methods without a reference run of their backbone are left out."""
    import pandas as pd

    seeds: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in _records(rows):
        seeds.setdefault((r["method"], r["backbone"]), []).append(_errors(r, source))
    err = {k: pd.DataFrame(v).mean().to_dict() for k, v in seeds.items()}
    out = []
    for (method, backbone), e in err.items():
        ref = err.get((reference, backbone))
        if ref is None:
            continue
        ce = {c: 100 * v / ref[c] for c, v in e.items() if ref.get(c)}
        common = [v for c, v in ce.items() if c in CORRUPTIONS and CORRUPTIONS[c][2]]
        out.append({"method": method, "backbone": backbone, "mCE": float(np.mean(common)) if common else None, **ce})
    return pd.DataFrame(out, columns=None if out else ["method", "backbone", "mCE"]).set_index("method")


def plot_reliability(rows: Any, *, cols: int = 4) -> Any:
    """Reliability diagrams, one panel per analysis (``rows``: analysis.json dicts or run folders): per confidence
    bin its accuracy (blue bar) and mean confidence (hatched red outline; the gap between them is the bin's
    calibration error) against the diagonal, and each bin's share of images (grey step line)."""
    import matplotlib.pyplot as plt

    recs = _records(rows if isinstance(rows, (list, tuple)) or not isinstance(rows, dict) else [rows])
    n = max(len(recs), 1)
    cols = min(cols, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(2.6 * cols, 2.6 * -(-n // cols)), squeeze=False)
    for ax in axes.flat[len(recs):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, recs):
        bins = r["calibration"]["bins"]
        lo = np.array([b["lo"] for b in bins])
        width = np.array([b["hi"] - b["lo"] for b in bins])
        acc = np.array([b["accuracy"] for b in bins])
        conf = np.array([b["confidence"] for b in bins])
        count = np.array([b["count"] for b in bins], dtype=float)
        has = count > 0
        ax.bar(lo[has], acc[has], width[has], align="edge", color="tab:blue", edgecolor="white", label="accuracy")
        ax.bar(lo[has], conf[has], width[has], align="edge", fill=False, edgecolor="tab:red", hatch="///", lw=0.6,
               label="mean confidence")
        ax.step(np.r_[lo, 1.0], np.r_[count / max(count.sum(), 1), 0], where="post", color="grey", lw=0.8,
                label="share of images")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{r['method']} ({r['backbone']})\n"
               f"ECE {r['calibration']['ece']:.1f}%  MCE {r['calibration']['mce']:.1f}%")
        ax.title.set_fontsize(8)
    axes.flat[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def plot_occlusion(rows: Any) -> Any:
    """Top-1 (%) against the share of 8x8 patches zeroed, one line per analysis, AUC in the legend."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in _records(rows if not isinstance(rows, dict) else [rows]):
        o = r["occlusion"]
        ax.plot(o["fractions"], o["top1"], marker=".", label=f"{r['method']} ({r['backbone']}) AUC {o['auc']:.1f}")
    ax.set(xlabel="share of 8x8 patches zeroed", ylabel="top-1 (%)", title="Occlusion robustness")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cam_gallery(run_dir: str | Path) -> Any:
    """The CAM gallery of an analysed run: each gallery image (one per class), then its Grad-CAM over it with
    the CAM's box (red) and the val box (green), titled with the class, the prediction and the IoU. Read from
    analysis.json and the run's val images (the checkpoint is not needed)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mixnb.train import load_data

    run_dir = Path(run_dir)
    rec = read_analysis(run_dir)
    if rec is None:
        raise FileNotFoundError(f"{run_dir / ANALYSIS} is missing or unreadable: run `python -m mixnb analyze {run_dir}`")
    cfg = RunConfig.from_dict({**read_json(run_dir / "params.json")["config"], "device": "cpu"})
    data = load_data(cfg)
    items = rec["localization"]["gallery"]
    n = max(len(items), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.25 * n, 2.9), squeeze=False)
    for k, it in enumerate(items):
        img = data.x_val[it["index"]].numpy()
        cam = upsample_cam(torch.tensor(it["cam"])[None], img.shape[0])[0].numpy()
        axes[0, k].imshow(img)
        axes[1, k].imshow(img)
        axes[1, k].imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for box, colour in ((it["gt_box"], "lime"), (it["box"], "red")):
            x0, y0, x1, y1 = box
            axes[1, k].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color=colour, lw=1))
        name = lambda c: data.words.get(data.wnids[c], data.wnids[c]).split(",")[0][:14]
        axes[0, k].set_title(name(it["label"]), fontsize=6)
        axes[1, k].set_title(f"pred {name(it['pred'])}\nIoU {it['iou']:.2f}", fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    loc = rec["localization"]
    fig.suptitle(f"{rec['method']} ({rec['backbone']}): Grad-CAM at layer4, box of the largest region >= "
                 f"{loc['threshold']:g} of max (red), val box (green); top-1 loc {loc['top1_loc']:.1f}%", fontsize=7)
    fig.tight_layout()
    return fig


def definitions() -> dict[str, str]:
    """One line per reported number: how it is computed here."""
    s = AnalysisSettings()
    return {
        "ECE": (f"expected calibration error (%): sum over {s.n_bins} equal-width, right-closed confidence bins of "
                "(bin share) x |accuracy - mean confidence|; confidence = max softmax of the reported head; bins "
                "paired as they are (OpenMixup sorts them first, under-reporting)"),
        "MCE": "maximum calibration error (%): the largest |accuracy - mean confidence| over the bins (empty bins 0)",
        "NLL": "negative log-likelihood of the true class (nats), mean over the val images",
        "Brier": "Brier score: mean over images of sum over classes (p_c - 1[c = y])^2 (range 0-2; not divided by K)",
        "FGSM": (f"top-1 (%) under FGSM: one step of {s.eps * 255:g}/255 x sign(gradient) in pixel space, through the "
                 "run's ImageNet normalisation, clamped to [0, 1]; eval-mode model"),
        "PGD": (f"top-1 (%) under PGD-{s.pgd_steps}: eps {s.eps * 255:g}/255, step {s.pgd_step * 255:g}/255, uniform "
                "random start, projected onto the eps-box around the clean image and [0, 1], pixel space"),
        "occlusion AUC": ("area under top-1 (%) vs share of 8x8 patches zeroed (0, 0.1, ..., 0.9; seeded random patch "
                          "order per image; zero = the mean colour in normalised input), trapezoid / 0.9: a mean "
                          "top-1"),
        "corruption": ("mean top-1 (%) over the generated corruptions x severities (Tiny-ImageNet-C 64-px constants, "
                       "JPEG q85, seeded, from this val set; motion blur and snow skipped: they need ImageMagick; "
                       "frost only with its pictures); not the official release"),
        "corruption (official)": "mean top-1 (%) over every corruption x severity of the official Tiny-ImageNet-C folder",
        "mCE": ("sum over severities of top-1 error / the same for the reference (Vanilla), mean over the 15 common "
                "corruptions present, x 100 (Hendrycks & Dietterich, with Vanilla in AlexNet's place)"),
        "localization": (f"top-1 localisation (%): top-1 correct and IoU >= {s.iou_threshold} between the val box and "
                         f"the box of the largest 8-connected region >= {s.cam_threshold} x max of the Grad-CAM "
                         "(layer4, 8x8, ground-truth class, bilinear to 64 px); inclusive pixel boxes"),
        "GT-known loc": f"localisation (%) with IoU >= {s.iou_threshold} alone, whatever the prediction",
        "FLOPs": ("FlopCounterMode FLOPs (2 x MACs, convs and matmuls) of one training step of the method (forward + "
                  "backward at the run's batch size) and of one 64 px image's forward"),
    }


# ----------------------------------------------------------------------------- command line
def add_analyze_options(parser: argparse.ArgumentParser) -> None:
    """``python -m mixnb analyze RUN_DIR... [--force] [--device D]``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (runs/<profile>/<run>)")
    parser.add_argument("--force", action="store_true", help="analyse again even if analysis.json is up to date")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own; on a 2-core VM shared with another job, "
                             "1 ran the sample profile's analysis 4x faster than 2)")


def analyze_from_args(args: argparse.Namespace) -> int:
    """Analyse each RUN_DIR; one line per run (its numbers, or why it failed); 1 if any failed, else 0."""
    import sys

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    failed = 0
    for d in args.run_dirs:
        try:
            r = analyze_run(Path(d), device=args.device, force=args.force)
        except (ValueError, OSError, RuntimeError) as err:
            print(f"{d}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        corr = r["corruptions"]["generated"]["mean_top1"]
        print(f"{d}: ECE {r['calibration']['ece']:.2f}%  NLL {r['calibration']['nll']:.3f}  FGSM "
              f"{r['adversarial']['fgsm_top1']:.1f}%  PGD {r['adversarial']['pgd_top1']:.1f}%  occlusion AUC "
              f"{r['occlusion']['auc']:.1f}  corruption {'-' if corr is None else f'{corr:.1f}%'}  loc "
              f"{r['localization']['top1_loc']:.1f}%  ({r['cost']['seconds']['total']:.1f} s)")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- profiles
# sample: 10 classes, 300 val images, a width-8 ResNet-18 on a 2-core CPU: the whole analysis in <= 8 s
# (cost.seconds). There a forward runs at ~500-1,100 img/s and a forward + backward at ~350-700 img/s
# (batch 50 beat 100-300; the range is the VM's other load), so the sample profile spends ~3,200 forwards
# and ~800 forward + backwards: FGSM/PGD-10 on a seeded 64 of the 300 images, occlusion on 100, the 16
# generated corruptions at severities 1, 3, 5 on 30 (calibration and localisation use all 300).
# tiny-imagenet: every val image for calibration, CAM, attacks and occlusion; the corruptions on a seeded 2,000
# (the uint8 cache is 2.0 GB for 16 corruptions x 5 severities instead of 9.8 GB for all 10,000; the mean of
# 80 cells of 2,000 images has a standard error of ~0.15 points). That is ~300k forwards and 110k forward +
# backwards per run: from BENCHMARKS.md's H100 rates (R-18 eval 0.19 s / 10k, train 6,882 img/s; RX-50 1.03 s
# / 10k and 2,485 img/s; bf16) halved for the analysis' fp32 (TF32 convs), ~45 s per R-18 run and ~2.5 min per
# RX-50 run; by FLOPs (R-18: 4.44 GFLOP forward, ~8.9 forward + input-gradient backward) 2.3 PFLOP, ~40 s at
# 60 TFLOP/s. Not measured on a GPU yet.
PROFILE_SETTINGS: dict[str, AnalysisSettings] = {
    "tiny-imagenet": AnalysisSettings(batch_size=1000, corruption_images=2000),
    "sample": AnalysisSettings(batch_size=64, attack_images=64, occlusion_images=100, corruption_images=30,
                               corruption_severities=(1, 3, 5)),
    "test": AnalysisSettings(batch_size=64, attack_images=16, pgd_steps=3, occlusion_images=16, corruption_images=8,
                             corruption_severities=(1, 5), gallery_images=4),
}
assert set(PROFILE_SETTINGS) == set(PROFILES), "every profile needs its analysis settings"
