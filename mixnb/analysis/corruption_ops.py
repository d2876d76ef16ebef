"""Corruption ops (§4): Tiny-ImageNet-C's corruptions with its 64-px constants, batched in torch
(hendrycks/robustness ``make_tinyimagenet_c.py``; §4.2), and ``corrupt``, which applies one at a severity the
way the release's images were made (floored to uint8, JPEG-coded at quality 85). Pure functions of a batch and
a generator; their cache and the evaluation on a run are ``mixnb.analysis.corruptions``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mixnb.rng import stream_seed

FROST_ENV = "MIXNB_FROST"  # a folder holding hendrycks/robustness's frost1.png ... frost5.jpg (create_c/)


# Each corruption takes (N, 3, 64, 64) uint8 on the CPU, one severity's constants and a generator, and
# returns floats in 0..255 (the reference's `np.clip(x, 0, 1) * 255`) or uint8. Written batched in torch
# from hendrycks/robustness make_tinyimagenet_c.py (8190fe3); each agrees with its reference op up to float
# rounding (tests/test_analysis.py checks the ones with a library twin). The random streams are torch's,
# so a regenerated set is not bit-identical to the release (whose NumPy RNG was unseeded anyway, §4.1).
def _f(x: Tensor) -> Tensor:
    return x.float() / 255  # (N, 3, H, W) in [0, 1]


def _out(x: Tensor) -> Tensor:
    return x.clamp(0, 1) * 255


def _pad_index(n: int, r: int, mode: str, device: torch.device) -> Tensor:
    """(n + 2r,) source indices of a padded axis: 'nearest' (edge) or 'reflect' (scipy's: d c b a | a b c d)."""
    i = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    i = i % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur2d(x: Tensor, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes (skimage.filters.gaussian with channel_axis):
    radius int(truncate sigma + 0.5), borders 'nearest' or 'reflect'; (..., H, W) float."""
    if sigma <= 0:
        return x
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * t**2 / sigma**2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    shape = x.shape
    h, w = shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = y.index_select(2, _pad_index(h, r, mode, x.device)).index_select(3, _pad_index(w, r, mode, x.device))
    y = F.conv2d(F.conv2d(y, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))
    return y.reshape(shape)


def gaussian_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    return _out(x + c * torch.randn(x.shape, generator=gen))


def shot_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    return _out(torch.poisson(_f(x) * c, generator=gen) / c)


def impulse_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    """skimage random_noise 's&p': each value flipped with probability c, to 1 or 0 with equal chance."""
    x = _f(x)
    flipped = torch.rand(x.shape, generator=gen) < c
    salted = torch.rand(x.shape, generator=gen) < 0.5
    return _out(torch.where(flipped, salted.float(), x))


def speckle_noise(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    return _out(x + x * c * torch.randn(x.shape, generator=gen))


def gaussian_blur(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    return _out(gaussian_blur2d(_f(x), c))


def glass_blur(x: Tensor, c: tuple[float, int, int], *, gen: torch.Generator) -> Tensor:
    """Blur, floor to uint8, copy a random neighbour into each interior pixel (``glass_blur_apply``), blur again."""
    _, d, iterations = c
    n, _, h, w = x.shape
    offsets = torch.randint(-d, d, (iterations, len(glass_positions(h, w, d)), n, 2), generator=gen)
    return glass_blur_apply(x, c, offsets)


def glass_positions(h: int, w: int, d: int) -> list[tuple[int, int]]:
    """The reference's swap order: rows, then columns, from 64 - d down to d + 1."""
    return [(i, j) for i in range(h - d, d, -1) for j in range(w - d, d, -1)]


def glass_blur_apply(x: Tensor, c: tuple[float, int, int], offsets: Tensor) -> Tensor:
    """Glass blur of (N, 3, H, W) uint8 with drawn ``offsets`` (iterations, positions, N, [dx, dy]) in
    [-d, d) (randint's upper bound is exclusive, so never +d). The reference's "swap"
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` pairs two NumPy views, so its second assignment reads the pixel
    the first one overwrote: it copies the neighbour into (h, w) and leaves the neighbour as it was. The
    release was made so, and so is this. The copies chain, so the positions stay a loop, batched over images."""
    sigma, d, iterations = c
    x = (gaussian_blur2d(_f(x), sigma) * 255).floor().clamp(0, 255)  # np.uint8(... * 255)
    rows = torch.arange(x.shape[0])
    pos = glass_positions(x.shape[2], x.shape[3], d)
    for it in range(iterations):
        for (i, j), off in zip(pos, offsets[it]):
            x[:, :, i, j] = x[rows, :, i + off[:, 1], j + off[:, 0]]  # (N, 3): h' = h + dy, w' = w + dx
    return _out(gaussian_blur2d(x / 255, sigma))


def _disk(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk kernel (17x17 up to radius 8), made with OpenCV as there."""
    import cv2

    size, ksize = (8, (3, 3)) if radius <= 8 else (int(radius), (5, 5))
    t = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    return torch.from_numpy(cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur))


def defocus_blur(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    k = _disk(*c)
    r = k.shape[-1] // 2
    x = _f(x)
    y = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (r, r, r, r), mode="reflect")  # cv2.filter2D: BORDER_REFLECT_101
    return _out(F.conv2d(y, k[None, None]).reshape(x.shape))


def _clipped_zoom(x: Tensor, z: float) -> Tensor:
    """The reference's clipped_zoom: the centre ceil(h / z) crop, scipy zoom order 1 (= bilinear with
    align_corners, size round(ch z)), trimmed back to h."""
    h = x.shape[-1]
    ch = math.ceil(h / z)
    top = (h - ch) // 2
    out = round(ch * z)
    y = F.interpolate(x[..., top:top + ch, top:top + ch], size=(out, out), mode="bilinear", align_corners=True)
    trim = (out - h) // 2
    return y[..., trim:trim + h, trim:trim + h]


def zoom_blur(x: Tensor, c: np.ndarray, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    out = sum(_clipped_zoom(x, float(z)) for z in c)
    return _out((x + out) / (len(c) + 1))


def plasma_fractal(n: int, *, mapsize: int = 64, wibbledecay: float = 3, gen: torch.Generator) -> Tensor:
    """(N, mapsize, mapsize) float64 in [0, 1]: the reference's diamond-square height maps, one per image."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a: Tensor) -> Tensor:
        return a / 4 + wibble * (torch.rand(a.shape, generator=gen, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbled_mean(square)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled_mean(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def fog(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    plasma = plasma_fractal(len(x), mapsize=64, wibbledecay=c[1], gen=gen)[:, None, :x.shape[-2], :x.shape[-1]]
    return _out((x + c[0] * plasma.float()) * max_val / (max_val + c[0]))


def frost(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    """c0 x + c1 frost, the frost a random 64x64 crop of one of 5 pictures (randint(5): frost6 never used)
    scaled x0.3 (cv2.resize, bilinear); the pictures come from ``$MIXNB_FROST``."""
    pics = _frost_pictures()
    n, _, h, w = x.shape
    pick = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty(n, h, w, 3)
    for i, pic in enumerate(pics):
        rows = (pick == i).nonzero().flatten()
        top = torch.randint(0, pic.shape[0] - h, (len(rows),), generator=gen)
        left = torch.randint(0, pic.shape[1] - w, (len(rows),), generator=gen)
        r = top[:, None, None] + torch.arange(h)[None, :, None]  # (n_i, h, 1)
        s = left[:, None, None] + torch.arange(w)[None, None, :]  # (n_i, 1, w)
        out[rows] = pic[r, s]
    return (c[0] * x.float() + c[1] * out.permute(0, 3, 1, 2)).clamp(0, 255)


def frost_files() -> list[Path] | None:
    """The reference's five frost pictures from ``$MIXNB_FROST``, or None when not given (frost is then skipped)."""
    folder = os.environ.get(FROST_ENV)
    if not folder:
        return None
    files = [Path(folder) / f for f in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{FROST_ENV}={folder} lacks {', '.join(missing)} (hendrycks/robustness "
                                f"ImageNet-C/create_c/ holds them)")
    return files


def _frost_pictures() -> list[Tensor]:
    """The 5 frost pictures, x0.3 as the reference resizes them, RGB float (h, w, 3)."""
    import cv2

    files = frost_files()
    if files is None:
        raise FileNotFoundError(f"frost needs its pictures: set {FROST_ENV}")
    pics = []
    for f in files:
        bgr = cv2.imread(str(f))
        if bgr is None:
            raise OSError(f"{f} cannot be read as an image")
        pics.append(torch.from_numpy(cv2.resize(bgr, (0, 0), fx=0.3, fy=0.3)[..., ::-1].copy()).float())
    return pics


def rgb_to_hsv(x: Tensor) -> Tensor:
    """skimage.color.rgb2hsv over dim 1 of (N, 3, H, W) in [0, 1] (hue in [0, 1); later max channels win)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2 + (b - r) / safe, h)
    h = torch.where(b == v, 4 + (r - g) / safe, h)
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6) % 1)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """skimage.color.hsv2rgb over dim 1 of (N, 3, H, W)."""
    h, s, v = x.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long() % 6
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table.gather(0, hi[None, :, None].expand(1, -1, 3, *hi.shape[1:]))[0]


def brightness(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(_f(x))
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return _out(hsv_to_rgb(hsv))


def saturate(x: Tensor, c: tuple[float, float], *, gen: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(_f(x))
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return _out(hsv_to_rgb(hsv))


def contrast(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    x = _f(x)
    mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as np.mean(x, axis=(0, 1))
    return _out((x - mean) * c + mean)


def jpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """(N, 3, H, W) uint8 through Pillow's JPEG codec at ``quality`` (4:2:0), as ImageNet-C saves its images."""
    out = []
    for im in x.permute(0, 2, 3, 1).cpu().numpy():
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(x.device)


def jpeg_compression(x: Tensor, c: int, *, gen: torch.Generator) -> Tensor:
    return jpeg_round_trip(x, c)


def _box_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) float64 weights of Pillow's BOX resampling along one axis (Resample.c precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            a[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        a[o] /= a[o].sum()
    return a


def pil_box_resize(x: Tensor, size: int) -> Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8 as Pillow's resize(BOX): the horizontal pass, rounded
    to uint8, then the vertical one (Pillow rounds its 22-bit fixed-point sums; here float64, within 1 level)."""
    aw = _box_matrix(x.shape[-1], size)
    ah = _box_matrix(x.shape[-2], size)
    y = torch.floor(x.double() @ aw.T + 0.5).clamp(0, 255)
    return torch.floor(ah @ y + 0.5).clamp(0, 255).to(torch.uint8)


def pixelate(x: Tensor, c: float, *, gen: torch.Generator) -> Tensor:
    h = x.shape[-1]
    return pil_box_resize(pil_box_resize(x, int(h * c)), h)


def elastic_transform(x: Tensor, c: tuple[float, float, float], *, gen: torch.Generator) -> Tensor:
    """A random affine, then a smoothed random displacement field (``elastic_apply``)."""
    n, _, h, w = x.shape
    shift = torch.rand(n, 3, 2, generator=gen, dtype=torch.float64) * 2 - 1  # the 3 points' moves / c2
    noise = torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64) * 2 - 1  # dx, dy fields before smoothing
    return elastic_apply(x, c, shift, noise)


def elastic_apply(x: Tensor, c: tuple[float, float, float], shift: Tensor, noise: Tensor) -> Tensor:
    """Elastic transform of (N, 3, H, W) uint8 with drawn ``shift`` (N, 3, 2) and ``noise`` (N, 2, H, W), both
    U(-1, 1): the 3 points (53, 53), (53, 11), (11, 11) moved by c2 shift (cv2.getAffineTransform), the image
    warped (cv2.warpAffine bilinear, BORDER_REFLECT_101 = grid_sample 'reflection' with align_corners), then
    displaced by the noise smoothed by a Gaussian of sigma c1 (scipy 'reflect', truncate 3) times c0 and
    sampled bilinearly with scipy's 'reflect' border (= grid_sample 'reflection' without align_corners)."""
    alpha, sigma, move = c
    x = _f(x)
    n, _, h, w = x.shape
    centre, side = torch.tensor([h // 2, w // 2], dtype=torch.float64), min(h, w) // 3
    pts1 = torch.stack([centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side])  # (3, 2) x, y
    pts2 = pts1 + shift * move  # (N, 3, 2)
    src = torch.cat([pts1, torch.ones(3, 1, dtype=torch.float64)], 1)  # (3, 3)
    m = torch.linalg.solve(src, pts2).transpose(1, 2)  # (N, 2, 3): pts2 = M [pts1; 1]
    full = torch.cat([m, torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(n, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2]  # (N, 2, 3): output pixel -> source pixel (warpAffine inverts M)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pix = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, h * w, 3)  # (1, HW, 3)
    srcxy = (pix @ inv.transpose(1, 2)).view(n, h, w, 2)  # (N, H, W, [x, y]) in pixels
    grid = torch.stack([srcxy[..., 0] / (w - 1), srcxy[..., 1] / (h - 1)], -1) * 2 - 1  # align_corners=True
    x = F.grid_sample(x, grid.float(), mode="bilinear", padding_mode="reflection", align_corners=True)
    dx, dy = (gaussian_blur2d(noise, sigma, mode="reflect", truncate=3) * alpha).float().unbind(1)
    gx = (2 * (xx.float() + dx) + 1) / w - 1  # pixel -> [-1, 1], align_corners=False
    gy = (2 * (yy.float() + dy) + 1) / h - 1
    return _out(F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="reflection",
                              align_corners=False))


def spatter(x: Tensor, c: tuple[float, ...], *, gen: torch.Generator) -> Tensor:
    """Water (c5 = 0: a pale-turquoise liquid layer shaped by Canny edges and a distance transform, OpenCV
    per image: its edge and histogram ops have no batched form; generation only) or mud (c5 = 1: batched)."""
    import cv2

    x = _f(x)
    n, _, h, w = x.shape
    liquid = torch.randn(n, h, w, generator=gen, dtype=torch.float64) * c[1] + c[0]
    liquid = gaussian_blur2d(liquid, c[2])
    liquid = torch.where(liquid < c[3], torch.zeros_like(liquid), liquid)
    if c[5] == 0:
        lq = (torch.floor(liquid * 255).long() & 255).to(torch.uint8).numpy()  # numpy's float -> uint8 cast wraps
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
        m = np.empty((n, h, w), np.float32)
        for i in range(n):
            dist = 255 - cv2.Canny(lq[i], 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
            dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
            m[i] = lq[i] * dist
        mt = torch.from_numpy(m)
        mt = mt / mt.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12) * c[4]
        colour = torch.tensor([175, 238, 238]).view(1, 3, 1, 1) / 255
        return _out(x + mt[:, None] * colour)
    mud = gaussian_blur2d((liquid > c[3]).float(), c[4])
    mud = torch.where(mud < 0.8, torch.zeros_like(mud), mud)[:, None]
    colour = torch.tensor([63, 42, 20]).view(1, 3, 1, 1) / 255
    return _out(x * (1 - mud) + colour * mud)


_ZOOMS = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.01),
          np.arange(1, 1.26, 0.01)]  # the script's aranges: float steps give 1.00..1.06 (7 zooms) at severity 1
_IMAGEMAGICK = ("needs ImageMagick's MagickMotionBlurImage (the reference calls it through Wand), a system "
                "library no Python registry package installs; not re-implemented, so as not to report another "
                "blur under its name")
# name -> (function, per-severity constants s1..s5 (§4.2), common (True) or extra, why it cannot be made or None)
CORRUPTIONS: dict[str, tuple[Callable[..., Tensor] | None, list[Any], bool, str | None]] = {
    "gaussian_noise": (gaussian_noise, [0.04, 0.08, 0.12, 0.15, 0.18], True, None),
    "shot_noise": (shot_noise, [250, 100, 50, 30, 15], True, None),
    "impulse_noise": (impulse_noise, [0.01, 0.02, 0.05, 0.08, 0.14], True, None),
    "defocus_blur": (defocus_blur, [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)], True, None),
    "glass_blur": (glass_blur, [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)], True, None),
    "motion_blur": (None, [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)], True, _IMAGEMAGICK),
    "zoom_blur": (zoom_blur, _ZOOMS, True, None),
    "snow": (None, [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)], True, _IMAGEMAGICK),
    "frost": (frost, [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)], True, None),
    "fog": (fog, [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)], True, None),
    "brightness": (brightness, [0.1, 0.2, 0.3, 0.4, 0.5], True, None),
    "contrast": (contrast, [0.4, 0.3, 0.2, 0.1, 0.05], True, None),
    "elastic_transform": (elastic_transform, [(64 * a, 64 * b, 64 * c) for a, b, c in
                                              ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                                               (0.16, 0.03, 0.02))], True, None),
    "pixelate": (pixelate, [0.9, 0.8, 0.7, 0.6, 0.5], True, None),
    "jpeg_compression": (jpeg_compression, [65, 58, 50, 40, 25], True, None),
    "speckle_noise": (speckle_noise, [0.15, 0.2, 0.25, 0.3, 0.35], False, None),
    "gaussian_blur": (gaussian_blur, [0.5, 0.75, 1, 1.25, 1.5], False, None),
    "spatter": (spatter, [(0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0), (0.65, 0.3, 1, 0.69, 0.6, 0),
                          (0.65, 0.1, 0.7, 0.68, 0.6, 1), (0.65, 0.1, 0.5, 0.67, 0.6, 1)], False, None),
    "saturate": (saturate, [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)], False, None),
}
SAVE_QUALITY = 85  # every Tiny-ImageNet-C image is a JPEG of quality 85 (§4.1)
GEN_CHUNK = 500  # images per generation call: bounds the glass-blur offsets (P x N x 2 int64) to ~60 MB
CORRUPTION_CACHE_VERSION = 1  # bump when a corruption's code changes


