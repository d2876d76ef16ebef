"""AnalysisSettings: everything that changes an analysis' numbers, and each profile's (``PROFILE_SETTINGS``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mixnb.analysis.corruption_ops import CORRUPTIONS
from mixnb.profiles import PROFILES


@dataclass(frozen=True)
class AnalysisSettings:
    """Everything that changes an analysis' numbers (the cache key holds all of it).

    Args:
        batch_size: the most images per pass; ``analyze_run`` lowers it to what keeps an attack pass under
            ``mixnb.memory.ANALYSIS_BUDGET_GIB`` (no effect on the numbers beyond float reassociation).
        n_bins: equal-width confidence bins of ECE / MCE and the reliability diagram (Guo et al.: 15).
        attack_images: val images attacked (a seeded subset), None = all.
        eps: L-inf radius in pixel units (0..1) of FGSM and PGD.
        pgd_step: PGD step in pixel units; pgd_steps: iterations; pgd_restarts: random starts (an image
            counts as robust only if it resists all of them).
        occlusion_patch: side of the square patches, px; occlusion_fractions: shares of patches zeroed;
            occlusion_images: val images occluded (a seeded subset), None = all.
        corruptions: names in ``CORRUPTIONS`` to generate (those that cannot be made are skipped with
            the reason); corruption_severities: 1..5; corruption_images: val images corrupted (a seeded
            subset), None = all.
        cam_threshold: share of the CAM's maximum kept for the box; iou_threshold: IoU for a hit.
        gallery_images: CAM maps kept for the gallery (one val image of each of the first n classes).
        flops: count the FLOPs of a training step (off: None in the file).
        seed: seeds every draw (subsets, PGD starts, occlusion orders, corruptions).
    """

    batch_size: int = 1000
    n_bins: int = 15
    attack_images: int | None = None
    eps: float = 8 / 255
    pgd_step: float = 2 / 255
    pgd_steps: int = 10
    pgd_restarts: int = 1
    occlusion_patch: int = 8
    occlusion_fractions: tuple[float, ...] = tuple(i / 10 for i in range(10))
    occlusion_images: int | None = None
    corruptions: tuple[str, ...] = ()  # filled in __post_init__: all of CORRUPTIONS
    corruption_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_images: int | None = None
    cam_threshold: float = 0.2
    iou_threshold: float = 0.5
    gallery_images: int = 8
    flops: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.corruptions:
            object.__setattr__(self, "corruptions", tuple(CORRUPTIONS))
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption(s) {unknown}; valid: {', '.join(CORRUPTIONS)}")
        if not set(self.corruption_severities) <= {1, 2, 3, 4, 5} or not self.corruption_severities:
            raise ValueError(f"corruption_severities must be a non-empty subset of 1..5, got {self.corruption_severities}")
        for name in ("batch_size", "n_bins", "pgd_steps", "pgd_restarts", "occlusion_patch", "gallery_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("attack_images", "occlusion_images", "corruption_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {getattr(self, name)}")
        if not all(0 <= r < 1 for r in self.occlusion_fractions) or sorted(self.occlusion_fractions) != list(
                self.occlusion_fractions) or len(self.occlusion_fractions) < 2:
            raise ValueError(f"occlusion_fractions must rise within [0, 1), at least 2, got {self.occlusion_fractions}")
        for name in ("eps", "pgd_step", "cam_threshold", "iou_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def key(self) -> str:
        """sha1 of every setting except batch_size (which changes no number)."""
        values = {k: v for k, v in self.to_dict().items() if k != "batch_size"}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()


def settings_for(profile: str) -> AnalysisSettings:
    """The settings of a profile (``PROFILE_SETTINGS``); unknown profiles fail with the valid ones."""
    if profile not in PROFILE_SETTINGS:
        raise ValueError(f"no analysis settings for profile {profile!r}; valid: {', '.join(PROFILE_SETTINGS)}")
    return PROFILE_SETTINGS[profile]


# ----------------------------------------------------------------------------- profiles
# Each profile's settings are a fact of its record (mixnb.profiles.Profile.analysis, with the reasons for each number).
PROFILE_SETTINGS: dict[str, AnalysisSettings] = {name: AnalysisSettings(**p.analysis) for name, p in PROFILES.items()}
