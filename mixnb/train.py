"""The one training loop, for CPU and CUDA: RunConfig -> Trainer phases -> run folder.

Over ~450 lines on purpose: a run reads top to bottom in this one file, as airbench's and nanoGPT's loops do
(docs/architecture.md, "The trace of one run").

Protocol: docs/protocol.md §1.4-1.5, §1.7. SGD (lr 0.2, momentum 0.9, wd 1e-4 on every parameter),
cosine per epoch to each group's floor, batch 100, the full val set after every epoch, the
median top-1 of the last 10 epochs. Methods plug in only through ``MixMethod``
(``setup``, ``param_groups``, ``training_step``, ``on_step_end``, ``eval_logits``).

A run folder is one run (mixnb.runs): ``fit`` refuses a folder written for another identity
(``RunConfig.identity``: the maths settings, precision, device type and dataset), returns a finished
run's summary, resumes from the last good checkpoint, and stops a run whose loss turns non-finite
(the last good checkpoint is kept, ``failed.json`` says where, no summary is written).

On CUDA: data already on the device, bf16 autocast with fp32 weights, channels_last, fused
SGD, the model compiled with CUDA graphs (``RunConfig.compile``, ``resolve_compile``), and no
host-device sync inside the step: running sums stay on the device and are read every
``log_every`` iterations and at the end of the epoch. On CPUs with native bf16 (AMX) autocast is
bf16 too (``RunConfig.precision``, ``mixnb.device.autocast_dtype``).

Several GPUs (``torchrun --nproc-per-node K -m mixnb train ...``, or ``mixnb.launch.launch``; the process-group
helpers live in mixnb.distributed): one run with DistributedDataParallel, NCCL on CUDA and gloo on the CPU. The global batch stays
``batch_size`` (K ranks x batch_size / K); each rank takes its slice of every global batch of the
one shared permutation and augmentation (``DeviceLoader(shard=...)``), so the union over ranks is
the single-process batch (every GPU keeps the whole uint8 train set, 1.2 GB for Tiny-ImageNet, and
its own slice of the val set). BatchNorm is per rank, as the reference's 2 x 50 runs (docs/protocol.md
§1.5: OpenMixup's DDP has ``broadcast_buffers=False``; ``sync_bn`` for the global batch). At each
epoch end the ranks' BN running statistics become rank 0's (``running_stats="first"``, the default with
bn_groups > 1) or their mean ("mean", timm's ``distribute_bn``; the default with one group), so the
evaluated and checkpointed model is one model.
OpenMixup HEAD's ``ValidateHook`` broadcasts rank 0's BN buffers before each evaluation
(``openmixup/core/hooks/validate_hook.py``, since ``dadfb9b``, 2023-03-17); the 2022 code that published
the table evaluated each rank's val shard with that rank's own buffers (``openmixup/hooks/validate_hook.py``
at ``e81ed85``), equal in expectation to rank 0's (docs/publication.md). Mixing partners are drawn within each
rank's batch from a per-rank mix stream, as the reference's ``dist_mode=False``. Rank 0 alone
writes the run folder; evaluation is sharded and its sums all-reduced. A checkpoint resumes with
any K: with the same K exactly; with another K the weights, optimizer, method state and the
shared data stream continue exactly and the per-rank mix/host streams are re-seeded from
(seed, rank, epoch), since partners then come from other slices anyway.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mixnb.config import RunConfig
from mixnb.device import autocast_dtype, memory_format, peak_memory_mb
from mixnb.data import DeviceLoader
from mixnb.distributed import (DistributedModel, all_reduce_, average_buffers_, average_gradients_, broadcast_,
                               distributed, gather_objects, main_first)
from mixnb.io import atomic_torch_save, atomic_write_text, environment, git_state, remove_stale_temps, write_json
from mixnb.launch import check_world_size, rank_bn_groups
from mixnb.mixups import MixMethod, StepContext, StepOutput, get_method, get_spec
from mixnb.models import build_model
from mixnb.models.groupbn import group_batchnorm_
from mixnb.rng import stream_seed
from mixnb.runs import (CHECKPOINT, FAILED, METRICS, PARAMS, SUMMARY, RunConflict, check_identity, dataset_record, failure,
                        identity_differences, is_finished, load_checkpoint, load_data, mark_failed, needed_run,
                        read_summary)

# docs/protocol.md §1.7, "the median top-1 of the last 10 epochs", read as OpenMixup's own summary script does:
# tools/summary/find_classification_val_median.py keeps the val lines with epoch >= epoch_num - record_num,
# and mmcv's logger numbers the validation after training epoch e (0-based) as e + 1 (LoggerHook.get_epoch in
# train mode), so (400, 10) keeps epochs 390..400: 11 values, whose median is one epoch's top-1.
MEDIAN_RECORDS = 10


# ----------------------------------------------------------------------------- set-up
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
        """Seed mix and host for ``rank`` (data is shared by all ranks); ``epoch`` > 0 re-derives them on a
        resume with another rank count. Each stream's seed is a hash of (seed, stream, rank, epoch) cut to
        32 bits, because CPU generators keep only the low 32 bits of a seed (shifting the rank above them
        gave every rank the same streams)."""
        self.mix.manual_seed(stream_seed(seed, "mix", rank, epoch))
        self.host.manual_seed(stream_seed(seed, "host", rank, epoch))

    def state(self) -> dict[str, Tensor]:
        return {"data": self.data.get_state(), "mix": self.mix.get_state(), "host": self.host.get_state()}

    def load(self, state: dict[str, Tensor]) -> None:
        self.data.set_state(state["data"])
        self.mix.set_state(state["mix"])
        self.host.set_state(state["host"])


def cosine_lr(base: float, floor: float, epoch: int, epochs: int) -> float:
    """mmcv CosineAnnealing by epoch: floor + (base - floor) * (1 + cos(pi * e / E)) / 2."""
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


# ----------------------------------------------------------------------------- phases
def new_cuda_graph_step(x: Tensor) -> None:
    """Tell CUDA graphs (compile mode "reduce-overhead") that a new iteration starts, so a replay may
    reuse the last one's output memory. A counter bump; skipped on the CPU, where importing inductor
    for it would cost seconds and there are no CUDA graphs."""
    if x.is_cuda:
        torch.compiler.cudagraph_mark_step_begin()


class Diverged(RuntimeError):
    """The training loss became non-finite."""


def train_step(model: nn.Module, method: MixMethod, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               ctx: StepContext, *, autocast: torch.autocast, own_params: Sequence[Tensor] = ()) -> StepOutput:
    """One iteration: mix + forward + loss, backward, SGD, the method's step end (``make bench`` times this).

    ``own_params``: under DDP, the optimizer's parameters outside the model (a method's own modules,
    e.g. AutoMix's MixBlock); their gradients are averaged after backward. Empty on one process.
    """
    new_cuda_graph_step(x)
    with autocast:
        out = method.training_step(model, x, y, ctx)  # mix + forward + loss
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()  # under DDP the model's gradients are averaged over ranks here
    average_gradients_(own_params)  # ... and the method's own ones here
    optimizer.step()
    method.on_step_end(model, ctx)  # e.g. EMA update
    ctx.step += 1
    return out


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

    Raises ``Diverged`` naming the first step whose loss was non-finite. The check costs no host sync:
    device-side counters (bad steps, steps before the first bad one) are read where the loop reads the
    device anyway, every ``log_every`` steps on one process and at the end of the epoch.
    """
    model.train()
    method.train()
    sums: dict[str, Tensor] = {}
    first_step = ctx.step
    bad_steps = clean_steps = 0  # device scalars after the first step: non-finite steps, steps before the first
    for i, (x, y) in enumerate(loader):
        out = train_step(model, method, x, y, optimizer, ctx, autocast=autocast, own_params=own_params)
        bad_steps = bad_steps + (~torch.isfinite(out.loss.detach())).float()
        clean_steps = clean_steps + (bad_steps == 0).float()
        for k, v in out.logs.items():  # device-side running sums: no host sync here
            sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
        if (i + 1) % log_every == 0 and not dist.is_initialized():  # the only host reads inside the epoch
            _check_finite(torch.stack([bad_steps, clean_steps]), first_step, ctx)
            if bar is not None:
                bar.set_postfix(loss=f"{sums['loss'].item() / (i + 1):.3f}")
        if bar is not None:
            bar.update(1)
    if not sums:
        return {}
    means = all_reduce_(torch.stack([*sums.values(), bad_steps, clean_steps]), mean=True)  # one sync per epoch
    _check_finite(means[-2:], first_step, ctx)
    return {f"train_{k}": v / max(len(loader), 1) for k, v in zip(sums, means[:-2].tolist())}


