"""A profile's run folders as DataFrames (``load_runs``) and the statistics the tables read from them: seeds pooled
per configuration with their t-interval, the best α and its tie rule, the paired difference to Vanilla (docs/analysis.md
§8)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixnb.config import PROFILES, RunConfig
from mixnb.mixups import REGISTRY, get_spec
from mixnb.paths import runs_root
from mixnb.report.labels import settings_label
from mixnb.report.published import comparison
from mixnb.runs import DATASET_INFO, METRICS, PARAMS, complete_identity, failure, is_finished, metric_rows, read_summary
from mixnb.train import MEDIAN_RECORDS


TRAIN_SECONDS = "train_seconds_per_epoch"


@dataclass
class Runs:
    """What a profile's runs folder holds, for the report: one row per finished run (``summaries``), per
    epoch (``metrics``), per diverged run (``diverged``), and the folders left out with the reason."""

    summaries: pd.DataFrame
    metrics: pd.DataFrame
    diverged: pd.DataFrame
    skipped: list[tuple[str, str]]


def load_runs(profile: str, root: Path | None = None) -> Runs:
    """Every run folder of ``profile`` (analysis.ipynb's parameters: an unknown profile fails with the valid ones); a
    folder that cannot be read, or whose name is not its config's run name (a copy), is listed in ``skipped``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    root = (root or runs_root()) / profile
    summaries, metrics, diverged, skipped = [], [], [], []
    for run_dir in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            name = RunConfig.from_file(run_dir / PARAMS).run_name() if (run_dir / PARAMS).exists() else run_dir.name
            if name != run_dir.name:
                skipped.append((run_dir.name, f"a copy or renamed folder: its config's run is {name}, so it is "
                                              f"never counted as a seed of it (move it out of {root} or rename it)"))
            elif is_finished(run_dir):
                row = _summary_row(run_dir)
                m = pd.read_csv(run_dir / METRICS)
                if pd.isna(row.get(TRAIN_SECONDS)):  # a summary from before it recorded this: from its metrics
                    row[TRAIN_SECONDS] = float(m["train_seconds"].iloc[1:].median() if len(m) > 1
                                               else m["train_seconds"].iloc[0])
                # the machine's 1-min load while the run trained (None: a run from before metrics.csv recorded it)
                row["load_avg"] = float(m["load_avg"].median()) if "load_avg" in m else float("nan")
                summaries.append(row)
                metrics.append(m.assign(run=row["run"], method=row["method"], backbone=row["backbone"],
                                        seed=row["seed"], settings=row["settings"], alpha=row["alpha"]))
            elif (failed := failure(run_dir)) is not None:
                cfg = RunConfig.from_file(run_dir / PARAMS)
                diverged.append({"run": run_dir.name, "method": cfg.method, "backbone": cfg.backbone,
                                 "seed": cfg.seed, "settings": settings_label(cfg), "reason": failed["reason"],
                                 "run_dir": str(run_dir)})
            elif (run_dir / PARAMS).exists():
                skipped.append((run_dir.name, f"not finished ({metric_rows(run_dir)} epochs so far)"))
        except Exception as err:  # a foreign or broken folder: name it, render the rest
            skipped.append((run_dir.name, f"unreadable ({type(err).__name__}: {err})"))
    return Runs(pd.DataFrame(summaries), pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
                pd.DataFrame(diverged), skipped)


def _summary_row(run_dir: Path) -> dict[str, Any]:
    """One run's summary.json flattened, with its resolved settings and the key that pools its seeds."""
    s = read_summary(run_dir) or {}
    cfg = RunConfig.from_dict(s["config"])
    identity = complete_identity(s["identity"])
    env, dataset = s.get("environment", {}), identity["dataset"]
    run_settings = {k: v for k, v in cfg.overrides().items() if not k.startswith("method_args.") and k != "seed"}
    flat = {k: v for k, v in s.items() if not isinstance(v, dict)}
    flat.update(run_dir=str(run_dir), device_name=env.get("device_name"), host=env.get("host"),
                cpu_count=env.get("cpu_count"), torch=env.get("torch"), commit=s.get("git", {}).get("commit"),
                alpha=cfg.full_method_args().get("alpha"), settings=settings_label(cfg),
                config_key=json.dumps({k: v for k, v in identity.items() if k != "seed"}
                                      | {"dataset": {k: v for k, v in identity["dataset"].items() if k not in DATASET_INFO}},
                                      sort_keys=True),
                data_root=dataset["root"], data_form=dataset.get("form"), label_order=dataset.get("label_order"),
                precision=identity["precision"], device_type=identity["device_type"],
                dataset=dataset_name(cfg.profile, dataset), classes=dataset.get("classes"),
                train_images=dataset.get("train_images"), val_images=dataset.get("val_images"),
                # the Vanilla run a row is compared with: same backbone, epochs, width and run-level settings
                vanilla_key=json.dumps({"backbone": cfg.backbone, "epochs": identity["epochs"],
                                        "width": identity["width"], **run_settings}, sort_keys=True),
                # the profile's published table (mixnb.profiles): "on the protocol" = its dataset, one of its epoch
                # budgets, its width, no other setting changed; "compared" = on it, or (a table of several budgets)
                # the same but at another epoch count, beside the nearest budget
                published_table=cfg.profile_spec.published,
                **comparison(cfg.profile_spec.published, dataset_name(cfg.profile, dataset), identity, run_settings),
                **{k: identity[k] for k in ("epochs", "width", "batch_size", "lr", "momentum", "weight_decay", "min_lr")})
    # what the main table reads: OpenMixup's read-out of each row (AutoMix/SAMix: best of four heads, §1.7)
    flat["readout_top1"] = s.get("reference_top1", s["median_top1"])
    flat["readout"] = "best of 4 heads" if "reference_top1" in s else "online"
    flat["group_key"] = json.dumps({k: v for k, v in json.loads(flat["config_key"]).items() if k != "method_args"}
                                   | {"method_args": {k: v for k, v in identity["method_args"].items() if k != "alpha"}},
                                   sort_keys=True)
    return flat


DATASET_FORMS = {"tiny-imagenet": "Tiny-ImageNet", "cifar-100": "CIFAR-100", "imagenet64": "Downsampled ImageNet 64x64"}


def dataset_name(profile: str, dataset: dict[str, Any]) -> str:
    """What a run's dataset record (identity.dataset) holds, by name: the generated sample set, or the form read
    (docs/datasets.md); a record from before forms were recorded: Tiny-ImageNet by its 200 classes."""
    if profile in PROFILES and PROFILES[profile].sample is not None:
        return "generated sample set"
    form = dataset.get("form")
    if form is None:
        return "Tiny-ImageNet" if dataset.get("classes") == 200 else "unnamed dataset"
    return next((name for prefix, name in DATASET_FORMS.items() if form.startswith(prefix)), form)


READOUT_WINDOW = MEDIAN_RECORDS + 1  # the read-out: the median of epochs 390-400, 11 values (docs/protocol.md §1.7)
MEDIANS = ("readout_top1", "median_top1")  # the values read over that window (the others: one epoch each)


def pooled(summaries: pd.DataFrame, value: str = "median_top1") -> pd.DataFrame:
    """One row per configuration (every maths setting but the seed): mean, std, count and the 95 % t-interval of
    the mean (``ci``, None below two seeds) over its seeds."""
    keys = ["method", "backbone", "settings", "alpha", "group_key", "config_key"]
    df = summaries.assign(alpha=summaries["alpha"].fillna(-1))  # groupby drops NaN keys; Vanilla has no alpha
    grouped = df.groupby(keys, sort=False)[value]
    out = grouped.agg(["mean", "std", "count"]).assign(ci=grouped.agg(t_interval)).reset_index()
    out["alpha"] = out["alpha"].where(out["alpha"] >= 0)
    return out


def best_alpha(summaries: pd.DataFrame, value: str = "median_top1", *, by: str | None = None) -> pd.DataFrame:
    """Per method, backbone and other settings, the configuration whose mean ``by`` (default: ``value``) over
    seeds is best, with the mean, std, count and ``ci`` of ``value``, how many alphas ran (``candidates``), the
    alphas it tied with (``tied``) and the rule that broke the tie (``tie_rule``).

    Tiny-ImageNet has no labelled test split, so, as in the reference, alpha is chosen on the validation
    set, by the same read-out the table shows. A tie is a mean equal at the two decimals the table shows; it goes
    to the published alpha (the registry's) when that is among the tied, else to the smallest (docs/analysis.md §8)."""
    by = by or value
    rows = pooled(summaries, value).assign(_by=pooled(summaries, by)["mean"].round(2).to_numpy())
    published = rows["method"].map(lambda m: get_spec(m).defaults.get("alpha") if m in REGISTRY else None)
    rows = rows.assign(_published=rows["alpha"] == published)
    picks = []
    for _, group in rows.groupby(["method", "backbone", "group_key"], sort=False):
        top = group[group["_by"] == group["_by"].max()]
        pick = top.sort_values(["_published", "alpha"], ascending=[False, True], kind="stable").iloc[0]
        tied = tuple(top.drop(index=pick.name)["alpha"])
        rule = "" if not tied else "published α" if pick["_published"] else "smallest α"
        picks.append({**pick.drop(["_by", "_published"]).to_dict(), "candidates": len(group), "tied": tied,
                      "tie_rule": rule})
    return pd.DataFrame(picks, columns=[*rows.columns.drop(["_by", "_published"]), "candidates", "tied", "tie_rule"])


def t_interval(values: Any) -> tuple[float, float] | None:
    """The 95 % Student-t interval of the mean of ``values``: mean ± t(0.975, n - 1) s / √n; None below two."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return float(x.mean()) - half, float(x.mean()) + half


@dataclass(frozen=True)
class VanillaDelta:
    """A configuration's top-1 minus Vanilla's: over the seeds both ran (``paired`` of them; same seed = same data
    order and initialisation), the mean of the paired differences and its 95 % t-interval (``ci``, two pairs or
    more); with no seed in common, the difference of the seed means (``paired`` 0)."""

    delta: float
    paired: int
    ci: tuple[float, float] | None

    @property
    def within_noise(self) -> bool:
        """The interval holds 0: the difference is not larger than the seed-to-seed noise."""
        return self.ci is not None and self.ci[0] <= 0 <= self.ci[1]

    def label(self) -> str:
        if self.ci is None:
            return f"{self.delta:+.2f}"
        return (f"{self.delta:+.2f} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}], {self.paired} paired"
                + (", within seed noise" if self.within_noise else ""))


def vanilla_deltas(summaries: pd.DataFrame, value: str = "median_top1") -> dict[str, VanillaDelta]:
    """Per configuration (``config_key``) its ``VanillaDelta`` to the Vanilla runs of the same backbone, epochs,
    width and run-level settings (``vanilla_key``; a hand-made frame without it: backbone and settings). A
    configuration without such a Vanilla run has no entry."""
    if summaries.empty or not (summaries["method"] == "vanilla").any():
        return {}
    df = summaries.assign(_vanilla=vanilla_keys(summaries))
    base = df[df["method"] == "vanilla"].groupby(["_vanilla", "seed"])[value].mean()
    out = {}
    for config_key, group in df.groupby("config_key", sort=False):
        key = group["_vanilla"].iloc[0]
        if key not in base.index.get_level_values(0):
            continue
        ref = base.loc[key]  # Vanilla's value per seed
        shared = group[group["seed"].isin(ref.index)]
        if shared.empty:
            out[config_key] = VanillaDelta(float(group[value].mean() - ref.mean()), 0, None)
        else:
            diffs = shared[value].to_numpy() - ref.loc[shared["seed"]].to_numpy()
            out[config_key] = VanillaDelta(float(diffs.mean()), len(diffs), t_interval(diffs))
    return out


def vanilla_keys(summaries: pd.DataFrame) -> pd.Series:
    """Each run's ``vanilla_key``; a hand-made frame without it: its backbone and settings."""
    return summaries["vanilla_key"] if "vanilla_key" in summaries else summaries["backbone"] + "|" + summaries["settings"]


def short_runs(summaries: pd.DataFrame) -> pd.Series:
    """Per run, whether it is shorter than the read-out window: its "median" then covers every epoch, early ones
    included, and is not the protocol's read-out."""
    return summaries.get("median_window", pd.Series(READOUT_WINDOW, index=summaries.index)) < READOUT_WINDOW


def column_values(df: pd.DataFrame | None, name: str) -> list[Any]:
    return [] if df is None or df.empty else list(df[name])


def frame_rows(df: pd.DataFrame | None) -> list[Any]:
    return [] if df is None or df.empty else list(df.itertuples())
