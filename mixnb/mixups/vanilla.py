"""Vanilla: no mixing, plain cross-entropy (docs/protocol.md §1.5, ``mix_mode="vanilla"``)."""

from __future__ import annotations

import torch
from torch import Tensor

from mixnb.mixups.base import MixedBatch, MixMethod


class Vanilla(MixMethod):
    """The un-mixed baseline; ``lam`` is 1 so the soft loss is plain CE."""

    name = "vanilla"

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        return MixedBatch(x, y, y, torch.ones((), device=x.device))
