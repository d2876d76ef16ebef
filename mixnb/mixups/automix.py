"""AutoMix: a MixBlock learns per-pixel mixing masks from a momentum encoder's features.

Paper: Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022,
https://arxiv.org/abs/2103.13027. Code: https://github.com/Westlake-AI/openmixup
(``models/classifiers/automix.py`` ``AutoMixup``, ``models/heads/pmix_block.py`` ``PixelMixBlock``).
Protocol: docs/protocol.md §3 (alpha 2, EMA 0.999 -> 0.999999 after 10% of the iterations, lam_margin
0.08, mask loss 0.1 with margin 0.1, MixBlock lr 0.1 -> 1e-3, backbone floor 0.05) and §1.7.

One step (§3.3): lam_mb, lam_bb ~ Beta(alpha, alpha) and two partner permutations; the EMA
encoder k (train mode, no graph) gives stage-3 features of the clean batch; the MixBlock turns
them into m_mb (with gradient) and m_bb (detached), each the per-pixel share of x[perm]. The
backbone branch falls back to plain mixup when lam_bb or 1 - lam_bb <= lam_margin. Loss =
mix_q (online encoder q on x_bb, ``head_mix_q``) + one_q (q on the clean batch, the model's fc)
+ mix_k (k on x_mb, ``head_mix_k``: k is frozen, so this trains only the MixBlock) + 0.1 * the
mask loss. Each mixed CE uses the sampled scalar lam (the weight of y_a = y), not the mask's
true share: the mask loss keeps the batch share of x within 0.1 of lam. After each SGD step k
and its heads follow q by EMA (``on_step_end``).

Heads: q's "one" head is the model's own fc; the method owns ``head_mix_q`` and the EMA copies
(``encoder_k`` = a copy of the whole model, so its fc is ``head_one_k``; ``head_mix_k``). All four
are evaluated; the table shows the online clean head (``median_top1``), and ``summarize`` adds the
reference's best-of-heads number (``reference_top1``, §1.7) next to it.

Where we follow the reference's code rather than the paper: on Tiny-ImageNet the MixBlock gets
no lambda input (``lam_concat=False``, §7.5); the mask side is ``mask_mode="none_v_"`` (the Tiny
configs, and the only mode at HEAD): the value conv reads x_(1-lam), m = sigmoid(upsample(P v)) is
the share of x[perm] and the mask loss reads m (an older default, "none", took P^T v on x_lam);
the EMA schedule is ``CosineScheduleHook`` with the absolute it/itmax (m starts near 0.99902 at
10%); the encoder k stays in train mode, so its BN statistics come from its own forwards; hard CE.
Deviations: the MixBlock runs in fp32 under bf16 autocast (the reference is fp32 throughout);
the bb mask is computed under no_grad instead of computed then detached (same values). ``att_norm``
(default on): BatchNorm after the q/k conv, as the Tiny configs that published the table (``e81ed85``,
``att_norm_cfg=dict(type='BN')``; docs/publication.md); off at HEAD. RX-50's 2 x 50 per-GPU BN is
``RunConfig.bn_groups`` (the MixBlock's BN grouped like the others). Out of scope: ``mask_adjust``
(0 on Tiny), the debug plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.mixups._automix_ops import (
    MixBlock,
    backbone_weight,
    ema_momentum,
    ema_update_,
    frozen_copy,
    mask_loss,
    pool,
    reference_readout,
    training_forward,
)
from mixnb.mixups._helpers import eager, mix_with_mask, random_partner, sample_beta
from mixnb.mixups.base import (MixedBatch, MixMethod, NeededRun, StepContext, StepOutput, check_alpha,
                               mixed_cross_entropy)


@dataclass(frozen=True)
class AutoMixDraw:
    lam: Tensor  # (2,) float32: [lam_mb, lam_bb], each the weight of x (y_a = y)
    perm_mb: Tensor  # (N,) int64, partner for the MixBlock branch
    perm_bb: Tensor  # (N,) int64, partner for the backbone branch


@eager
def sample_automix(n: int, *, gen: torch.Generator, alpha: float) -> AutoMixDraw:
    lam = sample_beta(alpha, alpha, gen=gen, shape=(2,))
    return AutoMixDraw(lam, random_partner(n, gen=gen), random_partner(n, gen=gen))


def automix(x: Tensor, m: Tensor, draw: AutoMixDraw, *, lam_margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """The backbone-branch mix with the MixBlock's mask m (N, 1, H, W), the share of x[perm_bb].

    Returns (x_mixed, lam, w): lam = lam_bb, the loss weight of y_a = y, and w the per-pixel
    weight of x, 1 - m, or the constant lam (plain mixup) when lam_bb or 1 - lam_bb <= lam_margin.
    """
    lam = draw.lam[1]
    w = backbone_weight(m, lam, lam_margin=lam_margin)  # (N, 1, H, W) float32
    return mix_with_mask(x, draw.perm_bb, w), lam, w


class AutoMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for both lambdas, > 0 (protocol 2).
    momentum: EMA momentum of the encoder k for the first ``momentum_warmup`` of the run, in [0, 1) (0.999).
    end_momentum: EMA momentum the cosine reaches at the last step, in [momentum, 1] (0.999999).
    momentum_warmup: fraction of the iterations held at ``momentum``, in [0, 1] (0.1).
    lam_margin: backbone branch uses plain mixup when lam or 1 - lam <= this, in [0, 0.5) (0.08; 0 = off).
    mask_loss: weight of the MixBlock's mask loss, >= 0 (0.1; 0 = off).
    mask_margin: free band of |share of x - lam| in the mask loss, >= 0 (0.1).
    mixblock_lr: the MixBlock's own start lr, > 0 (0.1).
    mixblock_min_lr: its cosine floor, in [0, mixblock_lr] (1e-3).
    att_norm: BatchNorm after the MixBlock's q/k 1x1 convs (``MixBlock``): True, the published configs'
        (default); False (off), HEAD's.
    """

    name = "automix"
    mask_var_weight = 0.0  # AutoMix's mask loss is "L1" only

    def __init__(self, *, alpha: float = 2.0, momentum: float = 0.999, end_momentum: float = 0.999999,
                 momentum_warmup: float = 0.1, lam_margin: float = 0.08, mask_loss: float = 0.1,
                 mask_margin: float = 0.1, mixblock_lr: float = 0.1, mixblock_min_lr: float = 1e-3,
                 att_norm: bool = True) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        checks = {
            "momentum": (momentum, 0 <= momentum < 1, "[0, 1)"),
            "end_momentum": (end_momentum, momentum <= end_momentum <= 1, f"[momentum={momentum}, 1]"),
            "momentum_warmup": (momentum_warmup, 0 <= momentum_warmup <= 1, "[0, 1]"),
            "lam_margin": (lam_margin, 0 <= lam_margin < 0.5, "[0, 0.5)"),
            "mask_loss": (mask_loss, mask_loss >= 0, ">= 0"),
            "mask_margin": (mask_margin, mask_margin >= 0, ">= 0"),
            "mixblock_lr": (mixblock_lr, mixblock_lr > 0, "> 0"),
            "mixblock_min_lr": (mixblock_min_lr, 0 <= mixblock_min_lr <= mixblock_lr,
                                f"[0, mixblock_lr={mixblock_lr}]"),
        }
        for key, (value, ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"{type(self).__name__} {key} must be in {valid}, got {value!r}")
        self.momentum, self.end_momentum, self.momentum_warmup = momentum, end_momentum, momentum_warmup
        self.lam_margin, self.mask_loss_weight, self.mask_margin = lam_margin, mask_loss, mask_margin
        self.mixblock_lr, self.mixblock_min_lr = mixblock_lr, mixblock_min_lr
        if not isinstance(att_norm, bool):
            raise ValueError(f"{type(self).__name__} att_norm must be True or False, got {att_norm!r}")
        self.att_norm = att_norm

    def build_mix_block(self, in_channels: int, cfg: Any) -> MixBlock:
        """AutoMix's MixBlock on Tiny-ImageNet: shared q/k conv, linear value, nearest, no lambda."""
        return MixBlock(in_channels, pair_qk=False, value_neck=False, lam_mul_k=None, upsample="nearest",
                        att_norm=self.att_norm)

    def setup(self, model: nn.Module, *, cfg: Any, needed: NeededRun | None = None) -> None:
        """The EMA encoder k (with its fc = head_one_k), head_mix_q/k and the MixBlock."""
        device = next(model.parameters()).device
        self.encoder_k = frozen_copy(model)  # starts equal to q; requires_grad False
        self.head_mix_q = nn.Linear(model.num_features, model.fc.out_features, device=device)
        nn.init.normal_(self.head_mix_q.weight, 0.0, 0.01)
        nn.init.zeros_(self.head_mix_q.bias)
        self.head_mix_k = frozen_copy(self.head_mix_q)
        # stage 3 has half the channels of the last stage (256 of 512 for R-18, 1024 of 2048 for RX-50)
        self.mix_block = self.build_mix_block(model.num_features // 2, cfg).to(device)

    def param_groups(self, model: nn.Module, *, lr: float, min_lr: float) -> list[dict]:
        return [
            {"params": [*model.parameters(), *self.head_mix_q.parameters()], "lr": lr, "min_lr": min_lr},
            {"params": list(self.mix_block.parameters()), "lr": self.mixblock_lr, "min_lr": self.mixblock_min_lr},
        ]

    @torch.no_grad()
    def features_k(self, x: Tensor) -> Tensor:
        """Stage-3 features of the EMA encoder (in the caller's mode), no graph: (N, C, H/4, W/4)."""
        return self.encoder_k.forward_stages(x, upto=3)[-1]

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        draw = sample_automix(x.shape[0], gen=ctx.gen, alpha=self.alpha)
        lam_mb, lam_bb = draw.lam[0], draw.lam[1]  # () float32 each
        size = (x.shape[-2], x.shape[-1])
        feat = self.features_k(x)  # k on the clean batch (updates k's BN running stats, as the reference)
        m_mb = self.mix_block(feat, lam_mb, draw.perm_mb, size)  # (N, 1, H, W), with gradient
        with torch.no_grad():
            m_bb = self.mix_block(feat, lam_bb, draw.perm_bb, size)  # detached
        x_mb = mix_with_mask(x, draw.perm_mb, 1 - m_mb)  # (N, 3, H, W) float32
        x_bb, _, _ = automix(x, m_bb, draw, lam_margin=self.lam_margin)

        # k on x_mb: its weights are frozen, so mix_k trains only the MixBlock through x_mb
        logits_mix_k = self.head_mix_k(pool(self.encoder_k.forward_stages(x_mb)[-1]))
        logits_one_q = model(x)  # clean batch, the model's fc (= head_one_q)
        logits_mix_q = self.head_mix_q(pool(model.forward_stages(x_bb)[-1]))
        loss_mix_k = mixed_cross_entropy(logits_mix_k, y, y[draw.perm_mb], lam_mb)
        loss_one_q = F.cross_entropy(logits_one_q.float(), y)
        loss_mix_q = mixed_cross_entropy(logits_mix_q, y, y[draw.perm_bb], lam_bb)
        loss_mask = mask_loss(m_mb, lam_mb, margin=self.mask_margin, var_weight=self.mask_var_weight)
        loss = loss_mix_q + loss_one_q + loss_mix_k + self.mask_loss_weight * loss_mask
        logs = {"loss": loss, "loss_mix_q": loss_mix_q, "loss_one_q": loss_one_q, "loss_mix_k": loss_mix_k,
                "loss_mask": loss_mask, "mask_gap": (1 - m_mb.mean() - lam_mb).abs()}
        return StepOutput(loss, {k: v.detach() for k, v in logs.items()})

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        m = ema_momentum(ctx.step, ctx.total_steps, base=self.momentum, end=self.end_momentum,
                         warmup=self.momentum_warmup)
        ema_update_(self.encoder_k, model, m)  # backbone and fc (head_one_k <- head_one_q)
        ema_update_(self.head_mix_k, self.head_mix_q, m)

    def eval_logits(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        h_q = pool(model.forward_stages(x)[-1])  # (N, F)
        h_k = pool(self.encoder_k.forward_stages(x)[-1])
        return {"": model.fc(h_q), "mix_q": self.head_mix_q(h_q),
                "one_k": self.encoder_k.fc(h_k), "mix_k": self.head_mix_k(h_k)}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """The backbone-branch batch as a training step makes it; ``mask`` = the weight of x.

        Encoder k and the MixBlock run in train mode whatever the caller's mode, as in
        ``training_step`` (eval-mode BN on running stats gave other, flatter masks: SAMix's value
        neck BN at its init stats shrank the spread ~100x), and their BN stats are left unchanged.
        """
        draw = sample_automix(x.shape[0], gen=gen, alpha=self.alpha)
        with training_forward(self.encoder_k, self.mix_block):
            m = self.mix_block(self.features_k(x), draw.lam[1], draw.perm_bb, (x.shape[-2], x.shape[-1]))
        x_mixed, lam, w = automix(x, m, draw, lam_margin=self.lam_margin)
        return MixedBatch(x_mixed, y, y[draw.perm_bb], lam, w)

    def summarize(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        return {"readout": "median_top1 (online encoder q, clean head)", **reference_readout(rows)}
