"""A sweep on this machine (``EXECUTOR=local-slots``, the default): threads of this process, one job per slot.

A slot is a GPU group with its own ``CUDA_VISIBLE_DEVICES`` (``GPUS=0,1,2,3 GPUS_PER_RUN=2``: groups 0,1 and 2,3),
taken by ``RUNS_PER_GPU`` jobs at once; a job with ``gpus_per_run`` K > 1 runs the notebook with ``world_size=K``,
which trains through torchrun (DDP, see mixnb.train). Without a GPU, ``CPU_JOBS`` runs share the cores. Runs that
need another run (AttentiveMix+ uses the finished Vanilla run as its default teacher) wait for it. Failures do not
stop the sweep; each is listed with its one-line reason at the end. Progress is live (``mixnb.progress``: a line per
running job and the sweep's ETA).
"""

from __future__ import annotations

import os
import sys
import threading

import torch
from tqdm.auto import tqdm

from mixnb.memory import CARD_GIB, GIB
from mixnb.progress import SweepWatcher
from mixnb.runs import is_locked, read_summary
from mixnb.sweep.grid import Job, at_least_one
from mixnb.sweep.job import report_failures, run_locked
from mixnb.sweep.plan import BLOCKED, TODO, check_datasets, check_packing, longest_first

CPU_JOBS_AUTO = 2  # runs at once without a GPU (cores allowing): docs/performance.md "CPU sweeps"


def gpu_slots(gpus: list[str] | None, gpus_per_run: int, runs_per_gpu: int = 1,
              cpu_jobs: int | None = None) -> list[dict[str, str]]:
    """One environment per concurrent job: GPUS split into groups of ``gpus_per_run``, each group taken by
    ``runs_per_gpu`` jobs at once (small batches leave a large GPU under-occupied; one run's host work overlaps
    another's device work). Without GPUS: [{}] (one job at a time on the default GPU), or with ``runs_per_gpu`` > 1
    the visible GPUs (``visible_gpus``); none visible: ``runs_per_gpu`` > 1 fails with the fix, else the CPU's
    slots (``cpu_slots``)."""
    at_least_one("RUNS_PER_GPU", runs_per_gpu)
    if not gpus and runs_per_gpu > 1:
        gpus = visible_gpus()
        if not gpus:
            raise ValueError(f"RUNS_PER_GPU={runs_per_gpu} packs runs onto GPUs and none is visible here "
                             f"(CUDA_VISIBLE_DEVICES empty or torch.cuda.device_count() = 0): run it on a GPU "
                             f"machine, name them with GPUS=0,1, or leave RUNS_PER_GPU at 1")
    if not gpus:
        return cpu_slots(cpu_jobs) if not visible_gpus() else [{}]
    if len(gpus) % gpus_per_run:
        raise ValueError(f"GPUS={','.join(gpus)} does not split into groups of GPUS_PER_RUN={gpus_per_run}")
    groups = [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i:i + gpus_per_run])} for i in range(0, len(gpus), gpus_per_run)]
    return [dict(g) for _ in range(runs_per_gpu) for g in groups]


