"""Read Downsampled ImageNet 64x64 into uint8 tensors, validated and cached.

The set: Chrabaszcz, Loshchilov and Hutter, "A Downsampled Variant of ImageNet as an Alternative to the CIFAR
datasets", arXiv:1707.08819 (2017): all of ILSVRC-2012's 1,281,167 train and 50,000 val images, box-resized to
64x64, in CIFAR's format (mixnb.data.cifar).

Forms "imagenet64-pickle" and "imagenet64-npz", as Imagenet64_train_part1.zip, Imagenet64_train_part2.zip and
Imagenet64_val.zip (or their `_npz` twins) from https://image-net.org/download-images unpack:
`train_data_batch_1` .. `train_data_batch_10` and `val_data`, Python pickles or `.npz` files, in the folder or its
subfolders (one per zip). Each holds `data`, (N, 12288) uint8, one planar image per row, and `labels`, 1..1000
(mixnb subtracts 1); train batches also hold `mean`, not read (mixnb normalises with ImageNet's mean and std).
Mirrors that re-pickle them may spell the keys as bytes (b"data"): read the same. No boxes.

Class order: ILSVRC-2015's map_clsloc.txt ("n02119789 1 kit_fox", label 1 first), not sorted wnids. With a
`map_clsloc.txt` in the folder its wnids and names are the class ids (label_order "map_clsloc.txt"); without, the
class ids are the label numbers "1" .. "1000" (label_order "map_clsloc-numbers").

Memory: the batches are read one at a time (an .npz member cannot be memory-mapped), made (N, 64, 64, 3), then
joined: the peak is about twice the set, ~32 GB for the full train set, once, while the cache is built.

Not this set: TFDS `downsampled_imagenet` (van den Oord et al.'s PixelRNN images), unlabelled and 1,281,149 /
49,999 images; mixnb.data.detect refuses it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mixnb.data.base import DatasetError, ImageTensors, load_cached, resolve_root, stat_key, whole_image_boxes
from mixnb.data.cifar import field, planar_images, read_labels, read_pickle
from mixnb.data.tinyimagenet import IMAGE_SIZE

HINT = ("download Imagenet64_train_part1.zip, Imagenet64_train_part2.zip and Imagenet64_val.zip (or the _npz ones) "
        "from https://image-net.org/download-images, unzip them into one folder and point MIXNB_DATA at it")
BATCH = re.compile(r"(train_data_batch_\d+|val_data)(\.npz)?")
TRAIN_BATCHES = 10
CLASSES = 1000


def batch_files(root: Path) -> dict[str, Path]:
    """File name -> file of every batch in `root` and its subfolders."""
    found: dict[str, Path] = {}
    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir()):
            if BATCH.fullmatch(path.name) and path.is_file():
                if path.name in found:
                    raise DatasetError(f"{path} and {found[path.name]} are both {path.name}; keep one of them.")
                found[path.name] = path
    return found


def detect(root: Path) -> str | None:
    found = batch_files(root)
    if not found:
        return None
    return "imagenet64-npz" if any(name.endswith(".npz") for name in found) else "imagenet64-pickle"


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 64, 64, 3) uint8 images and (N,) int64 labels 0..999 of one batch file."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                record = {k: f[k] for k in f.files if k in ("data", "labels")}
        except (OSError, ValueError) as e:  # BadZipFile is an OSError; a pickled object array a ValueError
            raise DatasetError(f"{path} cannot be read as .npz ({e}); {HINT}.") from e
    else:
        record = read_pickle(path, HINT)
    x = planar_images(field(record, "data", path, HINT), path, HINT)
    if x.shape[1] != IMAGE_SIZE:
        raise DatasetError(f"{path} holds {x.shape[1]}x{x.shape[2]} images, but this reader reads the 64x64 "
                           f"variant; {HINT}.")
    return x, read_labels(field(record, "labels", path, HINT), len(x), path, "labels", CLASSES, HINT, first=1)


def _classes(root: Path) -> tuple[list[str], dict[str, str], str]:
    """Class ids in label order, their names, and the label order's source (module docstring)."""
    path = root / "map_clsloc.txt"
    if not path.is_file():
        ids = [str(k) for k in range(1, CLASSES + 1)]
        return ids, {k: k for k in ids}, "map_clsloc-numbers"
    rows = [line.split(maxsplit=2) for line in path.read_text().splitlines() if line.strip()]
    if sorted(int(r[1]) if len(r) > 1 and r[1].isdigit() else 0 for r in rows) != list(range(1, CLASSES + 1)):
        raise DatasetError(f"{path} must hold {CLASSES} lines `<wnid> <label> <name>` with the labels 1..{CLASSES} "
                           "once each, as ILSVRC-2015's devkit has it; use that file or remove it.")
    rows.sort(key=lambda r: int(r[1]))
    return [r[0] for r in rows], {r[0]: r[2] if len(r) > 2 else r[0] for r in rows}, "map_clsloc.txt"


def load_imagenet64(root: str | Path, *, cache_dir: str | Path | None = None) -> ImageTensors:
    """Validate and cache a folder of Downsampled ImageNet 64x64 batches (pickles or .npz).

    Raises:
        DatasetError: naming the offending file and the fix; no cache file is written.
    """
    root = resolve_root(root, HINT)
    found = batch_files(root)
    suffix = ".npz" if any(name.endswith(".npz") for name in found) else ""
    names = [f"train_data_batch_{k}{suffix}" for k in range(1, TRAIN_BATCHES + 1)] + [f"val_data{suffix}"]
    if missing := [n for n in names if n not in found]:
        raise DatasetError(f"{root} lacks {', '.join(missing)} (it holds {len(found)} of the {len(names)} batch "
                           f"files); {HINT}.")
    wnids, words, label_order = _classes(root)

    def build() -> dict:
        train = [_read_batch(found[n]) for n in names[:-1]]
        x_val, y_val = _read_batch(found[names[-1]])
        return dict(x_train=torch.cat([x for x, _ in train]), y_train=torch.cat([y for _, y in train]),
                    x_val=x_val, y_val=y_val, val_boxes=whole_image_boxes(len(y_val), IMAGE_SIZE), wnids=wnids,
                    words=words, form="imagenet64-npz" if suffix else "imagenet64-pickle", label_order=label_order,
                    has_boxes=False)

    label_files = ["map_clsloc.txt"] if label_order == "map_clsloc.txt" else []
    files = [str(found[n].relative_to(root)) for n in names]
    return load_cached(root, prefix="imagenet64", stat=stat_key(root, "mixnb-imagenet64-v1", label_files, files),
                       cache_dir=cache_dir, build=build)
