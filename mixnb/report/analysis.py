"""The report's analysis section, read from analysis.json files: the beyond-accuracy numbers per configuration (with
their n and 95 % interval) and per method, mCE, one run's corruption table, training FLOPs, the reliability and
occlusion plots, the CAM gallery and ``definitions()`` (one line per reported number)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mixnb.analysis.cam import upsample_cam
from mixnb.analysis.corruption_ops import CORRUPTIONS
from mixnb.analysis.settings import AnalysisSettings
from mixnb.mixups import REGISTRY
from mixnb.report.frames import frame_rows
from mixnb.report.labels import BACKBONE_LABELS, alpha_text, method_label
from mixnb.runs import ANALYSIS, read_analysis


def _records(rows: Any) -> list[dict[str, Any]]:
    """analysis.json dicts from dicts, run folders, or a DataFrame with a run_dir column."""
    if isinstance(rows, pd.DataFrame):
        rows = list(rows["run_dir"]) if "run_dir" in rows else rows.to_dict("records")
    out = []
    for r in rows:
        if isinstance(r, (str, Path)):
            rec = read_analysis(r)
            if rec is None:
                raise FileNotFoundError(f"{Path(r) / ANALYSIS} is missing or unreadable: run `python -m mixnb analyze {r}`")
            out.append(rec)
        else:
            out.append(r)
    return out


@dataclass(frozen=True)
class BeyondColumn:
    """A beyond-accuracy number: where analysis.json holds it and the count of the images it was computed on,
    whether higher is better, and its 95 % interval: "wilson" (a top-1 over those images: ``wilson_interval``),
    "ece" (``ece_interval``), "se" (± 1.96 x the standard error analysis.json holds beside the value, ``<name>_se``;
    records from before it have none) or "" (none)."""

    path: tuple[str, ...]
    images: tuple[str, ...]
    higher_is_better: bool
    interval: str


BEYOND_COLUMNS = {
    "ECE": BeyondColumn(("calibration", "ece"), ("clean", "images"), False, "ece"),
    "NLL": BeyondColumn(("calibration", "nll"), ("clean", "images"), False, "se"),
    "FGSM": BeyondColumn(("adversarial", "fgsm_top1"), ("adversarial", "images"), True, "wilson"),
    "PGD": BeyondColumn(("adversarial", "pgd_top1"), ("adversarial", "images"), True, "wilson"),
    "occlusion AUC": BeyondColumn(("occlusion", "auc"), ("occlusion", "images"), True, "wilson"),
    "corruption": BeyondColumn(("corruptions", "generated", "mean_top1"), ("corruptions", "generated", "images"), True,
                               "wilson"),
    "localization": BeyondColumn(("localization", "top1_loc"), ("localization", "images"), True, "wilson"),
}
OFFICIAL_CORRUPTION = BeyondColumn(("corruptions", "official", "mean_top1"), ("corruptions", "official", "images"),
                                   True, "wilson")


def wilson_interval(top1: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (%) of a top-1 (%) over ``n`` images, 95 % at z = 1.96 (Wilson, JASA 22, 1927):
    (p + z²/2n ± z √(p(1 - p)/n + z²/4n²)) / (1 + z²/n). A top-1 averaged over conditions on the same n images
    (occlusion AUC, corruption mean) varies no more than one image's 0/1 outcome: the interval is an upper bound."""
    p = top1 / 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(100 * float(centre - half), 0.0), min(100 * float(centre + half), 100.0)  # rounding: never past 0-100


def ece_interval(calibration: dict[str, Any], z: float = 1.96) -> tuple[float, float]:
    """ECE ± z SE (%), floored at 0, with each bin's accuracy binomial: SE = √(Σ_m n_m acc_m (1 - acc_m)) / N
    (the delta method with the sign of each bin's gap held; the |.| bias of a small bin is not in it)."""
    bins = calibration["bins"]
    total = sum(b["count"] for b in bins)
    se = 100 * np.sqrt(sum(b["count"] * b["accuracy"] * (1 - b["accuracy"]) for b in bins)) / max(total, 1)
    return max(calibration["ece"] - z * se, 0.0), calibration["ece"] + z * se


