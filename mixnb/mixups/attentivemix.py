"""AttentiveMix+: each image keeps its top-k teacher-attended grid cells, the partner fills the rest.

Paper: Walawalkar et al., "Attentive CutMix: An Enhanced Data Augmentation Approach for Deep
Learning Based Image Classification", ICASSP 2020, https://arxiv.org/abs/2003.13048.
Code: https://github.com/xden2331/attentive_cutmix; the "+" variant is OpenMixup's.
Protocol: docs/protocol.md §2.7 (alpha 2), following the reference's code where its docs differ:
- lam ~ Beta(alpha, alpha), not the docs' Beta(alpha, 8) (the config's ``beta=8`` is ignored).
- top_k = clip(int(49 * lam), 1, 49) cells of the 7x7 channel-mean teacher map, per sample.
- The binary 7x7 mask is nearest-upsampled to 64x64 as ``F.interpolate(size=64, mode="nearest")``
  (the reference's ``scale_factor=64/7`` gives the same map): 64/7 is not an integer, so source
  cell floor(i * 7 / 64) gives row/column cells of 10, 9, 9, 9, 9, 9, 9 pixels.
- x_mixed = mask * x + (1 - mask) * x[perm]; perm is a plain random permutation.
- lam (``lam_rule``): "first" (default), sample 0's mask mean for the whole batch, as the reference
  (``7bf8bcf`` and HEAD: ``lam = float(mask[0, 0, ...].mean())``); "sample", the per-sample (N,) exact
  mask mean, the true share of each un-permuted image (cells have unequal pixel counts).
- Teacher: an ImageNet ResNet-18 from a local file (``teacher_weights`` or
  $MIXNB_ATTENTIVEMIX_TEACHER; nothing is downloaded) on the batch bilinearly upsampled
  64 -> 224, layer4 features 512x7x7, frozen and, like the reference, left in train mode (BN
  uses batch statistics). Without a file the teacher is our own finished Vanilla run of the same
  backbone in the runs folder (a converged model of the benchmark's own data, in eval mode): its
  last-stage 8x8 features average-pooled to 7x7. ``summarize`` reports which one was used.
The top-k uses a full descending sort and a rank threshold, so k stays on the device (no sync;
checked with CUDA sync-debug mode). Measured on one H100 (torch 2.11, bf16, batch 100, R-18
width 64, ImageNet teacher): 24 ms/step vs 16.3 ms vanilla; the teacher forward alone is 7.3 ms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from mixnb.mixups._helpers import eager, mix_with_mask, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, NeededRun, check_alpha

TEACHER_ENV = "MIXNB_ATTENTIVEMIX_TEACHER"
GRID = 7  # teacher feature grid (ImageNet R-18 layer4 at 224 px)
FEAT_SIZE = 224  # the reference's ``feat_size``: teacher input side
LAM_RULES = ("first", "sample")  # lam of the batch: sample 0's mask mean (OpenMixup's) | each image's own


@dataclass(frozen=True)
class AttentiveMixDraw:
    lam: Tensor  # () float32, the prior lam; sets top_k
    perm: Tensor  # (N,) int64
    features: Tensor  # (N, C, G, G) teacher feature map of the un-mixed batch


@eager
def sample_attentivemix(features: Tensor, *, gen: torch.Generator, alpha: float) -> AttentiveMixDraw:
    lam = sample_beta(alpha, alpha, gen=gen)
    return AttentiveMixDraw(lam, random_partner(features.shape[0], gen=gen), features)


def attentivemix(x: Tensor, draw: AttentiveMixDraw, lam_rule: str = "first") -> tuple[Tensor, Tensor, Tensor]:
    """Keep each image's top_k attended cells; returns (x_mixed, lam, mask) with mask (N, 1, H, W) the binary
    float weight of x and lam its mean: sample 0's for all, () (``lam_rule`` "first"), or (N,) per sample."""
    n, _, gh, gw = draw.features.shape
    score = draw.features.float().mean(dim=1).reshape(n, gh * gw)  # (N, G*G) float32
    k = (draw.lam * (gh * gw)).floor().long().clamp(1, gh * gw)  # () int64 on the device
    order = score.argsort(dim=1, descending=True, stable=True)  # (N, G*G); ties: lower cell first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(gh * gw, device=order.device).expand(n, -1))
    grid = (rank < k).to(torch.float32).reshape(n, 1, gh, gw)  # (N, 1, G, G) binary
    mask = F.interpolate(grid, size=x.shape[-2:], mode="nearest")  # (N, 1, H, W) float32
    lam = mask.mean(dim=(1, 2, 3))  # (N,) the exact share of each x
    return mix_with_mask(x, draw.perm, mask), lam[0] if lam_rule == "first" else lam, mask


