"""The sweep: (method x backbone x seed) for a profile, each run executing notebooks/train.ipynb.

Each run is a papermill execution (kernel ``mixnb`` pinned) in its own process, writing into
its run folder. A run whose ``summary.json`` exists is skipped; a broken one is run again and
resumes from its checkpoint. Failures do not stop the sweep; they are listed at the end.
Runs that need another run (AttentiveMix+ uses the finished Vanilla run as its default
teacher) wait for it.

Where the jobs run (``make sweep EXECUTOR=...``):

- ``local-slots`` (default, ``run_sweep``): threads of this process, one job per GPU group at a
  time, each with its own ``CUDA_VISIBLE_DEVICES`` (``GPUS=0,1,2,3 GPUS_PER_RUN=2``: groups 0,1
  and 2,3). A job with ``gpus_per_run`` K > 1 runs the notebook with ``world_size=K``, which
  trains through torchrun (DDP, see mixnb.train).
- ``slurm`` / ``local`` (``submit_sweep``): each run is a submitit job (one array for the
  independent runs, a second one for the runs that need another, after it). A preempted or
  timed-out job is requeued (``TrainJob`` is ``Checkpointable``) and resumes from the run's
  checkpoint. ``local`` is submitit's local executor: every job starts at once, for trying the
  cluster path on one machine.

Two sweeps on the same runs/ never run a job twice: a job runs while holding ``run_dir/.lock``
(an exclusive ``fcntl.flock``), re-checks ``summary.json`` once it holds it, and a job found
locked is skipped as running elsewhere. The lock is shared with the job's papermill process
and dropped by the OS when the last holder exits, so a crashed sweep never leaves it stuck. On
a cluster the runs/ folder must support flock across nodes (NFSv4; Lustre mounted with flock).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from tqdm.auto import tqdm

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY
from mixnb.paths import KERNEL, NOTEBOOKS, runs_root

DEFAULT_BACKBONES = {"tiny-imagenet": ["resnet18", "resnext50"], "sample": ["resnet18"], "test": ["resnet18"]}
NEEDS = {"attentivemix": "vanilla"}  # default teacher: the finished Vanilla run (protocol.md §2.7)
LOCK = ".lock"
LOCK_WAIT_S = 2.0  # a claim retries this long: a probe (``is_locked``) holds the lock for microseconds
MAX_REQUEUES = 100  # submitit time-outs per job; each requeue resumes from the last epoch's checkpoint


@dataclass(frozen=True)
class Job:
    config: RunConfig
    world_size: int = 1  # processes (GPUs) for this run; > 1 trains through torchrun (DDP)
    runs: Path = field(default_factory=runs_root)  # the runs/ folder, fixed when the job is made

    @property
    def run_dir(self) -> Path:
        return self.runs / self.config.profile / self.config.run_name()

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").exists()

    def parameters(self) -> dict:
        c = self.config
        params = {"method": c.method, "backbone": c.backbone, "profile": c.profile, "seed": c.seed,
                  "run_dir": str(self.run_dir), "progress": "epoch"}
        if c.epochs is not None:
            params["epochs"] = c.epochs
        if self.world_size > 1:
            params["world_size"] = self.world_size
        return params

    def needs(self, other: Job) -> bool:
        """Whether this job waits for ``other`` (its default teacher run)."""
        c, o = self.config, other.config
        return NEEDS.get(c.method) == o.method and (o.backbone, o.seed) == (c.backbone, c.seed)


def expand(profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None, *, gpus_per_run: int = 1) -> list[Job]:
    """The grid in registry order (Vanilla first), backbones outermost; configs are validated here."""
    if gpus_per_run < 1:
        raise ValueError(f"gpus_per_run must be >= 1, got {gpus_per_run}")
    methods = methods or list(REGISTRY)
    backbones = backbones or DEFAULT_BACKBONES.get(profile, ["resnet18"])
    return [Job(RunConfig(method=m, backbone=b, profile=profile, seed=s, epochs=epochs), gpus_per_run)
            for b in backbones for s in (seeds or [0]) for m in methods]


@contextmanager
def run_lock(run_dir: Path, *, wait_s: float = 0.0) -> Iterator[int | None]:
    """Hold ``run_dir/.lock`` exclusively; yields its file descriptor, or None when another process
    holds it (after retrying for ``wait_s`` seconds). Closing the descriptor releases it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                held = False
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        yield fd if held else None
    finally:
        os.close(fd)


def is_locked(run_dir: Path) -> bool:
    """Whether a job holds ``run_dir``'s lock now."""
    if not (run_dir / LOCK).exists():
        return False
    with run_lock(run_dir) as fd:
        return fd is None