def se_interval(value: float, se: float | None, z: float = 1.96) -> tuple[float, float] | None:
    """value ± z SE, the normal interval of a mean over images (NLL); None without a standard error."""
    return None if se is None else (value - z * se, value + z * se)


def beyond_value(rec: dict[str, Any], column: BeyondColumn) -> tuple[float | None, int | None, tuple[float, float] | None]:
    """One ``BeyondColumn`` of an analysis.json record: its value, the images it was computed on (the official
    corruption set: the largest corruption x severity folder) and its 95 % interval (None where it has none)."""
    value, images = value_at(rec, column.path), value_at(rec, column.images)
    n = max(_leaves(images)) if isinstance(images, dict) else images
    if value is None or not n:
        return value, n, None
    interval = (wilson_interval(value, n) if column.interval == "wilson" else
                ece_interval(rec["calibration"]) if column.interval == "ece" else
                se_interval(value, value_at(rec, (*column.path[:-1], f"{column.path[-1]}_se")))
                if column.interval == "se" else None)
    return value, n, interval


def _leaves(tree: dict[str, Any]) -> list[Any]:
    return [v for x in tree.values() for v in (_leaves(x) if isinstance(x, dict) else [x])]


def value_at(rec: dict[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (keys) in a nested analysis.json record, or None where a key is missing."""
    for k in path:
        rec = rec.get(k) if isinstance(rec, dict) else None
    return rec


def beyond_table(rows: Any) -> Any:
    """One row per (method, backbone): ECE (%), NLL, FGSM / PGD top-1 (%), occlusion AUC (%), generated-corruption
    mean top-1 (%) and top-1 localisation (%) (``definitions()``), the mean over the seeds in ``rows`` (a list of
    analysis.json dicts or run folders, or a DataFrame with a run_dir column); ``n`` = seeds pooled, and the
    official Tiny-ImageNet-C mean top-1 when any run has it. Index: the method name."""
    recs = _records(rows)
    cols = {**BEYOND_COLUMNS, "corruption (official)": OFFICIAL_CORRUPTION}
    table = pd.DataFrame([{"method": r["method"], "backbone": r["backbone"],
                           **{c: value_at(r, col.path) for c, col in cols.items()}} for r in recs],
                         columns=["method", "backbone", *cols])
    table[list(cols)] = table[list(cols)].astype(float)
    if table["corruption (official)"].isna().all():
        table = table.drop(columns="corruption (official)")
    grouped = table.groupby(["method", "backbone"], sort=False)
    out = grouped.mean()
    out.insert(0, "n", grouped.size())
    return out.reset_index().set_index("method")


def beyond_accuracy(summaries: pd.DataFrame) -> pd.DataFrame:
    """The "beyond accuracy" numbers (``BEYOND_COLUMNS``) per configuration, in protocol order: one
    row per method, α and settings (runs of different settings never pool, as in the main table); per number its
    mean over the seeds, "<number> n" (the images it was computed on) and "<number> low"/"high" (the mean of the
    seeds' 95 % intervals; ``beyond_value``)."""
    rows = []
    for r in frame_rows(summaries):
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
    out["α"] = out["alpha"].map(alpha_text)
    out["method"] = out["method"].map(method_label)
    out["backbone"] = out["backbone"].map(lambda b: BACKBONE_LABELS.get(b, b))
    return out.set_index(["backbone", "method", "α", "settings"])[["seeds", *columns]]


def beyond_view(beyond: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``beyond_accuracy`` as the report shows it, and a same-shaped frame marking the best cell of each column.
    Each number's header carries its direction (↑ higher is better, ↓ lower) and n, e.g. "FGSM % ↑ (n=64)"; each
    cell reads "value [95 % interval]" (the value alone where a record has no interval)."""
    view, best = pd.DataFrame(index=beyond.index), pd.DataFrame(index=beyond.index)
    view["seeds"], best["seeds"] = beyond["seeds"].astype(int).astype(str), False
    for name, column in BEYOND_COLUMNS.items():
        values, ns = beyond[name], beyond[f"{name} n"].dropna()
        if values.isna().all():
            continue
        n = f"{ns.min():.0f}" if ns.min() == ns.max() else f"{ns.min():.0f}–{ns.max():.0f}"
        unit, digits = ("", 2) if name == "NLL" else (" %", 1)  # nats: ~0.01 matters; percentages: 0.1
        header = f"{name}{unit} {'↑' if column.higher_is_better else '↓'} (n={n})"
        view[header] = [("–" if pd.isna(v) else f"{v:.2f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]"
                                                               if pd.notna(lo) else ""))
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
    flops = value_at(read_analysis(run_dir) or {}, ("flops", "train_step_per_image"))
    return flops / 1e9 if flops else None


def corruption_table(record: dict[str, Any]) -> pd.DataFrame:
    """One run's generated-corruption top-1 (%) per corruption and severity, from its analysis.json record."""
    generated = record["corruptions"]["generated"]
    table = pd.DataFrame(generated["top1"], index=[f"severity {s}" for s in generated["severities"]]).T.round(1)
    table.index.name = "corruption"
    return table


def _errors(rec: dict[str, Any], source: str) -> dict[str, float]:
    """{corruption: sum over severities of top-1 error (%)} of one analysis (``source``: official | generated)."""
    per = value_at(rec, ("corruptions", source, "top1")) or {}
    return {c: sum(100 - a for a in (v.values() if isinstance(v, dict) else v)) for c, v in per.items()}


def mce_table(rows: Any, *, reference: str = "vanilla", source: str = "official") -> Any:
    """Corruption errors normalised by the reference method's (Hendrycks & Dietterich, §4.4): per (method, backbone)
    and corruption, CE_c = 100 x sum_s E_{s,c} / sum_s E_{s,c}^{reference} with E = top-1 error (%), each the mean
    over seeds; mCE = the mean of CE_c over the 15 common corruptions present; "images" = the images per corruption
    x severity (n), "seeds" = the runs averaged. ``source``: "official" (``$MIXNB_TINC``) or "generated". Methods
    without a reference run of their backbone are left out."""
    seeds: dict[tuple[str, str], list[dict[str, float]]] = {}
    images: dict[tuple[str, str], int] = {}
    for r in _records(rows):
        key = (r["method"], r["backbone"])
        seeds.setdefault(key, []).append(_errors(r, source))
        n = value_at(r, ("corruptions", source, "images"))
        images[key] = max(_leaves(n)) if isinstance(n, dict) else n
    err = {k: pd.DataFrame(v).mean().to_dict() for k, v in seeds.items()}
    out = []
    for (method, backbone), e in err.items():
        ref = err.get((reference, backbone))
        if ref is None:
            continue
        ce = {c: 100 * v / ref[c] for c, v in e.items() if ref.get(c)}
        common = [v for c, v in ce.items() if c in CORRUPTIONS and CORRUPTIONS[c][2]]
        out.append({"method": method, "backbone": backbone, "mCE": float(np.mean(common)) if common else None,
                    "images": images[(method, backbone)], "seeds": len(seeds[(method, backbone)]), **ce})
    columns = ["method", "backbone", "mCE", "images", "seeds"]
    return pd.DataFrame(out, columns=None if out else columns).set_index("method")


def plot_reliability(rows: Any, *, cols: int = 4) -> Any:
    """Reliability diagrams, one panel per analysis (``rows``: analysis.json dicts or run folders): per confidence
    bin its accuracy (blue bar) and mean confidence (hatched red outline; the gap between them is the bin's
    calibration error) against the diagonal, and each bin's share of images (grey step line)."""
    recs = _records(rows if isinstance(rows, (list, tuple)) or not isinstance(rows, dict) else [rows])
    n = max(len(recs), 1)
    cols = min(cols, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(2.6 * cols, 2.6 * -(-n // cols)), squeeze=False)
    for ax in axes.flat[len(recs):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, recs):
        bins = r["calibration"]["bins"]
        lo = np.array([b["lo"] for b in bins])
        width = np.array([b["hi"] - b["lo"] for b in bins])
        acc = np.array([b["accuracy"] for b in bins])
        conf = np.array([b["confidence"] for b in bins])
        count = np.array([b["count"] for b in bins], dtype=float)
        has = count > 0
        ax.bar(lo[has], acc[has], width[has], align="edge", color="tab:blue", edgecolor="white", label="accuracy")
        ax.bar(lo[has], conf[has], width[has], align="edge", fill=False, edgecolor="tab:red", hatch="///", lw=0.6,
               label="mean confidence")
        ax.step(np.r_[lo, 1.0], np.r_[count / max(count.sum(), 1), 0], where="post", color="grey", lw=0.8,
                label="share of images")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        lo, hi = ece_interval(r["calibration"])
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{r['run']}\n"
               f"ECE {r['calibration']['ece']:.1f}% [{lo:.1f}, {hi:.1f}], n={int(count.sum())}\n"
               f"MCE {r['calibration']['mce']:.1f}%")
        ax.title.set_fontsize(8)
    axes.flat[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def plot_occlusion(rows: Any) -> Any:
    """Top-1 (%) against the share of 8x8 patches zeroed, one line per analysis, AUC in the legend, the images
    each point was measured on (n) in the title."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    recs = _records(rows if not isinstance(rows, dict) else [rows])
    for r in recs:
        o = r["occlusion"]
        ax.plot(o["fractions"], o["top1"], marker=".", label=f"{r['run']} AUC {o['auc']:.1f}")
    ns = sorted({r["occlusion"]["images"] for r in recs})
    ax.set(xlabel="share of 8x8 patches zeroed", ylabel="top-1 (%)",
           title=f"Occlusion robustness (n={'/'.join(map(str, ns))} images per point)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def cam_gallery(run_dirs: str | Path | list[str | Path]) -> Any:
    """The CAM gallery of analysed runs as one grid: a column per gallery image (one per class, the same images for
    every run), a first row of the images titled with their class, then a row per run (named on the left): its
    Grad-CAM over the image with the CAM's box (red) and the val box (green), titled with the prediction and the IoU.
    Read from analysis.json alone (images and names are stored there): neither checkpoint nor dataset is needed."""
    import base64
    import io

    from matplotlib.patches import Rectangle
    from PIL import Image

    recs = []
    for run_dir in [Path(d) for d in (run_dirs if isinstance(run_dirs, list) else [run_dirs])]:
        rec = read_analysis(run_dir)
        if rec is None:
            raise FileNotFoundError(f"{run_dir / ANALYSIS} is missing or unreadable: run `python -m mixnb analyze "
                                    f"{run_dir}`")
        if any("image_png" not in it for it in rec["localization"]["gallery"]):
            raise ValueError(f"{run_dir / ANALYSIS} was written before analyses kept their gallery images: run "
                             f"`python -m mixnb analyze --force {run_dir}` (with the dataset) once")
        recs.append(rec)
    def image(item: dict[str, Any]) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["image_png"]))))

    items = recs[0]["localization"]["gallery"]
    n = max(len(items), 1)
    fig, axes = plt.subplots(1 + len(recs), n, figsize=(1.2 * n + 1.2, 1.45 * (1 + len(recs)) + 0.4), squeeze=False)
    for k, it in enumerate(items):
        axes[0, k].imshow(image(it))
        axes[0, k].set_title(textwrap.fill(it["label_name"], 16), fontsize=6.5)
    for row, rec in zip(axes[1:], recs):
        row[0].text(-0.08, 0.5, textwrap.fill(rec["run"], 18), transform=row[0].transAxes, ha="right", va="center",
                    fontsize=7)
        for k, it in enumerate(rec["localization"]["gallery"][:n]):  # the same images (gallery_indices) per dataset
            img = image(it)
            cam = upsample_cam(torch.tensor(it["cam"])[None], img.shape[0])[0].numpy()
            row[k].imshow(img)
            row[k].imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            for box, colour in ((it["gt_box"], "lime"), (it["box"], "red")):
                x0, y0, x1, y1 = box
                row[k].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color=colour,
                                           lw=1))
            row[k].set_title(f"{textwrap.shorten(it['pred_name'], 16, placeholder='…')}\nIoU {it['iou']:.2f}",
                             fontsize=6, color="black" if it["pred_name"] == it["label_name"] else "firebrick")
    for ax in axes.flat:
        ax.axis("off")
    locs = ", ".join(f"{r['run']} {r['localization']['top1_loc']:.1f}%" for r in recs)
    fig.suptitle(textwrap.fill(f"Grad-CAM at layer4: box of the largest region >= "
                               f"{recs[0]['localization']['threshold']:g} of max (red), val box (green); titles: the "
                               f"prediction (red when wrong) and the IoU; top-1 localisation: {locs}", 160), fontsize=7)
    fig.tight_layout()
    return fig


def definitions() -> dict[str, str]:
    """One line per reported number: how it is computed here."""
    s = AnalysisSettings()
    return {
        "ECE": (f"expected calibration error (%): sum over {s.n_bins} equal-width, right-closed confidence bins of "
                "(bin share) x |accuracy - mean confidence|; confidence = max softmax of the reported head; bins "
                "paired as they are (OpenMixup sorts them first, under-reporting)"),
        "MCE": "maximum calibration error (%): the largest |accuracy - mean confidence| over the bins (empty bins 0)",
        "NLL": "negative log-likelihood of the true class (nats), mean over the val images",
        "Brier": "Brier score: mean over images of sum over classes (p_c - 1[c = y])^2 (range 0-2; not divided by K)",
        "FGSM": (f"top-1 (%) under FGSM: one step of {s.eps * 255:g}/255 x sign(gradient) in pixel space, through the "
                 "run's ImageNet normalisation, clamped to [0, 1]; eval-mode model"),
        "PGD": (f"top-1 (%) under PGD-{s.pgd_steps}: eps {s.eps * 255:g}/255, step {s.pgd_step * 255:g}/255, uniform "
                "random start, projected onto the eps-box around the clean image and [0, 1], pixel space"),
        "occlusion AUC": ("area under top-1 (%) vs share of 8x8 patches zeroed (0, 0.1, ..., 0.9; seeded random patch "
                          "order per image; zero = the mean colour in normalised input), trapezoid / 0.9: a mean "
                          "top-1"),
        "corruption": ("mean top-1 (%) over the generated corruptions x severities (Tiny-ImageNet-C 64-px constants, "
                       "JPEG q85, seeded, from this val set; motion blur and snow skipped: they need ImageMagick; "
                       "frost only with its pictures); not the official release"),
        "corruption (official)": "mean top-1 (%) over every corruption x severity of the official Tiny-ImageNet-C folder",
        "mCE": ("sum over severities of top-1 error / the same for the reference (Vanilla), mean over the 15 common "
                "corruptions present, x 100 (Hendrycks & Dietterich, with Vanilla in AlexNet's place)"),
        "localization": (f"top-1 localisation (%): top-1 correct and IoU >= {s.iou_threshold} between the val box and "
                         f"the box of the largest 8-connected region >= {s.cam_threshold} x max of the Grad-CAM "
                         "(layer4, 8x8, ground-truth class, bilinear to 64 px); inclusive pixel boxes"),
        "GT-known loc": f"localisation (%) with IoU >= {s.iou_threshold} alone, whatever the prediction",
        "n and intervals": ("n = the val images a number was computed on; [ ] = its 95 % interval: Wilson's for a "
                            "top-1 (an upper bound for AUC and the corruption mean, averages over conditions on the "
                            "same images), ECE ± 1.96 SE with each bin's accuracy binomial, NLL ± 1.96 SE of its mean over "
                            "the images; over several seeds, the mean of their intervals"),
        "FLOPs": ("FlopCounterMode FLOPs (2 x MACs, convs and matmuls) of one training step of the method (forward + "
                  "backward at the run's batch size) and of one 64 px image's forward"),
    }
