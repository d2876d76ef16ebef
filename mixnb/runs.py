"""A run folder: what it holds, when it is finished, whether it is the run a config asks for, and why it failed.

``runs/<profile>/<run name>/`` holds ``params.json`` (the config, its resolved identity and the dataset
it read), ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (the last good epoch), and then either
``summary.json`` (finished) or ``failed.json`` (diverged, with the reason). "Finished" has one
definition (``is_finished``), used by ``fit``, the sweep, the report and the AttentiveMix+ teacher lookup.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mixnb.io import write_json

PARAMS, METRICS, CHECKPOINT, SUMMARY, FAILED = "params.json", "metrics.csv", "checkpoint.pt", "summary.json", "failed.json"


class RunConflict(ValueError):
    """The run folder holds another configuration's run."""


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a dict, or None when it is missing or unreadable."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


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
    """Refuse a folder that holds (or started) another configuration's run, naming the differences and the way out."""
    run_dir = Path(run_dir)
    recorded = recorded_identity(run_dir)
    holds = [n for n in (SUMMARY, CHECKPOINT, METRICS) if (run_dir / n).exists()]
    if recorded is None and not holds:
        return
    if recorded is None:
        raise RunConflict(f"{run_dir} holds {', '.join(holds)} but no record of its config (written by an older "
                          f"mixnb?); move it away or train into another folder")
    diff = differences(complete_identity(recorded), identity)
    if diff:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise RunConflict(f"{run_dir} holds another run ({shown}); train into another folder (the default "
                          f"runs/<profile>/<run name> names each config) or delete that one")


def complete_identity(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded identity with the settings added to mixnb after it was written filled in at the value that run
    had (``ADDED_SETTINGS``; a method setting's registry default): so adding a setting never orphans a run,
    and the report pools it with the runs written since."""
    from mixnb.config import ADDED_SETTINGS
    from mixnb.mixups import REGISTRY

    out = {**ADDED_SETTINGS, **recorded}
    spec = REGISTRY.get(recorded.get("method", ""))
    if spec is not None and isinstance(recorded.get("method_args"), dict):
        out["method_args"] = {**json.loads(json.dumps(spec.defaults)), **recorded["method_args"]}
    return out


def mark_failed(run_dir: Path, reason: str, **details: Any) -> None:
    write_json(Path(run_dir) / FAILED, {"reason": reason, **details})


def failure(run_dir: Path) -> dict[str, Any] | None:
    """failed.json of a run that stopped for a reason of its own (diverged), or None."""
    try:
        record = json.loads((Path(run_dir) / FAILED).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else {"reason": "failed.json is unreadable"}
