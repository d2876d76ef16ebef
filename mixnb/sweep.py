"""The sweep: a grid of RunConfigs for a profile, each run executing notebooks/train.ipynb.

The grid is (backbone x seed x method) times any setting's values, from the command line or a grid
file: ``ALPHAS=0.2,1,2`` (every method that has an alpha), ``SET="lr=0.1,0.2 weight_decay=5e-4"`` (any
RunConfig field but the loop's own, which have METHODS, BACKBONES, PROFILE and SEEDS; commas outside brackets
separate values), ``ARGS="cutmix:alpha=0.5"`` (a method's setting; without ``method:`` every method that has
it), ``GRID=grids/alpha-search.toml`` (per-method value lists, as OpenMixup's ``auto_train_mixups.py``). A
setting no method has, or an empty list, fails. Later sources win: the grid file, then ALPHAS,
then SET/ARGS. ``DRY_RUN=1`` lists the runs, which are finished, and their GPU time from the measured
seconds per epoch in BENCHMARKS.md.

Each run is a papermill execution (kernel ``mixnb`` pinned) in its own process, writing into its
run folder and given every RunConfig field; the notebook ends with the run's analysis beyond
accuracy (analysis.json) on the run's device. The dataset is checked once, before any run starts. A
finished run (``mixnb.runs.is_finished``, same identity) is skipped; a broken one is run again and
resumes from its checkpoint; a folder holding another identity is reported, never overwritten.
Failures do not stop the sweep; each is listed with its one-line reason at the end (a run that trained but
whose gallery or analysis failed is kept, listed, and completed by the next sweep: ``mixnb.runs.missing_products``;
a product whose checkpoint was deleted is said once, not retried). Progress is live
(``mixnb.progress``: a line per running job and the sweep's ETA). Runs that need
another run (AttentiveMix+ uses the finished Vanilla run as its default teacher) wait for it.

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

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch
from tqdm.auto import tqdm

from mixnb.analysis.corruptions import check_tinc
from mixnb.config import RunConfig, parse_value, resolve_device, split_top
from mixnb.io import remove_stale_temps, temp_path
from mixnb.memory import (ANALYSIS_BUDGET_GIB, CARD_GIB, CONTEXT_GIB, GIB, analysis_batch, predict_analysis_gib,
                          predict_step_gib)
from mixnb.mixups import REGISTRY, get_spec, settings_text
from mixnb.paths import KERNEL, NOTEBOOKS, ROOT, runs_root
from mixnb.progress import SweepWatcher
from mixnb.profiles import get_profile
from mixnb.runs import (ANALYSIS, FAILED, GALLERY, SUMMARY, RunConflict, analysis_failure, check_identity,
                        dataset_record, failure, is_finished, is_locked, load_data, missing_products, read_summary,
                        run_lock)

CPU_JOBS_AUTO = 2  # runs at once without a GPU (cores allowing): docs/performance.md "CPU sweeps"
LOCK_WAIT_S = 2.0  # a claim retries this long: a probe (``is_locked``) holds the lock for microseconds
MAX_REQUEUES = 100  # submitit time-outs per job; each requeue resumes from the last epoch's checkpoint
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
METHOD_SETTINGS = sorted({key for spec in REGISTRY.values() for key in spec.defaults})  # what [all] and --arg may set
LOOP_OPTIONS = {"method": "methods", "backbone": "backbones", "profile": "profile", "seed": "seeds"}  # the loop's axes


@dataclass(frozen=True)
class Job:
    config: RunConfig
    world_size: int = 1  # processes (GPUs) for this run; > 1 trains through torchrun (DDP)
    runs: Path = field(default_factory=runs_root)  # the runs/ folder, fixed when the job is made
    analysis: bool = True  # the notebook analyses the finished run (analysis.json) on the run's device

    @property
    def run_dir(self) -> Path:
        return self.runs / self.config.profile / self.config.run_name()

    @property
    def finished(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def owed(self) -> list[str]:
        """The files this run still owes that can be made (``mixnb.runs.missing_products``)."""
        return [name for name, why in missing_products(self.run_dir, analysis=self.analysis).items() if why is None]

    def parameters(self) -> dict[str, Any]:
        """The train notebook's parameters: every RunConfig field, so the run is exactly this config."""
        params = {**self.config.to_dict(), "run_dir": str(self.run_dir), "progress": "epoch",
                  "analysis": self.analysis}
        if self.world_size > 1:
            params["world_size"] = self.world_size
        return params

    def needs(self, other: Job) -> bool:
        """Whether this job waits for ``other`` (its default teacher run)."""
        c, o = self.config, other.config
        return get_spec(c.method).needs == o.method and (o.backbone, o.seed) == (c.backbone, c.seed)


