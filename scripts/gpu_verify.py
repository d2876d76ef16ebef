#!/usr/bin/env python3
"""GPU verification in one short call: correctness first, then speed, one line per check.

    python scripts/gpu_verify.py                 # on a lent GPU: at most --budget-s (270 s) of checks
    python scripts/gpu_verify.py --dry           # the same plumbing on the CPU, tiny sizes (< 3 min on 2 cores)
    python scripts/gpu_verify.py --only fit-resume,divergence   # a subset, e.g. a rerun of what failed

Each check prints ``PASS|FAIL|INFO|SKIP <name>: <detail>``, in this order: the environment; a 2-epoch Vanilla
R-18 fit and a kill-and-resume that must equal it (the CUDA restore path of ``mixnb.train.load_checkpoint``);
captured steps (compile "reduce-overhead", capture="step") against eager over 4 steps for Vanilla, CutMix,
ManifoldMix, PuzzleMix (needs gco) and SAMix; the divergence counter catching a NaN; the analysis' attack pass of
an R-18 and an RX-50 at the protocol width against ``mixnb.memory``'s prediction; ``bn_groups=2`` against plain
BN (one AutoMix RX-50 step) against the same model; the train notebook through papermill (when papermill,
nbclient and ipykernel import); then Vanilla R-18 img/s against the 14,466 measured on an H100 on 2026-11-27
(BENCHMARKS.md; INFO unless below half of it). The last line is a summary; the exit status is 1 if any check FAILs.

Isolation: every check runs in its own process (its own CUDA context: an OOM, a CUDA fault or a hung compile
loses that check only) under its own time budget (``CHECKS``), killed with its process group when it runs
over. No check starts once the overall budget is spent (it prints SKIP); a started one is cut at the budget's
end, so the whole call stays under ``--budget-s`` plus the environment's few seconds. The lines also go to
``$OUT/gpu_verify.txt`` and the checks' own output to ``$OUT/gpu_verify.log`` when ``$OUT`` is set (the device
tool returns ``$OUT``: at most 8 files come back, hence two).

Carried wheels (``make gpu-wheels`` -> ``.cache/gpu-wheels``; scripts/gpu_wheels.sh): when some of them are
missing here, the wheels that fit this Python are installed once with ``pip install --no-index --no-deps
--target /tmp/mixnb-gpu-site`` and that folder goes first on every check's PYTHONPATH (no network, the machine's
own Python untouched). Runs go to a temporary folder, never to runs/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache" / "gpu-wheels"
SITE = Path(tempfile.gettempdir()) / "mixnb-gpu-site"  # where the carried wheels are installed, once per machine
BUDGET_S = 270  # the default overall budget: one device call of at most 5 minutes with the start-up and summary
STATUSES = ("PASS", "FAIL", "INFO", "SKIP")
REFERENCE_IMG_S = 14_466  # Vanilla R-18, compile reduce-overhead, H100, 2026-11-27 (BENCHMARKS.md)
SLOW_SHARE = 0.5  # below this share of the reference the speed check FAILs (slower = something broke, not noise)
# Measured peak / predicted peak outside this range FAILs: above 1.15 the model underestimates enough that runs
# packed by it (RUNS_PER_GPU) or an analysis batch chosen by it can run out of memory; below 0.67 it wastes a
# third of the card. Peaks are measured in steady state (after a warm-up call: cudnn autotune's workspaces and
# the allocator's first growth are left out, as the model leaves them out).
MEMORY_RATIO = (0.67, 1.15)
OPTIONAL = ("gco", "cv2.saliency", "papermill", "nbclient", "nbformat", "ipykernel", "submitit", "timm", "pytest",
            "mixnb.memory")
MIN_START_S = 10  # a check is not started with less than this left of the overall budget


@dataclass(frozen=True)
class Sizes:
    """What the checks train and measure: the GPU's, or --dry's tiny ones on the CPU."""

    device: str
    profile: str  # the generated data set the runs train on
    width: int  # backbone width of the trained runs and captured steps
    batch: int  # batch of the trained runs
    captured_batch: int  # batch of the captured-against-eager steps
    protocol_width: int  # width of the analysis and memory checks (64 = the paper's)
    step_batch: int  # batch of the memory check's training step (100 = the protocol's)
    max_analysis_batch: int | None  # a cap on the memory model's analysis batch (None: as it says)
    memory_backbone: str  # bn_groups check: AutoMix on this backbone
    precision: str  # RunConfig.precision of everything trained: the GPU's as trained (bf16); fp32 on the CPU,
    # where bf16 autocast (auto on AVX512-BF16 CPUs) ran the tiny steps ~2x slower here


GPU = Sizes("cuda", "sample", 64, 100, 16, 64, 100, None, "resnext50", "auto")
DRY = Sizes("cpu", "test", 8, 16, 8, 8, 8, 16, "resnet18", "fp32")
T0 = time.perf_counter()


def phase(text: str) -> None:
    """A timestamped line in gpu_verify.log: where a check spent its time (or where it hung)."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- helpers (inside a check's process)
