"""Runs -> DataFrames -> the benchmark table, curves and mixed-sample galleries; HTML rendering.

The table follows OpenMixup's Tiny-ImageNet page (docs/protocol.md §4): rows are methods, columns
backbones, cells the median top-1 of the last 10 epochs with the difference to our Vanilla run, beside the
published number where the runs are on that protocol, and the OpenMixup code each cell's runs follow
(``code_followed``; docs/publication.md). How each number states what it is, its n and its interval (seeds,
α ties, analysis numbers, comparable timings): docs/analysis.md §8.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mixnb.config import ADDED_METHOD_SETTINGS, PROFILES, PROTOCOL, REFERENCES, RunConfig
from mixnb.mixups import HEAD, PUBLISHED, REGISTRY, PublishedTable, get_spec, nearest_budget, published_top1, reference_code
from mixnb.paths import KERNEL, NOTEBOOKS, reports_root, runs_root
from mixnb.runs import DATASET_INFO, METRICS, PARAMS, complete_identity, failure, is_finished, metric_rows, read_summary
from mixnb.train import MEDIAN_RECORDS

BACKBONE_LABELS = {"resnet18": "R-18", "resnext50": "RX-50"}


# ----------------------------------------------------------------------------- loading
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
                data_root=dataset["root"], precision=identity["precision"], device_type=identity["device_type"],
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


def comparison(table_key: str | None, dataset: str, identity: dict[str, Any],
               run_settings: dict[str, Any]) -> dict[str, bool]:
    """``on_protocol`` and ``compared`` of one run against the published table ``table_key`` (None: no table)."""
    table = PUBLISHED.get(table_key) if table_key else None
    if table is None or dataset != table.dataset or identity["width"] != table.width \
            or not set(run_settings) <= {"precision", "epochs"}:
        return {"on_protocol": False, "compared": False}
    on = identity["epochs"] in table.budgets
    return {"on_protocol": on, "compared": on or table.nearest}


def published_source(summaries: pd.DataFrame) -> tuple[PublishedTable, int]:
    """The published table the OpenMixup column reads (the runs' profile's; Tiny-ImageNet's for rows from before
    profiles named one) and its budget nearest the runs' most common epoch count."""
    keys = summaries["published_table"].dropna() if "published_table" in summaries else pd.Series(dtype=object)
    table = PUBLISHED[keys.mode().iloc[0]] if len(keys) else PUBLISHED["tiny-imagenet"]
    epochs = int(summaries["epochs"].mode().iloc[0]) if "epochs" in summaries and len(summaries) else table.budgets[0]
    return table, nearest_budget(table, epochs)


def openmixup_header(table: PublishedTable, budget: int) -> str:
    """The OpenMixup column's header: "OpenMixup" (Tiny-ImageNet: one budget), "OpenMixup 400 ep" otherwise."""
    return "OpenMixup" if len(table.budgets) == 1 else f"OpenMixup {budget} ep"


def published_column(table: PublishedTable, budget: int, methods: list[str], backbone: str) -> list[float | None]:
    """``table``'s number of each of ``methods`` on ``backbone`` at ``budget``."""
    return [published_top1(table, m, backbone, budget) for m in methods]


def dataset_name(profile: str, dataset: dict[str, Any]) -> str:
    """What a run's dataset record (identity.dataset) holds, by name: the generated sample set, or the form read
    (docs/datasets.md); a record from before forms were recorded: Tiny-ImageNet by its 200 classes."""
    if profile in PROFILES and PROFILES[profile].sample is not None:
        return "generated sample set"
    form = dataset.get("form")
    if form is None:
        return "Tiny-ImageNet" if dataset.get("classes") == 200 else "unnamed dataset"
    return next((name for prefix, name in DATASET_FORMS.items() if form.startswith(prefix)), form)


def code_followed(method: str, backbone: str, identity: dict[str, Any]) -> str:
    """The OpenMixup code whose settings a run's identity holds: "e81ed85 (2022-03-10)" for the code that published
    the cell (‡: a setting of it undetermined, see the notes), "HEAD 37e1372 (2025-10-15)", or "neither" with the
    settings that match neither. Only what ``RunConfig.reference`` resolves is compared (alpha, epochs ... are the
    table's own columns and labels)."""
    if method not in REGISTRY:
        return "?"
    spec = get_spec(method)
    keys = sorted(set(spec.head) | set(ADDED_METHOD_SETTINGS.get(method, {})))
    mismatch = {}
    for reference in REFERENCES:
        want = RunConfig(method=method, backbone=backbone, reference=reference, bn_groups=identity.get("bn_groups"))
        maths = want.maths()
        pairs = [(k, maths.get(k), identity.get(k)) for k in ("crop_interpolation", "running_stats")]
        pairs += [(k, maths["method_args"].get(k), identity.get("method_args", {}).get(k)) for k in keys]
        mismatch[reference] = [(k, got) for k, want_value, got in pairs if want_value != got]
        if not mismatch[reference]:
            code = reference_code(method, backbone, reference)
            name = f"HEAD {code.commit}" if code == HEAD else code.commit  # no published cell: HEAD's code
            return f"{name} ({code.date}){' ‡' if code.undetermined and reference == 'published' else ''}"
    return "neither: " + ", ".join(f"{k} {_num(v)}" for k, v in mismatch["published"])


def _code(method: str, backbone: str, config_key: str) -> str:
    """``code_followed`` of a pooled configuration (its ``config_key``: the identity without the seed)."""
    try:
        identity = json.loads(config_key)
    except ValueError:
        return "?"
    return code_followed(method, backbone, identity) if isinstance(identity, dict) else "?"


def settings_label(cfg: RunConfig) -> str:
    """The run's settings that differ from its profile's and method's defaults (alpha excluded: the table shows
    it), e.g. "epochs 100, lr 0.1"; "" for a default run."""
    return ", ".join(f"{key.removeprefix('method_args.')} {_num(value)}" for key, value in cfg.overrides().items()
                     if key not in ("seed", "method_args.alpha"))


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_label(name: str) -> str:
    return get_spec(name).label or name if name in REGISTRY else name


def methods_markdown() -> str:
    """The README's methods table, from the registry: each method's name (``mixnb.Mixer`` / ``METHODS=``), paper,
    the α and Tiny-ImageNet top-1 (R-18 / RX-50) published for it (📖: the authors' number, not an OpenMixup run),
    and whether the default sweep runs it."""
    lines = ["| method | name | paper | α | R-18 | RX-50 | default sweep |", "|---|---|---|---|---|---|---|"]
    for name, spec in REGISTRY.items():
        top1 = [f"{spec.published[b]:.2f}" if b in spec.published else "–" for b in BACKBONE_LABELS]
        alpha = "–" if spec.published_alpha is None else f"{spec.published_alpha:g}"
        mark = "" if spec.reproduced else " 📖"
        lines.append(f"| {spec.label}{mark} | `{name}` | {spec.paper or '–'} | {alpha} | {' | '.join(top1)} | "
                     f"{'yes' if spec.sweep else 'no'} |")
    return "\n".join(lines)


def row_label(method: str, settings: str) -> str:
    return f"{method_label(method)} ({settings})" if settings else method_label(method)


# ----------------------------------------------------------------------------- table
READOUT_WINDOW = MEDIAN_RECORDS + 1  # the protocol's read-out: the median of epochs 390-400, 11 values (protocol.md §1.7)
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
    df = summaries.assign(_vanilla=_vanilla_keys(summaries))
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


def _vanilla_keys(summaries: pd.DataFrame) -> pd.Series:
    """Each run's ``vanilla_key``; a hand-made frame without it: its backbone and settings."""
    return summaries["vanilla_key"] if "vanilla_key" in summaries else summaries["backbone"] + "|" + summaries["settings"]


def short_runs(summaries: pd.DataFrame) -> pd.Series:
    """Per run, whether it is shorter than the read-out window: its "median" then covers every epoch, early ones
    included, and is not the protocol's read-out."""
    return summaries.get("median_window", pd.Series(READOUT_WINDOW, index=summaries.index)) < READOUT_WINDOW


