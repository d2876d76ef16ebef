"""AdAutoMix: an adversarial generator mixes three images per sample through learned masks.

Paper: Qin, Jin et al., "Adversarial AutoMixup", ICLR 2024, https://arxiv.org/abs/2312.11954.
Code: https://github.com/JinXins/Adversarial-AutoMixup (the authors', "ADA": ``AdAutoMix.py``,
``heads/Ada_mix_pine.py``) and https://github.com/Westlake-AI/openmixup (``classifiers/adautomix.py``,
``heads/adaptive_mask.py``). Protocol: docs/methods.md §4 (the paper's body was not readable: code only);
the AutoMix machinery (EMA encoder k, its schedule, heads, read-out) as docs/protocol.md §3, §1.5, §1.7.

One step, K = ``mix_samples`` = 3 (§4.5): label weights lam_i = b_i / sum(b), b_i ~ Beta(alpha, alpha); two
sets of K random permutations, sigma (generator) and rho (backbone): x itself is no source. The EMA encoder k
(train mode, no graph) gives stage-3 features of the clean batch; the mix block turns the K feature maps
f[src_i] into K masks that sum to 1 per pixel (softmax over the sources, no lambda input), so a mixed
image is sum_i M_i * x[src_i] with the labels y[src_i] at weights lam_i (not the masks' shares).
- generator: x_mb from sigma, with gradient; L_k = sum_i lam_i CE(head_mix_k(k(x_mb)), y[sigma_i]) and
  S = mean_n sum_i lam_i cos(k's logits on x_mb, on x[sigma_i]). k is frozen, so these reach only the
  mix block: L_gen = -beta * L_k + (1 - beta) * S on every ``adv_interval``-th step (from the first),
  +L_k (cooperative, as AutoMix) on the others.
- backbone: x_bb from rho with the masks detached, or the constant lam_i when lam_1 <= lam_margin or
  1 - lam_1 < lam_margin; L_mix = sum_i lam_i CE(head_mix_q(q(x_bb)), y[rho_i]); L_re =
  (1 - mixup_radio) * CE(fc(q(x)), y) + mixup_radio * (the same mixed CE on sum_i lam_i x[rho_i]).
- loss = L_mix + L_re + L_gen + mask_loss * L_mask; one SGD step, then k and both heads follow q by EMA.

Where the two codebases disagree we follow the code that produced the published 69.19 (the authors' Tiny R-18
run of July 2023, ADA ``experiments/Tiny-ImageNet/adautomix_r18_400e.log``: their openmixup 0.2.8 copy, class
"Adaptivemix", not released). Of it we know its printed config; where that is silent, the authors' repo:
- margin test: the authors' ``1 - lam_1 < lam_margin`` (ADA AdAutoMix.py:507); OpenMixup HEAD's
  ``lam_margin < 1 - lam_1`` makes the backbone train on constant 3-way mixup unless lam_1 > 0.97
  (``margin_rule="openmixup"``).
- mask loss: on, weight 0.1, "L1+Variance", margin 0.1, as that run's config (both HEADs dropped it:
  ``mask_loss=0``). Its 3-image form is not published; ours is AutoMix's per source and averaged,
  mean_i max(|mean(M_i) - lam_i| - margin, 0) - 2 * mean_i var(M_i), which for 2 images is
  PixelMixBlock's loss exactly (``mask_loss`` in _automix_ops).
- mixup_radio 0.5 and beta_radio 0.4 come from the Tiny configs of both repos (that run's config has
  neither key, so it used its class defaults, unknown); whether its adversarial line was on is unknown
  (ADA's first commit had it commented out); we keep it on, as both HEADs.
Where we follow OpenMixup's code rather than the authors': ``adv_interval`` (ADA hard-codes 2, the default).
Code rather than the paper's abstract: the sign of the cosine term (the generator lowers S); "alternating"
is the per-step switch of L_gen, not separate steps; lam from normalised Betas, not a Dirichlet; hard CE.
Deviations: the step counter is the run's global step (ADA's ``self.iter`` restarts on resume); the K
forwards of k on x[sigma_i] for S are one forward on x (BN batch statistics do not see the order, so the
logits are the same rows, up to rounding) with BN momentum 1 - (1 - 0.1)^K, which gives its running stats the
same K updates; the mix block runs in fp32 under bf16 autocast, without the reference's NaN fallback (a NaN
stops the run); sum_{j != i} q_i k_j is computed as q_i (sum_{j != i} k_j). Out of scope: the 2-image path
(``mix_samples=2``), RX-50's 2 x 50 per-GPU BN and fp16, the per-step debug plots.
Schedules: the R-18 config (min_lr 0; mmcv anneals every group to it, so the mix block goes 0.1 -> 0);
RX-50's sets min_lr 0.05 and the mix block 0.1 -> 1e-3 (``--set min_lr=0.05 --arg mixblock_min_lr=0.001``).
Read-out: ``median_top1`` is the online q clean head (the table); ``reference_top1`` the authors' (EMA k's
one-hot head, median of epochs >= E - 10: 69.19 from their log), ``openmixup_rule_top1`` AutoMix's best of heads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.mixups._automix_ops import head_median_readout, pool, reference_readout, training_forward
from mixnb.mixups._helpers import eager, gather_rows, sample_beta
from mixnb.mixups.automix import AutoMix
from mixnb.mixups.base import MixedBatch, StepContext, StepOutput

MARGIN_RULES = ("authors", "openmixup")

# ----------------------------------------------------------------------------- the mix block


class AdaptiveMask(nn.Module):
    """AdAutoMix's mix block for K >= 3 sources (``AdaptiveMask.co_mix``, docs/methods.md §4.4).

    For source i: q_i = ReLU(conv_q(f_i)), k_i = ReLU(conv_k(f_i)) (1x1, C -> C/2, bias; mmcv ConvModule's
    default ReLU), v_i = conv_v(f_i) (1x1, C -> 1, bias); attention softmax(q_i sum_{j != i} k_j^T / sqrt(d))
    over positions; mask logit m_i = attention @ v_i. ``forward`` returns the K logits upsampled and
    soft-maxed over the sources: (N, K, H, W) float32, summing to 1 at each pixel.
    """

    lam_mul_k = None  # no lambda input (lam_concat=False), as AutoMix's MixBlock on Tiny-ImageNet

    def __init__(self, in_channels: int, *, upsample: str = "bilinear") -> None:
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"AdaptiveMask upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        d = max(in_channels // 2, 1)  # reduction 2
        self.query, self.key = nn.Conv2d(in_channels, d, 1), nn.Conv2d(in_channels, d, 1)
        self.value = nn.Conv2d(in_channels, 1, 1)
        self.upsample = upsample
        for m in (self.query, self.key, self.value):  # normal(0, 0.01), bias 0 (init_weights('normal'))
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feat: Tensor, sources: Tensor, size: tuple[int, int]) -> Tensor:
        # fp32 throughout (the reference computes the attention in fp32): the 256x256 softmax overflows in bf16
        with torch.autocast(feat.device.type, enabled=False):
            k_src, n = sources.shape
            _, c, h, w = feat.shape
            f = feat.float().index_select(0, sources.flatten())  # (K*N, C, h, w): f[src_0], f[src_1], ...
            q = F.relu(self.query(f)).flatten(2).transpose(1, 2).unflatten(0, (k_src, n))  # (K, N, hw, d)
            k = F.relu(self.key(f)).flatten(2).unflatten(0, (k_src, n))  # (K, N, d, hw)
            v = self.value(f).flatten(2).transpose(1, 2).unflatten(0, (k_src, n))  # (K, N, hw, 1)
            # sum over the other sources, added (not sum - k_i: no cancellation); one matmul per source
            others = torch.stack([sum(k[j] for j in range(k_src) if j != i) for i in range(k_src)])
            attn = torch.softmax(q @ others / math.sqrt(q.shape[-1]), dim=-1)  # (K, N, hw, hw)
            m = (attn @ v).reshape(k_src, n, h, w).transpose(0, 1)  # (N, K, h, w) mask logits
            m = F.interpolate(m, size=size, mode=self.upsample)  # x4 at 64 px, as scale_factor=4
            return m.softmax(dim=1)  # (N, K, H, W) float32


def co_mask_loss(masks: Tensor, lam: Tensor, *, margin: float, var_weight: float) -> Tensor:
    """mean_i max(|mean(M_i) - lam_i| - margin, 0) - var_weight * mean_i mean((M_i - mean(M_i))^2).

    masks (N, K, H, W) sum to 1 over K, lam (K,) the label weights; for K = 2 this is ``mask_loss``."""
    share = masks.mean(dim=(0, 2, 3))  # (K,) each source's batch share
    loss = ((share - lam).abs() - margin).clamp_min(0).mean()
    if var_weight:
        loss = loss - var_weight * ((masks - share.view(1, -1, 1, 1)) ** 2).mean()
    return loss


def co_mixed_cross_entropy(logits: Tensor, ys: Tensor, lam: Tensor) -> Tensor:
    """sum_i lam_i CE(logits, ys_i), mean over N (``ClsMixupHead.co_loss``, hard CE): logits (N, C),
    ys (K, N) int64, lam (K,); for K = 2 ``mixed_cross_entropy``. Computed in float32."""
    nll = -torch.log_softmax(logits.float(), dim=1).gather(1, ys.t())  # (N, K)
    return (nll * lam).sum(dim=1).mean()


@contextlib.contextmanager
def repeated_bn_updates(module: nn.Module, times: int) -> Iterator[None]:
    """While open, a train-mode forward moves every BN's running stats as ``times`` forwards of batches with
    the same statistics would: momentum m -> 1 - (1 - m)^times (r -> (1-m)^t r + (1 - (1-m)^t) b)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    saved = [m.momentum for m in bns]
    try:
        for m in bns:
            m.momentum = 1 - (1 - m.momentum) ** times
        yield
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum


