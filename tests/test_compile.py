"""Compiled training (RunConfig.compile, RunConfig.capture) against eager: the same loss, gradients and checkpoints.

On the CPU, inductor compiles as the Trainer does on CUDA (``build_parts``), in fp32 so the comparison
is tight. Tolerance: float reassociation only, so the loss agrees to 1e-5 relative and every gradient
to 1e-4 of the largest gradient entry (measured: 0 and 5e-7 with inductor, 0 with aot_eager).
Inductor runs once (a minute on two cores): the whole captured step (``capture="step"``: MixUp's mixing,
the forward, the loss and their backward in one graph) and its compiled eval, two epochs. The
other captures go through the ``aot_eager`` backend: the same dynamo capture and autograd graphs without
inductor's code generation, in seconds, so several Trainer steps must match to float rounding; with a
low recompile limit that fails on a hit, they also show that no frame recompiles every step; every registered
method's step is captured under that limit through the "eager" backend (dynamo alone). CUDA graphs (compile
mode "reduce-overhead") need a GPU: ``test_cuda_graphs_match_eager`` runs in scripts/gpu_check.sh, and its
graph counter is checked on the CPU.
"""

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

import mixnb.train
from mixnb.config import RunConfig
from mixnb.device import autocast_dtype
from mixnb.mixups import REGISTRY, StepContext
from mixnb.mixups import attentivemix as attentivemix_module
from mixnb.train import Generators, build_parts, fit, new_cuda_graph_step, resolve_compile, train_step

LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4  # of the largest |gradient| entry


