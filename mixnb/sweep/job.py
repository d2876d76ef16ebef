"""One job of a sweep, wherever it runs: under its run lock, make what the run owes; its one-line failure reason.

Each run is a papermill execution of notebooks/train.ipynb in its own process, writing into its run folder and
given every RunConfig field; the notebook ends with the run's analysis beyond accuracy (analysis.json) on the run's
device. A broken run is run again and resumes from its checkpoint; a run that trained but whose gallery or analysis
failed is kept, listed, and completed by the next sweep (``mixnb.runs.missing_products``).

Two sweeps on the same runs/ never run a job twice: a job runs while holding ``run_dir/.lock`` (an exclusive
``fcntl.flock``), re-checks what it owes once it holds it, and a job found locked is skipped as running elsewhere.
The lock is shared with the job's papermill process and dropped by the OS when the last holder exits, so a crashed
sweep never leaves it stuck. On a cluster the runs/ folder must support flock across nodes (NFSv4; Lustre mounted
with flock).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mixnb.notebook_run import run_notebook
from mixnb.paths import NOTEBOOKS
from mixnb.runs import ANALYSIS, GALLERY, SUMMARY, analysis_failure, failure, run_lock
from mixnb.sweep.grid import Job

LOCK_WAIT_S = 2.0  # a claim retries this long: a probe (``is_locked``) holds the lock for microseconds


class AnalysisFailed(RuntimeError):
    """A finished run whose analysis failed: its training result stands, the next sweep analyses it again."""


def execute(job: Job, *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
    """Execute train.ipynb for ``job`` into its run folder (``run_notebook``); raises ``RuntimeError`` with the run's
    one-line reason on failure (papermill's own output and the training lines go to ``papermill.log``).

    ``pass_fds``: descriptors papermill inherits (the run lock, so it lasts as long as papermill)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run_notebook(NOTEBOOKS / "train.ipynb", job.run_dir / "train.ipynb", job.parameters(),
                     log=job.run_dir / "papermill.log", env=env, pass_fds=pass_fds, cwd=job.run_dir)
    except subprocess.CalledProcessError:
        raise RuntimeError(failure_reason(job.run_dir)) from None


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


def run_locked(job: Job, *, env: dict[str, str] | None = None) -> str:
    """``run_job`` holding the job's run lock, which its papermill process inherits; "running elsewhere" when
    another sweep holds it."""
    with run_lock(job.run_dir, wait_s=LOCK_WAIT_S) as fd:
        if fd is None:
            return "running elsewhere"
        return run_job(job, env=env, pass_fds=(fd,))


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


def report_failures(failures: list[tuple[Job, str]], total: int) -> None:
    """Print each failure with its one-line reason, then how many of ``total`` runs failed."""
    for job, reason in failures:
        print(f"FAILED {job.config.run_name()}: {reason}")
    if failures:
        print(f"{len(failures)} of {total} runs failed")
