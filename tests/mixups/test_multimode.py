"""Multi-mode mixing ("mixup+cutmix"): the registry entry and its settings, the mode switch's frequencies, seeded
steps that run the drawn method, and a Trainer epoch of it beside one of CutMix with DecoupleMix's loss."""

import json
import math

import pytest
import torch

from mixnb.config import RunConfig, parse_method_args
from mixnb.mixups import get_method, get_spec, mixed_cross_entropy
from mixnb.mixups.multimode import MultiMode
from mixnb.sweep import expand
from mixnb.train import fit

from helpers import batch, ctx, gen, tiny_model  # tests/helpers.py, on sys.path

K = 10


def test_multimode_registry_entry_and_run_name():
    spec = get_spec("mixup+cutmix")
    assert spec.cls is MultiMode and spec.label == "MixUp+CutMix" and not spec.sweep and spec.published == {}
    assert spec.defaults == {"mix_modes": ("mixup", "cutmix"), "mix_prob": (0.5, 0.5), "alphas": (0.8, 1.0)}
    method = get_method("mixup+cutmix")
    assert [(m.name, m.alpha) for m in method.modes] == [("mixup", 0.8), ("cutmix", 1.0)]
    cfg = RunConfig(method="mixup+cutmix")
    assert cfg.run_name() == "mixup+cutmix-resnet18-s0"
    assert "mixup+cutmix" not in [j.config.method for j in expand("test")]  # not in the default sweep
    # plain JSON values, typed from the CLI like any list setting
    assert json.loads(json.dumps(cfg.full_method_args()))["mix_modes"] == ["mixup", "cutmix"]
    typed = RunConfig(method="mixup+cutmix", method_args=parse_method_args("mix_prob=[0.25,0.75],alphas=[1,2]"))
    assert typed.method_args == {"mix_prob": (0.25, 0.75), "alphas": (1.0, 2.0)}
    assert RunConfig.from_dict(typed.to_dict()) == typed
    om_tiny = get_method("mixup+cutmix", mix_modes=["mixup", "cutmix", "vanilla"], mix_prob=[1 / 3] * 3,
                         alphas=[0.1, 1, 1])  # OpenMixup's Tiny multi-mode config (vanilla ignores its alpha)
    assert [m.name for m in om_tiny.modes] == ["mixup", "cutmix", "vanilla"] and om_tiny.modes[0].alpha == 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"mix_modes": "mixup"}, "mix_modes must be a non-empty list"),
    ({"mix_modes": [], "mix_prob": [], "alphas": []}, "mix_modes must be a non-empty list"),
    ({"mix_prob": [1.0]}, r"one value per mode \(2: \['mixup', 'cutmix'\]\)"),
    ({"alphas": [1.0, 1.0, 1.0]}, "one value per mode"),
    ({"mix_prob": [0.5, 0.4]}, r"summing to 1, one per mode, got \[0.5, 0.4\]"),
    ({"mix_prob": [1.5, -0.5]}, r">= 0 summing to 1, one per mode, got \[1.5, -0.5\]"),
    ({"alphas": [0.8, 0.0]}, r"alphas must be numbers > 0 .* got \[0.8, 0.0\]"),
    ({"mix_modes": ["mixup", "mixupp"]}, "mix_modes: unknown method 'mixupp'; valid methods: vanilla"),
    ({"mix_modes": ["mixup", "automix"]}, "'automix' has its own param_groups, on_step_end, eval_logits"),
    ({"mix_modes": ["mixup", "mixup+cutmix"]}, "'mixup\\+cutmix' is itself multi-mode"),
])
def test_multimode_bad_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_method("mixup+cutmix", **kwargs)


def test_multimode_switches_with_the_given_probabilities():
    draws = 2000
    for prob in ([0.5, 0.5], [0.2, 0.3, 0.5], [0.0, 1.0]):
        method = get_method("mixup+cutmix", mix_modes=["mixup", "cutmix", "fmix"][: len(prob)], mix_prob=prob,
                            alphas=[1.0] * len(prob))
        g = gen(11)
        counts = torch.bincount(torch.tensor([method.draw_mode(g) for _ in range(draws)]), minlength=len(prob))
        for count, p in zip(counts.tolist(), prob):
            sd = math.sqrt(draws * p * (1 - p))  # binomial; 4.5 sd ~ 100 draws at p = 0.5: 0.6 would be 200 off
            assert abs(count - draws * p) <= 4.5 * sd, (prob, counts)
    assert 4.5 * math.sqrt(draws * 0.25) < draws * (0.6 - 0.5)  # the tolerance tells 0.5 from 0.6


def test_multimode_is_seeded_and_runs_the_drawn_method():
    x, y = batch(6, num_classes=K)
    model = tiny_model(num_classes=K, width=4)
    a, b = get_method("mixup+cutmix"), get_method("mixup+cutmix")
    ctx_a, ctx_b = ctx(5), ctx(5)
    seen = set()
    for _ in range(6):
        mode = a.draw_mode(gen(0).set_state(ctx_a.cpu_gen.get_state()))  # the mode the next step draws
        mix_state = ctx_a.gen.get_state()
        out_a, out_b = a.training_step(model, x, y, ctx_a), b.training_step(model, x, y, ctx_b)
        assert torch.equal(out_a.loss, out_b.loss)  # same seeds, same steps
        mixed = a.modes[mode].mix(x, y, gen=gen(0).set_state(mix_state))
        assert torch.equal(out_a.loss, mixed_cross_entropy(model(mixed.x), mixed.y_a, mixed.y_b, mixed.lam))
        seen.add(mode)
    assert seen == {0, 1}
    preview = a.preview(model, x, y, gen=gen(7))
    assert preview.x.shape == x.shape and torch.equal(preview.y_a, y)


# --- through the Trainer ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, method_args", [("mixup+cutmix", {}), ("cutmix", {"decouple": True})])
def test_one_epoch_through_the_trainer(method, method_args, tmp_path):
    cfg = RunConfig(method=method, method_args=method_args, profile="test", epochs=1, device="cpu")
    summary = fit(cfg, tmp_path / cfg.run_name(), progress="none")
    assert summary["epochs"] == 1
    params = json.loads((tmp_path / cfg.run_name() / "params.json").read_text())
    assert params["identity"]["method_args"] == json.loads(json.dumps(cfg.full_method_args()))
