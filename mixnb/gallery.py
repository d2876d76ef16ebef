"""Mixed-sample galleries: each method's mechanism at fixed λ targets, on real photos or a run's val images.

``method_gallery`` (photos, an untrained narrow model), ``photo_galleries`` (that, for every registered
method) and ``run_gallery`` (a run's checkpoint on its val images) return figures built the same way:

- columns: the images, grouped by λ target (``TARGETS``: 0.35 | 0.5 | 0.65, left to right); each image
  mixes with the next column's image (``derangement``: no self-pairs);
- rows: the image, its mask (the weight of the image, white = the image's pixels, where the method has
  one) and the mixed image; titles: both class names in full, λ (the weight of the image's label) and
  the mask's true share, which differ for AutoMix/SAMix (the loss uses the drawn λ) and SmoothMix;
- below: what the method does, what its label's marks mean, and notes (flat masks, untrained models).

How a column gets its target (``gallery_batch``): the method draws through its own sampler
``sample_<name>`` (``MixMethod.preview``, so model-based methods run as in training), the draw's λ
and partners are set (``steered``) and its pure core applies it; λ can still move off the target where
the core corrects it to an area (a box clipped at the border, GridMix's crop) or where the draw has no
λ (SmoothMix), so each target takes the closest of up to ``REDRAWS`` draws from the same generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY, MixedBatch, MixMethod, get_method, get_spec

# Mid-range: each mechanism shows both images. Inside (1/3, 2/3) on purpose: there PuzzleMix's 3-label
# binomial prior has its mode at the 50/50 label, so a near-flat (untrained) saliency gives a blend, not
# a mask of one image (below 1/3 the mode is "all partner": the all-black mask of a λ = 0.09 draw).
TARGETS = (0.35, 0.5, 0.65)
TOL = 0.05  # a target's redraws stop once every column's λ is this close
REDRAWS = 64  # most draws per target: CutMix at 0.35 needs a centre that leaves its 50 px box unclipped (~1 in 15)
PATIENCE = 8  # ... or once this many draws in a row gave no λ not seen before (PuzzleMix: 3 block counts)
FLAT_STD = 0.02  # a mask whose spatial std is below this is called flat
FONT = 7  # pt: at 90 dpi 7 pt is ~9 px, readable in a 900 px wide figure
WIDTH = 10.0  # in: 900 px at 90 dpi

MARKS = {  # label marks, as in OpenMixup's table (docs/protocol.md §4)
    "*": "* = an arXiv pre-print reproduced by the OpenMixup authors (docs/protocol.md §4).",
    "📖": "📖 = the original paper's numbers (official code), not run in OpenMixup (docs/protocol.md §4).",
}


# ----------------------------------------------------------------------------- steering a draw
def derangement(n: int, device: torch.device | str = "cpu") -> Tensor:
    """The fixed partner (N,) int64 of the galleries: image i mixes with image i + 1 (mod N), never itself."""
    if n < 2:
        raise ValueError(f"a gallery needs at least 2 images (each mixes with another), got {n}")
    return torch.arange(n, device=device).roll(-1)


def column_targets(n: int, targets: tuple[float, ...] = TARGETS) -> Tensor:
    """(N,) float32: the λ target of each column, in contiguous groups (n=6: 0.35 0.35 0.5 0.5 0.65 0.65)."""
    return torch.tensor([targets[i * len(targets) // n] for i in range(n)])


def steer(name: str, draw: Any, lam: float, perm: Tensor, args: tuple, kwargs: dict) -> Any:
    """``draw`` with λ set to ``lam`` and every partner field (``perm``, ``perm_*``) set to ``perm``.

    Special cases, where a field other than ``lam`` carries λ or depends on the partner: ResizeMix
    draws the box side ratio tau (λ = 1 - tau^2 for an unclipped box); SaliencyMix's box centre is
    the saliency peak of the first partner, so it is recomputed for the new one.
    """
    fields = {f.name for f in dataclasses.fields(draw)}
    changes = {f: perm.to(getattr(draw, f).device) for f in fields if f == "perm" or f.startswith("perm_")}
    if "lam" in fields:
        changes["lam"] = torch.full_like(draw.lam, lam)
    elif name == "resizemix":
        changes["tau"] = torch.full_like(draw.tau, (1 - lam) ** 0.5)
    draw = dataclasses.replace(draw, **changes)
    if name == "saliencymix":
        from mixnb.mixups.saliencymix import saliency_peak

        x = args[0] if args else kwargs["x"]
        draw = dataclasses.replace(draw, center=saliency_peak(x[draw.perm[0]]).to(draw.center.device))
    return draw


def _sampler(method: MixMethod) -> tuple[Any, str] | None:
    """(module, attribute) of the method's ``sample_<name>``, looked up along its classes (SAMix: AutoMix's)."""
    for cls in type(method).__mro__:
        name, module = cls.__dict__.get("name"), sys.modules.get(cls.__module__)
        if isinstance(name, str) and module is not None and callable(getattr(module, f"sample_{name}", None)):
            return module, f"sample_{name}"
    return None


@contextlib.contextmanager
def steered(method: MixMethod, lam: float, perm: Tensor) -> Iterator[list]:
    """While open, the method's sampler returns its own draw ``steer``-ed to λ ``lam`` and partners
    ``perm``; yields the list of the draws it made (empty: the method has no ``sample_<name>``).

    The sampler is swapped in its module for the duration (the method's ``mix``/``preview`` look it
    up there), so the method's code path is the training one; galleries only, not thread-safe.
    """
    draws: list = []
    home = _sampler(method)
    if home is None:
        yield draws
        return
    module, attr = home
    sample = getattr(module, attr)

    def sample_steered(*args: Any, **kwargs: Any) -> Any:
        draws.append(steer(method.name, sample(*args, **kwargs), lam, perm, args, kwargs))
        return draws[-1]

    setattr(module, attr, sample_steered)
    try:
        yield draws
    finally:
        setattr(module, attr, sample)


# ----------------------------------------------------------------------------- the gallery batch
@dataclass(frozen=True)
class GalleryBatch:
    """One mixed batch assembled column by column; ``batch.lam`` is (N,), ``batch.mask`` (N, 1, H, W) or None."""

    batch: MixedBatch
    targets: Tensor  # (N,) float32, the λ target of each column
    steered: bool  # the method's draws had their partners set (no ``sample_<name>``: its own draws)
    lam_set: bool  # ... and their λ (else λ comes out of the draw: SmoothMix; the closest draws are kept)
    mixes: bool  # False for a method that leaves the batch as it is (Vanilla)

    @property
    def share(self) -> Tensor | None:
        """(N,) the mask's true share of each image (its mean), or None without a mask."""
        return None if self.batch.mask is None else self.batch.mask.mean(dim=(1, 2, 3))