def execute(job: Job, *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
    """Execute train.ipynb for ``job`` into its run folder (raises CalledProcessError on failure).

    ``pass_fds``: descriptors papermill inherits (the run lock, so it lasts as long as papermill)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(job.run_dir / "train.ipynb"),
           "-k", KERNEL, "-y", json.dumps(job.parameters()), "--cwd", str(job.run_dir), "--no-progress-bar"]
    with open(job.run_dir / "papermill.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=True,
                       pass_fds=pass_fds)


def gpu_slots(gpus: list[str] | None, gpus_per_run: int) -> list[dict[str, str]]:
    """One environment per concurrent job: GPUS split into groups of ``gpus_per_run``; [{}] without GPUS."""
    if not gpus:
        return [{}]
    if len(gpus) % gpus_per_run:
        raise ValueError(f"GPUS={','.join(gpus)} does not split into groups of GPUS_PER_RUN={gpus_per_run}")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i:i + gpus_per_run])} for i in range(0, len(gpus), gpus_per_run)]


# ----------------------------------------------------------------------------- local slots
def run_sweep(*, profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
              seeds: list[int] | None = None, epochs: int | None = None, gpus: list[str] | None = None,
              gpus_per_run: int = 1) -> list[tuple[Job, str]]:
    """Run every unfinished job, one per GPU group at a time (or one at a time); returns the failures."""
    jobs = expand(profile, methods, backbones, seeds, epochs, gpus_per_run=gpus_per_run)
    slots = gpu_slots(gpus, gpus_per_run)
    todo = [j for j in jobs if not j.finished]
    print(f"sweep {profile}: {len(jobs)} runs, {len(jobs) - len(todo)} already finished, {len(todo)} to run")
    failures: list[tuple[Job, str]] = []
    outcomes: dict[str, list[Job]] = {"ran": [], "finished elsewhere": [], "running elsewhere": []}
    lock = threading.Condition()
    pending, running = list(todo), []
    bar = tqdm(total=len(todo), desc=f"sweep {profile}", file=sys.stderr)

    def blocked(job: Job) -> bool:  # its need is still to run here, or running in another sweep
        return (any(job.needs(o) for o in pending + running)
                or any(job.needs(o) and is_locked(o.run_dir) for o in outcomes["running elsewhere"]))

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
            with run_lock(job.run_dir, wait_s=LOCK_WAIT_S) as fd:
                outcome = "running elsewhere" if fd is None else "finished elsewhere" if job.finished else "ran"
                if outcome == "ran":
                    try:
                        execute(job, env=slot_env, pass_fds=(fd,))
                    except subprocess.CalledProcessError:
                        failures.append((job, str(job.run_dir / "papermill.log")))
            with lock:
                outcomes[outcome].append(job)
                running.remove(job)
                bar.update(1)
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(s,)) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    for outcome in ("finished elsewhere", "running elsewhere"):
        for job in outcomes[outcome]:
            print(f"skipped {job.config.run_name()}: {outcome} (another sweep holds or held its lock)")
    for job, log in failures:
        print(f"FAILED {job.config.run_name()}: see {log}")
    if failures:
        print(f"{len(failures)} of {len(todo)} runs failed")
    return failures


# ----------------------------------------------------------------------------- submitit (slurm, local)
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job; returns what happened ("ran", "finished", "running elsewhere").

    On preemption or time-out submitit calls ``checkpoint`` (inherited: this same call again) and
    requeues the job, which then resumes from the run's checkpoint.pt.
    """

    def __call__(self, job: Job) -> str:
        with run_lock(job.run_dir, wait_s=LOCK_WAIT_S) as fd:
            if fd is None:
                return "running elsewhere"
            if job.finished:
                return "finished"
            execute(job, pass_fds=(fd,))
            return "ran"


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
    parts = [int(p) for p in clock.split(":")]
    if len(parts) > 3:
        raise ValueError(f"time {time!r}: use minutes, H:MM, H:MM:SS or D-H[:MM[:SS]]")
    if len(parts) == 1 and not days:
        return parts[0]
    hours, mins, secs = (parts + [0, 0])[:3]
    return int(days or 0) * 1440 + hours * 60 + mins + (secs > 0)


def submit_sweep(*, profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
                 seeds: list[int] | None = None, epochs: int | None = None, gpus_per_run: int = 1,
                 executor: str = "slurm", gpus: list[str] | None = None, partition: str | None = None,
                 account: str | None = None, qos: str | None = None, time: str = "1440", cpus_per_task: int = 8,
                 mem_gb: float | None = None) -> list[tuple[Job, submitit.Job]]:
    """Submit every unfinished, unlocked run as a submitit job and return them (``wait_for`` waits);
    submitit's logs go to runs/<profile>/.submitit."""
    jobs = expand(profile, methods, backbones, seeds, epochs, gpus_per_run=gpus_per_run)
    todo = [j for j in jobs if not j.finished and not is_locked(j.run_dir)]
    print(f"sweep {profile} on {executor}: {len(jobs)} runs, {len(jobs) - len(todo)} finished or running "
          f"elsewhere, {len(todo)} to submit")
    if not todo:
        return []
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
    return submitted


def wait_for(submitted: list[tuple[Job, submitit.Job]]) -> list[tuple[Job, str]]:
    """Wait for submitted jobs; returns the failures (job, submitit's stderr log)."""
    failures: list[tuple[Job, str]] = []
    for job, sub in submitted:
        try:
            print(f"{job.config.run_name()}: {sub.result()}")
        except Exception as err:  # the job's exception, or submitit's report of a failed job
            failures.append((job, str(sub.paths.stderr)))
            print(f"FAILED {job.config.run_name()}: {type(err).__name__}; see {sub.paths.stderr} and "
                  f"{job.run_dir / 'papermill.log'}")
    if failures:
        print(f"{len(failures)} of {len(submitted)} runs failed")
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
