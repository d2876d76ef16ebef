"""SaliencyMix: the OpenCV fine-grained saliency peak, exact cores on hand-made draws, the sampler, one step."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from mixnb.mixups import LOSS_DEFAULTS, REGISTRY, get_method, soft_target
from mixnb.mixups.saliencymix import (
    SaliencyMix,
    SaliencyMixDraw,
    fine_grained_saliency,
    map_peak,
    sample_saliencymix,
    saliencymix,
)

from helpers import batch, ctx, gen, share_of_x, tiny_model  # tests/helpers.py, on sys.path


def test_only_the_headless_contrib_opencv_is_installed() -> None:
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    opencv = {name for name in names if name.startswith("opencv")}
    assert "opencv-contrib-python-headless" in opencv
    clashing = opencv & {"opencv-python", "opencv-python-headless", "opencv-contrib-python"}
    assert not clashing, f"several OpenCV wheels share the cv2 module; uninstall {sorted(clashing)}"


def test_saliency_centre_is_argmax_of_uint8_map_of_first_partner() -> None:
    x, _ = batch(6)
    for seed in range(4):
        draw = sample_saliencymix(x, gen=gen(seed), alpha=1.0)
        img = x[draw.perm[0]].permute(1, 2, 0).numpy()  # normalised float32 HWC, as the reference passes it
        ok, sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img)
        sal_u8 = (sal * 255).astype("uint8")
        expected = np.unravel_index(np.argmax(sal_u8), sal_u8.shape)
        assert ok and draw.center.tolist() == [int(expected[0]), int(expected[1])]
    # the peak must come from perm[0]'s image, not image 0 (the test would pass vacuously if equal)
    peaks = []
    for i in range(x.shape[0]):
        _, sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(x[i].permute(1, 2, 0).numpy())
        peaks.append(np.unravel_index(np.argmax((sal * 255).astype("uint8")), sal.shape))
    assert len(set(peaks)) > 1


def test_saliency_peak_quantises_to_uint8_then_takes_the_first_max() -> None:
    sal = np.zeros((4, 5), np.float32)
    sal[1, 3] = 0.9990  # uint8 254: ties with the later, larger float value
    sal[2, 1] = 0.9995  # uint8 254 too; the float argmax would pick this one
    sal[3, 4] = 0.9900  # uint8 252
    assert map_peak(sal) == (1, 3)
    sal[3, 4] = 1.0  # uint8 255
    assert map_peak(sal) == (3, 4)


def test_saliencymix_core_box_at_a_known_corner() -> None:
    x, _ = batch(5)
    perm = torch.tensor([1, 2, 3, 4, 0])
    draw = SaliencyMixDraw(torch.tensor(0.75), perm, torch.tensor([0, 0]))
    x_mixed, lam, mask = saliencymix(x, draw)
    # side int(64 * sqrt(0.25)) = 32, corners centre -/+ 16 clipped: rows/cols [0, 16)
    assert torch.equal(x_mixed[:, :, :16, :16], x[perm][:, :, :16, :16])
    expected = x.clone()
    expected[:, :, :16, :16] = x[perm][:, :, :16, :16]
    assert torch.equal(x_mixed, expected)
    assert lam.item() == 1 - 256 / 4096
    assert mask.shape == (1, 1, 64, 64) and mask.sum().item() == 4096 - 256
    assert torch.equal(x, batch(5)[0])  # input left alone


def test_saliencymix_core_box_inside_the_image() -> None:
    x, _ = batch(3)
    perm = torch.tensor([2, 0, 1])
    x_mixed, lam, _ = saliencymix(x, SaliencyMixDraw(torch.tensor(0.75), perm, torch.tensor([40, 20])))
    expected = x.clone()
    expected[:, :, 24:56, 4:36] = x[perm][:, :, 24:56, 4:36]
    assert torch.equal(x_mixed, expected) and lam.item() == 0.75


@pytest.mark.parametrize("n", [1, 3, 5])
def test_saliencymix_lam_is_true_share_and_targets_sum_to_one(n: int) -> None:
    x, y = batch(n)
    for seed in range(3):
        draw = sample_saliencymix(x, gen=gen(seed), alpha=1.0)
        x_mixed, lam, mask = saliencymix(x, draw)
        assert x_mixed.shape == x.shape and lam.shape == () and lam.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and lam.item() == mask.mean().item()
        moved = draw.perm != torch.arange(n)  # fixed points of perm keep x everywhere
        assert torch.equal(share_of_x(x, x_mixed)[moved], lam.expand(n)[moved])
        assert torch.equal(x_mixed[~moved], x[~moved])
        target = soft_target(y, y[draw.perm], lam, 4)
        assert torch.allclose(target.sum(1), torch.ones(n))
    mixed = SaliencyMix().mix(x, y, gen=gen(0))  # the method wires the same draw
    assert torch.equal(mixed.x, saliencymix(x, sample_saliencymix(x, gen=gen(0), alpha=1.0))[0])


def test_saliencymix_lam_one_leaves_batch_unchanged() -> None:
    x, _ = batch(4)
    draw = SaliencyMixDraw(torch.tensor(1.0), torch.tensor([3, 2, 1, 0]), torch.tensor([30, 30]))
    x_mixed, lam, mask = saliencymix(x, draw)
    assert torch.equal(x_mixed, x) and lam.item() == 1.0 and mask.min().item() == 1.0


def test_saliencymix_seeded_generator_reproduces_batch() -> None:
    x, y = batch(5)
    a = SaliencyMix().mix(x, y, gen=gen(7))
    b = SaliencyMix().mix(x, y, gen=gen(7))
    c = SaliencyMix().mix(x, y, gen=gen(8))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
    assert not torch.equal(a.x, c.x)


def test_saliencymix_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="-1"):
        SaliencyMix(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        get_method("saliencymix", alpha=0.0)


@pytest.mark.parametrize("fake_cv2", [None, types.ModuleType("cv2")])
def test_saliencymix_without_cv2_saliency_names_the_package(monkeypatch: pytest.MonkeyPatch, fake_cv2) -> None:
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2)  # None: import fails; bare module: no .saliency
    with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
        fine_grained_saliency()
    with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
        SaliencyMix()


def test_saliencymix_registry_and_training_step_backward() -> None:
    assert REGISTRY["saliencymix"].label == "SaliencyMix" and REGISTRY["saliencymix"].defaults == {"alpha": 1.0, **LOSS_DEFAULTS}
    model = tiny_model()
    x, y = batch(5)
    out = get_method("saliencymix").training_step(model, x, y, ctx(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.fc.weight.grad is not None
