"""Command line: ``python -m mixnb {prepare,replica,train,sweep,analyze,report}`` (``make bench``: ``python -m mixnb.bench``).

``torchrun --nproc-per-node K -m mixnb train ...`` trains one run on K GPUs (DDP; see mixnb.train).
A user error (a bad value, a missing file, a run folder of another config) prints one line and exits 2, a failed
child process (the report's notebook) 1 and Ctrl-C 130; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from typing import Any


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per RunConfig field (its help, choices and default), plus --set / --arg."""
    from mixnb.config import RunConfig
    from mixnb.mixups import REGISTRY, settings_text

    for f in dataclasses.fields(RunConfig):
        if f.name == "method_args":
            continue
        choices = list(REGISTRY) if f.metadata.get("choices") == "methods" else f.metadata.get("choices")
        default = f.default
        kind = {"int": int, "float": float}.get(str(f.type).split("|")[0].strip())
        if str(f.type) == "bool":
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           action=argparse.BooleanOptionalAction, help=f"{f.metadata['help']} (default: {default})")
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, choices=choices,
                       type=_none_or(kind) if kind else _none_or(str), metavar=None if choices else f.name.upper(),
                       help=f"{f.metadata['help']} (default: {default})")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="any RunConfig field; repeatable, later values win (e.g. --set lr=0.1 weight_decay=5e-4)")
    p.add_argument("--arg", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"method settings (method_args), typed like the registry defaults; repeatable (e.g. --arg "
                        f"alpha=0.2). Each method's: {settings_text()}")


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def config_from_args(args: argparse.Namespace) -> Any:
    """The RunConfig of ``mixnb train``'s options: --config first, then the field options, then --set, --arg."""
    from mixnb.config import RunConfig, parse_pairs

    values: dict[str, Any] = RunConfig.from_file(args.config).to_dict() if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                   if getattr(args, f.name, None) is not None})
    values.update(parse_pairs(args.set))
    if args.arg:
        values["method_args"] = {**values.get("method_args", {}), **parse_pairs(args.arg)}
    return RunConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixnb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="detect a dataset folder's form (docs/datasets.md), validate it, build its uint8 "
                                       "cache and say what it holds")
    p.add_argument("data", help="the dataset folder: tiny-imagenet-200, its parquet files, cifar-100-python, "
                                "ImageNet 64x64 batches")

    p = sub.add_parser("replica", help="write a small replica of a real dataset form from the generated sample set "
                                       "(try a reader and a profile end to end without downloading)")
    from mixnb.data.replicas import FORMS

    p.add_argument("form", choices=list(FORMS))
    p.add_argument("path", help="a new folder")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train one run (resumes from the run folder's checkpoint); "
                                     "under torchrun, one run on several GPUs")
    p.add_argument("--config", default=None, help="a params.json (or JSON of RunConfig fields); options override it")
    _add_config_options(p)
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>/<run name>")
    p.add_argument("--progress", default="bar", choices=["bar", "epoch", "none"], help="(default: bar)")

    from mixnb.sweep import add_sweep_options

    add_sweep_options(sub.add_parser("sweep", help="run a grid of configs, each through train.ipynb "
                                                   "(--dry-run lists it with its GPU-time estimate)"))

    from mixnb.analysis import add_analyze_options

    p = sub.add_parser("analyze", help="calibration, attacks, occlusion, corruptions, CAM localisation and FLOPs "
                                       "of finished runs: analysis.json in each run folder")
    add_analyze_options(p)
    p.add_argument("--profile", default=None, help="every finished run of this profile (make analyze PROFILE=...)")

    p = sub.add_parser("report", help="execute analysis.ipynb and render reports/<profile>/benchmark.html")
    p.add_argument("--profile", default="sample", help="(default: sample)")

    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, OSError, RuntimeError, subprocess.CalledProcessError, KeyboardInterrupt) as err:
        if args.debug:
            raise
        if isinstance(err, KeyboardInterrupt):
            print(f"mixnb {args.command}: interrupted", file=sys.stderr)
            return 130
        if isinstance(err, subprocess.CalledProcessError):  # its own error is printed above
            print(f"mixnb {args.command}: error: {' '.join(map(str, err.cmd[1:4]))} exited with status "
                  f"{err.returncode} (its error is above)", file=sys.stderr)
            return 1
        print(f"mixnb {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        from mixnb.data import load_dataset

        data = load_dataset(args.data)
        print(f"{data.root}: {data.form}, ok\n"
              f"  classes      {len(data.wnids)} (label order: {data.label_order})\n"
              f"  images       {len(data.y_train)} train, {len(data.y_val)} val, {data.image_size}x{data.image_size}\n"
              f"  val boxes    {'present' if data.has_boxes else 'absent (whole images)'}\n"
              f"  content key  {data.content_key}\n"
              f"  cache        {data.cache_file}")
    elif args.command == "replica":
        from mixnb.data.replicas import write_replica

        path = write_replica(args.form, args.path, seed=args.seed, num_classes=args.classes,
                             train_per_class=args.train_per_class, val_per_class=args.val_per_class)
        print(f"{path}: a {args.form} replica ({args.classes} generated classes); MIXNB_DATA={path}")
    elif args.command == "train":
        from mixnb.paths import run_dir
        from mixnb.train import fit

        cfg = config_from_args(args)
        summary = fit(cfg, args.run_dir or run_dir(cfg.profile, cfg.run_name()), progress=args.progress)
        if os.environ.get("RANK", "0") == "0":
            print(f"{summary['run']}: {summary['median_label']} = {summary['median_top1']:.2f}")
    elif args.command == "sweep":
        from mixnb.sweep import sweep_from_args

        return sweep_from_args(args)
    elif args.command == "analyze":
        from mixnb.analysis import analyze_from_args
        from mixnb.paths import runs_root
        from mixnb.runs import is_finished

        if args.profile:
            args.run_dirs += sorted(str(d) for d in (runs_root() / args.profile).glob("*") if is_finished(d))
        if not args.run_dirs:
            raise ValueError("nothing to analyse: give RUN_DIR(s) or --profile with finished runs (make sweep first)")
        return analyze_from_args(args)
    elif args.command == "report":
        from mixnb.report import render_report

        print(render_report(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
