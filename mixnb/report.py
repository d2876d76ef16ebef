"""Runs -> DataFrames -> the benchmark table, curves and mixed-sample galleries; HTML rendering.

The table follows OpenMixup's Tiny-ImageNet page (docs/protocol.md §4): rows are methods, columns
backbones, cells the median top-1 of the last 10 epochs, beside the published number and the OpenMixup
code each cell's runs follow (``code_followed``; docs/publication.md).
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
import pandas as pd

from mixnb.config import ADDED_METHOD_SETTINGS, PROFILES, PROTOCOL, REFERENCES, RunConfig
from mixnb.mixups import HEAD, REGISTRY, get_spec, reference_code
from mixnb.paths import KERNEL, NOTEBOOKS, reports_root, runs_root
from mixnb.runs import DATASET_INFO, METRICS, PARAMS, complete_identity, failure, is_finished, metric_rows, read_summary

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
    """Every run folder of ``profile``; a folder that cannot be read is listed in ``skipped``, never fatal."""
    root = (root or runs_root()) / profile
    summaries, metrics, diverged, skipped = [], [], [], []
    for run_dir in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            if is_finished(run_dir):
                row = _summary_row(run_dir)
                m = pd.read_csv(run_dir / METRICS)
                if pd.isna(row.get(TRAIN_SECONDS)):  # a summary from before it recorded this: from its metrics
                    row[TRAIN_SECONDS] = float(m["train_seconds"].iloc[1:].median() if len(m) > 1
                                               else m["train_seconds"].iloc[0])
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
    flat = {k: v for k, v in s.items() if not isinstance(v, dict)}
    flat.update(run_dir=str(run_dir), device_name=s.get("environment", {}).get("device_name"),
                torch=s.get("environment", {}).get("torch"), commit=s.get("git", {}).get("commit"),
                alpha=cfg.full_method_args().get("alpha"), settings=settings_label(cfg),
                config_key=json.dumps({k: v for k, v in identity.items() if k != "seed"}
                                      | {"dataset": {k: v for k, v in identity["dataset"].items() if k not in DATASET_INFO}},
                                      sort_keys=True),
                data_root=identity["dataset"]["root"], precision=identity["precision"],
                device_type=identity["device_type"],
                **{k: identity[k] for k in ("epochs", "width", "batch_size", "lr", "momentum", "weight_decay", "min_lr")})
    # what the main table reads: OpenMixup's read-out of each row (AutoMix/SAMix: best of four heads, §1.7)
    flat["readout_top1"] = s.get("reference_top1", s["median_top1"])
    flat["readout"] = "best of 4 heads" if "reference_top1" in s else "online"
    flat["group_key"] = json.dumps({k: v for k, v in json.loads(flat["config_key"]).items() if k != "method_args"}
                                   | {"method_args": {k: v for k, v in identity["method_args"].items() if k != "alpha"}},
                                   sort_keys=True)
    return flat


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


def row_label(method: str, settings: str) -> str:
    return f"{method_label(method)} ({settings})" if settings else method_label(method)


# ----------------------------------------------------------------------------- table
def pooled(summaries: pd.DataFrame, value: str = "median_top1") -> pd.DataFrame:
    """One row per configuration (every maths setting but the seed): mean, std and count over its seeds."""
    keys = ["method", "backbone", "settings", "alpha", "group_key", "config_key"]
    df = summaries.assign(alpha=summaries["alpha"].fillna(-1))  # groupby drops NaN keys; Vanilla has no alpha
    out = df.groupby(keys, sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    out["alpha"] = out["alpha"].where(out["alpha"] >= 0)
    return out


def best_alpha(summaries: pd.DataFrame, value: str = "median_top1", *, by: str | None = None) -> pd.DataFrame:
    """Per method, backbone and other settings, the configuration whose mean ``by`` (default: ``value``) over
    seeds is best, with the mean, std and count of ``value``.

    Tiny-ImageNet has no labelled test split, so, as in the reference, alpha is chosen on the validation
    set, by the same read-out the table shows."""
    by = by or value
    rows = pooled(summaries, value).assign(_by=pooled(summaries, by)["mean"].to_numpy())
    published = rows["method"].map(lambda m: get_spec(m).defaults.get("alpha") if m in REGISTRY else None)
    rows = rows.assign(_tie=(rows["alpha"] != published)).sort_values("_tie", kind="stable")  # ties: published alpha
    best = rows.loc[rows.groupby(["method", "backbone", "group_key"], sort=False)["_by"].idxmax()]
    return best.assign(candidates=rows.groupby(["method", "backbone", "group_key"], sort=False)["alpha"]
                       .transform("count").loc[best.index])


def benchmark_table(summaries: pd.DataFrame, value: str = "readout_top1", *, diverged: pd.DataFrame | None = None,
                    reference: bool = True, by: str | None = None, links: bool = False) -> pd.DataFrame:
    """Rows = methods in protocol (registry) order, one per non-default setting; columns per backbone:
    top-1 (mean ± std over seeds) at the best alpha, that alpha, the number of seeds, and with ``reference``
    OpenMixup's published number and the difference. A configuration with only diverged runs reads "diverged".
    ``by``: the read-out that picks the alpha (default ``value``; the best-epoch table shows the main table's).
    ``links``: a "runs" column per backbone with HTML links to the row's run pages (for ``bold_best``).

    ``readout_top1`` reads every row as OpenMixup read it, so the difference compares like with like: the
    median of the last epochs, and for AutoMix/SAMix the best of their four heads' medians (marked †)."""
    if summaries.empty and (diverged is None or diverged.empty):
        return pd.DataFrame()
    value = value if value in summaries else "median_top1"
    best = best_alpha(summaries, value, by=by) if not summaries.empty else pd.DataFrame(
        columns=["method", "backbone", "settings", "alpha", "mean", "std", "count", "candidates"])
    rows = {(r.method, r.settings) for r in best.itertuples()}
    if diverged is not None and not diverged.empty:
        rows |= {(r.method, r.settings) for r in diverged.itertuples()}
    order = sorted(rows, key=lambda ms: (list(REGISTRY).index(ms[0]) if ms[0] in REGISTRY else len(REGISTRY), ms[1]))
    backbones = [b for b in BACKBONE_LABELS if b in set(best["backbone"]) | set(_col(diverged, "backbone"))]
    cols: dict[tuple[str, str], list[str]] = {}
    for backbone in backbones:
        label = BACKBONE_LABELS[backbone]
        cells = {(r.method, r.settings): r for r in best[best["backbone"] == backbone].itertuples()}
        failed = {(r.method, r.settings) for r in _rows(diverged) if r.backbone == backbone}
        cols[(label, "top-1")] = [_fmt(cells[k].mean, cells[k].std, cells[k].count) if k in cells
                                  else "diverged" if k in failed else "–" for k in order]
        cols[(label, "α")] = [_alpha(cells[k].alpha, cells[k].candidates) if k in cells else "–" for k in order]
        cols[(label, "seeds")] = [str(cells[k].count) if k in cells else "–" for k in order]
        if links:
            cols[(label, "runs")] = [_run_links(summaries, cells[k].config_key) if k in cells else "" for k in order]
        if reference:
            ref = [get_spec(m).published.get(backbone) if m in REGISTRY else None for m, _ in order]
            book = [m in REGISTRY and not get_spec(m).reproduced for m, _ in order]  # 📖: the authors' number
            cols[(label, "OpenMixup")] = [f"{r:.2f}{' 📖' if b else ''}" if r is not None else "–"
                                          for r, b in zip(ref, book)]
            cols[(label, "Δ")] = [f"{cells[k].mean - r:+.2f}" if r is not None and k in cells else "–"
                                  for k, r in zip(order, ref)]
            cols[(label, "code")] = [_code(m, backbone, cells[(m, st)].config_key) if (m, st) in cells else "–"
                                     for m, st in order]
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


def _run_links(summaries: pd.DataFrame, config_key: str) -> str:
    """HTML links to the run pages of one configuration's seeds (run names escaped)."""
    from html import escape

    runs = summaries[summaries["config_key"] == config_key].sort_values("seed")
    return " ".join(f'<a href="{escape(run_page(r.run))}">s{r.seed}</a>' for r in runs.itertuples())


def bold_best(table: pd.DataFrame) -> Any:
    """``benchmark_table`` as an HTML Styler: the best number of each top-1 column in bold, every cell escaped
    but the "runs" columns, which ``benchmark_table(links=True)`` builds from escaped names."""
    def best(col: pd.Series) -> list[str]:
        values = pd.to_numeric(col.str.split(" ").str[0], errors="coerce")
        return ["font-weight: bold" if v == values.max() else "" for v in values]

    top1 = [c for c in table.columns if c[-1] == "top-1"]
    styler = table.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    link_columns = [c for c in table.columns if c[-1] == "runs"]
    if link_columns:
        styler = styler.format(str, subset=link_columns, escape=None)
    return styler.apply(best, subset=top1)


def beyond_accuracy(summaries: pd.DataFrame) -> pd.DataFrame:
    """The "beyond accuracy" numbers (``mixnb.analysis``) per configuration, mean over its seeds, in protocol
    order: one row per method, α and settings (runs of different settings never pool, as in the main table)."""
    from mixnb.analysis import BEYOND_COLUMNS, value_at
    from mixnb.runs import read_analysis

    rows = []
    for r in _rows(summaries):
        record = read_analysis(r.run_dir)
        if record is not None:
            rows.append({"method": r.method, "backbone": r.backbone, "alpha": r.alpha, "settings": r.settings,
                         "config_key": r.config_key, **{c: value_at(record, p) for c, p in BEYOND_COLUMNS.items()}})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    columns = list(BEYOND_COLUMNS)
    df[columns] = df[columns].astype(float)
    grouped = df.groupby(["method", "backbone", "settings", "config_key"], sort=False)
    out = grouped[columns].mean().assign(seeds=grouped.size(), alpha=grouped["alpha"].first()).reset_index()
    out["_o"] = out["method"].map(lambda m: list(REGISTRY).index(m) if m in REGISTRY else 99)
    out = out.sort_values(["backbone", "_o", "alpha"], kind="stable")
    out["α"] = out["alpha"].map(_alpha)
    out["method"] = out["method"].map(method_label)
    out["backbone"] = out["backbone"].map(lambda b: BACKBONE_LABELS.get(b, b))
    return out.set_index(["backbone", "method", "α", "settings"])[["seeds", *columns]].round(2)


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


TIDY_COLUMNS = ["method", "settings", "backbone", "alpha", "top1_mean", "top1_std", "seeds", "openmixup"]


def tidy_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """The main table as data: one row per (method, settings, backbone) at its best alpha, in protocol order."""
    if summaries.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    best = best_alpha(summaries, "readout_top1" if "readout_top1" in summaries else "median_top1")
    best = best.assign(_o=best["method"].map({m: i for i, m in enumerate(REGISTRY)}))
    best = best.sort_values(["_o", "settings", "backbone"], key=lambda c: c.map(list(BACKBONE_LABELS).index)
                            if c.name == "backbone" else c, kind="stable")
    return pd.DataFrame({
        "method": best["method"].map(method_label), "settings": best["settings"], "backbone": best["backbone"],
        "alpha": best["alpha"], "top1_mean": best["mean"].round(2), "top1_std": best["std"].round(2),
        "seeds": best["count"],
        "openmixup": [get_spec(m).published.get(b) if m in REGISTRY else None
                      for m, b in zip(best["method"], best["backbone"])],
    }).reset_index(drop=True)


def write_exports(summaries: pd.DataFrame, out_dir: Path) -> list[Path]:
    """benchmark.csv (tidy), benchmark.md and benchmark.tex (the table's layout: a row per method, ours beside
    OpenMixup's per backbone, the best of each of our columns in bold) next to the report; beyond.csv/.md/.tex
    (the beyond-accuracy table) when runs were analysed."""
    from mixnb.io import atomic_write_text

    tidy = tidy_table(summaries)  # read as the main table reads
    paths = [out_dir / f"benchmark.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], tidy.to_csv(index=False))
    backbones = [b for b in BACKBONE_LABELS if b in set(tidy.get("backbone", []))]
    header = ["Method", "α"] + [f"{BACKBONE_LABELS[b]} {w}" for b in backbones for w in ("ours", "OpenMixup")]
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
                    (f"{r.openmixup:.2f}" if r is not None and pd.notna(r.openmixup) else "–", False)]
        rows.append([(c, False) if isinstance(c, str) else c for c in row])
    paths[1:] = _table_files(out_dir / "benchmark", header, rows, text_columns=1)
    beyond = beyond_accuracy(summaries).reset_index()
    if not beyond.empty:
        paths.append(out_dir / "beyond.csv")
        atomic_write_text(paths[-1], beyond.to_csv(index=False))
        cells = [[(str(v), False) for v in row] for row in beyond.itertuples(index=False)]
        paths += _table_files(out_dir / "beyond", list(beyond.columns), cells, text_columns=4)
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
    """Every configuration that ran: its alpha and settings, top-1 over its seeds, and the diverged ones."""
    rows = []
    if not summaries.empty:
        for r in pooled(summaries).itertuples():
            rows.append({"method": method_label(r.method), "backbone": BACKBONE_LABELS.get(r.backbone, r.backbone),
                         "α": _alpha(r.alpha), "settings": r.settings or "–",
                         "median top-1": _fmt(r.mean, r.std, r.count), "seeds": r.count,
                         "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
    for r in _rows(diverged):
        rows.append({"method": method_label(r.method), "backbone": BACKBONE_LABELS.get(r.backbone, r.backbone),
                     "α": "", "settings": r.settings or "–", "median top-1": r.reason,
                     "seeds": f"seed {r.seed}", "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
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


def _alpha(alpha: float | None, candidates: int = 1) -> str:
    if alpha is None or pd.isna(alpha):
        return "–"
    return f"{alpha:g}" + (f" (best of {candidates})" if candidates > 1 else "")


def _col(df: pd.DataFrame | None, name: str) -> list[Any]:
    return [] if df is None or df.empty else list(df[name])


def _rows(df: pd.DataFrame | None) -> list[Any]:
    return [] if df is None or df.empty else list(df.itertuples())


def readout_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """AutoMix/SAMix/AdAutoMix: the plain online-encoder median beside the reference's read-out, which the main
    table shows: OpenMixup's best of four heads (docs/protocol.md §1.7); for AdAutoMix its authors' EMA one-hot head."""
    if "reference_top1" not in summaries:
        return pd.DataFrame()
    rows = summaries.dropna(subset=["reference_top1"])
    out = rows[["method", "backbone", "alpha", "settings", "seed", "median_top1", "reference_top1"]].copy()
    out["method"] = out["method"].map(method_label)
    out["alpha"] = out["alpha"].map(_alpha)
    return out.rename(columns={"alpha": "α", "median_top1": "online q median",
                               "reference_top1": "reference read-out (in the table, †)"}
                      ).set_index(["method", "backbone", "α", "settings", "seed"]).round(2)


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None or n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def cost_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Training cost per configuration in protocol order: training seconds per epoch (the median over epochs,
    the first one left out as warm-up; evaluation not included), its ratio to Vanilla's with the same settings,
    peak memory, and the FLOPs of one training image through the method's step (from analysis.json)."""
    df = pooled(summaries, TRAIN_SECONDS).rename(columns={"mean": "seconds"})
    df["peak MiB"] = pooled(summaries, "peak_mem_mb")["mean"].to_numpy()
    base = {(r.backbone, r.settings): r.seconds for r in df[df["method"] == "vanilla"].itertuples()}
    df["× Vanilla"] = [r.seconds / base[(r.backbone, r.settings)] if (r.backbone, r.settings) in base
                       else float("nan") for r in df.itertuples()]
    df["train s/epoch"] = df["seconds"]
    flops = summaries.assign(f=[train_gflops(d) for d in summaries["run_dir"]]).groupby("config_key", sort=False)["f"]
    df["train GFLOPs/image"] = df["config_key"].map(flops.mean())
    df["_order"] = [list(REGISTRY).index(m) if m in REGISTRY else 99 for m in df["method"]]
    df = df.sort_values(["backbone", "_order", "alpha"], kind="stable")
    df["method"] = df["method"].map(method_label)
    df["α"] = df["alpha"].map(_alpha)
    df["backbone"] = df["backbone"].map(lambda b: BACKBONE_LABELS.get(b, b))
    df = df.set_index(["backbone", "method", "α", "settings"])[["train s/epoch", "× Vanilla", "peak MiB", "train GFLOPs/image"]].round(2)
    return df.astype(object).where(df.notna(), "–")  # no Vanilla run with these settings: no ratio


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
        row[1].set(xlabel="epoch", ylabel="train loss (mixed targets)", title=f"{BACKBONE_LABELS[backbone]}: train loss")
        for ax in row:
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_cost(summaries: pd.DataFrame) -> plt.Figure:
    """Median top-1 against training seconds per epoch, one panel per backbone, one marker per configuration."""
    backbones = [b for b in BACKBONE_LABELS if b in set(summaries["backbone"])]
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones) + 2, 3.6), squeeze=False)
    rows = pooled(summaries).assign(seconds=pooled(summaries, TRAIN_SECONDS)["mean"].to_numpy())
    for ax, backbone in zip(axes[0], backbones):
        for r in rows[rows["backbone"] == backbone].itertuples():
            style = method_style(r.method)
            ax.scatter(r.seconds, r.mean, s=70 if r.method == "vanilla" else 40, color=style["color"],
                       marker=style["marker"], edgecolors="black" if r.method == "vanilla" else "none",
                       label=config_label(r.method, r.alpha, r.settings))
        ax.set(xlabel="training s/epoch (median, warm-up epoch left out)", ylabel="median top-1 (%)",
               title=f"{BACKBONE_LABELS[backbone]} (Vanilla outlined)")
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

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    out_dir = reports_root() / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "analysis.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "analysis.ipynb"), str(executed),
                    "-k", KERNEL, "-y", json.dumps({"profile": profile, "runs_root": str(runs_root())}),
                    "--no-progress-bar"], check=True)
    html = out_dir / "benchmark.html"
    _to_html(nbformat.read(executed, as_version=4), html,
             title=f"mixnb benchmark: {profile} ({time.strftime('%Y-%m-%d %H:%M')})")
    runs = load_runs(profile)
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
            _to_html(notebook, page / "index.html", title=f"mixnb run {run_dir.name}", run_page=True)


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