def _columns(batch: MixedBatch, n: int, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    lam = batch.lam.float().expand(n) if batch.lam.dim() == 0 else batch.lam.float()  # (N,)
    mask = None if batch.mask is None else batch.mask.float().expand(n, 1, *size)  # (N, 1, H, W)
    return lam, mask


@torch.no_grad()
def gallery_batch(method: MixMethod, model: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0,
                  targets: tuple[float, ...] = TARGETS, redraws: int = REDRAWS) -> GalleryBatch:
    """Column i of ``x`` mixed with column i + 1 at target ``column_targets(n, targets)[i]``.

    Per target: draws of ``method.preview`` (``steered``) until every column is within ``TOL``, or
    ``PATIENCE`` draws in a row brought no new λ (the method has no other outcome to offer: PuzzleMix's
    block counts, SaliencyMix's fixed centre), or ``redraws`` draws; each column keeps its closest draw.
    Deterministic in ``seed`` (one generator on x's device).
    """
    n, size = x.shape[0], (x.shape[-2], x.shape[-1])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    perm, col_t = derangement(n, x.device), column_targets(n, targets)
    best = torch.full((n,), float("inf"))
    picks: list[tuple[MixedBatch, Tensor, Tensor | None] | None] = [None] * n
    was_steered, lam_set, mixes = False, False, True
    for t in targets:
        cols = (col_t == t).nonzero().flatten().tolist()
        seen, stale = set(), 0
        for _ in range(redraws):
            with steered(method, t, perm) as draws:
                b = method.preview(model, x, y, gen=gen)
            was_steered |= bool(draws)
            lam_set |= any(hasattr(d, "lam") or hasattr(d, "tau") for d in draws)  # what ``steer`` sets
            lam, mask = _columns(b, n, size)
            err = (lam.cpu() - t).abs()
            for i in cols:
                if err[i] < best[i]:
                    best[i], picks[i] = err[i], (b, lam, mask)
            mixes = not (torch.equal(b.x, x) and torch.equal(b.y_b, b.y_a))
            key = tuple(lam[cols].tolist())
            stale = 0 if key not in seen else stale + 1
            seen.add(key)
            if not mixes or all(best[i] <= TOL for i in cols) or stale >= PATIENCE:
                break
    x_mixed, y_b, lam, masks = [], [], [], []
    for i, (b, lam_b, mask_b) in enumerate(picks):  # column i from the draw it kept
        x_mixed.append(b.x[i])
        y_b.append(b.y_b[i])
        lam.append(lam_b[i])
        masks.append(None if mask_b is None else mask_b[i])
    mask = None if any(m is None for m in masks) else torch.stack(masks)  # (N, 1, H, W)
    batch = MixedBatch(torch.stack(x_mixed), y, torch.stack(y_b), torch.stack(lam), mask)
    return GalleryBatch(batch, col_t, was_steered, lam_set, mixes)


# ----------------------------------------------------------------------------- captions
def caption(name: str, method: MixMethod | None = None) -> str:
    """One line on what the method does: its registry caption, else its module docstring's first line."""
    if name == "manifoldmix":
        layers = ", ".join(getattr(method, "layers", ("input", "layer1", "layer2")))
        return (f"Mixes hidden features, λ·h + (1 − λ)·h[partner], after a layer drawn per step from "
                f"{{{layers}}}; shown: the input-layer case, the only one that is an image.")
    if name in REGISTRY and get_spec(name).caption:
        return get_spec(name).caption
    cls = get_spec(name).cls if name in REGISTRY else type(method)
    doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
    return doc[0] if doc else f"{cls.__name__} (no caption; see {cls.__module__})"


def notes(name: str, method: MixMethod) -> list[str]:
    """The legend of the label's marks and what the gallery cannot show plainly."""
    label = get_spec(name).label if name in REGISTRY else name
    out = [text for mark, text in MARKS.items() if mark in label]
    if name == "fmix" and getattr(method, "spectrum", None) == "openmixup":
        out.append("FMix default spectrum='openmixup' reproduces OpenMixup's spectrum bug: only a (W/2+1)×2 "
                   "corner of coefficients is set, so masks vary at most once across the width (fmix.py; "
                   "spectrum='paper' is the paper's).")
    if getattr(getattr(method, "mix_block", None), "lam_mul_k", 0) is None:
        out.append("Its MixBlock gets no λ on Tiny-ImageNet (the code's lam_concat=False): the mask does not follow "
                   "λ, the loss uses the drawn λ, and the mask loss keeps the batch share within 0.1 of it.")
    if getattr(method, "teacher_label", ""):
        out.append(f"Teacher: {method.teacher_label}.")
    if name == "smoothmix" and getattr(method, "label_weights", None) == "openmixup":
        out.append("label_weights='openmixup' (the code): λ = mean(G), the partner's share, so λ ≈ 1 − mask.")
    return out


def _spread_note(gb: GalleryBatch, method: MixMethod, trained: str | None) -> list[str]:
    """A learned mask (MixBlock) reports its spread; flat masks say so and why."""
    if gb.batch.mask is None:
        return []
    std = gb.batch.mask.flatten(1).std(dim=1)  # (N,) spatial spread of each column's mask
    flat, learned = bool((std < FLAT_STD).all()), hasattr(method, "mix_block")
    if not (learned or flat):
        return []
    line = f"Mask spread (spatial std per column): {std.min():.2g} to {std.max():.2g}"
    if not flat:
        return [line + "."]
    if learned and trained:
        why = (f"the MixBlock of the {trained} has not learned spatial masks yet (its convs start as N(0, 0.01)) "
               f"and gives ≈ {gb.batch.mask.mean():.2f} everywhere, a blend")
    elif learned:
        share = f"1/{method.mix_samples}" if getattr(method, "mix_samples", 2) > 2 else "0.5"
        why = (f"an untrained MixBlock (N(0, 0.01) convs) gives logits ≈ 0 and uniform attention, so m ≈ {share} "
               "everywhere: an even blend, as at training's first step")
    else:
        why = "every block took one label (a blend or one image)"
    return [f"{line}: flat, {why}."]


# ----------------------------------------------------------------------------- the figure
def denormalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, H, W) normalised -> (N, H, W, 3) float in [0, 1] for plotting."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def _wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def plot_mixed_grid(batch: MixedBatch, x: Tensor, *, mean: tuple[float, ...], std: tuple[float, ...],
                    title: str, classes: list[str] | None = None, targets: Tensor | None = None,
                    footer: list[str] | None = None) -> plt.Figure:
    """Columns = samples; rows = image, mask (white = this image), mixed image. Titles: the target (if
    given), both class names in full (wrapped), λ and the mask's true share; ``footer``: caption lines."""
    n = x.shape[0]
    lam, mask = _columns(batch, n, (x.shape[-2], x.shape[-1]))
    rows = [("image", denormalize(x, mean, std))]
    if mask is not None:
        rows.append(("mask of image\n(white = image)", mask[:, 0].cpu()))
    rows.append(("mixed", denormalize(batch.x, mean, std)))
    chars = max(12, int(WIDTH * 72 / n / (0.55 * FONT)) - 2)  # characters per title line in one column
    titles = []
    for i in range(n):
        ya, yb = int(batch.y_a[i]), int(batch.y_b[i])
        a, b = (classes[ya], classes[yb]) if classes else (str(ya), str(yb))
        line = f"λ {lam[i]:.2f}" + (f" · mask {mask[i].mean():.2f}" if mask is not None else "")
        head = [f"target {float(targets[i]):.2f}"] if targets is not None else []
        pair = [_wrap(a, chars)] + ([_wrap(f"+ {b}", chars)] if not torch.equal(batch.x[i], x[i]) else [])
        titles.append("\n".join([*head, *pair, line]))
    footer = [_wrap(t, int(WIDTH * 72 / (0.55 * (FONT + 1)))) for t in footer or []]
    title_lines = max(t.count("\n") + 1 for t in titles)
    cell = WIDTH / n
    height = len(rows) * cell * 0.95 + title_lines * FONT * 1.25 / 72 + 0.45 + sum(
        f.count("\n") + 1 for f in footer) * (FONT + 1) * 1.3 / 72
    fig, axes = plt.subplots(len(rows), n, figsize=(WIDTH, height), squeeze=False, layout="constrained")
    for r, (name, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(imgs[i].float().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[i], fontsize=FONT, loc="left")
            if i == 0:
                ax.set_ylabel(name, fontsize=FONT + 1)
    fig.suptitle(title, fontsize=FONT + 3, x=0.01, ha="left")
    if footer:
        fig.supxlabel("\n".join(footer), fontsize=FONT + 1, x=0.01, ha="left", multialignment="left")
    return fig


def gallery_figure(name: str, method: MixMethod, model: nn.Module, x: Tensor, y: Tensor, *, classes: list[str],
                   seed: int, context: str, trained: str | None = None,
                   normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> plt.Figure:
    """The gallery of one method: ``gallery_batch`` drawn by ``plot_mixed_grid`` with its caption and notes;
    ``normalisation``: the (mean, std) ``x`` is normalised with (default ImageNet's)."""
    from mixnb.data import IMAGENET_MEAN, IMAGENET_STD

    mean, std = normalisation or (IMAGENET_MEAN, IMAGENET_STD)
    gb = gallery_batch(method, model, x, y, seed=seed)
    footer = [caption(name, method), *notes(name, method), *_spread_note(gb, method, trained)]
    if not gb.mixes:
        footer.append("λ targets do not apply: this method does not mix.")
    else:
        how = ("λ and partner set in the method's own draw" if gb.lam_set else
               "partner set in the method's own draw, λ as it comes out" if gb.steered else "the method's own draws")
        footer.append(f"Columns: λ targets {' | '.join(f'{t:g}' for t in TARGETS)}, each image mixed with the next "
                      f"column's ({how}; the closest of up to {REDRAWS} draws). λ = the weight of the image's "
                      "label; mask = the image's true pixel share.")
        alpha = getattr(method, "alpha", None)
        if gb.lam_set and alpha is not None and getattr(method, "mix_samples", 2) == 2:  # AdAutoMix: normalised Betas
            shape = ("U-shaped: most draws near 0 or 1" if alpha < 1 else "uniform" if alpha == 1 else
                     "peaked at 0.5")
            footer.append(f"In training λ ~ Beta({alpha:g}, {alpha:g}), {shape}.")
    tag, model_note = _model_note(method, trained)
    if model_note:
        footer.append(model_note)
    label = get_spec(name).label if name in REGISTRY else name
    return plot_mixed_grid(gb.batch, x, mean=mean, std=std, classes=classes,
                           targets=gb.targets if gb.mixes else None, footer=footer,
                           title=f"{label} — {context}{', ' + tag if tag else ''}, seed {seed}")


def _model_note(method: MixMethod, trained: str | None) -> tuple[str, str]:
    """(title tag, footer line) on the model behind the masks; empty for methods whose preview uses none."""
    if type(method).preview is MixMethod.preview or method.name == "manifoldmix":  # its preview is input mixup
        return "", ""
    if trained:
        return "", f"Masks from the run's {trained}" + (
            " (its trained MixBlock and EMA encoder k)." if hasattr(method, "mix_block") else ".")
    if hasattr(method, "mix_block"):
        return ("untrained MixBlock", "Untrained MixBlock, with an untrained width-8 ResNet-18 as its encoder k: "
                "the masks of training's first step (a run's gallery shows its trained MixBlock).")
    if method.name == "puzzlemix":
        return ("untrained model", "Untrained width-8 ResNet-18: its saliency is nearly flat, so the λ prior and the "
                "smoothness terms shape most blocks (a run's gallery shows its trained model's saliency).")
    return "untrained model", "Untrained width-8 ResNet-18."


# ----------------------------------------------------------------------------- entry points
def run_gallery(run_dir: str | Path, *, n: int = 8, seed: int = 0) -> plt.Figure:
    """The gallery of a run's checkpoint (its model and method state: trained masks) on one val image
    of each of the first ``n`` classes."""
    from mixnb.data import DeviceLoader
    from mixnb.runs import open_run

    run = open_run(run_dir, "cpu")
    if run.setup_error is not None:  # its masks need the method's state (AttentiveMix+: its teacher)
        raise RuntimeError(f"{run_dir}: {run.cfg.method} cannot be shown: {run.setup_error}")
    cfg, data, model, method, ckpt = run.cfg, run.data, run.model, run.method, run.ckpt
    # one image from each of the first n classes that val holds, always the same ones
    idx = torch.stack([(data.y_val == c).nonzero()[0, 0] for c in data.y_val.unique()[:n]])
    mean, std = cfg.normalisation  # as the run trained
    loader = DeviceLoader(data.x_val[idx], data.y_val[idx], batch_size=len(idx), device="cpu", train=False, mean=mean,
                          std=std)
    x, y = next(iter(loader))
    model.eval()
    method.eval()
    words = [data.words.get(w, w) for w in data.wnids]
    trained = f"epoch-{ckpt['epoch']} checkpoint"
    return gallery_figure(cfg.method, method, model, x, y, classes=words, seed=seed,
                          context=f"{cfg.backbone}, {trained}, val images", trained=trained,
                          normalisation=cfg.normalisation)


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


def gallery_parts(name: str, num_classes: int, *, seed: int = 0, run_dir: Path | None = None,
                  **settings: Any) -> tuple[MixMethod, nn.Module]:
    """(method, model) of a photo gallery: the method with its protocol defaults (``settings`` replacing
    some) on an untrained width-8 ResNet-18 seeded with ``seed``; ``run_dir``: a folder in the profile's runs,
    where a method that needs another run (AttentiveMix+'s Vanilla teacher) finds it."""
    from mixnb.models import build_model
    from mixnb.runs import needed_run

    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=num_classes, width=8).eval()
    method = get_method(name, **settings)
    cfg = RunConfig(method=name, profile="test", device="cpu")
    method.setup(model, cfg=cfg, needed=needed_run(cfg, run_dir.parent if run_dir is not None else None))
    method.eval()
    return method, model


def method_gallery(name: str, x: Tensor, y: Tensor, *, classes: list[str], seed: int = 0,
                   run_dir: Path | None = None, **settings: Any) -> plt.Figure:
    """The gallery of method ``name`` on ``x``; model-based methods get an untrained narrow model
    (their masks then show the mechanism at training's first step, not a trained model's choices)."""
    method, model = gallery_parts(name, len(classes), seed=seed, run_dir=run_dir, **settings)
    return gallery_figure(name, method, model, x, y, classes=classes, seed=seed, context="photos")


def photo_galleries(run_dir: Path | None, *, seed: int = 0, n_images: int = 6,
                    methods: list[str] | str | None = None) -> list[tuple[str, plt.Figure | str]]:
    """(name, figure) for every registered method (or ``methods``) on ``n_images`` photos, or (name,
    why it was skipped): AttentiveMix+ without a teacher. ``run_dir``: a folder in the profile's runs
    (AttentiveMix+ looks for the Vanilla run beside it). The figures are closed to pyplot (no second
    copy at the end of a notebook cell): show them with ``IPython.display.display(fig)``."""
    if isinstance(methods, str):  # papermill -p passes text: "mixup,cutmix" or '["mixup", "cutmix"]'
        methods = [m.strip(" '\"") for m in methods.strip("[]").split(",") if m.strip(" '\"")]
    x, y, names = photo_batch(n_images)
    out: list[tuple[str, plt.Figure | str]] = []
    for name in methods or list(REGISTRY):
        defaults = get_spec(name).defaults
        # a multi-mode method switches between other methods per step: one gallery per mode, at its alpha
        parts = ([(f"{name}: {mode} (p {p:g})", mode, {"alpha": a}) for mode, p, a in
                  zip(defaults["mix_modes"], defaults["mix_prob"], defaults["alphas"])]
                 if "mix_modes" in defaults else [(name, name, {})])
        for title, method, settings in parts:
            try:
                fig = method_gallery(method, x, y, classes=names, seed=seed, run_dir=run_dir, **settings)
            except (OSError, RuntimeError, ValueError) as err:  # e.g. no (readable) AttentiveMix+ teacher
                out.append((title, str(err)))
                continue
            plt.close(fig)
            out.append((title, fig))
    return out
