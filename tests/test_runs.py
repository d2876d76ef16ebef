"""Tests of mixnb/runs.py: reading a checkpoint (unreadable, corrupt, truncated), dataset records and open_run."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import torch

from helpers import CPU, TEST, pristine, tiny, write_params, zip_data  # tiny and zip_data are fixtures on pristine
from helpers import old_dataset_record as _old_record
from mixnb import runs
from mixnb.config import RunConfig
from mixnb.data import ImageTensors, load_tiny_imagenet, make_sample_dataset
from mixnb.runs import RunConflict, check_identity, dataset_differences, dataset_record
from mixnb.train import fit


# ----------------------------------------------------------------------------- checkpoints
def test_unreadable_and_corrupt_checkpoints(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(runs, "open", denied, raising=False)  # root reads anything: fake what chmod 000 does
    with pytest.raises(OSError, match=r"checkpoint.pt cannot be read \(Permission denied\).*chmod.*Nothing was changed"):
        runs.load_checkpoint(ckpt, move_corrupt=True)
    monkeypatch.undo()
    assert ckpt.exists()  # not moved aside
    for _ in range(2):  # corrupt (empty, then truncated): moved aside, never over an earlier one
        assert runs.load_checkpoint(ckpt, move_corrupt=True) is None and not ckpt.exists()
        ckpt.write_bytes(b"PK\x03\x04 truncated")
    assert len(list(tmp_path.glob("checkpoint.pt.corrupt-*"))) == 2
    fit(RunConfig(method="vanilla", **TEST), tmp_path / "run", progress="none")
    assert stat.S_IMODE((tmp_path / "run" / "checkpoint.pt").stat().st_mode) == 0o644  # shared like the rest


def test_a_checkpoint_truncated_anywhere_is_moved_aside_not_called_unreadable(tmp_path):
    """torch.load of a checkpoint cut past its first bytes seeks beyond the end (OSError EINVAL): corrupt."""
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"identity": {}, "model": {"w": torch.zeros(64, 64)}, "rows": [], "epoch": 1}, ckpt)
    whole = ckpt.read_bytes()
    for size in (100, 5000, len(whole) // 2, len(whole) - 10):
        ckpt.write_bytes(whole[:size])
        assert runs.load_checkpoint(ckpt, move_corrupt=True) is None and not ckpt.exists()
    assert len(list(tmp_path.glob("checkpoint.pt.corrupt-*"))) == 4


# ----------------------------------------------------------------------------- dataset records
def test_an_old_record_maps_by_its_stat_key_or_by_name_and_counts(tiny: Path, tmp_path: Path) -> None:
    old = _old_record(load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache"))
    renamed = load_tiny_imagenet(tiny.rename(tmp_path / "renamed"), cache_dir=tmp_path / "cache")  # same files
    assert renamed.manifest_key == old["manifest_key"]
    write_params(tmp_path / "run", old)
    check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(renamed)))

    restaged = load_tiny_imagenet(shutil.copytree(tmp_path / "renamed", tmp_path / "b" / "tiny"),
                                  cache_dir=tmp_path / "cache")  # other inodes, the old folder name
    assert restaged.manifest_key != old["manifest_key"]
    check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(restaged)))

    other = load_tiny_imagenet(make_sample_dataset(tmp_path / "c" / "tiny", num_classes=3, train_per_class=5,
                                                   val_per_class=2), cache_dir=tmp_path / "cache")
    with pytest.raises(RunConflict, match="dataset.manifest_key.*dataset.train_images: 12 there, 15 now"):
        check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(other)))


def test_open_run_compares_the_dataset_it_trained_on(tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    cfg = RunConfig(profile="test")
    monkeypatch.setattr(runs, "load_data", lambda cfg: data)

    def opened(*args: object) -> None:
        raise LookupError("past the dataset check")

    monkeypatch.setattr(runs, "_model", opened)
    for record in (dataset_record(data), _old_record(data)):
        monkeypatch.setattr(runs, "_checkpoint", lambda run_dir, device: ({"identity": {"dataset": record}}, cfg))
        with pytest.raises(LookupError):
            runs.open_run(tmp_path / "run")
    changed = {**dataset_record(data), "content_key": "0" * 40}
    monkeypatch.setattr(runs, "_checkpoint", lambda run_dir, device: ({"identity": {"dataset": changed}}, cfg))
    with pytest.raises(ValueError, match="another version of the dataset.*content_key 000000000000 then"):
        runs.open_run(tmp_path / "run")


def test_root_and_form_are_information_not_identity(zip_data: ImageTensors) -> None:
    record = dataset_record(zip_data)
    moved = {**record, "root": "/elsewhere/tiny", "form": "tiny-imagenet-parquet", "label_order": "from-metadata",
             "boxes": False}
    assert dataset_differences(record, moved, lambda: None) == {}
    assert "manifest_key" not in record and set(record) >= {"content_key", "root", "form", "label_order", "boxes"}
