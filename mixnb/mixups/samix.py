"""SAMix: AutoMix with a lambda-aware, non-linear MixBlock and a variance term in the mask loss.

Paper: Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic
Mixup", arXiv 2021, https://arxiv.org/abs/2111.15454. Code: https://github.com/Westlake-AI/openmixup
(``AutoMixup`` with the SAMix ``PixelMixBlock`` settings).
Protocol: docs/protocol.md §3 (everything of AutoMix, see ``automix.py``), §3.2 for what differs:
- q and k: two 1x1 convs on concat(x_lam, x_(1-lam)) (2C -> C/2);
- lambda: x_lam * (1 + lam^), x_(1-lam) * (1 + (1 - lam^)), lam^ = lam for R-18 (``lam_mul_k`` -1)
  and the S-curve with k = 1.25 for RX-50 (``lam_mul_k`` 0.25); "auto" picks by backbone;
- value: 1x1 C -> C/2 (no bias), BN, ELU, 1x1 C/2 -> 1 (no bias); bilinear upsampling;
- ``att_norm`` as AutoMix's, on q and on k (both published SAMix Tiny configs, ``e81ed85``);
- mask loss "L1+Variance": the L1 term minus 2 * mean((m - mean(m))^2);
- soft CE in every head. For a scalar lam it equals the hard two-term CE, so the loss is the
  same function ``mixed_cross_entropy`` as AutoMix's; ``neg_weight`` 0.5 ("eta") on head_mix_k
  is a no-op with soft CE (§3.3) and is left out.
Where we follow the code: as AutoMix (``automix.py``); the "L1+Variance" form and the residual
lambda multiplication are the code's (``lam_mul=True, lam_residual=True``).
"""

from __future__ import annotations

from typing import Any

from mixnb.mixups._automix_ops import MixBlock
from mixnb.mixups.automix import AutoMix

LAM_MUL_K = {"resnet18": -1.0, "resnext50": 0.25}  # docs/protocol.md §3.2, per backbone ("auto")


class SAMix(AutoMix):
    """Args:
    lam_mul_k: lambda encoding, "auto" (by backbone: -1 for resnet18, 0.25 for resnext50), -1
        (lam^ = lam) or k in [0, 10] (the S-curve with K = k + 1).
    Other settings: as ``AutoMix`` (same protocol defaults).
    """

    name = "samix"
    mask_var_weight = 2.0  # "L1+Variance": pushes masks toward 0/1

    def __init__(self, *, lam_mul_k: float | str = "auto", **settings: Any) -> None:
        super().__init__(**settings)
        numeric = isinstance(lam_mul_k, (int, float)) and not isinstance(lam_mul_k, bool)
        if lam_mul_k != "auto" and not (numeric and (lam_mul_k == -1 or 0 <= lam_mul_k <= 10)):
            raise ValueError(f"SAMix lam_mul_k must be 'auto', -1 or in [0, 10], got {lam_mul_k!r}")
        self.lam_mul_k = lam_mul_k

    def build_mix_block(self, in_channels: int, cfg: Any) -> MixBlock:
        k = self.lam_mul_k
        if k == "auto":
            backbone = getattr(cfg, "backbone", None)
            if backbone not in LAM_MUL_K:
                raise ValueError(f"SAMix lam_mul_k='auto' needs a known cfg.backbone ({', '.join(LAM_MUL_K)}), "
                                 f"got {backbone!r}; pass lam_mul_k explicitly")
            k = LAM_MUL_K[backbone]
        return MixBlock(in_channels, pair_qk=True, value_neck=True, lam_mul_k=float(k), upsample="bilinear",
                        att_norm=self.att_norm)
