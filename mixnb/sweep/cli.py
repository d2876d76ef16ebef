"""``python -m mixnb sweep`` (``make sweep``): its options, checked before any run, then the grid run or listed."""

from __future__ import annotations

import argparse
from typing import Any

from mixnb.analysis.corruptions import check_tinc
from mixnb.mixups import settings_text
from mixnb.sweep.grid import at_least_one, expand, parse_axes, parse_method_axes, read_grid
from mixnb.sweep.local import CPU_JOBS_AUTO, run_sweep
from mixnb.sweep.plan import dry_run
from mixnb.sweep.slurm import minutes, submit_sweep, wait_for


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