def _check_finite(health: Tensor, first_step: int, ctx: StepContext) -> None:
    """Raise ``Diverged`` if ``health`` ([non-finite steps, steps before the first]; means over ranks) has any."""
    bad, before = health.tolist()
    if bad:
        raise Diverged(f"the training loss became non-finite at epoch {ctx.epoch + 1}, iteration {int(before) + 1} "
                       f"of the epoch (step {first_step + int(before) + 1} of the run)")


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


def build_parts(
    cfg: RunConfig, device: torch.device, *, num_classes: int, run_dir: Path | None, world: int = 1,
) -> tuple[nn.Module, MixMethod, torch.optim.Optimizer, torch.autocast]:
    """(model, method, optimizer, autocast) of a run, as ``fit`` (and ``make bench``) train them.

    With compile on, the model is compiled in place (``nn.Module.compile``: its ``__call__``), after
    the method's ``setup``, so state dicts and checkpoints are the same with and without it. With
    ``capture="step"`` the method's ``training_step`` and ``eval_logits`` are compiled instead: mixing, every
    forward pass (AutoMix's EMA encoder, ``forward_stages``, the MixBlock), the loss and their backward become
    graphs (CUDA graphs under "reduce-overhead"), split only where a draw or a host solver runs eagerly
    (``mixups._helpers.eager``); SGD and ``on_step_end`` (one fused foreach lerp) stay as they are.
    """
    on_cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, num_classes=num_classes, width=cfg.model_width, init=cfg.init)
    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = rank_bn_groups(cfg, world)
    group_batchnorm_(model, groups, running_stats=cfg.bn_running_stats)
    model = model.to(device, memory_format=memory_format(device))
    method = get_method(cfg.method, **cfg.method_args)
    # an EMA copy of the model copies its grouped BN; AttentiveMix+'s teacher is the finished Vanilla run beside it
    method.setup(model, cfg=cfg, needed=needed_run(cfg, run_dir.parent if run_dir is not None else None))
    group_batchnorm_(method, groups, running_stats=cfg.bn_running_stats)  # its own BN (SAMix's value neck, the
    # MixBlock's q/k BN with att_norm), per group as per GPU
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
        if cfg.capture == "step":  # instance attributes, so state dicts are unchanged; the model is traced inside
            method.training_step = torch.compile(method.training_step, mode=mode, dynamic=False)
            method.eval_logits = torch.compile(method.eval_logits, mode=mode, dynamic=False)
        else:
            model.compile(mode=mode, dynamic=False)  # one static graph per shape: no dynamic-shape kernels
    dtype = autocast_dtype(cfg.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    return model, method, optimizer, autocast


def fit(cfg: RunConfig, run_dir: str | Path, *, progress: str = "bar") -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming from its checkpoint; returns the summary.

    A folder written for another identity is refused (``RunConflict``, with the differences); a
    finished one returns its summary without training; a diverged one (``failed.json``) is not retried
    until that file is removed. ``progress``: "bar" (a tqdm bar per epoch on the console), "epoch" (one
    line per epoch, for notebooks: papermill limits output rates) or "none". Under torchrun every rank
    calls ``fit`` and it joins the process group itself; a checkpoint resumes with any rank count.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    with distributed(cfg.device) as (rank, world, device):
        main, on_cuda = rank == 0, device.type == "cuda"
        progress = progress if main else "none"
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        with main_first(rank, world):  # rank 0 builds the dataset cache, the others then read it
            data = load_data(cfg)
        identity = cfg.identity(device, dataset_record(data))
        check_identity(run_dir, identity)  # another config's folder: refuse, never report its numbers
        if is_finished(run_dir):
            return read_summary(run_dir)  # type: ignore[return-value]
        if (failed := failure(run_dir)) is not None:
            raise Diverged(f"{run_dir} stopped before: {failed['reason']}; delete {run_dir / FAILED} to try again")
        check_world_size(cfg, world, device, len(data.y_train), len(data.y_val))
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            for name in (PARAMS, METRICS, CHECKPOINT, SUMMARY):
                remove_stale_temps(run_dir / name)  # left by a killed write
            write_json(run_dir / PARAMS, {"config": cfg.to_dict(), "identity": identity, "run": cfg.run_name()})

        # Model, method and optimizer (init from the one visible seed: the same on every rank).
        model, method, optimizer, autocast = build_parts(
            cfg, device, num_classes=len(data.wnids), run_dir=run_dir, world=world)
        gens = Generators.from_seed(cfg.seed, device, rank=rank)
        mean, std = cfg.normalisation  # the profile's; the batches come in the model's layout
        batches = dict(channels_last=memory_format(device) == torch.channels_last, mean=mean, std=std)
        train_loader = DeviceLoader(data.x_train, data.y_train, batch_size=cfg.batch_size, device=device,
                                    train=True, gen=gens.data, shard=(rank, world), interpolation=cfg.crop,
                                    augment=cfg.augment, **batches)  # the profile's pipeline
        lo, hi = rank * len(data.y_val) // world, (rank + 1) * len(data.y_val) // world  # this rank's val shard
        val_loader = DeviceLoader(data.x_val[lo:hi], data.y_val[lo:hi], batch_size=cfg.eval_batch_size,
                                  device=device, train=False, **batches)

        # Resume from the last checkpoint: every RNG state, so the run ends as if never stopped.
        rows: list[dict[str, Any]] = []
        start_epoch = 0
        with main_first(rank, world):  # rank 0 moves a corrupt checkpoint aside before the others look
            ckpt = load_checkpoint(ckpt_path, progress=progress if main else "none", move_corrupt=main)
        if ckpt is not None:
            if identity_differences(ckpt.get("identity") or {}, identity):
                raise RunConflict(f"{ckpt_path} was written for another run; move it away or train into another "
                                  f"folder")
            rows, start_epoch = ckpt["rows"], ckpt["epoch"]
            restore_(ckpt, model=model, method=method, optimizer=optimizer, gens=gens, seed=cfg.seed, rank=rank,
                     world=world, device=device)

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
        board = tensorboard_writer(run_dir, rows) if main else None
        for epoch in range(start_epoch, epochs):
            ctx.epoch = epoch
            for g in optimizer.param_groups:  # per-epoch cosine (docs/protocol.md §1.5)
                g["lr"] = cosine_lr(g["base_lr"], g["min_lr"], epoch, epochs)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            bar = _bar(progress, len(train_loader), f"epoch {epoch + 1}/{epochs}")
            try:
                train_logs = train_one_epoch(train_model, method, train_loader, optimizer, ctx, autocast=autocast,
                                             log_every=cfg.log_every, bar=bar, own_params=own_params)
                t_train = time.perf_counter() - t0
                # per-rank BN statistics -> rank 0's (the reference's broadcast) or their mean: one model to evaluate
                average_buffers_(model, method, running_stats=cfg.bn_running_stats)
                val = evaluate(model, method, val_loader, autocast=autocast)
                if not all(math.isfinite(v) for k, v in val.items() if k.endswith("val_loss")):
                    raise Diverged(f"the validation loss is non-finite after epoch {epoch + 1}")
            except Diverged as err:  # keep the last good checkpoint; no summary
                if main:
                    mark_failed(run_dir, f"diverged: {err}", epoch=epoch + 1, last_good_epoch=epoch)
                raise Diverged(f"{cfg.run_name()} diverged: {err}; the checkpoint of epoch {epoch} is kept, "
                               f"{run_dir / FAILED} says so (lower lr, or check the method settings)") from None
            finally:
                if bar is not None:
                    bar.close()
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_logs, **val,
                   "train_seconds": t_train, "epoch_seconds": time.perf_counter() - t0,
                   "peak_mem_mb": peak_memory_mb(device), "world_size": world, "load_avg": os.getloadavg()[0]}
            rows.append(row)
            rank_generators = gather_objects(gens.state())
            if not main:
                continue
            _log(progress, f"epoch {epoch + 1}/{epochs}  loss {row.get('train_loss', float('nan')):.3f}  "
                           f"top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  {row['epoch_seconds']:.1f}s")
            atomic_torch_save({
                "identity": identity, "config": cfg.to_dict(), "epoch": epoch + 1, "rows": rows,
                "model": model.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "rank_generators": rank_generators, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
            }, ckpt_path)
            _write_metrics(run_dir / METRICS, rows)  # after the checkpoint: metrics never run ahead of it
            if board is not None:
                log_scalars(board, row)
        if board is not None:
            board.close()

        summary = summarize(rows, cfg, env=env, identity=identity,
                            extra={"world_size": world, **method.summarize(rows)})
        if main:
            write_json(run_dir / SUMMARY, summary)
        return summary


