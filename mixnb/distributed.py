"""Several processes, one run: torchrun process groups, DDP around the model, all-reduces, BN averaging.

``torchrun --nproc-per-node K -m mixnb train ...`` (or ``mixnb.launch.launch`` from a notebook) trains one run on
K GPUs (NCCL) or K CPU processes (gloo); ``mixnb.train.fit`` calls what is here, which knows process groups and
collectives, not configs or methods. See mixnb.train's
docstring for how batches, BatchNorm, mixing partners and checkpoints behave under DDP.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mixnb.device import resolve_device
from mixnb.models.groupbn import RUNNING_STATS


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


def average_buffers_(*modules: nn.Module, running_stats: str = "mean") -> None:
    """The floating-point buffers (BN running statistics) of ``modules`` made equal over ranks: their mean
    (``running_stats`` "mean"), or rank 0's ("first", as OpenMixup HEAD's ValidateHook broadcasts them)."""
    if running_stats not in RUNNING_STATS:
        raise ValueError(f"running_stats must be one of {', '.join(RUNNING_STATS)}, got {running_stats!r}")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if bufs:
        flat = torch.cat([b.reshape(-1).float() for b in bufs])
        if running_stats == "first":
            dist.broadcast(flat, src=0)
        else:
            all_reduce_(flat, mean=True)
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


def die_with_parent() -> None:
    """Linux: SIGTERM this child when its parent dies (a killed notebook kernel takes torchrun with it)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
