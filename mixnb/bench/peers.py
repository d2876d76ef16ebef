"""Peers on the same machine: an OpenMixup-style naive pipeline against our Vanilla step (``bench_naive``), and the
MixUp/CutMix ops of timm and torchvision v2 against ours on one batch (``bench_ops``)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixnb.bench.rig import NUM_CLASSES, build_rig
from mixnb.bench.timing import Stat, measure
from mixnb.data import IMAGENET_MEAN, IMAGENET_STD, TinyImageNetTensors
from mixnb.mixups import get_method
from mixnb.models import build_model


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
