"""Read Tiny-ImageNet as Hugging Face parquet files into uint8 tensors, validated and cached.

Form "tiny-imagenet-parquet", as https://huggingface.co/datasets/zh-plus/tiny-imagenet (a copy of
https://huggingface.co/datasets/Maysee/tiny-imagenet) is downloaded: `train-*.parquet` (100,000 rows) and
`valid-*.parquet` (10,000 rows) in the folder or its `data/`, or a hub cache folder
(`datasets--zh-plus--tiny-imagenet`, read at `refs/main`'s snapshot). Columns: `image`, a struct {bytes: the
encoded JPEG, path}, and `label`, an integer class index. No val boxes (they become whole images), no test split.

Class order: the labels index the class names that `datasets` writes into the schema metadata (key
`huggingface`, info.features.label.names; label_order "from-metadata"). These uploads list them as sorted
wnids (label 0 = n01443537), not in wnids.txt's order. Without that metadata the sorted order is assumed, over
the wnids of a `wnids.txt` in the folder or else the wnids that the image paths start with (label_order
"sorted-wnids"). An image whose path starts with a wnid must carry that wnid's label, so labels in another order
are refused, never read as the wrong classes.

Rows are kept in file order. The content key (mixnb.data.base) equals the zip form's when the class order and
the image order agree, e.g. a zip whose wnids.txt lists the wnids sorted; with the official wnids.txt the two
forms differ (other labels), as they should: a run trained on one is not the same run as one on the other.

The split rule is the zip's (mixnb.data.tinyimagenet.check_split): a re-split copy such as
https://huggingface.co/datasets/israfelsr/mm_tiny_imagenet (80k/20k) is refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mixnb.data.base import DatasetError, ImageTensors, load_cached, resolve_root, stat_key, whole_image_boxes
from mixnb.data.tinyimagenet import IMAGE_SIZE, MAX_SHARED, check_split, decode_images, read_wnids, read_words

FORM = "tiny-imagenet-parquet"
HUB = "https://huggingface.co/datasets/zh-plus/tiny-imagenet"
HINT = f"download the parquet files of {HUB} and point MIXNB_DATA at their folder"
FIX = f"download the parquet files again ({HUB})"
SPLITS = {"train": ("train-*.parquet",), "val": ("valid-*.parquet", "validation-*.parquet")}
WNID = re.compile(r"n\d{8}")
PATH_WNID = re.compile(r"(n\d{8})_")  # a train image's file name starts with its wnid: n01443537_0.JPEG


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted(p for pattern in SPLITS[split] for p in folder.glob(pattern))


def parquet_folder(root: Path) -> Path | None:
    """The folder holding the train and valid parquet files: `root`, `root/data`, or those of a hub cache
    folder's snapshot; None if there is none."""
    folders = [root, root / "data"]
    if (root / "snapshots").is_dir():
        ref = root / "refs" / "main"  # the hub's pointer to the snapshot it last downloaded
        snapshots = [ref.read_text().strip()] if ref.is_file() else sorted(p.name for p in
                                                                            (root / "snapshots").iterdir())
        if len(snapshots) != 1:
            raise DatasetError(f"{root / 'snapshots'} holds {len(snapshots)} snapshots and {root} no refs/main to "
                               "choose one; point MIXNB_DATA at one snapshot folder.")
        folders += [root / "snapshots" / snapshots[0], root / "snapshots" / snapshots[0] / "data"]
    return next((f for f in folders if _split_files(f, "train") and _split_files(f, "val")), None)


def detect(root: Path) -> str | None:
    return FORM if parquet_folder(root) is not None else None


def _class_names(schema: pa.Schema) -> list[str] | None:
    """The label's class names from the `datasets` features in the schema metadata, or None."""
    try:
        names = json.loads(schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    except (TypeError, KeyError, ValueError):  # no metadata, no such key, or not JSON
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _read_file(path: Path) -> tuple[list[bytes], np.ndarray, list[str], list[str] | None]:
    """(encoded images, labels, image paths, class names or None) of one parquet file."""
    try:
        schema = pq.read_schema(path)
        image = schema.field("image").type if "image" in schema.names else None
        has_bytes = image is not None and pa.types.is_struct(image) and image.get_field_index("bytes") >= 0
        if "label" not in schema.names or not has_bytes:
            raise DatasetError(f"{path} has the columns {schema.names}, but a Tiny-ImageNet parquet has `image` (a "
                               f"struct holding the JPEG `bytes`) and `label`; {FIX}.")
        table = pq.read_table(path, columns=["image", "label"])
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path} cannot be read as parquet ({e}); {FIX}.") from e
    images = table.column("image").combine_chunks()  # StructArray
    data = images.field("bytes").to_pylist()
    paths = images.field("path").to_pylist() if image.get_field_index("path") >= 0 else [None] * len(data)
    if table.column("label").null_count or None in data:
        row = next(i for i, (b, y) in enumerate(zip(data, table.column("label").to_pylist())) if b is None or y is None)
        raise DatasetError(f"{path} row {row} has no image bytes or no label; {FIX}.")
    return data, table.column("label").to_numpy().astype(np.int64), [p or "" for p in paths], _class_names(schema)


