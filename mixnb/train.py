"""The one training loop, for CPU and CUDA: RunConfig -> Trainer phases -> run folder.

Protocol: protocol.md §1.4-1.5, §1.7. SGD (lr 0.2, momentum 0.9, wd 1e-4 on every parameter),
cosine per epoch to each group's floor, batch 100, the full val set after every epoch, the
median top-1 of the last 10 epochs. Methods plug in only through ``MixMethod``
(``setup``, ``param_groups``, ``training_step``, ``on_step_end``, ``eval_logits``).

On CUDA: data already on the device, bf16 autocast with fp32 weights, channels_last, fused
SGD, the model compiled with CUDA graphs (``RunConfig.compile``, ``resolve_compile``), and no
host-device sync inside the step: running sums stay on the device and are read every
``log_every`` iterations and at the end of the epoch. On CPUs with native bf16 (AMX) autocast is
bf16 too (``RunConfig.precision``, ``resolve_precision``).

Several GPUs (``torchrun --nproc-per-node K -m mixnb train ...``, or ``launch``): one run with
DistributedDataParallel, NCCL on CUDA and gloo on the CPU. The global batch stays
``batch_size`` (K ranks x batch_size / K); each rank takes its slice of every global batch of the
one shared permutation and augmentation (``DeviceLoader(shard=...)``), so the union over ranks is
the single-process batch (every GPU keeps the whole uint8 train set, 1.2 GB for Tiny-ImageNet, and
its own slice of the val set). BatchNorm is per rank, as the reference's 2 x 50 runs (protocol.md
§1.5: OpenMixup's DDP has ``broadcast_buffers=False``; ``sync_bn`` for the global batch). At each
epoch end the ranks' BN running statistics are averaged (timm's ``distribute_bn``), so the
evaluated and checkpointed model is one model; a deviation: the reference evaluates each rank's
shard with that rank's own statistics and saves rank 0's. Mixing partners are drawn within each
rank's batch from a per-rank mix stream, as the reference's ``dist_mode=False``. Rank 0 alone
writes the run folder; evaluation is sharded and its sums all-reduced. A checkpoint resumes with
any K: with the same K exactly; with another K the weights, optimizer, method state and the
shared data stream continue exactly and the per-rank mix/host streams are re-seeded from
(seed, rank, epoch), since partners then come from other slices anyway.
"""

from __future__ import annotations

import csv
import functools
import inspect
import io
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mixnb.config import PROFILES, RunConfig, default_cache_dir
from mixnb.data import DeviceLoader, TinyImageNetTensors, load_tiny_imagenet, make_sample_dataset
from mixnb.io import atomic_torch_save, atomic_write_text, environment, git_state, read_json, write_json
from mixnb.mixups import MixMethod, StepContext, get_method, get_spec
from mixnb.models import build_model

MEDIAN_WINDOW = 10  # protocol.md §1.7: median top-1 of the last 10 epochs


# ----------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'")
    return device


def load_data(cfg: RunConfig) -> TinyImageNetTensors:
    """The profile's dataset: the real folder, or the generated sample set (made once, cached)."""
    root = cfg.data_root()
    if root is None:
        sample = PROFILES[cfg.profile]["sample"]
        root = make_sample_dataset(default_cache_dir() / f"sample-{cfg.profile}", seed=0, **sample)
    return load_tiny_imagenet(root)