def _to_html(notebook: Any, html: Path, *, title: str, run_page: bool = False) -> None:
    """nbconvert, images embedded: a single self-contained file. Its template's scripts (require.js, MathJax and
    mermaid from a CDN) are dropped: the report uses none of them, and a page that stands alone must not reach out
    when opened offline. ``run_page``: a run folder's notebook, with its code; anyone who can write a run folder
    can craft it, so its cells pass through ``sanitised`` into the template's page of an empty notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    from mixnb.io import atomic_write_text

    exporter = HTMLExporter(exclude_input=not run_page, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    resources = {"metadata": {"name": title}}
    page, _ = exporter.from_notebook_node(nbformat.v4.new_notebook() if run_page else notebook, resources=resources)
    page = re.sub(r"<script\b[^>]*>.*?</script>\s*", "", page, flags=re.DOTALL)  # the template's own: trusted
    if run_page:
        cells, _ = exporter.from_notebook_node(notebook, resources=resources)
        start, end, rest = page.partition("</main>")
        page = start + sanitised(cells) + end + rest
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
    sample = PROFILES.get(profile, {}).get("sample") is not None
    out = [f"<h1>Mixup benchmark on Tiny-ImageNet — profile <code>{escape(profile)}</code></h1>"]
    if sample:
        out.append("<blockquote><b>These numbers come from the generated sample profile</b> (a small synthetic dataset "
                   "and a narrow network, minutes on a CPU). They prove the pipeline; they are <b>not</b> comparable "
                   "with OpenMixup's published Tiny-ImageNet numbers, shown beside them for reference only."
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
