"""Batched, device-side augmentation and the `DeviceLoader` that feeds the trainer.

Protocol: docs/protocol.md §1.4. Train = RandomResizedCrop(64, scale (0.08, 1), ratio (3/4, 4/3)),
bicubic or bilinear (``RunConfig.crop_interpolation``: OpenMixup's Tiny configs were bilinear until
``ce8974d``, 2022-03-19, bicubic since; docs/publication.md), then a horizontal flip with p = 0.5, then
normalisation with the ImageNet mean/std; test = normalisation only. The CIFAR-100 profile's pipeline
(``mixnb.profiles.PIPELINES``, docs/protocol.md §8.2) swaps the crop for RandomCrop(32, padding=4, reflect),
a gather on the uint8 batch (`padded_crop`). The whole uint8 set sits on the
device (docs/performance.md §2.3), every random draw comes from an explicit `torch.Generator`, and nothing
syncs with the host while iterating.

`resized_crop` resamples with PIL's separable bicubic (a = -0.5) or bilinear (triangle) kernel,
widened when down-sampling (PIL's antialiasing), taps renormalised at the crop border, uint8
rounding between passes, written as two batched matmuls with per-sample (64 x 64) weight matrices.
`F.grid_sample` would use the a = -0.75 kernel and sample across the crop border. On CUDA with TF32 matmuls enabled, the weights lose precision (~0.15 of a level
before rounding), so an occasional pixel differs by 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# RandomResizedCrop: draw the boxes, then apply them


def sample_crop_boxes(
    n: int,
    h: int,
    w: int,
    *,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's `RandomResizedCrop.get_params`, vectorised over n images of size h x w.

    Each sample keeps its first of `attempts` (area, log-ratio) draws whose rounded box fits; samples
    with none take the central crop with the ratio clamped to `ratio`, as torchvision does.

    Returns:
        (n, 4) int64 boxes (top, left, height, width) on `gen.device`.
    """
    dev = gen.device
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=gen, device=dev))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, attempts, generator=gen, device=dev))
    bw = torch.sqrt(area * aspect).round()  # (n, attempts) float32; round half to even, like Python's round
    bh = torch.sqrt(area / aspect).round()
    fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)  # (n, attempts) bool
    first = fits.int().argmax(dim=1, keepdim=True)  # (n, 1) first fitting attempt (0 when none fits)
    found = fits.any(dim=1)  # (n,) bool

    # Fallback: the central crop, with the image ratio clamped into `ratio` (scalars: same for every sample).
    if w / h < min(ratio):
        fw, fh = w, int(round(w / min(ratio)))
    elif w / h > max(ratio):
        fw, fh = int(round(h * max(ratio))), h
    else:
        fw, fh = w, h
    bw = torch.where(found, bw.gather(1, first)[:, 0], fw).long()  # (n,) int64
    bh = torch.where(found, bh.gather(1, first)[:, 0], fh).long()
    u = torch.rand(n, 2, generator=gen, device=dev)  # offsets: uniform integers in [0, h - bh] and [0, w - bw]
    top = torch.minimum((u[:, 0] * (h - bh + 1)).long(), h - bh)  # minimum guards float rounding up to the bound
    left = torch.minimum((u[:, 1] * (w - bw + 1)).long(), w - bw)
    top = torch.where(found, top, (h - fh) // 2)
    left = torch.where(found, left, (w - fw) // 2)
    return torch.stack([top, left, bh, bw], dim=1)


def _cubic(d: torch.Tensor) -> torch.Tensor:
    """Keys bicubic kernel with a = -0.5 (PIL's and torchvision antialias's choice)."""
    a, d = -0.5, d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = (((d - 5) * d + 8) * d - 4) * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _triangle(d: torch.Tensor) -> torch.Tensor:
    """Bilinear (triangle) kernel, support 1: PIL's BILINEAR filter."""
    return (1 - d.abs()).clamp_min(0)


KERNELS = {"bicubic": _cubic, "bilinear": _triangle}  # PIL's filters; torchvision's default is bilinear


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    """PIL's uint8 rounding. Bilinear weights (1/4, 3/4, ...) land on .5 often: half-to-even missed PIL on 2.4% of
    pixels (random images, 300 crops), half-up matches it exactly. Bicubic keeps torch's half-to-even, which its
    runs were made with (mean |diff| to PIL 0.0002; half-up would give 0.00003)."""
    return x.add_(0.5).floor_()


ROUNDING = {"bicubic": torch.Tensor.round_, "bilinear": _round_half_up}


def _resample_matrix(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """(N, out_size, in_size) weights mapping a source axis to `out_size` samples of [start, start + length)."""
    scale = (length.float() / out_size)[:, None, None]  # (N, 1, 1) source pixels per output pixel
    centre = start[:, None, None] + scale * (torch.arange(out_size, device=start.device)[None, :, None] + 0.5)
    src = torch.arange(in_size, device=start.device)[None, None, :]  # (1, 1, in) source pixel index
    weight = KERNELS[interpolation]((src + 0.5 - centre) / scale.clamp(min=1))  # widens only when down-sampling
    inside = (src >= start[:, None, None]) & (src < (start + length)[:, None, None])
    weight = weight * inside  # taps outside the box are dropped and the rest renormalised, as PIL does
    return weight / weight.sum(dim=2, keepdim=True)  # (N, out, in) float32


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int = 64, interpolation: str = "bicubic") -> torch.Tensor:
    """Crop each image to its box (top, left, height, width) and resize it to size x size.

    Matches PIL's `img.crop(box).resize((size, size), BICUBIC or BILINEAR)` (the reference pipeline): horizontal
    pass, then vertical, each clamped to [0, 255] and rounded as PIL's uint8 intermediate is. Measured
    over 600 crops: bicubic mean |diff| 0.0002, max 2 in 0..255 units against PIL, mean 0.008, max 2 against
    torchvision's uint8 `resized_crop(..., antialias=True)` (tests/test_data.py); bilinear equals PIL
    (tests/test_reference.py).

    Args:
        x: (N, C, H, W) uint8, or float holding 0..255 values.
        boxes: (N, 4) int64 boxes inside the image, e.g. from `sample_crop_boxes`.
        size: output side in pixels.
        interpolation: "bicubic" or "bilinear" (`KERNELS`).

    Returns:
        (N, C, size, size) float32 holding integers in [0, 255].
    """
    if interpolation not in KERNELS:
        raise ValueError(f"interpolation must be one of {', '.join(KERNELS)}, got {interpolation!r}")
    _, _, h, w = x.shape
    rows = _resample_matrix(boxes[:, 0], boxes[:, 2], h, size, interpolation)  # (N, size, H)
    cols = _resample_matrix(boxes[:, 1], boxes[:, 3], w, size, interpolation)  # (N, size, W)
    with torch.autocast(x.device.type, enabled=False):  # bf16 matmuls would be off by whole levels
        rnd = ROUNDING[interpolation]
        x = rnd((x.float() @ cols.transpose(1, 2)[:, None]).clamp_(0, 255))  # (N, C, H, size) float32
        return rnd((rows[:, None] @ x).clamp_(0, 255))  # (N, C, size, size) float32


def batch_random_resized_crop(
    x: torch.Tensor,
    size: int = 64,
    *,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """RandomResizedCrop(size, interpolation) per image: (N, C, H, W) uint8/float -> (N, C, size, size) float32."""
    boxes = sample_crop_boxes(x.shape[0], x.shape[2], x.shape[3], gen=gen, scale=scale, ratio=ratio)
    return resized_crop(x, boxes, size, interpolation)


# ---------------------------------------------------------------------------------------------
# RandomCrop with padding (the CIFAR pipeline): draw the offsets, then gather


PAD_MODES = ("reflect", "constant")  # torchvision's padding_mode names: mirror without the edge | zeros


def sample_crop_offsets(n: int, padding: int, *, gen: torch.Generator) -> torch.Tensor:
    """torchvision's `RandomCrop.get_params` on an image padded by `padding` on each side and cropped back to its
    size: (n, 2) int64 (top, left), each uniform in [0, 2 * padding], on `gen.device`."""
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=gen, device=gen.device)


def _padded_index(offset: torch.Tensor, size: int, out: int, padding: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, out) source indices of the padded image's rows (or columns) offset .. offset + out, and (N, out) bool
    whether each is inside the image (False: a zero under "constant")."""
    src = offset[:, None] + torch.arange(out, device=offset.device)[None, :] - padding  # (N, out) in the source frame
    inside = (src >= 0) & (src < size)
    if mode == "reflect":  # -1 -> 1, size -> size - 2: the mirror leaves the edge pixel out, as numpy's "reflect"
        src = torch.where(src < 0, -src, torch.where(src >= size, 2 * (size - 1) - src, src))
    return src.clamp(0, size - 1), inside


def padded_crop(x: torch.Tensor, offsets: torch.Tensor, size: int, padding: int = 4,
                mode: str = "reflect") -> torch.Tensor:
    """Pad each image by `padding` px per side and cut a size x size window at its (top, left) offset, as one
    gather (no padded copy of the batch, no per-image loop; uint8 stays uint8).

    Equals torchvision's `RandomCrop(size, padding, padding_mode=mode)` with the same offsets (tests/test_profiles.py).

    Args:
        x: (N, C, H, W) any dtype.
        offsets: (N, 2) int64 (top, left) in the padded image, in [0, H + 2 padding - size], e.g. from
            `sample_crop_offsets`.
        size: output side in px.
        padding: px added on each side; needs padding < H and W under "reflect".
        mode: "reflect" (OpenMixup's CIFAR pipeline) or "constant" (zeros: torchvision's default).

    Returns:
        (N, C, size, size), x's dtype.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    n, c, h, w = x.shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than it, got {h} x {w}")
    rows, row_in = _padded_index(offsets[:, 0], h, size, padding, mode)  # (N, size)
    cols, col_in = _padded_index(offsets[:, 1], w, size, padding, mode)
    batch = torch.arange(n, device=x.device)[:, None, None]  # (N, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, size, size, C)
    if mode == "constant":
        out = out * (row_in[:, :, None] & col_in[:, None, :])[..., None].to(out.dtype)  # zeros outside the image
    return out.permute(0, 3, 1, 2).contiguous()  # (N, C, size, size)


def batch_random_crop_pad(x: torch.Tensor, size: int = 32, padding: int = 4, *, gen: torch.Generator,
                          mode: str = "reflect") -> torch.Tensor:
    """RandomCrop(size, padding, padding_mode=mode) per image: (N, C, H, W) -> (N, C, size, size), x's dtype."""
    return padded_crop(x, sample_crop_offsets(x.shape[0], padding, gen=gen), size, padding, mode)


# ---------------------------------------------------------------------------------------------
# Flip and normalisation


def batch_flip_lr(x: torch.Tensor, *, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of (N, C, H, W) left-right with probability p."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < p  # (N,) bool
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(x - 255 mean) / (255 std) per channel: (N, C, H, W) uint8 or 0..255 float -> float32; mean, std in 0..1."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)[:, None, None] * 255  # (C, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)[:, None, None] * 255
    return (x.float() - mean) / std


AUGMENTS = {  # key -> f(x, gen, interpolation), with the protocol's settings; the crops keep the source size
    "random_resized_crop": lambda x, gen, interp: batch_random_resized_crop(x, x.shape[-1], gen=gen,
                                                                           interpolation=interp),
    # OpenMixup's CIFAR-100 pipeline: RandomCrop(32, padding=4, padding_mode="reflect") (docs/protocol.md §8.2)
    "random_crop_pad": lambda x, gen, interp: batch_random_crop_pad(x, x.shape[-1], 4, gen=gen, mode="reflect"),
    "flip_lr": lambda x, gen, interp: batch_flip_lr(x, gen=gen),
}


# ---------------------------------------------------------------------------------------------
# DeviceLoader


class DeviceLoader:
    """Batches of a uint8 image set held on the device, shuffled and augmented there.

    Args:
        images: (N, H, W, 3) uint8, as `ImageTensors.x_train`; copied to `device` once as (N, 3, H, W).
        labels: (N,) integer labels.
        batch_size: images per batch.
        device: where the data lives and batches are made.
        train: True = new permutation and augmentation every epoch; False = in order, normalisation only.
        gen: the data stream's generator on `device`; required when train. Its state at the start of
            an epoch fully determines that epoch.
        mean, std: per-channel normalisation in 0..1 units.
        augment: train augmentations in order, keys of `AUGMENTS`; () = off.
        interpolation: the crop's resampling, "bicubic" or "bilinear" (`KERNELS`).
        drop_last: drop the final partial batch.
        channels_last: yield batches in channels_last memory format.
        shard: (rank, world_size) for DistributedDataParallel: yield only this rank's rows of every
            batch (contiguous, sizes differing by at most 1); (0, 1) = the whole batch. The
            permutation and the augmentation are drawn and applied for the whole batch on every rank,
            then sliced, so with the same generator state the union over ranks is exactly the
            unsharded batch. Cheap: the crop is 3.1 MFLOP per image against 13.3 GFLOP for a
            ResNet-18 forward + backward at 64 px, so (world_size - 1) x 0.02% more work per rank.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: str | torch.device,
        train: bool,
        gen: torch.Generator | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Sequence[str] = ("random_resized_crop", "flip_lr"),
        drop_last: bool = False,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        interpolation: str = "bicubic",
    ) -> None:
        unknown = [a for a in augment if a not in AUGMENTS]
        if unknown:
            raise ValueError(f"unknown augment {unknown}; valid keys are {sorted(AUGMENTS)}")
        if interpolation not in KERNELS:
            raise ValueError(f"interpolation must be one of {', '.join(KERNELS)}, got {interpolation!r}")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {tuple(images.shape)} {images.dtype}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        device = torch.device(device)
        if train and (gen is None or gen.device.type != device.type):
            raise ValueError(f"train=True needs gen, a torch.Generator on {device}; got {gen and gen.device}")
        self.x = images.to(device).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8, converted once
        self.y = labels.to(device, torch.int64)  # (N,) int64
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)  # (3,) made once, not per batch
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.batch_size, self.train, self.gen = batch_size, train, gen
        self.augment, self.drop_last, self.channels_last = tuple(augment), drop_last, channels_last
        self.shard, self.interpolation = shard, interpolation

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = len(self.x), self.batch_size
        order = torch.randperm(n, generator=self.gen, device=self.x.device) if self.train else None
        for s in range(0, len(self) * b, b):
            idx = order[s : s + b] if order is not None else slice(s, s + b)
            x, y = self.x[idx], self.y[idx]  # (B, 3, H, W) uint8, (B,) int64
            if self.train:
                for name in self.augment:
                    x = AUGMENTS[name](x, self.gen, self.interpolation)  # (B, 3, 64, 64) float32 once cropped
            if self.shard[1] > 1:  # this rank's rows, after the whole batch's draws
                rank, world = self.shard
                lo, hi = rank * len(y) // world, (rank + 1) * len(y) // world
                x, y = x[lo:hi], y[lo:hi]  # (B / world, 3, H, W), (B / world,)
            x = normalize(x, self.mean, self.std)  # (B, 3, H, W) float32
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
