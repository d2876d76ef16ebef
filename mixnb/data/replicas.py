"""Small replicas of each real dataset form, written from a generated sample set: try every reader and profile
end to end without downloading (``python -m mixnb replica FORM PATH``); the tests read them too.

Each replica holds the sample set's images (10 classes by default) in the real form's files and layout
(docs/datasets.md): the forms' facts, not their sizes. Its numbers reproduce nothing.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixnb.data.base import TinyImageNetTensors
from mixnb.data.sample import MARKER, make_sample_dataset
from mixnb.data.tinyimagenet import load_tiny_imagenet, read_val_annotations

IMAGENET64_TRAIN_BATCHES = 10  # train_data_batch_1..10, as the real set


def tiny_zip(path: Path, **sample: int) -> Path:
    """The pristine ``tiny-imagenet-200`` layout (the generated sample itself)."""
    return make_sample_dataset(path, **sample)


def val_class_folders(path: Path, **sample: int) -> Path:
    """The layout prep scripts leave: val images in ``val/<wnid>/images/`` with ``<wnid>_boxes.txt``, no
    ``val_annotations.txt``, train box files deleted."""
    root = _fresh_copy(path, **sample)
    wnids = (root / "wnids.txt").read_text().split()
    for name, label, box in zip(*read_val_annotations(root, wnids)):
        wnid = wnids[label]
        folder = root / "val" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (root / "val" / "images" / name).rename(folder / name)
        with open(root / "val" / wnid / f"{wnid}_boxes.txt", "a") as f:
            f.write("\t".join([name, *map(str, box)]) + "\n")
    (root / "val" / "val_annotations.txt").unlink()
    (root / "val" / "images").rmdir()
    for boxes in (root / "train").glob("*/*_boxes.txt"):
        boxes.unlink()
    return root


def hf_parquet(path: Path, *, class_names: bool = True, **sample: int) -> Path:
    """The Hugging Face hub's ``zh-plus/tiny-imagenet`` form: ``data/{train,valid}-00000-of-00001.parquet``,
    ``image`` = {bytes, path}, ``label`` in the sorted-wnid order, the class names in the schema's metadata as
    ``datasets`` writes them (``class_names=False``: none, as some copies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _sample(path, **sample)
    wnids = (root / "wnids.txt").read_text().split()
    label = {w: k for k, w in enumerate(sorted(wnids))}
    val_names, val_labels, _ = read_val_annotations(root, wnids)
    rows = {"train": [(p, label[w]) for w in wnids for p in sorted((root / "train" / w / "images").iterdir())],
            "valid": [(root / "val" / "images" / name, label[wnids[k]]) for name, k in zip(val_names, val_labels)]}
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"names": sorted(wnids), "_type": "ClassLabel"}}}})} if class_names else None
    out = _empty(path) / "data"
    out.mkdir(parents=True)
    for split, split_rows in rows.items():
        table = pa.table({"image": pa.array([{"bytes": p.read_bytes(), "path": p.name} for p, _ in split_rows],
                                            type=image),
                          "label": pa.array([y for _, y in split_rows], type=pa.int64())})
        pq.write_table(table.replace_schema_metadata(meta), out / f"{split}-00000-of-00001.parquet")
    return path


def cifar100_python(path: Path, **sample: int) -> Path:
    """``cifar-100-python/{train,test,meta}`` pickles: 32-px images (the sample's, 2x2-averaged) as planar
    (N, 3072) rows, ``fine_labels`` 0..99 (the sample's classes are the first ones), 100 ``fine_label_names``."""
    data = _tensors(path, **sample)
    folder = _empty(path) / "cifar-100-python"
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_val, data.y_val)):
        half = x.numpy().reshape(len(x), 32, 2, 32, 2, 3).mean((2, 4)).round().astype(np.uint8)
        write_pickle(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(len(x))], "batch_label": split,
                                 "fine_labels": y.tolist(), "coarse_labels": [0] * len(x), "data": planar(half)})
    write_pickle(folder / "meta", {"fine_label_names": [f"class_{k}" for k in range(100)],
                              "coarse_label_names": [f"superclass_{k}" for k in range(20)]})
    return path


def imagenet64(path: Path, *, kind: str = "npz", byte_keys: bool = False, **sample: int) -> Path:
    """Chrabaszcz et al.'s batches: ``train_data_batch_1..10`` and ``val_data`` as ``.npz`` or pickles
    (``byte_keys``: bytes keys, as some mirrors), ``data`` (N, 12288) planar uint8, ``labels`` 1..1000 (the sample's
    classes are the first ones), ``mean`` in the train batches."""
    if kind not in ("npz", "pickle"):
        raise ValueError(f"kind must be 'npz' or 'pickle', got {kind!r}")
    data = _tensors(path, **sample)
    if len(data.y_train) < IMAGENET64_TRAIN_BATCHES:
        raise ValueError(f"an ImageNet 64x64 replica needs at least {IMAGENET64_TRAIN_BATCHES} train images (one per "
                         f"batch file), got {len(data.y_train)}")
    folder = _empty(path)
    x_train, y_train = planar(data.x_train.numpy()), data.y_train.numpy() + 1
    parts = [(f"train_data_batch_{k + 1}", x, y) for k, (x, y) in
             enumerate(zip(np.array_split(x_train, IMAGENET64_TRAIN_BATCHES), np.array_split(y_train, IMAGENET64_TRAIN_BATCHES)))]
    parts.append(("val_data", planar(data.x_val.numpy()), data.y_val.numpy() + 1))
    for name, x, y in parts:
        record = {"data": x, "labels": [int(v) for v in y], **({} if name == "val_data" else {"mean": x_train.mean(0)})}
        if kind == "npz":
            np.savez(folder / f"{name}.npz", **record)
        else:
            write_pickle(folder / name, {k.encode() if byte_keys else k: v for k, v in record.items()})
    return path


FORMS: dict[str, Callable[..., Path]] = {
    "zip": tiny_zip, "val-class-folders": val_class_folders, "hf-parquet": hf_parquet,
    "cifar-100-python": cifar100_python, "imagenet64-npz": imagenet64,
    "imagenet64-pickle": lambda path, **sample: imagenet64(path, kind="pickle", **sample)}


def write_replica(form: str, path: str | Path, **sample: int) -> Path:
    """A replica of ``form`` (a ``FORMS`` key) at ``path`` from the sample set of ``sample``
    (``make_sample_dataset`` kwargs: seed, num_classes, train_per_class, val_per_class)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    return FORMS[form](Path(path).expanduser().resolve(), **sample)


def _sample(path: Path, **sample: int) -> Path:
    """The generated sample behind a replica, beside it (``<path>.sample``)."""
    return make_sample_dataset(path.with_name(path.name + ".sample"), **sample)


def _tensors(path: Path, **sample: int) -> TinyImageNetTensors:
    root = _sample(path, **sample)
    return load_tiny_imagenet(root, cache_dir=root.with_name(root.name + ".cache"))


def _fresh_copy(path: Path, **sample: int) -> Path:
    source = _sample(path, **sample)
    shutil.copytree(source, _empty(path), dirs_exist_ok=True)
    (path / MARKER).unlink(missing_ok=True)  # changed below: no longer the generated sample
    return path


def _empty(path: Path) -> Path:
    """``path`` as a new empty folder; an existing one must be empty (a replica never overwrites data)."""
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; choose a new folder for the replica")
    path.mkdir(parents=True, exist_ok=True)
    return path


def planar(x: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3 * S * S) rows of R, G, B planes (CIFAR's and ImageNet 64x64's layout)."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def write_pickle(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(record, protocol=2))
