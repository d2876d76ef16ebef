"""``--concurrent``: K bench processes at once on the device behind a warm-up barrier, and per row each one's
training img/s, their sum and that sum over K=1's."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixnb.bench.markdown import concurrent_markdown, process_errors, read_report, write_report

BARRIER_TIMEOUT_S = 300  # --concurrent: how long a warm process waits for the others' warm-up


@dataclass(frozen=True)
class Barrier:
    """``--concurrent``'s rendezvous through files in ``folder``: process ``index`` of ``k`` touches
    ``ready-<row>-<index>`` once warm for row ``row`` (or done with it, warm or not); the parent touches
    ``exit-<index>`` when that process ends, so no process waits for a dead one."""

    folder: Path
    k: int
    index: int

    def arrive(self, row: int) -> None:
        (self.folder / f"ready-{row}-{self.index}").touch()

    def exited(self) -> None:
        (self.folder / f"exit-{self.index}").touch()

    def wait(self, row: int, timeout: float = BARRIER_TIMEOUT_S) -> float:
        """Arrive at ``row``, then wait until every process has arrived there or ended; the seconds waited."""
        self.arrive(row)
        start = time.monotonic()
        deadline = start + timeout
        while missing := [i for i in range(self.k) if not (self.folder / f"ready-{row}-{i}").exists()
                          and not (self.folder / f"exit-{i}").exists()]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"--concurrent: process(es) {', '.join(map(str, missing))} of {self.k} not warm "
                                   f"{timeout:.0f} s after this one (barrier files in {self.folder})")
            time.sleep(0.01)
        return time.monotonic() - start


def without(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` less ``option`` and its value (``--option v`` or ``--option=v``)."""
    out, drop_next = [], False
    for arg in argv:
        if drop_next:
            drop_next = False
        elif arg == option:
            drop_next = True
        elif not arg.startswith(f"{option}="):
            out.append(arg)
    return out


def run_together(cmds: Sequence[Sequence[str]], outs: Sequence[Path], folder: Path) -> list[int]:
    """Start every command at once (output to ``<out>/bench.log``), mark each one's end in the barrier
    ``folder`` as it happens, and return the exit codes."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd, out in zip(cmds, outs):
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "bench.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        running = dict(enumerate(procs))
        while running:
            for i, proc in list(running.items()):
                if proc.poll() is not None:
                    Barrier(folder, len(procs), i).exited()
                    del running[i]
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:  # the parent is failing: no orphan keeps the device busy
                proc.kill()
    return [proc.wait() for proc in procs]


def process_results(out: Path, code: int) -> tuple[dict[tuple[str, str], dict[str, Any]], str]:
    """One --concurrent process's rows by (backbone, method), and why a row may be missing: its exit code
    with the last line of its log (a traceback's error line)."""
    lines = [line for line in (out / "bench.log").read_text(errors="replace").splitlines() if line.strip()]
    why = f"exit {code}: {lines[-1].strip() if lines else 'no output'}" if code else "no row written"
    rows = read_report(out / "bench.json")["methods"] if (out / "bench.json").exists() else []
    return {(r["backbone"], r["method"]): r for r in rows}, why


def concurrent_row(backbone: str, spec: str, k: int, results: Sequence[tuple[dict[tuple[str, str], dict[str, Any]], str]],
                   k1: dict[str, Any] | None) -> dict[str, Any]:
    """Per process its median training img/s or its one-line error; their sum over the processes that ran,
    and that sum over K=1's (``k1``: the K=1 row of the same backbone and method; for K=1 the row itself)."""
    processes = []
    for i, (rows, why) in enumerate(results):
        r = rows.get((backbone, spec), {"status": why})
        ok = r["status"] == "ok"
        processes.append({"index": i, "img_s": r["img_s"].median if ok else None, "error": None if ok else r["status"]})
    rates = [p["img_s"] for p in processes if p["error"] is None]
    total = sum(rates)
    one = total if k == 1 else k1["aggregate_img_s"] if k1 and k1["ok"] else 0
    return {"backbone": backbone, "method": spec, "k": k, "processes": processes, "ok": len(rates),
            "aggregate_img_s": total, "vs_k1": total / one if rates and one else None}


def run_concurrent(opts: argparse.Namespace, argv: Sequence[str], report: dict[str, Any],
                   seconds_left: Callable[[], float], log: Callable[[str], None]) -> None:
    """For each K of ``--concurrent``: K bench processes of the same options (``--no-peers``, own ``--out``
    folder ``k<K>/p<i>``) at once on the device; rows into ``report["rows"]``, concurrent.json/.md after each K."""
    base = [sys.executable, "-m", "mixnb.bench", *without(argv, "--concurrent"), "--no-peers"]
    pairs = list(itertools.product(opts.backbones, opts.methods))
    for k in opts.concurrent:
        if opts.budget and seconds_left() <= 0:
            results: list[tuple[dict[tuple[str, str], dict[str, Any]], str]] = [({}, "skipped: time budget")] * k
        else:
            outs = [Path(opts.out) / f"k{k}" / f"p{i}" for i in range(k)]
            budget = ["--budget", f"{max(1.0, seconds_left()):.0f}"] if opts.budget else []  # the rest of ours
            with tempfile.TemporaryDirectory(prefix="mixnb-barrier-") as folder:
                codes = run_together([[*base, "--out", str(out), *budget, "--barrier", folder, str(k), str(i)]
                                      for i, out in enumerate(outs)], outs, Path(folder))
            results = [process_results(out, code) for out, code in zip(outs, codes)]
        k1 = {(r["backbone"], r["method"]): r for r in report["rows"] if r["k"] == 1}
        rows = [concurrent_row(b, m, k, results, k1.get((b, m))) for b, m in pairs]
        for r in rows:
            errors = process_errors(r)
            log(f"{r['backbone']} {r['method']} K={k}: {r['ok']} of {k} ran, aggregate {r['aggregate_img_s']:,.0f} "
                f"img/s{'; ' + errors if errors else ''}")
        report["rows"] += rows
        write_report(report, Path(opts.out), "concurrent", concurrent_markdown)
