"""Read CIFAR-100's `cifar-100-python` folder into uint8 tensors, validated and cached; CIFAR's pickle format.

Form "cifar-100-python", as https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz unpacks
(https://www.cs.toronto.edu/~kriz/cifar.html): `train` (50,000 images), `test` (10,000: mixnb's val) and `meta`,
Python pickles. A split is a dict with `data`, (N, 3072) uint8, one image per row, planar (1024 red values, then
green, then blue, each plane a row-major 32x32), and `fine_labels`, 0..99; `meta` holds `fine_label_names`,
which the labels index (label_order "meta"). Coarse labels are not read. No boxes: val boxes are whole images.
Downsampled ImageNet (mixnb.data.imagenet64) uses the same format, and `read_pickle`, `planar_images` and
`read_labels` with it.

Why not torchvision.datasets.CIFAR100: it checks each file's md5 against the official archive, so it refuses the
same data re-pickled by a mirror (and the generated replicas of the tests); its pickle.load runs whatever code a
file carries; and it hands out one PIL image at a time. `read_pickle` reads the same pickles with an unpickler
that builds numpy arrays and plain containers only.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixnb.data.base import DatasetError, ImageTensors, denied, load_cached, resolve_root, stat_key, whole_image_boxes

FORM = "cifar-100-python"
FILES = ("train", "test", "meta")
HINT = ("download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and untar it, then point MIXNB_DATA at "
        "the cifar-100-python folder")
CLASSES = 100
# What numpy arrays (and Python 2's str inside them) are rebuilt from, under numpy 1's and numpy 2's module names;
# any other class in a pickle is refused.
ARRAY_CLASSES = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_CLASSES:
            raise pickle.UnpicklingError(f"it holds a {module}.{name}, not only arrays, lists and numbers")
        return super().find_class(module, name)


def read_pickle(path: Path, fix: str) -> dict[str, Any]:
    """A CIFAR-format pickle as a dict with str keys (mirrors that pickle the keys as bytes, b"data", read the same).

    Python 2's pickles (the official files) are read with latin1, as numpy's own loaders do; `fix` ends an error.
    """
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except PermissionError as e:
        raise denied(path) from e
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, AttributeError, ImportError) as e:
        raise DatasetError(f"{path} cannot be read as a CIFAR-format pickle ({e}); {fix}.") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR-format pickle; {fix}.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def field(record: dict[str, Any], key: str, path: Path, fix: str) -> Any:
    """record[key], or an error naming the file and the keys it has."""
    if key not in record:
        raise DatasetError(f"{path} has no `{key}` (it has {sorted(record)}); {fix}.")
    return record[key]


def planar_images(data: Any, path: Path, fix: str) -> torch.Tensor:
    """(N, 3 * S * S) uint8 rows, each the R, G and B planes of a row-major S x S image -> (N, S, S, 3) uint8."""
    side = math.isqrt(data.shape[1] // 3) if isinstance(data, np.ndarray) and data.ndim == 2 else 0
    if side == 0 or data.dtype != np.uint8 or 3 * side * side != data.shape[1]:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path} `data` is {what}, but CIFAR's format is (N, 3 * S * S) uint8, one planar image "
                           f"per row; {fix}.")
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)))


def read_labels(values: Any, n: int, path: Path, key: str, classes: int, fix: str, first: int = 0) -> torch.Tensor:
    """`n` integer labels first..first + classes - 1 as (n,) int64 from 0."""
    y = np.asarray(values)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path} `{key}` is {y.dtype} {y.shape}, but it must hold one integer label for each of "
                           f"its {n} images; {fix}.")
    bad = np.flatnonzero((y < first) | (y >= first + classes))
    if len(bad):
        raise DatasetError(f"{path} `{key}` holds {y[bad[0]]} at {bad[0]}, outside {first}..{first + classes - 1}; "
                           f"{fix}.")
    return torch.from_numpy(y.astype(np.int64) - first)


def cifar_folder(root: Path) -> Path | None:
    """`root` or `root/cifar-100-python` when it holds train, test and meta; None otherwise."""
    return next((f for f in (root, root / FORM) if all((f / name).is_file() for name in FILES)), None)


def detect(root: Path) -> str | None:
    return FORM if cifar_folder(root) is not None else None


def _read_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    record = read_pickle(path, HINT)
    x = planar_images(field(record, "data", path, HINT), path, HINT)  # (N, 32, 32, 3) uint8
    return x, read_labels(field(record, "fine_labels", path, HINT), len(x), path, "fine_labels", CLASSES, HINT)


def load_cifar100(root: str | Path, *, cache_dir: str | Path | None = None) -> ImageTensors:
    """Validate and cache a `cifar-100-python` folder (or the folder holding it); test is the val split.

    Raises:
        DatasetError: naming the offending file and the fix; no cache file is written.
    """
    root = resolve_root(root, HINT)
    folder = cifar_folder(root)
    if folder is None:
        raise DatasetError(f"{root} holds no cifar-100-python files ({', '.join(FILES)}); {HINT}.")

    def build() -> dict:
        names = field(read_pickle(folder / "meta", HINT), "fine_label_names", folder / "meta", HINT)
        if not isinstance(names, list) or len(names) != CLASSES or len(set(map(str, names))) != CLASSES:
            raise DatasetError(f"{folder / 'meta'} `fine_label_names` must list {CLASSES} distinct names; {HINT}.")
        x_train, y_train = _read_split(folder / "train")
        x_val, y_val = _read_split(folder / "test")
        if x_val.shape[1:] != x_train.shape[1:]:
            raise DatasetError(f"{folder / 'test'} holds {x_val.shape[1]}x{x_val.shape[2]} images but "
                               f"{folder / 'train'} {x_train.shape[1]}x{x_train.shape[2]}; {HINT}.")
        wnids = [str(n) for n in names]
        return dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
                    val_boxes=whole_image_boxes(len(y_val), x_val.shape[1]), wnids=wnids,
                    words={n: n.replace("_", " ") for n in wnids}, form=FORM, label_order="meta", has_boxes=False)

    files = [str((folder / name).relative_to(root)) for name in FILES]
    return load_cached(root, prefix="cifar100", stat=stat_key(root, "mixnb-cifar100-v1", [], files),
                       cache_dir=cache_dir, build=build)
