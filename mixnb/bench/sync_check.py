"""``--sync-check``: each method's training step under ``torch.cuda.set_sync_debug_mode("error")``, and the place of
its first host sync."""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path
from typing import Any

import torch

from mixnb.bench.rig import Steps, build_rig, parse_spec
from mixnb.data import TinyImageNetTensors
from mixnb.mixups import get_spec



def sync_check(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A few steps (loader included) under sync-debug "error" after warm-up; the first sync's place."""
    row: dict[str, Any] = {"backbone": backbone, "method": spec}
    try:
        rig = build_rig(spec, backbone, data, opts, tmp)
        rig.epoch(opts.warmup)  # cudnn autotune and lazy init may sync once
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        return {**row, "result": f"skipped: {type(e).__name__}: {e}".replace("\n", " ")}
    on_cuda = opts.device.type == "cuda"
    try:
        if on_cuda:
            torch.cuda.set_sync_debug_mode("error")
        for x, y in Steps(rig.train, 2):  # a fresh epoch: its randperm is checked too
            rig.step(x, y)
        row["result"] = "sync-free" if on_cuda else "ran (no sync check on CPU)"
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "mixnb" in f.filename]
        row["where"] = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"
        why = get_spec(parse_spec(spec)[0]).host_sync or None
        if "synchroniz" not in str(e):  # a real error, not the sync-debug one
            row.update(result=f"error: {str(e).splitlines()[0]}", unexpected=True)
        else:
            row.update(result=f"syncs (expected: {why})" if why else f"SYNC: {str(e).splitlines()[0]}", unexpected=not why)
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode(0)
    return row
