"""Command line: ``python -m mixnb {prepare,train,sweep,report}`` (``make bench``: ``python -m mixnb.bench``).

``torchrun --nproc-per-node K -m mixnb train ...`` trains one run on K GPUs (DDP; see mixnb.train).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _kv(items: list[str]) -> dict[str, Any]:
    """key=value pairs; values parsed as JSON when they are JSON, else kept as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixnb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="validate a tiny-imagenet-200 folder and build its uint8 cache")
    p.add_argument("data", help="path to tiny-imagenet-200")

    p = sub.add_parser("train", help="train one run (resumes from the run folder's checkpoint); "
                                     "under torchrun, one run on several GPUs")
    p.add_argument("--config", default=None, help="a params.json (all RunConfig fields); replaces the options below")
    p.add_argument("--method", default="vanilla")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--profile", default="sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>/<run name>")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other RunConfig fields")
    p.add_argument("--arg", nargs="*", default=[], metavar="KEY=VALUE", help="method settings (method_args)")
    p.add_argument("--progress", default="bar", choices=["bar", "epoch", "none"])

    p = sub.add_parser("sweep", help="run the (method x backbone x seed) grid through train.ipynb")
    p.add_argument("--profile", default="sample")
    p.add_argument("--methods", default=None, help="comma-separated; default: all")
    p.add_argument("--backbones", default=None, help="comma-separated; default: the profile's")
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one job per GPU (group) at a time")
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs (DDP processes) per run, through torchrun")
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

    p = sub.add_parser("report", help="execute analysis.ipynb and render reports/benchmark.html")
    p.add_argument("--profile", default="sample")

    args = parser.parse_args(argv)
    if args.command == "prepare":
        from mixnb.data import load_tiny_imagenet

        data = load_tiny_imagenet(args.data)
        print(f"{args.data}: {len(data.y_train)} train, {len(data.y_val)} val images, {len(data.wnids)} classes: ok")
    elif args.command == "train":
        from mixnb.config import RunConfig
        from mixnb.io import read_json
        from mixnb.paths import run_dir
        from mixnb.train import fit

        if args.config:
            cfg = RunConfig.from_dict(read_json(args.config))
        else:
            cfg = RunConfig.from_dict({"method": args.method, "backbone": args.backbone, "profile": args.profile,
                                       "seed": args.seed, "epochs": args.epochs, "device": args.device,
                                       "method_args": _kv(args.arg), **_kv(args.set)})
        summary = fit(cfg, args.run_dir or run_dir(cfg.profile, cfg.run_name()), progress=args.progress)
        if os.environ.get("RANK", "0") == "0":
            print(f"{summary['run']}: {summary['median_label']} = {summary['median_top1']:.2f}")
    elif args.command == "sweep":
        from mixnb.sweep import run_sweep, submit_sweep, wait_for

        grid = dict(profile=args.profile, methods=_split(args.methods), backbones=_split(args.backbones),
                    seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs, gpus_per_run=args.gpus_per_run)
        if args.executor == "local-slots":
            failures = run_sweep(**grid, gpus=_split(args.gpus))
        else:
            submitted = submit_sweep(**grid, executor=args.executor, gpus=_split(args.gpus), partition=args.partition,
                                     account=args.account, qos=args.qos, time=args.time,
                                     cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb)
            if not args.wait:
                print("not waiting (WAIT=0): `make report` renders the runs that have finished")
            failures = wait_for(submitted) if args.wait else []
        return 1 if failures else 0
    elif args.command == "report":
        from mixnb.report import render_report

        print(render_report(args.profile))
    return 0


def _split(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


if __name__ == "__main__":
    sys.exit(main())
