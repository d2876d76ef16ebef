"""A run folder: what it holds, when it is finished, whether it is the run a config asks for, and why it failed.

``runs/<profile>/<run name>/`` holds ``params.json`` (the config, its resolved identity and the dataset
it read), ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (the last good epoch), and then either
``summary.json`` (finished) or ``failed.json`` (diverged, with the reason); a finished run then gets
``mix_samples.png`` (its gallery) and ``analysis.json`` (beyond accuracy) or ``analysis_failed.json`` (why that failed:
retried by the next sweep). "Finished" has one definition (``is_finished``), used by ``fit``, the sweep, the report and
the AttentiveMix+ teacher lookup; what a run still owes has one too (``missing_products``), used by the sweep and
``make analyze``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixnb.config import (ADDED_GROUPED_SETTINGS, ADDED_METHOD_SETTINGS, ADDED_SETTINGS, PROFILES, RunConfig)
from mixnb.device import cache_dir
from mixnb.data import DatasetError, ImageTensors, load_dataset, make_sample_dataset
from mixnb.data.tinyimagenet import folder_stat_key
from mixnb.io import file_lock, write_json
from mixnb.mixups import REGISTRY, NeededRun, get_method, get_spec
from mixnb.models import build_model

PARAMS, METRICS, CHECKPOINT, SUMMARY, FAILED = "params.json", "metrics.csv", "checkpoint.pt", "summary.json", "failed.json"
LOCK = ".lock"  # held (flock) by the process that trains or analyses the run
ANALYSIS = "analysis.json"  # mixnb.analysis.analyze_run's result, keyed on the checkpoint
ANALYSIS_VERSION = 3  # bump when a number's definition or what analysis.json holds changes: every run is analysed again
ANALYSIS_FAILED = "analysis_failed.json"  # why the last analysis of a finished run failed; gone once one succeeds
ANALYSIS_SECTIONS = ("clean", "calibration", "adversarial", "occlusion", "corruptions", "localization")  # its numbers
GALLERY = "mix_samples.png"  # the mixed samples train.ipynb draws from the checkpoint


class RunConflict(ValueError):
    """The run folder holds another configuration's run."""


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a dict, or None when it is missing or unreadable."""
    return _read_record(Path(run_dir) / SUMMARY)


def metric_rows(run_dir: Path) -> int:
    """How many epoch rows metrics.csv holds (0 when missing or unreadable)."""
    try:
        with open(Path(run_dir) / METRICS, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


def is_finished(run_dir: Path) -> bool:
    """A finished run: a readable summary.json and a metrics.csv with every epoch it reports. The checkpoint
    is not needed (deleting it to save space never makes a finished run train again)."""
    summary = read_summary(run_dir)
    return summary is not None and isinstance(summary.get("epochs"), int) and 0 < summary["epochs"] <= metric_rows(run_dir)


def recorded_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity a run folder was written for (params.json, else summary.json); None if it records none."""
    for name in (PARAMS, SUMMARY):
        try:
            record = json.loads((Path(run_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("identity"), dict):
            return record["identity"]
    return None


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


def check_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that holds (or started) another configuration's run, naming the differences
    (``identity_differences``: a moved, copied or re-staged dataset keeps its runs) and the way out."""
    run_dir = Path(run_dir)
    recorded = recorded_identity(run_dir)
    holds = [n for n in (SUMMARY, CHECKPOINT, METRICS) if (run_dir / n).exists()]
    if recorded is None and not holds:
        return
    if recorded is None:
        raise RunConflict(f"{run_dir} holds {', '.join(holds)} but no record of its config (written by an older "
                          f"mixnb?); move it away or train into another folder")
    if diff := identity_differences(recorded, identity):
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise RunConflict(f"{run_dir} holds another run ({shown}); train into another folder (the default "
                          f"runs/<profile>/<run name> names each config) or delete that one")


def identity_differences(recorded: dict[str, Any], identity: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (recorded, now)} for what makes a recorded identity another run than ``identity``: the recorded
    one completed (``complete_identity``), the datasets compared by ``dataset_differences``."""
    recorded = complete_identity(recorded)
    diff = differences({**recorded, "dataset": None}, {**identity, "dataset": None})
    now = identity.get("dataset") or {}
    diff.update({f"dataset.{k}": v for k, v in dataset_differences(
        recorded.get("dataset") or {}, now, lambda: _folder_stat_key(now.get("root"))).items()})
    return diff


def complete_identity(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded identity with the settings added to mixnb after it was written filled in at the value that run
    had (``ADDED_SETTINGS``; ``ADDED_GROUPED_SETTINGS`` with bn_groups > 1; a method setting's value from
    ``ADDED_METHOD_SETTINGS``, else its registry default): so adding a setting never orphans a run, and the report
    pools it with the runs written since."""

    out = {**ADDED_SETTINGS, **recorded}
    if isinstance(out["bn_groups"], int) and out["bn_groups"] > 1:
        out = {**ADDED_GROUPED_SETTINGS, **out}
    spec = REGISTRY.get(recorded.get("method", ""))
    if spec is not None and isinstance(recorded.get("method_args"), dict):
        added = {**spec.defaults, **ADDED_METHOD_SETTINGS.get(recorded["method"], {})}
        out["method_args"] = {**json.loads(json.dumps(added)), **recorded["method_args"]}
    return out


def mark_failed(run_dir: Path, reason: str, **details: Any) -> None:
    write_json(Path(run_dir) / FAILED, {"reason": reason, **details})


def failure(run_dir: Path) -> dict[str, Any] | None:
    """failed.json of a run that stopped for a reason of its own (diverged), or None."""
    if not (Path(run_dir) / FAILED).exists():
        return None
    return _read_record(Path(run_dir) / FAILED) or {"reason": f"{FAILED} is unreadable"}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_analysis(run_dir: str | Path) -> dict[str, Any] | None:
    """analysis.json of a run folder, or None when it is missing, unreadable, of another ``ANALYSIS_VERSION`` (its
    numbers are not comparable with today's) or damaged (one of ``ANALYSIS_SECTIONS`` missing or not a table): the
    next sweep or ``make analyze`` redoes it."""
    record = _read_record(Path(run_dir) / ANALYSIS)
    if record is None or record.get("version") != ANALYSIS_VERSION:
        return None
    return record if all(isinstance(record.get(k), dict) for k in ANALYSIS_SECTIONS) else None


def analysis_failure(run_dir: str | Path) -> dict[str, Any] | None:
    """analysis_failed.json of a run folder (``{"reason": one line, ...}``), or None."""
    if not (Path(run_dir) / ANALYSIS_FAILED).exists():
        return None
    return _read_record(Path(run_dir) / ANALYSIS_FAILED) or {"reason": f"{ANALYSIS_FAILED} is unreadable"}


def needs_analysis(run_dir: str | Path) -> bool:
    """A finished run with no analysis.json, or whose last analysis failed: the next sweep or ``make analyze``
    analyses it (a stale analysis.json is redone by ``analyze_run`` itself, keyed on the checkpoint)."""
    return read_analysis(run_dir) is None or analysis_failure(run_dir) is not None


def missing_products(run_dir: str | Path, *, analysis: bool) -> dict[str, str | None]:
    """What a run still owes, file by file: {name: None} to be made, or {name: why it cannot be}. An unfinished run
    owes summary.json (training); a finished one its gallery and, with ``analysis``, its analysis (``needs_analysis``).
    Both are drawn from checkpoint.pt: once it is deleted (the README allows it) they "cannot be made", which the
    sweep and ``make analyze`` say instead of retrying."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        return {SUMMARY: None}
    owed = [name for name, due in ((GALLERY, not (run_dir / GALLERY).is_file()),
                                   (ANALYSIS, analysis and needs_analysis(run_dir))) if due]
    return dict.fromkeys(owed, None if (run_dir / CHECKPOINT).is_file() else f"cannot be made: {CHECKPOINT} deleted")


# ----------------------------------------------------------------------------- opening a run
def load_data(cfg: RunConfig) -> ImageTensors:
    """The profile's dataset: the real folder in whichever form it is (mixnb.data.load_dataset), or the generated
    sample set (made once, cached)."""
    root = cfg.data_root()
    if root is None:
        sample = PROFILES[cfg.profile].sample
        root = make_sample_dataset(cache_dir() / f"sample-{cfg.profile}", seed=0, **sample)
    data = load_dataset(root)
    PROFILES[cfg.profile].check_data(data)
    return data


# Recorded with a run's dataset for its reader, never compared: the content key says what the data is, so the
# same data moved, copied or read from another form with the same order keeps its runs.
DATASET_INFO = ("root", "form", "label_order", "boxes")


def dataset_record(data: ImageTensors) -> dict[str, Any]:
    """What a run records of its dataset: the content key and the sizes, which identify it, then ``DATASET_INFO``."""
    return {"content_key": data.content_key, "classes": len(data.wnids), "train_images": len(data.y_train),
            "val_images": len(data.y_val), "root": data.root, "form": data.form, "label_order": data.label_order,
            "boxes": data.has_boxes}


def dataset_differences(recorded: dict[str, Any], now: dict[str, Any],
                        stat_key: Callable[[], str | None]) -> dict[str, tuple[Any, Any]]:
    """{key: (recorded, now)} for what differs between a run's dataset record and today's, ``DATASET_INFO`` aside.

    A record written before the content key (a stat-based ``manifest_key`` instead) is today's dataset when that key
    is today's stat key (``stat_key()``, called only then), or else, the data re-staged (copied, chmod-ed,
    regenerated), when the folder's name, the class count and the image counts agree: such a record cannot tell a
    changed pixel, so only the content key can.
    """
    if "manifest_key" in recorded and "content_key" not in recorded and "content_key" in now:
        sizes = ("classes", "train_images", "val_images")
        if (Path(str(recorded.get("root"))).name == Path(str(now.get("root"))).name
                and all(recorded.get(k) == now.get(k) for k in sizes)) or recorded["manifest_key"] == stat_key():
            return {}
    return {k: v for k, v in differences(recorded, now).items() if k not in DATASET_INFO}


def _folder_stat_key(root: str | None) -> str | None:
    """Today's stat key of a tiny-imagenet-200 folder (what runs recorded before the content key hold), or None."""
    try:
        return folder_stat_key(root) if root else None
    except (DatasetError, OSError):
        return None


def load_checkpoint(path: Path, *, progress: str = "none", move_corrupt: bool = False) -> dict[str, Any] | None:
    """A run's checkpoint as plain CPU tensors and containers (``weights_only=True``: a checkpoint is data, and
    nothing in a shared run folder may run code), or None when there is none. Always to the CPU, whatever
    device the run uses: RNG states must stay CPU byte tensors, and ``restore_`` moves the rest.

    Unreadable (permissions, I/O) or holding Python objects beyond tensors and containers: stops with the
    path and the error, the file untouched. Corrupt (truncated, not a checkpoint): moved aside under a name
    that never overwrites an earlier one when ``move_corrupt``, and None (the run starts over).
    """
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EIO):  # truncated: torch seeks past the end (EINVAL)
            return _corrupt(path, err, progress, move_corrupt)
        raise OSError(err.errno, f"{path} cannot be read ({err.strerror}); fix its permissions "
                                 f"(chmod a+r) or the disk, then run again. Nothing was changed") from None
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            return _corrupt(path, err, progress, move_corrupt)
        raise ValueError(f"{path} holds Python objects, not just tensors, so mixnb will not load it (loading "
                         f"could run code); delete it or move it away to start the run over") from None
    except Exception as err:  # truncated zip, empty file, not a torch file
        return _corrupt(path, err, progress, move_corrupt)
    if not isinstance(ckpt, dict) or not {"identity", "model", "rows", "epoch"} <= set(ckpt):
        raise ValueError(f"{path} is not a mixnb checkpoint (no identity/model/rows); move it away or train "
                         f"into another folder")
    return ckpt


def _corrupt(path: Path, err: Exception, progress: str, move: bool) -> None:
    if move:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}")
        path.replace(aside)
        if progress != "none":
            print(f"warning: {path} is corrupt ({type(err).__name__}: {err}); moved to {aside.name}, starting over",
                  flush=True)


@contextmanager
def run_lock(run_dir: Path, *, wait_s: float = 0.0) -> Iterator[int | None]:
    """Hold ``run_dir/.lock`` exclusively; yields its file descriptor, or None when another process
    holds it (after retrying for ``wait_s`` seconds). Closing the descriptor releases it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / LOCK, wait_s=wait_s) as fd:
        yield fd


def is_locked(run_dir: Path) -> bool:
    """Whether a job holds ``run_dir``'s lock now."""
    if not (run_dir / LOCK).exists():
        return False
    with run_lock(run_dir) as fd:
        return fd is None


@dataclass
class OpenRun:
    """A run rebuilt from its checkpoint: model and method in eval mode on ``device``, and the data it trained on."""

    run_dir: Path
    cfg: RunConfig
    ckpt: dict[str, Any]
    data: ImageTensors
    model: nn.Module
    method: Any  # MixMethod
    setup_error: str | None  # why the method could not be set up (AttentiveMix+ without its teacher), or None


def open_run(run_dir: str | Path, device: str | torch.device = "cpu") -> OpenRun:
    """The model and method of ``run_dir``'s checkpoint (``weights_only``: a run folder runs no code) on ``device``,
    in eval mode, with the dataset it trained on. The one way a trained run is rebuilt (analysis, galleries,
    AttentiveMix+'s teacher). A method whose setup fails (a teacher that is gone) is returned fresh, with the
    reason: evaluating the model needs no method state.

    Raises:
        FileNotFoundError: no checkpoint.pt; ValueError: a corrupt checkpoint, one this mixnb cannot read, or a
        dataset that changed since the run trained on it.
    """
    run_dir, device = Path(run_dir), torch.device(device)
    ckpt, cfg = _checkpoint(run_dir, device)
    data = load_data(cfg)
    trained_on = ckpt.get("identity", {}).get("dataset") or {}
    if trained_on and (diff := dataset_differences(trained_on, dataset_record(data), lambda: data.manifest_key)):
        shown = "; ".join(f"{k} {str(a)[:12]} then, {str(b)[:12]} now" for k, (a, b) in diff.items())
        raise ValueError(f"{run_dir / CHECKPOINT} was trained on another version of the dataset at {data.root} "
                         f"({shown}); use it with the data it trained on")
    model = _model(ckpt, cfg)
    method, setup_error = get_method(cfg.method, **cfg.method_args), None
    try:
        method.setup(model, cfg=cfg, needed=needed_run(cfg, run_dir.parent))
        method.load_state_dict(ckpt["method"])
    except (FileNotFoundError, RuntimeError) as err:
        method, setup_error = get_method(cfg.method, **cfg.method_args), f"{type(err).__name__}: {err}"
    return OpenRun(run_dir, cfg, ckpt, data, model.to(device).eval(), method.to(device).eval(), setup_error)


def _checkpoint(run_dir: Path, device: torch.device) -> tuple[dict[str, Any], RunConfig]:
    """A run's checkpoint and its config (set to ``device``); a missing, corrupt or unreadable one fails naming it."""
    path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(path)
    if ckpt is None and path.exists():
        raise ValueError(f"{path} is corrupt (truncated or not a checkpoint); retrain the run (delete {run_dir})")
    if ckpt is None:
        raise FileNotFoundError(f"{path} not found: the run has not finished an epoch, or its checkpoint was deleted "
                                f"to save space")
    try:
        return ckpt, RunConfig.from_dict({**ckpt["config"], "device": str(device)})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its config cannot be read by this mixnb ({err})") from None


def _model(ckpt: dict[str, Any], cfg: RunConfig) -> nn.Module:
    """The checkpoint's backbone with its weights (classes from its head), on the CPU, in eval mode."""
    model = build_model(cfg.backbone, num_classes=ckpt["model"]["fc.weight"].shape[0], width=cfg.model_width)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def find_finished(runs: Path, method: str, backbone: str, seed: int) -> Path | None:
    """The finished run of ``method`` on ``backbone`` in ``runs`` (a profile's folder), with its checkpoint: seed
    ``seed`` first, then any other (plain names before ones with overrides)."""
    plain = re.compile(rf"{re.escape(method)}-{re.escape(backbone)}-s\d+")
    others = sorted(runs.glob(f"{method}-{backbone}-s*"), key=lambda p: (not plain.fullmatch(p.name), p.name))
    for run in [runs / f"{method}-{backbone}-s{seed}", *others]:
        if is_finished(run) and (run / CHECKPOINT).is_file():
            return run
    return None


def needed_run(cfg: RunConfig, runs: Path | None) -> NeededRun | None:
    """The trained model and name of the run ``cfg``'s method needs (its registry entry's ``needs``: AttentiveMix+'s Vanilla
    teacher), found in ``runs`` (the profile's folder) and opened on the CPU; None when the method needs none,
    or no such run has finished (the method then says what to do)."""
    needs = get_spec(cfg.method).needs
    if needs is None or runs is None:
        return None
    run = find_finished(runs, needs, cfg.backbone, cfg.seed)
    if run is None:
        return None
    try:
        ckpt, needed_cfg = _checkpoint(run, torch.device("cpu"))
        return NeededRun(_model(ckpt, needed_cfg), run.name)
    except ValueError as err:  # a corrupt checkpoint: say whose teacher it was meant to be
        raise RuntimeError(f"{err}; until then it cannot be {cfg.method}'s {needs} run") from None
