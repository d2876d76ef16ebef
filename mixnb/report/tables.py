"""The report's tables: the benchmark table and its tidy form, its agreement with OpenMixup, the appendix of every
configuration, the read-out and training-cost tables, and the README's methods table.

The benchmark table follows OpenMixup's Tiny-ImageNet page (docs/protocol.md §4): rows are methods, columns
backbones, cells the median top-1 of the last 10 epochs with the difference to our Vanilla run, beside the
published number where the runs are on that protocol, and the OpenMixup code each cell's runs follow
(``code_followed``; docs/publication.md).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mixnb.mixups import REGISTRY, published_top1
from mixnb.report.analysis import train_gflops
from mixnb.report.frames import (MEDIANS, TRAIN_SECONDS, best_alpha, column_values, frame_rows, pooled, short_runs,
                                 vanilla_deltas, vanilla_keys)
from mixnb.report.labels import BACKBONE_LABELS, alpha_text, method_label, row_label, run_page
from mixnb.report.published import (code_of_config, follows_tiny_code, openmixup_header, published_column,
                                    published_source)


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


def benchmark_table(summaries: pd.DataFrame, value: str = "readout_top1", *, diverged: pd.DataFrame | None = None,
                    reference: bool = True, code: bool = True, by: str | None = None, links: bool = False) -> pd.DataFrame:
    """Rows = methods in protocol (registry) order, one per non-default setting; columns per backbone:
    top-1 (mean ± std over seeds) at the best alpha; when its runs are shorter than the read-out window, the
    header says what that median covers and the last- and best-epoch top-1 stand beside it; the 95 % t-interval
    of the mean when a cell has two seeds or more; that alpha (ties: ``best_alpha``); the number of seeds; the
    difference to Vanilla (``vanilla_deltas``, "ref" on Vanilla's row, "–" without a Vanilla run). With
    ``reference``, OpenMixup's published number and the difference to it, the latter only for cells on the
    protocol (``on_protocol``); with ``code``, the OpenMixup code each cell's runs follow (``follows_tiny_code``:
    not for a profile whose own table set the settings). A configuration with only
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
    backbones = [b for b in BACKBONE_LABELS if b in set(best["backbone"]) | set(column_values(diverged, "backbone"))]
    deltas = vanilla_deltas(summaries, value)
    short = set(summaries.loc[short_runs(summaries), "config_key"]) if value in MEDIANS and not summaries.empty else set()
    on_protocol = set(summaries.loc[summaries["on_protocol"], "config_key"]) if "on_protocol" in summaries else set()
    table, budget = published_source(summaries)
    cols: dict[tuple[str, str], list[str]] = {}
    for backbone in backbones:
        label = BACKBONE_LABELS[backbone]
        cells = {(r.method, r.settings): r for r in best[best["backbone"] == backbone].itertuples()}
        failed = {(r.method, r.settings) for r in frame_rows(diverged) if r.backbone == backbone}

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
        cols[(label, "α")] = column(lambda c: alpha_text(c.alpha, c.candidates, c.tied, c.tie_rule))
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
        if code and follows_tiny_code(summaries):
            cols[(label, "code")] = column(lambda c: code_of_config(c.method, backbone, c.config_key))
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


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None or n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


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
                         "α": alpha_text(r.alpha), "settings": r.settings or "–",
                         "median top-1": _fmt(r.mean, r.std, r.count), "seeds": r.count,
                         "95 % CI": f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else "n=1",
                         "Δ Vanilla": "ref" if r.method == "vanilla" else
                         deltas[r.config_key].label() if r.config_key in deltas else "–",
                         "chosen α": chosen.get(r.config_key, ""),
                         "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
    for r in frame_rows(diverged):
        rows.append({"method": method_label(r.method), "backbone": BACKBONE_LABELS.get(r.backbone, r.backbone),
                     "α": "", "settings": r.settings or "–", "median top-1": r.reason,
                     "seeds": f"seed {r.seed}", "95 % CI": "", "Δ Vanilla": "", "chosen α": "",
                     "_order": list(REGISTRY).index(r.method) if r.method in REGISTRY else 99})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).sort_values(["backbone", "_order", "settings", "α"], kind="stable")
    return df.drop(columns="_order").set_index(["backbone", "method", "α", "settings"])


def readout_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """AutoMix/SAMix/AdAutoMix: the plain online-encoder median beside the reference's read-out, which the main
    table shows: OpenMixup's best of four heads (docs/protocol.md §1.7); for AdAutoMix its authors' EMA one-hot head.
    Each run's difference to the Vanilla run of the same seed, backbone, epochs, width and settings: of the
    online median to Vanilla's median, of the read-out to Vanilla's read-out ("–": no such Vanilla run)."""
    if "reference_top1" not in summaries:
        return pd.DataFrame()
    rows = summaries.dropna(subset=["reference_top1"])
    vanilla = summaries[summaries["method"] == "vanilla"].assign(_key=vanilla_keys).set_index(["_key", "seed"])
    at = [(k, seed) for k, seed in zip(vanilla_keys(rows), rows["seed"])]
    out = rows[["method", "backbone", "alpha", "settings", "seed", "median_top1", "reference_top1"]].copy()
    for value, base, name in (("median_top1", "median_top1", "online Δ Vanilla"),
                              ("reference_top1", "readout_top1", "read-out Δ Vanilla")):
        ref = vanilla.get(base, vanilla["median_top1"])
        out[name] = [v - ref[k] if k in ref.index else float("nan") for v, k in zip(rows[value], at)]
    out["method"] = out["method"].map(method_label)
    out["alpha"] = out["alpha"].map(alpha_text)
    out = out.rename(columns={"alpha": "α", "median_top1": "online q median",
                              "reference_top1": "reference read-out (in the table, †)"}
                     ).set_index(["method", "backbone", "α", "settings", "seed"]).round(2)
    return out.astype(object).where(out.notna(), "–")


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
    df["vanilla_key"] = df["config_key"].map(vanilla_keys(summaries).groupby(summaries["config_key"]).first())
    base = {r.vanilla_key: r.seconds for r in df[df["method"] == "vanilla"].itertuples()}
    df["× Vanilla"] = [r.seconds / base[r.vanilla_key] if r.vanilla_key in base else float("nan")
                       for r in df.itertuples()]
    df["train s/epoch"] = df["seconds"]
    flops = summaries.assign(f=[train_gflops(d) for d in summaries["run_dir"]]).groupby("config_key", sort=False)["f"]
    df["train GFLOPs/image"] = df["config_key"].map(flops.mean())
    df["_order"] = [list(REGISTRY).index(m) if m in REGISTRY else 99 for m in df["method"]]
    df = df.sort_values(["backbone", "_order", "alpha"], kind="stable")
    df["method"] = df["method"].map(method_label)
    df["α"] = df["alpha"].map(alpha_text)
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
