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
Each row also keeps its warm-up's seconds (the compile; cudnn autotune in a backbone's first row).

Other modes: ``--concurrent 1,2,3`` runs K bench processes at once on the device for each K and reports
their training img/s and its sum (``make sweep RUNS_PER_GPU=K``'s aggregate); ``--profile-kernels``
groups the device time of a few training steps by kernel kind (``KERNEL_CATEGORIES``);
``--summarize DIR`` prints one summary of every result file under DIR (``scripts/gpu_check.sh``'s last table).
bench.json and bench.md (sync, concurrent, kernels .json/.md) in ``--out`` are rewritten after every row.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mixnb.config import CAPTURES, COMPILE_MODES, PRECISIONS, PROFILES, RunConfig, resolve_device, resolve_precision
from mixnb.data import DeviceLoader, IMAGENET_MEAN, IMAGENET_STD, TinyImageNetTensors
from mixnb.io import atomic_write_text, environment, git_state, write_json
from mixnb.mixups import REGISTRY, MixMethod, StepContext, get_method
from mixnb.models import build_model
from mixnb.runs import load_data
from mixnb.train import (Generators, build_parts, evaluate, peak_memory_mb,
                         resolve_compile, train_one_epoch, train_step)

EPOCH_IMAGES, EVAL_IMAGES, NUM_CLASSES = 100_000, 10_000, 200  # Tiny-ImageNet train, val, classes
EXPECTED_SYNC = {  # methods whose step must meet the host, and why
    "saliencymix": "the partner image goes to OpenCV on the host",
    "puzzlemix": "the graph-cut terms go to gco on the host and the labels come back",
}
NO_MIX_PROBE = {"manifoldmix": "mixes hidden features inside the forward"}
BARRIER_TIMEOUT_S = 300  # --concurrent: how long a warm process waits for the others' warm-up
PROFILE_STEPS, TOP_KERNELS = 5, 15  # --profile-kernels: training steps profiled, kernels listed
# --profile-kernels: a kernel (CPU: an op) belongs to the first category with a fragment in its lower-cased name;
# batch norm before convolution (cudnn's own BN kernels), copies before the generic elementwise/reduction names
KERNEL_CATEGORIES = (
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("convolution / gemm", ("conv", "gemm", "mm", "xmma", "cudnn", "cutlass", "wgrad", "dgrad", "fprop", "matmul")),
    ("optimizer", ("sgd", "foreach", "multi_tensor")),
    ("copies / layout", ("copy", "contiguous", "permute", "transpose", "clone", "cat", "memcpy", "memset", "fill")),
    ("reductions", ("reduce", "sum", "mean", "max", "softmax", "nll", "cross_entropy", "topk", "triton_red",
                    "triton_per")),
    ("elementwise / activation", ("elementwise", "relu", "threshold", "clamp", "add", "mul", "sub", "div", "where",
                                  "sigmoid", "exp", "triton_poi")),
)
OTHER = "other"


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


class Timed(NamedTuple):
    seconds: list[float]  # per unit, one value per window
    size: int  # units per window
    warmup_s: float  # the warm-up call: compile, cudnn autotune, allocator, DataLoader workers


def measure(runs: Sequence[Callable[[int], object]], opts: argparse.Namespace, *, seconds: float | Sequence[float],
            steps: int | None = None, warmup: int | None = None, barrier: Callable[[], None] | None = None) -> list[Timed]:
    """Each of ``runs`` warmed up (timed) with ``run(warmup)``, then its windows sized as ``steps`` units or,
    by a timed call, to last about ``seconds`` (one value, or one per run), then timed.

    Windows of the runs alternate round by round, so a load change on a shared machine hits every
    run alike and their ratios stay fair. ``barrier`` is called between the warm-ups and the sizing
    (``--concurrent``: every process is warm before any window is sized or timed).
    """
    warmup = warmup or opts.warmup
    spans = [seconds] * len(runs) if isinstance(seconds, (int, float)) else seconds
    warm = [warmup * time_window(run, warmup, opts.device) for run in runs]
    if barrier is not None:
        barrier()
    sizes = [steps or max(1, math.ceil(span / time_window(run, warmup, opts.device))) for run, span in zip(runs, spans)]
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(opts.windows):
        for run, n, out in zip(runs, sizes, times):
            out.append(time_window(run, n, opts.device))
    return [Timed(*timed) for timed in zip(times, sizes, warm)]


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
                    method_args=overrides, compile=opts.compile, capture=opts.capture, precision=opts.precision)
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
        for lib, timed in zip(impls, measure(runs, opts, seconds=opts.seconds / 4)):
            row[lib] = Stat.of([1e3 * s for s in timed.seconds])
        rows.append(row)
    return rows, notes


# ----------------------------------------------------------------------------- report
def fmt(stat: Stat | None, digits: int = 1) -> str:
    return "n/a" if stat is None else f"{stat.median:,.{digits}f} ({stat.low:,.{digits}f}–{stat.high:,.{digits}f})"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["", f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def relative(r: dict[str, Any], vanilla_ms: float | None) -> str:
    """A row's step time over Vanilla's (the "× Vanilla" column)."""
    return f"{r['step_ms'].median / vanilla_ms:.2f}" if vanilla_ms else "n/a"


def epoch_cell(r: dict[str, Any]) -> str:
    """The "s / epoch" column: EPOCH_IMAGES at the median rate + an eval pass (absent for --concurrent processes)."""
    return f"{r['epoch_s']:,.1f}" if r.get("epoch_s") is not None else "n/a"


def vanilla_ms(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Vanilla's median step ms per backbone among ``rows``."""
    return {r["backbone"]: r["step_ms"].median for r in rows if r["method"] == "vanilla" and r.get("status") == "ok"}


def method_cells(r: dict[str, Any], vanilla: dict[str, float]) -> list[Any]:
    if r["status"] != "ok":
        return [r["backbone"], r["method"], *[""] * 9, r["status"]]
    share = f"{100 * r['mix_share']:.1f} %" if "mix_share" in r else r["mix_probe"]
    return [r["backbone"], r["method"], fmt(r["img_s"], 0), fmt(r["step_ms"], 2), relative(r, vanilla.get(r["backbone"])),
            fmt(r.get("mix_ms"), 3), share, fmt(r.get("eval_s"), 2), epoch_cell(r), f"{r['peak_mem_mb']:,.0f}",
            f"{r['warmup_s']:.1f}", r.get("note", "")]


def header(m: dict[str, Any], title: str, how: str) -> list[str]:
    """The title and settings lines every .md starts with; ``how``: what was timed."""
    settings = (f"commit {m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] else ''}; width {m['width']}, "
                f"batch {m['batch_size']}, compile {m['compile']}, capture {m.get('capture', 'model')}, autocast "
                f"{m.get('precision', 'n/a')}, {how}; {m['threads']} CPU threads.")
    return [f"## mixnb {title}: {m['device_name']} ({m['device']}), torch {m['torch']}, {m['date']}", "", settings]


def windows_text(m: dict[str, Any]) -> str:
    window = f"{m['steps']} steps" if m["steps"] else f"~{m['seconds']} s"
    return f"{m['windows']} windows of {window} each, median (min–max) over windows"


def to_markdown(report: dict[str, Any]) -> str:
    m, sync = report["meta"], "result" in next(iter(report["methods"]), {})
    lines = header(m, "sync check" if sync else "bench", windows_text(m))
    if sync:
        rows = [[r["backbone"], r["method"], r["result"], r.get("where", "")] for r in report["methods"]]
        return "\n".join(lines + table(["backbone", "method", "result", "where"], rows)) + "\n"
    vanilla = vanilla_ms(report["methods"])
    lines += table(["backbone", "method", "img/s", "step ms", "× Vanilla", "mix ms", "mix share", "eval s / 10k",
                    "s / epoch", "peak MiB", "warm-up s", "note"], [method_cells(r, vanilla) for r in report["methods"]])
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


def concurrent_table(report: dict[str, Any]) -> list[str]:
    """Per backbone x method x K: each process's median img/s, their sum, and the sum over K=1's."""
    def cells(r: dict[str, Any]) -> list[Any]:
        rates = " / ".join(f"{p['img_s']:,.0f}" if p["error"] is None else "failed" for p in r["processes"])
        total = f"{r['aggregate_img_s']:,.0f}" if r["ok"] else "n/a"
        return [r["backbone"], r["method"], r["k"], rates, total, f"{r['vs_k1']:.2f}×" if r["vs_k1"] else "n/a",
                process_errors(r)]

    return table(["backbone", "method", "K", "img/s per process", "aggregate img/s", "vs K=1", "errors"],
                 [cells(r) for r in report["rows"]])


def process_errors(r: dict[str, Any]) -> str:
    """A concurrent row's failed processes, each with its one-line error."""
    return "; ".join(f"p{p['index']}: {p['error']}" for p in r["processes"] if p["error"] is not None)


def concurrent_markdown(report: dict[str, Any]) -> str:
    how = f"K processes at once on one device, each {windows_text(report['meta'])} after all K are warm"
    return "\n".join(header(report["meta"], "concurrent bench", how) + concurrent_table(report)) + "\n"


def configuration(m: dict[str, Any]) -> str:
    """A result file's compile setting as asked (``--compile``; "auto" resolves per method), with the capture."""
    option = m.get("compile_option", m["compile"])
    return f"{option}, step capture" if m.get("capture") == "step" and option != "off" else option


def kernel_share_table(rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per (meta, row) of --profile-kernels: device time per step and each category's share."""
    names = [c for c, _ in KERNEL_CATEGORIES] + [OTHER]

    def cells(m: dict[str, Any], r: dict[str, Any]) -> list[Any]:
        if r["status"] != "ok":
            return [r["backbone"], r["method"], configuration(m), r["status"], *[""] * (len(names) + 2)]
        return [r["backbone"], r["method"], configuration(m), r["time_base"], f"{r['total_ms']:,.2f}",
                f"{r['wall_ms']:,.2f}", *(f"{100 * r['categories'][c]['share']:.1f} %" for c in names)]

    return table(["backbone", "method", "configuration", "time", "ms / step", "wall ms / step", *names],
                 [cells(m, r) for m, r in rows])


def kernels_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = header(m, "kernel profile", f"torch.profiler over {PROFILE_STEPS} training steps after {m['warmup']} "
                                        "warm-up steps") + kernel_share_table([(m, r) for r in report["rows"]])
    for r in report["rows"]:
        if r["status"] == "ok":
            lines += ["", f"### {r['backbone']} {r['method']}: top {TOP_KERNELS} of {r['kernels']} ({r['time_base']})"]
            lines += table(["kernel", "category", "ms / step", "share", "calls / step"],
                           [[short(k["name"]), k["category"], f"{k['ms']:,.3f}", f"{100 * k['share']:.1f} %",
                             f"{k['calls']:g}"] for k in r["top"]])
    return "\n".join(lines) + "\n"


def short(name: str, width: int = 100) -> str:
    """A kernel name for a table cell: cut to ``width``, pipes escaped."""
    return (name if len(name) <= width else name[:width - 1] + "…").replace("|", "\\|")


def write_report(report: dict[str, Any], out: Path, stem: str = "bench",
                 render: Callable[[dict[str, Any]], str] = to_markdown) -> str:
    md = render(report)
    write_json(out / f"{stem}.json", json.loads(json.dumps(report, default=asdict)))
    atomic_write_text(out / f"{stem}.md", md)
    return md


def read_report(path: Path) -> dict[str, Any]:
    """A result file, its rows' {median, low, high} fields as Stat again."""
    def revive(v: Any) -> Any:
        return Stat(**v) if isinstance(v, dict) and set(v) == {"median", "low", "high"} else v

    report = json.loads(path.read_text())
    for rows in (v for k, v in report.items() if k != "meta"):
        rows[:] = [{k: revive(v) for k, v in r.items()} if isinstance(r, dict) else r for r in rows]
    return report


def summarize(root: Path) -> str:
    """Every bench.json, concurrent.json and kernels.json under ``root`` as one markdown summary: per backbone
    each method's img/s, s/epoch, × Vanilla and warm-up per configuration (a later file's row replaces an
    earlier one's of the same configuration unless it failed), then the concurrent rows, then the kernel categories."""
    found = {stem: [read_report(p) for p in sorted(root.rglob(f"{stem}.json"))] for stem in ("bench", "concurrent", "kernels")}
    benches = sorted((r for r in found["bench"] if not r["meta"].get("barrier")), key=lambda r: r["meta"]["date"])
    everything = [*benches, *found["concurrent"], *found["kernels"]]
    if not everything:
        return f"## mixnb summary: no bench.json, concurrent.json or kernels.json under {root}\n"
    m = everything[0]["meta"]
    title = (f"## mixnb summary of {root}: {m['device_name']} ({m['device']}), torch {m['torch']}, commit "
             f"{m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] else ''}")
    legend = (f"s / epoch: {EPOCH_IMAGES:,} images at the median img/s + one eval pass of {EVAL_IMAGES:,} (the bench's "
              "column); × Vanilla: step time over Vanilla's in the same configuration; warm-up s: the training "
              "warm-up, compile included (and cudnn autotune in a backbone's first row).")
    lines = [title, "", legend]
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}  # (backbone, method, configuration) -> row
    for report in benches:
        for r in report["methods"]:
            key = (r["backbone"], r["method"], configuration(report["meta"]))
            if key not in merged or r.get("status") == "ok":
                merged[key] = r
    methods = list(dict.fromkeys(method for _, method, _ in merged))
    configs = list(dict.fromkeys(config for _, _, config in merged))
    for backbone in dict.fromkeys(b for b, _, _ in merged):
        keys = sorted((k for k in merged if k[0] == backbone), key=lambda k: (methods.index(k[1]), configs.index(k[2])))
        vanilla = {c: vanilla_ms([merged[k] for k in keys if k[2] == c]).get(backbone) for c in configs}
        rows = []
        for key in keys:
            r, config = merged[key], key[2]
            if r.get("status") != "ok":
                rows.append([key[1], config, *[""] * 5, r.get("status", "")])
                continue
            warm = f"{r['warmup_s']:.1f}" if "warmup_s" in r else "n/a"
            rows.append([key[1], config, r.get("compile", ""), f"{r['img_s'].median:,.0f}", epoch_cell(r),
                         relative(r, vanilla.get(config)), warm, r.get("note", "")])
        lines += ["", f"### {backbone}"] + table(["method", "configuration", "compiled", "img/s", "s / epoch",
                                                  "× Vanilla", "warm-up s", "note"], rows)
    for report in found["concurrent"]:
        lines += ["", f"### concurrent processes on one device ({configuration(report['meta'])})"]
        lines += concurrent_table(report)
    if found["kernels"]:
        lines += ["", "### device time by kernel category"]
        lines += kernel_share_table([(report["meta"], r) for report in found["kernels"] for r in report["rows"]])
    return "\n".join(lines) + "\n"


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


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((category for category, parts in KERNEL_CATEGORIES if any(p in low for p in parts)), OTHER)


def profile_kernels(spec: str, backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace,
                    tmp: Path) -> dict[str, Any]:
    """torch.profiler over PROFILE_STEPS training steps after warm-up: the CUDA kernels' device time on a
    GPU (the CPU ops' self time otherwise), per kernel and per KERNEL_CATEGORIES category."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    row: dict[str, Any] = {"backbone": backbone, "method": spec}
    try:
        rig = build_rig(spec, backbone, data, opts, tmp)
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        return {**row, "status": f"skipped: {type(e).__name__}: {e}"}
    on_cuda = opts.device.type == "cuda"
    rig.epoch(opts.warmup)  # compile, CUDA-graph recording, cudnn autotune: not in the profile
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]) as prof:
        wall_s = time_window(rig.epoch, PROFILE_STEPS, opts.device)
    kind = DeviceType.CUDA if on_cuda else DeviceType.CPU
    events = sorted(((e.key, e.self_device_time_total if on_cuda else e.self_cpu_time_total, e.count)
                     for e in prof.key_averages() if e.device_type == kind), key=lambda e: -e[1])  # µs
    total = sum(t for _, t, _ in events) or 1.0
    per_step = 1e3 * PROFILE_STEPS  # µs in all -> ms per step
    spent = dict.fromkeys([c for c, _ in KERNEL_CATEGORIES] + [OTHER], 0.0)
    for name, t, _ in events:
        spent[kernel_category(name)] += t
    return {**row, "status": "ok", "compile": resolve_compile(rig.cfg, opts.device) or "off", "steps": PROFILE_STEPS,
            "time_base": "CUDA kernels' device time" if on_cuda else "CPU ops' self time", "kernels": len(events),
            "total_ms": sum(spent.values()) / per_step, "wall_ms": 1e3 * wall_s,
            "categories": {c: {"ms": t / per_step, "share": t / total} for c, t in spent.items()},
            "top": [{"name": name, "category": kernel_category(name), "ms": t / per_step, "share": t / total,
                     "calls": calls / PROFILE_STEPS} for name, t, calls in events[:TOP_KERNELS]]}


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
    opts.width = opts.width or (64 if on_cuda else PROFILES["sample"]["width"])
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


def bench_naive(backbone: str, data: TinyImageNetTensors, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The naive pipeline and our Vanilla step in alternating windows; the ratio is the median of
    the rounds' ratios (robust to load changes on a shared machine)."""
    rig, naive = build_rig("vanilla", backbone, data, opts, tmp), NaivePipeline(Path(data.root), backbone, opts)
    try:
        ours, slow = (timed.seconds for timed in measure([rig.epoch, naive], opts, seconds=opts.seconds,
                                                          steps=opts.steps, warmup=2 * opts.warmup))
    finally:
        naive.close()
    bs = opts.batch_size
    return {"backbone": backbone, "workers": opts.workers, "img_s": Stat.of([bs / s for s in slow]),
            "ours_img_s": Stat.of([bs / s for s in ours]), "ratio": statistics.median(b / a for a, b in zip(ours, slow))}


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
    precision = str(resolve_precision(settings, dev)).removeprefix("torch.")
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


if __name__ == "__main__":
    sys.exit(main())