# ----------------------------------------------------------------------------- draw, then apply


@dataclass(frozen=True)
class AdAutoMixDraw:
    lam: Tensor  # () float32: lam_1, the label weight of source 1 (the margin test reads it)
    rest: Tensor  # (K-1,) float32: how 1 - lam splits over sources 2..K (sums to 1)
    perm_mb: Tensor  # (K, N) int64: the generator's sources, x[perm_mb[i]]
    perm_bb: Tensor  # (K, N) int64: the backbone's sources

    @property
    def weights(self) -> Tensor:
        """(K,) float32 label weights lam_i, summing to 1."""
        return torch.cat([self.lam.view(1), (1 - self.lam) * self.rest])


@eager
def sample_adautomix(n: int, *, gen: torch.Generator, alpha: float, k: int = 3) -> AdAutoMixDraw:
    """lam_i = b_i / sum(b), b ~ Beta(alpha, alpha)^K (as lam and rest); 2K uniform permutations."""
    b = sample_beta(alpha, alpha, gen=gen, shape=(k,))  # (K,)
    perms = torch.rand((2 * k, n), generator=gen, device=gen.device).argsort(dim=1)  # (2K, N)
    lam = b[0] / b.sum().clamp_min(1e-30)
    return AdAutoMixDraw(lam, b[1:] / b[1:].sum().clamp_min(1e-30), perms[:k], perms[k:])