# ----------------------------------------------------------------------------- the grid
Axes = dict[str, list[Any]]  # setting -> its values; a RunConfig field, or a method setting


def expand(profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None, *, sets: Axes | None = None,
           args: dict[str | None, Axes] | None = None, alphas: list[float] | None = None,
           grid: dict[str, Axes] | None = None, gpus_per_run: int = 1, analysis: bool = True) -> list[Job]:
    """The grid in registry order (Vanilla first), backbones outermost; configs are validated here.

    ``sets``: RunConfig field -> values, for every run. ``args``: method (None = every method that has
    the setting) -> setting -> values. ``alphas``: alpha values for every method with an alpha. ``grid``:
    a grid file's tables (``read_grid``): "all" and method names -> setting or field -> values.
    Precedence: grid file < alphas < sets/args. Identical configs are one job. ``analysis``: each run's
    notebook ends with its analysis beyond accuracy (False: ``make analyze`` does it later).
    """
    at_least_one("GPUS_PER_RUN", gpus_per_run)
    if methods == ["all"]:
        methods = list(REGISTRY)
    for name in methods or []:
        get_spec(name)  # an unknown method fails here with the valid names
    methods = methods or [m for m, spec in REGISTRY.items() if spec.sweep]
    backbones = backbones or list(get_profile(profile).backbones)  # the profile's (mixnb.profiles)
    jobs: dict[str, Job] = {}
    for b, s, m in itertools.product(backbones, seeds or [0], methods):
        for overrides in _method_grid(m, sets or {}, args or {}, alphas, grid or {}, epochs):
            fields = {k: v for k, v in overrides.items() if k in CONFIG_FIELDS}
            method_args = {k: v for k, v in overrides.items() if k not in CONFIG_FIELDS}
            try:
                cfg = RunConfig.from_dict({"profile": profile, **fields, "method": m, "backbone": b, "seed": s,
                                           "method_args": {**fields.get("method_args", {}), **method_args}})
            except (ValueError, TypeError) as err:
                raise ValueError(f"sweep: {m} with {overrides}: {err}") from None
            job = Job(cfg, gpus_per_run, analysis=analysis)
            jobs.setdefault(str(job.run_dir), job)
    return list(jobs.values())


def _method_grid(method: str, sets: Axes, args: dict[str | None, Axes], alphas: list[float] | None,
                 grid: dict[str, Axes], epochs: int | None) -> list[dict[str, Any]]:
    """Every combination of the axes that apply to ``method`` (a method setting applies where it exists)."""
    own = get_spec(method).defaults
    axes: Axes = {}
    for source in (grid.get("all", {}), grid.get(method, {})):
        axes.update({k: v for k, v in source.items() if k in CONFIG_FIELDS or k in own})
    if alphas and "alpha" in own:
        axes["alpha"] = list(alphas)
    if epochs is not None:
        axes["epochs"] = [epochs]
    axes.update(sets)
    axes.update({k: v for k, v in args.get(None, {}).items() if k in own})
    axes.update(args.get(method, {}))
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def read_grid(path: str | Path) -> dict[str, Axes]:
    """A grid file: TOML tables ``[all]`` and ``[<method>]`` of ``setting = value or [values]``."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"grid file {path} is not text: give a TOML grid file, e.g. grids/alpha-search.toml") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"grid file {path}: {err}") from None
    grid: dict[str, Axes] = {}
    for name, table in tables.items():
        if name != "all":
            get_spec(name)
        if not isinstance(table, dict):
            raise ValueError(f"grid file {path}: {name} must be a table ([{name}]) of setting = [values]")
        settings = METHOD_SETTINGS if name == "all" else list(get_spec(name).defaults)
        for key, value in table.items():
            _refuse_loop_axis(key, f"grid file {path}: [{name}]")
            if key not in CONFIG_FIELDS and key not in settings:
                raise ValueError(f"grid file {path}: [{name}] has no setting {key!r}; its settings: "
                                 f"{', '.join(settings) or 'none'}, or a RunConfig field")
            if value == []:
                left_out = "every method" if name == "all" else name
                raise ValueError(f"grid file {path}: [{name}] {key} = [] would leave {left_out} out of the sweep; "
                                 f"give it a value or more")
        grid[name] = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
    return grid


def _refuse_loop_axis(key: str, where: str) -> None:
    """Fail on a RunConfig field that the sweep's loop sets for each run, which would overwrite the value given."""
    if key in LOOP_OPTIONS:
        option = LOOP_OPTIONS[key]
        raise ValueError(f"{where}: {key} is an axis of the sweep's own loop, which would overwrite it; give it with "
                         f"--{option} (make {option.upper()}=...)")


