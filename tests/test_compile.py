"""Compiled training (RunConfig.compile) against eager: the same loss, gradients and checkpoints.

On the CPU, inductor compiles the model as the Trainer does on CUDA (``build_parts``), in fp32 so
the comparison is tight. Tolerance: float reassociation only, so the loss agrees to 1e-5 relative
and every gradient to 1e-4 of the largest gradient entry (measured: 0 and 5e-7 with
inductor, exactly 0 with aot_eager). Methods that
call the model in other ways (ManifoldMix's feature hook, PuzzleMix's input-gradient pass, AutoMix's
two encoders) are checked through the ``aot_eager`` backend: the same capture and autograd graphs
without inductor's code generation, in seconds rather than a minute. CUDA graphs (compile mode
"reduce-overhead") need a GPU: ``test_cuda_graphs_match_eager`` runs in scripts/gpu_check.sh.
"""

from dataclasses import replace

import pytest
import torch

from mixnb.config import RunConfig
from mixnb.config import resolve_precision
from mixnb.train import Generators, build_parts, fit, resolve_compile
from mixnb.mixups import StepContext

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
    assert resolve_precision(RunConfig(precision="fp32"), cuda) == torch.float32
    assert resolve_precision(RunConfig(precision="bf16"), cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="compile must be one of"):
        RunConfig(compile="fast")
    with pytest.raises(ValueError, match="precision must be one of"):
        RunConfig(precision="fp16")


def test_inductor_compiled_run_matches_eager(tmp_path):
    """The Trainer's compiled path end to end: one step's loss and gradients, then two epochs
    (train, eval, checkpoint) against the eager run."""
    cfg = RunConfig(method="vanilla", profile="test", epochs=2, device="cpu", precision="fp32", compile="default")
    eager = replace(cfg, compile="off")
    cpu = torch.device("cpu")
    assert_same_step(one_step(eager, cpu), one_step(cfg, cpu))

    fit(cfg, tmp_path / "compiled", progress="none")
    fit(eager, tmp_path / "eager", progress="none")
    ca = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    assert ca["model"].keys() == cb["model"].keys()  # compiled in place: no "_orig_mod." prefix
    for k in ca["model"]:
        torch.testing.assert_close(ca["model"][k], cb["model"][k], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(ca["rows"], cb["rows"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)


@pytest.mark.parametrize("method", ["manifoldmix", "puzzlemix", "automix"])
def test_captured_graphs_match_eager(method):
    cfg = RunConfig(method=method, profile="test", device="cpu", precision="fp32", compile="off")
    cpu = torch.device("cpu")
    assert_same_step(one_step(cfg, cpu), one_step(cfg, cpu, backend="aot_eager"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (scripts/gpu_check.sh runs this)")
@pytest.mark.parametrize("method", ["vanilla", "manifoldmix", "automix"])
def test_cuda_graphs_match_eager(method):
    """On CUDA in bf16, as trained: the CUDA-graph step (compile "reduce-overhead") against eager
    (bf16 rounding: looser tolerance, 2e-2 of the largest gradient)."""
    cfg = RunConfig(method=method, profile="test", device="cuda", compile="reduce-overhead")
    cuda = torch.device("cuda")
    (loss_a, grads_a), (loss_b, grads_b) = one_step(replace(cfg, compile="off"), cuda), one_step(cfg, cuda)
    torch.testing.assert_close(loss_a, loss_b, rtol=2e-2, atol=0)
    scale = max(g.abs().max().item() for g in grads_a)
    worst = max((ga.float() - gb.float()).abs().max().item() for ga, gb in zip(grads_a, grads_b))
    assert worst <= 2e-2 * scale, f"gradients differ by {worst:.3g} (largest entry {scale:.3g})"