def adautomix(x: Tensor, masks: Tensor, sources: Tensor) -> Tensor:
    """sum_i masks[:, i] * x[sources[i]]: masks (N or 1, K, H or 1, W or 1), sources (K, N) -> (N, C, H, W).
    A loop over the sources keeps x's memory format (one (K, N, C, H, W) gather summed over K gives NCHW)."""
    out = masks[:, :1] * gather_rows(x, sources[0])
    for i in range(1, sources.shape[0]):
        out = out + masks[:, i:i + 1] * gather_rows(x, sources[i])
    return out


def backbone_masks(masks: Tensor, lam: Tensor, *, lam_margin: float, rule: str) -> Tensor:
    """The backbone's masks: ``masks`` (N, K, H, W), or the constant label weights ``lam`` (K,) when the
    margin test on lam_1 holds (``rule``: "authors" lam_1 <= margin or 1 - lam_1 < margin; "openmixup"
    lam_1 <= margin or 1 - lam_1 > margin). No host sync."""
    lam_1 = lam[0]
    far = 1 - lam_1 < lam_margin if rule == "authors" else 1 - lam_1 > lam_margin
    return torch.where((lam_1 <= lam_margin) | far, lam.view(1, -1, 1, 1), masks)  # (N, K, H, W)


# ----------------------------------------------------------------------------- the method