def one_step(cfg: RunConfig, device: torch.device, backend: str | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients of one training step from the seed's init on a fixed batch; ``backend``
    compiles the model with that torch.compile backend instead of what ``cfg.compile`` says."""
    model, method, optimizer, autocast = build_parts(cfg, device, num_classes=4, run_dir=None)
    if backend is not None:
        model.compile(backend=backend, dynamic=False)
    gens = Generators.from_seed(cfg.seed, device)
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)  # (N, C, H, W)
    y = torch.arange(16, device=device) % 4
    ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=10)
    with autocast:
        out = method.training_step(model, x, y, ctx)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return out.loss.detach(), grads


def assert_same_step(a: tuple[torch.Tensor, list[torch.Tensor]], b: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a.float(), loss_b.float(), rtol=LOSS_RTOL, atol=0)
    assert len(grads_a) == len(grads_b) > 0
    scale = max(g.abs().max().item() for g in grads_a)
    worst = max((ga.float() - gb.float()).abs().max().item() for ga, gb in zip(grads_a, grads_b))
    assert worst <= GRAD_TOL * scale, f"gradients differ by {worst:.3g} (largest entry {scale:.3g})"


def test_compile_and_precision_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile(RunConfig(), cpu) is None  # auto: eager on the CPU
    assert resolve_compile(RunConfig(compile="default"), cpu) == "default"
    assert resolve_compile(RunConfig(compile="off"), cuda) is None
    assert resolve_compile(RunConfig(), cuda) is not None  # auto: compiled on CUDA ...
    assert resolve_compile(RunConfig(method="automix"), cuda) is None  # ... where the registry says it pays
    assert resolve_compile(RunConfig(method="automix", compile="default"), cuda) == "default"
    assert resolve_compile(RunConfig(), cuda, world=2) is None  # DDP: eager unless asked
    assert autocast_dtype("fp32", cuda) == torch.float32
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="compile must be one of"):
        RunConfig(compile="fast")
    with pytest.raises(ValueError, match="precision must be one of"):
        RunConfig(precision="fp16")


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path, monkeypatch):
    """The Trainer's compiled path, the whole step captured: one step's loss and gradients through inductor, then
    two epochs (train, eval through the compiled ``eval_logits``, checkpoint) against the eager run, the run's
    torch.compile calls through aot_eager (the same capture and autograd graphs; inductor's C++ build of the eval
    and second-shape graphs cost ~50 s more on a cold cache, 2 cores)."""
    cfg = RunConfig(method="mixup", profile="test", epochs=2, device="cpu", precision="fp32", compile="default",
                    capture="step")
    eager = replace(cfg, compile="off")
    cpu = torch.device("cpu")
    assert_same_step(one_step(eager, cpu), one_step(cfg, cpu))

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: compile_(fn, backend="aot_eager",
                                                                                       dynamic=dynamic))
    fit(cfg, tmp_path / "compiled", progress="none")
    monkeypatch.setattr(torch, "compile", compile_)
    fit(eager, tmp_path / "eager", progress="none")
    ca = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    assert ca["model"].keys() == cb["model"].keys()  # compiled in place: no "_orig_mod." prefix
    for k in ca["model"]:
        torch.testing.assert_close(ca["model"][k], cb["model"][k], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(ca["rows"], cb["rows"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["manifoldmix", "puzzlemix", "automix"])
def test_captured_graphs_match_eager(method):
    cfg = RunConfig(method=method, profile="test", device="cpu", precision="fp32", compile="off")
    cpu = torch.device("cpu")
    assert_same_step(one_step(cfg, cpu), one_step(cfg, cpu, backend="aot_eager"))


def snapshot(model: torch.nn.Module, method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's and the method's state (method keys prefixed "method.")."""
    state = {**model.state_dict(), **{f"method.{k}": v for k, v in method.state_dict().items()}}
    return {k: v.detach().clone() for k, v in state.items()}


def train_steps(cfg: RunConfig, n: int, backend: Any = None, *, batch: int = 16, logits: bool = True,
                device: torch.device = torch.device("cpu")) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """The losses of ``n`` Trainer steps (``train_step``: SGD and ``on_step_end`` included) on fixed batches of
    ``batch`` images, and the model's and method's state after each step, the last with (``logits``) the eval logits
    of each head on the last batch (key "logits.<head>"); ``backend`` replaces inductor in every torch.compile call."""
    if backend is None:
        parts = build_parts(cfg, device, num_classes=4, run_dir=None)
    else:
        compile_ = torch.compile
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: compile_(fn, backend=backend,
                                                                                         dynamic=dynamic))
            parts = build_parts(cfg, device, num_classes=4, run_dir=None)
    model, method, optimizer, autocast = parts
    gens = Generators.from_seed(cfg.seed, device)
    ctx = StepContext(gen=gens.mix, cpu_gen=gens.host, total_steps=10)
    losses, states = [], []
    for i in range(n):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(i)).to(device)  # (N, C, H, W)
        y = torch.arange(batch, device=device) % 4
        losses.append(train_step(model, method, x, y, optimizer, ctx, autocast=autocast).loss.item())
        states.append(snapshot(model, method))  # read now: a CUDA-graph replay reuses its outputs' memory
    if logits:
        model.eval()
        method.eval()
        new_cuda_graph_step(x)
        with torch.inference_mode(), autocast:  # as ``evaluate``
            states[-1].update({f"logits.{head}": v.clone() for head, v in method.eval_logits(model, x).items()})
    return losses, states


@contextlib.contextmanager
def recompile_limit(limit: int) -> Iterator[None]:
    """Fail when any frame compiles more than ``limit`` graphs; ``build_parts`` raises torch's limit to its own
    RECOMPILE_LIMIT (32), which is lowered with it, else a per-step recompile would pass unseen for 32 steps."""
    with pytest.MonkeyPatch.context() as patch, \
            torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
        patch.setattr(mixnb.train, "RECOMPILE_LIMIT", limit)
        yield


# one method per shape of step: a draw then tensor code (MixUp; FMix, GridMix, SmoothMix, ResizeMix and CutMix's
# CUDA paste alike: test_cuda_graphs_match_eager has CutMix); the mixing layer drawn on the host (ManifoldMix: one
# graph per layer); graph cuts in numpy between two model passes (PuzzleMix); four passes of two encoders and the
# MixBlock with its value neck (SAMix; AutoMix is the same step without the neck). AdAutoMix is left out: 50 s here.
STEP_MATCH_METHODS = ["mixup", "manifoldmix", "puzzlemix", "samix"]