def parse_axes(items: list[str]) -> Axes:
    """``key=v1,v2`` items -> {key: [v1, v2]} (commas inside brackets belong to one value; later keys win)."""
    axes: Axes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ValueError(f"expected key=value[,value...], got {item!r}")
        _refuse_loop_axis(key.strip(), repr(item))
        axes[key.strip()] = [parse_value(v.strip()) for v in split_top(text, ",")]
    return axes


def parse_method_axes(items: list[str]) -> dict[str | None, Axes]:
    """``[method:]key=v1,v2`` items -> {method or None: {key: [values]}}; a key that ``method`` (without one: every
    method) lacks fails with the valid names."""
    out: dict[str | None, Axes] = {}
    for item in items:
        head, sep, _ = item.partition("=")
        method, colon, key = head.rpartition(":") if ":" in head else (None, "", head)
        [(key, values)] = parse_axes([item[len(head) - len(key):] if colon else item]).items()
        settings = METHOD_SETTINGS if method is None else list(get_spec(method).defaults)
        if key not in settings:
            raise ValueError(f"--arg {item!r}: {'no method has' if method is None else method + ' has no'} setting "
                             f"{key!r}; valid: {', '.join(settings) or 'none'} (RunConfig fields go in --set)")
        out.setdefault(method, {})[key] = values
    return out


def execute(job: Job, *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
    """Execute train.ipynb for ``job`` into its run folder; raises ``RuntimeError`` with the run's one-line
    reason on failure (papermill's own output and the training lines go to ``papermill.log``).

    ``pass_fds``: descriptors papermill inherits (the run lock, so it lasts as long as papermill)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    notebook = job.run_dir / "train.ipynb"
    remove_stale_temps(notebook)
    tmp = temp_path(notebook, folder=True)  # papermill rewrites its output after every cell: a kill can cut it short
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(tmp / notebook.name),
           "-k", KERNEL, "-y", json.dumps(job.parameters()), "--cwd", str(job.run_dir), "--no-progress-bar",
           "--log-output"]
    try:
        with open(job.run_dir / "papermill.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                  pass_fds=pass_fds)
        _replace_if_whole(tmp / notebook.name, notebook)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode:
        raise RuntimeError(failure_reason(job.run_dir))


def _replace_if_whole(executed: Path, notebook: Path) -> None:
    """Move papermill's ``executed`` notebook over ``notebook`` if it parses; if it is missing or cut short by a
    kill, remove ``notebook`` too: an earlier attempt's notebook would misstate this one's outcome."""
    try:
        json.loads(executed.read_text())
    except (OSError, ValueError):
        notebook.unlink(missing_ok=True)
        return
    os.replace(executed, notebook)


class AnalysisFailed(RuntimeError):
    """A finished run whose analysis failed: its training result stands, the next sweep analyses it again."""


def analyse(job: Job, *, env: dict[str, str] | None = None) -> None:
    """Analyse a finished run in a child process on the job's device (``mixnb analyze``; output to
    ``analysis.log``); ``run_job`` then reads whether it failed."""
    cmd = [sys.executable, "-m", "mixnb", "analyze", str(job.run_dir), "--device", job.config.device]
    with open(job.run_dir / "analysis.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def run_job(job: Job, *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> str:
    """With the job's run lock held, make what the run owes (``Job.owed``): train it ("ran"); for a finished run
    whose gallery is missing (the notebook failed or was killed after training) execute the notebook again, which
    resumes into its later cells ("completed"); for one whose analysis alone is missing or failed, analyse it
    ("analysed"); else nothing ("finished"). Raises ``AnalysisFailed`` when training is done but the analysis the
    job asked for is not, and the notebook's one-line reason when it failed."""
    owed = job.owed
    if SUMMARY in owed or GALLERY in owed:
        execute(job, env=env, pass_fds=pass_fds)
        outcome = "ran" if SUMMARY in owed else "completed"
    elif owed:
        analyse(job, env=env)
        outcome = "analysed"
    else:
        return "finished"
    if ANALYSIS in job.owed:
        failed = analysis_failure(job.run_dir) or {"reason": f"no analysis.json; see {job.run_dir / 'analysis.log'}"}
        raise AnalysisFailed(f"analysis failed: {failed['reason']} (the training result stands; the next make sweep "
                             f"or make analyze tries again)")
    return outcome


