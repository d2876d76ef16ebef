"""AlignMix: the Sinkhorn plan, the pure core with hand-made draws, the model hook, the per-step mode switch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY, get_method, mixed_cross_entropy, soft_target
from mixnb.mixups import alignmix as alignmix_module
from mixnb.mixups.alignmix import (AlignMix, AlignMixDraw, FeatureAlign, alignmix, sample_alignmix, sinkhorn_plan,
                                   transport_mix)
from mixnb.mixups.manifoldmix import sample_manifoldmix
from mixnb.models import FeatureMix, build_model
from mixnb.train import fit

from helpers import K, batch, ctx, gen, tiny_model  # tests/helpers.py, on sys.path

HOST_SEED = 4242  # the host generator's seed: how the probe below tells its draws from the device stream's


def points(n: int = 4, p: int = 16, c: int = 8, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(N, P, C) non-negative point sets, like post-ReLU features."""
    return torch.rand(n, p, c, generator=gen(seed)) * scale


def draw(n: int, lam: float, direction: int, perm: torch.Tensor | None = None) -> AlignMixDraw:
    return AlignMixDraw(torch.tensor(lam), torch.arange(n).roll(1) if perm is None else perm, direction)


def reference_plan(a: torch.Tensor, b: torch.Tensor, eps: float = 0.1, max_iter: int = 100,
                   thresh: float = 0.1) -> tuple[torch.Tensor, int]:
    """The iteration as docs/methods.md §3 writes it: potentials u, v; M = (-C + u_i + v_j) / eps; u, then v
    from the new u; stop on a host read once mean_n sum_i |u - u_prev| < thresh. Returns (plan, iterations)."""
    cost = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)  # (N, P, Q) the difference tensor
    n, p, q = cost.shape
    u, v = torch.zeros(n, p), torch.zeros(n, q)
    def m(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (-cost + u[:, :, None] + v[:, None, :]) / eps

    for it in range(1, max_iter + 1):
        u_prev = u
        u = eps * (math.log(1 / p + 1e-8) - torch.logsumexp(m(u, v), dim=2)) + u
        v = eps * (math.log(1 / q + 1e-8) - torch.logsumexp(m(u, v), dim=1)) + v
        if (u - u_prev).abs().sum(1).mean().item() < thresh:
            break
    return torch.exp(m(u, v)), it


# ---------------------------------------------------------------------------- the Sinkhorn plan


def test_plan_rows_and_columns_sum_to_the_marginals():
    a, b = points(), points(seed=1)
    plan = sinkhorn_plan(a, b)  # (N, P, Q) the defaults: 100 iterations at most, stopped by tol
    assert plan.shape == (4, 16, 16) and plan.dtype == torch.float32 and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), torch.full((4, 16), 1 / 16), rtol=1e-5, atol=0)  # v's update: exact
    torch.testing.assert_close(plan.sum(2), torch.full((4, 16), 1 / 16), rtol=0.3, atol=0)  # the early stop's slack
    plan = sinkhorn_plan(a, b, max_iter=500, tol=0.0)  # converged (costs ~1, eps 0.1)
    torch.testing.assert_close(plan.sum(1), torch.full((4, 16), 1 / 16), rtol=1e-5, atol=0)
    torch.testing.assert_close(plan.sum(2), torch.full((4, 16), 1 / 16), rtol=1e-4, atol=0)
    rect = sinkhorn_plan(a[:, :12], b, max_iter=500, tol=0.0)  # P != Q: marginals 1/12 and 1/16
    torch.testing.assert_close(rect.sum(1), torch.full((4, 16), 1 / 16), rtol=1e-5, atol=0)
    torch.testing.assert_close(rect.sum(2), torch.full((4, 12), 1 / 12), rtol=1e-4, atol=0)


@pytest.mark.parametrize("scale, iterations", [(0.3, 2), (1.0, 7), (3.0, 51), (8.0, 100)])
def test_plan_matches_the_reference_iteration_and_its_early_stop(scale, iterations):
    """Frozen potentials reproduce the reference's host-read break; the expanded cost its difference tensor."""
    a, b = points(scale=scale), points(scale=scale, seed=1)
    want, its = reference_plan(a, b)
    assert its == iterations  # the stop rule fires early at small costs, never at large ones
    # float rounding only: potentials of ~cost / eps (up to ~600 here) carry ~1e-4 relative into exp
    ours = sinkhorn_plan(a, b)
    torch.testing.assert_close(ours, want, rtol=1e-3, atol=1e-6)
    if its < 100:  # without the stop rule the plan goes on converging: the rule matters beyond rounding
        assert (sinkhorn_plan(a, b, tol=0.0) - want).abs().max() > 100 * (ours - want).abs().max()
    torch.testing.assert_close(sinkhorn_plan(a, b, tol=0.0), reference_plan(a, b, thresh=-1.0)[0], rtol=1e-3,
                               atol=1e-6)


