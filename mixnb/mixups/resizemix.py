"""ResizeMix: paste the whole partner image, shrunk into a random box.

Paper: Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True Labels",
arXiv 2020, https://arxiv.org/abs/2012.11101. No official code; the reference is OpenMixup's
``openmixup/models/augments/resizemix.py``.
Protocol: protocol.md §2.11 (alpha 1, scope (0.1, 0.8), use_alpha True, nearest): the side ratio
tau ~ Beta(alpha, alpha), redrawn from U(scope) when outside it (the code; the paper draws
tau ~ U(scope) directly, which is ``use_alpha=False``); box side int(64 * tau) with corners
centre -/+ side // 2 clipped to the image, uniform integer centre, one box for the batch; the
whole x[perm] resized (nearest) to the clipped box and pasted into every image; lam = 1 - box
area / HW. The partner is a plain random permutation (fixed points allowed, as the code's
unseeded permutation).

The nearest resize is an index gather computed on the device (src = floor(dst * (64 / side)) in
float32, as ``F.interpolate(mode="nearest")`` computes it), so the box size never reaches the
host: no sync per step, static shapes. Unlike the reference, the input is not modified in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixnb.mixups._helpers import box_around, box_mask, lam_from_box, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha


@dataclass(frozen=True)
class ResizeMixDraw:
    tau: Tensor  # () float32, box side / image side
    perm: Tensor  # (N,) int64
    center: Tensor  # (2,) int64 (row, col)


def sample_resizemix(
    n: int, h: int, w: int, *, gen: torch.Generator, alpha: float, scope: tuple[float, float], use_alpha: bool
) -> ResizeMixDraw:
    lo, hi = scope
    uniform = lo + (hi - lo) * torch.rand((), generator=gen, device=gen.device)  # () float32 in [lo, hi)
    if use_alpha:  # Beta draw, replaced by the uniform one when outside [lo, hi] (torch.where: no sync)
        tau = sample_beta(alpha, alpha, gen=gen)
        tau = torch.where((tau < lo) | (tau > hi), uniform, tau)
    else:
        tau = uniform
    perm = random_partner(n, gen=gen)
    center = torch.stack([
        torch.randint(h, (), generator=gen, device=gen.device),
        torch.randint(w, (), generator=gen, device=gen.device),
    ])
    return ResizeMixDraw(tau, perm, center)


def _nearest_src(size: int, start: Tensor, side: Tensor) -> Tensor:
    """Source index (size,) int64 of each destination pixel for a nearest resize of ``size`` px
    into ``side`` px starting at ``start``; values outside the box are clamped, never read."""
    dst = (torch.arange(size, device=start.device) - start).clamp_min(0).float()  # (size,)
    scale = size / side.clamp_min(1).float()  # float32, as F.interpolate's input / output
    return (dst * scale).floor().long().clamp_max(size - 1)


def resizemix(x: Tensor, draw: ResizeMixDraw) -> tuple[Tensor, Tensor, Tensor]:
    """Paste x[perm], nearest-resized to the box, into every image; returns (x_mixed, lam, mask)
    with lam the exact share of x and mask (1, 1, H, W) the float weight of x."""
    h, w = x.shape[-2:]
    half = torch.stack([(h * draw.tau).floor().long() // 2, (w * draw.tau).floor().long() // 2])  # (2,) int64
    box = box_around(draw.center, half, h, w)  # (4,) int64: y0, y1, x0, x1
    src_r = _nearest_src(h, box[0], box[1] - box[0])  # (H,)
    src_c = _nearest_src(w, box[2], box[3] - box[2])  # (W,)
    small = x[draw.perm][:, :, src_r[:, None], src_c[None, :]]  # (N, C, H, W): x[perm] resized, placed at box
    keep = ~box_mask(box, h, w)  # (H, W) bool
    return torch.where(keep, x, small), lam_from_box(box, h, w), keep.to(x.dtype)[None, None]


class ResizeMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for tau, > 0 when use_alpha (protocol default 1).
    scope: (lo, hi) range of tau, the box side as a fraction of the image side, 0 < lo < hi < 1
        (protocol (0.1, 0.8)).
    use_alpha: draw tau from Beta(alpha, alpha) and redraw from U(scope) outside it (protocol);
        False (off) draws tau ~ U(scope) as the paper.
    interpolation: resize mode; only "nearest" (the protocol's) is implemented.
    """

    name = "resizemix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        scope: Sequence[float] = (0.1, 0.8),
        use_alpha: bool = True,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha) if use_alpha else float(alpha)
        if len(scope) != 2 or not 0 < scope[0] < scope[1] < 1:
            raise ValueError(f"ResizeMix scope outside (0, 1): need 0 < lo < hi < 1 (box side ratio), got {scope!r}")
        if interpolation != "nearest":
            raise ValueError(f"ResizeMix interpolation must be 'nearest' (the only one built), got {interpolation!r}")
        self.scope = (float(scope[0]), float(scope[1]))
        self.use_alpha, self.interpolation = bool(use_alpha), interpolation

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        draw = sample_resizemix(
            x.shape[0], *x.shape[-2:], gen=gen, alpha=self.alpha, scope=self.scope, use_alpha=self.use_alpha
        )
        x_mixed, lam, keep = resizemix(x, draw)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, keep)
