"""Atomic writes and run provenance: nothing a run writes is ever left half-written."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch


def temp_path(path: Path, *, folder: bool = False) -> Path:
    """A fresh temp file (or folder) beside ``path``, named ``.<name>.<host>-<pid>.<random>.tmp`` so that
    ``remove_stale_temps`` can tell a killed writer's leftover from a live writer's, on shared storage too."""
    prefix = f".{path.name}.{HOST}-{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files or folders of ``path`` left by writers of this host that are no longer running;
    returns them. Temps of other hosts (a cluster's shared folder) are left alone: their writer may be alive.
    A pid reused by an unrelated process keeps its temp until that process ends (harmless: it is only disk)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        host, _, pid = tmp.name[len(path.name) + 2:].split(".", 1)[0].rpartition("-")
        if host == HOST and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


HOST = re.sub(r"[^A-Za-z0-9]", "_", platform.node()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def file_lock(path: Path, *, wait_s: float | None = None) -> Iterator[int | None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing); yields its file descriptor, or None when
    another process still holds it after ``wait_s`` seconds (None: wait as long as it takes). Closing the
    descriptor releases it, and the OS does so when the holder dies, so a crash never leaves it stuck."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if wait_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until held
            held = True
        else:
            held = _flock_within(fd, wait_s)
        yield fd if held else None
    finally:
        os.close(fd)


def _flock_within(fd: int, wait_s: float) -> bool:
    """Whether ``fd`` got its exclusive flock within ``wait_s`` seconds (retried every 50 ms)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync, mode 0644, then rename over ``path``: a reader
    sees the old file or the new one, never half of one. The one atomic writer of mixnb."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run folders are shared
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"no space left (disk full or over quota) while writing {path}; free some space "
                                     f"(or point MIXNB_RUNS / MIXNB_CACHE elsewhere) and run again") from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through ``atomic_write`` (a killed run never leaves a broken checkpoint)."""
    atomic_write(path, lambda f: _torch_save(obj, f))


class _KeepWriteError:
    """A file wrapper that keeps the OSError of a failed write, which torch.save turns into a bare RuntimeError."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj: Any, f: BinaryIO) -> None:
    """torch.save into ``f``; a failed write raises its own OSError (ENOSPC), so ``atomic_write`` names the path."""
    out = _KeepWriteError(f)
    try:
        torch.save(obj, out)
    except RuntimeError:
        if out.error is None:
            raise
        raise out.error from None


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """The commit of the source tree and whether it had uncommitted changes."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    """Package versions and the device a run used."""
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }
