"""The one training loop, for CPU and CUDA: RunConfig -> Trainer phases -> run folder.

Protocol: protocol.md §1.4-1.5, §1.7. SGD (lr 0.2, momentum 0.9, wd 1e-4 on every parameter),
cosine per epoch to each group's floor, batch 100, the full val set after every epoch, the
median top-1 of the last 10 epochs. Methods plug in only through ``MixMethod``
(``setup``, ``param_groups``, ``training_step``, ``on_step_end``, ``eval_logits``).

On CUDA: data already on the device, bf16 autocast with fp32 weights, channels_last, fused
SGD, and no host-device sync inside the step: running sums stay on the device and are read
every ``log_every`` iterations and at the end of the epoch.
"""

from __future__ import annotations

import csv
import io
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.config import PROFILES, RunConfig, default_cache_dir
from mixnb.data import DeviceLoader, TinyImageNetTensors, load_tiny_imagenet, make_sample_dataset
from mixnb.io import atomic_torch_save, atomic_write_text, environment, git_state, read_json, write_json
from mixnb.mixups import MixMethod, StepContext, get_method
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
    def from_seed(cls, seed: int, device: torch.device) -> "Generators":
        return cls(
            torch.Generator(device).manual_seed(seed),
            torch.Generator(device).manual_seed(seed + 1_000_003),
            torch.Generator().manual_seed(seed + 2_000_003),
        )

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
) -> dict[str, float]:
    """One pass over the training set; returns the epoch's mean training logs."""
    model.train()
    method.train()
    sums: dict[str, Tensor] = {}
    for i, (x, y) in enumerate(loader):
        with autocast:
            out = method.training_step(model, x, y, ctx)  # mix + forward + loss
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.on_step_end(model, ctx)  # e.g. EMA update
        for k, v in out.logs.items():  # device-side running sums: no host sync here
            sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
        ctx.step += 1
        if bar is not None:
            bar.update(1)
            if (i + 1) % log_every == 0:  # the only host read inside the epoch
                bar.set_postfix(loss=f"{sums['loss'].item() / (i + 1):.3f}")
    n = max(len(loader), 1)
    return {f"train_{k}": v.item() / n for k, v in sums.items()}


@torch.inference_mode()
def evaluate(
    model: nn.Module, method: MixMethod, loader: DeviceLoader, *, autocast: torch.autocast
) -> dict[str, float]:
    """Top-1, top-5 and CE loss on the full val set for every head the method reports."""
    model.eval()
    method.eval()
    sums: dict[str, Tensor] = {}
    count = 0
    for x, y in loader:
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
    row = {}
    for head, stats in sums.items():
        top1, top5, loss = (stats / count).tolist()  # one sync per head per epoch
        prefix = f"{head}_" if head else ""
        row.update({f"{prefix}top1": 100 * top1, f"{prefix}top5": 100 * top5, f"{prefix}val_loss": loss})
    return row


# ----------------------------------------------------------------------------- fit
def fit(cfg: RunConfig, run_dir: str | Path, *, progress: str = "bar") -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming from its checkpoint; returns the summary.

    ``progress``: "bar" (a tqdm bar per epoch on the console), "epoch" (one line per epoch,
    for notebooks: papermill limits output rates) or "none".
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path, ckpt_path = run_dir / "summary.json", run_dir / "checkpoint.pt"
    if summary_path.exists() and ckpt_path.exists():
        return read_json(summary_path)  # finished: nothing to do
    device = resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
    data = load_data(cfg)
    write_json(run_dir / "params.json", cfg.to_dict())

    # Model, method and optimizer (init from the one visible seed).
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, num_classes=len(data.wnids), width=cfg.model_width).to(device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    method = get_method(cfg.method, **cfg.method_args)
    method.setup(model, cfg=cfg, run_dir=run_dir)
    method.to(device)
    groups = method.param_groups(model, lr=cfg.lr, min_lr=cfg.floor_lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=on_cuda or None)
    gens = Generators.from_seed(cfg.seed, device)
    train_loader = DeviceLoader(data.x_train, data.y_train, batch_size=cfg.batch_size, device=device, train=True,
                                gen=gens.data, channels_last=on_cuda)
    val_loader = DeviceLoader(data.x_val, data.y_val, batch_size=cfg.eval_batch_size, device=device, train=False,
                              channels_last=on_cuda)
    step_model = torch.compile(model) if cfg.compile and on_cuda else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda)

    # Resume from the last checkpoint: every RNG state, so the run ends as if never stopped.
    rows: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = _load_checkpoint(ckpt_path, device, progress)
    if ckpt is not None:
        if ckpt["config"] != cfg.to_dict():
            raise ValueError(f"{ckpt_path} was written by a different config; use a new run folder "
                             f"or delete it. Differences: {_diff(ckpt['config'], cfg.to_dict())}")
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gens.load(ckpt["generators"])
        torch.set_rng_state(ckpt["torch_rng"])
        if on_cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        rows, start_epoch = ckpt["rows"], ckpt["epoch"]

    epochs = cfg.num_epochs
    ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, epoch=start_epoch, step=start_epoch * len(train_loader),
                      total_steps=epochs * len(train_loader))
    env = environment(device)
    _log(progress, f"{cfg.run_name()} on {env['device_name']} ({device}): epochs {start_epoch}->{epochs}, "
                   f"{len(data.y_train)} train / {len(data.y_val)} val images, {len(data.wnids)} classes")
    for epoch in range(start_epoch, epochs):
        ctx.epoch = epoch
        for g in optimizer.param_groups:  # per-epoch cosine (protocol.md §1.5)
            g["lr"] = cosine_lr(g["base_lr"], g["min_lr"], epoch, epochs)
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        bar = _bar(progress, len(train_loader), f"epoch {epoch + 1}/{epochs}")
        train_logs = train_one_epoch(step_model, method, train_loader, optimizer, ctx, autocast=autocast,
                                     log_every=cfg.log_every, bar=bar)
        t_train = time.perf_counter() - t0
        val = evaluate(step_model, method, val_loader, autocast=autocast)
        if bar is not None:
            bar.close()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_logs, **val,
               "train_seconds": t_train, "epoch_seconds": time.perf_counter() - t0,
               "peak_mem_mb": peak_memory_mb(device)}
        rows.append(row)
        _log(progress, f"epoch {epoch + 1}/{epochs}  loss {row.get('train_loss', float('nan')):.3f}  "
                       f"top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  {row['epoch_seconds']:.1f}s")
        _write_metrics(run_dir / "metrics.csv", rows)
        atomic_torch_save({
            "config": cfg.to_dict(), "epoch": epoch + 1, "rows": rows,
            "model": model.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "generators": gens.state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
        }, ckpt_path)

    summary = summarize(rows, cfg, env=env, extra=method.summarize(rows))
    write_json(summary_path, summary)
    return summary


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