def compares_with_openmixup(summaries: pd.DataFrame) -> bool:
    """Whether any run is compared with its profile's published table (``compared``; rows without it: on the
    protocol, ``on_protocol``): Tiny-ImageNet's only at its 400 epochs, CIFAR-100's beside the nearest budget."""
    col = "compared" if "compared" in summaries else "on_protocol"
    return not summaries.empty and bool(summaries.get(col, pd.Series(False, index=summaries.index)).fillna(False).any())


def benchmark_table(summaries: pd.DataFrame, value: str = "readout_top1", *, diverged: pd.DataFrame | None = None,
                    reference: bool = True, code: bool = True, by: str | None = None, links: bool = False) -> pd.DataFrame:
    """Rows = methods in protocol (registry) order, one per non-default setting; columns per backbone:
    top-1 (mean ± std over seeds) at the best alpha; when its runs are shorter than the read-out window, the
    header says what that median covers and the last- and best-epoch top-1 stand beside it; the 95 % t-interval
    of the mean when a cell has two seeds or more; that alpha (ties: ``best_alpha``); the number of seeds; the
    difference to Vanilla (``vanilla_deltas``, "ref" on Vanilla's row, "–" without a Vanilla run). With
    ``reference``, OpenMixup's published number and the difference to it, the latter only for cells on the
    protocol (``on_protocol``); with ``code``, the OpenMixup code each cell's runs follow. A configuration with only
    diverged runs reads "diverged". ``by``: the read-out that picks the alpha (default ``value``; the best-epoch
    table shows the main table's). ``links``: a "runs" column per backbone with HTML links to the run pages.

    ``readout_top1`` reads every row as OpenMixup read it, so the difference compares like with like: the
    median of the last epochs, and for AutoMix/SAMix the best of their four heads' medians (marked †)."""
    if summaries.empty and (diverged is None or diverged.empty):
        return pd.DataFrame()
    value = value if value in summaries else "median_top1"
    best = best_alpha(summaries, value, by=by) if not summaries.empty else pd.DataFrame(
        columns=["method", "backbone", "settings", "alpha", "config_key", "mean", "std", "count", "ci", "candidates",
                 "tied", "tie_rule"])
    rows = {(r.method, r.settings) for r in best.itertuples()}
    if diverged is not None and not diverged.empty:
        rows |= {(r.method, r.settings) for r in diverged.itertuples()}
    order = sorted(rows, key=lambda ms: (list(REGISTRY).index(ms[0]) if ms[0] in REGISTRY else len(REGISTRY), ms[1]))
    backbones = [b for b in BACKBONE_LABELS if b in set(best["backbone"]) | set(_col(diverged, "backbone"))]
    deltas = vanilla_deltas(summaries, value)
    short = set(summaries.loc[short_runs(summaries), "config_key"]) if value in MEDIANS and not summaries.empty else set()
    on_protocol = set(summaries.loc[summaries["on_protocol"], "config_key"]) if "on_protocol" in summaries else set()
    table, budget = published_source(summaries)
    cols: dict[tuple[str, str], list[str]] = {}
    for backbone in backbones:
        label = BACKBONE_LABELS[backbone]
        cells = {(r.method, r.settings): r for r in best[best["backbone"] == backbone].itertuples()}
        failed = {(r.method, r.settings) for r in _rows(diverged) if r.backbone == backbone}

        def column(cell: Any) -> list[str]:
            return [cell(cells[k]) if k in cells else "diverged" if k in failed else "–" for k in order]

        shorts = [c for c in cells.values() if c.config_key in short]
        cols[(label, top1_header(summaries[summaries["config_key"].isin([c.config_key for c in shorts])]))] = \
            column(lambda c: _fmt(c.mean, c.std, c.count))
        if shorts:
            for name, col in (("last epoch", "last_top1"), ("best epoch", "best_top1")):
                means = summaries.groupby("config_key")[col].mean()
                cols[(label, name)] = column(lambda c: f"{means[c.config_key]:.2f}")
        if any(c.count > 1 for c in cells.values()):
            cols[(label, "95 % CI")] = column(lambda c: f"[{c.ci[0]:.2f}, {c.ci[1]:.2f}]" if c.ci else "n=1")
        cols[(label, "α")] = column(lambda c: _alpha(c.alpha, c.candidates, c.tied, c.tie_rule))
        cols[(label, "seeds")] = column(lambda c: str(c.count))
        cols[(label, "Δ Vanilla")] = column(lambda c: "ref" if c.method == "vanilla" else
                                            deltas[c.config_key].label() if c.config_key in deltas else "–")
        if links:
            cols[(label, "runs")] = column(lambda c: _run_links(summaries, c.config_key))
        if reference:  # the runs' profile's table at the budget nearest their epochs (published_source)
            ref = published_column(table, budget, [m for m, _ in order], backbone)
            book = [table.rows[m].mark == "📖" if m in table.rows else False for m, _ in order]  # the authors' number
            cols[(label, openmixup_header(table, budget))] = [f"{r:.2f}{' 📖' if b else ''}" if r is not None
                                                              else "–" for r, b in zip(ref, book)]
            cols[(label, "Δ OpenMixup")] = [f"{cells[k].mean - r:+.2f}" if r is not None and k in cells
                                            and cells[k].config_key in on_protocol else "–" for k, r in zip(order, ref)]
        if code:
            cols[(label, "code")] = column(lambda c: _code(c.method, backbone, c.config_key))
    heads = set(summaries.loc[summaries.get("readout", pd.Series(dtype=str)) == "best of 4 heads", "method"]) \
        if value == "readout_top1" and not summaries.empty else set()
    labels = [row_label(m, st) + (" †" if m in heads else "") for m, st in order]
    if "teacher" in summaries:  # AttentiveMix+: say which teacher made the row (ImageNet file or own run)
        teachers = summaries.dropna(subset=["teacher"]).groupby("method")["teacher"].first()
        labels = [f"{lab} (teacher: {teachers[m]})" if m in teachers else lab for (m, _), lab in zip(order, labels)]
    table = pd.DataFrame(cols, index=labels)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    return table


def top1_header(short: pd.DataFrame) -> str:
    """The top-1 column's header: "top-1", or what the median covers when ``short`` (the cells' runs shorter than
    the read-out window) holds runs: "top-1: median of all 4 epochs"."""
    if short.empty:
        return "top-1"
    epochs = sorted(set(short["epochs"])) if "epochs" in short else []
    return f"top-1: median of all {'/'.join(map(str, epochs)) or 'the'} epochs"


def _run_links(summaries: pd.DataFrame, config_key: str) -> str:
    """HTML links to the run pages of one configuration's seeds (run names escaped)."""
    from html import escape

    runs = summaries[summaries["config_key"] == config_key].sort_values("seed")
    return " ".join(f'<a href="{escape(run_page(r.run))}">s{r.seed}</a>' for r in runs.itertuples())


def bold_best(table: pd.DataFrame) -> Any:
    """``benchmark_table`` as an HTML Styler: the best number of each top-1 column (read-out, last and best epoch)
    in bold, every cell escaped but the "runs" columns, which ``benchmark_table(links=True)`` builds from escaped
    names."""
    def best(col: pd.Series) -> list[str]:
        values = pd.to_numeric(col.str.split(" ").str[0], errors="coerce")
        return ["font-weight: bold" if v == values.max() else "" for v in values]

    top1 = [c for c in table.columns if c[-1].startswith("top-1") or c[-1] in ("last epoch", "best epoch")]
    styler = table.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    link_columns = [c for c in table.columns if c[-1] == "runs"]
    if link_columns:
        styler = styler.format(str, subset=link_columns, escape=None)
    return styler.apply(best, subset=top1)


