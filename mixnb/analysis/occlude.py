"""Occlusion (§3): a seeded random order of the 64 8x8 patches of each 64 px image; at fraction r the first
round(64 r) patches are set to 0 in the normalised input (the mean colour, as OpenMixup does); top-1 at
r = 0, 0.1, ..., 0.9 and the trapezoid area under that curve divided by the range (0.9): a mean accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mixnb.analysis.run import Normalise, imagenet_normalise
from mixnb.analysis.settings import AnalysisSettings
from mixnb.rng import stream_seed


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


def occlusion(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, s: AnalysisSettings, *,
              normalise: Normalise = imagenet_normalise) -> dict[str, Any]:
    """Top-1 (%) at each occlusion fraction of (N, 3, H, W) uint8 ``x`` and the normalised area under the curve."""
    gen = torch.Generator(x.device).manual_seed(stream_seed(s.seed, "occlusion"))
    masks = occlusion_masks(len(x), x.shape[-1], s.occlusion_patch, s.occlusion_fractions, gen=gen)
    top1 = []
    for mask in masks:  # one fraction at a time (10 of them), each in batches
        hits = 0
        for i in range(0, len(x), s.batch_size):
            with torch.no_grad():
                xb = normalise(x[i:i + s.batch_size].float() / 255)
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
