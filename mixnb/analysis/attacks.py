"""FGSM and PGD-10 (§2): pixel-space attacks at eps = 8/255 through the run's normalisation (its profile's mean
and std, ``Run.normalise``; ImageNet's by default), clamped to [0, 1]; PGD: step 2/255, 10 steps, uniform random start,
projection onto the eps-box around the clean image. The model is in eval mode (BN running statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mixnb.analysis.run import Normalise, imagenet_normalise
from mixnb.analysis.settings import AnalysisSettings
from mixnb.rng import stream_seed


def input_grad(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
               normalise: Normalise = imagenet_normalise) -> Tensor:
    """d CE(f(normalise(x)), y) / dx for pixels x in [0, 1] (summed CE: each image's own gradient)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(logits(normalise(x)).float(), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def fgsm(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: float = 8 / 255,
         normalise: Normalise = imagenet_normalise) -> Tensor:
    """x + eps sign(grad), clamped to [0, 1]; x: (N, 3, H, W) pixels in [0, 1] (§2, the standard form)."""
    return (x + eps * input_grad(logits, x, y, normalise).sign()).clamp(0, 1).detach()


def pgd(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: float = 8 / 255, step: float = 2 / 255,
        steps: int = 10, gen: torch.Generator, normalise: Normalise = imagenet_normalise) -> Tensor:
    """Untargeted L-inf PGD in pixel space (§2 "standard"): x0 = clamp(x + U(-eps, eps), 0, 1), then ``steps``
    times x <- clamp(min(max(x + step sign(grad), x - eps), x + eps), 0, 1). The clean centre is fixed
    (OpenMixup's re-de-normalised centre collapses images to a flat colour, §2 bug 3)."""
    u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x_adv = (x + (2 * u - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv + step * input_grad(logits, x_adv, y, normalise).sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


def adversarial(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, s: AnalysisSettings, *,
                normalise: Normalise = imagenet_normalise) -> dict[str, Any]:
    """Top-1 (%) on clean, FGSM and PGD images of (N, 3, H, W) uint8 ``x``, in batches; PGD over restarts."""
    gen = torch.Generator(x.device).manual_seed(stream_seed(s.seed, "pgd"))
    hits = {"clean": 0, "fgsm": 0, "pgd": 0}
    for i in range(0, len(x), s.batch_size):
        xb, yb = x[i:i + s.batch_size].float() / 255, y[i:i + s.batch_size]
        with torch.no_grad():
            hits["clean"] += int((logits(normalise(xb)).argmax(1) == yb).sum())
        x_adv = fgsm(logits, xb, yb, eps=s.eps, normalise=normalise)
        with torch.no_grad():
            hits["fgsm"] += int((logits(normalise(x_adv)).argmax(1) == yb).sum())
        robust = torch.ones_like(yb, dtype=torch.bool)
        for _ in range(s.pgd_restarts):
            x_adv = pgd(logits, xb, yb, eps=s.eps, step=s.pgd_step, steps=s.pgd_steps, gen=gen, normalise=normalise)
            with torch.no_grad():
                robust &= logits(normalise(x_adv)).argmax(1) == yb
        hits["pgd"] += int(robust.sum())
    n = len(x)
    return {"images": n, "eps": s.eps, "eps_255": s.eps * 255, "clean_top1": 100 * hits["clean"] / n,
            "fgsm_top1": 100 * hits["fgsm"] / n, "pgd_top1": 100 * hits["pgd"] / n,
            "pgd": {"step": s.pgd_step, "steps": s.pgd_steps, "restarts": s.pgd_restarts, "random_start": True},
            "space": "pixels in [0, 1], normalised inside the model (analysis.json's normalisation)"}