def tensorboard_writer(run_dir: Path, rows: list[dict[str, Any]]) -> Any:
    """A SummaryWriter on ``run_dir/tensorboard`` when tensorboard is installed (``pip install -e '.[tensorboard]'``),
    else None. The folder is rebuilt from the checkpoint's rows: a killed attempt's events (some past its checkpoint)
    are dropped and the kept epochs written again into one file, so a resumed run's curves hold each epoch once
    whatever order TensorBoard reads event files in. metrics.csv stays the report's source; these are for watching
    (``tensorboard --logdir runs/``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    board = SummaryWriter(str(run_dir / "tensorboard"))
    for row in rows:
        log_scalars(board, row)
    return board


def log_scalars(board: Any, row: dict[str, Any]) -> None:
    """One epoch's row as scalars at step ``row["epoch"]``."""
    for key, value in row.items():
        board.add_scalar(key, value, row["epoch"])
    board.flush()


def summarize(rows: list[dict[str, Any]], cfg: RunConfig, *, env: dict[str, Any], identity: dict[str, Any],
              extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the protocol's median read-out plus best/last, cost, config and provenance."""
    top1 = [r["top1"] for r in rows]
    last = [r["top1"] for r in rows if r["epoch"] >= len(rows) - MEDIAN_RECORDS]  # 11 at 400 epochs
    window = len(last)
    best = max(range(len(top1)), key=top1.__getitem__)
    seconds, train = [r["epoch_seconds"] for r in rows], [r["train_seconds"] for r in rows]
    return {
        "run": cfg.run_name(),
        "method": cfg.method,
        "backbone": cfg.backbone,
        "profile": cfg.profile,
        "seed": cfg.seed,
        "epochs": len(rows),
        "median_top1": statistics.median(last),
        "median_window": window,
        "median_label": (f"median top-1 of epochs {len(rows) - MEDIAN_RECORDS}-{len(rows)} (OpenMixup's last "
                         f"{MEDIAN_RECORDS}: {window} values)" if window < len(rows)
                         else f"median top-1 of all {window} epochs (at most {MEDIAN_RECORDS + 1})"),
        "best_top1": top1[best],
        "best_epoch": rows[best]["epoch"],
        "last_top1": top1[-1],
        "last_top5": rows[-1]["top5"],
        # the first epoch carries warm-up (cudnn autotune, compile): leave it out when there are others
        "seconds_per_epoch": statistics.median(seconds[1:] or seconds),
        "train_seconds_per_epoch": statistics.median(train[1:] or train),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows),
        "config": cfg.to_dict(),
        "identity": identity,
        "environment": env,
        "git": git_state(),
        **extra,
    }


