"""The one timer: ``time_window`` (CUDA events on a GPU, perf_counter on CPU) and ``measure``, which warms each
callable up and times them in alternating windows; ``Stat`` is a median with its min-max over the windows."""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        return cls(statistics.median(values), min(values), max(values))


def time_window(run: Callable[[int], object], n: int, device: torch.device) -> float:
    """Seconds per unit of one timed call of ``run(n)`` (n steps, passes or calls): the one timer.

    CUDA: events around the window on the current stream, after a synchronize, so the span is the
    stream's wall time, gaps where the host falls behind included; CPU: perf_counter.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(n)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n


class Timed(NamedTuple):
    seconds: list[float]  # per unit, one value per window
    size: int  # units per window
    warmup_s: float  # the warm-up call: compile, cudnn autotune, allocator, DataLoader workers


def measure(runs: Sequence[Callable[[int], object]], opts: argparse.Namespace, *, seconds: float | Sequence[float],
            steps: int | None = None, warmup: int | None = None, barrier: Callable[[], None] | None = None) -> list[Timed]:
    """Each of ``runs`` warmed up (timed) with ``run(warmup)``, then its windows sized as ``steps`` units or,
    by a timed call, to last about ``seconds`` (one value, or one per run), then timed.

    Windows of the runs alternate round by round, so a load change on a shared machine hits every
    run alike and their ratios stay fair. ``barrier`` is called between the warm-ups and the sizing
    (``--concurrent``: every process is warm before any window is sized or timed).
    """
    warmup = warmup or opts.warmup
    spans = [seconds] * len(runs) if isinstance(seconds, (int, float)) else seconds
    warm = [warmup * time_window(run, warmup, opts.device) for run in runs]
    if barrier is not None:
        barrier()
    sizes = [steps or max(1, math.ceil(span / time_window(run, warmup, opts.device))) for run, span in zip(runs, spans)]
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(opts.windows):
        for run, n, out in zip(runs, sizes, times):
            out.append(time_window(run, n, opts.device))
    return [Timed(*timed) for timed in zip(times, sizes, warm)]
