"""The method interface: every mixup method plugs into the one training loop through it.

A method is an ``nn.Module`` (so learned state such as AutoMix's MixBlock is checkpointed
with it) with one entry point, ``training_step``. Input-space methods only implement
``mix``; methods that need the model (ManifoldMix, PuzzleMix, AutoMix, SAMix) override
``training_step`` and, where they own parameters or schedules, ``param_groups`` and
``on_step_end``. The default step's loss is ``MixLoss``: the mixed soft cross-entropy, plus
DecoupleMix's regulariser as an option every such method takes. See docs/architecture.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


# ----------------------------------------------------------------------------- the losses
def mixed_cross_entropy(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
    """Soft cross-entropy against lam*onehot(y_a) + (1-lam)*onehot(y_b), mean over N.

    Equals lam*CE(y_a) + (1-lam)*CE(y_b) for scalar lam and supports per-sample (N,) lam
    (docs/protocol.md §1.5, §2.13). Computed in float32.
    """
    logp = torch.log_softmax(logits.float(), dim=1)  # (N, K) float32
    nll_a = -logp.gather(1, y_a[:, None]).squeeze(1)  # (N,)
    nll_b = -logp.gather(1, y_b[:, None]).squeeze(1)
    return (lam * nll_a + (1 - lam) * nll_b).mean()


def decoupled_nll(logits: Tensor, y_a: Tensor, y_b: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) float32 each: -log of y_a's softmax over every class but y_b, and of y_b's over every class but y_a
    (DecoupleMix's decoupled softmax, ``base.MixLoss``); -log(p_a / (1 - p_b)) by a masked logsumexp, exact
    where p_b is near 1."""
    z = logits.float()  # (N, K) float32
    z_a, z_b = z.gather(1, y_a[:, None]).squeeze(1), z.gather(1, y_b[:, None]).squeeze(1)  # (N,)
    without_b = z.scatter(1, y_b[:, None], float("-inf")).logsumexp(dim=1)  # (N,) log sum_{k != b} e^z_k
    without_a = z.scatter(1, y_a[:, None], float("-inf")).logsumexp(dim=1)
    return without_b - z_a, without_a - z_b


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: ``lam`` (shape () or (N,), float32) is the weight of ``y_a``."""

    x: Tensor  # (N, C, H, W) float32
    y_a: Tensor  # (N,) int64
    y_b: Tensor  # (N,) int64
    lam: Tensor  # () or (N,) float32
    mask: Tensor | None = None  # (N or 1, 1, H, W) float32 weight of x, for galleries


@dataclass(frozen=True)
class NeededRun:
    """The finished run a method needs (its registry entry's ``needs``), opened by the loop: its trained model and
    its run name (recorded in the summary)."""

    model: nn.Module
    name: str


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


def check_partner_tries(tries: int) -> int:
    """Validate ``random_partner``'s draw count once, in a constructor."""
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"partner_tries must be an int >= 1 (1: a plain permutation), got {tries!r}")
    return tries


# --- the default step's loss ---------------------------------------------------------------------------

DECOUPLE_FORMS = ("openmixup", "paper")
MIXED_EPS = 1e-3  # OpenMixup's soft_mix_cross_entropy: a class takes part in a mix when its target share is > 1e-3


