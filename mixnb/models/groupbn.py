"""BatchNorm over groups of the batch: one GPU reproducing the statistics of K GPUs with per-GPU BN.

OpenMixup trains the ResNeXt-50 AutoMix/SAMix rows on 2 GPUs x 50 with per-GPU BatchNorm
(protocol.md §1.5: ``sz64_2xbs50``, no SyncBN), so their BN statistics come from 50 images. On one
GPU a batch of 100 would normalise over 100. ``GroupedBatchNorm2d`` normalises each contiguous
group of the batch (image i of a batch of N belongs to group i // (N / groups), as rank r's slice of
a sharded batch) with that group's statistics, in one model.

Running statistics: each of K per-rank BNs updates r_k <- (1 - m) r_k + m s_k from its own group,
and mixnb's DDP path averages the r_k at every epoch end. The update is linear, so one buffer
updated with the mean over groups of (mean, unbiased variance) equals that average at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GroupedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics come from ``groups`` equal, contiguous groups of the batch;
    evaluation and the state dict are BatchNorm2d's own (checkpoints load either way)."""

    def __init__(self, num_features: int, *, groups: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if groups < 1:
            raise ValueError(f"bn_groups must be >= 1, got {groups}")
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % self.groups:
            raise ValueError(f"a batch of {n} does not split into bn_groups={self.groups} equal groups; "
                             f"use a batch size (and a last batch) that {self.groups} divides")
        h = x.float().reshape(self.groups, n // self.groups, c, *x.shape[2:])  # (G, N/G, C, H, W)
        dims = (1, 3, 4)
        var, mean = torch.var_mean(h, dim=dims, unbiased=False, keepdim=True)  # (G, 1, C, 1, 1) each
        out = (h - mean) * torch.rsqrt(var + self.eps)
        out = out * self.weight.view(1, 1, c, 1, 1) + self.bias.view(1, 1, c, 1, 1)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            count = h[0].numel() // c  # values per group and channel
            self.running_mean.lerp_(mean.mean(0).flatten(), m)
            self.running_var.lerp_((var * count / max(count - 1, 1)).mean(0).flatten(), m)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return out.reshape_as(x).to(x.dtype).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def group_batchnorm_(module: nn.Module, groups: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``module`` in place by a ``GroupedBatchNorm2d`` with the same
    parameters and buffers (``groups`` 1: nothing changes); returns ``module``."""
    if groups == 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            grouped = GroupedBatchNorm2d(child.num_features, groups=groups, eps=child.eps, momentum=child.momentum,
                                         affine=child.affine, track_running_stats=child.track_running_stats)
            grouped.load_state_dict(child.state_dict())
            setattr(module, name, grouped.to(child.weight.device))
        else:
            group_batchnorm_(child, groups)
    return module
