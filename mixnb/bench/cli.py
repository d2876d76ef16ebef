"""``make bench``: training speed, mixing cost and peer ratios per method x backbone on one device.

The command line, ``python -m mixnb.bench``: its options (``parse_args``) and ``main``, which runs the mode they pick.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mixnb.bench.concurrency import Barrier, run_concurrent
from mixnb.bench.kernels import PROFILE_STEPS, TOP_KERNELS, profile_kernels
from mixnb.bench.markdown import concurrent_markdown, fmt, kernels_markdown, summarize, write_report
from mixnb.bench.peers import bench_naive, bench_ops
from mixnb.bench.rig import EVAL_IMAGES
from mixnb.bench.sync_check import sync_check
from mixnb.bench.throughput import bench_method
from mixnb.bench.timing import Stat
from mixnb.config import CAPTURES, COMPILE_MODES, PRECISIONS, PROFILES, RunConfig
from mixnb.device import autocast_dtype, resolve_device
from mixnb.io import environment, git_state
from mixnb.mixups import REGISTRY
from mixnb.runs import load_data
from mixnb.train import resolve_compile


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixnb.bench", description=__doc__.split("\n")[0],
                                allow_abbrev=False)  # --concurrent hands its argv on: options by their full names
    p.add_argument("--methods", help="comma-separated registry names, each with optional :key=value overrides "
                                     "(e.g. puzzlemix:workers=8); default: all")
    p.add_argument("--backbones", help="comma-separated; default resnet18 (CPU), resnet18,resnext50 (CUDA)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="auto")
    window = p.add_mutually_exclusive_group()
    window.add_argument("--seconds", type=float, help="length of a timed window (default 2 on CUDA, 1 on CPU)")
    window.add_argument("--steps", type=int, help="training steps per timed window instead of --seconds")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="warm-up units, then as many again to size --seconds windows")
    p.add_argument("--width", type=int, help="backbone width; default 64 on CUDA, the sample profile's on CPU")
    p.add_argument("--eval-images", type=int, help=f"images per timed eval pass, scaled to {EVAL_IMAGES:,} "
                                                   "(default 10,000 on CUDA, 1,000 on CPU)")
    p.add_argument("--profile", default="sample", choices=tuple(PROFILES),
                   help="data: a generated set (sample, test) or the real one (tiny-imagenet, needs $MIXNB_DATA)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="naive pipeline workers")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="RunConfig.compile: torch.compile mode of the model, as the Trainer (auto: its default)")
    p.add_argument("--capture", default="model", choices=CAPTURES,
                   help="RunConfig.capture: with compile on, model = the model's passes, step = the method's whole "
                        "training_step as well")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="RunConfig.precision, as the Trainer")
    p.add_argument("--budget", type=float, default=0, help="seconds; rows not started by then are skipped (0: none)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sync-check", action="store_true", help="check every method's step for host syncs, then exit")
    mode.add_argument("--concurrent", type=counts, metavar="K,...",
                      help="for each K, K bench processes at once on the device (training img/s only): each one's "
                           "rate, their sum and the sum over K=1's in concurrent.json/.md")
    mode.add_argument("--profile-kernels", action="store_true",
                      help=f"torch.profiler over {PROFILE_STEPS} training steps: device time by kernel category and "
                           f"the top {TOP_KERNELS} kernels in kernels.json/.md")
    mode.add_argument("--summarize", metavar="DIR", help="print one summary of every bench/concurrent/kernels .json "
                                                         "under DIR, then exit")
    p.add_argument("--barrier", nargs=3, metavar=("FOLDER", "K", "INDEX"),
                   help="set by --concurrent for its processes: after warm-up, wait for the other K-1 in FOLDER")
    opts = p.parse_args(argv)
    opts.barrier = opts.barrier and Barrier(Path(opts.barrier[0]), int(opts.barrier[1]), int(opts.barrier[2]))
    opts.device = resolve_device(opts.device)
    on_cuda = opts.device.type == "cuda"
    opts.width = opts.width or (64 if on_cuda else PROFILES["sample"].width)
    opts.seconds = opts.seconds or (2.0 if on_cuda else 1.0)
    opts.eval_images = opts.eval_images or (EVAL_IMAGES if on_cuda else 1_000)
    opts.methods = opts.methods.split(",") if opts.methods else list(REGISTRY)
    opts.backbones = opts.backbones.split(",") if opts.backbones else (["resnet18", "resnext50"] if on_cuda else ["resnet18"])
    return opts


def counts(text: str) -> list[int]:
    """``--concurrent``'s "1,2,3"."""
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated process counts >= 1, got {text!r}")
    return ks