def test_aligning_to_itself_or_a_shuffled_copy_gives_the_permutation():
    a = points(n=3, p=16, c=8)
    r = sinkhorn_plan(a, a, eps=1e-3, tol=0.0) * 16  # (N, P, P) assignment
    torch.testing.assert_close(r, torch.eye(16).expand(3, 16, 16), rtol=0, atol=1e-3)
    shuffle = torch.randperm(16, generator=gen(5))
    r = sinkhorn_plan(a, a[:, shuffle], eps=1e-3, tol=0.0) * 16  # a's point i is b's point j where shuffle[j] = i
    assert torch.equal(r.argmax(2), shuffle.argsort().expand(3, 16)) and (r.amax(2) > 0.999).all()
    # the partner moved onto the image's positions is the image again
    b = a[:, shuffle].transpose(1, 2)  # (N, C, P)
    back = transport_mix(a.transpose(1, 2), b, r / 16, torch.tensor(0.0), 0)
    torch.testing.assert_close(back, a.transpose(1, 2), rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------- the pure core


def test_core_at_lam_one_is_the_identity_and_at_lam_zero_the_partner():
    feat = torch.rand(5, 8, 4, 4, generator=gen())
    out, lam = alignmix(feat, draw(5, 1.0, 0))
    assert torch.equal(out, feat) and lam.item() == 1.0  # the partner's aligned map has weight 0
    perm = torch.tensor([4, 3, 2, 1, 0])
    out, _ = alignmix(feat, draw(5, 0.0, 1, perm))
    assert torch.equal(out, feat[perm])  # direction 1 keeps the partner's positions
    out, _ = alignmix(feat, draw(5, 1.0, 1, perm), tol=0.0)  # the image moved onto the partner's positions
    torch.testing.assert_close(out.mean((2, 3)), feat.mean((2, 3)), rtol=1e-3, atol=1e-4)  # its pooled features


def test_core_is_the_formula_with_gradients_through_the_maps_only():
    feat = torch.rand(3, 6, 2, 4, generator=gen(), requires_grad=True)
    perm, lam = torch.tensor([2, 0, 1]), 0.3
    a = feat.detach().flatten(2)  # (N, C, P)
    plan = sinkhorn_plan(a.transpose(1, 2), a[perm].transpose(1, 2))  # (N, P, P)
    assert not plan.requires_grad
    r = plan * 8
    out0, got_lam = alignmix(feat, draw(3, lam, 0, perm))
    torch.testing.assert_close(out0.flatten(2), lam * a + (1 - lam) * a[perm] @ r.transpose(1, 2))
    out1, _ = alignmix(feat, draw(3, lam, 1, perm))
    torch.testing.assert_close(out1.flatten(2), lam * a @ r + (1 - lam) * a[perm])
    assert got_lam.item() == pytest.approx(lam) and out0.shape == feat.shape
    out0.sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


def test_core_computes_in_float32_under_bf16_autocast():
    feat = torch.rand(4, 8, 4, 4, generator=gen()).bfloat16()
    d = draw(4, 0.6, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = alignmix(feat, d)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, alignmix(feat.float(), d)[0].bfloat16())  # the same float32 maths, rounded once


def test_hook_is_the_core_after_layer4():
    model, (x, _) = tiny_model(random_affine=True).eval(), batch()
    d = sample_alignmix(5, gen=gen(1), cpu_gen=gen(2), alpha=2.0)
    mixed, _ = alignmix(model.forward_stages(x)[-1], d)
    torch.testing.assert_close(model(x, mix=FeatureAlign(d)), model.forward_head(mixed), rtol=0, atol=0)
    assert FeatureAlign(d).stage == "layer4"


# ---------------------------------------------------------------------------- sampler, method, registry


def test_sampler_ranges_and_seeded_reproduction():
    a = sample_alignmix(7, gen=gen(3), cpu_gen=gen(4), alpha=2.0)
    b = sample_alignmix(7, gen=gen(3), cpu_gen=gen(4), alpha=2.0)
    assert 0 < a.lam.item() < 1 and a.lam.shape == () and sorted(a.perm.tolist()) == list(range(7))
    assert torch.equal(a.lam, b.lam) and torch.equal(a.perm, b.perm) and a.direction == b.direction
    dirs = [sample_alignmix(2, gen=gen(), cpu_gen=g, alpha=2.0).direction for g in [gen(9)] for _ in range(2000)]
    assert set(dirs) == {0, 1} and abs(sum(dirs) / 2000 - 0.5) < 4 * math.sqrt(0.25 / 2000)


@pytest.mark.parametrize("align_prob", [0.5, 1.0, 0.0])
@pytest.mark.parametrize("n", [1, 3])
def test_steps_reproduce_from_the_seeds_on_odd_and_size_one_batches(align_prob, n):
    model, (x, y) = tiny_model(random_affine=True), batch(n)
    method = get_method("alignmix", align_prob=align_prob)
    losses = [method.training_step(model, x, y, ctx(s, cpu_seed=HOST_SEED)).loss for s in (0, 0, 1, 2, 3)]
    assert all(torch.isfinite(v) and v.shape == () for v in losses)
    assert torch.equal(losses[0], losses[1])
    if n > 1:  # alone, an image mixes with itself: ManifoldMix then leaves it as it is, whatever lam
        assert len({v.item() for v in losses[1:]}) > 1


def test_exact_lam_reaches_the_loss():
    model, (x, y) = tiny_model(random_affine=True), batch(6)
    method = get_method("alignmix", align_prob=1.0)
    c = ctx(7, cpu_seed=HOST_SEED)
    replay = ctx(7, cpu_seed=HOST_SEED)
    assert method.draw_mode(replay.cpu_gen) == "alignmix"
    d = sample_alignmix(6, gen=replay.gen, cpu_gen=replay.cpu_gen, alpha=2.0)
    loss = method.training_step(model, x, y, c).loss
    logits = model(x, mix=FeatureAlign(d))
    target = soft_target(y, y[d.perm], d.lam, K)  # (N, K)
    torch.testing.assert_close(target.sum(1), torch.ones(6))
    assert torch.equal(loss, mixed_cross_entropy(logits, y, y[d.perm], d.lam))
    torch.testing.assert_close(loss, -(target * logits.log_softmax(1)).sum(1).mean())


class Record(nn.Module):
    """A stand-in model that records which hook each step passes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.seen = nn.Linear(3, K), []

    def forward(self, x, mix=None):
        self.seen.append(type(mix).__name__ if not isinstance(mix, FeatureMix) else f"FeatureMix:{mix.stage}")
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("align_prob", [0.5, 0.25, 0.0, 1.0])
def test_mode_switch_frequencies_match_the_probabilities(align_prob):
    method = get_method("alignmix", align_prob=align_prob)
    g, draws = gen(11), 4000
    share = sum(method.draw_mode(g) == "alignmix" for _ in range(draws)) / draws
    assert abs(share - align_prob) <= 4 * math.sqrt(align_prob * (1 - align_prob) / draws)
    # the step takes the drawn branch: a replay of the host stream predicts each step's hook
    model, (x, y), c, replay = Record(), batch(2), ctx(1, cpu_seed=HOST_SEED), ctx(1, cpu_seed=HOST_SEED)
    want = []
    for _ in range(60):
        method.training_step(model, x, y, c)
        if method.draw_mode(replay.cpu_gen) == "alignmix":
            sample_alignmix(2, gen=replay.gen, cpu_gen=replay.cpu_gen, alpha=2.0)
            want.append("FeatureAlign")
        else:
            want.append(f"FeatureMix:{sample_manifoldmix(2, gen=replay.gen, cpu_gen=replay.cpu_gen, alpha=2.0).stage}")
    assert model.seen == want
    assert {s for s in want if s != "FeatureAlign"} <= {"FeatureMix:input", "FeatureMix:layer1", "FeatureMix:layer2"}


def test_registry_entry_is_openmixups_tiny_config():
    spec = REGISTRY["alignmix"]
    names = list(REGISTRY)
    assert names.index("alignmix") == names.index("gridmix") + 1 and spec.cls is AlignMix
    assert spec.defaults == {"alpha": 2.0, "manifold_alpha": None, "layers": ("input", "layer1", "layer2"),
                             "align_prob": 0.5, "eps": 0.1, "max_iter": 100, "tol": 0.1}
    assert spec.label == "AlignMix" and not spec.reproduced and not spec.sweep
    assert spec.published == {"resnet18": 66.87} and spec.published_alpha == 2.0 and "authors" in spec.note
    method = get_method("alignmix")
    assert method.manifold.alpha == 2.0 and method.manifold.layers == ("input", "layer1", "layer2")  # not 0.2
    assert get_method("alignmix", alpha=1.0).manifold.alpha == 1.0  # one alpha for both, as alpha [2, 2]
    assert get_method("alignmix", manifold_alpha=0.2).manifold.alpha == 0.2
    assert get_method("alignmix", layers=["input"]).manifold.layers == ("input",)  # the official code's mixup


@pytest.mark.parametrize("setting, value, says", [
    ("alpha", 0.0, "> 0"), ("manifold_alpha", -1.0, "> 0"), ("align_prob", 1.5, "[0, 1]"),
    ("align_prob", True, "[0, 1]"), ("eps", 0.0, "> 0"), ("eps", math.inf, "> 0"), ("max_iter", 0, ">= 1"),
    ("max_iter", 2.5, "an int"), ("tol", -0.1, ">= 0"), ("layers", ("layer9",), "names from"),
])
def test_bad_settings_fail_clearly(setting, value, says):
    with pytest.raises(ValueError) as err:
        get_method("alignmix", **{setting: value})
    assert setting in str(err.value) and repr(value) in str(err.value) and says in str(err.value)


def test_preview_moves_the_partners_cells_with_exact_lam(monkeypatch):
    model, (x, y) = tiny_model(random_affine=True).eval(), batch(4)
    method = get_method("alignmix")
    perm = torch.tensor([1, 2, 3, 0])
    for lam, direction, want in [(1.0, 0, x), (0.0, 1, x[perm])]:
        fixed = draw(4, lam, direction, perm)
        monkeypatch.setattr(alignmix_module, "sample_alignmix", lambda *a, fixed=fixed, **k: fixed)
        b = method.preview(model, x, y, gen=gen())
        assert torch.equal(b.x, want) and torch.equal(b.y_b, y[perm]) and b.lam.item() == lam
    monkeypatch.undo()
    b = method.preview(model, x, y, gen=gen(3))
    assert b.x.shape == x.shape and torch.isfinite(b.x).all() and 0 < b.lam.item() < 1


# ---------------------------------------------------------------------------- the Trainer, host reads, capture


@pytest.mark.parametrize("args", [{}, {"align_prob": 1.0}])  # the test profile's epoch is one step: both branches
def test_one_epoch_through_the_trainer(args, tmp_path):
    cfg = RunConfig(method="alignmix", profile="test", epochs=1, device="cpu", method_args=args)
    summary = fit(cfg, tmp_path, progress="none")
    assert 0 <= summary["median_top1"] <= 100 and summary["method"] == "alignmix"


class DeviceReads(TorchDispatchMode):
    """Host reads of tensor data (``.item()``, ``int()``, ``bool()``) and tensors made from host data, except
    reads of a draw on the host generator (seeded HOST_SEED): on CUDA the others are a sync or a copy."""

    def __init__(self) -> None:
        super().__init__()
        self.host_draws: list[torch.Tensor] = []  # kept alive so their data_ptr is not reused
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        gens = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Generator)]
        if any(g.initial_seed() == HOST_SEED for g in gens):
            self.host_draws.append(out)
        host = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default)
        if func in host and not any(args[0].data_ptr() == t.data_ptr() for t in self.host_draws):
            self.seen.append(str(func))
        return out


def test_step_reads_no_device_tensor_on_the_host():
    model, (x, y) = tiny_model(random_affine=True), batch(4)
    c = ctx(0, cpu_seed=HOST_SEED)
    with DeviceReads() as probe:  # the probe works: a device-stream read is caught, a host draw is not
        int(torch.randint(3, (), generator=c.cpu_gen))
        torch.rand((), generator=c.gen).item()
    assert probe.seen == ["aten._local_scalar_dense.default"]
    for align_prob in (1.0, 0.0):
        method = get_method("alignmix", align_prob=align_prob)
        with DeviceReads() as probe:
            for _ in range(2):
                method.training_step(model, x, y, c).loss.backward()
        assert probe.seen == [] and len(probe.host_draws) == 4  # per step: the mode and the direction (layer)


def test_captured_graph_matches_eager():
    """torch.compile's capture (aot_eager: the Trainer's graphs without code generation) of the hooked forward."""
    torch._dynamo.reset()
    model, (x, y) = tiny_model(random_affine=True), batch(4)
    method = get_method("alignmix", align_prob=1.0, max_iter=2)
    eager = method.training_step(model, x, y, ctx(0, cpu_seed=HOST_SEED)).loss
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.compile(backend="aot_eager", dynamic=False)
    compiled = method.training_step(model, x, y, ctx(0, cpu_seed=HOST_SEED)).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def test_preview_under_bf16_autocast():
    """make bench and the galleries call preview under the run's autocast (bf16 on CUDA and AMX CPUs)."""
    model = build_model("resnet18", num_classes=4, width=8).eval()
    x, y = torch.randn(4, 3, 64, 64), torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = get_method("alignmix").preview(model, x, y, gen=torch.Generator().manual_seed(0))
    assert batch.x.dtype == torch.float32 and torch.isfinite(batch.x).all()
