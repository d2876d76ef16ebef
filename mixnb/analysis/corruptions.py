"""Corruptions (§4) on a run: the generated set (``corruption_ops`` over the val set, seeded, generated once per
dataset on the CPU and cached) and, with ``$MIXNB_TINC`` set to an official ``Tiny-ImageNet-C`` folder, its
per-corruption, per-severity top-1 (mCE against a reference run: ``mce_table``). Not the official release
(whose sources are ImageNet val crops, §4.1). 16 of the 19 are made; motion blur and snow need ImageMagick
(skipped, with the reason), frost needs the reference's pictures (``$MIXNB_FROST``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mixnb.analysis.corruption_ops import CORRUPTION_CACHE_VERSION, CORRUPTIONS, corrupt, frost_files, skip_reason
from mixnb.analysis.run import Normalise, chw_images, imagenet_normalise, predict, seeded_subset
from mixnb.analysis.settings import AnalysisSettings
from mixnb.device import cache_dir
from mixnb.io import atomic_torch_save, remove_stale_temps

TINC_ENV = "MIXNB_TINC"  # an official Tiny-ImageNet-C folder: <corruption>/<severity>/<wnid>/<image>


def check_tinc() -> str | None:
    """``$MIXNB_TINC``, or None when unset; a value that is not a Tiny-ImageNet-C folder fails naming the variable
    and the fix (the sweep checks it before its first run: the analysis reads it only after training)."""
    value = os.environ.get(TINC_ENV) or None
    if value is not None and next(Path(value).glob("*/[1-5]/*/"), None) is None:
        raise FileNotFoundError(f"{TINC_ENV}={value} is not a Tiny-ImageNet-C folder (<corruption>/<severity>/<wnid>/ "
                                f"images): point it at one, or unset it to skip the official corruptions")
    return value


def _corruption_cache_path(data: Any, key: str) -> Path:
    tag = hashlib.sha1(str(data.root).encode()).hexdigest()[:12]
    return cache_dir() / f"tinyimagenet-c-generated-{Path(data.root).name}-{tag}-{key[:12]}.pt"


def generated_corruptions(data: Any, s: AnalysisSettings) -> dict[str, Any]:
    """The generated corruption set of ``data``'s val images: {"x": (C, S, K, 3, H, W) uint8, "idx": (K,),
    "names", "severities", "skipped": {name: reason}, "key", "generation_seconds"}; made once on the CPU (the
    same set whatever device analyses; CPU and CUDA generators differ), cached under
    ``mixnb.device.cache_dir()`` keyed on the dataset's content key, the settings that shape it and
    the frost pictures."""
    names = [c for c in s.corruptions if skip_reason(c) is None]
    skipped = {c: skip_reason(c) for c in s.corruptions if skip_reason(c) is not None}
    idx = seeded_subset(len(data.y_val), s.corruption_images, s.seed, "corruption-images")
    frost = None
    if "frost" in names:
        frost = hashlib.sha1(b"".join(f.read_bytes() for f in frost_files() or [])).hexdigest()
    key = hashlib.sha1(json.dumps({"content": data.content_key, "names": names, "severities": s.corruption_severities,
                                   "images": s.corruption_images, "seed": s.seed, "frost": frost,
                                   "version": CORRUPTION_CACHE_VERSION}, sort_keys=True).encode()).hexdigest()
    path = _corruption_cache_path(data, key)
    remove_stale_temps(path)
    shape = (len(names), len(s.corruption_severities), len(idx), 3, *data.x_val.shape[1:3])
    if (blob := _cached(path, key, shape)) is not None:
        return {**blob, "skipped": skipped, "path": str(path), "cached": True}
    t0 = time.perf_counter()
    x = chw_images(data.x_val[idx], torch.device("cpu"))  # (K, 3, H, W) uint8
    stack = torch.stack([torch.stack([corrupt(x, c, sev, seed=s.seed) for sev in s.corruption_severities])
                         for c in names]) if names else torch.empty(0, len(s.corruption_severities), *x.shape, dtype=torch.uint8)
    blob = {"key": key, "x": stack, "idx": idx, "names": names, "severities": list(s.corruption_severities),
            "generation_seconds": time.perf_counter() - t0}
    try:
        atomic_torch_save(blob, path)
    except OSError as err:
        warnings.warn(f"could not cache the corrupted val set at {path} ({err}); set MIXNB_CACHE to a writable folder")
    return {**blob, "skipped": skipped, "path": str(path), "cached": False}


def _cached(path: Path, key: str, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The cached set at ``path`` when it is whole: ``key`` and a uint8 ``x`` of ``shape`` with its indices, names and
    severities; else None (missing, corrupt, foreign, or damaged with the right key: rebuilt, never trusted)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (whatever a damaged file raises)
        return None
    whole = (isinstance(blob, dict) and blob.get("key") == key and isinstance(blob.get("x"), Tensor)
             and blob["x"].dtype == torch.uint8 and tuple(blob["x"].shape) == shape
             and isinstance(blob.get("idx"), Tensor) and len(blob["idx"]) == shape[2]
             and isinstance(blob.get("names"), list) and len(blob["names"]) == shape[0]
             and isinstance(blob.get("severities"), list) and isinstance(blob.get("generation_seconds"), float))
    return blob if whole else None


def corruption_accuracy(logits: Callable[[Tensor], Tensor], data: Any, s: AnalysisSettings,
                        device: torch.device, *, normalise: Normalise = imagenet_normalise) -> dict[str, Any]:
    """Top-1 (%) per generated corruption and severity, their mean (common 15 and extras apart), and why
    the missing ones are missing."""
    gen = generated_corruptions(data, s)
    x, names, sevs = gen["x"], gen["names"], gen["severities"]
    y = data.y_val[gen["idx"]].to(device)
    per: dict[str, list[float]] = {}
    if names:
        flat = x.reshape(-1, *x.shape[3:]).to(device)  # (C * S * K, 3, H, W) uint8
        hits = predict(logits, flat, batch_size=s.batch_size, normalise=normalise).argmax(1).view(
            len(names), len(sevs), -1) == y
        per = {c: (100 * hits[i].double().mean(1)).tolist() for i, c in enumerate(names)}
    common = [v for c, vs in per.items() if CORRUPTIONS[c][2] for v in vs]
    extra = [v for c, vs in per.items() if not CORRUPTIONS[c][2] for v in vs]
    return {
        "source": ("generated from this dataset's val images with Tiny-ImageNet-C's 64-px constants "
                   "(hendrycks/robustness make_tinyimagenet_c.py), seeded; not the official release"),
        "images": len(gen["idx"]), "severities": sevs, "top1": per,
        "mean_top1": float(np.mean(common + extra)) if per else None,
        "mean_top1_common": float(np.mean(common)) if common else None,
        "mean_top1_extra": float(np.mean(extra)) if extra else None,
        "common": [c for c in names if CORRUPTIONS[c][2]], "extra": [c for c in names if not CORRUPTIONS[c][2]],
        "skipped": gen["skipped"], "cache": gen["path"], "cached": gen["cached"],
        "generation_seconds": gen["generation_seconds"],
    }


def official_corruptions(logits: Callable[[Tensor], Tensor], root: str | Path, data: Any, s: AnalysisSettings,
                         device: torch.device, *, normalise: Normalise = imagenet_normalise) -> dict[str, Any]:
    """Top-1 (%) on an official Tiny-ImageNet-C folder (``<corruption>/<severity>/<wnid>/<image>``), every
    corruption folder and severity found; labels through this dataset's wnid order (not the folders' sorted
    order, §4.4). Decoded per (corruption, severity), in threads, and evaluated in batches."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{TINC_ENV}={root} is not a folder")
    label = {w: i for i, w in enumerate(data.wnids)}

    def decode(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (64, 64, 3):
            raise ValueError(f"{p} is {a.shape[1]}x{a.shape[0]}, not 64x64: not Tiny-ImageNet-C")
        return a

    per: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
            for sdir in sorted(p for p in cdir.iterdir() if p.is_dir() and p.name in {"1", "2", "3", "4", "5"}):
                files, ys = [], []
                for wdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
                    if wdir.name not in label:
                        raise ValueError(f"{wdir}: wnid {wdir.name} is not one of this dataset's classes")
                    imgs = sorted(f for f in wdir.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
                    files += imgs
                    ys += [label[wdir.name]] * len(imgs)
                if not files:
                    continue
                x = torch.from_numpy(np.stack(list(pool.map(decode, files))))  # (M, 64, 64, 3) uint8
                pred = predict(logits, chw_images(x, device), batch_size=s.batch_size,
                               normalise=normalise).argmax(1).cpu()
                per.setdefault(cdir.name, {})[sdir.name] = 100 * float((pred == torch.tensor(ys)).double().mean())
                counts.setdefault(cdir.name, {})[sdir.name] = len(files)
    if not per:
        raise ValueError(f"{root} holds no <corruption>/<severity>/<wnid>/ images: not a Tiny-ImageNet-C folder")
    common = [v for c, d in per.items() if c in CORRUPTIONS and CORRUPTIONS[c][2] for v in d.values()]
    extra = [v for c, d in per.items() if c in CORRUPTIONS and not CORRUPTIONS[c][2] for v in d.values()]
    return {"root": str(root), "top1": per, "images": counts,
            "mean_top1": float(np.mean([v for d in per.values() for v in d.values()])),
            "mean_top1_common": float(np.mean(common)) if common else None,
            "mean_top1_extra": float(np.mean(extra)) if extra else None}
