"""Where the repo's notebooks, runs and reports live ($MIXNB_RUNS / $MIXNB_REPORTS override)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "mixnb"  # registered by `make install` inside .venv


def runs_root() -> Path:
    return Path(os.environ.get("MIXNB_RUNS", ROOT / "runs"))


def reports_root() -> Path:
    return Path(os.environ.get("MIXNB_REPORTS", ROOT / "reports"))


def run_dir(profile: str, run_name: str) -> Path:
    return runs_root() / profile / run_name