# --- teachers: frozen, outside the module tree (never optimised, never checkpointed) ---------


class _ImageNetFeatures(nn.Module):
    """torchvision ResNet-18 up to layer4 on the batch upsampled to 224 px: (N, 512, 7, 7)."""

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        self.body = nn.Sequential(*list(net.children())[:-2])  # conv1 .. layer4 (drop avgpool, fc)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(FEAT_SIZE, FEAT_SIZE), mode="bilinear", align_corners=False)
        return self.body(x)


class _OwnFeatures(nn.Module):
    """Our backbone's last-stage features (8x8 at 64 px) average-pooled to 7x7."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.model.forward_stages(x)[-1], GRID)


@dataclass(frozen=True)
class Teacher:
    """A frozen feature network (a plain attribute of the method, so not in its state_dict)."""

    net: nn.Module
    label: str

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if next(self.net.parameters()).device != x.device:  # follows the batch; a host-side check only
            self.net.to(x.device)
        return self.net(x)  # (N, C, 7, 7)


def imagenet_teacher(path: Path) -> Teacher:
    """An ImageNet ResNet-18 state_dict file (e.g. torchvision's resnet18-f37072fd.pth)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"AttentiveMix+ teacher weights {str(path)!r} not found (from teacher_weights or ${TEACHER_ENV})"
        )
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    feats = _ImageNetFeatures(net).requires_grad_(False).train()  # reference: BN batch statistics
    return Teacher(feats, f"ImageNet R-18 (file {path.name})")


def run_teacher(model: nn.Module, label: str) -> Teacher:
    """A trained mixnb backbone (the finished Vanilla run's, opened by the loop) as the teacher, in eval mode."""
    return Teacher(_OwnFeatures(model).requires_grad_(False).eval(), label)


class AttentiveMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for the prior lam, > 0 (protocol default 2).
    teacher_weights: path to a torchvision ResNet-18 ImageNet state_dict; None (default): use
        $MIXNB_ATTENTIVEMIX_TEACHER, else the finished Vanilla run of the same backbone.
    lam_rule: "first" (sample 0's mask mean for the batch, OpenMixup's, default) or "sample" (each image's own).
    """

    name = "attentivemix"

    def __init__(self, *, alpha: float = 2.0, teacher_weights: str | None = None, lam_rule: str = "first") -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        if lam_rule not in LAM_RULES:
            raise ValueError(f"AttentiveMix lam_rule must be one of {', '.join(LAM_RULES)}, got {lam_rule!r}")
        self.lam_rule = lam_rule
        if teacher_weights is not None and not isinstance(teacher_weights, (str, os.PathLike)):
            raise ValueError(f"teacher_weights must be a file path or None, got {teacher_weights!r}")
        self.teacher_weights = teacher_weights
        self.teacher: Teacher | None = None  # built in setup
        self.teacher_label = ""

    def setup(self, model: nn.Module, *, cfg: Any, needed: NeededRun | None = None) -> None:
        """The teacher: ``teacher_weights`` (or $MIXNB_ATTENTIVEMIX_TEACHER), else ``needed``, the model of the
        finished Vanilla run of the same backbone that the loop found and opened (``mixnb.runs.needed_run``)."""
        path = self.teacher_weights or os.environ.get(TEACHER_ENV)
        if path:
            self.teacher = imagenet_teacher(Path(path))
        elif needed is not None:
            self.teacher = run_teacher(needed.model, f"own Vanilla run {needed.name}")
        else:
            backbone = getattr(cfg, "backbone", "<backbone>")
            raise FileNotFoundError(
                f"AttentiveMix+ needs a teacher and found none: set {TEACHER_ENV} (or method_args "
                "teacher_weights) to a torchvision resnet18 ImageNet state_dict file, e.g. "
                f"resnet18-f37072fd.pth, or first finish a Vanilla run of the same profile and backbone "
                f"(vanilla-{backbone}-s<seed>, finished, with its checkpoint.pt, in the runs folder), "
                "e.g. `make sweep METHODS=vanilla`"
            )
        self.teacher_label = self.teacher.label

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        if self.teacher is None:
            raise RuntimeError("AttentiveMix+ has no teacher yet: call setup(model, cfg=..., run_dir=...) first")
        draw = sample_attentivemix(self.teacher(x), gen=gen, alpha=self.alpha)
        x_mixed, lam, keep = attentivemix(x, draw, self.lam_rule)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, keep)

    def summarize(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        return {"teacher": self.teacher_label}