def torch_device(s: Sizes) -> Any:
    import torch

    return torch.device(s.device)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deterministic_cuda() -> str:
    """Deterministic kernels and no cudnn autotune in this process, so two CUDA runs can be bit-equal.

    ``fit`` turns ``cudnn.benchmark`` on, and autotune may pick another (equally deterministic) algorithm in
    another process, which rounds differently: the check pins it off instead (a property that ignores writes)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    type(torch.backends.cudnn).benchmark = property(lambda self: False, lambda self, value: None)
    return "deterministic algorithms, cudnn autotune off"


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


@contextlib.contextmanager
def cuda_peak(device: Any) -> Iterator[dict[str, float]]:
    """{"gib": the CUDA allocator's peak of this process inside the block} (CPU: left empty)."""
    import torch

    out: dict[str, float] = {}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        sync(device)
        out["gib"] = gib(torch.cuda.max_memory_allocated(device))


def memory_verdict(measured: float | None, predicted: float) -> tuple[str, str]:
    """(status, "measured X GiB, predicted Y GiB (ratio r)") against ``MEMORY_RATIO``; INFO without a measurement."""
    if measured is None:
        return "INFO", f"predicted {predicted:.3f} GiB, not measured on the CPU"
    ratio = measured / predicted if predicted > 0 else float("inf")
    low, high = MEMORY_RATIO
    status = "PASS" if low <= ratio <= high else "FAIL"
    return status, f"measured {measured:.2f} GiB, predicted {predicted:.2f} GiB (ratio {ratio:.2f}, ok {low}-{high})"


def patched_compile(dry: bool) -> contextlib.AbstractContextManager[Any]:
    """--dry: every torch.compile through the "eager" backend: dynamo's capture of the step, its graph breaks at the
    eager draws and host solvers, and guards, run by eager torch; inductor costs a minute per method on 2 cores
    and aot_eager (tests/test_compile.py) half of this check's time. On the GPU: inductor as the Trainer uses it."""
    if not dry:
        return contextlib.nullcontext()
    import torch
    from unittest import mock

    real = torch.compile
    return mock.patch.object(torch, "compile", lambda fn=None, mode=None, dynamic=None, **kw: real(
        fn, backend="eager", dynamic=dynamic))


# ----------------------------------------------------------------------------- the checks
def check_env(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str, dict[str, Any]]:
    import platform

    import torch
    import torchvision

    import mixnb  # noqa: F401  (the tree imports)

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"torchvision {torchvision.__version__}",
             f"CUDA {torch.version.cuda}", f"{os.cpu_count()} CPUs"]
    cuda = torch.cuda.is_available()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        parts.append(f"{p.name} {p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor} x{torch.cuda.device_count()}")
    else:
        parts.append("no CUDA device")
    found = {name: _importable(name) for name in OPTIONAL}
    parts.append("optional: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in found.items()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    parts.append(f"commit {commit.stdout.strip() or 'unknown (no .git here)'}")
    status = "PASS" if cuda or dry else "FAIL"
    return status, "; ".join(parts), {"cuda": cuda, "optional": found}


def _importable(name: str) -> bool:
    module, _, attr = name.partition(".")
    try:
        if module == "mixnb":
            return importlib.util.find_spec(name) is not None
        if importlib.util.find_spec(module) is None:
            return False
        return not attr or hasattr(importlib.import_module(module), attr)
    except Exception:  # a broken install counts as missing
        return False


MATH_COLUMNS = ("epoch", "lr", "train_loss", "top1", "top5", "val_loss")
_RESUME = """
import json, sys
sys.path.insert(0, {scripts!r})
import gpu_verify
if {cuda!r}:
    gpu_verify.deterministic_cuda()
from mixnb.config import RunConfig
from mixnb.train import fit
fit(RunConfig.from_dict(json.loads(sys.argv[2])), sys.argv[1], progress="none")
"""


def check_fit_resume(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
    """2 epochs straight; a copy of the folder as it was after epoch 1 resumed to 2 in a fresh process."""
    import torch

    import mixnb.train as t
    from mixnb.config import RunConfig

    cuda = s.device == "cuda"
    how = deterministic_cuda() if cuda else "CPU"
    cfg = RunConfig(method="vanilla", backbone="resnet18", profile=s.profile, epochs=2, width=s.width,
                    batch_size=s.batch, device=s.device, compile="off", precision=s.precision)
    straight, killed = tmp / "straight", tmp / "killed"
    real_write = t._write_metrics

    def write_and_snapshot(path: Path, rows: list[dict[str, Any]]) -> None:
        real_write(path, rows)
        if len(rows) == 1:  # the folder a kill during epoch 2 leaves: epoch 1's checkpoint and metrics
            shutil.copytree(path.parent, killed)

    t._write_metrics = write_and_snapshot
    try:
        t0 = time.perf_counter()
        t.fit(cfg, straight, progress="none")
        t_fit = time.perf_counter() - t0
    finally:
        t._write_metrics = real_write
    phase(f"straight run done in {t_fit:.1f} s; resuming the epoch-1 copy in a fresh process")
    proc = subprocess.run([sys.executable, "-c", _RESUME.format(scripts=str(ROOT / "scripts"), cuda=cuda),
                           str(killed), json.dumps(cfg.to_dict())], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return "FAIL", f"the resume from epoch 1 failed: {last_error(proc.stderr)}"
    a = t.load_checkpoint(straight / "checkpoint.pt")
    b = t.load_checkpoint(killed / "checkpoint.pt")
    assert a is not None and b is not None
    if b["rows"][0]["epoch_seconds"] != a["rows"][0]["epoch_seconds"] or list(killed.glob("*.corrupt-*")):
        return "FAIL", "the second folder trained from scratch instead of resuming from epoch 1's checkpoint"
    diffs = [f"epoch {ra['epoch']} {k}: {ra.get(k)} vs {rb.get(k)}" for ra, rb in zip(a["rows"], b["rows"])
             for k in MATH_COLUMNS if ra.get(k) != rb.get(k)]
    if len(a["rows"]) != len(b["rows"]):
        diffs.append(f"{len(a['rows'])} rows vs {len(b['rows'])}")
    unequal = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    if diffs or unequal:
        worst = max((float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in unequal), default=0.0)
        return "FAIL", (f"resumed != straight ({how}): {'; '.join(diffs[:3]) or 'rows equal'}; {len(unequal)} "
                        f"weight tensors differ (max |diff| {worst:.3g})")
    return "PASS", (f"2 epochs of {cfg.run_name()} w{s.width} on {s.profile} ({t_fit:.1f} s) and the resume from "
                    f"epoch 1 in a fresh process: metrics rows and all {len(a['model'])} weight tensors bit-equal "
                    f"({how}, compile off)")


def last_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1].strip()[:300]


CAPTURED_STEPS = 4  # CUDA-graph trees run a function's first call as a warm-up, record the 2nd, replay from the 3rd


def check_captured(method: str) -> Callable[[Sizes, bool, Path], tuple[str, str]]:
    def check(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
        import torch

        from mixnb.config import RunConfig

        if method == "puzzlemix" and not _importable("gco"):
            return "SKIP", "gco-wrapper is not importable here (carry .cache/gpu-wheels: make gpu-wheels)"
        cuda = s.device == "cuda"
        mode = "reduce-overhead" if cuda else "default"
        cfg = RunConfig(method=method, profile="test", width=s.width if dry else 16, batch_size=s.captured_batch,
                        device=s.device,
                        precision=s.precision, compile=mode, capture="step")
        loss_tol, w_tol = (2e-2, 2e-2) if cuda else (1e-5, 1e-4)  # bf16 rounding on CUDA; fp32 reassociation on CPU
        eager_losses, eager_state = _train_steps(dataclasses.replace(cfg, compile="off"), s)
        phase("eager steps done; compiling")
        torch._dynamo.reset()
        t0 = time.perf_counter()
        with patched_compile(dry):
            losses, state = _train_steps(cfg, s)
        seconds = time.perf_counter() - t0
        worst_loss = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, eager_losses))
        worst_w, worst_key = 0.0, ""
        for key, value in state.items():
            ref = eager_state[key]
            if not value.is_floating_point():
                if not torch.equal(value, ref):
                    worst_w, worst_key = float("inf"), key
                continue
            err = float((value.float() - ref.float()).abs().max()) / max(float(ref.float().abs().max()), 1e-6)
            if err > worst_w:
                worst_w, worst_key = err, key
        finite = all(torch.isfinite(torch.tensor(losses)))
        ok = finite and worst_loss <= loss_tol and worst_w <= w_tol and state.keys() == eager_state.keys()
        how = f"compile {mode}{' (eager backend)' if dry else ''}, capture step, {CAPTURED_STEPS} steps"
        return ("PASS" if ok else "FAIL"), (
            f"{how} against eager: losses within {worst_loss:.1e} (tol {loss_tol:g}), weights and eval logits "
            f"within {worst_w:.1e} of each tensor's largest entry (tol {w_tol:g}; worst {worst_key or '-'}); "
            f"compile + {CAPTURED_STEPS} steps {seconds:.1f} s")

    return check


def _train_steps(cfg: Any, s: Sizes) -> tuple[list[float], dict[str, Any]]:
    """Losses of ``CAPTURED_STEPS`` Trainer steps (``train_step``: SGD and ``on_step_end`` included) on fixed batches,
    then the model's and method's state and the eval logits of each head (tests/test_compile.py's ``train_steps``)."""
    import torch

    from mixnb.mixups import StepContext
    from mixnb.train import Generators, build_parts, train_step

    dev = torch_device(s)
    model, method, optimizer, autocast = build_parts(cfg, dev, num_classes=4, run_dir=None)
    gens = Generators.from_seed(cfg.seed, dev)
    ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=10)
    layout = torch.channels_last if dev.type == "cuda" else torch.contiguous_format  # as fit's loader
    losses = []
    n = cfg.batch_size
    for i in range(CAPTURED_STEPS):
        x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(i))  # (N, C, H, W) float32
        x = x.to(dev).contiguous(memory_format=layout)
        y = torch.arange(n, device=dev) % 4
        losses.append(train_step(model, method, x, y, optimizer, ctx, autocast=autocast).loss.float().item())
    model.eval()
    method.eval()
    with torch.inference_mode(), autocast:
        logits = {f"logits.{h}": v.float().clone() for h, v in method.eval_logits(model, x).items()}
    state = {**model.state_dict(), **{f"method.{k}": v for k, v in method.state_dict().items()}, **logits}
    return losses, {k: v.detach().clone() for k, v in state.items()}


