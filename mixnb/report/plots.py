"""The report's figures: val top-1 and train loss per configuration, top-1 against cost and against α, and one run's
learning curve; a method keeps its colour and marker in every plot."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from mixnb.mixups import REGISTRY
from mixnb.report.analysis import train_gflops
from mixnb.report.frames import TRAIN_SECONDS, best_alpha, pooled
from mixnb.report.labels import BACKBONE_LABELS, alpha_text, method_label


MARKERS = "osD^vP*XhpH<>8d"


def method_style(method: str) -> dict[str, Any]:
    """The colour and marker of ``method``, the same in every plot (by registry position)."""
    i = list(REGISTRY).index(method) if method in REGISTRY else len(REGISTRY)
    return {"color": plt.get_cmap("tab20")(i % 20), "marker": MARKERS[i % len(MARKERS)]}


def config_label(method: str, alpha: float | None, settings: str) -> str:
    """A plot legend's label, ``$`` escaped: matplotlib reads ``$...$`` as maths (a bad formula stops the plot)."""
    parts = [method_label(method)] + ([f"α {alpha_text(alpha)}"] if alpha is not None and pd.notna(alpha) else [])
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