@dataclass
class Generators:
    """One generator per random stream, all seeded here from RunConfig.seed."""

    data: torch.Generator  # epoch permutation + augmentation, on the device
    mix: torch.Generator  # mixing draws, on the device
    host: torch.Generator  # draws that steer Python control flow or CPU solvers

    @classmethod
    def from_seed(cls, seed: int, device: torch.device, *, rank: int = 0) -> "Generators":
        gens = cls(torch.Generator(device).manual_seed(seed), torch.Generator(device), torch.Generator())
        gens.seed_rank_streams(seed, rank)
        return gens

    def seed_rank_streams(self, seed: int, rank: int, epoch: int = 0) -> None:
        """Seed mix and host for ``rank`` (data is shared by all ranks). Rank 0 at epoch 0 gets the
        single-process streams; ``epoch`` > 0 re-derives them on a resume with another rank count."""
        offset = (rank << 32) + (epoch << 48)  # distinct (rank, epoch) -> distinct seeds, for seeds < 2**31
        self.mix.manual_seed(seed + 1_000_003 + offset)
        self.host.manual_seed(seed + 2_000_003 + offset)

    def state(self) -> dict[str, Tensor]:
        return {"data": self.data.get_state(), "mix": self.mix.get_state(), "host": self.host.get_state()}

    def load(self, state: dict[str, Tensor]) -> None:
        self.data.set_state(state["data"])
        self.mix.set_state(state["mix"])
        self.host.set_state(state["host"])


def cosine_lr(base: float, floor: float, epoch: int, epochs: int) -> float:
    """mmcv CosineAnnealing by epoch: floor + (base - floor) * (1 + cos(pi * e / E)) / 2."""
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # host RSS peak (Linux: KiB)


# ----------------------------------------------------------------------------- phases
def new_cuda_graph_step(x: Tensor) -> None:
    """Tell CUDA graphs (compile mode "reduce-overhead") that a new iteration starts, so a replay may
    reuse the last one's output memory. A counter bump; skipped on the CPU, where importing inductor
    for it would cost seconds and there are no CUDA graphs."""
    if x.is_cuda:
        torch.compiler.cudagraph_mark_step_begin()


def train_one_epoch(
    model: nn.Module,
    method: MixMethod,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    ctx: StepContext,
    *,
    autocast: torch.autocast,
    log_every: int,
    bar: Any = None,
    own_params: Sequence[Tensor] = (),
) -> dict[str, float]:
    """One pass over the training set; returns the epoch's mean training logs (mean over ranks).

    ``own_params``: under DDP, the optimizer's parameters outside the model (a method's own modules,
    e.g. AutoMix's MixBlock); their gradients are averaged after backward. Empty on one process.
    """
    model.train()
    method.train()
    sums: dict[str, Tensor] = {}
    for i, (x, y) in enumerate(loader):
        new_cuda_graph_step(x)
        with autocast:
            out = method.training_step(model, x, y, ctx)  # mix + forward + loss
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # under DDP the model's gradients are averaged over ranks here
        average_gradients_(own_params)  # ... and the method's own ones here
        optimizer.step()
        method.on_step_end(model, ctx)  # e.g. EMA update
        for k, v in out.logs.items():  # device-side running sums: no host sync here
            sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
        ctx.step += 1
        if bar is not None:
            bar.update(1)
            if (i + 1) % log_every == 0:  # the only host read inside the epoch
                bar.set_postfix(loss=f"{sums['loss'].item() / (i + 1):.3f}")
    if not sums:
        return {}
    means = all_reduce_(torch.stack(list(sums.values())), mean=True).tolist()  # one sync per epoch
    return {f"train_{k}": v / max(len(loader), 1) for k, v in zip(sums, means)}


@torch.inference_mode()
def evaluate(
    model: nn.Module, method: MixMethod, loader: DeviceLoader, *, autocast: torch.autocast
) -> dict[str, float]:
    """Top-1, top-5 and CE loss on the full val set for every head the method reports.

    Under DDP each rank's loader holds its shard of the val set; the sums are all-reduced."""
    model.eval()
    method.eval()
    sums: dict[str, Tensor] = {}
    count = 0
    for x, y in loader:
        new_cuda_graph_step(x)
        with autocast:
            heads = method.eval_logits(model, x)
        for head, logits in heads.items():
            logits = logits.float()  # (N, K)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
            hits = top5 == y[:, None]
            stats = torch.stack([
                hits[:, 0].sum().float(),
                hits.any(dim=1).sum().float(),
                nn.functional.cross_entropy(logits, y, reduction="sum"),
            ])
            sums[head] = sums[head] + stats if head in sums else stats
        count += y.shape[0]
    if dist.is_initialized():  # add the other ranks' shards
        device = next(model.parameters()).device
        total = all_reduce_(torch.stack([*sums.values(), torch.full((3,), float(count), device=device)]))
        sums, count = dict(zip(sums, total[:-1])), int(total[-1, 0].item())
    row = {}
    for head, stats in sums.items():
        top1, top5, loss = (stats / count).tolist()  # one sync per head per epoch
        prefix = f"{head}_" if head else ""
        row.update({f"{prefix}top1": 100 * top1, f"{prefix}top5": 100 * top5, f"{prefix}val_loss": loss})
    return row


