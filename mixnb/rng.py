"""One seed derivation for every random stream: a run's data, mix and host generators, the analysis' subsets and
attacks, the corruptions and the Mixer all seed from ``stream_seed(seed, *parts)``."""

from __future__ import annotations

import hashlib
from typing import Any


def stream_seed(seed: int, *parts: Any) -> int:
    """A 32-bit seed for one stream of ``seed`` (e.g. ``stream_seed(0, "mix", rank, epoch)``): distinct parts give
    unrelated seeds. 32 bits because CPU generators keep only the low 32 bits of a seed."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()[:4], "little")