def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.summarize:
        print(summarize(Path(opts.summarize)), end="")
        return 0
    argv = sys.argv[1:] if argv is None else argv
    out, t0, dev = Path(opts.out), time.perf_counter(), opts.device

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    def seconds_left() -> float:
        return opts.budget - (time.perf_counter() - t0)

    def over_budget() -> bool:
        return bool(opts.budget) and seconds_left() < 0

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit: fixed shapes
    env = environment(dev)
    settings = RunConfig(compile=opts.compile, precision=opts.precision)
    compiled = resolve_compile(settings, dev) or "off"
    precision = str(autocast_dtype(settings.precision, dev)).removeprefix("torch.")
    log(f"{env['device_name']} ({dev}), torch {env['torch']}, width {opts.width}, batch {opts.batch_size}, "
        f"compile {compiled}, capture {opts.capture}, autocast {precision}, methods {','.join(opts.methods)}, "
        f"backbones {','.join(opts.backbones)}")
    data = load_data(RunConfig(profile=opts.profile))  # made once, under $MIXNB_CACHE (before --concurrent's processes)
    meta = {**env, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(),
            "width": opts.width, "batch_size": opts.batch_size, "compile": compiled, "compile_option": opts.compile,
            "capture": opts.capture, "precision": precision, "windows": opts.windows, "seconds": opts.seconds,
            "steps": opts.steps, "warmup": opts.warmup, "eval_images": opts.eval_images, "profile": opts.profile,
            "train_images": len(data.y_train), "threads": torch.get_num_threads(), "workers": opts.workers,
            "barrier": opts.barrier and {"k": opts.barrier.k, "index": opts.barrier.index}, "argv": argv}
    if opts.concurrent:
        report: dict[str, Any] = {"meta": meta, "rows": []}
        run_concurrent(opts, argv, report, seconds_left, log)
        print(concurrent_markdown(report))
        return 0
    report = {"meta": meta, "methods": [], "naive": [], "ops": [], "notes": []}
    with tempfile.TemporaryDirectory(prefix="mixnb-bench-") as tmp:
        if opts.sync_check:
            for backbone, spec in itertools.product(opts.backbones, opts.methods):
                report["methods"].append(row := sync_check(spec, backbone, data, opts, Path(tmp)))
                log(f"{backbone} {spec}: {row['result']} {row.get('where', '')}")
            print(write_report(report, out, "sync"))
            return int(any(r.get("unexpected") for r in report["methods"]))
        if opts.profile_kernels:
            report = {"meta": meta, "rows": []}
            for backbone, spec in itertools.product(opts.backbones, opts.methods):
                try:
                    row = profile_kernels(spec, backbone, data, opts, Path(tmp))
                except Exception as e:  # one broken method must not lose the others' rows
                    row = {"backbone": backbone, "method": spec, "status": f"error: {type(e).__name__}: {e}"}
                report["rows"].append(row)
                log(f"{backbone} {spec}: {row['status']}")
                write_report(report, out, "kernels", kernels_markdown)
            print(kernels_markdown(report))
            return 0
        if not opts.no_peers:  # first: seconds, and the op targets need them
            report["ops"], notes = bench_ops(data, opts, Path(tmp))
            report["notes"] += notes
            log("MixUp/CutMix ops against timm and torchvision: done")
        eval_cache: dict[str, Stat] = {}
        for backbone in opts.backbones:
            for spec in opts.methods:
                row = {"backbone": backbone, "method": spec, "status": "skipped: time budget"}
                n, barrier = len(report["methods"]), opts.barrier  # n: the row's place, the same in every process
                try:
                    row = row if over_budget() else bench_method(spec, backbone, data, opts, Path(tmp), eval_cache,
                                                                 barrier and partial(barrier.wait, n))
                except ImportError as e:  # an optional package missing only at the first step
                    row["status"] = f"skipped: ImportError: {e}"
                except Exception as e:  # one broken method must not lose the others' rows
                    row["status"] = f"error: {type(e).__name__}: {e}"
                if barrier:
                    barrier.arrive(n)  # done with the row: no other process waits for this one there
                report["methods"].append(row)
                log(f"{backbone} {spec}: {row['status']} {fmt(row.get('img_s'), 0)} img/s")
                write_report(report, out)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            if not opts.no_peers and not over_budget():
                try:
                    report["naive"].append(row := bench_naive(backbone, data, opts, Path(tmp)))
                    log(f"{backbone} naive pipeline: {fmt(row['img_s'], 0)} img/s")
                except Exception as e:  # e.g. a small /dev/shm for the workers: a note, not a lost run
                    report["notes"].append(f"{backbone} naive pipeline failed: {type(e).__name__}: {e}")
                write_report(report, out)
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(write_report(report, out))
    return 0
