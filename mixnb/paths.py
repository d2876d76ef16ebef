"""Where the repo's notebooks, runs and reports live ($MIXNB_RUNS / $MIXNB_REPORTS override), and the kernel."""

from __future__ import annotations

import json
import os
import sys
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


def quiet_kernel() -> Path:
    """Set the ``mixnb`` kernel's own log level to ERROR in its kernelspec (``make install`` calls this): papermill
    talks to the kernel over loopback TCP, and ipykernel warns about that on every start, in every log."""
    spec = Path(sys.prefix, "share", "jupyter", "kernels", KERNEL, "kernel.json")
    kernel = json.loads(spec.read_text())
    flag = "--IPKernelApp.log_level=ERROR"
    if flag not in kernel["argv"]:
        kernel["argv"].append(flag)
        spec.write_text(json.dumps(kernel, indent=1) + "\n")
    return spec


if __name__ == "__main__" and sys.argv[1:] == ["--quiet-kernel"]:
    print(f"quiet kernel log: {quiet_kernel()}")
