"""``--profile-kernels``: the device time of a few training steps under torch.profiler, per kernel and per kernel
category."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mixnb.bench.rig import build_rig
from mixnb.bench.timing import time_window
from mixnb.data import TinyImageNetTensors
from mixnb.train import resolve_compile

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
