"""One run in several processes: ``launch`` (``fit`` in K processes through torchrun, a notebook's way to DDP) and the
checks of a run's settings against the process count, which ``fit`` makes under torchrun (docs/architecture.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from mixnb.config import RunConfig
from mixnb.distributed import die_with_parent
from mixnb.io import read_json


def launch(cfg: RunConfig, run_dir: str | Path, *, world_size: int, progress: str = "epoch") -> dict[str, Any]:
    """``fit`` in ``world_size`` processes through torchrun (one GPU each, or gloo on the CPU); returns
    the summary. The notebook's way to a DDP run; the same as, from the shell,
    ``torchrun --standalone --nproc-per-node K -m mixnb train --config CONFIG.json --run-dir RUN_DIR``
    (the config travels in a temp file: the run folder's params.json is ``fit``'s record of the run)."""
    run_dir = Path(run_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="mixnb-launch-") as config:
        json.dump({"config": cfg.to_dict()}, config)
        config.flush()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
               "-m", "mixnb", "train", "--config", config.name, "--run-dir", str(run_dir), "--progress", progress]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=die_with_parent if sys.platform == "linux" else None) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # into the notebook's output (a bare child would write past it)
                print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}")
    return read_json(run_dir / "summary.json")


def check_world_size(cfg: RunConfig, world: int, device: torch.device, n_train: int, n_val: int) -> None:
    """Fail clearly on settings that cannot run on ``world`` processes."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes: "
                         f"use a process count that divides it")
    if cfg.batchnorm_groups > 1 and world > 1 and cfg.batchnorm_groups % world:
        raise ValueError(f"bn_groups {cfg.batchnorm_groups} does not split over {world} processes: with per-process "
                         f"BN each process is at least one group; use a process count that divides it")
    groups = rank_bn_groups(cfg, world)
    if groups > 1 and (n_train % cfg.batch_size) // world % groups:
        raise ValueError(f"the last batch ({n_train % cfg.batch_size} images) does not split into bn_groups="
                         f"{cfg.batchnorm_groups} equal groups; use a batch size that leaves a divisible last batch")
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ValueError("sync_bn=True needs CUDA: torch's SyncBatchNorm does not run on the CPU (gloo)")
    if world > 1 and (0 < n_train % cfg.batch_size < world or n_val < world):
        raise ValueError(f"{world} processes need every batch, the last one included, and the val set to "
                         f"have at least {world} images; got {n_train} train and {n_val} val images")


def rank_bn_groups(cfg: RunConfig, world: int) -> int:
    """BatchNorm groups of one process's slice: its per-process BN is already one of ``cfg``'s groups."""
    return max(cfg.batchnorm_groups // world, 1)
