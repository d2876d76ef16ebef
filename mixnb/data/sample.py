"""Generate a small synthetic dataset in the `tiny-imagenet-200` folder layout.

Each class is one (shape, colour, texture) combination, e.g. "red striped circle". The object
(20-45 px, off-centre, slightly rotated) sits on a cluttered low-contrast background with a few
small distractor shapes whose shape and colour are random, so the object is the salient part and
box- or saliency-based mixing has something to find. Colours and shapes are each shared by
several classes, so neither mean colour nor outline alone gives the label.

The images are drawn batch-wise with coordinate grids and masks from one seeded
`torch.Generator`; the same seed gives byte-identical files (same library versions). The boxes in
`val_annotations.txt` and `<wnid>_boxes.txt` are the true ones: the bounding box of each object's
mask, in inclusive pixels (distractors are not boxed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from PIL import Image

from mixnb.data.base import DatasetError
from mixnb.data.tinyimagenet import IMAGE_SIZE
from mixnb.io import file_lock, remove_stale_temps, temp_path

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond")
COLOURS = {  # name -> RGB in 0..1; the first ones are the most distinct hues
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.68, 0.20),
    "blue": (0.15, 0.28, 0.88),
    "yellow": (0.92, 0.84, 0.12),
    "purple": (0.58, 0.20, 0.78),
    "cyan": (0.10, 0.78, 0.82),
    "orange": (0.96, 0.52, 0.08),
    "white": (0.95, 0.95, 0.95),
}
TEXTURES = ("solid", "striped", "checkered", "dotted")
WNID_BASE = 90_000_000  # fake wnids n90000000, n90000001, ... never clash with real ones
MARKER = ".complete"
FORMAT = "mixnb-sample-v1"  # bump when the drawing changes
JPEG_QUALITY = 90


def class_specs(num_classes: int) -> list[tuple[int, int, int]]:
    """(shape, colour, texture) indices per class; every shape and colour is used by >= 2 classes.

    Uses about num_classes/2 shapes and colours, paired on a diagonal so shape and colour vary
    independently: class k has shape a = k % S, colour (a + b) % C and texture (a + 2b + t) % 4,
    with b = (k // S) % C and t = k // (S * C). The map is one-to-one, so classes are distinct.
    """
    n_shapes = min(len(SHAPES), max(2, num_classes // 2))
    n_colours = min(len(COLOURS), max(2, num_classes // 2))
    if not 1 <= num_classes <= n_shapes * n_colours * len(TEXTURES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES) * len(COLOURS) * len(TEXTURES)}], got {num_classes}")
    specs = []
    for k in range(num_classes):
        a, b, t = k % n_shapes, (k // n_shapes) % n_colours, k // (n_shapes * n_colours)
        specs.append((a, (a + b) % n_colours, (a + 2 * b + t) % len(TEXTURES)))
    return specs


def class_name(spec: tuple[int, int, int]) -> str:
    """Human-readable name, e.g. "red striped circle"."""
    shape, colour, texture = spec
    return f"{list(COLOURS)[colour]} {TEXTURES[texture]} {SHAPES[shape]}"


# ---------------------------------------------------------------------------------------------
# Drawing (batched over images; loops only over the fixed number of clutter elements)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)  # (n,) float32


def _shape_mask(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mask of shape `kind` (B,) in object coordinates u, v (B, H, W) scaled so the radius is 1."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    masks = torch.stack(
        [
            r <= 1.0,  # circle
            torch.maximum(u.abs(), v.abs()) <= 0.82,  # square
            (v <= 0.75) & (u.abs() <= 0.62 * (v + 1.0)),  # triangle, apex up
            ((u.abs() <= 0.3) | (v.abs() <= 0.3)) & (torch.maximum(u.abs(), v.abs()) <= 0.95),  # cross
            (r <= 1.0) & (r >= 0.55),  # ring
            r <= 0.5 + 0.5 * ((torch.cos(5 * (theta + math.pi / 2)) + 1) / 2) ** 1.5,  # star, tip up
            u.abs() + v.abs() <= 1.05,  # diamond
        ],
        dim=1,
    )  # (B, len(SHAPES), H, W) bool
    return masks[torch.arange(len(kind)), kind]  # (B, H, W) bool


def _object_coords(
    n: int, size: torch.Tensor, angle: torch.Tensor, gen: torch.Generator, grid: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated coordinates (B, H, W) of an object of diameter `size` (B,) placed at random inside the image."""
    yy, xx = grid  # (H, W) pixel centres
    r = size / 2
    cx = r + (IMAGE_SIZE - 2 * r) * torch.rand(n, generator=gen)  # (B,) keeps the object inside
    cy = r + (IMAGE_SIZE - 2 * r) * torch.rand(n, generator=gen)
    dx = xx - cx[:, None, None]  # (B, H, W)
    dy = yy - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    r = r[:, None, None]
    return (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r


def _texture(kind: torch.Tensor, gen: torch.Generator, grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Dark-pattern mask (B, H, W) bool for textures `kind` (B,): solid, stripes, checker, dots."""
    n = len(kind)
    yy, xx = grid
    phi = _uniform(n, 0, math.pi, gen)[:, None, None]
    period = _uniform(n, 5.0, 8.0, gen)[:, None, None]
    s = xx * torch.cos(phi) + yy * torch.sin(phi)  # (B, H, W) rotated pattern coordinates
    t = -xx * torch.sin(phi) + yy * torch.cos(phi)
    stripes = torch.remainder(s / period, 1.0) < 0.45
    checker = (torch.floor(s / (0.6 * period)) + torch.floor(t / (0.6 * period))).remainder(2) == 1
    ds, dt = torch.remainder(s / period, 1.0) - 0.5, torch.remainder(t / period, 1.0) - 0.5
    dots = ds * ds + dt * dt < 0.09
    masks = torch.stack([torch.zeros_like(stripes), stripes, checker, dots], dim=1)  # (B, 4, H, W)
    return masks[torch.arange(n), kind]


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> None:
    """Blend `colour` (B, 3) into `img` (B, 3, H, W) where `mask` (B, H, W), in place."""
    a = mask[:, None].float() * (alpha if isinstance(alpha, float) else alpha[:, None, None, None])
    img.mul_(1 - a).add_(a * colour[:, :, None, None])


def render(
    labels: torch.Tensor, specs: list[tuple[int, int, int]], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one image per label.

    Returns:
        x: (B, 64, 64, 3) uint8 images.
        box: (B, 4) int64 object boxes (x0, y0, x1, y1), inclusive pixel coordinates.
    """
    n, hw = len(labels), IMAGE_SIZE
    spec = torch.tensor(specs, dtype=torch.int64)[labels]  # (B, 3) shape, colour, texture
    palette = torch.tensor(list(COLOURS.values()))  # (C, 3)
    ax = torch.arange(hw, dtype=torch.float32) + 0.5
    grid = torch.meshgrid(ax, ax, indexing="ij")  # yy, xx: (H, W) pixel centres

    # Background: a muted colour, soft blobs and thin lines of random colours, then noise.
    img = (0.25 + 0.5 * torch.rand(n, 3, generator=gen))[:, :, None, None].repeat(1, 1, hw, hw)  # (B, 3, H, W)
    for _ in range(5):
        cx, cy = (_uniform(n, 0, hw, gen)[:, None, None] for _ in range(2))
        sigma = _uniform(n, 4, 16, gen)[:, None, None]
        blob = torch.exp(-((grid[1] - cx) ** 2 + (grid[0] - cy) ** 2) / (2 * sigma**2))  # (B, H, W)
        img += 0.3 * (torch.rand(n, 3, generator=gen) - 0.5)[:, :, None, None] * blob[:, None]
    for _ in range(3):
        phi = _uniform(n, 0, math.pi, gen)[:, None, None]
        offset = _uniform(n, -hw / 2, hw / 2, gen)[:, None, None]
        dist = ((grid[1] - hw / 2) * torch.cos(phi) + (grid[0] - hw / 2) * torch.sin(phi) - offset).abs()
        _paint(img, dist < _uniform(n, 0.5, 1.5, gen)[:, None, None], torch.rand(n, 3, generator=gen), 0.25)

    # Distractors: small shapes of random kind and palette colour; they carry no label information.
    for _ in range(3):
        kind = torch.randint(len(SHAPES), (n,), generator=gen)
        u, v = _object_coords(n, _uniform(n, 5, 11, gen), _uniform(n, -math.pi, math.pi, gen), gen, grid)
        colour = palette[torch.randint(len(palette), (n,), generator=gen)]
        _paint(img, _shape_mask(kind, u, v), colour, _uniform(n, 0.5, 0.9, gen))

    # The object: class shape, class colour (jittered) with the class texture in a darker shade.
    u, v = _object_coords(n, _uniform(n, 20, 45, gen), _uniform(n, -math.pi / 9, math.pi / 9, gen), gen, grid)
    mask = _shape_mask(spec[:, 0], u, v)  # (B, H, W) bool
    colour = palette[spec[:, 1]] * _uniform(n, 0.85, 1.1, gen)[:, None] + 0.05 * (torch.rand(n, 3, generator=gen) - 0.5)
    colour = colour.clamp(0, 1)  # (B, 3)
    _paint(img, mask, colour)
    _paint(img, mask & _texture(spec[:, 2], gen, grid), 0.3 * colour)

    img += 0.03 * torch.randn(img.shape, generator=gen)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3) uint8
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (B, H), (B, W) bool
    box = torch.stack([_first(cols), _first(rows), hw - 1 - _first(cols.flip(1)), hw - 1 - _first(rows.flip(1))], 1)
    return x, box


def _first(m: torch.Tensor) -> torch.Tensor:
    """Index of the first True along dim 1 of (B, L) bool."""
    return m.int().argmax(dim=1)


def _render_chunked(
    labels: torch.Tensor, specs: list[tuple[int, int, int]], gen: torch.Generator, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """`render` in chunks, to bound the memory of the (B, H, W) float temporaries."""
    parts = [render(labels[s : s + chunk], specs, gen) for s in range(0, len(labels), chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ---------------------------------------------------------------------------------------------
# Folder writer


def _write_jpeg(path: Path, x: torch.Tensor) -> None:
    Image.fromarray(x.numpy()).save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_folder(out: Path, params: dict, gen: torch.Generator) -> None:
    """Write the complete dataset under `out` (an empty folder)."""
    specs = class_specs(params["num_classes"])
    wnids = [f"n{WNID_BASE + k}" for k in range(len(specs))]
    n_train, n_val = params["train_per_class"], params["val_per_class"]
    y_train = torch.arange(len(specs)).repeat_interleave(n_train)  # (C * n_train,) class-major
    y_val = torch.arange(len(specs)).repeat_interleave(n_val)[torch.randperm(len(specs) * n_val, generator=gen)]
    x_train, box_train = _render_chunked(y_train, specs, gen)  # (C * n_train, 64, 64, 3) uint8, (C * n_train, 4)
    x_val, box_val = _render_chunked(y_val, specs, gen)

    (out / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    # Like the real words.txt, cover more wnids than wnids.txt lists.
    extra = [f"n{WNID_BASE + k}\tunused class {k}" for k in range(len(specs), len(specs) + 5)]
    words = [f"{w}\t{class_name(s)}" for w, s in zip(wnids, specs)] + extra
    (out / "words.txt").write_text("".join(f"{line}\n" for line in words))
    for k, wnid in enumerate(wnids):
        images = out / "train" / wnid / "images"
        images.mkdir(parents=True)
        lines = []
        for i in range(n_train):
            j = k * n_train + i
            _write_jpeg(images / f"{wnid}_{i}.JPEG", x_train[j])
            lines.append(f"{wnid}_{i}.JPEG\t" + "\t".join(map(str, box_train[j].tolist())))
        (out / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    (out / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(len(y_val)):
        _write_jpeg(out / "val" / "images" / f"val_{i}.JPEG", x_val[i])
        lines.append(f"val_{i}.JPEG\t{wnids[y_val[i]]}\t" + "\t".join(map(str, box_val[i].tolist())))
    (out / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (out / MARKER).write_text(json.dumps(params, sort_keys=True))


def _is_complete(root: Path, params: dict) -> bool:
    marker = root / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == params


def make_sample_dataset(
    root: str | Path, *, seed: int = 0, num_classes: int = 10, train_per_class: int = 200, val_per_class: int = 50
) -> Path:
    """Write (or reuse) a synthetic dataset at `root` in the `tiny-imagenet-200` layout.

    Args:
        root: the dataset folder to create; reused as is if it holds a sample with the same parameters.
        seed: seeds the one `torch.Generator` behind every draw.
        num_classes: number of (shape, colour, texture) classes.
        train_per_class: train images per class.
        val_per_class: val images per class.

    Returns:
        The dataset folder, ready for `load_tiny_imagenet`.
    """
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"train_per_class and val_per_class must be >= 1, got {train_per_class}, {val_per_class}")
    class_specs(num_classes)  # validates num_classes
    root = Path(root).expanduser().resolve()
    params = dict(
        format=FORMAT, seed=seed, num_classes=num_classes, train_per_class=train_per_class, val_per_class=val_per_class
    )
    remove_stale_temps(root)  # folders of writers that were killed
    if _is_complete(root, params):
        return root
    if root.exists() and not (root / MARKER).is_file():
        raise DatasetError(f"{root} exists but is not a generated sample dataset; remove it or choose another folder.")

    root.parent.mkdir(parents=True, exist_ok=True)
    # One writer at a time (parallel test workers, sweep jobs): a second writer of the same sample must not swap out
    # the folder the first one's readers are decoding.
    with file_lock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, params):  # written while we waited
            return root
        tmp = temp_path(root, folder=True)
        try:
            _write_folder(tmp, params, torch.Generator().manual_seed(seed))
            if root.exists():  # an older sample with other parameters: swap it out
                old = temp_path(root, folder=True)
                os.replace(root, old / root.name)
                shutil.rmtree(old)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
