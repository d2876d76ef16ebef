"""The method interface: every mixup method plugs into the one training loop through it.

A method is an ``nn.Module`` (so learned state such as AutoMix's MixBlock is checkpointed
with it) with one entry point, ``training_step``. Input-space methods only implement
``mix``; methods that need the model (ManifoldMix, PuzzleMix, AutoMix, SAMix) override
``training_step`` and, where they own parameters or schedules, ``param_groups`` and
``on_step_end``. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.mixups._helpers import mixed_cross_entropy


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: ``lam`` (shape () or (N,), float32) is the weight of ``y_a``."""

    x: Tensor  # (N, C, H, W) float32
    y_a: Tensor  # (N,) int64
    y_b: Tensor  # (N,) int64
    lam: Tensor  # () or (N,) float32
    mask: Tensor | None = None  # (N or 1, 1, H, W) float32 weight of x, for galleries


@dataclass
class StepContext:
    """What a training step may use besides the model and batch.

    ``gen`` draws on the training device (no host sync); ``cpu_gen`` is for draws that
    steer Python control flow (e.g. ManifoldMix's layer) or feed CPU solvers.
    """

    gen: torch.Generator
    cpu_gen: torch.Generator
    epoch: int = 0
    step: int = 0  # global iteration, 0-based
    total_steps: int = 1


@dataclass
class StepOutput:
    loss: Tensor  # () float32, what the optimizer minimises
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached device scalars; read at log time only


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Validate a Beta concentration once, in a constructor."""
    if not alpha > 0:
        raise ValueError(f"{name} must be > 0 (Beta({name}, {name}) concentration), got {alpha!r}")
    return float(alpha)


class MixMethod(nn.Module):
    """Base class. Subclasses set ``name`` and implement ``mix`` or override ``training_step``.

    The Trainer calls, in order: ``setup`` once (before the optimizer is built and before a
    checkpoint is restored, so state created there is restored too), ``param_groups``, then per
    step ``training_step`` and ``on_step_end``, per epoch ``eval_logits``, and at the end
    ``summarize``. ``preview`` draws one mixed batch for galleries.
    """

    name: str = "base"

    def setup(self, model: nn.Module, *, cfg: Any, run_dir: Path | None) -> None:
        """Build state that depends on the model or the run (EMA copies, teachers); default none."""

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        raise NotImplementedError(f"{type(self).__name__} mixes inside training_step; it has no input-space mix")

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Default for input-space methods: draw, mix, forward, soft cross-entropy."""
        batch = self.mix(x, y, gen=ctx.gen)
        loss = mixed_cross_entropy(model(batch.x), batch.y_a, batch.y_b, batch.lam)
        return StepOutput(loss, {"loss": loss.detach()})

    def param_groups(self, model: nn.Module, *, lr: float, min_lr: float) -> list[dict]:
        """Optimizer groups; each carries ``lr`` (base) and ``min_lr`` for the per-epoch cosine."""
        return [{"params": list(model.parameters()), "lr": lr, "min_lr": min_lr}]

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        """Called after every optimizer step (AutoMix/SAMix: EMA update)."""

    def eval_logits(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Logits to evaluate, by head name; "" is the reported head."""
        return {"": model(x)}

    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """One mixed batch for galleries (model in eval mode is the caller's choice)."""
        return self.mix(x, y, gen=gen)

    def summarize(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        """Extra read-outs for summary.json from the per-epoch metric rows; default none."""
        return {}
