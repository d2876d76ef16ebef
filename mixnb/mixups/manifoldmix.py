"""ManifoldMix: mixup of hidden features at a randomly chosen depth.

Paper: Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden States",
ICML 2019, https://arxiv.org/abs/1806.05236. Code: https://github.com/vikasverma1077/manifold_mixup.
Protocol: docs/protocol.md §2.5 (alpha 0.2, layer=(0, 3)): lam ~ Beta(alpha, alpha), a plain random
permutation (fixed points allowed, as in the code), and a layer drawn uniformly
from {input, after layer1, after layer2}; there h = lam * h + (1 - lam) * h[perm]
(``FeatureMix`` in ``mixnb/models/resnet.py``); mixed CE with y_a = y, y_b = y[perm].

The layer steers Python control flow, so it is drawn from the CPU generator (no device sync);
lam and perm come from the device generator. Galleries (``preview``) show the input-level mix,
the one layer whose mix is an image; hidden-layer mixes have no pixel picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mixnb.mixups._helpers import eager, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, StepContext, StepOutput, check_alpha, mixed_cross_entropy
from mixnb.models.resnet import STAGES, FeatureMix

DEFAULT_LAYERS = ("input", "layer1", "layer2")  # docs/protocol.md §2.5: layer=(0, 3), upper bound exclusive


@dataclass(frozen=True)
class ManifoldMixDraw:
    lam: Tensor  # () float32
    perm: Tensor  # (N,) int64
    stage: str  # where to mix, one of STAGES (a host value: it picks the code path)


@eager
def sample_manifoldmix(
    n: int, *, gen: torch.Generator, cpu_gen: torch.Generator, alpha: float, layers: Sequence[str] = DEFAULT_LAYERS
) -> ManifoldMixDraw:
    lam = sample_beta(alpha, alpha, gen=gen)
    perm = random_partner(n, gen=gen)
    stage = layers[int(torch.randint(len(layers), (), generator=cpu_gen))]  # CPU draw: no device sync
    return ManifoldMixDraw(lam, perm, stage)


def manifoldmix(model: nn.Module, x: Tensor, draw: ManifoldMixDraw) -> tuple[Tensor, Tensor]:
    """Forward with features mixed after ``draw.stage``; returns (logits, lam)."""
    return model(x, mix=FeatureMix(draw.stage, draw.lam, draw.perm)), draw.lam


class ManifoldMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for lam, > 0 (protocol default 0.2).
    layers: stages to mix after, drawn uniformly per step; distinct names from STAGES
        (protocol ("input", "layer1", "layer2"); ("input",) is input MixUp).
    """

    name = "manifoldmix"

    def __init__(self, *, alpha: float = 0.2, layers: Sequence[str] = DEFAULT_LAYERS) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        bad = [s for s in layers if s not in STAGES]
        if isinstance(layers, str) or not layers or bad or len(set(layers)) != len(layers):
            raise ValueError(f"ManifoldMix layers must be distinct names from {STAGES}, got {layers!r}")
        self.layers = tuple(layers)

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        draw = sample_manifoldmix(x.shape[0], gen=ctx.gen, cpu_gen=ctx.cpu_gen, alpha=self.alpha, layers=self.layers)
        logits, lam = manifoldmix(model, x, draw)
        loss = mixed_cross_entropy(logits, y, y[draw.perm], lam)
        return StepOutput(loss, {"loss": loss.detach()})

    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """The input-level mix (layer "input", the one mix that is an image) with this method's
        lam distribution, drawn by ``sample_manifoldmix``."""
        one_layer = torch.Generator()  # its only draw, randint(1), is always 0: the seed does not matter
        draw = sample_manifoldmix(x.shape[0], gen=gen, cpu_gen=one_layer, alpha=self.alpha, layers=("input",))
        return MixedBatch(FeatureMix(draw.stage, draw.lam, draw.perm).apply(x), y, y[draw.perm], draw.lam)
