"""AutoMix/SAMix building blocks: the MixBlock, the momentum (EMA) encoder and its schedule, the read-out.

Protocol: docs/protocol.md §3.1 (EMA schedule), §3.2 (PixelMixBlock, mask loss), §1.7 (read-out rule).
Facts from OpenMixup's ``heads/pmix_block.py`` (HEAD; ``att_norm_cfg`` as at ``e81ed85``),
``core/hooks/momentum_hook.py`` (``CosineScheduleHook``) and ``tools/summary/find_automix_val_median.py``; our own
code.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- MixBlock


def lam_rescale(lam: Tensor, k: float) -> Tensor:
    """SAMix's lambda encoding: identity for k < 0, else the S-curve through (0.5, 0.5)
    (4/3 lam^3 - 2 lam^2 + K lam) / (K - 2/3) with K = k + 1 (docs/protocol.md §3.2)."""
    if k < 0:
        return lam
    kk = k + 1
    return (4 / 3 * lam**3 - 2 * lam**2 + kk * lam) / (kk - 2 / 3)


class MixBlock(nn.Module):
    """Pixel-wise MixBlock: embedded-Gaussian attention from x_lam to x_(1-lam) over a value map.

    ``forward`` returns m (N, 1, H, W) float32 in (0, 1), the share of x[perm] at each pixel, so
    the mixed image is (1 - m) * x + m * x[perm] (the reference's mask [1 - m, m], "none_v_").

    Args:
        in_channels: channels C of the stage-3 features (256 for R-18, 1024 for RX-50).
        pair_qk: SAMix: separate q and k 1x1 convs on concat(x_lam, x_(1-lam)) (2C -> C/2);
            False (AutoMix): one shared 1x1 conv C -> C/2, q = conv(x_lam), k = conv(x_(1-lam)).
        value_neck: SAMix: value = 1x1 C -> C/2 (no bias), BN, ELU, 1x1 C/2 -> 1 (no bias);
            False (AutoMix): one 1x1 conv C -> 1 with bias.
        lam_mul_k: None: lambda is not an input (AutoMix on Tiny-ImageNet); otherwise SAMix's
            residual form x_lam * (1 + lam^) and x_(1-lam) * (1 + (1 - lam^)) with lam^ =
            ``lam_rescale(lam, lam_mul_k)`` (-1: identity).
        upsample: "nearest" (AutoMix) or "bilinear" (SAMix), from the feature map to the image.
        att_norm: q and k 1x1 convs without bias, each followed by a BatchNorm2d in the module's mode
            (``att_norm_cfg=dict(type='BN')`` of the Tiny configs that published the table, OpenMixup
            ``e81ed85``; commented out since ``1ae985f``, 2022-03-17); False: convs with bias (HEAD).
    """

    def __init__(self, in_channels: int, *, pair_qk: bool, value_neck: bool, lam_mul_k: float | None,
                 upsample: str, att_norm: bool = False) -> None:
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"MixBlock upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        d = max(in_channels // 2, 1)  # inter channels, reduction 2
        qk_in = 2 * in_channels if pair_qk else in_channels
        self.query = _qk_conv(qk_in, d, att_norm)
        self.key = _qk_conv(qk_in, d, att_norm) if pair_qk else None  # None: q and k share ``query``
        if value_neck:
            self.value: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ELU(), nn.Conv2d(d, 1, 1, bias=False))
        else:
            self.value = nn.Conv2d(in_channels, 1, 1)
        self.lam_mul_k = lam_mul_k
        self.upsample = upsample
        for m in self.modules():  # docs/protocol.md §3.2: convs N(0, 0.01), bias 0; BN weight 1, bias 0 (its own init)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feat: Tensor, lam: Tensor, perm: Tensor, size: tuple[int, int]) -> Tensor:
        # fp32 throughout (the reference trains in fp32): the 256x256 softmax overflows in bf16
        with torch.autocast(feat.device.type, enabled=False):
            n, _, h, w = feat.shape
            x_a = feat.float()  # (N, C, h, w) x_lam
            x_b = x_a[perm]  # (N, C, h, w) x_(1-lam)
            if self.lam_mul_k is not None:
                lam_hat = lam_rescale(lam.float(), self.lam_mul_k)  # () float32
                x_a, x_b = x_a * (1 + lam_hat), x_b * (1 + (1 - lam_hat))
            v = self.value(x_b).reshape(n, h * w, 1)  # (N, hw, 1)
            if self.key is not None:
                pair = torch.cat([x_a, x_b], dim=1)  # (N, 2C, h, w)
                q, k = self.query(pair), self.key(pair)
            else:
                q, k = self.query(x_a), self.query(x_b)
            q = q.flatten(2).transpose(1, 2)  # (N, hw, d)
            k = k.flatten(2)  # (N, d, hw)
            attn = torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1)  # (N, hw, hw)
            m = (attn @ v).reshape(n, 1, h, w)  # (N, 1, h, w) logits of the share of x[perm]
            m = F.interpolate(m, size=size, mode=self.upsample)  # x4 at 64 px: exact, as scale_factor=4
            return torch.sigmoid(m)  # (N, 1, H, W) float32


def _qk_conv(in_channels: int, out_channels: int, att_norm: bool) -> nn.Module:
    """A q/k 1x1 conv: with bias, or (``att_norm``) without bias then BatchNorm2d, as mmcv's ConvModule with a
    norm (``bias='auto'``; no activation)."""
    if not att_norm:
        return nn.Conv2d(in_channels, out_channels, 1)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def mask_loss(m: Tensor, lam: Tensor, *, margin: float, var_weight: float) -> Tensor:
    """max(|1 - mean(m) - lam| - margin, 0) - var_weight * mean((m - mean(m))^2).

    m is the share of x[perm], so 1 - mean(m) is the batch share of x and lam the weight of x;
    AutoMix ("L1") uses var_weight 0, SAMix ("L1+Variance") 2.
    """
    m_mean = m.mean()
    loss = (torch.abs(1 - m_mean - lam) - margin).clamp_min(0)
    if var_weight:
        loss = loss - var_weight * ((m - m_mean) ** 2).mean()
    return loss


def backbone_weight(m: Tensor, lam: Tensor, *, lam_margin: float) -> Tensor:
    """The weight of x for the backbone branch: 1 - m, or the constant lam (plain mixup) when
    lam <= margin or 1 - lam <= margin (``lam_margin``, docs/protocol.md §3.3.4). No host sync."""
    plain = (lam <= lam_margin) | (1 - lam <= lam_margin)  # () bool, on the device
    return torch.where(plain, lam, 1 - m)  # (N, 1, H, W) float32


@contextlib.contextmanager
def training_forward(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` as a training step does (train mode: BN on batch statistics) and then put
    back their modes and buffers, so a preview leaves the BN running stats where they were."""
    saved = [(m, m.training, [b.clone() for b in m.buffers()]) for m in modules]
    try:
        for m in modules:
            m.train()
        yield
    finally:
        for m, mode, buffers in saved:
            m.train(mode)
            with torch.no_grad():
                for b, old in zip(m.buffers(), buffers):
                    b.copy_(old)


def pool(h: Tensor) -> Tensor:
    """Global average pool (N, C, h, w) -> (N, C), as ``ResNetCifar.forward_head`` before its fc."""
    return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


# ----------------------------------------------------------------------------- momentum encoder


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with requires_grad False: an EMA target starts equal to its source."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def ema_momentum(step: int, total_steps: int, *, base: float, end: float, warmup: float) -> float:
    """CosineScheduleHook(adjust_scope=[warmup, 1], warming_up="constant"): ``base`` for
    it < int(warmup * itmax), then end - (end - base) * (cos(pi * it / itmax) + 1) / 2 with the
    absolute it / itmax (docs/protocol.md §3.1). ``step`` is the 0-based iteration just trained."""
    if step < int(total_steps * warmup):
        return base
    return end - (end - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameters only (BN buffers of the
    target come from its own train-mode forwards, docs/protocol.md §3.1). One batched foreach lerp:
    with weight 1 - m (computed in float64, then rounded) it stays exact near m = 0.999999,
    where m itself rounds to float32 with a 1% error in 1 - m."""
    dst, src = list(target.parameters()), list(source.parameters())
    if len(dst) != len(src):
        raise ValueError(f"EMA target has {len(dst)} parameters, source {len(src)}")
    torch._foreach_lerp_(dst, src, 1.0 - momentum)


# ----------------------------------------------------------------------------- read-out (§1.7)

HEAD_COLUMNS = {"one_q": "top1", "mix_q": "mix_q_top1", "one_k": "one_k_top1", "mix_k": "mix_k_top1"}

READOUT_RULE = (
    "OpenMixup tools/summary/find_automix_val_median.py: keep the epochs >= E - 10 - 1 (E = last epoch, 1-based); "
    "for the prefix windows of length L-1, L, L+1 of those L rows (L+1 = L; empty windows skipped) take the "
    "highest of the 4 heads' (one_q, mix_q, one_k, mix_k) median top-1 and keep the window where it is highest "
    "(the first on ties); k = max(median one_k, median mix_k), q = max(median one_q, median mix_q), "
    "reference_top1 = max(k, q)"
)


def reference_readout(rows: list[dict[str, Any]], *, record_num: int = 10, bias: int = 1) -> dict[str, Any]:
    """The reference's AutoMix/SAMix number from per-epoch rows (see ``READOUT_RULE``); {} when
    the rows lack a head column."""
    if not rows or any(col not in rows[0] for col in HEAD_COLUMNS.values()):
        return {}
    last = max(r["epoch"] for r in rows)
    kept = [r for r in rows if r["epoch"] >= last - record_num - bias]
    series = {head: [float(r[col]) for r in kept] for head, col in HEAD_COLUMNS.items()}
    n = len(kept)

    def best(length: int) -> float:
        return max(statistics.median(vals[:length]) for vals in series.values())

    lengths = [i for i in (n - bias, n, n + bias) if min(i, n) > 0]
    length = min(max(lengths, key=best), n)  # max keeps the first of equal values, as np.argmax
    med = {head: statistics.median(vals[:length]) for head, vals in series.items()}
    k, q = max(med["one_k"], med["mix_k"]), max(med["one_q"], med["mix_q"])
    return {
        "reference_top1": max(k, q),
        "reference_top1_k": k,
        "reference_top1_q": q,
        "reference_medians": med,
        "reference_epochs": [kept[0]["epoch"], kept[length - 1]["epoch"]],
        "reference_rule": READOUT_RULE,
    }


def head_median_readout(rows: list[dict[str, Any]], *, head: str, record_num: int = 10) -> dict[str, Any]:
    """One head's median top-1 over the epochs >= E - ``record_num`` (E = last epoch, 1-based: 11 rows for
    (400, 10)), as ``reference_*`` keys; {} when the rows lack the head. The AdAutoMix authors' read-out."""
    if not rows or any(col not in rows[0] for col in HEAD_COLUMNS.values()):
        return {}
    last = max(r["epoch"] for r in rows)
    kept = [r for r in rows if r["epoch"] >= last - record_num]
    med = {h: statistics.median(float(r[col]) for r in kept) for h, col in HEAD_COLUMNS.items()}
    return {
        "reference_top1": med[head],
        "reference_head": head,
        "reference_medians": med,
        "reference_epochs": [kept[0]["epoch"], kept[-1]["epoch"]],
        "reference_rule": f"median of the {head} head's top-1 over the epochs >= E - {record_num} (E = last epoch, "
                          f"1-based): {len(kept)} of them",
    }