def skip_reason(name: str) -> str | None:
    """Why ``name`` cannot be generated here, or None."""
    why = CORRUPTIONS[name][3]
    if why is None and name == "frost" and frost_files() is None:
        why = (f"needs the reference's frost pictures (frost1.png ... frost5.jpg, hendrycks/robustness "
               f"ImageNet-C/create_c/); the one registry package shipping them (imagecorruptions) requires "
               f"opencv-python, which clashes with opencv-contrib-python-headless here; set {FROST_ENV} to their folder")
    return why


def corrupt(x: Tensor, name: str, severity: int, *, seed: int = 0) -> Tensor:
    """(N, 3, H, W) uint8 -> uint8: corruption ``name`` at ``severity`` (1..5) with the 64-px constants, floored
    to uint8 and JPEG-coded at quality 85 as Tiny-ImageNet-C's images are; seeded per (seed, name, severity)."""
    fn, constants, _, why = CORRUPTIONS[name]
    why = skip_reason(name)
    if why is not None or fn is None:
        raise ValueError(f"{name} cannot be generated: {why}")
    gen = torch.Generator().manual_seed(stream_seed(seed, "corrupt", name, severity))
    out = []
    for i in range(0, len(x), GEN_CHUNK):
        y = fn(x[i:i + GEN_CHUNK].cpu(), constants[severity - 1], gen=gen)
        if y.dtype != torch.uint8:
            y = y.clamp(0, 255).floor().to(torch.uint8)  # the reference saves np.uint8(img): truncation
        out.append(jpeg_round_trip(y, SAVE_QUALITY))
    return torch.cat(out)