def failure_reason(run_dir: Path) -> str:
    """One line: failed.json's reason, else the exception the executed notebook stopped on."""
    if (failed := failure(run_dir)) is not None:
        return failed["reason"]
    try:
        cells = json.loads((run_dir / "train.ipynb").read_text())["cells"]
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    except (OSError, ValueError, KeyError, TypeError):
        errors = []
    if errors:
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        return f"{errors[-1]['ename']}: {ansi.sub('', errors[-1]['evalue'])}".splitlines()[0]
    return f"papermill failed; see {run_dir / 'papermill.log'}"


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


def at_least_one(option: str, value: int | None) -> None:
    """Refuse a count below 1 (None: the default), naming its make variable."""
    if value is not None and value < 1:
        raise ValueError(f"{option} must be >= 1, got {value}")


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


# ----------------------------------------------------------------------------- plan
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


# ----------------------------------------------------------------------------- local slots
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
        with run_lock(job.run_dir, wait_s=LOCK_WAIT_S) as fd:
            if fd is None:
                return "running elsewhere"
            outcome = run_job(job, env=slot_env, pass_fds=(fd,))
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


def report_failures(failures: list[tuple[Job, str]], total: int) -> None:
    for job, reason in failures:
        print(f"FAILED {job.config.run_name()}: {reason}")
    if failures:
        print(f"{len(failures)} of {total} runs failed")


