"""Live progress of a local sweep: one line per running job (run, epoch k/E, last top-1, ETA) and the sweep's ETA.

Read from each run folder's metrics.csv, which ``fit`` rewrites after every epoch (after the checkpoint), so
the watcher needs nothing from the papermill process and survives its crash. On a terminal the lines are
redrawn in place every ``interval_s`` (tqdm bars, one per running job); elsewhere (logs, SLURM, CI) a plain
line is printed when a run finishes an epoch, followed by the sweep's ETA.

A job's ETA is its remaining epochs at its own median seconds per epoch (the first epoch, which carries the
compile and cudnn autotune, left out when there are others); a job not started yet is counted at the median
rate of the sweep's runs of the same backbone, and the sweep's ETA divides the work by the slots running it.
"""

from __future__ import annotations

import csv
import statistics
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mixnb.runs import METRICS


@dataclass(frozen=True)
class RunProgress:
    """What metrics.csv says of a run: epochs done of ``epochs``, the last top-1 and seconds per epoch."""

    done: int
    epochs: int
    top1: float | None
    seconds_per_epoch: float | None

    @property
    def remaining_s(self) -> float | None:
        return None if self.seconds_per_epoch is None else (self.epochs - self.done) * self.seconds_per_epoch

    def line(self, run: str) -> str:
        top1 = "–" if self.top1 is None else f"{self.top1:.2f}"
        return f"{run}: epoch {self.done}/{self.epochs}, top-1 {top1}, ETA {eta(self.remaining_s)}"


def read_progress(run_dir: Path, epochs: int) -> RunProgress:
    """The run's progress from its metrics.csv (none yet: 0 epochs, no rate)."""
    try:
        with open(run_dir / METRICS, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        rows = []
    seconds = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")]
    rate = statistics.median(seconds[1:] or seconds) if seconds else None
    top1 = float(rows[-1]["top1"]) if rows and rows[-1].get("top1") else None
    return RunProgress(len(rows), epochs, top1, rate)


def eta(seconds: float | None) -> str:
    """"1h05m", "4m10s", "?" when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def sweep_eta(running: Sequence[tuple[Any, RunProgress]], pending: Sequence[Any], slots: int,
              backbone: Callable[[Any], str]) -> float | None:
    """Seconds until the sweep ends: the running jobs' remaining time plus the pending jobs' epochs at their
    backbone's median rate, over ``slots`` at once; None while no rate is known for some of the work."""
    rates: dict[str, list[float]] = {}
    for job, p in running:
        if p.seconds_per_epoch is not None:
            rates.setdefault(backbone(job), []).append(p.seconds_per_epoch)
    total = 0.0
    for job, p in running:
        if p.remaining_s is None:
            return None
        total += p.remaining_s
    for job in pending:
        rate = rates.get(backbone(job))
        if not rate:
            return None
        total += statistics.median(rate) * job.config.num_epochs
    return total / max(slots, 1)


class SweepWatcher:
    """A context manager whose daemon thread shows the running jobs' progress until the block ends; ``running()``
    and ``pending()`` give the sweep's current jobs (each with ``.run_dir`` and ``.config``)."""

    def __init__(self, running: Callable[[], list[Any]], pending: Callable[[], list[Any]], *, slots: int,
                 interval_s: float = 5.0, terminal: bool | None = None, overall: Any = None) -> None:
        self.running, self.pending, self.slots, self.interval_s = running, pending, slots, interval_s
        self.overall = overall  # the sweep's own tqdm bar: its postfix shows the sweep's ETA on a terminal
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._stop = threading.Event()  # set when the block ends
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._bars: dict[Path, Any] = {}
        self._printed: dict[Path, int] = {}

    def __enter__(self) -> SweepWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for bar in self._bars.values():
            bar.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.show()

    def show(self) -> list[str]:
        """Draw (or print) the current lines once; returns them (the last one is the sweep's ETA)."""
        running = [(job, read_progress(job.run_dir, job.config.num_epochs)) for job in self.running()]
        pending = self.pending()
        lines = [p.line(job.config.run_name()) for job, p in running]
        total = sweep_eta(running, pending, self.slots, lambda j: j.config.backbone)
        lines.append(f"sweep: {len(running)} running, {len(pending)} waiting, ETA {eta(total)}")
        if self.terminal:
            self._draw(running, lines[-1])
        else:  # a log: a line per finished epoch, then the sweep's ETA
            changed = [line for (job, p), line in zip(running, lines) if self._printed.get(job.run_dir) != p.done]
            self._printed.update({job.run_dir: p.done for job, p in running})
            for line in changed + lines[-1:] * bool(changed):
                print(f"[progress] {line}", flush=True)
        return lines

    def _draw(self, running: list[tuple[Any, RunProgress]], summary: str) -> None:
        live = {job.run_dir for job, _ in running}
        for run_dir in [d for d in self._bars if d not in live]:
            self._bars.pop(run_dir).close()
        for job, p in running:
            bar = self._bars.get(job.run_dir)
            if bar is None:
                bar = self._bars[job.run_dir] = tqdm(total=p.epochs, desc=job.config.run_name(), unit="epoch",
                                                     position=len(self._bars) + 1, leave=False, file=sys.stderr)
            bar.n = p.done
            bar.set_postfix_str(f"top-1 {'–' if p.top1 is None else f'{p.top1:.2f}'}, ETA {eta(p.remaining_s)}")
        if self.overall is not None:
            self.overall.set_postfix_str(summary.split(": ", 1)[1])
