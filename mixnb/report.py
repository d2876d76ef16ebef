"""Runs -> DataFrames -> the benchmark table, curves and mixed-sample galleries; HTML rendering.

The table follows OpenMixup's Tiny-ImageNet page (protocol.md §4): rows are methods, columns
backbones, cells the median top-1 of the last 10 epochs, beside the published number.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY, MixedBatch, get_method, get_spec
from mixnb.paths import KERNEL, NOTEBOOKS, reports_root, runs_root

# OpenMixup's published Tiny-ImageNet top-1 (%), R-18 / RX-50 (protocol.md §4).
PUBLISHED: dict[str, dict[str, float]] = {
    "vanilla": {"resnet18": 61.68, "resnext50": 65.04},
    "mixup": {"resnet18": 63.86, "resnext50": 66.36},
    "cutmix": {"resnet18": 65.53, "resnext50": 66.47},
    "manifoldmix": {"resnet18": 64.15, "resnext50": 67.30},
    "saliencymix": {"resnet18": 64.60, "resnext50": 66.55},
    "attentivemix": {"resnet18": 64.85, "resnext50": 67.42},
    "fmix": {"resnet18": 63.47, "resnext50": 65.08},
    "puzzlemix": {"resnet18": 65.81, "resnext50": 67.83},
    "resizemix": {"resnet18": 63.74, "resnext50": 65.87},
    "automix": {"resnet18": 67.33, "resnext50": 70.72},
    "samix": {"resnet18": 68.89, "resnext50": 72.18},
}
BACKBONE_LABELS = {"resnet18": "R-18", "resnext50": "RX-50"}


# ----------------------------------------------------------------------------- loading
def load_runs(profile: str, root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summaries, metrics) of every finished run of ``profile``: one row per run / per epoch."""
    root = (root or runs_root()) / profile
    summaries, metrics = [], []
    for summary_path in sorted(root.glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        flat = {k: v for k, v in s.items() if not isinstance(v, dict)}
        flat["run_dir"] = str(summary_path.parent)
        flat["device_name"] = s.get("environment", {}).get("device_name")
        flat["commit"] = s.get("git", {}).get("commit")
        summaries.append(flat)
        m = pd.read_csv(summary_path.parent / "metrics.csv")
        metrics.append(m.assign(run=s["run"], method=s["method"], backbone=s["backbone"], seed=s["seed"]))
    summary_df = pd.DataFrame(summaries)
    metric_df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame()
    return summary_df, metric_df


def method_label(name: str) -> str:
    return get_spec(name).label or name if name in REGISTRY else name


# ----------------------------------------------------------------------------- table
def benchmark_table(summaries: pd.DataFrame, value: str = "median_top1") -> pd.DataFrame:
    """Rows = methods (registry order), columns = (backbone, ours | OpenMixup | delta).

    "ours" is the mean over seeds (with ± std when there are several seeds).
    """
    if summaries.empty:
        return pd.DataFrame()
    order = [m for m in REGISTRY if m in set(summaries["method"])]
    cols = {}
    for backbone in [b for b in BACKBONE_LABELS if b in set(summaries["backbone"])]:
        sub = summaries[summaries["backbone"] == backbone].groupby("method")[value]
        mean, std, n = sub.mean(), sub.std(), sub.count()
        label = BACKBONE_LABELS[backbone]
        ours = [_fmt(mean.get(m), std.get(m), n.get(m, 0)) for m in order]
        ref = [PUBLISHED.get(m, {}).get(backbone) for m in order]
        cols[(label, "ours")] = ours
        cols[(label, "OpenMixup")] = [f"{r:.2f}" if r is not None else "–" for r in ref]
        cols[(label, "Δ")] = [f"{mean[m] - r:+.2f}" if r is not None and m in mean else "–"
                              for m, r in zip(order, ref)]
    labels = [method_label(m) for m in order]
    if "teacher" in summaries:  # AttentiveMix+: say which teacher made the row (ImageNet file or own run)
        teachers = summaries.dropna(subset=["teacher"]).groupby("method")["teacher"].first()
        labels = [f"{lab} (teacher: {teachers[m]})" if m in teachers else lab for m, lab in zip(order, labels)]
    table = pd.DataFrame(cols, index=labels)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    return table


def readout_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """AutoMix/SAMix: the plain online-encoder median (shown in the table) beside the reference's
    best-of-heads read-out (protocol.md §1.7), which is how OpenMixup's numbers were read."""
    if "reference_top1" not in summaries:
        return pd.DataFrame()
    rows = summaries.dropna(subset=["reference_top1"])
    out = rows[["method", "backbone", "seed", "median_top1", "reference_top1"]].copy()
    out["method"] = out["method"].map(method_label)
    return out.set_index(["method", "backbone", "seed"]).rename(columns={"median_top1": "online q median (in the table)",
                               "reference_top1": "reference best-of-heads median"}).round(2)


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None or n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def cost_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Seconds per epoch and peak memory per method and backbone, with the ratio to Vanilla."""
    df = summaries.groupby(["method", "backbone"])[["seconds_per_epoch", "peak_mem_mb"]].median().reset_index()
    base = df[df["method"] == "vanilla"].set_index("backbone")["seconds_per_epoch"]
    df["× vanilla"] = df.apply(lambda r: r["seconds_per_epoch"] / base.get(r["backbone"], float("nan")), axis=1)
    df["method"] = df["method"].map(method_label)
    return df.set_index(["method", "backbone"]).round(2)


# ----------------------------------------------------------------------------- plots
def plot_curves(metrics: pd.DataFrame, y: str = "top1") -> plt.Figure:
    """Val top-1 per epoch, one line per method (mean over seeds), one panel per backbone."""
    import seaborn as sns

    data = metrics.assign(method=metrics["method"].map(method_label))
    grid = sns.relplot(data=data, x="epoch", y=y, hue="method", col="backbone", kind="line",
                       errorbar=("sd" if data["seed"].nunique() > 1 else None), height=3.5, aspect=1.3)
    grid.set_axis_labels("epoch", f"val {y} (%)")
    return grid.figure


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


def denormalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, H, W) normalised -> (N, H, W, 3) float in [0, 1] for plotting."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def plot_mixed_grid(batch: MixedBatch, x: Tensor, *, mean: tuple[float, ...], std: tuple[float, ...],
                    title: str, classes: list[str] | None = None) -> plt.Figure:
    """Columns = samples; rows = image, mask (white = this image), mixed image; lam in titles."""
    n = x.shape[0]
    rows = [("image", denormalize(x, mean, std))]
    if batch.mask is not None:
        mask = batch.mask.float().expand(n, 1, *x.shape[-2:])[:, 0].cpu()
        rows.append(("mask of image", mask))
    rows.append(("mixed", denormalize(batch.x, mean, std)))
    lam = batch.lam.float().expand(n).cpu() if batch.lam.dim() == 0 else batch.lam.float().cpu()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ya, yb = int(batch.y_a[i]), int(batch.y_b[i])
                names = f"{classes[ya][:10]}/{classes[yb][:10]}" if classes else f"{ya}/{yb}"
                ax.set_title(f"λ={lam[i]:.2f}\n{names}", fontsize=7)
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def run_gallery(run_dir: str | Path, *, n: int = 8, seed: int = 0) -> plt.Figure:
    """A fixed-seed mixed batch of val images for a finished (or checkpointed) run."""
    from mixnb.data import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader
    from mixnb.models import build_model
    from mixnb.train import load_data

    run_dir = Path(run_dir)
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = RunConfig.from_dict({**ckpt["config"], "device": "cpu"})
    data = load_data(cfg)
    model = build_model(cfg.backbone, num_classes=len(data.wnids), width=cfg.model_width)
    model.load_state_dict(ckpt["model"])
    method = get_method(cfg.method, **cfg.method_args)
    method.setup(model, cfg=cfg, run_dir=run_dir)
    method.load_state_dict(ckpt["method"])
    # one image from each of the first n classes, always the same ones
    idx = torch.stack([(data.y_val == c).nonzero()[0, 0] for c in range(min(n, len(data.wnids)))])
    loader = DeviceLoader(data.x_val[idx], data.y_val[idx], batch_size=len(idx), device="cpu", train=False)
    x, y = next(iter(loader))
    model.eval()
    method.eval()
    batch = method.preview(model, x, y, gen=torch.Generator().manual_seed(seed))
    words = [data.words.get(w, w) for w in data.wnids]
    return plot_mixed_grid(batch, x, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=words,
                           title=f"{method_label(cfg.method)} ({cfg.backbone}, seed {seed})")


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel")  # colour photos that ship with scikit-image (no download)


def photo_batch(n: int = 6, size: int = 64) -> tuple[Tensor, Tensor, list[str]]:
    """Real photos from ``skimage.data``, centre-cropped square, resized to ``size`` and normalised."""
    import skimage.data

    from mixnb.data import IMAGENET_MEAN, IMAGENET_STD, normalize

    names = list(PHOTOS[:n])
    imgs = []
    for name in names:
        img = torch.from_numpy(getattr(skimage.data, name)()[..., :3]).permute(2, 0, 1).float()  # (3, H, W)
        side = min(img.shape[-2:])
        top, left = (img.shape[-2] - side) // 2, (img.shape[-1] - side) // 2
        img = img[:, top:top + side, left:left + side]
        imgs.append(torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)[0])
    x = normalize(torch.stack(imgs).clamp(0, 255), IMAGENET_MEAN, IMAGENET_STD)  # (N, 3, size, size)
    return x, torch.arange(len(names)), names


def method_gallery(name: str, x: Tensor, y: Tensor, *, classes: list[str], seed: int = 0,
                   run_dir: Path | None = None) -> plt.Figure:
    """A fixed-seed mixed batch of ``x`` for method ``name``; model-based methods get an untrained
    narrow model (their masks then show the mechanism, not a trained model's choices)."""
    from mixnb.data import IMAGENET_MEAN, IMAGENET_STD
    from mixnb.models import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=len(classes), width=8).eval()
    method = get_method(name)
    method.setup(model, cfg=RunConfig(method=name, profile="test", device="cpu"), run_dir=run_dir)
    method.eval()
    batch = method.preview(model, x, y, gen=torch.Generator().manual_seed(seed))
    return plot_mixed_grid(batch, x, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=classes,
                           title=f"{method_label(name)} (seed {seed})")


# ----------------------------------------------------------------------------- rendering
def render_report(profile: str) -> Path:
    """Execute analysis.ipynb for ``profile`` and convert it to one self-contained HTML file.

    Writes reports/<profile>/analysis.ipynb and benchmark.html, and copies the HTML to
    reports/benchmark.html (the latest report).
    """
    out_dir = reports_root() / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "analysis.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "analysis.ipynb"), str(executed),
                    "-k", KERNEL, "-y", json.dumps({"profile": profile, "runs_root": str(runs_root())}),
                    "--no-progress-bar"], check=True)
    html = out_dir / "benchmark.html"
    _to_html(executed, html)
    shutil.copyfile(html, reports_root() / "benchmark.html")
    return html


def _to_html(notebook: Path, html: Path) -> None:
    """nbconvert without code cells, images embedded: a single self-contained file."""
    import nbformat
    from nbconvert import HTMLExporter

    from mixnb.io import atomic_write_text

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write_text(html, body)


def header(summaries: pd.DataFrame, profile: str) -> dict[str, Any]:
    """What the report header states: protocol, dataset, epochs, hardware, versions, commit."""
    from mixnb.config import PROFILES

    first = json.loads((Path(summaries["run_dir"].iloc[0]) / "summary.json").read_text()) if len(summaries) else {}
    env = first.get("environment", {})
    return {
        "profile": profile,
        "sample": PROFILES.get(profile, {}).get("sample") is not None,
        "epochs": sorted(set(summaries["epochs"])) if len(summaries) else [],
        "devices": sorted(set(summaries["device_name"].dropna())) if len(summaries) else [],
        "torch": env.get("torch"),
        "python": env.get("python"),
        "commits": sorted(set(summaries["commit"].dropna())) if len(summaries) else [],
        "runs": len(summaries),
        "data": (first.get("config") or {}).get("data"),
    }