# ----------------------------------------------------------------------------- submitit (slurm, local)
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job; returns what happened (``run_job``'s outcome, or "running elsewhere");
    raises ``AnalysisFailed`` when the run finished but its analysis did not.

    On preemption or time-out submitit calls ``checkpoint`` (inherited: this same call again) and
    requeues the job, which then resumes from the run's checkpoint.pt.
    """

    def __call__(self, job: Job) -> str:
        with run_lock(job.run_dir, wait_s=LOCK_WAIT_S) as fd:
            if fd is None:
                return "running elsewhere"
            return run_job(job, pass_fds=(fd,))


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


def submit_sweep(jobs: list[Job], *, gpus_per_run: int = 1, executor: str = "slurm", gpus: list[str] | None = None, partition: str | None = None,
                 account: str | None = None, qos: str | None = None, time: str = "1440", cpus_per_task: int = 8,
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


# ----------------------------------------------------------------------------- command line
def add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="sample", help="(default: sample)")
    p.add_argument("--methods", default=None, help="comma-separated, or all; default: the registry's default sweep")
    p.add_argument("--backbones", default=None, help="comma-separated; default: the profile's")
    p.add_argument("--seeds", default="0", help="comma-separated (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="shorthand for --set epochs=N")
    p.add_argument("--alphas", default=None, help="comma-separated alpha values for every method that has an alpha")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=V1[,V2...]",
                   help="RunConfig fields for every run, each value list an axis of the grid")
    p.add_argument("--arg", action="extend", nargs="+", default=[], metavar="[METHOD:]KEY=V1[,V2...]",
                   help=f"method settings; without METHOD: every method that has the setting. Each method's: "
                        f"{settings_text()}")
    p.add_argument("--grid", default=None, help="a TOML grid file, e.g. grids/alpha-search.toml")
    p.add_argument("--dry-run", action="store_true", help="list the runs, which are finished, and their GPU time")
    p.add_argument("--no-analysis", dest="analysis", action="store_false",
                   help="skip each run's analysis beyond accuracy (make analyze does it later)")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one job per GPU (group) at a time")
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs (DDP processes) per run, through torchrun")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="local-slots: jobs sharing each GPU (group) at once")
    p.add_argument("--cpu-jobs", type=int, default=None,
                   help=f"local-slots without a GPU: runs at once, the cores shared (default: {CPU_JOBS_AUTO}, "
                        f"at most one per core)")
    p.add_argument("--executor", default="local-slots", choices=["local-slots", "local", "slurm"],
                   help="local-slots: in this process, one job per GPU group at a time; local / slurm: submitit")
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument("--account", default=None, help="slurm: account")
    p.add_argument("--qos", default=None, help="slurm: quality of service")
    p.add_argument("--time", default="1440", help="submitit: time limit per job, minutes or [D-]HH:MM[:SS]; "
                                                   "a job that reaches it is requeued and resumes")
    p.add_argument("--cpus-per-task", type=int, default=8, help="submitit: CPU cores per job")
    p.add_argument("--mem-gb", type=float, default=None, help="submitit: memory per job (default: the cluster's)")
    p.add_argument("--wait", type=int, default=1, choices=[0, 1], help="submitit: 1 = wait for the jobs, 0 = return")


def sweep_from_args(args: argparse.Namespace) -> int:
    """``mixnb sweep``: check the options, expand the grid, then list it (--dry-run) or run it; 1 when a run failed.
    Whatever can be checked before a run is (the counts, --time, and with the analysis ``$MIXNB_TINC``), so that no
    run trains in full and then fails on it."""
    at_least_one("RUNS_PER_GPU", args.runs_per_gpu)  # expand checks GPUS_PER_RUN
    at_least_one("CPU_JOBS", args.cpu_jobs)
    minutes(args.time)
    if args.analysis:
        check_tinc()
    jobs = expand(args.profile, _split(args.methods), _split(args.backbones), _numbers(args.seeds, "seeds", int),
                  args.epochs, sets=parse_axes(args.set), args=parse_method_axes(args.arg),
                  alphas=_numbers(args.alphas, "alphas", float), grid=read_grid(args.grid) if args.grid else None,
                  gpus_per_run=args.gpus_per_run, analysis=args.analysis)
    if args.dry_run:
        print(dry_run(jobs))
        return 0
    if args.executor == "local-slots":
        failures = run_sweep(jobs, gpus=_split(args.gpus), gpus_per_run=args.gpus_per_run,
                             runs_per_gpu=args.runs_per_gpu, cpu_jobs=args.cpu_jobs)
    else:
        submitted, failures = submit_sweep(jobs, executor=args.executor, gpus=_split(args.gpus),
                                           gpus_per_run=args.gpus_per_run, partition=args.partition,
                                           account=args.account, qos=args.qos, time=args.time,
                                           cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb)
        if not args.wait:
            print("not waiting (WAIT=0): `make report` renders the runs that have finished")
        failures += wait_for(submitted) if args.wait else []
    return 1 if failures else 0


def _split(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def _numbers(text: str | None, option: str, kind: type) -> list[Any] | None:
    """``--seeds 0,1`` / ``--alphas 0.2,1`` as numbers (None when not given); an empty or non-numeric value fails
    naming the option."""
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        example = "0,1,2" if kind is int else "0.2,1"
        raise ValueError(f"--{option} {text!r}: give comma-separated {'integers' if kind is int else 'numbers'}, "
                         f"e.g. --{option} {example} (make {option.upper()}={example})") from None


# ----------------------------------------------------------------------------- dry run
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
    """The measured (s/epoch, how) of ``job``'s backbone and method, or None when none was measured at its
    costly settings (``COSTLIER_THAN_MEASURED``)."""
    spec, args = get_spec(job.config.method), job.config.full_method_args()
    head = json.loads(json.dumps(spec.head))
    if any(args[k] != head.get(k, args[k]) for k in COSTLIER_THAN_MEASURED.get(job.config.method, ())):
        return None
    return rates.get((job.config.backbone, job.config.method))


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
    if unknown:
        lines.append(f"no measured rate for {len(unknown)} of them (not counted): {', '.join(unknown)}")
        if any(j.config.method in COSTLIER_THAN_MEASURED and j.config.run_name() in unknown for j in jobs):
            lines.append("PuzzleMix at the published settings (16x16 blocks, 4-px transport) has no GPU rate yet: "
                         "its transport costs ~26x HEAD's per batch on the CPU (docs/publication.md)")
    lines.append(f"step peak: predicted GiB of a training step on CUDA; analysis: the attack/CAM batch under "
                 f"{ANALYSIS_BUDGET_GIB:g} GiB and its peak (mixnb.memory)")
    return "\n".join(lines)


def memory_cells(job: Job) -> str:
    """``  8.6 GiB   batch  144 (20.0 GiB)``, or why the memory model could not measure the job."""
    try:
        step, batch, analysis = job_memory(job)
    except (ImportError, OSError, RuntimeError, ValueError) as err:  # e.g. an optional package missing here
        return f"{'? GiB':>9}  not measured ({type(err).__name__})"
    return f"{step:5.1f} GiB  batch {batch:4d} ({analysis:4.1f} GiB)"