class AdAutoMix(AutoMix):
    """Args:
    alpha: Beta(alpha, alpha) concentration of each raw label weight, > 0 (protocol 1).
    mix_samples: images mixed per sample K, an integer >= 3 (3; the 2-image path is not implemented).
    lam_margin: the backbone uses constant weights when lam_1 or 1 - lam_1 is below this, in [0, 0.5)
        (0.03; 0 = off under the authors' rule).
    margin_rule: "authors" (the published run's repo) or "openmixup" (HEAD's test, see the module docstring).
    mixup_radio: share of the constant 3-way mixup loss in L_re, in [0, 1] (0.5; 0 = off, and no forward).
    beta_radio: weight of -L_k against the cosine term on adversarial steps, in [0, 1] (0.4).
    adv_interval: every this-th step (from the first) is adversarial, an integer >= 0 (2; 0 = never).
    mask_loss: weight of the "L1+Variance" mask loss, >= 0 (0.1; 0 = off, as both HEADs).
    Other settings: as ``AutoMix`` (momentum, end_momentum, momentum_warmup, mask_margin, mixblock_lr,
    mixblock_min_lr; defaults in the registry).
    """

    name = "adautomix"
    mask_var_weight = 2.0  # "L1+Variance", as the published run's config

    def __init__(self, *, alpha: float = 1.0, mix_samples: int = 3, lam_margin: float = 0.03,
                 margin_rule: str = "authors", mixup_radio: float = 0.5, beta_radio: float = 0.4,
                 adv_interval: int = 2, mask_loss: float = 0.1, mixblock_min_lr: float = 0.0,
                 **settings: Any) -> None:
        super().__init__(alpha=alpha, lam_margin=lam_margin, mask_loss=mask_loss, mixblock_min_lr=mixblock_min_lr,
                         **settings)
        integer = isinstance(mix_samples, int) and not isinstance(mix_samples, bool)
        whole = isinstance(adv_interval, int) and not isinstance(adv_interval, bool)
        checks = {
            "mix_samples": (mix_samples, integer and mix_samples >= 3,
                            "an integer >= 3 (the 2-image path is not implemented)"),
            "margin_rule": (margin_rule, margin_rule in MARGIN_RULES, f"one of {', '.join(MARGIN_RULES)}"),
            "mixup_radio": (mixup_radio, 0 <= mixup_radio <= 1, "in [0, 1]"),
            "beta_radio": (beta_radio, 0 <= beta_radio <= 1, "in [0, 1]"),
            "adv_interval": (adv_interval, whole and adv_interval >= 0, "an integer >= 0 (0 = never adversarial)"),
        }
        for key, (value, ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"{type(self).__name__} {key} must be {valid}, got {value!r}")
        self.mix_samples, self.margin_rule, self.adv_interval = mix_samples, margin_rule, adv_interval
        self.mixup_radio, self.beta_radio = mixup_radio, beta_radio

    def build_mix_block(self, in_channels: int, cfg: Any) -> AdaptiveMask:
        """The Tiny configs' AdaptiveMask: stage 3, reduction 2, no lambda, bilinear x4."""
        return AdaptiveMask(in_channels, upsample="bilinear")

    @eager
    def adversarial(self, ctx: StepContext) -> bool:
        """Whether this step's generator loss is adversarial: every ``adv_interval``-th step from the first. Eager:
        read inside a compiled step (capture="step"), the Python int ctx.step would recompile it at every step;
        out here it is one split before any tensor code, and the step has two graphs, one per branch."""
        return self.adv_interval > 0 and ctx.step % self.adv_interval == 0

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        n, size, k_src = x.shape[0], (x.shape[-2], x.shape[-1]), self.mix_samples
        adversarial = self.adversarial(ctx)
        draw = sample_adautomix(n, gen=ctx.gen, alpha=self.alpha, k=k_src)
        lam = draw.weights  # (K,) float32
        with torch.no_grad():  # k on the clean batch, every stage as the reference's backbone_k(x) (BN stats)
            feat = self.encoder_k.forward_stages(x)[2]  # (N, C, H/4, W/4)
        m_mb = self.mix_block(feat, draw.perm_mb, size)  # (N, K, H, W), with gradient
        with torch.no_grad():
            m_bb = backbone_masks(self.mix_block(feat, draw.perm_bb, size), lam, lam_margin=self.lam_margin,
                                  rule=self.margin_rule)
        x_mb = adautomix(x, m_mb, draw.perm_mb)  # (N, 3, H, W) float32
        x_bb = adautomix(x, m_bb, draw.perm_bb)

        # generator: k is frozen, so L_k and S train only the mix block, through x_mb
        logits_k = self.head_mix_k(pool(self.encoder_k.forward_stages(x_mb)[-1]))  # (N, classes)
        with torch.no_grad(), repeated_bn_updates(self.encoder_k, k_src):  # = K forwards of k on x[perm_mb[i]]
            logits_x = self.head_mix_k(pool(self.encoder_k.forward_stages(x)[-1]))
        cos = F.cosine_similarity(logits_k.float(), logits_x.float()[draw.perm_mb], dim=-1)  # (K, N)
        sim = (lam[:, None] * cos).sum(dim=0).mean()
        loss_k = co_mixed_cross_entropy(logits_k, y[draw.perm_mb], lam)
        loss_gen = -self.beta_radio * loss_k + (1 - self.beta_radio) * sim if adversarial else loss_k

        # backbone q: the clean batch, the constant 3-way mixup, the masked mix
        y_bb = y[draw.perm_bb]  # (K, N)
        loss_one = F.cross_entropy(model(x).float(), y)  # the model's fc = head_one_q
        loss_co = torch.zeros_like(loss_one)
        if self.mixup_radio > 0:
            x_co = adautomix(x, lam.view(1, -1, 1, 1), draw.perm_bb)  # sum_i lam_i x[rho_i]
            loss_co = co_mixed_cross_entropy(self.head_mix_q(pool(model.forward_stages(x_co)[-1])), y_bb, lam)
        loss_re = (1 - self.mixup_radio) * loss_one + self.mixup_radio * loss_co
        loss_mix = co_mixed_cross_entropy(self.head_mix_q(pool(model.forward_stages(x_bb)[-1])), y_bb, lam)
        loss_mask = co_mask_loss(m_mb, lam, margin=self.mask_margin, var_weight=self.mask_var_weight)
        loss = loss_mix + loss_re + loss_gen + self.mask_loss_weight * loss_mask
        logs = {"loss": loss, "loss_mix_q": loss_mix, "loss_one_q": loss_one, "loss_co_q": loss_co,
                "loss_mix_k": loss_k, "cos_sim": sim, "loss_gen": loss_gen, "loss_mask": loss_mask}
        return StepOutput(loss, {key: v.detach() for key, v in logs.items()})

    @torch.no_grad()
    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """The backbone's mix with source 1 = the batch itself, so ``mask`` (M_1) is the weight of x and
        ``lam`` = lam_1; y_b is source 2's label (a MixedBatch holds two). A single (N,) ``perm_bb``
        (gallery steering) fills every other slot, so x mixes with one partner at weights lam, 1 - lam.
        Encoder k and the mix block run in train mode, their BN stats left unchanged (``AutoMix.preview``)."""
        n, k_src = x.shape[0], self.mix_samples
        draw = sample_adautomix(n, gen=gen, alpha=self.alpha, k=k_src)
        sources = torch.cat([torch.arange(n, device=x.device)[None], draw.perm_bb.expand(k_src, n)[1:]])  # (K, N)
        with training_forward(self.encoder_k, self.mix_block):
            masks = self.mix_block(self.features_k(x), sources, (x.shape[-2], x.shape[-1]))
        masks = backbone_masks(masks, draw.weights, lam_margin=self.lam_margin, rule=self.margin_rule)
        return MixedBatch(adautomix(x, masks, sources), y, y[sources[1]], draw.lam, masks[:, :1])

    def summarize(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        """The authors' read-out as ``reference_*`` (EMA k, one-hot head); OpenMixup's AutoMix rule beside it."""
        openmixup = reference_readout(rows).get("reference_top1")
        return {"readout": "median_top1 (online encoder q, clean head)", **head_median_readout(rows, head="one_k"),
                **({"openmixup_rule_top1": openmixup} if openmixup is not None else {})}
