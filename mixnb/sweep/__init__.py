"""The sweep (``make sweep``): a grid of RunConfigs for a profile, each run executing notebooks/train.ipynb.

Each run is a papermill process writing into its run folder; a finished run is skipped, a broken one resumes from
its checkpoint, a folder of another identity is never overwritten, and a run lock keeps two sweeps from running a
job twice. Failures do not stop the sweep: each is listed at the end with its one-line reason. The jobs run in
threads of this process, one per GPU (group) or CPU slot, or as submitit jobs (SLURM). docs/architecture.md
"The sweep" gives the guarantees in full.

The modules, in reading order:
- ``grid``: ``Job`` and ``expand`` (the grid from ALPHAS, SET, ARGS and GRID files).
- ``plan``: before any run: each job's state (``check_datasets``), ``longest_first``, ``dry_run``, ``check_packing``.
- ``job``: one job under its run lock (train, complete, analyse), and its one-line failure reason.
- ``local``: the slots of this machine and ``run_sweep``.
- ``slurm``: submitit (``TrainJob``, ``submit_sweep``, ``wait_for``).
- ``cli``: ``python -m mixnb sweep``.

The names other code imports are re-exported here (``from mixnb.sweep import expand, run_sweep``).
"""

from mixnb.sweep.cli import add_sweep_options, sweep_from_args
from mixnb.sweep.grid import Job, expand, parse_axes, parse_method_axes, read_grid
from mixnb.sweep.local import CPU_JOBS_AUTO, cpu_slots, gpu_slots, run_sweep
from mixnb.sweep.plan import check_packing, dry_run, longest_first, measured_rates, rate_for
from mixnb.sweep.slurm import TrainJob, make_executor, minutes, submit_sweep, wait_for

__all__ = ["CPU_JOBS_AUTO", "Job", "TrainJob", "add_sweep_options", "check_packing", "cpu_slots", "dry_run", "expand",
           "gpu_slots", "longest_first", "make_executor", "measured_rates", "minutes", "parse_axes",
           "parse_method_axes", "rate_for", "read_grid", "run_sweep", "submit_sweep", "sweep_from_args", "wait_for"]