def check_divergence(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
    """A NaN loss at iteration 3 must raise Diverged naming it, read every 2 steps and (log_every beyond the
    epoch) at the epoch's end (tests/test_reliability.py poisons Vanilla's training_step the same way)."""
    from mixnb.config import RunConfig
    from mixnb.device import autocast_dtype
    from mixnb.data import DeviceLoader
    from mixnb.mixups import StepContext, StepOutput
    from mixnb.mixups.vanilla import Vanilla
    from mixnb.train import Diverged, Generators, build_parts, load_data, train_one_epoch

    real = Vanilla.training_step

    def poisoned(self: Any, model: Any, x: Any, y: Any, ctx: Any) -> Any:
        out = real(self, model, x, y, ctx)
        return StepOutput(out.loss * float("nan"), out.logs) if ctx.step == 2 else out

    dev = torch_device(s)
    cfg = RunConfig(method="vanilla", profile="test", width=s.width, batch_size=16, device=s.device, compile="off",
                    precision=s.precision)
    data = load_data(cfg)
    caught = []
    Vanilla.training_step = poisoned
    try:
        for log_every in (2, 10**9):
            model, method, optimizer, autocast = build_parts(cfg, dev, num_classes=len(data.wnids), run_dir=None)
            gens = Generators.from_seed(cfg.seed, dev)
            loader = DeviceLoader(data.x_train, data.y_train, batch_size=16, device=dev, train=True, gen=gens.data,
                                  channels_last=dev.type == "cuda")
            ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=len(loader))
            try:
                train_one_epoch(model, method, loader, optimizer, ctx, autocast=autocast, log_every=log_every)
            except Diverged as err:
                if "iteration 3 of the epoch" not in str(err):
                    return "FAIL", f"Diverged names the wrong step (log_every {log_every}): {err}"
                caught.append(log_every)
            else:
                return "FAIL", f"a NaN loss at iteration 3 raised nothing (log_every {log_every})"
    finally:
        Vanilla.training_step = real
    precision = str(autocast_dtype(cfg.precision, dev)).removeprefix("torch.")
    return "PASS", (f"a NaN loss at iteration 3 raised Diverged naming it, read every 2 steps and at the epoch's "
                    f"end ({len(loader)} steps, {s.device}, {precision})")


