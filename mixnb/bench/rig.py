"""What the bench times: one method on one backbone built as ``mixnb.train.fit`` builds a run (``build_rig``), its
``Rig.epoch`` the Trainer's own ``train_one_epoch`` fed by a ``DeviceLoader`` with the real augmentation."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.config import RunConfig
from mixnb.data import DeviceLoader, TinyImageNetTensors
from mixnb.device import memory_format
from mixnb.io import atomic_torch_save
from mixnb.mixups import MixMethod, StepContext
from mixnb.train import Generators, build_parts, train_one_epoch, train_step

EPOCH_IMAGES, EVAL_IMAGES, NUM_CLASSES = 100_000, 10_000, 200  # Tiny-ImageNet train, val, classes


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
    dev = opts.device
    channels_last = memory_format(dev) == torch.channels_last  # the model's layout (build_parts)
    cfg = RunConfig(method=name, backbone=backbone, width=opts.width, batch_size=opts.batch_size, device=str(dev),
                    method_args=overrides, compile=opts.compile, capture=opts.capture, precision=opts.precision)
    model, method, optimizer, autocast = build_parts(cfg, dev, num_classes=NUM_CLASSES, run_dir=None)
    gens = Generators.from_seed(cfg.seed, dev)
    x, y = tile(data.x_train, data.y_train, max(len(data.x_train), 10 * cfg.batch_size))
    train = DeviceLoader(x, y, batch_size=cfg.batch_size, device=dev, train=True, gen=gens.data, drop_last=True,
                         channels_last=channels_last)
    val = DeviceLoader(*tile(data.x_val, data.y_val, opts.eval_images), batch_size=cfg.eval_batch_size, device=dev,
                       train=False, channels_last=channels_last)
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
    if not path.exists():  # atomic: parallel test workers share the memory cache folder and read it meanwhile
        atomic_torch_save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)
