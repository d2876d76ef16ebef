"""How the report names things: backbones, methods, a run's settings, α, a value list, a run's page."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY, get_spec


BACKBONE_LABELS = {"resnet18": "R-18", "resnext50": "RX-50"}


def method_label(name: str) -> str:
    return get_spec(name).label or name if name in REGISTRY else name


def row_label(method: str, settings: str) -> str:
    return f"{method_label(method)} ({settings})" if settings else method_label(method)


def settings_label(cfg: RunConfig) -> str:
    """The run's settings that differ from its profile's and method's defaults (alpha excluded: the table shows
    it), e.g. "epochs 100, lr 0.1"; "" for a default run."""
    return ", ".join(f"{key.removeprefix('method_args.')} {number_text(value)}"
                     for key, value in cfg.overrides().items() if key not in ("seed", "method_args.alpha"))


def number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def alpha_text(alpha: float | None, candidates: int = 1, tied: tuple[float, ...] = (), rule: str = "") -> str:
    """"0.2", "0.2 (best of 2)", or with a tie "1 (best of 2; tied with 0.2: published α)"."""
    if alpha is None or pd.isna(alpha):
        return "–"
    tie = f"; tied with {', '.join(f'{a:g}' for a in tied)}: {rule}" if tied else ""
    return f"{alpha:g}" + (f" (best of {candidates}{tie})" if candidates > 1 else "")


def values_text(col: pd.Series) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(set(col.dropna())))


def run_page(run: str) -> str:
    """The relative link from a profile's report to a run's page."""
    from urllib.parse import quote

    return f"runs/{quote(run)}/index.html"