# ----------------------------------------------------------------------------- fit
AUTO_COMPILE_CUDA = "reduce-overhead"  # compile="auto" on CUDA: CUDA graphs, 2.1x eager for R-18 on an H100 (BENCHMARKS.md)
RECOMPILE_LIMIT = 32  # graphs per compiled model: train/eval modes, eval batch sizes, ManifoldMix's stages


def resolve_compile(cfg: RunConfig, device: torch.device, world: int = 1) -> str | None:
    """The torch.compile mode a run uses, or None for eager. "auto": AUTO_COMPILE_CUDA on one GPU for methods
    whose registry entry says it pays (``auto_compile``); eager on the CPU, where a compile costs a minute
    and the sample profile's runs take a few, and under DDP (``world`` > 1), where CUDA graphs are unmeasured."""
    on = device.type == "cuda" and world == 1 and get_spec(cfg.method).auto_compile
    mode = (AUTO_COMPILE_CUDA if on else "off") if cfg.compile == "auto" else cfg.compile
    return None if mode == "off" else mode


def native_bf16(device: torch.device) -> bool:
    """Whether the device runs bf16 matmuls/convs natively: CUDA (Ampere on), or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume not
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype of a run (torch.float32 = no autocast)."""
    if cfg.precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def build_parts(
    cfg: RunConfig, device: torch.device, *, num_classes: int, run_dir: Path | None, world: int = 1,
) -> tuple[nn.Module, MixMethod, torch.optim.Optimizer, torch.autocast]:
    """(model, method, optimizer, autocast) of a run, as ``fit`` (and ``make bench``) train them.

    With compile on, the model is compiled in place (``nn.Module.compile``: its ``__call__``), after
    the method's ``setup``, so state dicts and checkpoints are the same with and without it.
    """
    on_cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, num_classes=num_classes, width=cfg.model_width)
    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)  # +20-50% for bf16 convs (performance.md §8.3)
    method = get_method(cfg.method, **cfg.method_args)
    method.setup(model, cfg=cfg, run_dir=run_dir)
    method.to(device)
    groups = method.param_groups(model, lr=cfg.lr, min_lr=cfg.floor_lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=on_cuda or None)
    mode = resolve_compile(cfg, device, world)
    if mode is not None:
        compiler_config = torch._dynamo.config
        compiler_config.recompile_limit = max(compiler_config.recompile_limit, RECOMPILE_LIMIT)
        if not on_cuda:  # torch 2.14's CPU conv backward crashes on the channels_last layouts inductor picks
            import torch._inductor.config as inductor_config

            inductor_config.layout_optimization = False
        model.compile(mode=mode, dynamic=False)  # one static graph per shape: no dynamic-shape kernels
    dtype = resolve_precision(cfg, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    return model, method, optimizer, autocast


def fit(cfg: RunConfig, run_dir: str | Path, *, progress: str = "bar") -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming from its checkpoint; returns the summary.

    ``progress``: "bar" (a tqdm bar per epoch on the console), "epoch" (one line per epoch,
    for notebooks: papermill limits output rates) or "none". Under torchrun every rank calls
    ``fit`` and it joins the process group itself; a checkpoint resumes with any rank count.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path, ckpt_path = run_dir / "summary.json", run_dir / "checkpoint.pt"
    if summary_path.exists() and ckpt_path.exists():
        return read_json(summary_path)  # finished: nothing to do
    with distributed(cfg.device) as (rank, world, device):
        main, on_cuda = rank == 0, device.type == "cuda"
        progress = progress if main else "none"
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        with main_first(rank, world):  # rank 0 builds the dataset cache, the others then read it
            data = load_data(cfg)
        check_world_size(cfg, world, device, len(data.y_train), len(data.y_val))
        if main:
            write_json(run_dir / "params.json", cfg.to_dict())

        # Model, method and optimizer (init from the one visible seed: the same on every rank).
        model, method, optimizer, autocast = build_parts(
            cfg, device, num_classes=len(data.wnids), run_dir=run_dir, world=world)
        gens = Generators.from_seed(cfg.seed, device, rank=rank)
        train_loader = DeviceLoader(data.x_train, data.y_train, batch_size=cfg.batch_size, device=device,
                                    train=True, gen=gens.data, channels_last=on_cuda, shard=(rank, world))
        lo, hi = rank * len(data.y_val) // world, (rank + 1) * len(data.y_val) // world  # this rank's val shard
        val_loader = DeviceLoader(data.x_val[lo:hi], data.y_val[lo:hi], batch_size=cfg.eval_batch_size,
                                  device=device, train=False, channels_last=on_cuda)

        # Resume from the last checkpoint: every RNG state, so the run ends as if never stopped.
        rows: list[dict[str, Any]] = []
        start_epoch = 0
        with main_first(rank, world):  # rank 0 moves an unreadable checkpoint aside before the others look
            ckpt = _load_checkpoint(ckpt_path, device, progress)
        if ckpt is not None:
            if ckpt["config"] != cfg.to_dict():
                raise ValueError(f"{ckpt_path} was written by a different config; use a new run folder "
                                 f"or delete it. Differences: {_diff(ckpt['config'], cfg.to_dict())}")
            model.load_state_dict(ckpt["model"])
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            rows, start_epoch = ckpt["rows"], ckpt["epoch"]
            saved = ckpt.get("rank_generators", [ckpt["generators"]])  # one state per rank that wrote it
            if len(saved) == world:
                gens.load(saved[rank])
            else:  # another rank count: partners come from other batches anyway, so new mix streams
                gens.data.set_state(ckpt["generators"]["data"])  # the shared data stream continues exactly
                gens.seed_rank_streams(cfg.seed, rank, start_epoch)
            torch.set_rng_state(ckpt["torch_rng"])
            if on_cuda and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], device)

        # Several processes: DDP averages the model's gradients, we average the method's own.
        train_model: nn.Module = model
        own_params: list[Tensor] = []
        if world > 1:
            broadcast_(method)  # the method's state starts equal on every rank, as DDP does for the model
            train_model = DistributedModel(model)
            in_model = {id(p) for p in model.parameters()}
            own_params = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in in_model]

        epochs = cfg.num_epochs
        ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, epoch=start_epoch, step=start_epoch * len(train_loader),
                          total_steps=epochs * len(train_loader))
        env = environment(device)
        _log(progress, f"{cfg.run_name()} on {env['device_name']} ({device}{f' x {world}' if world > 1 else ''}): "
                       f"epochs {start_epoch}->{epochs}, {len(data.y_train)} train / {len(data.y_val)} val images, "
                       f"{len(data.wnids)} classes")
        for epoch in range(start_epoch, epochs):
            ctx.epoch = epoch
            for g in optimizer.param_groups:  # per-epoch cosine (protocol.md §1.5)
                g["lr"] = cosine_lr(g["base_lr"], g["min_lr"], epoch, epochs)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            bar = _bar(progress, len(train_loader), f"epoch {epoch + 1}/{epochs}")
            train_logs = train_one_epoch(train_model, method, train_loader, optimizer, ctx, autocast=autocast,
                                         log_every=cfg.log_every, bar=bar, own_params=own_params)
            t_train = time.perf_counter() - t0
            average_buffers_(model, method)  # per-rank BN statistics -> their mean: one model to evaluate and save
            val = evaluate(model, method, val_loader, autocast=autocast)
            if bar is not None:
                bar.close()
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_logs, **val,
                   "train_seconds": t_train, "epoch_seconds": time.perf_counter() - t0,
                   "peak_mem_mb": peak_memory_mb(device), "world_size": world}
            rows.append(row)
            rank_generators = gather_objects(gens.state())
            if not main:
                continue
            _log(progress, f"epoch {epoch + 1}/{epochs}  loss {row.get('train_loss', float('nan')):.3f}  "
                           f"top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  {row['epoch_seconds']:.1f}s")
            _write_metrics(run_dir / "metrics.csv", rows)
            atomic_torch_save({
                "config": cfg.to_dict(), "epoch": epoch + 1, "rows": rows,
                "model": model.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "generators": gens.state(), "rank_generators": rank_generators, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
            }, ckpt_path)

        summary = summarize(rows, cfg, env=env, extra={"world_size": world, **method.summarize(rows)})
        if main:
            write_json(summary_path, summary)
        return summary


