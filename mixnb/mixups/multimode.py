"""Multi-mode mixing: each step draws one method from a list, each with its own alpha.

Reference code: OpenMixup's ``MixUpClassification`` with lists ``mix_mode``, ``alpha`` and ``mix_prob``
(openmixup/models/classifiers/mixup_classification.py; docs/protocol.md §1.6, docs/methods.md §7), and timm's
``Mixup`` (timm/data/mixup.py), which switches between MixUp and CutMix per batch with ``switch_prob``.
Protocol: no published Tiny-ImageNet number. The registry's ``mixup+cutmix`` is timm's switch with
``switch_prob`` 0.5 (timm's default) and the alphas of DeiT's recipe on it, MixUp 0.8 and CutMix 1.0 (DeiT
``main.py``; timm's own defaults are ``Mixup(mixup_alpha=1.0, cutmix_alpha=0.0)`` and 0 for both in its
``train.py``). OpenMixup's Tiny multi-mode config differs: [mixup, cutmix, vanilla] with alpha [0.1, 1, 1],
uniform (``r18_mixups_CE_none_multi_mode.py``); ``mix_modes=["mixup", "cutmix", "vanilla"],
mix_prob=[1/3, 1/3, 1/3], alphas=[0.1, 1, 1]`` is that one.
Deviations from OpenMixup: the mode comes from the step's host generator (it draws Python ``random`` or a
freshly seeded NumPy RandomState); ``mix_prob`` must sum to 1 (it accepts sums below 1, then fails in NumPy);
no ``mix_repeat``. Each mode is its registry method with the settings of OpenMixup's HEAD code (the registry's
``head``: no published number, so no publication-time code to follow): CutMix keeps OpenMixup's no-repeat
partners, where timm pairs each image with the batch reversed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.mixups.base import MixedBatch, MixMethod, NeededRun, StepContext, StepOutput

_OWN = ("param_groups", "on_step_end", "eval_logits")  # what a mode may not own: one model, one optimizer, one head


def _number(value: Any, low: float) -> bool:
    """A finite int or float (not a bool) >= ``low``."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value < math.inf


class MultiMode(MixMethod):
    """Args:
    mix_modes: registry method names, one drawn per step; a name may repeat (each entry has its own alpha).
        Not AutoMix/SAMix (they own optimizer groups, an EMA and heads; OpenMixup's modes stub them too).
    mix_prob: each mode's probability, >= 0, summing to 1 (timm's switch_prob 0.5 is (0.5, 0.5)).
    alphas: each mode's Beta(alpha, alpha) concentration, > 0; ignored for a mode without alpha (vanilla).
    build, spec_of: the registry's ``get_method`` and ``get_spec``, which ``get_method`` passes in (the registry
        imports this module, so this module does not import the registry).
    """

    name = "multimode"

    def __init__(self, *, mix_modes: Sequence[str] = ("mixup", "cutmix"), mix_prob: Sequence[float] = (0.5, 0.5),
                 alphas: Sequence[float] = (0.8, 1.0), build: Callable[..., MixMethod],
                 spec_of: Callable[[str], Any]) -> None:
        super().__init__()
        if not isinstance(mix_modes, (list, tuple)) or not mix_modes:
            raise ValueError(f"mix_modes must be a non-empty list of method names, got {mix_modes!r}")
        n = len(mix_modes)
        if not all(isinstance(v, (list, tuple)) and len(v) == n for v in (mix_prob, alphas)):
            raise ValueError(f"mix_prob and alphas need one value per mode ({n}: {list(mix_modes)}), got "
                             f"mix_prob={mix_prob!r}, alphas={alphas!r}")
        if not all(_number(p, 0) for p in mix_prob) or abs(sum(mix_prob) - 1) > 1e-6:
            raise ValueError(f"mix_prob must be numbers >= 0 summing to 1, one per mode, got {list(mix_prob)!r}")
        if not all(_number(a, 0) and a > 0 for a in alphas):
            raise ValueError(f"alphas must be numbers > 0 (Beta(alpha, alpha) concentrations), got {list(alphas)!r}")
        modes = []
        for mode, alpha in zip(mix_modes, alphas):
            try:
                spec = spec_of(mode)
            except ValueError as err:
                raise ValueError(f"mix_modes: {err}") from None
            own = [f for f in _OWN if getattr(spec.cls, f) is not getattr(MixMethod, f)]
            if issubclass(spec.cls, MultiMode) or own:
                why = "is itself multi-mode" if not own else f"has its own {', '.join(own)}"
                raise ValueError(f"mix_modes: {mode!r} {why}; a mode may only own its training step")
            modes.append(build(mode, **spec.head, **({"alpha": alpha} if "alpha" in spec.defaults else {})))
        self.mix_modes = tuple(mix_modes)
        self.mix_prob, self.alphas = tuple(map(float, mix_prob)), tuple(map(float, alphas))
        self.modes = nn.ModuleList(modes)  # submodules: their state goes into the checkpoint with this one
        self._prob = torch.tensor(self.mix_prob, dtype=torch.float64)  # (M,) host; a plain attribute, no state

    def draw_mode(self, gen: torch.Generator) -> int:
        """The index of this step's mode, drawn on ``gen`` (a host generator: Python steers on it, no sync)."""
        return int(torch.multinomial(self._prob.to(gen.device), 1, generator=gen))

    def setup(self, model: nn.Module, *, cfg: Any, needed: NeededRun | None = None) -> None:
        for mode in self.modes:
            mode.setup(model, cfg=cfg, needed=needed)

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        return self.modes[self.draw_mode(ctx.cpu_gen)].training_step(model, x, y, ctx)

    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """The drawn mode's preview; the mode is drawn on ``gen`` (galleries have no host generator)."""
        return self.modes[self.draw_mode(gen)].preview(model, x, y, gen=gen)

    def summarize(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        return {k: v for mode in self.modes for k, v in mode.summarize(rows).items()}