def beyond_accuracy(summaries: pd.DataFrame) -> pd.DataFrame:
    """The "beyond accuracy" numbers (``mixnb.analysis.BEYOND_COLUMNS``) per configuration, in protocol order: one
    row per method, α and settings (runs of different settings never pool, as in the main table); per number its
    mean over the seeds, "<number> n" (the images it was computed on) and "<number> low"/"high" (the mean of the
    seeds' 95 % intervals; ``mixnb.analysis.beyond_value``)."""
    from mixnb.analysis import BEYOND_COLUMNS, beyond_value
    from mixnb.runs import read_analysis

    rows = []
    for r in _rows(summaries):
        record = read_analysis(r.run_dir)
        if record is None:
            continue
        row = {"method": r.method, "backbone": r.backbone, "alpha": r.alpha, "settings": r.settings,
               "config_key": r.config_key}
        for name, column in BEYOND_COLUMNS.items():
            value, n, ci = beyond_value(record, column)
            row |= {name: value, f"{name} n": n, f"{name} low": ci and ci[0], f"{name} high": ci and ci[1]}
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    columns = [c for name in BEYOND_COLUMNS for c in (name, f"{name} n", f"{name} low", f"{name} high")]
    df[columns] = df[columns].astype(float)
    grouped = df.groupby(["method", "backbone", "settings", "config_key"], sort=False)
    out = grouped[columns].mean().assign(seeds=grouped.size(), alpha=grouped["alpha"].first()).reset_index()
    out["_o"] = out["method"].map(lambda m: list(REGISTRY).index(m) if m in REGISTRY else 99)
    out = out.sort_values(["backbone", "_o", "alpha"], kind="stable")
    out["α"] = out["alpha"].map(_alpha)
    out["method"] = out["method"].map(method_label)
    out["backbone"] = out["backbone"].map(lambda b: BACKBONE_LABELS.get(b, b))
    return out.set_index(["backbone", "method", "α", "settings"])[["seeds", *columns]]