def launch(cfg: RunConfig, run_dir: str | Path, *, world_size: int, progress: str = "epoch") -> dict[str, Any]:
    """``fit`` in ``world_size`` processes through torchrun (one GPU each, or gloo on the CPU); returns
    the summary. The notebook's way to a DDP run; the same as, from the shell,
    ``torchrun --standalone --nproc-per-node K -m mixnb train --config run_dir/params.json``."""
    run_dir = Path(run_dir)
    write_json(run_dir / "params.json", cfg.to_dict())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
           "-m", "mixnb", "train", "--config", str(run_dir / "params.json"), "--run-dir", str(run_dir),
           "--progress", progress]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent if sys.platform == "linux" else None) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # into the notebook's output (a bare child would write past it)
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}")
    return read_json(run_dir / "summary.json")


def summarize(rows: list[dict[str, Any]], cfg: RunConfig, *, env: dict[str, Any],
              extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the protocol's median read-out plus best/last, cost, config and provenance."""
    top1 = [r["top1"] for r in rows]
    window = min(MEDIAN_WINDOW, len(top1))
    best = max(range(len(top1)), key=top1.__getitem__)
    seconds = [r["epoch_seconds"] for r in rows]
    return {
        "run": cfg.run_name(),
        "method": cfg.method,
        "backbone": cfg.backbone,
        "profile": cfg.profile,
        "seed": cfg.seed,
        "epochs": len(rows),
        "median_top1": statistics.median(top1[-window:]),
        "median_window": window,
        "median_label": (f"median top-1 of the last {window} epochs" if window == MEDIAN_WINDOW
                         else f"median top-1 of all {window} epochs (fewer than {MEDIAN_WINDOW})"),
        "best_top1": top1[best],
        "best_epoch": rows[best]["epoch"],
        "last_top1": top1[-1],
        "last_top5": rows[-1]["top5"],
        # the first epoch carries warm-up (cudnn autotune, compile): leave it out when there are others
        "seconds_per_epoch": statistics.median(seconds[1:] or seconds),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows),
        "config": cfg.to_dict(),
        "environment": env,
        "git": git_state(),
        **extra,
    }


