"""``make bench``: training speed, mixing cost and peer ratios per method x backbone on one device.

Per method x backbone, after warm-up, median and min-max over ``--windows`` timed windows (CUDA
events on a GPU, perf_counter on CPU) of: images/s of the Trainer's own ``train_one_epoch`` fed by a
``DeviceLoader`` with the real augmentation; s/epoch = 100,000 images at that rate + an
``evaluate`` pass over 10,000; the mixing alone on the same loader's batches (``mix``, or
``preview`` for model-based methods, e.g. PuzzleMix's saliency pass + graph cut + transport) and
its share of the step; peak memory (CUDA: allocated above what the run holds before its first
step; CPU: the process's RSS peak); step time relative to Vanilla's. Peers (``--no-peers`` skips
them): an OpenMixup-style naive pipeline (JPEGs, PIL + torchvision transforms in a worker
DataLoader, fp32, NCHW, eager, one ``.item()`` per step) on the same model, and the MixUp/CutMix
ops of timm and torchvision v2 against ours on one batch. ``--sync-check`` instead runs each
method's step under ``torch.cuda.set_sync_debug_mode("error")`` and names its first host sync.
bench.json and bench.md (sync.json/.md) in ``--out`` are rewritten after every row.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.config import COMPILE_MODES, PRECISIONS, PROFILES, RunConfig, resolve_device, resolve_precision
from mixnb.data import DeviceLoader, IMAGENET_MEAN, IMAGENET_STD, TinyImageNetTensors
from mixnb.io import atomic_write_text, environment, git_state, write_json
from mixnb.mixups import REGISTRY, MixMethod, StepContext, get_method
from mixnb.models import build_model
from mixnb.train import (Generators, build_parts, evaluate, load_data, peak_memory_mb,
                         resolve_compile, train_one_epoch, train_step)

EPOCH_IMAGES, EVAL_IMAGES, NUM_CLASSES = 100_000, 10_000, 200  # Tiny-ImageNet train, val, classes
EXPECTED_SYNC = {  # methods whose step must meet the host, and why
    "saliencymix": "the partner image goes to OpenCV on the host",
    "puzzlemix": "the graph-cut terms go to gco on the host and the labels come back",
}
NO_MIX_PROBE = {"manifoldmix": "mixes hidden features inside the forward"}


# ----------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        return cls(statistics.median(values), min(values), max(values))


def time_window(run: Callable[[int], object], n: int, device: torch.device) -> float:
    """Seconds per unit of one timed call of ``run(n)`` (n steps, passes or calls): the one timer.

    CUDA: events around the window on the current stream, after a synchronize, so the span is the
    stream's wall time, gaps where the host falls behind included; CPU: perf_counter.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(n)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n


def measure(runs: Sequence[Callable[[int], object]], opts: argparse.Namespace, *, seconds: float | Sequence[float],
            steps: int | None = None, warmup: int | None = None) -> list[tuple[list[float], int]]:
    """Per-unit seconds of each window and the units per window, for each of ``runs``.

    Each run is warmed up with ``run(warmup)`` and its windows sized as ``steps`` units or, by a
    timed warm-up, to last about ``seconds`` (one value, or one per run). Windows of the runs
    alternate round by round, so a load change on a shared machine hits every run alike and
    their ratios stay fair.
    """
    warmup = warmup or opts.warmup
    spans = [seconds] * len(runs) if isinstance(seconds, (int, float)) else seconds
    sizes = []
    for run, span in zip(runs, spans):
        run(warmup)  # cudnn autotune, compile, allocator, DataLoader workers
        per = time_window(run, warmup, opts.device) if steps is None else 0
        sizes.append(steps or max(1, math.ceil(span / per)))
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(opts.windows):
        for run, n, out in zip(runs, sizes, times):
            out.append(time_window(run, n, opts.device))
    return list(zip(times, sizes))


