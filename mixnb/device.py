"""The device a run uses and what follows from it: bf16 support, the autocast dtype, the memory layout, peak memory,
and the one cache folder. Every module asks here; none decides these for itself (docs/performance.md §8.3)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` = CUDA when present, else the CPU; a named CUDA device without CUDA fails saying so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether the device runs bf16 matmuls/convs natively: CUDA (Ampere on), or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume not
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``precision`` ("auto", "bf16" or "fp32") on ``device``; torch.float32 = no autocast."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (+20-50 % for bf16 convs); the default on the CPU, where torch 2.14's conv backward
    crashed on channels_last in train mode (a double free) and was no faster."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the allocator's peak since its last reset; CPU: the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def cache_dir() -> Path:
    """Where generated sample sets, dataset caches and measurements go: $MIXNB_CACHE, default ~/.cache/mixnb."""
    return Path(os.environ.get("MIXNB_CACHE", Path.home() / ".cache" / "mixnb"))
