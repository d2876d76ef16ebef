"""GridMix: paste the partner through a grid of square holes inside a random crop.

Paper: Baek, Bang and Shim, "GridMix: Strong regularization through local context mapping",
Pattern Recognition 109, 2021 (no arXiv version),
https://www.sciencedirect.com/science/article/pii/S0031320320303976.
Code: https://github.com/IlyaDobrynin/GridMixup, the implementation OpenMixup's
``openmixup/models/augments/gridmix.py`` follows (the reference here).
Protocol: docs/protocol.md §2.12, docs/methods.md §2 (alpha 0.2, n_holes (2, 6), hole_aspect_ratio 1,
cut_area_ratio (0.5, 1), cut_aspect_ratio (0.5, 2)). Per batch: lam ~ Beta(alpha, alpha); n holes
across, a hole aspect, a crop area share r and a crop aspect a, each uniform in its range. Crop:
area int(HW r), width cw = int(sqrt(area / a)), height ch = int(cw a), top-left corner
int((H - ch) u) x int((W - cw) u') (truncated toward zero). Grid: patch width p = ceil(cw / n),
height q = int(p * hole aspect); hole int(p sqrt(1 - lam)) x int(q sqrt(1 - lam)), clipped to
[1, p - 1] x [1, q - 1], at the top-left of every patch, cut at the crop's edge. The holes take
x[perm] (a plain random permutation); lam = 1 - hole area / HW, exact from the mask.

Where we follow the reference's code, each deliberate:
- The algorithm is GridMixup's, not the paper's: no patch-level labels and no local-context loss
  (the paper's second head), holes in a crop rather than cells of the whole image.
- The crop is not clipped to the image: when r / a > 1 or r a > 1 it is larger than the image (about
  half the draws at the protocol's ranges) and its corner negative; each hole is then cut as the
  reference's Python slices cut it, a negative end counting from the far edge, so holes left of or
  above the image reappear at its right or bottom edge (``slice_cover``). lam stays exact.
- Holes never cover 0 or 100% of a patch (the clip to [1, p - 1]), so lam = 1 gives 1 px holes,
  not the identity, and lam = 0 does not fill the crop.
- The reference names dims 2 / 3 W / H: harmless for its square inputs; here rows are rows.
The reference asserts n <= cw // 2 and divides by q (it fails for q = 0); neither can happen at the
protocol's settings and 64 px (cw >= 32, q >= 6), and no host check is made (it would sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixnb.mixups._helpers import eager, gather_rows, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha


@dataclass(frozen=True)
class GridMixDraw:
    lam: Tensor  # () float32, the prior lam (sets the hole size)
    perm: Tensor  # (N,) int64
    n_holes: Tensor  # () int64, holes across the crop
    ratios: Tensor  # (3,) float32: hole aspect (height / width), crop area share, crop aspect (height / width)
    corner: Tensor  # (2,) float32 in [0, 1): the crop's (row, col) offset as a share of H - ch, W - cw


@eager
def sample_gridmix(
    n: int, h: int, w: int, *, gen: torch.Generator, alpha: float, n_holes: tuple[int, int],
    hole_aspect_ratio: tuple[float, float], cut_area_ratio: tuple[float, float], cut_aspect_ratio: tuple[float, float],
) -> GridMixDraw:
    """The draw for an (N, C, H, W) batch; each range is (lo, hi), n_holes inclusive."""
    lam = sample_beta(alpha, alpha, gen=gen)
    holes = torch.randint(n_holes[0], n_holes[1] + 1, (), generator=gen, device=gen.device)  # () int64
    ratios = torch.empty(3, device=gen.device)  # (3,) float32, each uniform in its range: 1 kernel each
    for i, (lo, hi) in enumerate((hole_aspect_ratio, cut_area_ratio, cut_aspect_ratio)):
        ratios[i].uniform_(lo, hi, generator=gen)
    perm = random_partner(n, gen=gen)
    corner = torch.rand(2, generator=gen, device=gen.device)  # (2,) float32 (row, col)
    return GridMixDraw(lam, perm, holes, ratios, corner)


def slice_cover(start: Tensor, patch: Tensor, hole: Tensor, extent: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """(A, max(sizes)) bool: on each of A axes of ``sizes`` px, the pixels that the Python slices
    x[start + k p : start + min(k p + hole, extent)], k = 0, 1, ... with k p < extent, select, a
    negative end counting from the far edge (as x[-3:-1]); needs 1 <= hole < p, else nothing.
    Each tensor (A,) int64, one entry per axis; pixels past an axis's size are False."""
    start, patch, hole, extent = (v[:, None] for v in (start, patch, hole, extent))  # (A, 1) each
    t = torch.arange(max(sizes), device=start.device)  # (L,) int64
    size: Tensor | int = sizes[0]
    if len(set(sizes)) > 1:  # a (A, 1) column of sizes, filled on the device (no host-made tensor)
        size = torch.full((len(sizes), 1), sizes[0], device=start.device)
        for i, n in enumerate(sizes[1:], 1):
            size[i] = n
    p = patch.clamp_min(1)  # no division by 0; p < 2 has no holes (checked below)

    def in_hole(u: Tensor) -> Tensor:  # u: the crop's coordinate, 0 at its first pixel
        return (u >= 0) & (u < extent) & (u % p < hole)

    def hole_end(k: Tensor) -> Tensor:  # image coordinate where hole k's slice ends
        return start + torch.minimum(k * p, extent).add(hole).minimum(extent)

    u = t - start  # (A, L)
    ahead = in_hole(u) & (u - u % p + start >= 0)  # slices starting at >= 0: taken as they are
    u = t - size - start
    wrapped = in_hole(u) & (hole_end(u.div(p, rounding_mode="floor")) < 0)  # both ends < 0: shifted by +size
    # at most one slice straddles 0 (start < 0 <= end); it covers [start + size, end) (empty unless hole > size)
    k = (-start - 1).div(p, rounding_mode="floor")  # the last hole starting left of 0
    a, b = start + k * p, hole_end(k)
    straddle = (k >= 0) & (k * p < extent) & (b >= 0) & (t >= a + size) & (t < b)
    return (ahead | wrapped | straddle) & (hole >= 1) & (patch > hole) & (t < size)


def gridmix_mask(draw: GridMixDraw, h: int, w: int) -> Tensor:
    """(H, W) bool, True in the holes (where x[perm] goes). Both axes at once: (2,) = (rows, cols)."""
    hole_aspect, area_share, aspect = draw.ratios.unbind()
    area = (area_share * (h * w)).long()  # () int64, int(H W r)
    cw = (area / aspect).sqrt().long()  # crop width, int(sqrt(area / a))
    ch = (cw * aspect).long()  # crop height, int(cw a)
    extent = torch.stack([ch, cw])  # (2,) int64
    free = h - extent if h == w else torch.stack([h - ch, w - cw])  # (2,) room left of / above the crop
    start = (free * draw.corner).long()  # (2,) the crop's corner; .long() truncates toward 0, as int()
    p = (cw + draw.n_holes - 1).div(draw.n_holes, rounding_mode="floor")  # patch width, ceil(cw / n)
    patch = torch.stack([(p * hole_aspect).long(), p])  # (2,) patch height, width
    hole = (patch * (1 - draw.lam).sqrt()).long().clamp_min(1).minimum(patch - 1)  # min(max(., 1), p - 1)
    cover = slice_cover(start, patch, hole, extent, (h, w))  # (2, max(H, W)) bool
    return cover[0, :h, None] & cover[1, None, :w]  # the holes are every (row slice, col slice) pair


def gridmix(x: Tensor, draw: GridMixDraw) -> tuple[Tensor, Tensor, Tensor]:
    """x with x[perm] in the holes; returns (x_mixed, lam, mask) with lam = 1 - hole area / HW, the
    exact share of x, and mask (1, 1, H, W) float32 the weight of x."""
    h, w = x.shape[-2:]
    holes = gridmix_mask(draw, h, w).view(1, 1, h, w)  # (1, 1, H, W) bool
    keep = (~holes).float()
    # a binary mask selects: one kernel, the blend's pixels for finite x
    return torch.where(holes, gather_rows(x, draw.perm), x), keep.mean(), keep


def _pair(
    name: str, value: float | Sequence[float], valid: str, ok: Callable[[float], bool], kind: type = float
) -> tuple:
    """``value`` (a number or a (lo, hi) pair) as a (lo, hi) tuple, lo <= hi, each ``ok``; else ValueError."""
    pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value, value)
    numbers = len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if not (numbers and all(math.isfinite(v) and ok(v) for v in pair) and pair[0] <= pair[1]):
        raise ValueError(f"GridMix {name} must be a number or a (lo, hi) pair with lo <= hi, each {valid}; "
                         f"got {value!r}")
    return tuple(kind(v) for v in pair)


class GridMix(MixMethod):
    """Args (each range a number or a (lo, hi) pair, drawn uniformly once per batch):
    alpha: Beta(alpha, alpha) concentration for the prior lam, > 0 (protocol 0.2).
    n_holes: holes across the crop, integers >= 1, both ends included (protocol (2, 6)).
    hole_aspect_ratio: patch (and hole) height / width, > 0 (protocol 1).
    cut_area_ratio: crop area / image area, in (0, 1] (protocol (0.5, 1)).
    cut_aspect_ratio: crop height / width, > 0 (protocol (0.5, 2)).
    """

    name = "gridmix"

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        n_holes: int | Sequence[int] = (2, 6),
        hole_aspect_ratio: float | Sequence[float] = 1.0,
        cut_area_ratio: float | Sequence[float] = (0.5, 1.0),
        cut_aspect_ratio: float | Sequence[float] = (0.5, 2.0),
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        self.n_holes = _pair("n_holes", n_holes, "an integer >= 1", lambda v: v >= 1 and float(v).is_integer(), int)
        self.hole_aspect_ratio = _pair("hole_aspect_ratio", hole_aspect_ratio, "> 0", lambda v: v > 0)
        self.cut_area_ratio = _pair("cut_area_ratio", cut_area_ratio, "in (0, 1]", lambda v: 0 < v <= 1)
        self.cut_aspect_ratio = _pair("cut_aspect_ratio", cut_aspect_ratio, "> 0", lambda v: v > 0)

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        draw = sample_gridmix(
            x.shape[0], *x.shape[-2:], gen=gen, alpha=self.alpha, n_holes=self.n_holes,
            hole_aspect_ratio=self.hole_aspect_ratio, cut_area_ratio=self.cut_area_ratio,
            cut_aspect_ratio=self.cut_aspect_ratio,
        )
        x_mixed, lam, keep = gridmix(x, draw)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, keep)