# ----------------------------------------------------------------------------- distributed (torchrun)
@contextmanager
def distributed(device_name: str) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device) of this process. Under torchrun ($WORLD_SIZE > 1) it joins the
    process group (NCCL on CUDA with rank r on GPU $LOCAL_RANK, gloo on the CPU) and leaves it
    at the end; a plain run is rank 0 of 1 on ``resolve_device(device_name)``."""
    device = resolve_device(device_name)
    if dist.is_initialized():  # the caller's group
        yield dist.get_rank(), dist.get_world_size(), device
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"device {device_name!r} under torchrun: use 'auto' or 'cuda' (rank r takes "
                             f"GPU $LOCAL_RANK of CUDA_VISIBLE_DEVICES)")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()


def check_world_size(cfg: RunConfig, world: int, device: torch.device, n_train: int, n_val: int) -> None:
    """Fail clearly on settings that cannot run on ``world`` processes."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes: "
                         f"use a process count that divides it")
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ValueError("sync_bn=True needs CUDA: torch's SyncBatchNorm does not run on the CPU (gloo)")
    if world > 1 and (0 < n_train % cfg.batch_size < world or n_val < world):
        raise ValueError(f"{world} processes need every batch, the last one included, and the val set to "
                         f"have at least {world} images; got {n_train} train and {n_val} val images")