@dataclass(frozen=True)
class MixLoss:
    """Mixup soft cross-entropy (MCE), plus DecoupleMix's decoupled regulariser when ``decouple``.

    DecoupleMix: Liu, Li et al., "Harnessing Hard Mixed Samples with Decoupled Regularizer", NeurIPS 2023,
    https://arxiv.org/abs/2203.10761. Code: OpenMixup's ``soft_mix_cross_entropy``
    (openmixup/models/losses/cross_entropy_loss.py) with ``ClsMixupHead(eta_weight=...)``; docs/methods.md §5.
    For an image mixing classes a != b the regulariser is the NLL of each class under a softmax without the
    other one, -log(e^z_a / sum_{k != b} e^z_k) and the same for b, so a class can be predicted confidently
    whatever its share. loss = MCE + sum over rows of (w_a * nll_a + w_b * nll_b) / N.

    Args:
        decouple: add the regulariser (off: False, the plain MCE bit for bit).
        decouple_eta: the regulariser's weight eta, > 0 (named apart from PuzzleMix's eta) (default 0.1: OpenMixup's base decouple configs, CIFAR-100 and
            ImageNet; its per-method CIFAR configs use 0.01-0.5).
        decouple_form: how eta reaches the two classes.
            "openmixup" (default: the code behind the authors' published numbers, run in OpenMixup; it has no
            Tiny-ImageNet DecoupleMix config): weights eta * lam and eta * (1 - lam) (its base configs:
            eta_weight mode "both", lam_scale_mode "pow", lam_idx 1), handed out in class-index order of the
            batch's first mixed image: the lam weight goes to that image's lower class index, so in about half
            of the batches (y_b < y_a there) y_a's term gets eta * (1 - lam) and y_b's eta * lam. No regulariser
            for same-class pairs, nor in a batch whose lam is exactly 0.5 or within 1e-3 of 0 or 1. A per-sample
            lam (AttentiveMix+) takes each image's own lam where OpenMixup needs one per batch.
            "paper": eta on both classes of every image with two classes and 0 < lam < 1: the two-hot
            regulariser, independent of lam (OpenMixup's head defaults, lam_scale_mode "none"; the paper's
            equations were not readable here, docs/methods.md §5).
    """

    decouple: bool = False
    decouple_eta: float = 0.1
    decouple_form: str = "openmixup"

    def __post_init__(self) -> None:
        if not isinstance(self.decouple, bool):
            raise ValueError(f"decouple must be true or false, got {self.decouple!r}")
        if isinstance(self.decouple_eta, bool) or not isinstance(self.decouple_eta, (int, float)) or not 0 < self.decouple_eta < math.inf:
            raise ValueError(f"decouple_eta must be a finite number > 0 (the decoupled regulariser's weight; OpenMixup's "
                             f"configs use 0.01 to 0.5), got {self.decouple_eta!r}")
        if self.decouple_form not in DECOUPLE_FORMS:
            raise ValueError(f"decouple_form must be one of {', '.join(DECOUPLE_FORMS)}, got {self.decouple_form!r}")

    def __call__(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
        loss = mixed_cross_entropy(logits, y_a, y_b, lam)
        return loss + self.regulariser(logits, y_a, y_b, lam) if self.decouple else loss

    def regulariser(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
        """The decoupled term, () float32, on the device (no host sync)."""
        nll_a, nll_b = decoupled_nll(logits, y_a, y_b)  # (N,) float32 each
        lam = lam.float().expand_as(nll_a)  # (N,)
        pair = y_a != y_b  # (N,) bool: two classes
        if self.decouple_form == "paper":
            w_a = w_b = (pair & (lam > 0) & (lam < 1)).float()
        else:
            on = pair & (lam > MIXED_EPS) & (1 - lam > MIXED_EPS) & (lam != 1 - lam)  # (N,) bool
            first = on.int().argmax().view(1)  # (1,) the first mixed image (0 when none: every weight is 0 then)
            swap = y_a.index_select(0, first) > y_b.index_select(0, first)  # (1,) bool: its y_a has the higher index
            w_a, w_b = torch.where(swap, 1 - lam, lam) * on, torch.where(swap, lam, 1 - lam) * on
        return self.decouple_eta * (w_a * nll_a + w_b * nll_b).mean()


class MixMethod(nn.Module):
    """Base class. Subclasses set ``name`` and implement ``mix`` or override ``training_step``.

    The Trainer calls, in order: ``setup`` once (before the optimizer is built and before a
    checkpoint is restored, so state created there is restored too), ``param_groups``, then per
    step ``training_step`` and ``on_step_end``, per epoch ``eval_logits``, and at the end
    ``summarize``. ``preview`` draws one mixed batch for galleries.
    """

    name: str = "base"
    mix_loss: MixLoss = MixLoss()  # the default step's loss; get_method sets it from the DecoupleMix settings

    def setup(self, model: nn.Module, *, cfg: Any, needed: NeededRun | None = None) -> None:
        """Build state that depends on the model or the run (EMA copies, teachers); default none. ``needed``: the
        finished run the registry says this method needs (``MethodSpec.needs``), opened by the loop
        (``mixnb.runs.needed_run``), or None when there is none."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"a {type(self).__name__} is not called on a batch directly: use mixnb.Mixer({self.name!r}, "
                        f"num_classes=K) in your own loop (x_mixed, soft targets = mixer(x, y)), or .mix(x, y, gen=...)")

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        raise NotImplementedError(f"{type(self).__name__} mixes inside training_step; it has no input-space mix")

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Default for input-space methods: draw, mix, forward, soft cross-entropy (``mix_loss``)."""
        batch = self.mix(x, y, gen=ctx.gen)
        loss = self.mix_loss(model(batch.x), batch.y_a, batch.y_b, batch.lam)
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
