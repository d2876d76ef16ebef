"""The memory model (mixnb.memory) and what uses it: the analysis batch, the dry run, RUNS_PER_GPU packing."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mixnb import memory as M
from mixnb.analysis.analyze import pass_batch
from mixnb.analysis.settings import settings_for
from mixnb.config import RunConfig
from mixnb.sweep import CPU_JOBS_AUTO, check_packing, cpu_slots, dry_run, expand, gpu_slots, longest_first


def test_saved_bytes_of_conv_bn_relu_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    saved = M.SavedTensors([*net.parameters(), *net.buffers()], batch=2)
    with saved.hooks():
        out = net(torch.randn(2, 3, 8, 8))
    # conv: its input (2*3*8*8 fp32); BN: its input (2*4*8*8) and the batch mean and invstd (4 each); ReLU: its
    # output (2*4*8*8); the weight and the running statistics are the model's, not counted
    assert saved.peak == 4 * (2 * 3 * 64 + 2 * 4 * 64 + 4 + 4 + 2 * 4 * 64)
    assert saved.largest == 4 * 2 * 4 * 64
    del out
    assert saved.live == 0  # the graph's saved tensors are given back when it goes


def test_step_prediction_is_linear_in_the_batch():
    acts = [M.step_footprint(RunConfig(profile="test", batch_size=b)).activations for b in (10, 20, 40)]
    assert acts[0] > 0
    assert acts[2] - acts[1] == pytest.approx(2 * (acts[1] - acts[0]), rel=1e-6)
    peaks = [M.predict_step_gib(RunConfig(profile="test", batch_size=b)) for b in (10, 20)]
    assert peaks[1] > peaks[0]


def test_rx50_analysis_batch_stays_under_the_budget():
    cfg = RunConfig(method="automix", backbone="resnext50", profile="tiny-imagenet")
    batch = M.analysis_batch(cfg)
    assert 1 <= batch < settings_for("tiny-imagenet").batch_size == 1000
    assert M.predict_analysis_gib(cfg, batch) <= M.ANALYSIS_BUDGET_GIB < M.predict_analysis_gib(cfg, batch + 1)
    per_image_mib = 1024 * (M.predict_analysis_gib(cfg, 101) - M.predict_analysis_gib(cfg, 100))
    assert 100 < per_image_mib < 200  # fp32 RX-50 at 64 px: ~138 MiB saved and transient per image
    assert M.analysis_batch(RunConfig(backbone="resnet18", profile="tiny-imagenet"), budget_gib=4.0) < batch * 4


def test_analysis_records_its_batch_and_an_explicit_one_wins():
    cfg = RunConfig(backbone="resnext50", profile="tiny-imagenet")
    chosen = pass_batch(cfg, settings_for("tiny-imagenet"), None)
    assert chosen["batch_size"] == M.analysis_batch(cfg) < 1000
    assert chosen["predicted_attack_peak_gib"] <= chosen["budget_gib"] == M.ANALYSIS_BUDGET_GIB
    assert pass_batch(cfg, settings_for("tiny-imagenet"), 7)["batch_size"] == 7


def test_grouped_bn_is_measured():
    plain = M.step_footprint(RunConfig(method="automix", profile="test", bn_groups=1)).activations
    grouped = M.step_footprint(RunConfig(method="automix", profile="test", bn_groups=2)).activations
    assert grouped > 0.5 * plain  # the model sees the grouped model's own tensors
    assert grouped <= 1.1 * plain, (f"bn_groups=2 saves {grouped / plain:.2f}x plain BN's activations: "
                                    f"GroupedBatchNorm2d should cost what plain BN does (issue 19)")


def test_runs_per_gpu_refuses_what_the_card_cannot_hold():
    jobs = expand("test", ["vanilla", "mixup"], epochs=1)
    check_packing(jobs, 2, card=80.0)
    check_packing(jobs, 1, card=0.01)  # one run per GPU is never refused here
    with pytest.raises(ValueError, match=r"RUNS_PER_GPU=3 .*vanilla-resnet18-s0-ep1 .*GiB.* 0\.5 GiB card"):
        check_packing(jobs, 3, card=0.5)


def test_runs_per_gpu_without_gpus_uses_the_visible_ones(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_slots(None, 1, runs_per_gpu=2) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("3", "5", "3", "5")]
    assert gpu_slots(None, 1) == [{}]  # one run at a time on the default device, as before
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="RUNS_PER_GPU=2 .*none is visible.*GPUS=0,1"):
        gpu_slots(None, 1, runs_per_gpu=2)


def test_without_a_gpu_runs_share_the_cores(monkeypatch):
    """No GPU: CPU_JOBS runs at once (default CPU_JOBS_AUTO, at most one per core), each told its share of the
    cores through OMP_NUM_THREADS, so two runs never oversubscribe them."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert gpu_slots(None, 1) == cpu_slots() == [{"OMP_NUM_THREADS": str(16 // CPU_JOBS_AUTO)}] * CPU_JOBS_AUTO
    assert cpu_slots(3) == [{"OMP_NUM_THREADS": "5"}] * 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert gpu_slots(None, 1) == [{"OMP_NUM_THREADS": "1"}]  # one core: one run at a time
    with pytest.raises(ValueError, match="CPU_JOBS must be >= 1, got 0"):
        cpu_slots(0)


def test_dry_run_prints_the_predicted_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    out = dry_run(expand("test", ["vanilla"], epochs=1))
    line = next(x for x in out.splitlines() if x.endswith("vanilla-resnet18-s0-ep1"))
    assert "step peak" in out and " GiB  batch   64 (" in line, out


def test_several_slots_start_the_longest_runs_first():
    """A run another needs first (Vanilla, AttentiveMix+'s teacher), then PuzzleMix at its published settings (no
    measured rate: unknown counts as longest), AutoMix, AttentiveMix+, and MixUp, the cheapest, last."""
    jobs = expand("sample", ["mixup", "attentivemix", "automix", "vanilla", "puzzlemix"])
    assert [j.config.method for j in longest_first(jobs)] == ["vanilla", "puzzlemix", "automix", "attentivemix", "mixup"]