def beyond_view(beyond: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``beyond_accuracy`` as the report shows it, and a same-shaped frame marking the best cell of each column.
    Each number's header carries its direction (↑ higher is better, ↓ lower) and n, e.g. "FGSM % ↑ (n=64)"; each
    cell reads "value [95 % interval]" (NLL: the value alone)."""
    from mixnb.analysis import BEYOND_COLUMNS

    view, best = pd.DataFrame(index=beyond.index), pd.DataFrame(index=beyond.index)
    view["seeds"], best["seeds"] = beyond["seeds"].astype(int).astype(str), False
    for name, column in BEYOND_COLUMNS.items():
        values, ns = beyond[name], beyond[f"{name} n"].dropna()
        if values.isna().all():
            continue
        n = f"{ns.min():.0f}" if ns.min() == ns.max() else f"{ns.min():.0f}–{ns.max():.0f}"
        unit = "" if name == "NLL" else " %"
        header = f"{name}{unit} {'↑' if column.higher_is_better else '↓'} (n={n})"
        view[header] = [("–" if pd.isna(v) else f"{v:.2f}" + (f" [{lo:.1f}, {hi:.1f}]" if pd.notna(lo) else ""))
                        for v, lo, hi in zip(values, beyond[f"{name} low"], beyond[f"{name} high"])]
        top = values.max() if column.higher_is_better else values.min()
        best[header] = values.round(2) == round(top, 2)
    return view, best


def beyond_styler(beyond: pd.DataFrame) -> Any:
    """``beyond_view`` as an HTML Styler, the best cell of each column in bold."""
    view, best = beyond_view(beyond)
    return (view.style.set_properties(**{"white-space": "nowrap"})  # a value and its interval on one line
            .apply(lambda col: ["font-weight: bold" if b else "" for b in best[col.name]], subset=view.columns[1:]))


def train_gflops(run_dir: str) -> float | None:
    """GFLOPs of one training image through the method's step (forward + backward; analysis.json), or None."""
    from mixnb.analysis import value_at
    from mixnb.runs import read_analysis

    flops = value_at(read_analysis(run_dir) or {}, ("flops", "train_step_per_image"))
    return flops / 1e9 if flops else None


def corruption_table(record: dict[str, Any]) -> pd.DataFrame:
    """One run's generated-corruption top-1 (%) per corruption and severity, from its analysis.json record."""
    generated = record["corruptions"]["generated"]
    table = pd.DataFrame(generated["top1"], index=[f"severity {s}" for s in generated["severities"]]).T.round(1)
    table.index.name = "corruption"
    return table


def analysis_failures_html(summaries: pd.DataFrame, profile: str) -> str:
    """The finished runs whose analysis failed, each with its reason (analysis_failed.json), escaped; "" if none."""
    from html import escape

    from mixnb.runs import analysis_failure

    failed = [(Path(d).name, f["reason"]) for d in _col(summaries, "run_dir") if (f := analysis_failure(d))]
    if not failed:
        return ""
    items = "".join(f"<li><b>{escape(run)}</b>: {escape(reason)}</li>" for run, reason in failed)
    return (f"<p><b>Analysis failed for {len(failed)} finished run(s)</b>; their accuracy above stands, and "
            f"<code>make analyze PROFILE={escape(profile)}</code> or the next <code>make sweep</code> tries again:</p>"
            f"<ul>{items}</ul>")


def definitions_html() -> str:
    """Each analysis number's definition, one line each (``mixnb.analysis.definitions``), escaped."""
    from html import escape

    from mixnb.analysis import definitions

    return "<ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in definitions().items()) + "</ul>"


TIDY_COLUMNS = ["method", "settings", "backbone", "alpha", "top1_mean", "top1_std", "top1_ci_low", "top1_ci_high",
                "seeds", "last_top1", "best_top1", "delta_vanilla", "delta_vanilla_ci_low", "delta_vanilla_ci_high",
                "openmixup", "on_protocol"]


def tidy_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """The main table as data: one row per (method, settings, backbone) at its best alpha, in protocol order, with
    the 95 % t-interval, the last and best epoch (means over seeds), the difference to Vanilla and its paired
    interval (``vanilla_deltas``), OpenMixup's number and whether the runs are on its protocol."""
    if summaries.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    readout = "readout_top1" if "readout_top1" in summaries else "median_top1"
    best = best_alpha(summaries, readout)
    best = best.assign(_o=best["method"].map({m: i for i, m in enumerate(REGISTRY)}))
    best = best.sort_values(["_o", "settings", "backbone"], key=lambda c: c.map(list(BACKBONE_LABELS).index)
                            if c.name == "backbone" else c, kind="stable")
    deltas = vanilla_deltas(summaries, readout)
    delta = [deltas.get(k) for k in best["config_key"]]
    by_config = summaries.groupby("config_key")
    table, budget = published_source(summaries)
    return pd.DataFrame({
        "method": best["method"].map(method_label), "settings": best["settings"], "backbone": best["backbone"],
        "alpha": best["alpha"], "top1_mean": best["mean"].round(2), "top1_std": best["std"].round(2),
        "top1_ci_low": [round(c[0], 2) if c else None for c in best["ci"]],
        "top1_ci_high": [round(c[1], 2) if c else None for c in best["ci"]], "seeds": best["count"],
        **{col: best["config_key"].map(by_config[col].mean()).round(2) if col in summaries else None
           for col in ("last_top1", "best_top1")},
        "delta_vanilla": [round(d.delta, 2) if d else None for d in delta],
        "delta_vanilla_ci_low": [round(d.ci[0], 2) if d and d.ci else None for d in delta],
        "delta_vanilla_ci_high": [round(d.ci[1], 2) if d and d.ci else None for d in delta],
        "openmixup": [published_top1(table, m, b, budget) for m, b in zip(best["method"], best["backbone"])],
        "on_protocol": best["config_key"].map(by_config["on_protocol"].all()) if "on_protocol" in summaries else False,
    }).reset_index(drop=True)


def openmixup_agreement(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, how our column agrees with OpenMixup's over the methods whose cells are on its protocol, at
    default settings, with a published number: Kendall's τ-b of the two rankings with its two-sided p-value
    (``scipy.stats.kendalltau``; nan below two methods) and the mean absolute difference (points)."""
    from scipy import stats

    tidy = tidy_table(summaries)
    cells = tidy[tidy["on_protocol"].astype(bool) & tidy["openmixup"].notna() & (tidy["settings"] == "")]
    rows = []
    for backbone, g in cells.groupby("backbone", sort=False):
        tau, p = stats.kendalltau(g["top1_mean"], g["openmixup"]) if len(g) > 1 else (float("nan"), float("nan"))
        rows.append({"backbone": BACKBONE_LABELS.get(backbone, backbone), "methods": len(g), "Kendall τ": tau,
                     "p": p, "mean |Δ OpenMixup|": (g["top1_mean"] - g["openmixup"]).abs().mean()})
    return pd.DataFrame(rows, columns=["backbone", "methods", "Kendall τ", "p", "mean |Δ OpenMixup|"]).round(3)


def write_exports(summaries: pd.DataFrame, out_dir: Path) -> list[Path]:
    """benchmark.csv (tidy), benchmark.md and benchmark.tex (the table's layout: a row per method, per backbone
    ours and the difference to Vanilla, and OpenMixup's number where runs are on its protocol, the best of each of
    our columns in bold) next to the report; beyond.csv/.md/.tex (the beyond-accuracy table) when runs were
    analysed."""
    from mixnb.io import atomic_write_text

    tidy = tidy_table(summaries)  # read as the main table reads
    paths = [out_dir / f"benchmark.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], tidy.to_csv(index=False))
    backbones = [b for b in BACKBONE_LABELS if b in set(tidy.get("backbone", []))]
    reference = compares_with_openmixup(summaries)
    om = openmixup_header(*published_source(summaries)) if not summaries.empty else "OpenMixup"
    header = ["Method", "α"] + [f"{BACKBONE_LABELS[b]} {w}" for b in backbones
                                for w in ("ours", "Δ Vanilla", *((om,) if reference else ()))]
    rows = []
    best = {b: tidy[tidy["backbone"] == b]["top1_mean"].max() for b in backbones}
    for (method, settings), group in tidy.groupby(["method", "settings"], sort=False):
        cells = {r.backbone: r for r in group.itertuples()}
        alphas = "/".join(_alpha(cells[b].alpha) if b in cells else "–" for b in backbones)
        row = [(f"{method} ({settings})" if settings else method), alphas]
        for b in backbones:
            r = cells.get(b)
            ours = "–" if r is None else (f"{r.top1_mean:.2f} ± {r.top1_std:.2f}" if r.seeds > 1 else f"{r.top1_mean:.2f}")
            row += [(ours, r is not None and r.top1_mean == best[b]),
                    ("ref" if method == method_label("vanilla") else f"{r.delta_vanilla:+.2f}"
                     if r is not None and pd.notna(r.delta_vanilla) else "–", False)]
            if reference:
                row.append((f"{r.openmixup:.2f}" if r is not None and pd.notna(r.openmixup) else "–", False))
        rows.append([(c, False) if isinstance(c, str) else c for c in row])
    paths[1:] = _table_files(out_dir / "benchmark", header, rows, text_columns=1)
    beyond = beyond_accuracy(summaries)
    if not beyond.empty:
        paths.append(out_dir / "beyond.csv")
        atomic_write_text(paths[-1], beyond.reset_index().to_csv(index=False))
        view, best = beyond_view(beyond)
        cells = [[(str(k), False) for k in key] + list(zip(row, marks))
                 for key, row, marks in zip(view.index, view.itertuples(index=False), best.itertuples(index=False))]
        paths += _table_files(out_dir / "beyond", [*view.index.names, *view.columns], cells, text_columns=4)
    return paths


def _table_files(stem: Path, header: list[str], rows: list[list[tuple[str, bool]]], *, text_columns: int) -> list[Path]:
    """``stem``.md and ``stem``.tex of ``rows`` (cells as (text, bold)); the first ``text_columns`` left-aligned."""
    from mixnb.io import atomic_write_text

    md = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(f"**{_md(c)}**" if bold else _md(c) for c, bold in row) + " |" for row in rows]
    tex = [r"\begin{tabular}{" + "l" * text_columns + "r" * (len(header) - text_columns) + "}", r"\toprule",
           " & ".join(_tex(h) for h in header) + r" \\", r"\midrule",
           *(" & ".join(rf"\textbf{{{_tex(c)}}}" if bold else _tex(c) for c, bold in row) + r" \\" for row in rows),
           r"\bottomrule", r"\end{tabular}"]
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex")]
    for path, lines in zip(paths, (md, tex)):
        atomic_write_text(path, "\n".join(lines) + "\n")
    return paths


def _md(text: str) -> str:
    """A Markdown table cell: backslashes and pipes escaped (a pipe would split the cell), on one line."""
    return " ".join(text.replace("\\", "\\\\").replace("|", r"\|").splitlines())


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "α": r"$\alpha$",
               "–": "--"}


def _tex(text: str) -> str:
    """A LaTeX table cell: every special character escaped, in one pass (so no replacement is escaped again)."""
    return re.sub("|".join(map(re.escape, TEX_ESCAPES)), lambda m: TEX_ESCAPES[m.group()], text)


def appendix_table(summaries: pd.DataFrame, diverged: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every configuration that ran: its alpha and settings, median top-1 over its seeds with its 95 % t-interval
    and difference to Vanilla (``vanilla_deltas``), whether the main table chose its alpha ("✓", with the tie and
    its rule when there was one: ``best_alpha`` on the main table's read-out), and the diverged ones."""
    rows = []
    if not summaries.empty:
        deltas = vanilla_deltas(summaries)
        readout = "readout_top1" if "readout_top1" in summaries else "median_top1"
        chosen = {r.config_key: "✓" + (f" (tied with {', '.join(f'{a:g}' for a in r.tied)}: {r.tie_rule})"
                                       if r.tied else "") for r in best_alpha(summaries, readout).itertuples()}
        for r in pooled(summaries).itertuples():
            rows.append({"method": method_label(r.method), "backbone": BACKBONE_LABELS.get(r.backbone, r.backbone),
                         "α": _alpha(r.alpha), "settings": r.settings or "–",
                         "median top-1": _fmt(r.mean, r.std, r.count), "seeds": r.count,
                         "95 % CI": f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else "n=1",
                         "Δ Vanilla": "ref" if r.method == "vanilla" else
                         deltas[r.config_key].label() if r.config_key in deltas else "–",
                         "chosen α": chosen.get(r.config_key, ""),
                         "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
    for r in _rows(diverged):
        rows.append({"method": method_label(r.method), "backbone": BACKBONE_LABELS.get(r.backbone, r.backbone),
                     "α": "", "settings": r.settings or "–", "median top-1": r.reason,
                     "seeds": f"seed {r.seed}", "95 % CI": "", "Δ Vanilla": "", "chosen α": "",
                     "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).sort_values(["backbone", "_order", "settings", "α"], kind="stable")
    return df.drop(columns="_order").set_index(["backbone", "method", "α", "settings"])


def appendix_html(summaries: pd.DataFrame, diverged: pd.DataFrame | None = None) -> str:
    """``appendix_table`` as HTML, every cell escaped, with a link to each configuration's run pages."""
    from html import escape

    table = appendix_table(summaries, diverged)
    if table.empty:
        return ""
    runs: dict[tuple[str, str, str, str], list[tuple[int, str]]] = {}
    for df in (summaries, diverged if diverged is not None else pd.DataFrame()):
        for r in _rows(df):
            key = (BACKBONE_LABELS.get(r.backbone, r.backbone), method_label(r.method),
                   _alpha(getattr(r, "alpha", None)) if df is summaries else "", r.settings or "–")
            runs.setdefault(key, []).append((r.seed, r.run))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [*table.index.names, *table.columns, "runs"])
    body = []
    for key, row in table.iterrows():
        links = " ".join(f'<a href="{escape(run_page(run))}">s{seed}</a>' for seed, run in sorted(runs.get(key, [])))
        cells = [*key, *row.tolist()]
        body.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + f"<td>{links}</td></tr>")
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _alpha(alpha: float | None, candidates: int = 1, tied: tuple[float, ...] = (), rule: str = "") -> str:
    """"0.2", "0.2 (best of 2)", or with a tie "1 (best of 2; tied with 0.2: published α)"."""
    if alpha is None or pd.isna(alpha):
        return "–"
    tie = f"; tied with {', '.join(f'{a:g}' for a in tied)}: {rule}" if tied else ""
    return f"{alpha:g}" + (f" (best of {candidates}{tie})" if candidates > 1 else "")


def _col(df: pd.DataFrame | None, name: str) -> list[Any]:
    return [] if df is None or df.empty else list(df[name])


def _rows(df: pd.DataFrame | None) -> list[Any]:
    return [] if df is None or df.empty else list(df.itertuples())


def readout_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """AutoMix/SAMix/AdAutoMix: the plain online-encoder median beside the reference's read-out, which the main
    table shows: OpenMixup's best of four heads (docs/protocol.md §1.7); for AdAutoMix its authors' EMA one-hot head.
    Each run's difference to the Vanilla run of the same seed, backbone, epochs, width and settings: of the
    online median to Vanilla's median, of the read-out to Vanilla's read-out ("–": no such Vanilla run)."""
    if "reference_top1" not in summaries:
        return pd.DataFrame()
    rows = summaries.dropna(subset=["reference_top1"])
    vanilla = summaries[summaries["method"] == "vanilla"].assign(_key=_vanilla_keys).set_index(["_key", "seed"])
    at = [(k, seed) for k, seed in zip(_vanilla_keys(rows), rows["seed"])]
    out = rows[["method", "backbone", "alpha", "settings", "seed", "median_top1", "reference_top1"]].copy()
    for value, base, name in (("median_top1", "median_top1", "online Δ Vanilla"),
                              ("reference_top1", "readout_top1", "read-out Δ Vanilla")):
        ref = vanilla.get(base, vanilla["median_top1"])
        out[name] = [v - ref[k] if k in ref.index else float("nan") for v, k in zip(rows[value], at)]
    out["method"] = out["method"].map(method_label)
    out["alpha"] = out["alpha"].map(_alpha)
    out = out.rename(columns={"alpha": "α", "median_top1": "online q median",
                              "reference_top1": "reference read-out (in the table, †)"}
                     ).set_index(["method", "backbone", "α", "settings", "seed"]).round(2)
    return out.astype(object).where(out.notna(), "–")


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None or n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


LOAD_SPREAD = 0.5  # the most the runs' median 1-min loads may differ for their wall times to be compared


def cost_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Training cost per configuration in protocol order, led by what no machine changes: the FLOPs of one training
    image through the method's step (analysis.json); then training seconds per epoch (the median over epochs, the
    first one left out as warm-up; evaluation not included), its ratio to the Vanilla run of the same backbone,
    epochs, width and settings (``vanilla_key``), the machine's median 1-min load while the runs trained
    (``load_avg``; "–" for runs from before it was recorded) and peak memory. ``timing_caveat`` says whether the
    ratios mean anything."""
    df = pooled(summaries, TRAIN_SECONDS).rename(columns={"mean": "seconds"})
    df["peak MiB"] = pooled(summaries, "peak_mem_mb")["mean"].to_numpy()
    df["load"] = df["config_key"].map(summaries.groupby("config_key")["load_avg"].median()) \
        if "load_avg" in summaries else float("nan")
    df["vanilla_key"] = df["config_key"].map(_vanilla_keys(summaries).groupby(summaries["config_key"]).first())
    base = {r.vanilla_key: r.seconds for r in df[df["method"] == "vanilla"].itertuples()}
    df["× Vanilla"] = [r.seconds / base[r.vanilla_key] if r.vanilla_key in base else float("nan")
                       for r in df.itertuples()]
    df["train s/epoch"] = df["seconds"]
    flops = summaries.assign(f=[train_gflops(d) for d in summaries["run_dir"]]).groupby("config_key", sort=False)["f"]
    df["train GFLOPs/image"] = df["config_key"].map(flops.mean())
    df["_order"] = [list(REGISTRY).index(m) if m in REGISTRY else 99 for m in df["method"]]
    df = df.sort_values(["backbone", "_order", "alpha"], kind="stable")
    df["method"] = df["method"].map(method_label)
    df["α"] = df["alpha"].map(_alpha)
    df["backbone"] = df["backbone"].map(lambda b: BACKBONE_LABELS.get(b, b))
    df = df.set_index(["backbone", "method", "α", "settings"])[
        ["train GFLOPs/image", "train s/epoch", "× Vanilla", "load", "peak MiB"]].round(2)
    return df.astype(object).where(df.notna(), "–")  # no Vanilla run with these settings: no ratio


def timing_caveat(summaries: pd.DataFrame) -> str | None:
    """Why the runs' wall times cannot be compared as ratios, in one line, or None when they can: every run
    recorded the machine's load, all ran on one device model, their median loads differ by at most
    ``LOAD_SPREAD`` and none exceeds the machine's cores (runs that share cores time each other, not the method)."""
    if summaries.empty:
        return None
    if "load_avg" not in summaries or summaries["load_avg"].isna().any():
        missing = summaries["load_avg"].isna().sum() if "load_avg" in summaries else len(summaries)
        return (f"{missing} of {len(summaries)} runs did not record the machine's load (runs from before metrics.csv "
                f"had load_avg), so their wall times may have been taken under any load")
    if summaries["device_name"].nunique() > 1:
        return f"the runs ran on different devices ({', '.join(sorted(set(summaries['device_name'].dropna())))})"
    lo, hi = summaries["load_avg"].min(), summaries["load_avg"].max()
    if hi - lo > LOAD_SPREAD:
        return f"the machine's median 1-min load varied from {lo:.2f} to {hi:.2f} across the runs (more than {LOAD_SPREAD})"
    cores = summaries["cpu_count"].min() if "cpu_count" in summaries else None
    if cores is not None and pd.notna(cores) and hi > cores:
        return f"the machine's median 1-min load reached {hi:.2f}, more than its {cores:g} cores"
    return None


def cost_styler(summaries: pd.DataFrame) -> Any:
    """``cost_table`` as a Styler, the ratio column greyed when ``timing_caveat`` gives a reason."""
    table = cost_table(summaries)
    styler = table.style.format(lambda v: v if isinstance(v, str) else f"{v:.2f}")
    if timing_caveat(summaries) is not None:
        styler = styler.set_properties(subset=["× Vanilla"], color="#aaa")
    return styler


def cost_note_html(summaries: pd.DataFrame) -> str:
    """Where and under what load the timings were taken, whether the × Vanilla ratios may be read (one line why
    not), and ``make bench`` for relative costs measured interleaved."""
    from html import escape

    devices = ", ".join(sorted(set(summaries["device_name"].dropna()))) or "?"
    hosts = ", ".join(sorted(set(summaries.get("host", pd.Series(dtype=str)).dropna()))) or "?"
    loads = summaries.get("load_avg", pd.Series(dtype=float)).dropna()
    load = f"median 1-min load per run {loads.min():.2f}–{loads.max():.2f}" if len(loads) else "load not recorded"
    caveat = timing_caveat(summaries)
    verdict = (f"<b>× Vanilla is greyed: not a finding</b>: {escape(caveat)}." if caveat else
               f"The runs' loads agree within {LOAD_SPREAD} and stay under the core count: × Vanilla compares like "
               f"with like on this machine.")
    return (f"<p>FLOPs per image do not depend on the machine and lead. Wall times: {escape(devices)} on host "
            f"{escape(hosts)}, {escape(load)}, each run timed on its own, one after another. {verdict} For relative "
            f"costs measured interleaved in one process on one device, run <code>make bench</code>.</p>")


# ----------------------------------------------------------------------------- plots
MARKERS = "osD^vP*XhpH<>8d"
TRAIN_SECONDS = "train_seconds_per_epoch"


def method_style(method: str) -> dict[str, Any]:
    """The colour and marker of ``method``, the same in every plot (by registry position)."""
    i = list(REGISTRY).index(method) if method in REGISTRY else len(REGISTRY)
    return {"color": plt.get_cmap("tab20")(i % 20), "marker": MARKERS[i % len(MARKERS)]}


def config_label(method: str, alpha: float | None, settings: str) -> str:
    """A plot legend's label, ``$`` escaped: matplotlib reads ``$...$`` as maths (a bad formula stops the plot)."""
    parts = [method_label(method)] + ([f"α {_alpha(alpha)}"] if alpha is not None and pd.notna(alpha) else [])
    return (" ".join(parts) + (f" ({settings})" if settings else "")).replace("$", r"\$")


def plot_curves(metrics: pd.DataFrame) -> plt.Figure:
    """Val top-1 and train loss per epoch, one line per configuration (mean over its seeds), a row per backbone;
    every method keeps its colour and marker across plots."""
    backbones = [b for b in BACKBONE_LABELS if b in set(metrics["backbone"])]
    fig, axes = plt.subplots(len(backbones), 2, figsize=(10, 3.4 * len(backbones)), squeeze=False)
    keys = ["method", "alpha", "settings"]
    data = metrics.assign(alpha=metrics["alpha"].fillna(-1))
    for row, backbone in zip(axes, backbones):
        sub = data[data["backbone"] == backbone]
        for (method, alpha, settings), g in sorted(sub.groupby(keys), key=lambda kv: (
                list(REGISTRY).index(kv[0][0]) if kv[0][0] in REGISTRY else 99, kv[0][1], kv[0][2])):
            mean = g.groupby("epoch")[["top1", "train_loss"]].mean()
            label = config_label(method, None if alpha < 0 else alpha, settings)
            for ax, col in zip(row, ("top1", "train_loss")):
                ax.plot(mean.index, mean[col], label=label, markersize=4, linewidth=1.2, **method_style(method))
        row[0].set(xlabel="epoch", ylabel="val top-1 (%)", title=f"{BACKBONE_LABELS[backbone]}: val top-1")
        row[1].set(xlabel="epoch", ylabel="train loss (mixed targets)", title=f"{BACKBONE_LABELS[backbone]}: train loss",
                   yscale="log")  # AutoMix/SAMix sum several losses: on a log scale every method's curve shows
        for ax in row:
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_cost(summaries: pd.DataFrame, *, timings: bool = True) -> plt.Figure:
    """Median top-1 against the training GFLOPs per image (where runs were analysed) and, with ``timings`` (the
    runs' wall times comparable: ``timing_caveat``), against training seconds per epoch; a row per backbone, one
    marker per configuration."""
    backbones = [b for b in BACKBONE_LABELS if b in set(summaries["backbone"])]
    rows = pooled(summaries).assign(seconds=pooled(summaries, TRAIN_SECONDS)["mean"].to_numpy())
    gflops = summaries.assign(f=[train_gflops(d) for d in summaries["run_dir"]]).groupby("config_key")["f"].mean()
    rows["gflops"] = rows["config_key"].map(gflops)
    xs = [(x, label) for x, label, show in (
        ("gflops", "training GFLOPs per image (forward + backward)", rows["gflops"].notna().any()),
        ("seconds", "training s/epoch (median, warm-up epoch left out)", timings)) if show]
    xs = xs or [("seconds", "training s/epoch (greyed: not comparable)")]
    fig, axes = plt.subplots(len(backbones), len(xs), figsize=(5 * len(xs) + 2, 3.6 * len(backbones)), squeeze=False)
    for row, backbone in zip(axes, backbones):
        for ax, (x, xlabel) in zip(row, xs):
            for r in rows[rows["backbone"] == backbone].itertuples():
                style = method_style(r.method)
                ax.scatter(getattr(r, x), r.mean, s=70 if r.method == "vanilla" else 40, color=style["color"],
                           marker=style["marker"], edgecolors="black" if r.method == "vanilla" else "none",
                           label=config_label(r.method, r.alpha, r.settings), alpha=1 if x != "seconds" or timings else 0.3)
            ax.set(xlabel=xlabel, ylabel="median top-1 (%)", title=f"{BACKBONE_LABELS[backbone]} (Vanilla outlined)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_alpha(summaries: pd.DataFrame, value: str = "readout_top1") -> plt.Figure | None:
    """Top-1 against α, one line per method (and settings) that ran two α values or more, a panel per backbone:
    the mean over seeds with its std as error bars, the chosen α (``best_alpha``) circled. None when no method
    ran two α values."""
    if summaries.empty:
        return None
    value = value if value in summaries else "median_top1"
    rows = pooled(summaries, value).dropna(subset=["alpha"])
    searched = rows.groupby(["method", "backbone", "group_key"]).filter(lambda g: g["alpha"].nunique() > 1)
    if searched.empty:
        return None
    chosen = set(best_alpha(summaries, value)["config_key"])
    backbones = [b for b in BACKBONE_LABELS if b in set(searched["backbone"])]
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones) + 2, 3.6), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        for (method, _, settings), g in searched[searched["backbone"] == backbone].groupby(
                ["method", "group_key", "settings"], sort=False):
            g = g.sort_values("alpha")
            style = method_style(method)
            ax.errorbar(g["alpha"], g["mean"], yerr=g["std"].fillna(0), capsize=3, color=style["color"],
                        marker=style["marker"], label=config_label(method, None, settings))
            pick = g[g["config_key"].isin(chosen)]
            ax.scatter(pick["alpha"], pick["mean"], s=160, facecolors="none", edgecolors="black", zorder=3)
        ax.set(xscale="log", xlabel="α (log scale)", ylabel="top-1 (%)",
               title=f"{BACKBONE_LABELS[backbone]}: top-1 against α (chosen circled)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_learning_curve(metrics: pd.DataFrame) -> plt.Figure:
    """One run: train loss and val top-1/top-5 per epoch."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(metrics["epoch"], metrics["train_loss"], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss (mixed)")
    for col in ("top1", "top5"):
        ax2.plot(metrics["epoch"], metrics[col], marker="o", label=col)
    ax2.set(xlabel="epoch", ylabel="val accuracy (%)")
    ax2.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- rendering
def render_report(profile: str) -> Path:
    """Execute analysis.ipynb for ``profile`` and convert it to one self-contained HTML file.

    Writes reports/<profile>/analysis.ipynb and benchmark.html (the stable path of a profile's report),
    and reports/index.html, which lists every profile's report with its run count and date.
    """
    import nbformat

    runs = load_runs(profile)  # an unknown profile fails here, before any folder is made
    out_dir = reports_root() / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "analysis.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "analysis.ipynb"), str(executed),
                    "-k", KERNEL, "-y", json.dumps({"profile": profile, "runs_root": str(runs_root())}),
                    "--no-progress-bar"], check=True)
    html = out_dir / "benchmark.html"
    _to_html(nbformat.read(executed, as_version=4), html,
             title=f"mixnb benchmark: {profile} ({time.strftime('%Y-%m-%d %H:%M')})")
    write_exports(runs.summaries, out_dir)
    write_run_pages([Path(d) for d in [*_col(runs.summaries, "run_dir"), *_col(runs.diverged, "run_dir")]], out_dir)
    write_index()
    return html


def run_page(run: str) -> str:
    """The relative link from a profile's report to a run's page."""
    from urllib.parse import quote

    return f"runs/{quote(run)}/index.html"


def write_run_pages(run_dirs: list[Path], out_dir: Path) -> None:
    """reports/<profile>/runs/<run>/: the run's executed train.ipynb as index.html (its curves and gallery),
    with params.json, metrics.csv and summary.json beside it, so the reports/ folder stands alone."""
    import shutil

    for run_dir in run_dirs:
        page = out_dir / "runs" / run_dir.name
        page.mkdir(parents=True, exist_ok=True)
        for name in (PARAMS, METRICS, "summary.json", "failed.json", "analysis.json"):  # analysis: per corruption
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, page / name)
        if (run_dir / "train.ipynb").exists() and (notebook := _read_notebook(run_dir / "train.ipynb")) is not None:
            notebook.cells = [c for c in notebook.cells if "parameters" not in c.get("metadata", {}).get("tags", [])]
            _to_html(notebook, page / "index.html", title=f"mixnb run {run_dir.name}", header=run_summary_box(run_dir))


def run_summary_box(run_dir: Path) -> str:
    """The head of a run page (trusted: built here, every value escaped): the run's read-out, best and last epoch,
    cost, and links back to the report and to the files beside the page (the checkpoint stays in the run folder)."""
    from html import escape

    s = read_summary(run_dir) or {}
    facts = [("run", run_dir.name), ("method", s.get("method")), ("backbone", s.get("backbone")),
             ("epochs", s.get("epochs")), (s.get("median_label", "median top-1"), s.get("median_top1")),
             ("best epoch top-1", s.get("best_top1")), ("last epoch top-1", s.get("last_top1")),
             ("s/epoch", s.get("seconds_per_epoch")), ("device", s.get("environment", {}).get("device_name"))]
    if (ckpt := run_dir / "checkpoint.pt").exists():
        facts.append(("checkpoint", f"{ckpt.stat().st_size / 2**20:.1f} MiB in {run_dir}"))
    if (failed := failure(run_dir)) is not None:
        facts.append(("failed", failed.get("reason")))
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(f'{v:.2f}' if isinstance(v, float) else str(v))}</td></tr>"
                   for k, v in facts if v is not None)
    links = " · ".join(f'<a href="{href}">{escape(label)}</a>' for href, label in (
        ("../../benchmark.html", "← the report"), ("params.json", "params.json"), ("metrics.csv", "metrics.csv"),
        ("summary.json", "summary.json"), ("analysis.json", "analysis.json")) if href.startswith("..")
        or (run_dir / href).exists())
    return f'<div class="mixnb-run-summary"><p>{links}</p><table>{rows}</table></div>'


def _read_notebook(path: Path) -> Any:
    """A run's executed notebook, or None after one line naming it when it is damaged (a kill cut papermill's write
    short, or not a notebook at all): one run never keeps the rest of the report from rendering."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # NotJSONError, UnicodeDecodeError, a schema error ...: whatever the file holds
        print(f"warning: {path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:80]}); its run page "
              f"is left out. Re-execute notebooks/train.ipynb into it with the run's config (docs/recipes.md) or "
              f"delete it", flush=True)
        return None


def write_index() -> Path:
    """reports/index.html: every profile's report, with its number of finished runs and when it was rendered."""
    from html import escape

    from mixnb.io import atomic_write_text

    rows = []
    for name in PROFILES:
        html = reports_root() / name / "benchmark.html"
        if html.exists():
            done = sum(is_finished(d) for d in (runs_root() / name).glob("*") if d.is_dir())
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(html.stat().st_mtime))
            rows.append(f'<tr><td><a href="{escape(name)}/benchmark.html">{escape(name)}</a></td>'
                        f"<td>{done}</td><td>{when}</td></tr>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mixnb reports</title></head><body>"
            "<h1>mixnb reports</h1><table><tr><th>profile</th><th>finished runs</th><th>rendered</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
    index = reports_root() / "index.html"
    atomic_write_text(index, page)
    return index


def _to_html(notebook: Any, html: Path, *, title: str, header: str | None = None) -> None:
    """nbconvert, images embedded: a single self-contained file. Its template's scripts (require.js, MathJax and
    mermaid from a CDN) are dropped: the report uses none of them, and a page that stands alone must not reach out
    when opened offline. ``header`` makes a run page: a run folder's notebook, with its code; anyone who can write a
    run folder can craft it, so its cells pass through ``sanitised`` into the template's page of an empty notebook,
    after ``header`` (trusted HTML)."""
    import nbformat
    from nbconvert import HTMLExporter

    from mixnb.io import atomic_write_text

    run_page = header is not None
    exporter = HTMLExporter(exclude_input=not run_page, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    resources = {"metadata": {"name": title}}
    page, _ = exporter.from_notebook_node(nbformat.v4.new_notebook() if run_page else notebook, resources=resources)
    page = re.sub(r"<script\b[^>]*>.*?</script>\s*", "", page, flags=re.DOTALL)  # the template's own: trusted
    if run_page:
        cells, _ = exporter.from_notebook_node(notebook, resources=resources)
        start, end, rest = page.partition("</main>")
        page = start + header + sanitised(cells) + end + rest
    atomic_write_text(html, page)


# What a run page keeps of its notebook: nbconvert's cells (divs and spans with classes), text, headings, code,
# tables and embedded images. Scripts, styles, event handlers, frames, forms, SVG and fetched images are dropped.
PAGE_TAGS = {"a", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img", "li", "ol",
             "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"}
PAGE_ATTRIBUTES = {"*": {"class", "id"}, "a": {"href"}, "img": {"src", "alt"}, "div": {"data-mime-type"},
                   "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}


def sanitised(html: str) -> str:
    """Untrusted ``html`` with only ``PAGE_TAGS`` and ``PAGE_ATTRIBUTES`` left, parsed and rebuilt by ammonia
    (nh3): no script, event handler or javascript: URL survives, however the markup is split or nested."""
    import nh3

    return nh3.clean(html, tags=PAGE_TAGS, clean_content_tags={"script", "style", "title"}, attributes=PAGE_ATTRIBUTES,
                     attribute_filter=_page_attribute, url_schemes={"http", "https", "mailto", "data"})


def _page_attribute(tag: str, name: str, value: str) -> str | None:
    """An image only from a data: URL (any other would be fetched when the page opens); data: URLs nowhere else."""
    if (tag, name) == ("img", "src"):
        return value if re.match(r"data:image/(png|jpeg|gif|webp);base64,", value) else None
    return None if value.strip().lower().startswith("data:") else value


def table_notes_html(methods: list[str]) -> str:
    """The legend of the table's marks and the notes on the published numbers of ``methods``."""
    from html import escape

    items = ["<code>*</code> after a name: an arXiv pre-print whose number OpenMixup's authors reproduced; "
             "📖: the original paper's number, not run in OpenMixup (docs/protocol.md §4); †: read as OpenMixup read "
             "these rows, the best of four heads' medians (online/EMA × clean/mixed, docs/protocol.md §1.7); the online "
             "encoder's plain median is in the read-out table below.",
             "code: the OpenMixup code a cell's runs follow (RunConfig.reference, docs/publication.md): the commit "
             "that published the number (the default, reference=published) or HEAD (reference=head); ‡: a setting "
             "that commit cannot decide, picked as the note says."]
    for m in [m for m in REGISTRY if m in set(methods)]:
        spec = get_spec(m)
        if spec.note or not spec.reproduced:
            mark = "" if spec.reproduced else "📖 "
            items.append(f"{mark}{escape(method_label(m))}: published at α {_alpha(spec.published_alpha)}; "
                         f"{escape(spec.note)}")
        if spec.code:
            cells = "; ".join(f"{BACKBONE_LABELS.get(b, b)} {c.commit} ({c.date}, crop {c.crop}"
                              f"{', ‡ ' + c.undetermined if c.undetermined else ''})" for b, c in spec.code.items())
            items.append(f"{escape(method_label(m))}: published by {escape(cells)}; deviations that remain: "
                         f"{escape(spec.deviations or 'none known')}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def section_html(text: str, *, tag: str = "p") -> str:
    """``text`` as one escaped HTML element (``code`` spans between backticks kept)."""
    from html import escape

    parts = escape(text).split("`")
    return f"<{tag}>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + f"</{tag}>"


def as_jpeg(source: plt.Figure | Path, *, quality: int = 72, dpi: int = 90, width: int = 780) -> Any:
    """A gallery (a figure, or a saved PNG) as an embeddable JPEG at most ``width`` px wide (about the report's
    column): photos compress ~5x better than as PNG, which keeps the self-contained report small."""
    import io

    from IPython.display import Image as IPImage
    from PIL import Image

    buf = io.BytesIO()
    if isinstance(source, plt.Figure):
        source.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(source)  # shown once, as this JPEG (an open figure would be shown again as a PNG)
        buf.seek(0)
    image = Image.open(buf if isinstance(source, plt.Figure) else source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return IPImage(data=out.getvalue(), format="jpeg")


def run_gallery_files(summaries: pd.DataFrame) -> list[tuple[str, Path]]:
    """(title, mix_samples.png) of every finished run that has one, in protocol order."""
    if summaries.empty:
        return []
    order = {m: i for i, m in enumerate(REGISTRY)}
    rows = summaries.assign(_o=summaries["method"].map(order)).sort_values(["backbone", "_o", "alpha", "seed"])
    return [(f"{row_label(r.method, r.settings)}, α {_alpha(r.alpha)} — {r.backbone}, seed {r.seed}",
             Path(r.run_dir) / "mix_samples.png") for r in rows.itertuples() if (Path(r.run_dir) / "mix_samples.png").exists()]


def header_html(runs: Runs, profile: str) -> str:
    """The report's header as HTML, every value escaped: the protocol, the hyperparameters and dataset the runs
    really used, what is off the protocol, hardware, versions and commits, and what was left out."""
    from html import escape

    s = runs.summaries
    sample = profile in PROFILES and PROFILES[profile].sample is not None
    out = [f"<h1>Mixup benchmark on {escape(dataset_title(s, profile))} — profile <code>{escape(profile)}</code></h1>"]
    if sample:
        out.append("<blockquote><b>These numbers come from the generated sample profile</b> (a small synthetic dataset "
                   "and a narrow network, minutes on a CPU). They prove the pipeline; they are <b>not</b> comparable "
                   "with OpenMixup's published Tiny-ImageNet numbers, which the tables therefore leave out."
                   "</blockquote>")
    items = ["Protocol: OpenMixup's Tiny-ImageNet benchmark (SGD with momentum, per-epoch cosine, 64 px, "
             "RandomResizedCrop (bilinear or bicubic, as the code column says) + flip, no centre crop at test; the "
             "median top-1 of the last 10 epochs)."]
    if not s.empty:
        used = {name: _values(s[col]) for name, col in (
            ("epochs", "epochs"), ("width", "width"), ("batch", "batch_size"), ("lr", "lr"), ("momentum", "momentum"),
            ("weight decay", "weight_decay"), ("min lr", "min_lr"), ("precision", "precision"))}
        items.append("Hyperparameters of these runs: " + "; ".join(f"{k} {escape(v)}" for k, v in used.items()) + ".")
        roots = sorted(set(s["data_root"]))
        items.append(("Dataset: " + ("generated sample set at " if sample else "")
                      + ", ".join(f"<code>{escape(r)}</code>" for r in roots)) + ".")
        items.append(f"Hardware: {escape(', '.join(sorted(set(s['device_name'].dropna()))) or '?')}; torch "
                     f"{escape(', '.join(sorted(set(s['torch'].dropna()))))}; commit(s) "
                     f"{escape(', '.join(c[:10] for c in sorted(set(s['commit'].dropna()))))}.")
    items.append(f"Runs: {len(s)} finished in {s['config_key'].nunique() if not s.empty else 0} configurations; "
                 f"{len(runs.diverged)} diverged; {len(runs.skipped)} left out.")
    out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    if (banner := off_protocol(s)):
        out.append("<p><b>Off the protocol</b> (OpenMixup's 400 epochs at width 64, default settings): "
                   + "; ".join(escape(b) for b in banner) + ".</p>")
    if not s.empty and s["epochs"].max() < 100:
        out.append("<p>With schedules this short (far below the protocol's 400 epochs) mixing methods usually trail "
                   "Vanilla: they regularise, and pay off only when a model would otherwise overfit.</p>")
    if runs.skipped:
        out.append("<p>Left out: " + "; ".join(f"<code>{escape(n)}</code> {escape(why)}" for n, why in runs.skipped)
                   + ".</p>")
    return "\n".join(out)


def dataset_title(summaries: pd.DataFrame, profile: str) -> str:
    """The dataset and its size, from the runs' records (``dataset_name``; none yet: the profile's), e.g. "the
    generated sample set (10 classes; 1,000 train / 300 val images)"; several datasets are joined with "and"."""
    if summaries.empty or "dataset" not in summaries:
        spec = PROFILES[profile].sample if profile in PROFILES else None
        if spec is None:
            return "Tiny-ImageNet" if profile == "tiny-imagenet" else "no dataset yet"
        k = spec["num_classes"]
        sizes = [(k, k * spec["train_per_class"], k * spec["val_per_class"])]
        names = ["the generated sample set"]
    else:
        sets = summaries[["dataset", "classes", "train_images", "val_images"]].drop_duplicates()
        sizes = [(r.classes, r.train_images, r.val_images) for r in sets.itertuples()]
        names = [("the " if r.dataset == "generated sample set" else "") + r.dataset for r in sets.itertuples()]
    return " and ".join(f"{name} ({k} classes; {train:,} train / {val:,} val images)"
                        for name, (k, train, val) in zip(names, sizes))


def table_intro_html(summaries: pd.DataFrame, profile: str) -> str:
    """What the main table's numbers are, in plain words: the read-out (and, for runs shorter than its window,
    that the "median" covers every epoch), seeds and intervals, Δ Vanilla, the α choice and its tie rule, and
    whether OpenMixup's numbers are shown (only beside runs on their protocol) and why not."""
    from html import escape

    items = ["top-1 (%): the median of the last 10 epochs as OpenMixup's summary script reads them (epochs 390–400 "
             "of 400: 11 values), mean ± std over the seeds of one configuration (seeds pool only within identical "
             "settings); each method at its best α among those that ran, chosen on the validation set by this same "
             "read-out (Tiny-ImageNet has no labelled test split). A tie (means equal at two decimals) goes to the "
             "published α when it is among the tied, else to the smallest; the α cell names it. Every configuration "
             "is in the appendix."]
    if not summaries.empty:
        short = summaries[short_runs(summaries)]
        if len(short):
            epochs = "/".join(map(str, sorted(set(short["epochs"]))))
            items.append(f"<b>{len(short)} of {len(summaries)} runs have {epochs} epochs, fewer than the read-out's "
                         f"{READOUT_WINDOW}</b>: their top-1 is the median of all their epochs, early ones included, "
                         f"not the protocol's read-out; the last- and best-epoch top-1 (means over seeds) stand beside "
                         f"it.")
        counts = summaries.groupby("config_key").size()
        items.append("n = 1 seed per configuration: no spread (±) and no interval can be given; "
                     f"<code>make sweep PROFILE={escape(profile)} SEEDS=0,1,2</code> runs three."
                     if counts.max() < 2 else
                     "With two seeds or more: 95 % CI = the Student-t interval of the seed mean (n = seeds).")
        items.append("Δ Vanilla: the difference to our Vanilla run of the same backbone, epochs, width and settings; "
                     "over two seeds or more both ran, the mean of the paired differences (same seed = same data order "
                     "and initialisation) with its 95 % t-interval, <i>within seed noise</i> when that holds 0; "
                     "“–”: no such Vanilla run.")
        items += openmixup_why(summaries, profile)
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def openmixup_why(summaries: pd.DataFrame, profile: str) -> list[str]:
    """The line that says which published numbers the OpenMixup column holds, or why it is absent."""
    from html import escape

    key = PROFILES[profile].published if profile in PROFILES else None
    if key is None and profile in PROFILES and PROFILES[profile].sample is None:
        return [f"No OpenMixup column: OpenMixup published no mixup table on {escape(PROFILES[profile].dataset)}."]
    table = PUBLISHED[key or "tiny-imagenet"]
    budgets = "/".join(map(str, table.budgets))
    if not compares_with_openmixup(summaries):
        datasets = ", ".join(sorted(set(summaries.get("dataset", pd.Series(["?"])))))
        return [f"OpenMixup's published numbers are left out: they are {table.dataset} at {budgets} epochs and width "
                f"{table.width}, and no run here is (these: {escape(datasets)}, {_values(summaries['epochs'])} epochs, "
                f"width {_values(summaries['width'])})."]
    out = []
    if len(table.budgets) > 1:
        _, budget = published_source(summaries)
        out.append(f"OpenMixup {budget} ep: {table.dataset}'s published numbers at {budget} epochs, the budget "
                   f"({budgets}) nearest these runs' {_values(summaries['epochs'])} ({escape(table.source)}).")
    if not summaries["on_protocol"].all():
        out.append(f"Δ OpenMixup only where a cell's runs are on the protocol ({table.dataset}, {budgets} epochs, "
                   f"width {table.width}, no other setting changed).")
    return out


def off_protocol(summaries: pd.DataFrame) -> list[str]:
    """What differs from the protocol, per group of runs: epochs, width and every other override (alpha is the
    searched setting: the table shows it)."""
    if summaries.empty:
        return []
    out = []
    for key, value in (("epochs", PROTOCOL["epochs"]), ("width", PROTOCOL["width"])):
        off = summaries[summaries[key] != value]
        if len(off):
            out.append(f"{key} {_values(off[key])} in {len(off)} of {len(summaries)} runs (protocol: {value})")
    others = summaries["settings"].map(lambda st: ", ".join(p for p in st.split(", ") if p
                                                            and not p.startswith(("epochs ", "width "))))
    for settings, group in summaries[others != ""].groupby(others[others != ""]):
        out.append(f"{settings} in {len(group)} runs ({', '.join(sorted(group['run']))})")
    return out


def _values(col: pd.Series) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(set(col.dropna())))
