"""FLOPs (§6): ``torch.utils.flop_counter.FlopCounterMode`` (2 x MACs; convs and matmuls only) of one
training step of the method (its ``training_step`` + backward, on a batch of the run's batch size),
and of one 64 px image's forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mixnb.analysis.run import Run
from mixnb.device import memory_format
from mixnb.data import DeviceLoader
from mixnb.rng import stream_seed


class _NoModules:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks break ``torch.autograd.grad`` on an
    input (PuzzleMix's saliency pass: "A leaf node was passed to _will_engine_execute_node"); only the global
    total is read here, which needs no per-module attribution."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModules:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts while ``fn()`` runs (2 x MACs; §6)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()  # its formulas and dispatch mode, without module attribution
    with counter:
        fn()
    return int(counter.get_total_flops())


def flops(run: Run) -> dict[str, Any]:
    """FLOPs of one training step (the method's ``training_step`` + backward, batch = the run's batch size, on a
    copy of the model in train mode) and of one image's forward at 64 px; a step that cannot run here falls
    back to the model's forward + backward, and says so."""
    from mixnb.mixups import StepContext

    model, method = copy.deepcopy((run.model, run.method))  # train mode moves BN statistics: not the run's model
    b, dev = run.cfg.batch_size, run.device
    gen = torch.Generator(dev).manual_seed(stream_seed(0, "flops"))
    loader = DeviceLoader(run.data.x_train[:b], run.data.y_train[:b], batch_size=b, device=dev, train=True, gen=gen)
    x, y = next(iter(loader))
    x = x.contiguous(memory_format=memory_format(dev))
    model.train()
    method.train()
    what = f"method.training_step + backward ({run.cfg.method}), batch {len(x)}"

    def step() -> None:
        ctx = StepContext(gen=gen, cpu_gen=torch.Generator().manual_seed(0), total_steps=1)
        method.training_step(model, x, y, ctx).loss.backward()

    def plain() -> None:
        F.cross_entropy(model(x), y).backward()

    try:
        if run.setup_error:
            raise RuntimeError(run.setup_error)
        step_flops = count_flops(step)
    except Exception as err:  # noqa: BLE001 (any method failure: fall back, say which)
        what = f"model forward + backward, batch {len(x)} (the method's step failed here: {type(err).__name__}: {err})"
        step_flops = count_flops(plain)
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(x[:1]))
    return {"train_step": step_flops, "train_step_per_image": step_flops / len(x), "what": what,
            "forward_per_image": forward, "image_size": int(x.shape[-1]), "batch": len(x),
            "counter": "torch.utils.flop_counter.FlopCounterMode: 2 x MACs of convs and matmuls (BN, ReLU, pooling "
                       "not counted)"}
