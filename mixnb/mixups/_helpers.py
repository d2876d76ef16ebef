"""Small pure helpers shared by every method: Beta draws, partners, boxes, targets.

All draws take an explicit ``torch.Generator`` and stay on its device, so the training
step never waits on the host (docs/performance.md §8.4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

Fn = TypeVar("Fn", bound=Callable)


def eager(fn: Fn) -> Fn:
    """Keep ``fn`` out of a compiled training step (``RunConfig.capture="step"``), for every method's draws
    (``sample_*``) and host solvers. Dynamo cannot trace a ``torch.Generator`` and would split the step at each
    draw inside ``fn``; marked, a draw function is one split, runs as in eager (the same numbers, bit for bit)
    and the tensor code around it is captured whole. No effect outside compile."""
    return torch.compiler.disable(fn)


def device_constant(fn: Fn) -> Fn:
    """Cache a function that builds a read-only constant on a device (8 entries), so a step never copies it from
    the host again (a copy blocks the host). While dynamo traces a compiled step, ``fn`` is called directly: the
    graph holds the constant, and dynamo would only trace through (and warn about) the cache."""
    cached = functools.lru_cache(maxsize=8)(fn)

    @functools.wraps(fn)
    def get(*args: Any) -> Any:
        return fn(*args) if torch.compiler.is_compiling() else cached(*args)

    get.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return get  # type: ignore[return-value]


_GAMMA_TRIES = 16  # Marsaglia-Tsang accepts >95% per try: P(16 rejections) < 1e-20


def sample_gamma(shape: tuple[int, ...], conc: float, *, gen: torch.Generator) -> Tensor:
    """Gamma(conc, 1) draws by vectorised Marsaglia-Tsang (torch has no seeded gamma)."""
    if conc <= 0:
        raise ValueError(f"Gamma concentration must be > 0, got {conc}")
    boost = conc < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1
    d = (conc + 1 if boost else conc) - 1 / 3
    c = 1 / (9 * d) ** 0.5
    z = torch.randn((_GAMMA_TRIES, *shape), generator=gen, device=gen.device)
    u = torch.rand((_GAMMA_TRIES, *shape), generator=gen, device=gen.device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = ok.to(torch.int8).argmax(dim=0, keepdim=True)  # first accepted try (0 if none: never in practice)
    g = (d * v).gather(0, first).squeeze(0)
    if boost:
        g = g * torch.rand(shape, generator=gen, device=gen.device) ** (1 / conc)
    return g


@eager
def sample_beta(alpha: float, beta: float, *, gen: torch.Generator, shape: tuple[int, ...] = ()) -> Tensor:
    """Beta(alpha, beta) as a float32 tensor on ``gen``'s device."""
    if alpha == beta == 1:  # Beta(1, 1) is U(0, 1): one kernel instead of the ~50 of two gamma draws
        return torch.rand(shape, generator=gen, device=gen.device)
    a = sample_gamma(shape, alpha, gen=gen)
    b = sample_gamma(shape, beta, gen=gen)
    return (a / (a + b)).float()


# OpenMixup's ``_no_repeat_shuffle_idx`` (cutmix.py, fmix.py): one randperm, then up to 10 redraws while the
# current one has a fixed point, the last redraw kept unchecked: 11 draws in all, so a batch keeps a self-pair
# with P(fixed point)^11 ~ (1 - 1/e)^11 = 0.64% (N = 100), not the 1.0% of 10 draws.
NO_REPEAT_TRIES = 11


@eager
def random_partner(n: int, *, gen: torch.Generator, tries: int = 1) -> Tensor:
    """A uniform random permutation (N,); with ``tries`` > 1 the first of ``tries`` draws
    without a fixed point, else the last one (OpenMixup's ``_no_repeat_shuffle_idx``)."""
    perms = torch.rand((tries, n), generator=gen, device=gen.device).argsort(dim=1)  # (T, N)
    if tries == 1:
        return perms[0]
    fixed = (perms == torch.arange(n, device=perms.device)).sum(dim=1)  # (T,) fixed points per draw
    fixed[-1].fill_(0)  # fall back to the last draw (fill_, not `= 0`: that copies a host scalar)
    return perms.index_select(0, fixed.argmin().view(1)).squeeze(0)  # first 0 (argmin: first minimum); no host sync


def gather_rows(x: Tensor, perm: Tensor) -> Tensor:
    """x[perm] along dim 0, in x's memory format."""
    # index_select copies whole images (0.24 vs 0.67 ms for x[perm]: 100x3x64x64, 2-core CPU) but returns NCHW
    return x.index_select(0, perm) if x.is_contiguous() else x[perm]


def box_from_lam(lam: Tensor, center: Tensor, h: int, w: int) -> Tensor:
    """CutMix box (y0, y1, x0, x1) int64 with side int(size * sqrt(1 - lam)) around ``center``,
    corners at center -/+ side // 2, clipped to the image (docs/protocol.md §2.4)."""
    ratio = torch.sqrt(1 - lam)
    # floor(floor(s * r) / 2) == floor(s * r / 2); halving is exact in float, .long() floors r >= 0: 2 kernels, not 6
    half = (ratio * (h / 2)).long() if h == w else torch.stack([ratio * (h / 2), ratio * (w / 2)]).long()  # () or (2,)
    return box_around(center, half, h, w)


def box_around(center: Tensor, half: Tensor, h: int, w: int) -> Tensor:
    """Box (y0, y1, x0, x1) spanning center -/+ half, clipped to [0, h] x [0, w] (center inside, half >= 0)."""
    box = torch.stack([center - half, center + half], dim=1)  # (2, 2): (y0, y1), (x0, x1)
    # Python bounds, not a host tensor (a sync on CUDA); clamp(0, size) only moves y0 up and y1 down, as the clip
    box = box.clamp(0, h) if h == w else torch.stack([box[0].clamp(0, h), box[1].clamp(0, w)])
    return box.flatten()


def lam_from_box(box: Tensor, h: int, w: int) -> Tensor:
    """1 - box area / image area, float32 (the weight of the un-pasted image)."""
    area = (box[1::2] - box[0::2]).prod()  # () int64: height * width
    return 1 - area / (h * w)  # true division of int64 computes in float32, as area.float() / (h * w)


def box_mask(box: Tensor, h: int, w: int) -> Tensor:
    """(H, W) bool mask, True inside the box."""
    past = torch.arange(max(h, w), device=box.device) >= box[:, None]  # (4, L): index >= y0, y1, x0, x1
    inside = past[0::2] > past[1::2]  # (2, L): lo <= index < hi, rows then cols; one compare for all four edges
    return inside[0, :h, None] & inside[1, None, :w]


def mix_with_mask(x: Tensor, perm: Tensor, mask: Tensor) -> Tensor:
    """Where ``mask`` (float weight of x, broadcastable to x) is 1 keep x, else take x[perm]."""
    return mask * x + (1 - mask) * x[perm]


def soft_target(y_a: Tensor, y_b: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """The mixed target lam*onehot(y_a) + (1-lam)*onehot(y_b), (N, K) float32."""
    lam = lam.reshape(-1, 1) if lam.dim() else lam
    one_a = torch.nn.functional.one_hot(y_a, num_classes).float()
    one_b = torch.nn.functional.one_hot(y_b, num_classes).float()
    return lam * one_a + (1 - lam) * one_b