def check_analysis(backbone: str) -> Callable[[Sizes, bool, Path], tuple[str, str]]:
    def check(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
        """The analysis' costliest pass (FGSM, and PGD's input gradients: forward + backward to the input in
        fp32) at the batch ``mixnb.memory.analysis_batch`` gives, with 10,000 val images on the device as
        ``analyze_run`` holds them, against ``predict_analysis_gib``."""
        import torch

        from mixnb import memory
        from mixnb.analysis import AnalysisSettings, adversarial, fgsm
        from mixnb.device import memory_format
        from mixnb.config import RunConfig
        from mixnb.models import build_model
        from mixnb.train import load_data

        dev = torch_device(s)
        cfg = RunConfig(method="vanilla", backbone=backbone, profile="tiny-imagenet" if not dry else "test",
                        width=s.protocol_width, device=s.device)
        t0 = time.perf_counter()
        batch = memory.analysis_batch(cfg)
        chosen = batch
        if s.max_analysis_batch is not None:
            batch = min(batch, s.max_analysis_batch)
        predicted = memory.predict_analysis_gib(cfg, batch)
        t_model = time.perf_counter() - t0
        phase(f"memory model: batch {chosen}, predicted {predicted:.3f} GiB at batch {batch} ({t_model:.1f} s)")
        data = load_data(RunConfig(profile=s.profile))
        n_val = 10_000 if not dry else 64
        idx = torch.arange(n_val) % len(data.y_val)
        x = data.x_val[idx].to(dev).permute(0, 3, 1, 2).contiguous()  # (N, 3, 64, 64) uint8, as chw_images makes
        y = data.y_val[idx].to(dev)
        model = build_model(backbone, num_classes=200, width=s.protocol_width).to(dev, memory_format=memory_format(dev)).eval()
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as in the train notebook's process, where fit turned it on
        xb, yb = x[:batch].float() / 255, y[:batch]
        fgsm(model, xb, yb)  # warm-up: cudnn autotune and the allocator's first growth
        del xb
        settings = AnalysisSettings(batch_size=batch, pgd_steps=1)
        with cuda_peak(dev) as peak:
            t0 = time.perf_counter()
            result = adversarial(model, x[:batch], y[:batch], settings)
            sync(dev)
            seconds = time.perf_counter() - t0
        status, verdict = memory_verdict(peak.get("gib"), predicted)
        capped = f" (capped from {chosen} for --dry)" if batch != chosen else ""
        return status, (f"{backbone} w{s.protocol_width}, analysis batch {batch}{capped} from "
                        f"memory.analysis_batch: FGSM + PGD ({result['images']} images, {seconds:.1f} s, "
                        f"{s.device}): {verdict}; model {t_model:.1f} s")

    return check


def check_bn_groups(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
    """One AutoMix training step with bn_groups=1 and 2 (the RX-50 default), steady-state peak of each against
    ``predict_step_gib``; grouped BN must cost at most 1.25x plain BN's memory."""
    import gc

    import torch

    from mixnb import memory
    from mixnb.config import RunConfig
    from mixnb.data import DeviceLoader
    from mixnb.mixups import StepContext
    from mixnb.train import Generators, build_parts, load_data, train_step

    dev = torch_device(s)
    data = load_data(RunConfig(profile=s.profile))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit
    out, lines = {}, []
    for groups in (1, 2):
        cfg = RunConfig(method="automix", backbone=s.memory_backbone, profile=s.profile, width=s.protocol_width,
                        batch_size=s.step_batch, device=s.device, compile="off", bn_groups=groups,
                        precision=s.precision)
        predicted = memory.predict_step_gib(cfg)
        phase(f"bn_groups={groups}: predicted {predicted:.3f} GiB")
        model, method, optimizer, autocast = build_parts(cfg, dev, num_classes=len(data.wnids), run_dir=None)
        gens = Generators.from_seed(cfg.seed, dev)
        loader = DeviceLoader(data.x_train, data.y_train, batch_size=cfg.batch_size, device=dev, train=True,
                              gen=gens.data, drop_last=True, channels_last=dev.type == "cuda")
        ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=10)
        batches = iter(loader)
        train_step(model, method, *next(batches), optimizer, ctx, autocast=autocast)  # warm-up
        with cuda_peak(dev) as peak:
            train_step(model, method, *next(batches), optimizer, ctx, autocast=autocast)
        out[groups] = (peak.get("gib"), predicted)
        status, verdict = memory_verdict(peak.get("gib"), predicted)
        lines.append((status, f"bn_groups={groups}: {verdict}"))
        del model, method, optimizer, loader, batches
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    statuses = [st for st, _ in lines]
    detail = f"AutoMix {s.memory_backbone} w{s.protocol_width} batch {s.step_batch}, one step: " + "; ".join(
        d for _, d in lines)
    (m1, p1), (m2, p2) = out[1], out[2]
    if m1 is not None and m2 is not None:
        detail += f"; grouped/plain measured {m2 / m1:.2f}x, predicted {p2 / p1:.2f}x"
        if m2 > 1.25 * m1:
            statuses.append("FAIL")
            detail += " (over 1.25x: grouped BN should cost plain BN's memory)"
    return ("FAIL" if "FAIL" in statuses else statuses[0]), detail


def check_notebook(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
    """notebooks/train.ipynb through papermill, as a sweep runs it: 1 epoch, the analysis cell included."""
    missing = [m for m in ("papermill", "nbclient", "ipykernel") if not _importable(m)]
    if missing:
        return "SKIP", f"{', '.join(missing)} not importable here (carry .cache/gpu-wheels: make gpu-wheels)"
    from jupyter_client.kernelspec import KernelSpecManager

    from mixnb.notebook_run import run_notebook
    from mixnb.paths import KERNEL

    kernel = KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"
    run_dir, log = tmp / "notebook-run", tmp / "papermill.log"
    params = {"profile": "test", "epochs": 1, "device": s.device, "compile": "off", "run_dir": str(run_dir),
              "width": s.width, "precision": s.precision}
    t0 = time.perf_counter()
    try:
        run_notebook(ROOT / "notebooks" / "train.ipynb", tmp / "train.ipynb", params, log=log, cwd=tmp, kernel=kernel)
    except subprocess.CalledProcessError as err:
        output = log.read_text(errors="replace") if log.is_file() else ""
        sys.stderr.write(output[-8000:])
        return "FAIL", (f"papermill exited {err.returncode} after {time.perf_counter() - t0:.0f} s: "
                        f"{last_error(output)}")
    seconds = time.perf_counter() - t0
    made = [name for name in ("summary.json", "analysis.json", "mix_samples.png") if (run_dir / name).exists()]
    if len(made) < 3:
        return "FAIL", f"papermill finished but the run folder holds only {made}"
    summary = json.loads((run_dir / "summary.json").read_text())
    return "PASS", (f"kernel {kernel}, test profile 1 epoch on {summary['environment'].get('device_name', s.device)}, "
                    f"analysis on {s.device}: summary, analysis.json and the gallery written ({seconds:.0f} s)")


def check_bench(s: Sizes, dry: bool, tmp: Path) -> tuple[str, str]:
    """Vanilla R-18 training img/s through mixnb.bench's rig and timer (``build_rig``, ``measure``)."""
    from mixnb import bench
    from mixnb.config import RunConfig
    from mixnb.train import load_data

    args = ["--methods", "vanilla", "--backbones", "resnet18", "--no-peers", "--device", s.device]
    args += (["--compile", "reduce-overhead", "--seconds", "1.0", "--windows", "3", "--warmup", "3"] if not dry else
             ["--compile", "off", "--precision", s.precision, "--width", str(s.width), "--batch-size", "20",
              "--seconds", "0.01", "--windows", "1", "--warmup", "1"])
    opts = bench.parse_args(args)
    data = load_data(RunConfig(profile=s.profile))
    rig = bench.build_rig("vanilla", "resnet18", data, opts, tmp)
    (timed,) = bench.measure([rig.epoch], opts, seconds=opts.seconds)
    img_s = bench.Stat.of([opts.batch_size / sec for sec in timed.seconds])
    what = (f"Vanilla R-18 w{opts.width} batch {opts.batch_size} compile {opts.compile}: {img_s.median:,.0f} img/s "
            f"({img_s.low:,.0f}-{img_s.high:,.0f}, {opts.windows} windows; warm-up {timed.warmup_s:.1f} s)")
    if dry:
        return "INFO", f"{what}; CPU, not compared with the H100's {REFERENCE_IMG_S:,}"
    share = img_s.median / REFERENCE_IMG_S
    status = "FAIL" if share < SLOW_SHARE else "INFO"
    return status, f"{what} = {share:.0%} of the {REFERENCE_IMG_S:,} measured on an H100 on 2026-11-27"


# name, the check, its budget in seconds on the GPU and with --dry. Order: correctness before speed. The GPU
# budgets are guesses for a bare H100 with a cold inductor cache (compiles dominate the captured checks); they are
# ceilings, and the first device run should replace them with measured times.
@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Sizes, bool, Path], Any]
    gpu_s: int
    dry_s: int


