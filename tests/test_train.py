"""The training loop: resume after a kill, every method's step through the Trainer, summaries."""

import json

import pandas as pd
import pytest
import torch

from killing import run_until_killed
from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY
from mixnb.train import cosine_lr, fit

MATH_COLUMNS = ["epoch", "lr", "train_loss", "top1", "top5", "val_loss"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    cfg = RunConfig(method="mixup", profile="test", epochs=4, device="cpu")
    straight = fit(cfg, tmp_path / "straight", progress="none")
    killed = tmp_path / "killed"
    run_until_killed(cfg, killed, 2)
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no debris
    resumed = fit(cfg, killed, progress="none")
    a = pd.read_csv(tmp_path / "straight" / "metrics.csv")[MATH_COLUMNS]
    b = pd.read_csv(killed / "metrics.csv")[MATH_COLUMNS]
    pd.testing.assert_frame_equal(a, b)
    assert resumed["median_top1"] == straight["median_top1"]
    wa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((killed / "tensorboard").iterdir())) == 1  # one file: read order across files cannot purge
    events = EventAccumulator(str(killed / "tensorboard")).Reload()  # the optional extra, installed by make install
    assert [(e.step, e.value) for e in events.Scalars("top1")] == [(r.epoch, pytest.approx(r.top1)) for r in b.itertuples()]


@pytest.mark.slow
def test_a_resume_restores_through_the_device_path(tmp_path, monkeypatch):
    """CUDA proxy: a checkpoint loaded with ``map_location=<the run's device>`` puts the RNG byte tensors on the
    device, and ``Generator.set_state`` / ``torch.set_rng_state`` accept only CPU ones (every CUDA resume
    crashed). Here a load that names the run's device lands on ``meta``, as a CUDA one lands on the GPU: the
    resume must not depend on it and still end where the uninterrupted run ends."""
    cfg = RunConfig(method="cutmix", profile="test", epochs=2, device="cpu")
    fit(cfg, tmp_path / "straight", progress="none")
    killed = tmp_path / "killed"
    run_until_killed(cfg, killed, 1)
    real_load = torch.load

    def device_load(f, map_location=None, **kwargs):
        return real_load(f, map_location="meta" if isinstance(map_location, torch.device) else map_location, **kwargs)

    monkeypatch.setattr(torch, "load", device_load)
    fit(cfg, killed, progress="none")
    monkeypatch.setattr(torch, "load", real_load)
    a = pd.read_csv(tmp_path / "straight" / "metrics.csv")[MATH_COLUMNS]
    pd.testing.assert_frame_equal(a, pd.read_csv(killed / "metrics.csv")[MATH_COLUMNS])
    wa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    wb = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert all(s.device.type == "cpu" for g in wb["rank_generators"] for s in g.values())


def test_summary_and_metrics_files(tmp_path):
    summary = fit(RunConfig(method="cutmix", profile="test", epochs=2, device="cpu"), tmp_path, progress="none")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["median_top1"] == summary["median_top1"]
    assert summary["median_window"] == 2 and "all 2 epochs" in summary["median_label"]
    for key in ("best_top1", "best_epoch", "last_top1", "seconds_per_epoch", "peak_mem_mb", "config",
                "environment", "git"):
        assert key in summary
    assert summary["environment"]["torch"] == torch.__version__
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and metrics["lr"].iloc[0] == pytest.approx(0.2)
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["config"]["method"] == "cutmix" and params["identity"]["epochs"] == 2  # resolved
    assert params["identity"]["dataset"]["content_key"] and summary["identity"] == params["identity"]


def test_cosine_schedule_is_per_epoch_to_the_floor():
    assert cosine_lr(0.2, 0.0, 0, 400) == pytest.approx(0.2)
    assert cosine_lr(0.2, 0.0, 200, 400) == pytest.approx(0.1)
    assert cosine_lr(0.2, 0.05, 400, 400) == pytest.approx(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in REGISTRY if m != "attentivemix"])
def test_every_method_trains_one_epoch_through_the_trainer(method, tmp_path):
    summary = fit(RunConfig(method=method, profile="test", epochs=1, device="cpu"), tmp_path, progress="none")
    assert 0 <= summary["median_top1"] <= 100
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert torch.isfinite(torch.tensor(metrics["train_loss"].to_numpy())).all()


def test_median_of_the_last_10_epochs_reads_11_values_as_openmixups_script():
    """find_classification_val_median.py keeps epochs >= 400 - 10 of mmcv's 1-based val lines: 390..400."""
    from mixnb.train import summarize

    rows = [{"epoch": e, "top1": float(e), "top5": 0.0, "epoch_seconds": 1.0, "train_seconds": 1.0,
             "peak_mem_mb": 0.0} for e in range(1, 401)]
    summary = summarize(rows, RunConfig(profile="tiny-imagenet"), env={}, identity={}, extra={})
    assert summary["median_window"] == 11 and summary["median_top1"] == 395.0  # one epoch's value, not a mean
    assert "epochs 390-400" in summary["median_label"]
