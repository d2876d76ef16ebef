"""Execute a notebook through papermill in a child process (kernel ``mixnb`` pinned), its output written whole."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mixnb.io import remove_stale_temps, temp_path
from mixnb.paths import KERNEL


def run_notebook(source: Path, output: Path, parameters: dict[str, Any], *, log: Path | None = None,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (), cwd: Path | None = None,
                 kernel: str = KERNEL) -> None:
    """Execute ``source`` with ``parameters`` into ``output`` (in an existing folder); raises
    ``subprocess.CalledProcessError`` when papermill fails, with the executed notebook (its error cell included)
    kept at ``output`` when whole.

    papermill rewrites its output after every cell, so a kill can cut it short: it writes into a temp folder beside
    ``output``, which replaces ``output`` only when it parses (``_replace_if_whole``).

    Args:
        log: a file for papermill's output and the cells' (``--log-output``); None: the terminal, without the cells'.
        env: variables added to this process's environment for the child (e.g. ``CUDA_VISIBLE_DEVICES``).
        pass_fds: descriptors the child inherits (a run lock, so it lasts as long as papermill).
        cwd: the kernel's working folder (papermill's ``--cwd``); None: this process's.
        kernel: the Jupyter kernel; ``mixnb`` (``make install`` registers it) unless a machine without it says so.
    """
    remove_stale_temps(output)
    tmp = temp_path(output, folder=True)
    cmd = [sys.executable, "-m", "papermill", str(source), str(tmp / output.name), "-k", kernel,
           "-y", json.dumps(parameters), "--no-progress-bar"]
    cmd += ["--cwd", str(cwd)] if cwd is not None else []
    cmd += ["--log-output"] if log is not None else []
    try:
        with open(log, "w") if log is not None else contextlib.nullcontext() as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if log is not None else None,
                                  env={**os.environ, **(env or {})}, pass_fds=pass_fds)
        _replace_if_whole(tmp / output.name, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def _replace_if_whole(executed: Path, output: Path) -> None:
    """Move papermill's ``executed`` notebook over ``output`` if it parses; if it is missing or cut short by a
    kill, remove ``output`` too: an earlier attempt's notebook would misstate this one's outcome."""
    try:
        json.loads(executed.read_text())
    except (OSError, ValueError):
        output.unlink(missing_ok=True)
        return
    os.replace(executed, output)