# ----------------------------------------------------------------------------- the Trainer's pieces
class Steps:
    """``n`` batches of a DeviceLoader, starting new epochs as needed (what ``train_one_epoch`` iterates)."""

    def __init__(self, loader: DeviceLoader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return itertools.islice(itertools.chain.from_iterable(itertools.repeat(self.loader)), self.n)


@dataclass
class Rig:
    """One method on one backbone, built as ``mixnb.train.fit`` builds a run."""

    cfg: RunConfig
    model: nn.Module
    method: MixMethod
    optimizer: torch.optim.Optimizer
    ctx: StepContext
    autocast: torch.autocast
    train: DeviceLoader
    val: DeviceLoader

    def step(self, x: Tensor, y: Tensor) -> None:
        """The Trainer's own iteration (``train_step``), for ``--sync-check``."""
        train_step(self.model, self.method, x, y, self.optimizer, self.ctx, autocast=self.autocast)

    def epoch(self, n: int) -> None:
        train_one_epoch(self.model, self.method, Steps(self.train, n), self.optimizer, self.ctx,  # type: ignore[arg-type]
                        autocast=self.autocast, log_every=10**9)


def tile(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first n of x, y, repeated cyclically when n > len(x) (views, no copy, when it is not)."""
    if n <= len(x):
        return x[:n], y[:n]
    idx = torch.arange(n) % len(x)
    return x[idx], y[idx]


def build_rig(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> Rig:
    name, overrides = parse_spec(spec)
    if name == "attentivemix" and "teacher_weights" not in overrides and not os.environ.get("MIXNB_ATTENTIVEMIX_TEACHER"):
        overrides["teacher_weights"] = random_teacher(tmp)  # same cost as the ImageNet teacher; timing only
    dev, on_cuda = opts.device, opts.device.type == "cuda"
    cfg = RunConfig(method=name, backbone=backbone, width=opts.width, batch_size=opts.batch_size, device=str(dev),
                    method_args=overrides, compile=opts.compile, precision=opts.precision)
    model, method, optimizer, autocast = build_parts(cfg, dev, num_classes=NUM_CLASSES, run_dir=None)
    gens = Generators.from_seed(cfg.seed, dev)
    x, y = tile(data.x_train, data.y_train, max(len(data.x_train), 10 * cfg.batch_size))
    train = DeviceLoader(x, y, batch_size=cfg.batch_size, device=dev, train=True, gen=gens.data, drop_last=True,
                         channels_last=on_cuda)
    val = DeviceLoader(*tile(data.x_val, data.y_val, opts.eval_images), batch_size=cfg.eval_batch_size, device=dev,
                       train=False, channels_last=on_cuda)
    ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=10**6)
    return Rig(cfg, model, method, optimizer, ctx, autocast, train, val)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value...]``, values parsed as JSON when they are JSON (e.g. ``puzzlemix:workers=8``)."""
    name, *items = spec.split(":")

    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    return name, {k: value(v) for k, _, v in (item.partition("=") for item in items)}


def random_teacher(tmp: Path) -> str:
    """A random-init torchvision ResNet-18 state_dict file: AttentiveMix+'s ImageNet-teacher cost, no download."""
    import torchvision

    path = tmp / "resnet18-random.pth"
    if not path.exists():
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def mix_probe(name: str, rig: Rig) -> tuple[str, Callable[[Tensor, Tensor], object] | None]:
    """(what is timed, the call) for the method's mixing alone, or (why not, None)."""
    if name in NO_MIX_PROBE:
        return f"n/a: {NO_MIX_PROBE[name]}", None
    if type(rig.method).mix is not MixMethod.mix:
        return "mix()", partial(rig.method.mix, gen=rig.ctx.gen)
    return "preview(): all the mixing work", partial(rig.method.preview, rig.model, gen=rig.ctx.gen)


# ----------------------------------------------------------------------------- one method
def bench_method(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path,
                 eval_cache: dict[str, Stat]) -> dict[str, Any]:
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

    runs, spans = ([rig.epoch, mix], [opts.seconds, opts.seconds / 4]) if probe else ([rig.epoch], [opts.seconds])
    (step_s, n), *mixing = measure(runs, opts, seconds=spans, steps=opts.steps)  # windows alternate
    row.update(status="ok", label=REGISTRY[rig.cfg.method].label, steps_per_window=n,
               step_ms=Stat.of([1e3 * s for s in step_s]), img_s=Stat.of([bs / s for s in step_s]),
               peak_mem_mb=(torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda"
               else peak_memory_mb(dev))  # before eval, whose batch of 1000 would dominate
    if mixing:
        row["mix_ms"] = Stat.of([1e3 * s for s in mixing[0][0]])
        row["mix_share"] = statistics.median(m / s for m, s in zip(mixing[0][0], step_s))  # per round: load-fair
    shared = type(rig.method).eval_logits is MixMethod.eval_logits  # the plain model: time it once per backbone
    row["eval_s"] = eval_cache.get(backbone) if shared else None
    if row["eval_s"] is None:
        ((per_pass, _),) = measure([lambda k: [evaluate(rig.model, rig.method, rig.val, autocast=rig.autocast)
                                               for _ in range(k)]], opts, seconds=0, steps=1, warmup=1)
        row["eval_s"] = Stat.of([s * EVAL_IMAGES / opts.eval_images for s in per_pass])  # scaled to 10,000
        eval_cache.update({backbone: row["eval_s"]} if shared else {})
    row["epoch_s"] = EPOCH_IMAGES / row["img_s"].median + row["eval_s"].median
    if teacher := getattr(rig.method, "teacher_label", ""):  # AttentiveMix+
        row["note"] = f"teacher: {teacher}"  # resnet18-random.pth: random init, same cost
    return row


# ----------------------------------------------------------------------------- peers
class NaivePipeline:
    """OpenMixup-style training as peers run it: JPEGs through PIL + torchvision transforms in a
    worker DataLoader, fp32, NCHW, eager, vanilla CE, one ``.item()`` host sync per step."""

    def __init__(self, root: Path, backbone: str, opts: argparse.Namespace) -> None:
        import torchvision.transforms as T
        from torch.utils.data import DataLoader, RandomSampler
        from torchvision.datasets import ImageFolder

        tf = T.Compose([T.RandomResizedCrop(64, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        dataset = ImageFolder(str(root / "train"), transform=tf)
        sampler = RandomSampler(dataset, replacement=True, num_samples=2**40,  # endless: no epoch-restart bubbles
                                generator=torch.Generator().manual_seed(0))
        self.batches = iter(DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler, drop_last=True,
                                       num_workers=opts.workers, persistent_workers=opts.workers > 0))
        torch.manual_seed(0)
        self.model = build_model(backbone, num_classes=NUM_CLASSES, width=opts.width).to(opts.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
        self.device = opts.device

    def __call__(self, n: int) -> None:
        self.model.train()
        for _ in range(n):
            x, y = next(self.batches)
            loss = nn.functional.cross_entropy(self.model(x.to(self.device)), y.to(self.device))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()

    def close(self) -> None:
        del self.batches  # stops the workers


def call_times(call: Callable[[], object], k: int) -> None:
    """``call()`` k times, each output dropped before the next call, as a training loop drops the last
    batch (keeping them all would charge fresh memory to every library that does not mix in place)."""
    for _ in range(k):
        call()


def bench_ops(data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """MixUp and CutMix op time (ms per call, labels as each library handles them) on one batch."""
    from torchvision.transforms import v2

    rig = build_rig("vanilla", "resnet18", data, opts, tmp)
    x, y = next(iter(rig.train))  # (N, 3, 64, 64) float32, (N,) int64 on the device
    notes: list[str] = []
    ops: dict[str, dict[str, Callable[[], object]]] = {
        op: {"mixnb": partial(get_method(op).mix, x, y, gen=rig.ctx.gen),
             "torchvision": partial(tv(alpha=1.0, num_classes=NUM_CLASSES), x, y)}
        for op, tv in (("mixup", v2.MixUp), ("cutmix", v2.CutMix))
    }
    try:
        from timm.data import Mixup

        x_timm = x.clone()  # timm mixes in place; repeated mixing keeps values bounded, so reuse it
        for op, (a_mix, a_cut) in (("mixup", (1.0, 0.0)), ("cutmix", (0.0, 1.0))):
            ops[op]["timm"] = partial(Mixup(mixup_alpha=a_mix, cutmix_alpha=a_cut, label_smoothing=0.0,
                                            num_classes=NUM_CLASSES), x_timm, y)
    except ImportError:
        notes.append("timm is not installed (`pip install -e '.[bench]'`): its ops were skipped")
    rows = []
    for op, impls in ops.items():
        row: dict[str, Any] = {"op": op}
        for lib, call in list(impls.items()):
            try:
                call()
            except (AssertionError, RuntimeError, ValueError) as e:  # e.g. timm needs an even batch
                notes.append(f"{lib} {op} failed: {type(e).__name__}: {e}")
                del impls[lib]
        runs = [partial(call_times, call) for call in impls.values()]
        for lib, (per_call, _) in zip(impls, measure(runs, opts, seconds=opts.seconds / 4)):
            row[lib] = Stat.of([1e3 * s for s in per_call])
        rows.append(row)
    return rows, notes


# ----------------------------------------------------------------------------- report
def fmt(stat: Stat | None, digits: int = 1) -> str:
    return "n/a" if stat is None else f"{stat.median:,.{digits}f} ({stat.low:,.{digits}f}–{stat.high:,.{digits}f})"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["", f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def method_cells(r: dict[str, Any], vanilla: dict[str, float]) -> list[Any]:
    if r["status"] != "ok":
        return [r["backbone"], r["method"], *[""] * 8, r["status"]]
    rel = f"{r['step_ms'].median / vanilla[r['backbone']]:.2f}" if r["backbone"] in vanilla else "n/a"
    share = f"{100 * r['mix_share']:.1f} %" if "mix_share" in r else r["mix_probe"]
    return [r["backbone"], r["method"], fmt(r["img_s"], 0), fmt(r["step_ms"], 2), rel, fmt(r.get("mix_ms"), 3), share,
            fmt(r["eval_s"], 2), f"{r['epoch_s']:,.1f}", f"{r['peak_mem_mb']:,.0f}", r.get("note", "")]


def to_markdown(report: dict[str, Any]) -> str:
    m, sync = report["meta"], "result" in next(iter(report["methods"]), {})
    window = f"{m['steps']} steps" if m["steps"] else f"~{m['seconds']} s"
    lines = [f"## mixnb {'sync check' if sync else 'bench'}: {m['device_name']} ({m['device']}), torch {m['torch']}, "
             f"{m['date']}", "", f"commit {m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] else ''}; width "
             f"{m['width']}, batch {m['batch_size']}, compile {m['compile']}, autocast {m.get('precision', 'n/a')}, {m['windows']} windows of {window} each, "
             f"median (min–max) over windows; {m['threads']} CPU threads."]
    if sync:
        rows = [[r["backbone"], r["method"], r["result"], r.get("where", "")] for r in report["methods"]]
        return "\n".join(lines + table(["backbone", "method", "result", "where"], rows)) + "\n"
    vanilla = {r["backbone"]: r["step_ms"].median for r in report["methods"] if r["method"] == "vanilla" and "step_ms" in r}
    lines += table(["backbone", "method", "img/s", "step ms", "× Vanilla", "mix ms", "mix share", "eval s / 10k",
                    "s / epoch", "peak MiB", "note"], [method_cells(r, vanilla) for r in report["methods"]])
    if report["naive"]:
        lines += table(["backbone", "ours (Vanilla) img/s", "naive pipeline img/s", "ours / naive"],
                       [[r["backbone"], fmt(r["ours_img_s"], 0), fmt(r["img_s"], 0), f"{r['ratio']:.2f}×"]
                        for r in report["naive"]])
    if report["ops"]:
        libs = ("mixnb", "timm", "torchvision")
        lines += table(["op (ms per call, one batch)", *libs, "timm / mixnb", "torchvision / mixnb"],
                       [[r["op"], *(fmt(r.get(k), 3) for k in libs),
                         *(f"{r[k].median / r['mixnb'].median:.2f}" if k in r and "mixnb" in r else "n/a"
                           for k in libs[1:])] for r in report["ops"]])
    if report["notes"]:
        lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path, stem: str = "bench") -> str:
    md = to_markdown(report)
    write_json(out / f"{stem}.json", json.loads(json.dumps(report, default=asdict)))
    atomic_write_text(out / f"{stem}.md", md)
    return md


# ----------------------------------------------------------------------------- modes
def sync_check(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A few steps (loader included) under sync-debug "error" after warm-up; the first sync's place."""
    row: dict[str, Any] = {"backbone": backbone, "method": spec}
    try:
        rig = build_rig(spec, backbone, data, opts, tmp)
        rig.epoch(opts.warmup)  # cudnn autotune and lazy init may sync once
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        return {**row, "result": f"skipped: {type(e).__name__}: {e}".replace("\n", " ")}
    on_cuda = opts.device.type == "cuda"
    try:
        if on_cuda:
            torch.cuda.set_sync_debug_mode("error")
        for x, y in Steps(rig.train, 2):  # a fresh epoch: its randperm is checked too
            rig.step(x, y)
        row["result"] = "sync-free" if on_cuda else "ran (no sync check on CPU)"
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "mixnb" in f.filename]
        row["where"] = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"
        why = EXPECTED_SYNC.get(parse_spec(spec)[0])
        if "synchroniz" not in str(e):  # a real error, not the sync-debug one
            row.update(result=f"error: {str(e).splitlines()[0]}", unexpected=True)
        else:
            row.update(result=f"syncs (expected: {why})" if why else f"SYNC: {str(e).splitlines()[0]}", unexpected=not why)
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode(0)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixnb.bench", description=__doc__.split("\n")[0])
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
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="RunConfig.precision, as the Trainer")
    p.add_argument("--budget", type=float, default=0, help="seconds; rows not started by then are skipped (0: none)")
    p.add_argument("--sync-check", action="store_true", help="check every method's step for host syncs, then exit")
    opts = p.parse_args(argv)
    opts.device = resolve_device(opts.device)
    on_cuda = opts.device.type == "cuda"
    opts.width = opts.width or (64 if on_cuda else PROFILES["sample"]["width"])
    opts.seconds = opts.seconds or (2.0 if on_cuda else 1.0)
    opts.eval_images = opts.eval_images or (EVAL_IMAGES if on_cuda else 1_000)
    opts.methods = opts.methods.split(",") if opts.methods else list(REGISTRY)
    opts.backbones = opts.backbones.split(",") if opts.backbones else (["resnet18", "resnext50"] if on_cuda else ["resnet18"])
    return opts


def bench_naive(backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The naive pipeline and our Vanilla step in alternating windows; the ratio is the median of
    the rounds' ratios (robust to load changes on a shared machine)."""
    rig, naive = build_rig("vanilla", backbone, data, opts, tmp), NaivePipeline(Path(data.root), backbone, opts)
    try:
        (ours, _), (slow, _) = measure([rig.epoch, naive], opts, seconds=opts.seconds, steps=opts.steps,
                                       warmup=2 * opts.warmup)
    finally:
        naive.close()
    bs = opts.batch_size
    return {"backbone": backbone, "workers": opts.workers, "img_s": Stat.of([bs / s for s in slow]),
            "ours_img_s": Stat.of([bs / s for s in ours]), "ratio": statistics.median(b / a for a, b in zip(ours, slow))}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    out, t0, dev = Path(opts.out), time.perf_counter(), opts.device

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    def over_budget() -> bool:
        return bool(opts.budget) and time.perf_counter() - t0 > opts.budget

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit: fixed shapes
    env = environment(dev)
    settings = RunConfig(compile=opts.compile, precision=opts.precision)
    compiled = resolve_compile(settings, dev) or "off"
    precision = str(resolve_precision(settings, dev)).removeprefix("torch.")
    log(f"{env['device_name']} ({dev}), torch {env['torch']}, width {opts.width}, batch {opts.batch_size}, "
        f"compile {compiled}, autocast {precision}, methods {','.join(opts.methods)}, backbones {','.join(opts.backbones)}")
    data = load_data(RunConfig(profile=opts.profile))  # a generated set is made once, under $MIXNB_CACHE
    meta = {**env, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(),
            "width": opts.width, "batch_size": opts.batch_size, "compile": compiled, "precision": precision, "windows": opts.windows,
            "seconds": opts.seconds, "steps": opts.steps, "eval_images": opts.eval_images, "profile": opts.profile,
            "train_images": len(data.y_train), "threads": torch.get_num_threads(), "workers": opts.workers,
            "argv": sys.argv[1:] if argv is None else argv}
    report: dict[str, Any] = {"meta": meta, "methods": [], "naive": [], "ops": [], "notes": []}
    with tempfile.TemporaryDirectory(prefix="mixnb-bench-") as tmp:
        if opts.sync_check:
            for backbone, spec in itertools.product(opts.backbones, opts.methods):
                report["methods"].append(row := sync_check(spec, backbone, data, opts, Path(tmp)))
                log(f"{backbone} {spec}: {row['result']} {row.get('where', '')}")
            print(write_report(report, out, "sync"))
            return int(any(r.get("unexpected") for r in report["methods"]))
        if not opts.no_peers:  # first: seconds, and the op targets need them
            report["ops"], notes = bench_ops(data, opts, Path(tmp))
            report["notes"] += notes
            log("MixUp/CutMix ops against timm and torchvision: done")
        eval_cache: dict[str, Stat] = {}
        for backbone in opts.backbones:
            for spec in opts.methods:
                row = {"backbone": backbone, "method": spec, "status": "skipped: time budget"}
                try:
                    row = row if over_budget() else bench_method(spec, backbone, data, opts, Path(tmp), eval_cache)
                except ImportError as e:  # an optional package missing only at the first step
                    row["status"] = f"skipped: ImportError: {e}"
                except Exception as e:  # one broken method must not lose the others' rows
                    row["status"] = f"error: {type(e).__name__}: {e}"
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


if __name__ == "__main__":
    sys.exit(main())
