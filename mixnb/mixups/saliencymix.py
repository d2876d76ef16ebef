"""SaliencyMix: a CutMix box centred on the saliency peak of the partner image.

Paper: Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better
Regularization", ICLR 2021, https://arxiv.org/abs/2006.01791.
Code: https://github.com/SaliencyMix/SaliencyMix.
Protocol: docs/protocol.md §2.6 (alpha 1): lam ~ Beta(alpha, alpha) first, then a plain random
permutation (no self-pair redraws); OpenCV's ``StaticSaliencyFineGrained`` runs on ONE image,
the first permuted sample ``x[perm[0]]``, given as the normalised float32 HWC array (not
rescaled to 0..255, as the reference does); the map is multiplied by 255 and cast to uint8 and
its argmax (first index in row-major order on ties) is the centre of a box of side
int(64 * sqrt(1 - lam)) shared by the whole batch, clipped; lam is corrected to the true area.

Host sync: the saliency map is computed by OpenCV on the CPU, so every step copies one image
(3 x 64 x 64 float32, 48 KiB) device -> host and waits for it (inherent to the method;
docs/performance.md §6 "SaliencyMix"). The centre goes back as a 2-element tensor. Measured: the
OpenCV call takes ~1.6 ms on a 2-core CPU box; on one H100 (torch 2.11, bf16, batch 100, R-18
width 64) a CutMix step with the same round trip (cv2 left out) took 19-20 ms vs 16.3 ms vanilla.
Requires ``opencv-contrib-python-headless`` (cv2.saliency); there is no fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mixnb.mixups._helpers import eager, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha
from mixnb.mixups.cutmix import CutMixDraw, cutmix


@dataclass(frozen=True)
class SaliencyMixDraw:
    lam: Tensor  # () float32, the prior lam (before area correction)
    perm: Tensor  # (N,) int64
    center: Tensor  # (2,) int64 (row, col), the saliency peak of x[perm[0]]


def fine_grained_saliency() -> Any:
    """A new ``cv2.saliency.StaticSaliencyFineGrained``; RuntimeError naming the package if absent."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(cv2, "saliency"):
        raise RuntimeError(
            "SaliencyMix needs OpenCV's contrib module cv2.saliency: "
            "pip install opencv-contrib-python-headless (and no other opencv-* package)"
        )
    return cv2.saliency.StaticSaliencyFineGrained_create()


def saliency_peak(img: Tensor) -> Tensor:
    """(row, col) int64 of the argmax of the uint8 fine-grained saliency map of one (C, H, W)
    image, on ``img``'s device; ties go to the first index in row-major order (np.argmax)."""
    hwc = np.ascontiguousarray(img.detach().float().permute(1, 2, 0).cpu().numpy())  # (H, W, C) float32: host sync
    ok, sal = fine_grained_saliency().computeSaliency(hwc)  # (H, W) float32 in [0, 1]
    if not ok:
        raise RuntimeError("cv2.saliency StaticSaliencyFineGrained failed on the partner image")
    return torch.tensor(map_peak(sal), dtype=torch.int64, device=img.device)


def map_peak(sal: np.ndarray) -> tuple[int, int]:
    """(row, col) of the max of ``sal`` * 255 cast to uint8, the first in row-major order on ties."""
    sal_u8 = (sal * 255).astype(np.uint8)  # the reference quantises before the argmax: more ties
    row, col = np.unravel_index(np.argmax(sal_u8), sal_u8.shape)
    return int(row), int(col)


@eager
def sample_saliencymix(x: Tensor, *, gen: torch.Generator, alpha: float) -> SaliencyMixDraw:
    """lam, then perm, then the box centre from the saliency of the first partner x[perm[0]]."""
    lam = sample_beta(alpha, alpha, gen=gen)
    perm = random_partner(x.shape[0], gen=gen)
    partner = x.index_select(0, perm[:1].to(x.device))[0]  # (C, H, W): index_select avoids a sync on perm[0]
    return SaliencyMixDraw(lam, perm, saliency_peak(partner).to(gen.device))


def saliencymix(x: Tensor, draw: SaliencyMixDraw) -> tuple[Tensor, Tensor, Tensor]:
    """Paste the box of x[perm] around ``draw.center`` into every image; returns (x_mixed, lam,
    mask) with lam the exact share of x and mask (1, 1, H, W) the float weight of x.

    Given the centre, this is exactly CutMix's box paste, so it reuses that core.
    """
    return cutmix(x, CutMixDraw(draw.lam, draw.perm, draw.center))


class SaliencyMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for the prior lam, > 0 (protocol default 1).
    """

    name = "saliencymix"

    def __init__(self, *, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        fine_grained_saliency()  # fail at construction, not at the first step, if cv2.saliency is missing

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        draw = sample_saliencymix(x, gen=gen, alpha=self.alpha)
        x_mixed, lam, keep = saliencymix(x, draw)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, keep)