def cpu_slots(jobs: int | None = None) -> list[dict[str, str]]:
    """``jobs`` runs at once on a machine without a GPU, each with its share of the cores as torch's threads
    (``OMP_NUM_THREADS``, read when the run's kernel starts). None: ``CPU_JOBS_AUTO``, at most one per core."""
    cores = os.cpu_count() or 1
    jobs = min(cores, CPU_JOBS_AUTO) if jobs is None else jobs
    at_least_one("CPU_JOBS", jobs)
    return [{"OMP_NUM_THREADS": str(max(1, cores // jobs))} for _ in range(jobs)]


def visible_gpus() -> list[str]:
    """This process's GPUs: CUDA_VISIBLE_DEVICES's entries when it is set, else torch's device indices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and not g.strip().startswith("-")]  # -1: none
    return [str(i) for i in range(torch.cuda.device_count())]


def card_gib() -> float:
    """Memory of the smallest visible GPU, else ``memory.CARD_GIB`` (an H100 80GB)."""
    if not torch.cuda.is_available():
        return CARD_GIB
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / GIB


def run_sweep(jobs: list[Job], *, gpus: list[str] | None = None, gpus_per_run: int = 1,
              runs_per_gpu: int = 1, cpu_jobs: int | None = None) -> list[tuple[Job, str]]:
    """Run every unfinished job, ``runs_per_gpu`` per GPU group at a time (or one at a time); returns the
    failures (job, one-line reason). Every exception of a job is caught: the others are still tried."""
    profile = jobs[0].config.profile if jobs else "?"
    slots = gpu_slots(gpus, gpus_per_run, runs_per_gpu, cpu_jobs)
    status = check_datasets(jobs)
    failures: list[tuple[Job, str]] = [(j, status[j.run_dir]) for j in jobs if status[j.run_dir].startswith(BLOCKED)]
    todo = [j for j in jobs if status[j.run_dir] in TODO]
    check_packing(todo, runs_per_gpu, card_gib())
    to_finish = sum(status[j.run_dir] == "to finish" for j in todo)
    print(f"sweep {profile}: {len(jobs)} runs, {sum(s == 'finished' for s in status.values())} already finished, "
          f"{len(todo) - to_finish} to run" + (f", {to_finish} finished to complete (gallery or analysis)"
                                               if to_finish else ""), flush=True)
    outcomes: dict[str, list[Job]] = {"ran": [], "analysed": [], "finished elsewhere": [], "running elsewhere": []}
    lock = threading.Condition()
    pending, running = longest_first(todo) if len(slots) > 1 else list(todo), []
    bar = tqdm(total=len(todo), desc=f"sweep {profile}", file=sys.stderr, disable=None)  # None: off without a TTY

    def blocked(job: Job) -> bool:  # its need is still to run here, or running in another sweep
        return (any(job.needs(o) for o in pending + running)
                or any(job.needs(o) and is_locked(o.run_dir) for o in outcomes["running elsewhere"]))

    def run_one(job: Job, slot_env: dict[str, str]) -> str:
        outcome = run_locked(job, env=slot_env)
        if outcome == "ran":
            summary = read_summary(job.run_dir) or {}
            tqdm.write(f"done {job.config.run_name()}: {summary.get('median_label', 'median top-1')} "
                       f"{summary.get('median_top1', float('nan')):.2f}, {summary.get('seconds_per_epoch', 0):.1f} "
                       f"s/epoch", file=sys.stdout)
        return "finished elsewhere" if outcome == "finished" else outcome

    def worker(slot_env: dict[str, str]) -> None:
        while True:
            with lock:
                while True:
                    ready = [j for j in pending if not blocked(j)]
                    if ready or not pending:
                        break
                    lock.wait(timeout=5)  # woken by a job ending here; polls needs running elsewhere
                if not pending:
                    return
                job = ready[0]
                pending.remove(job)
                running.append(job)
            bar.set_postfix_str(job.config.run_name())
            outcome = "failed"
            try:
                outcome = run_one(job, slot_env)
            except Exception as err:  # any failure of this job (papermill, the lock, the disk) is its own
                reason = str(err) if isinstance(err, RuntimeError) else f"{type(err).__name__}: {err}"
                with lock:
                    failures.append((job, reason.splitlines()[0] if reason else type(err).__name__))
            with lock:
                outcomes.setdefault(outcome, []).append(job)
                running.remove(job)
                bar.update(1)
                lock.notify_all()

    def snapshot(jobs: list[Job]) -> list[Job]:
        with lock:
            return list(jobs)

    threads = [threading.Thread(target=worker, args=(s,)) for s in slots]
    with SweepWatcher(lambda: snapshot(running), lambda: [j for j in snapshot(pending) if not j.finished],
                      slots=len(slots), overall=bar):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    bar.close()
    for outcome in ("finished elsewhere", "running elsewhere"):
        for job in outcomes[outcome]:
            print(f"skipped {job.config.run_name()}: {outcome} (another sweep holds or held its lock)")
    report_failures(failures, len(jobs))
    return failures
