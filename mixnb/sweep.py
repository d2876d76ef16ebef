"""The sweep: (method x backbone x seed) for a profile, each run executing notebooks/train.ipynb.

Each run is a papermill execution (kernel ``mixnb`` pinned) in its own process, writing into
its run folder. A run whose ``summary.json`` exists is skipped; a broken one is run again and
resumes from its checkpoint. Failures do not stop the sweep; they are listed at the end.
Runs that need another run (AttentiveMix+ uses the finished Vanilla run as its default
teacher) wait for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY
from mixnb.paths import KERNEL, NOTEBOOKS, run_dir

DEFAULT_BACKBONES = {"tiny-imagenet": ["resnet18", "resnext50"], "sample": ["resnet18"], "test": ["resnet18"]}
NEEDS = {"attentivemix": "vanilla"}  # default teacher: the finished Vanilla run (protocol.md §2.7)


@dataclass(frozen=True)
class Job:
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return run_dir(self.config.profile, self.config.run_name())

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").exists()

    def parameters(self) -> dict:
        c = self.config
        params = {"method": c.method, "backbone": c.backbone, "profile": c.profile, "seed": c.seed,
                  "run_dir": str(self.run_dir), "progress": "epoch"}
        if c.epochs is not None:
            params["epochs"] = c.epochs
        return params


def expand(profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None) -> list[Job]:
    """The grid in registry order (Vanilla first), backbones outermost; configs are validated here."""
    methods = methods or list(REGISTRY)
    backbones = backbones or DEFAULT_BACKBONES.get(profile, ["resnet18"])
    return [Job(RunConfig(method=m, backbone=b, profile=profile, seed=s, epochs=epochs))
            for b in backbones for s in (seeds or [0]) for m in methods]


def execute(job: Job, *, env: dict[str, str] | None = None) -> None:
    """Execute train.ipynb for ``job`` into its run folder (raises CalledProcessError on failure)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(job.run_dir / "train.ipynb"),
           "-k", KERNEL, "-y", json.dumps(job.parameters()), "--cwd", str(job.run_dir), "--no-progress-bar"]
    with open(job.run_dir / "papermill.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=True)


def run_sweep(*, profile: str, methods: list[str] | None = None, backbones: list[str] | None = None,
              seeds: list[int] | None = None, epochs: int | None = None,
              gpus: list[str] | None = None) -> list[tuple[Job, str]]:
    """Run every unfinished job, one per GPU at a time (or one at a time); returns the failures."""
    jobs = expand(profile, methods, backbones, seeds, epochs)
    todo = [j for j in jobs if not j.finished]
    print(f"sweep {profile}: {len(jobs)} runs, {len(jobs) - len(todo)} already finished, {len(todo)} to run")
    failures: list[tuple[Job, str]] = []
    lock = threading.Condition()
    pending, running = list(todo), []
    bar = tqdm(total=len(todo), desc=f"sweep {profile}", file=sys.stderr)

    def blocked(job: Job) -> bool:
        need = NEEDS.get(job.config.method)
        return any(o.config.method == need and o.config.backbone == job.config.backbone
                   and o.config.seed == job.config.seed for o in pending + running)

    def worker(slot_env: dict[str, str]) -> None:
        while True:
            with lock:
                while True:
                    ready = [j for j in pending if not blocked(j)]
                    if ready or not pending:
                        break
                    lock.wait()
                if not pending:
                    return
                job = ready[0]
                pending.remove(job)
                running.append(job)
            bar.set_postfix_str(job.config.run_name())
            try:
                execute(job, env=slot_env)
            except subprocess.CalledProcessError:
                failures.append((job, str(job.run_dir / "papermill.log")))
            with lock:
                running.remove(job)
                bar.update(1)
                lock.notify_all()

    slots = [{"CUDA_VISIBLE_DEVICES": g} for g in gpus] if gpus else [{}]
    threads = [threading.Thread(target=worker, args=(s,)) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    for job, log in failures:
        print(f"FAILED {job.config.run_name()}: see {log}")
    if failures:
        print(f"{len(failures)} of {len(todo)} runs failed")
    return failures