# ----------------------------------------------------------------------------- helpers
def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def restore_(ckpt: dict[str, Any], *, model: nn.Module, method: MixMethod, optimizer: torch.optim.Optimizer,
             gens: Generators, seed: int, rank: int, world: int, device: torch.device) -> None:
    """Put a run back where ``ckpt`` (loaded to the CPU) left it, on any device: weights and optimizer state reach
    the device through ``load_state_dict`` (it copies into the live tensors), every RNG state is set from the
    CPU byte tensor the setters require (a CUDA generator too). With another rank count the shared data stream
    continues exactly and the per-rank mix/host streams are re-seeded from (seed, rank, epoch)."""
    model.load_state_dict(ckpt["model"])
    method.load_state_dict(ckpt["method"])
    optimizer.load_state_dict(ckpt["optimizer"])  # moves each state tensor to its parameter's device
    saved = ckpt["rank_generators"]  # one state per rank that wrote it
    if len(saved) == world:
        gens.load(saved[rank])
    else:  # another rank count: partners come from other batches anyway, so new mix streams
        gens.data.set_state(saved[0]["data"])
        gens.seed_rank_streams(seed, rank, ckpt["epoch"])
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)


def _bar(progress: str, total: int, desc: str) -> Any:
    if progress != "bar":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _log(progress: str, message: str) -> None:
    if progress != "none":
        print(message, flush=True)