@pytest.mark.slow
@pytest.mark.parametrize("method", STEP_MATCH_METHODS)
def test_captured_step_matches_eager(method):
    """capture="step": five Trainer steps give eager's losses, weights after each step and eval logits (the draws
    stay eager, so they are the same numbers; measured: losses equal, weights equal but SAMix's, within 1e-7:
    autograd's order of summing the gradients of a weight used twice), and no frame of the step recompiles on every
    step (limit 3, failing)."""
    cfg = RunConfig(method=method, profile="test", device="cpu", precision="fp32", compile="default", capture="step")
    eager_losses, eager_states = train_steps(replace(cfg, compile="off"), 5)
    graphs = []

    def recorded(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        graphs.append(gm.code)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    torch._dynamo.reset()
    with recompile_limit(3):
        losses, states = train_steps(cfg, 5, backend=recorded)
    # the step is captured: a forward pass and its loss in one graph (the model's own capture has no loss)
    assert any("conv2d" in code and "log_softmax" in code for code in graphs), f"{len(graphs)} graphs, none with both"
    assert losses == pytest.approx(eager_losses, rel=LOSS_RTOL, abs=0)
    for step, (state, eager_state) in enumerate(zip(states, eager_states, strict=True)):
        assert state.keys() == eager_state.keys()  # compiled in place: no "_orig_mod." anywhere
        for key, value in state.items():
            torch.testing.assert_close(value, eager_state[key], rtol=1e-5, atol=1e-6, msg=f"step {step}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in REGISTRY if m not in STEP_MATCH_METHODS])
def test_every_method_captures_its_step_without_per_step_recompiles(method, monkeypatch):
    """capture="step" for every registered method (multi-mode, AlignMix and AdAutoMix included; the methods of
    test_captured_step_matches_eager are held to the same recompile limit there, so not compiled twice): four Trainer
    steps, ctx.step advancing, compile no frame more than three times (ManifoldMix's three layers are three
    graphs of one frame), so nothing that changes every step (a Python int such as ctx.step) is read inside the
    captured step. Width 4, batch 8 and the "eager" backend: guards and recompiles are dynamo's, so the graphs it
    captures need not be run through AOTAutograd or inductor here (test_captured_step_matches_eager does that)."""
    teacher = attentivemix_module.Teacher(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                                              torch.nn.AdaptiveAvgPool2d(7)), "test")
    monkeypatch.setenv(attentivemix_module.TEACHER_ENV, "unused")  # AttentiveMix+: a tiny teacher, not a file
    monkeypatch.setattr(attentivemix_module, "imagenet_teacher", lambda path: teacher)
    cfg = RunConfig(method=method, profile="test", width=4, device="cpu", precision="fp32", compile="default",
                    capture="step")
    torch._dynamo.reset()
    with recompile_limit(3):
        losses, _ = train_steps(cfg, 4, backend="eager", batch=8, logits=False)
    assert all(map(math.isfinite, losses)), losses


def test_step_capture_is_opt_in():
    """compile="auto" keeps the measured capture (the model's passes); "step" is chosen by name only."""
    assert RunConfig().capture == "model"
    model, method, _, _ = build_parts(RunConfig(profile="test", device="cpu", compile="off", capture="step"),
                                      torch.device("cpu"), num_classes=4, run_dir=None)
    assert "training_step" not in vars(method) and "eval_logits" not in vars(method)  # compile off: no capture
    step = RunConfig(capture="step", compile="reduce-overhead")
    assert (step.maths(), step.run_name()) == (RunConfig().maths(), RunConfig().run_name())  # not the run's identity
    with pytest.raises(ValueError, match="capture must be one of model, step"):
        RunConfig(capture="all")


CUDA_STEPS = 4  # cudagraph trees run a graph's first call eagerly (warm-up), record the second, replay the rest
BF16_TOL = 2e-2  # of a tensor's largest |entry|: bf16 rounding of eager kernels against inductor's fused ones


@contextlib.contextmanager
def cuda_graph_counts() -> Iterator[Counter[str]]:
    """While open, count the CUDA graphs that cudagraph trees record ("record_function") and replay
    ("execute_node"): every recording and every replay goes through these two ``CUDAGraphTreeManager`` methods
    (torch 2.1 to 2.14, read in their source); a missing one fails here (``setattr`` with raising)."""
    from torch._inductor import cudagraph_trees

    manager, counts = cudagraph_trees.CUDAGraphTreeManager, Counter()

    def counted(name: str) -> Callable[..., Any]:
        method = getattr(manager, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return run

    with pytest.MonkeyPatch.context() as patch:
        for name in ("record_function", "execute_node"):
            patch.setattr(manager, name, counted(name))
        yield counts


def test_cuda_graph_counts_wrap_and_restore_torchs_methods():
    """The CPU part of test_cuda_graphs_match_eager: the methods it counts exist in this torch, calls reach them
    through the counter, and they are restored after."""
    from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

    originals = {name: getattr(CUDAGraphTreeManager, name) for name in ("record_function", "execute_node")}
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for name in originals:  # stand-ins that record their arguments, so no CUDA is needed
            patch.setattr(CUDAGraphTreeManager, name, lambda self, *args, _name=name: calls.append((_name, args)))
        with cuda_graph_counts() as counts:
            manager = object.__new__(CUDAGraphTreeManager)  # no __init__: it allocates a CUDA graph pool
            manager.record_function(["x"], 0)
            manager.execute_node("node", ["x"])
            manager.execute_node("node", ["y"])
        assert counts == {"record_function": 1, "execute_node": 2}
        assert calls == [("record_function", (["x"], 0)), ("execute_node", ("node", ["x"])),
                         ("execute_node", ("node", ["y"]))]
    assert {name: getattr(CUDAGraphTreeManager, name) for name in originals} == originals


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (scripts/gpu_check.sh runs this)")
@pytest.mark.parametrize(("method", "capture"), [("vanilla", "model"), ("manifoldmix", "model"), ("automix", "model"),
                                               ("cutmix", "step"), ("manifoldmix", "step"), ("samix", "step")])
def test_cuda_graphs_match_eager(method, capture):
    """On CUDA in bf16, as trained: four Trainer steps of the CUDA-graph build (compile "reduce-overhead", either
    capture) record graphs and replay them, and after every step give eager's loss (2e-2 relative) and state (2e-2
    of each tensor's largest entry; integer buffers equal). Each step has its own batch, so a replay reading a
    stale static input or a loss read after a later replay overwrote it would differ. ManifoldMix's first four
    host draws at the default seed are all "layer2", so its graph replays too."""
    cfg = RunConfig(method=method, profile="test", device="cuda", compile="reduce-overhead", capture=capture)
    cuda = torch.device("cuda")
    eager_losses, eager_states = train_steps(replace(cfg, compile="off"), CUDA_STEPS, logits=False, device=cuda)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with cuda_graph_counts() as counts:
        losses, states = train_steps(cfg, CUDA_STEPS, logits=False, device=cuda)
    skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
    assert counts["record_function"] > 0 and counts["execute_node"] > 0, f"{dict(counts)}, {skips} cudagraph skips"
    for step in range(CUDA_STEPS):
        assert losses[step] == pytest.approx(eager_losses[step], rel=BF16_TOL), f"step {step}"
        assert states[step].keys() == eager_states[step].keys()
        for key, want in eager_states[step].items():
            got = states[step][key]
            if not want.is_floating_point():
                assert torch.equal(got, want), f"step {step}: {key}"
                continue
            scale, worst = want.abs().max().item(), (got.float() - want.float()).abs().max().item()
            assert worst <= BF16_TOL * scale, f"step {step}: {key} differs by {worst:.3g} (largest entry {scale:.3g})"
