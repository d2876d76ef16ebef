"""One method x backbone row of ``make bench``: training img/s and step ms, the mixing alone and its share of the
step, the eval pass, s/epoch, peak memory and the warm-up's seconds."""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mixnb.bench.rig import EPOCH_IMAGES, EVAL_IMAGES, Rig, Steps, build_rig
from mixnb.bench.timing import Stat, measure
from mixnb.data import TinyImageNetTensors
from mixnb.mixups import REGISTRY, MixMethod
from mixnb.device import peak_memory_mb
from mixnb.train import evaluate, resolve_compile


def mix_probe(name: str, rig: Rig) -> tuple[str, Callable[[Tensor, Tensor], object] | None]:
    """(what is timed, the call) for the method's mixing alone, or (why not, None)."""
    if why := REGISTRY[name].no_mix_probe:
        return f"n/a: {why}", None
    if type(rig.method).mix is not MixMethod.mix:
        return "mix()", partial(rig.method.mix, gen=rig.ctx.gen)
    return "preview(): all the mixing work", partial(rig.method.preview, rig.model, gen=rig.ctx.gen)


def bench_method(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path,
                 eval_cache: dict[str, Stat], barrier: Callable[[], float] | None = None) -> dict[str, Any]:
    """One row. With ``barrier`` (a ``--concurrent`` process; returns the seconds it waited) only the training
    windows, timed in step with the other processes' (no mixing probe, no eval)."""
    row: dict[str, Any] = {"backbone": backbone, "method": spec}
    try:
        rig = build_rig(spec, backbone, data, opts, tmp)
    except (ImportError, RuntimeError, FileNotFoundError) as e:  # a missing optional package or file
        return {**row, "status": f"skipped: {type(e).__name__}: {e}"}
    dev, bs = opts.device, opts.batch_size
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)  # data, model, optimizer: what a run holds anyway
    row["mix_probe"], probe = mix_probe(rig.cfg.method, rig)
    batches = list(Steps(rig.train, 4))

    def mix(k: int) -> None:  # the method's mixing alone, on batches of the same loader
        with rig.autocast:
            for i in range(k):
                probe(*batches[i % len(batches)])  # type: ignore[misc]

    alone, waited = barrier is None, []
    runs, spans = ([rig.epoch, mix], [opts.seconds, opts.seconds / 4]) if probe and alone else ([rig.epoch], [opts.seconds])
    train, *mixing = measure(runs, opts, seconds=spans, steps=opts.steps,  # windows alternate
                             barrier=barrier and (lambda: waited.append(barrier())))
    step_s = train.seconds
    row.update(status="ok", label=REGISTRY[rig.cfg.method].label, compile=resolve_compile(rig.cfg, dev) or "off",
               steps_per_window=train.size, warmup_s=train.warmup_s,
               step_ms=Stat.of([1e3 * s for s in step_s]), img_s=Stat.of([bs / s for s in step_s]),
               peak_mem_mb=(torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda"
               else peak_memory_mb(dev))  # before eval, whose batch of 1000 would dominate
    if not alone:
        return {**row, "barrier_wait_s": waited[0]}  # for the other processes' warm-up
    if mixing:
        row["mix_ms"] = Stat.of([1e3 * s for s in mixing[0].seconds])
        row["mix_share"] = statistics.median(m / s for m, s in zip(mixing[0].seconds, step_s))  # per round: load-fair
    shared = type(rig.method).eval_logits is MixMethod.eval_logits  # the plain model: time it once per backbone
    row["eval_s"] = eval_cache.get(backbone) if shared else None
    if row["eval_s"] is None:
        (passes,) = measure([lambda k: [evaluate(rig.model, rig.method, rig.val, autocast=rig.autocast)
                                        for _ in range(k)]], opts, seconds=0, steps=1, warmup=1)
        row["eval_s"] = Stat.of([s * EVAL_IMAGES / opts.eval_images for s in passes.seconds])  # scaled to 10,000
        eval_cache.update({backbone: row["eval_s"]} if shared else {})
    row["epoch_s"] = EPOCH_IMAGES / row["img_s"].median + row["eval_s"].median
    if teacher := getattr(rig.method, "teacher_label", ""):  # AttentiveMix+
        row["note"] = f"teacher: {teacher}"  # resnet18-random.pth: random init, same cost
    return row
