"""Calibration (§1): softmax of the reported head; ECE / MCE over 15 equal-width, right-closed confidence
bins ((m-1)/15, m/15], NLL, Brier (summed over classes, averaged over images), and the reliability bins.
OpenMixup's ECE sorts the bins' accuracies and confidences before pairing them (§1 "Bug"); not done here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def reliability_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per equal-width bin ((m-1)/M, m/M] (right-closed, §1): mean confidence, accuracy (0 when empty), count."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=confidence.device)
    idx = torch.bucketize(confidence.double(), edges[1:-1], right=False)  # (N,) in 0..M-1; c = m/M -> bin m
    count = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device).index_add_(
        0, idx, torch.ones_like(confidence, dtype=torch.float64))
    conf = torch.zeros_like(count).index_add_(0, idx, confidence.double())
    acc = torch.zeros_like(count).index_add_(0, idx, correct.double())
    return {"lo": edges[:-1], "hi": edges[1:], "count": count,
            "confidence": conf / count.clamp(min=1), "accuracy": acc / count.clamp(min=1)}


def calibration(logits: Tensor, y: Tensor, *, n_bins: int = 15) -> dict[str, Any]:
    """ECE, MCE (both in %, over ``n_bins`` equal-width bins), NLL (nats), Brier, the standard errors of NLL and
    Brier (means over images: std / sqrt(n)) and the reliability bins.

    ECE = sum_m |B_m|/N |acc_m - conf_m|; MCE = max_m |acc_m - conf_m| (empty bins: 0), as torchmetrics'
    multiclass_calibration_error (l1 / max); Brier = mean over images of sum over classes (p - onehot)^2 (not
    divided by the class count). Computed in float64 from float32 logits."""
    logits = logits.double()
    p = logits.softmax(dim=1)  # (N, K)
    conf, pred = p.max(dim=1)
    correct = pred == y
    bins = reliability_bins(conf, correct, n_bins)
    gap = (bins["accuracy"] - bins["confidence"]).abs()
    n = len(y)
    onehot = F.one_hot(y, p.shape[1]).double()
    nll, brier = F.cross_entropy(logits, y, reduction="none"), ((p - onehot) ** 2).sum(dim=1)  # (N,) each
    return {
        "n_bins": n_bins,
        "bin_rule": "equal-width, right-closed ((m-1)/M, m/M]",
        "ece": 100 * float((bins["count"] / n * gap).sum()),
        "mce": 100 * float(gap.max()),
        "nll": float(nll.mean()),
        "nll_se": _standard_error(nll),
        "brier": float(brier.mean()),
        "brier_se": _standard_error(brier),
        "top1": 100 * float(correct.double().mean()),
        "mean_confidence": 100 * float(conf.mean()),
        "bins": [{"lo": float(lo), "hi": float(hi), "confidence": float(c), "accuracy": float(a), "count": int(k)}
                 for lo, hi, c, a, k in zip(*(bins[f].tolist() for f in ("lo", "hi", "confidence", "accuracy",
                                                                            "count")))],
    }


def _standard_error(values: Tensor) -> float:
    """Standard error of the mean of ``values`` (N,): sample std / sqrt(N); 0 for one value."""
    return float(values.std() / len(values) ** 0.5) if len(values) > 1 else 0.0