CHECKS = (
    Check("env", check_env, 30, 30),
    Check("fit-resume", check_fit_resume, 60, 45),
    Check("captured-vanilla", check_captured("vanilla"), 45, 30),
    Check("captured-cutmix", check_captured("cutmix"), 45, 30),
    Check("captured-manifoldmix", check_captured("manifoldmix"), 60, 30),
    Check("captured-puzzlemix", check_captured("puzzlemix"), 60, 40),
    Check("captured-samix", check_captured("samix"), 75, 60),
    Check("divergence", check_divergence, 30, 30),
    Check("analysis-resnet18", check_analysis("resnet18"), 60, 30),  # mixnb.memory's CPU probes on a cold cache
    Check("analysis-resnext50", check_analysis("resnext50"), 60, 30),
    Check("bn-groups", check_bn_groups, 75, 30),
    Check("notebook", check_notebook, 90, 60),
    Check("bench", check_bench, 45, 30),
)
NAMES = tuple(c.name for c in CHECKS)


# ----------------------------------------------------------------------------- one check, in its own process
def run_child(name: str, dry: bool, result: Path) -> int:
    global T0
    T0 = time.perf_counter()
    check = next(c for c in CHECKS if c.name == name)
    phase(f"{name}: started")
    tmp = Path(tempfile.mkdtemp(prefix=f"gpu-verify-{name}-"))
    try:
        out = check.fn(DRY if dry else GPU, dry, tmp)
        status, detail, extra = (*out, {}) if len(out) == 2 else out
    except Exception as err:  # the line says what; the log has the traceback
        import traceback

        traceback.print_exc()
        status, detail, extra = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400], {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.write_text(json.dumps({"status": status, "detail": " ".join(detail.split()), **extra}))
    return 0


# ----------------------------------------------------------------------------- the driver
def carried_wheels(log: Callable[[str], None]) -> str | None:
    """Install the carried wheels this Python lacks into ``SITE`` (once); returns the folder to put on the path."""
    wheels = sorted(WHEELS.glob("*.whl"))
    missing = [m for m in ("papermill", "nbclient", "ipykernel", "gco") if importlib.util.find_spec(m) is None]
    if not wheels or not missing:  # a dev machine's venv has them all: its own versions stay in charge
        log(f"carried wheels: {len(wheels)} in {WHEELS}, {'not needed here' if wheels else 'none'}")
        return None
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        log("carried wheels: packaging is not importable, cannot tell which wheels fit; not installed")
        return None
    here = set(sys_tags())
    fit = [w for w in wheels if here & set(parse_wheel_filename(w.name)[3])]
    stamp = SITE / ".wheels"
    names = "\n".join(w.name for w in fit)
    if not (stamp.exists() and stamp.read_text() == names):
        shutil.rmtree(SITE, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--target", str(SITE), *map(str, fit)], capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"carried wheels: pip install failed: {last_error(proc.stderr)}")
            return None
        stamp.write_text(names)
    log(f"carried wheels: {len(fit)} of {len(wheels)} fit this Python, installed in {SITE} (missing: {missing})")
    return str(SITE)


def preimport(note: Callable[[str], None]) -> None:
    """Import torch and mixnb once in the driver, so each forked check starts with them loaded (~3.5 s of imports
    saved per check on a 2-core CPU). Nothing here touches CUDA or runs a tensor op: a forked child initialises
    its own CUDA context and thread pools."""
    t0 = time.perf_counter()
    try:
        import torch  # noqa: F401

        import mixnb.analysis  # noqa: F401
        import mixnb.bench  # noqa: F401
        import mixnb.train  # noqa: F401
    except Exception as err:  # the checks report it, each on its own line
        note(f"pre-import failed ({type(err).__name__}: {err}); each check imports on its own")
    note(f"pre-imported torch and mixnb in {time.perf_counter() - t0:.1f} s")


def run_check(check: Check, dry: bool, timeout: float, log_file: Any) -> tuple[str, str, dict[str, Any]]:
    """Run ``check`` in a forked process of its own session, killed with its whole group at ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="gpu-verify-") as tmp:
        result = Path(tmp) / "result.json"
        log_file.write(f"\n===== {check.name} (timeout {timeout:.0f} s) =====\n")
        log_file.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the check: its own session (a timeout kills compile workers, solver pools, kernels too)
            code = 1
            try:
                os.setsid()
                os.dup2(log_file.fileno(), 1)
                os.dup2(log_file.fileno(), 2)
                code = run_child(check.name, dry, result)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        code = None
        while code is None and time.perf_counter() - t0 < timeout:
            done, status = os.waitpid(pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status) if done else None
            if code is None:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # a timeout, or whatever the check left running
        if code is None:
            os.waitpid(pid, 0)
            return "FAIL", f"stopped at its {timeout:.0f} s budget (a cold compile? a rerun finds the inductor cache warm)", {}
        seconds = time.perf_counter() - t0
        if not result.exists():
            return "FAIL", f"its process exited {code} after {seconds:.0f} s without a result (see gpu_verify.log)", {}
        out = json.loads(result.read_text())
        return out.pop("status"), f"{out.pop('detail')} [{seconds:.0f} s]", out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="the CPU, tiny sizes: the plumbing, not the GPU's numbers")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"overall seconds (default {BUDGET_S})")
    p.add_argument("--slack", type=float, default=1.0,
                   help="multiply every check's own budget (a loaded machine); the overall budget still holds")
    p.add_argument("--only", help=f"comma-separated checks to run, of: {', '.join(NAMES)}")
    p.add_argument("--list", action="store_true", help="print the checks' names and budgets, then exit")
    p.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        return run_child(opts.child, opts.dry, opts.result)
    if opts.list:
        for c in CHECKS:
            print(f"{c.name}  {c.gpu_s} s (GPU)  {c.dry_s} s (--dry)")
        return 0
    chosen = opts.only.split(",") if opts.only else list(NAMES)
    if unknown := sorted(set(chosen) - set(NAMES)):
        p.error(f"unknown check(s) {unknown}; valid: {', '.join(NAMES)}")

    t_start = time.perf_counter()
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    log_path = (out_dir or Path(tempfile.mkdtemp(prefix="gpu-verify-"))) / "gpu_verify.log"
    txt = out_dir / "gpu_verify.txt" if out_dir is not None else None
    lines: list[str] = []

    def say(status: str, name: str, detail: str) -> None:
        lines.append(f"{status} {name}: {detail}")
        print(lines[-1], flush=True)
        if txt is not None:
            txt.write_text("\n".join(lines) + "\n")  # after every line: a killed call keeps what it printed

    with open(log_path, "w") as log_file:
        def note(text: str) -> None:
            log_file.write(text + "\n")
            log_file.flush()

        site = carried_wheels(note)
        paths = [str(ROOT), site, os.environ.get("PYTHONPATH")]  # for the processes the checks start (papermill)
        os.environ["PYTHONPATH"] = os.pathsep.join(x for x in paths if x)
        os.environ["PYTHONUNBUFFERED"] = "1"
        sys.path[:0] = [x for x in (str(ROOT), site) if x]  # for the checks themselves (forked from here)
        preimport(note)
        cuda = None
        for check in CHECKS:
            if check.name not in chosen:
                continue
            left = opts.budget_s - (time.perf_counter() - t_start)
            own = (check.dry_s if opts.dry else check.gpu_s) * opts.slack
            if cuda is False and not opts.dry:
                say("SKIP", check.name, "no CUDA device here (--dry runs the checks' plumbing on the CPU)")
                continue
            if left < min(own, MIN_START_S):
                say("SKIP", check.name, f"not started: {max(left, 0):.0f} s left of the {opts.budget_s:.0f} s budget")
                continue
            status, detail, extra = run_check(check, opts.dry, min(own, left), log_file)
            if check.name == "env":
                cuda = extra.get("cuda")
            say(status, check.name, detail)
    counts = {st: sum(line.startswith(st + " ") for line in lines) for st in STATUSES}
    summary = (f"gpu_verify{' --dry' if opts.dry else ''}: " + ", ".join(f"{n} {st}" for st, n in counts.items())
               + f" in {time.perf_counter() - t_start:.0f} s (budget {opts.budget_s:.0f} s); log {log_path}")
    lines.append(summary)
    print(summary, flush=True)
    if txt is not None:
        txt.write_text("\n".join(lines) + "\n")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
