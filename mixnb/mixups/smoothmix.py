"""SmoothMix: blend the partner in through an isotropic Gaussian mask, soft edges instead of a box.

Paper: Lee et al., "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
Classifiers", CVPR Workshops 2020 (no arXiv version),
https://openaccess.thecvf.com/content_CVPRW_2020/papers/w45/Lee_SmoothMix_A_Simple_Yet_Effective_Data_Augmentation_to_Train_Robust_CVPRW_2020_paper.pdf.
No official code; the reference is OpenMixup's ``openmixup/models/augments/smoothmix.py``.
Protocol: docs/protocol.md §2.9, docs/methods.md §1 (alpha 0.2 in the table, unused): one mask for the
batch, G(i, j) = exp(-((i - r)^2 + (j - c)^2) / (2 sigma^2)) with sigma = (U(0, 1) / 4 + 1/4) * H,
i.e. [16, 32) px at 64 px, and the peak at (r, c) = (row - 1/2, col - 1/2), row and col uniform
integers in [0, H) x [0, W) (the reference rolls a 2H x 2H coordinate grid by randint(H) - H/2 and
crops its centre: the same peak, never wrapped); x_mixed = (1 - G) * x + G * x[perm], the partner a
plain random permutation (the reference's unseeded randperm, fixed points allowed).

Where the code and the paper disagree, each deliberate:
- alpha has no effect in either: the reference draws lam ~ Beta(alpha, alpha) and overwrites it
  with mean(G) before use; the paper has no alpha. It is validated and kept so the registry records
  the table's 0.2; no Beta draw is made.
- Label weights (``label_weights``): "openmixup" (the default, the code behind the published
  66.65 / 69.65) gives y, the label of x, the weight lam = mean(G), the share of x[perm], which lies
  under G; so the image covering ~57% of the pixels gets ~43% of the label. "paper" gives y the share
  of x, lam = mean(1 - G) (the paper's x_new = G x_a + (1 - G) x_b, y_new = lam y_a + (1 - lam) y_b,
  lam = mean(G), with x_a = x[perm] the image under G). The mixed image is the same in both.
- Only the Gaussian mask is built (the reference has no other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mixnb.mixups._helpers import eager, gather_rows, random_partner
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha

LABEL_WEIGHTS = ("openmixup", "paper")


@dataclass(frozen=True)
class SmoothMixDraw:
    perm: Tensor  # (N,) int64
    center: Tensor  # (2,) int64 (row, col); the peak sits half a pixel above and left of it
    sigma: Tensor  # () float32, the Gaussian's standard deviation in px


@eager
def sample_smoothmix(n: int, h: int, w: int, *, gen: torch.Generator) -> SmoothMixDraw:
    perm = random_partner(n, gen=gen)
    center = torch.empty(2, dtype=torch.int64, device=gen.device)  # (2,) int64 (row, col)
    center[0].random_(0, h, generator=gen)
    center[1].random_(0, w, generator=gen)
    sigma = (torch.rand((), generator=gen, device=gen.device) / 4 + 0.25) * h  # () float32, [H/4, H/2) px
    return SmoothMixDraw(perm, center, sigma)


def smoothmix_mask(draw: SmoothMixDraw, h: int, w: int) -> Tensor:
    """G (H, W) float32: exp(-d^2 / (2 sigma^2)), d the distance to (row - 1/2, col - 1/2); the partner's weight."""
    peak = draw.center.float() - 0.5  # (2,) float32 (row, col)
    dy = torch.arange(h, device=peak.device) - peak[0]  # (H,) float32
    dx = torch.arange(w, device=peak.device) - peak[1]  # (W,)
    d2 = dy[:, None] ** 2 + dx[None, :] ** 2  # (H, W) squared distance in px^2
    return torch.exp(-d2 / (2 * draw.sigma**2))


def smoothmix(x: Tensor, draw: SmoothMixDraw, *, label_weights: str = "openmixup") -> tuple[Tensor, Tensor, Tensor]:
    """(1 - G) * x + G * x[perm]; returns (x_mixed, lam, mask) with mask = 1 - G (1, 1, H, W), the
    float weight of x, and lam the weight of y: mean(G) under "openmixup", mean(mask) under "paper"."""
    if label_weights not in LABEL_WEIGHTS:
        raise ValueError(f"SmoothMix label_weights must be one of {LABEL_WEIGHTS}, got {label_weights!r}")
    h, w = x.shape[-2:]
    g = smoothmix_mask(draw, h, w).view(1, 1, h, w)  # (1, 1, H, W) float32
    # x + G * (x[perm] - x): one kernel, not the 4 of the two products and the sum; equal up to rounding
    x_mixed = torch.lerp(x, gather_rows(x, draw.perm), g.to(x.dtype))  # (N, C, H, W)
    keep = 1 - g
    return x_mixed, (g.mean() if label_weights == "openmixup" else keep.mean()), keep


class SmoothMix(MixMethod):
    """Args:
    alpha: Beta concentration, > 0; unused, as in the reference (see the module docstring;
        protocol 0.2, the table's value).
    label_weights: "openmixup" (the reference's code: y gets mean(G), the partner's share) or
        "paper" (y gets its own share, mean(1 - G)).
    """

    name = "smoothmix"

    def __init__(self, *, alpha: float = 0.2, label_weights: str = "openmixup") -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        if label_weights not in LABEL_WEIGHTS:
            raise ValueError(f"SmoothMix label_weights must be one of {LABEL_WEIGHTS}, got {label_weights!r}")
        self.label_weights = label_weights

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        draw = sample_smoothmix(x.shape[0], *x.shape[-2:], gen=gen)
        x_mixed, lam, keep = smoothmix(x, draw, label_weights=self.label_weights)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, keep)