@contextmanager
def main_first(rank: int, world: int) -> Iterator[None]:
    """Rank 0 runs the block before the others (it may write what they then read)."""
    if rank > 0:
        dist.barrier()
    yield
    if rank == 0 and world > 1:
        dist.barrier()


class _Calls(nn.Module):
    """What DDP wraps: sends ``forward`` or another ``forward_*`` of the model through one forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, _call: str = "forward", **kwargs: Any) -> Any:
        return self.model(*args, **kwargs) if _call == "forward" else getattr(self.model, _call)(*args, **kwargs)


class DistributedModel(DistributedDataParallel):
    """The model as a method sees it under DDP, through the same interface as on one process.

    ``model(x, ...)`` and every ``model.forward_*(...)`` (AutoMix's ``forward_stages``) run through
    DDP's forward, which arms the gradient all-reduce of the next backward. Other public
    attributes (``fc``, ``num_features``, the stages) are the wrapped model's own modules: a call
    such as ``model.fc(h)`` inside a training step still has its gradients averaged, because every
    step also calls the model through a ``forward*`` (a step that used bare submodules only would
    not be synchronised). ``parameters()`` are the model's, in its order (AutoMix's EMA relies on it).
    Buffers are not synchronised in the forward: BN statistics stay per rank, as the reference's.
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        kwargs.setdefault("forward_sync_buffers" if newer else "broadcast_buffers", False)  # renamed in torch 2.13
        super().__init__(_Calls(model), **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "module":
                raise
            model = self.module.model
            if name.startswith("forward_") and callable(getattr(model, name, None)):
                return functools.partial(self, _call=name)
            return getattr(model, name)


def all_reduce_(t: Tensor, *, mean: bool = False) -> Tensor:
    """Sum (or mean) of ``t`` over ranks, in place; ``t`` unchanged on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        if mean:
            t /= dist.get_world_size()
    return t


def average_gradients_(params: Sequence[Tensor]) -> None:
    """Mean of the gradients of ``params`` over ranks, as one flat all-reduce (None counts as 0)."""
    if not params or not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = all_reduce_(torch.cat([p.grad.reshape(-1) for p in params]), mean=True)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def average_buffers_(*modules: nn.Module) -> None:
    """Mean over ranks of the floating-point buffers (BN running statistics) of ``modules``."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if bufs:
        flat = all_reduce_(torch.cat([b.reshape(-1).float() for b in bufs]), mean=True)
        for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
            b.copy_(v.view_as(b))


def broadcast_(module: nn.Module) -> None:
    """Rank 0's parameters and buffers of ``module`` on every rank."""
    for t in module.state_dict().values():
        dist.broadcast(t, src=0)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` on one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when its parent dies (a killed notebook kernel takes torchrun with it)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# ----------------------------------------------------------------------------- helpers
def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _load_checkpoint(path: Path, device: torch.device, progress: str) -> dict[str, Any] | None:
    """The run's checkpoint, or None; an unreadable one is moved aside and the run starts over."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated or foreign file: keep it for inspection, do not trust it
        path.replace(path.with_suffix(".pt.corrupt"))
        _log(progress, f"warning: {path} is unreadable ({type(err).__name__}); moved to *.corrupt, starting over")
        return None


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _bar(progress: str, total: int, desc: str) -> Any:
    if progress != "bar":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _log(progress: str, message: str) -> None:
    if progress != "none":
        print(message, flush=True)
