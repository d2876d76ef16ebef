"""``python -m mixnb analyze RUN_DIR... [--force] [--device D] [--threads N]``: its options and its loop."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mixnb.analysis.analyze import analyze_or_record
from mixnb.runs import ANALYSIS, analysis_failure, missing_products


def add_analyze_options(parser: argparse.ArgumentParser) -> None:
    """``python -m mixnb analyze RUN_DIR... [--force] [--device D]``."""
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="finished run folders (runs/<profile>/<run>)")
    parser.add_argument("--force", action="store_true", help="analyse again even if analysis.json is up to date")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own; on a 2-core VM shared with another job, "
                             "1 ran the sample profile's analysis 4x faster than 2)")


def analyze_from_args(args: argparse.Namespace) -> int:
    """Analyse each RUN_DIR; one line per run (its numbers, or why it failed: also in its analysis_failed.json,
    which the report shows and the next sweep retries, or why it cannot be made: ``missing_products``, not a
    failure); 1 if any failed, else 0."""
    import sys

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    failed = 0
    for d in args.run_dirs:
        if why := missing_products(d, analysis=True).get(ANALYSIS):  # its checkpoint is gone: nothing to retry
            print(f"{d}: {ANALYSIS} {why} (its training result stands)")
            continue
        try:
            r = analyze_or_record(Path(d), device=args.device, force=args.force)
        except (ValueError, OSError) as err:  # not a finished run: nothing to analyse, nothing recorded
            print(f"{d}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        if r is None:
            print(f"{d}: analysis failed: {analysis_failure(d)['reason']}", file=sys.stderr)
            failed += 1
            continue
        corr = r["corruptions"]["generated"]["mean_top1"]
        print(f"{d}: ECE {r['calibration']['ece']:.2f}%  NLL {r['calibration']['nll']:.3f}  FGSM "
              f"{r['adversarial']['fgsm_top1']:.1f}%  PGD {r['adversarial']['pgd_top1']:.1f}%  occlusion AUC "
              f"{r['occlusion']['auc']:.1f}  corruption {'-' if corr is None else f'{corr:.1f}%'}  loc "
              f"{r['localization']['top1_loc']:.1f}%  ({r['cost']['seconds']['total']:.1f} s)")
    return 1 if failed else 0
