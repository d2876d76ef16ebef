"""A sweep as submitit jobs (``EXECUTOR=slurm`` or ``local``): one array for the independent runs, a second one for
the runs that need another, after it.

A preempted or timed-out job is requeued (``TrainJob`` is ``Checkpointable``) and resumes from the run's checkpoint.
``local`` is submitit's local executor: every job starts at once, for trying the cluster path on one machine.
"""

from __future__ import annotations

from pathlib import Path

import submitit

from mixnb.paths import runs_root
from mixnb.runs import is_locked
from mixnb.sweep.grid import Job
from mixnb.sweep.job import report_failures, run_locked
from mixnb.sweep.local import gpu_slots
from mixnb.sweep.plan import BLOCKED, TODO, check_datasets

MAX_REQUEUES = 100  # submitit time-outs per job; each requeue resumes from the last epoch's checkpoint


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job; returns what happened (``run_job``'s outcome, or "running elsewhere");
    raises ``AnalysisFailed`` when the run finished but its analysis did not.

    On preemption or time-out submitit calls ``checkpoint`` (inherited: this same call again) and
    requeues the job, which then resumes from the run's checkpoint.pt.
    """

    def __call__(self, job: Job) -> str:
        return run_locked(job)


def make_executor(kind: str, folder: Path, *, gpus_per_run: int = 1, partition: str | None = None,
                  account: str | None = None, qos: str | None = None, time: str = "1440", cpus_per_task: int = 8,
                  mem_gb: float | None = None, name: str = "mixnb") -> submitit.AutoExecutor:
    """A submitit executor for one run per job: ``kind`` "slurm" or "local"; ``time`` per job (see ``minutes``)."""
    if kind not in ("slurm", "local"):
        raise ValueError(f"executor must be 'slurm' or 'local', got {kind!r}")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=kind, **{f"{kind}_max_num_timeout": MAX_REQUEUES})
    executor.update_parameters(name=name, timeout_min=minutes(time), gpus_per_node=gpus_per_run, tasks_per_node=1,
                               cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_partition=partition,
                               slurm_account=account, slurm_qos=qos)
    return executor


def minutes(time: str | int) -> int:
    """A time limit in minutes: "90" (minutes), "2:00" or "2:00:00" (hours), "1-12" or "1-12:00:00" (days-hours)."""
    days, _, clock = str(time).rpartition("-")
    try:
        day_count, parts = int(days or 0), [int(p) for p in clock.split(":")]
    except ValueError:
        day_count, parts = 0, []
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"--time {time!r}: use minutes, H:MM, H:MM:SS or D-H[:MM[:SS]] (make TIME=...)")
    if len(parts) == 1 and not days:
        return parts[0]
    hours, mins, secs = (parts + [0, 0])[:3]
    return day_count * 1440 + hours * 60 + mins + (secs > 0)


def submit_sweep(jobs: list[Job], *, gpus_per_run: int = 1, executor: str = "slurm", gpus: list[str] | None = None,
                 partition: str | None = None, account: str | None = None, qos: str | None = None,
                 time: str = "1440", cpus_per_task: int = 8,
                 mem_gb: float | None = None) -> tuple[list[tuple[Job, submitit.Job]], list[tuple[Job, str]]]:
    """Submit every unfinished, unlocked run as a submitit job; returns them (``wait_for`` waits) and the
    runs that cannot run (folders of another identity). submitit's logs go to runs/<profile>/.submitit."""
    profile = jobs[0].config.profile if jobs else "?"
    status = check_datasets(jobs)
    conflicts = [(j, status[j.run_dir]) for j in jobs if status[j.run_dir].startswith(BLOCKED)]
    report_failures(conflicts, len(jobs))
    todo = [j for j in jobs if status[j.run_dir] in TODO and not is_locked(j.run_dir)]
    print(f"sweep {profile} on {executor}: {len(jobs)} runs, {len(jobs) - len(todo)} finished or running "
          f"elsewhere, {len(todo)} to submit")
    if not todo:
        return [], conflicts
    folder = runs_root() / profile / ".submitit"
    ex = make_executor(executor, folder, gpus_per_run=gpus_per_run, partition=partition, account=account, qos=qos,
                       time=time, cpus_per_task=cpus_per_task, mem_gb=mem_gb, name=f"mixnb-{profile}")
    first = [j for j in todo if not any(j.needs(o) for o in todo)]
    later = [j for j in todo if j not in first]
    submitted = _submit(ex, first, executor=executor, gpus=gpus, gpus_per_run=gpus_per_run)
    if later:  # AttentiveMix+ after its Vanilla teacher run
        needed = [s for j, s in submitted if any(k.needs(j) for k in later)]
        if executor == "slurm" and needed:
            ex.update_parameters(slurm_additional_parameters={"dependency": "afterany:" + ":".join(
                s.job_id for s in needed)})
        else:  # the local executor has no dependencies: submit them once their needs are done
            for s in needed:
                s.wait()
        submitted += _submit(ex, later, executor=executor, gpus=gpus, gpus_per_run=gpus_per_run)
    for job, sub in submitted:
        print(f"submitted {job.config.run_name()}: job {sub.job_id}")
    print(f"submitit logs: {folder}")
    return submitted, conflicts


def wait_for(submitted: list[tuple[Job, submitit.Job]]) -> list[tuple[Job, str]]:
    """Wait for submitted jobs; returns the failures (job, submitit's stderr log)."""
    failures: list[tuple[Job, str]] = []
    for job, sub in submitted:
        try:
            print(f"{job.config.run_name()}: {sub.result()}")
        except Exception as err:  # the job's exception, or submitit's report of a failed job
            failures.append((job, f"{str(err).splitlines()[-1] if str(err) else type(err).__name__}; "
                                  f"see {sub.paths.stderr}"))
    report_failures(failures, len(submitted))
    return failures


def _submit(ex: submitit.AutoExecutor, jobs: list[Job], *, executor: str, gpus: list[str] | None,
            gpus_per_run: int) -> list[tuple[Job, submitit.Job]]:
    """One array on slurm; on the local executor one job each, round-robin over the GPU groups."""
    if not jobs:
        return []
    if executor == "slurm" or not gpus:
        return list(zip(jobs, ex.map_array(TrainJob(), jobs)))
    groups = [[int(g) for g in slot["CUDA_VISIBLE_DEVICES"].split(",")] for slot in gpu_slots(gpus, gpus_per_run)]
    out = []
    for i, job in enumerate(jobs):
        ex.update_parameters(local_visible_gpus=groups[i % len(groups)])
        out.append((job, ex.submit(TrainJob(), job)))
    return out
