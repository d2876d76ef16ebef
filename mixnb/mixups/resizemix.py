"""ResizeMix: paste the whole partner image, shrunk into a random box.

Paper: Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True Labels",
arXiv 2020, https://arxiv.org/abs/2012.11101. No official code; the reference is OpenMixup's
``openmixup/models/augments/resizemix.py``.
Protocol: docs/protocol.md §2.11 (alpha 1, scope (0.1, 0.8), nearest). The side ratio: with ``use_alpha``
tau ~ Beta(alpha, alpha), redrawn from U(scope) when outside it (OpenMixup since ``3fea614``, HEAD);
without, tau ~ U(scope) as the paper, alpha unused: the configs that published the table
(``e81ed85``, docs/publication.md), so the default; equal in distribution at alpha 1. Box side
int(64 * tau) with corners centre -/+ side // 2 clipped to the image, uniform integer centre, one box for the batch; the
whole x[perm] resized (nearest) to the clipped box and pasted into every image; lam = 1 - box
area / HW. The partner is a plain random permutation (fixed points allowed, as the code's
unseeded permutation).

The nearest resize is an index gather computed on the device (src = floor(dst * (64 / side)) in
float32, as ``F.interpolate(mode="nearest")`` computes it; looked up in a table of every box's
indices), so the box size never reaches the host: no sync per step, static shapes. Unlike the
reference, the input is not modified in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixnb.mixups._helpers import (box_around, device_constant, eager, gather_rows, lam_from_box, random_partner,
                                   sample_beta)
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha


@dataclass(frozen=True)
class ResizeMixDraw:
    tau: Tensor  # () float32, box side / image side
    perm: Tensor  # (N,) int64
    center: Tensor  # (2,) int64 (row, col)


@eager
def sample_resizemix(
    n: int, h: int, w: int, *, gen: torch.Generator, alpha: float, scope: tuple[float, float], use_alpha: bool
) -> ResizeMixDraw:
    lo, hi = scope
    uniform = lo + (hi - lo) * torch.rand((), generator=gen, device=gen.device)  # () float32 in [lo, hi)
    if use_alpha:  # Beta draw, replaced by the uniform one when outside [lo, hi] (torch.where: no sync)
        tau = sample_beta(alpha, alpha, gen=gen)
        tau = torch.where(tau.clamp(lo, hi) == tau, tau, uniform)  # clamp moves only a tau outside [lo, hi]
    else:
        tau = uniform
    perm = random_partner(n, gen=gen)
    center = torch.stack([
        torch.randint(h, (), generator=gen, device=gen.device),
        torch.randint(w, (), generator=gen, device=gen.device),
    ])
    return ResizeMixDraw(tau, perm, center)


def _nearest_src(size: int, start: Tensor, side: Tensor) -> Tensor:
    """Source index (..., size) int64 of each destination pixel for a nearest resize of ``size`` px
    into ``side`` px starting at ``start`` (both broadcast); values outside the box are clamped."""
    dst = (torch.arange(size, device=start.device) - start).clamp_min(0).float()  # (size,)
    scale = size / side.clamp_min(1).float()  # float32, as F.interpolate's input / output
    return (dst * scale).floor().long().clamp_max(size - 1)


@device_constant
def paste_index(h: int, w: int, device: torch.device) -> Tensor:
    """(2, L + 1, L + 1, L) int64, L = max(H, W): [0, y0, y1] is the source row of each row for
    the whole image resized (nearest) into rows [y0, y1), -1 outside them; [1, x0, x1] the same
    for columns. Every box's ``_nearest_src``, built once per device (read-only; 4.3 MB at 64 px)."""
    size = max(h, w)
    start = torch.arange(size + 1, device=device)[:, None, None]  # (L+1, 1, 1)
    end = torch.arange(size + 1, device=device)[None, :, None]  # (1, L+1, 1)
    index = torch.full((2, size + 1, size + 1, size), -1, device=device)
    for axis, length in enumerate((h, w)):
        src = _nearest_src(length, start, end - start)  # (L+1, L+1, length)
        dst = torch.arange(length, device=device)  # (length,)
        index[axis, :, :, :length] = torch.where((start <= dst) & (dst < end), src, -1)
    return index


def resizemix(x: Tensor, draw: ResizeMixDraw) -> tuple[Tensor, Tensor, Tensor]:
    """Paste x[perm], nearest-resized to the box, into every image; returns (x_mixed, lam, mask)
    with lam the exact share of x and mask (1, 1, H, W) the float weight of x."""
    h, w = x.shape[-2:]
    # int(size * tau) // 2 == int(size / 2 * tau): halving is exact in float, .long() floors tau >= 0
    half = (draw.tau * (h / 2)).long() if h == w else torch.stack([draw.tau * (h / 2), draw.tau * (w / 2)]).long()
    box = box_around(draw.center, half, h, w)  # (4,) int64: y0, y1, x0, x1
    # looked up, not computed (~25 kernels): the source of every row and column, -1 outside the box
    src = paste_index(h, w, x.device)[torch.arange(2, device=x.device), box[0::2], box[1::2]]  # (2, L) int64
    outside = src < 0  # (2, L) bool: rows, columns
    keep = outside[0, :h, None] | outside[1, :w]  # (H, W) bool
    # x[perm] resized, placed at the box; -1 (outside) reads the last row or column, a pixel not kept
    pasted = gather_rows(x, draw.perm)[:, :, src[0, :h, None], src[1, :w]]  # (N, C, H, W)
    return torch.where(keep, x, pasted), lam_from_box(box, h, w), keep.to(x.dtype).view(1, 1, h, w)


class ResizeMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for tau, > 0 when use_alpha (protocol default 1).
    scope: (lo, hi) range of tau, the box side as a fraction of the image side, 0 < lo < hi < 1
        (protocol (0.1, 0.8)).
    use_alpha: draw tau from Beta(alpha, alpha) and redraw from U(scope) outside it (OpenMixup HEAD);
        False (off, the published configs', default) draws tau ~ U(scope) as the paper.
    interpolation: resize mode; only "nearest" (the protocol's) is implemented.
    """

    name = "resizemix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        scope: Sequence[float] = (0.1, 0.8),
        use_alpha: bool = False,
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