def _read_split(files: list[Path]) -> tuple[list[bytes], np.ndarray, list[str], list[str], list[str] | None]:
    """The rows of a split's files in order: images, labels, paths, "<file> row <i>" names, class names."""
    data, labels, paths, names, classes = [], [], [], [], None
    for path in files:
        d, y, p, c = _read_file(path)
        if classes is not None and c != classes:
            raise DatasetError(f"{path} names other classes than {files[0]}; use the files of one download ({FIX}).")
        data += d
        labels.append(y)
        paths += p
        names += [f"{path} row {i}" for i in range(len(d))]
        classes = c
    return data, np.concatenate(labels), paths, names, classes


def _wnids(root: Path, classes: list[str] | None, paths: list[str]) -> tuple[list[str], str]:
    """The class ids in label order and where the order comes from (module docstring)."""
    if classes is not None:
        return classes, "from-metadata"
    if (root / "wnids.txt").is_file():
        return sorted(read_wnids(root)), "sorted-wnids"
    named = {m.group(1) for p in paths if (m := PATH_WNID.match(os.path.basename(p)))}
    if not named:
        raise DatasetError(f"{root}: the parquet files name no classes (no `huggingface` schema metadata) and neither "
                           "a wnids.txt nor the image paths say which wnid a label is; put the official wnids.txt "
                           "in that folder.")
    return sorted(named), "sorted-wnids"


def _check_labels(y: np.ndarray, paths: list[str], names: list[str], wnids: list[str], label_order: str) -> None:
    """Labels inside the class list, and the wnid that an image's path starts with equal to its label's."""
    bad = np.flatnonzero((y < 0) | (y >= len(wnids)))
    if len(bad):
        raise DatasetError(f"{names[bad[0]]} has the label {y[bad[0]]}, outside 0..{len(wnids) - 1} ({len(wnids)} "
                           f"classes); {FIX}.")
    for i, p in enumerate(paths):
        m = PATH_WNID.match(os.path.basename(p))
        if m and m.group(1) != wnids[y[i]] and WNID.fullmatch(wnids[y[i]]):
            raise DatasetError(f"{names[i]} is {os.path.basename(p)}, but its label {y[i]} is {wnids[y[i]]} in the "
                               f"{label_order} class order: the labels follow another order; use files whose schema "
                               f"metadata names the classes, or the official ones ({HUB}).")


def load_parquet(root: str | Path, *, cache_dir: str | Path | None = None, workers: int | None = None) -> ImageTensors:
    """Validate, decode (once, on all cores) and cache Tiny-ImageNet's parquet files.

    Args:
        root: the folder holding them (or their `data/`), or a hub cache folder.
        cache_dir: where the decoded cache lives; None = `mixnb.data.base.default_cache_dir(root)`.
        workers: decode threads; None = os.cpu_count().

    Raises:
        DatasetError: naming the offending file (and row) and the fix; no cache file is written.
    """
    root = resolve_root(root, HINT)
    folder = parquet_folder(root)
    if folder is None:
        raise DatasetError(f"{root} holds no train-*.parquet and valid-*.parquet files; {HINT}.")
    files = {split: _split_files(folder, split) for split in SPLITS}
    label_files = [n for n in ("wnids.txt", "words.txt") if (root / n).is_file()]
    data_files = [str(p.relative_to(root)) for split in SPLITS for p in files[split]]

    def build() -> dict:
        x_train, y_train, train_paths, train_names, classes = _read_split(files["train"])
        x_val, y_val, val_paths, val_names, val_classes = _read_split(files["val"])
        if val_classes != classes:
            raise DatasetError(f"{files['val'][0]} names other classes than {files['train'][0]}; use the files of "
                               f"one download ({FIX}).")
        wnids, label_order = _wnids(root, classes, train_paths)
        _check_labels(y_train, train_paths, train_names, wnids, label_order)
        _check_labels(y_val, val_paths, val_names, wnids, label_order)
        check_split(y_train, y_val, wnids, folder)
        threads = workers or os.cpu_count() or 1
        return dict(
            x_train=decode_images(x_train, train_names, workers=threads, fix=FIX),  # (N, 64, 64, 3) uint8
            y_train=torch.from_numpy(y_train),  # (N,) int64
            x_val=decode_images(x_val, val_names, workers=threads, fix=FIX),  # (M, 64, 64, 3) uint8
            y_val=torch.from_numpy(y_val),  # (M,) int64
            val_boxes=whole_image_boxes(len(y_val), IMAGE_SIZE),  # (M, 4) int16
            wnids=wnids, words=read_words(root, wnids), form=FORM, label_order=label_order, has_boxes=False,
        )

    return load_cached(root, prefix="tinyimagenet-parquet", stat=stat_key(root, "mixnb-parquet-v1", label_files,
                       data_files), cache_dir=cache_dir, build=build, max_shared=MAX_SHARED)
