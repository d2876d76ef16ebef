"""The run: a finished run rebuilt for evaluation (``load_run``) and the batched helpers every pass uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixnb.config import RunConfig
from mixnb.device import memory_format, resolve_device
from mixnb.data import DeviceLoader, normalize
from mixnb.rng import stream_seed
from mixnb.runs import open_run

# The default normalisation, the loader's (ImageNet mean and std: the Tiny-ImageNet protocol's), read from the loader
# itself; a run's own is its profile's (``RunConfig.normalisation``, ``Run.normalise``), which ``analyze_run`` passes
# to every pass (§2: OpenMixup's default 'cifar' statistics give a pixel eps of ~9/255 on Tiny-ImageNet).
_LOADER = inspect.signature(DeviceLoader).parameters
MEAN, STD = tuple(_LOADER["mean"].default), tuple(_LOADER["std"].default)
Normalise = Callable[[Tensor], Tensor]  # (N, 3, H, W) pixels in [0, 1] -> the model's input


@dataclass
class Run:
    """A finished run rebuilt for evaluation: model and method in eval mode on ``device``."""

    run_dir: Path
    cfg: RunConfig
    ckpt: dict[str, Any]
    data: Any  # TinyImageNetTensors
    model: nn.Module
    method: Any  # MixMethod
    device: torch.device
    head: str  # how the reported head is computed
    logits: Callable[[Tensor], Tensor]  # normalised (N, 3, H, W) -> (N, K) logits of the reported head
    normalise: Normalise  # pixels in [0, 1] -> the model's input, with the run's mean and std
    setup_error: str | None = None


def load_run(run_dir: str | Path, device: str = "auto") -> Run:
    """``mixnb.runs.open_run`` on ``device`` in the layout training used there, with its reported head."""
    dev = resolve_device(device)
    opened = open_run(run_dir, dev)
    model = opened.model.to(memory_format=memory_format(dev))
    run = Run(opened.run_dir, opened.cfg, opened.ckpt, opened.data, model, opened.method, dev, "", model,
              normaliser(*opened.cfg.normalisation), opened.setup_error)
    run.head, run.logits = _reported_head(run)
    return run


def _reported_head(run: Run) -> tuple[str, Callable[[Tensor], Tensor]]:
    """The logits the run reports (``eval_logits``'s "" head). Every method's is ``model(x)`` today (AutoMix:
    its backbone's fc), checked here on 8 val images; a method whose head differs is evaluated through
    ``eval_logits`` (all its heads computed, the "" one kept)."""
    x = run.normalise(run.data.x_val[:8].to(run.device).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        own = run.method.eval_logits(run.model, x)[""]
        if torch.allclose(own, run.model(x), rtol=1e-4, atol=1e-5):
            return "model(x), equal to the method's reported head", run.model
    return "method.eval_logits(model, x)[''] (not model(x))", lambda x: run.method.eval_logits(run.model, x)[""]


def normaliser(mean: Sequence[float], std: Sequence[float]) -> Normalise:
    """(N, 3, H, W) pixels in [0, 1] -> the model's input with ``mean``/``std``, in the device's layout. The
    statistics go to each device once, not per batch: a list copied to CUDA would meet the host at every PGD step."""
    on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def normalise(x: Tensor) -> Tensor:
        if x.device not in on_device:
            on_device[x.device] = (torch.tensor(mean, device=x.device), torch.tensor(std, device=x.device))
        return normalize(x * 255, *on_device[x.device]).contiguous(memory_format=memory_format(x.device))

    return normalise


imagenet_normalise = normaliser(MEAN, STD)  # the default: a run's own is ``Run.normalise``


def chw_images(x_uint8: Tensor, device: torch.device) -> Tensor:
    """(N, H, W, 3) uint8 (the data's layout) -> (N, 3, H, W) uint8 on ``device``, moved once."""
    return x_uint8.to(device).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(logits: Callable[[Tensor], Tensor], x: Tensor, *, batch_size: int,
            normalise: Normalise = imagenet_normalise) -> Tensor:
    """(N, K) float32 logits of (N, 3, H, W) uint8 or [0, 1] float images, ``batch_size`` at a time."""
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb
        out.append(logits(normalise(xb)).float())
    return torch.cat(out)


def seeded_subset(n: int, k: int | None, seed: int, stream: str) -> Tensor:
    """(k,) sorted int64 indices: a seeded subset of range(n) (all of it when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(stream_seed(seed, stream))
    return torch.randperm(n, generator=gen)[:k].sort().values
