"""Before any run of a sweep: each job's state, the order of the jobs, a dry run's estimates, the memory checks.

The dataset is checked once, before any run starts (``check_datasets``): a finished run (``mixnb.runs.is_finished``,
same identity) is skipped, a folder holding another identity is reported, never overwritten. ``DRY_RUN=1`` lists
the runs, which are finished, and their GPU time from the measured seconds per epoch in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from mixnb.device import resolve_device
from mixnb.memory import ANALYSIS_BUDGET_GIB, CONTEXT_GIB, analysis_batch, predict_analysis_gib, predict_step_gib
from mixnb.mixups import get_spec
from mixnb.paths import ROOT
from mixnb.profiles import get_profile, pixels_per_epoch
from mixnb.runs import (FAILED, SUMMARY, RunConflict, check_identity, dataset_record, failure, load_data,
                        missing_products)
from mixnb.sweep.grid import Job

TODO = ("to run", "to finish")  # check_datasets' states of a job that runs
BLOCKED = ("conflict", "diverged")  # ... and of one that cannot: a failure, with its reason


def check_datasets(jobs: list[Job], *, strict: bool = True) -> dict[Path, str]:
    """Load each distinct dataset of ``jobs`` once (building its cache) and classify every job: "finished",
    "to run", "to finish" (finished, a product it owes missing: ``Job.owed``), or why it cannot run ("conflict: "
    a folder of another identity, "diverged: " its reason; ``BLOCKED``). Products that cannot be made any more are
    said here, one line per run. A dataset that cannot be read raises before any run starts; with ``strict=False``
    (a dry run) its jobs are "to run", unchecked."""
    records: dict[tuple[str, str | None], dict[str, Any] | None] = {}
    status: dict[Path, str] = {}  # by run folder
    for job in jobs:
        key = (job.config.profile, job.config.data)
        if key not in records:
            try:
                records[key] = dataset_record(load_data(job.config))
            except ValueError as err:  # DatasetError, or no MIXNB_DATA
                if strict:
                    raise
                print(f"dataset not checked ({err}): finished runs cannot be told apart", file=sys.stderr)
                records[key] = None
        if records[key] is None:
            status[job.run_dir] = "to run"
            continue
        identity = job.config.identity(resolve_device(job.config.device), records[key])
        try:
            check_identity(job.run_dir, identity)
        except RunConflict as err:
            status[job.run_dir] = f"conflict: {err}"
            continue
        if (failed := failure(job.run_dir)) is not None:
            status[job.run_dir] = f"diverged: {failed['reason']}; delete {job.run_dir / FAILED} to train it again"
            continue
        missing = missing_products(job.run_dir, analysis=job.analysis)
        if gone := [f"{name} {why}" for name, why in missing.items() if why is not None]:
            print(f"{job.config.run_name()}: {'; '.join(gone)} (its result stands)")
        status[job.run_dir] = "to run" if SUMMARY in missing else "to finish" if job.owed else "finished"
    return status


# ----------------------------------------------------------------------------- measured rates and the order
RATES_HEADING = "## Seconds per epoch used by estimates"


def measured_rates(path: Path = ROOT / "BENCHMARKS.md") -> tuple[str, dict[tuple[str, str], tuple[float, str]]]:
    """(card, {(backbone, method): (seconds per epoch with eval, how it was obtained)}) from BENCHMARKS.md's
    section ``RATES_HEADING``, its one table of measured rates."""
    lines = path.read_text().splitlines()
    start = lines.index(RATES_HEADING)
    card = next(line.split(":", 1)[1].strip() for line in lines[start:] if line.startswith("Card:"))
    rates = {}
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[\d.]+", cells[2]):
            rates[(cells[0], cells[1])] = (float(cells[2]), cells[3])
    return card, rates


# The settings that change a method's cost beyond BENCHMARKS.md's rates, which were measured at OpenMixup HEAD's
# settings: PuzzleMix's published 16x16 blocks and 4-px transport cost ~26x more per batch on the CPU than HEAD's
# (docs/publication.md), not yet measured on a GPU, so such runs get no estimate rather than a wrong one.
COSTLIER_THAN_MEASURED = {"puzzlemix": ("block_nums", "t_size")}


def rate_for(job: Job, rates: dict[tuple[str, str], tuple[float, str]]) -> tuple[float, str] | None:
    """The measured (s/epoch, how) of ``job``'s backbone and method, scaled from Tiny-ImageNet's train pixels per
    epoch to its profile's (``pixels_per_epoch``: CIFAR-100 x0.125, ImageNet 64x64 x12.8), or None when none was
    measured at its costly settings (``COSTLIER_THAN_MEASURED``)."""
    spec, args = get_spec(job.config.method), job.config.full_method_args()
    head = json.loads(json.dumps(spec.head))
    if any(args[k] != head.get(k, args[k]) for k in COSTLIER_THAN_MEASURED.get(job.config.method, ())):
        return None
    rate = rates.get((job.config.backbone, job.config.method))
    scale = pixels_per_epoch(get_profile(job.config.profile))
    if rate is None or scale in (None, 1.0):
        return rate
    return rate[0] * scale, f"{rate[1]}, x{scale:g} for {job.config.profile}'s train pixels per epoch"


def longest_first(jobs: list[Job]) -> list[Job]:
    """``jobs`` with those another job needs first, then by their measured time (``rate_for`` x epochs), the costliest
    and the unmeasured first: several slots finish when their last job does, so the long ones start first (and a
    job's need before it). In the given order without BENCHMARKS.md."""
    try:
        _, rates = measured_rates()
    except (OSError, ValueError, StopIteration):
        return list(jobs)

    def priority(job: Job) -> tuple[bool, float]:
        rate = rate_for(job, rates)
        return any(o.needs(job) for o in jobs), rate[0] * job.config.num_epochs if rate else math.inf

    return sorted(jobs, key=priority, reverse=True)


# ----------------------------------------------------------------------------- dry run
def dry_run(jobs: list[Job]) -> str:
    """The runs of a sweep, which are finished, the GPU time of those to run at the measured rates, and each
    run's predicted peak memory and analysis batch (mixnb.memory; measured on the CPU once, then cached)."""
    status = check_datasets(jobs, strict=False)
    card, rates = measured_rates()
    lines, total, unknown = [f"{'state':<10}{'GPU time':>9}  {'step peak':>9}  analysis batch (peak)  run"], 0.0, []
    for job in jobs:
        state = status[job.run_dir]
        rate = rate_for(job, rates)
        hours = rate[0] * job.config.num_epochs / 3600 if rate else None
        if state == "to run":
            total += hours or 0.0
            if rate is None:
                unknown.append(job.config.run_name())
        cost = f"{hours:7.2f} h" if hours is not None else "      ? h"
        lines.append(f"{state.split(':')[0]:<10}{cost}  {memory_cells(job)}  {job.config.run_name()}")
    states = [s.split(":")[0] for s in status.values()]
    others = "".join(f", {states.count(s)} {s}" for s in ("to finish", *BLOCKED) if s in states)
    lines.append(f"{len(jobs)} runs: {states.count('finished')} finished, {states.count('to run')} to run{others}, "
                 f"~{total:.1f} GPU-hours on one {card} at the measured s/epoch in BENCHMARKS.md")
    scales = {j.config.profile: pixels_per_epoch(get_profile(j.config.profile)) for j in jobs}
    for profile, scale in scales.items():
        if scale not in (None, 1.0):
            lines.append(f"{profile}: Tiny-ImageNet's measured rates x{scale:g}, its train pixels per epoch against "
                         f"Tiny-ImageNet's (an estimate: not measured on {profile})")
    if unknown:
        lines.append(f"no measured rate for {len(unknown)} of them (not counted): {', '.join(unknown)}")
        if any(j.config.method in COSTLIER_THAN_MEASURED and j.config.run_name() in unknown for j in jobs):
            lines.append("PuzzleMix at the published settings (16x16 blocks, 4-px transport) has no GPU rate yet: "
                         "its transport costs ~26x HEAD's per batch on the CPU (docs/publication.md)")
    lines.append(f"step peak: predicted GiB of a training step on CUDA; analysis: the attack/CAM batch under "
                 f"{ANALYSIS_BUDGET_GIB:g} GiB and its peak (mixnb.memory)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory
def memory_cells(job: Job) -> str:
    """``  8.6 GiB   batch  144 (20.0 GiB)``, or why the memory model could not measure the job."""
    try:
        step, batch, analysis = job_memory(job)
    except (ImportError, OSError, RuntimeError, ValueError) as err:  # e.g. an optional package missing here
        return f"{'? GiB':>9}  not measured ({type(err).__name__})"
    return f"{step:5.1f} GiB  batch {batch:4d} ({analysis:4.1f} GiB)"


def job_memory(job: Job) -> tuple[float, int, float]:
    """(predicted training-step peak GiB, analysis batch, its predicted peak GiB) of ``job`` (mixnb.memory)."""
    batch = analysis_batch(job.config)
    return predict_step_gib(job.config), batch, predict_analysis_gib(job.config, batch)


def check_packing(jobs: list[Job], runs_per_gpu: int, card: float) -> None:
    """Refuse ``runs_per_gpu`` > 1 when that many copies of the costliest job (its training step or, when the
    notebook analyses it, its analysis pass, plus ``CONTEXT_GIB``) exceed ``card`` GiB. Conservative for
    GPUS_PER_RUN > 1, where each GPU holds a share of the batch."""
    if runs_per_gpu < 2 or not jobs:
        return
    peaks = {}
    for job in jobs:
        step, _, analysis = job_memory(job)
        peaks[job.config.run_name()] = max(step, analysis if job.analysis else 0.0)
    name = max(peaks, key=peaks.__getitem__)
    need = runs_per_gpu * (peaks[name] + CONTEXT_GIB)
    if need > card:
        raise ValueError(f"RUNS_PER_GPU={runs_per_gpu} does not fit: {name} is predicted to peak at "
                         f"{peaks[name]:.1f} GiB, and {runs_per_gpu} x ({peaks[name]:.1f} + {CONTEXT_GIB} GiB "
                         f"context) = {need:.1f} GiB > the {card:.1f} GiB card; lower RUNS_PER_GPU or run it apart")
