"""Read a `tiny-imagenet-200` folder into uint8 tensors, validated and cached; its split rule and JPEG decoding.

Two layouts (docs/datasets.md), told apart by `val/`:
- "tiny-imagenet-zip", as the official zip http://cs231n.stanford.edu/tiny-imagenet-200.zip unpacks:
  `wnids.txt` (label order), `words.txt` (wnid -> names), `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` +
  `val/val_annotations.txt` (filename, wnid, x0, y0, x1, y1; tab-separated). Val order = the annotation lines'.
- "tiny-imagenet-val-folders", as common prep scripts leave it: val moved into class folders `val/<wnid>/`
  (or `val/images/<wnid>/`), images directly inside or in `images/`, with or without `<wnid>_boxes.txt`
  (filename, x0, y0, x1, y1); without boxes files the val boxes are whole images. Val order = the file names
  in natural order (val_2 before val_10): the official annotation order, so both layouts of the same files give
  the same tensors and content key.
`test/` and `train/<wnid>/<wnid>_boxes.txt` are ignored (prep scripts delete the latter). Text files are UTF-8 (a
BOM is fine).

The split rule (`check_split`): every class has the same number of train images and the same number of val
images, and 200 classes (Tiny-ImageNet's) must be the official 500 train / 50 val each; more than 1% of the val
images byte-identical to train images is refused too (`MAX_SHARED`). A re-split copy (e.g. 80k/20k) fails with
one line saying why.

Protocol: docs/protocol.md §1.4 (PIL decode, `.convert("RGB")`, native 64x64, no resizing). 16-bit grey
images keep their high byte (value >> 8), as Pillow reads 16-bit RGB files.

The cache is keyed on the stat key (mixnb.data.base): the label files' bytes (`wnids.txt`, `words.txt`,
`val/val_annotations.txt` or the val boxes files) and every image's stat. It catches a changed label file; an
image added, removed, renamed, replaced (new inode) or rewritten in place even with its size and mtime restored
(the kernel sets ctime on every write and `utime`; no user call can set it back).
"""

from __future__ import annotations

import codecs
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixnb.data.base import (DatasetError, ImageTensors, check_link, denied, load_cached, resolve_root, stat_key,
                             whole_image_boxes)

IMAGE_SIZE = 64
IMAGE_SUFFIXES = (".jpeg", ".jpg")  # matched case-insensitively
STAT_TAG = "mixnb-tinyimagenet-v2"  # the stat key's tag; runs recorded before the content key hold keys made with it
OFFICIAL_SPLIT = (200, 500, 50)  # classes, train and val images per class of the official zip
MAX_SHARED = 0.01  # val images byte-identical to train images tolerated (chance duplicates), as a fraction of val
DOWNLOAD_HINT = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it, "
    "then point MIXNB_DATA at the tiny-imagenet-200 folder"
)
RESPLIT_FIX = ("use the official train and val images (the zip's, or the Hugging Face parquet's train and valid "
               "files), not a re-split copy")
ANNOTATION_LINE = "<image>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"  # val_annotations.txt, as in the official zip
BOXES_LINE = "<image>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"  # <wnid>_boxes.txt


@dataclass(frozen=True)
class _FileList:
    """Every file the reader uses, relative to the root, with the labels of the images."""

    train: list[str]
    y_train: list[int]
    val: list[str]
    y_val: list[int]
    val_boxes: list[tuple[int, int, int, int]]  # [] without boxes
    meta: list[str]  # text files that define the labels
    form: str  # "tiny-imagenet-zip" or "tiny-imagenet-val-folders"
    has_boxes: bool


# ---------------------------------------------------------------------------------------------
# Listing and validation (cheap: text files and directory entries only)


def _read_text(path: Path) -> str | None:
    """The text of `path`, UTF-8 with or without a BOM (Notepad writes one); None if there is no such file."""
    check_link(path)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except PermissionError as e:
        raise denied(path) from e
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        raise DatasetError(f"{path} is UTF-16 text (or holds NUL bytes); save it as UTF-8 (the official zip's files "
                           "are plain ASCII).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save it as "
                           "UTF-8 (the official zip's files are plain ASCII).") from e


def read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    text = _read_text(path)
    if text is None:
        raise DatasetError(f"{path} is missing; {DOWNLOAD_HINT}.")
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path} must list distinct wnids, one per line; {DOWNLOAD_HINT}.")
    return wnids


def read_words(root: Path, wnids: list[str]) -> dict[str, str]:
    """wnid -> names from words.txt; wnids it does not cover (or a missing file) map to themselves."""
    names: dict[str, str] = {}
    for line in (_read_text(root / "words.txt") or "").splitlines():
        wnid, _, name = line.partition("\t")
        names[wnid.strip()] = name.strip()
    return {w: names.get(w) or w for w in wnids}


def _image_names(folder: Path) -> list[str]:
    """Sorted image names in `folder` ([] if it is not a folder); a broken link among them fails."""
    check_link(folder)
    if not folder.is_dir():
        return []
    try:
        entries = [e for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES)]
    except PermissionError as e:
        raise denied(folder) from e
    for e in entries:
        if e.is_symlink():
            check_link(Path(e.path))
    return sorted(e.name for e in entries)


def _check_class_folders(folder: Path, root: Path, wnids: list[str], ignore: frozenset[str] = frozenset()) -> None:
    """Check that `folder` holds one folder per wnid of wnids.txt and no other (but `ignore`)."""
    check_link(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing; {DOWNLOAD_HINT}.")
    try:
        entries = list(os.scandir(folder))
    except PermissionError as e:
        raise denied(folder) from e
    for e in entries:
        if e.is_symlink():
            check_link(Path(e.path))
    found = {e.name for e in entries if e.is_dir()} - ignore
    missing, extra = [w for w in wnids if w not in found], sorted(found - set(wnids))
    if missing or extra:
        raise DatasetError(
            f"{folder} has class folders that differ from {root / 'wnids.txt'}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)}). "
            f"Remove or add folders so that {folder.relative_to(root)}/ holds exactly the wnids listed, or "
            "re-extract the zip."
        )


def _list_train(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Check train/ against wnids.txt and list its images with their labels."""
    train_dir = root / "train"
    _check_class_folders(train_dir, root, wnids)
    train: list[str] = []
    y_train: list[int] = []
    for label, wnid in enumerate(wnids):
        names = _image_names(train_dir / wnid / "images")
        if not names:
            raise DatasetError(f"{train_dir / wnid / 'images'} holds no images; re-extract the zip ({DOWNLOAD_HINT}).")
        train += [f"train/{wnid}/images/{n}" for n in names]
        y_train += [label] * len(names)
    return train, y_train


def _parse_box_line(path: Path, lineno: int, line: str, layout: str) -> tuple[list[str], tuple[int, int, int, int]]:
    """The leading fields (image, and wnid in val_annotations.txt) and the box of one `layout` line."""
    fields = [f.strip() for f in line.strip().split("\t")]
    names = layout.count("\\t") - 3
    try:
        x0, y0, x1, y1 = (int(v) for v in fields[names:])
    except ValueError:  # a field too many or too few, or a box value that is not an integer
        raise DatasetError(
            f"{path} line {lineno} is {line[:80]!r}, but each line must be tab-separated {layout}, "
            f"as in the official zip; write tabs between the fields or re-extract the zip ({DOWNLOAD_HINT})."
        ) from None
    if not (0 <= x0 <= x1 < IMAGE_SIZE and 0 <= y0 <= y1 < IMAGE_SIZE):
        raise DatasetError(
            f"{path} line {lineno} has the box ({x0}, {y0}, {x1}, {y1}), but a box is x0 <= x1 and y0 <= y1 in "
            f"pixels 0..{IMAGE_SIZE - 1}; re-extract the zip ({DOWNLOAD_HINT})."
        )
    return fields[:names], (x0, y0, x1, y1)


def read_val_annotations(root: Path, wnids: list[str]) -> tuple[list[str], list[int], list[tuple[int, int, int, int]]]:
    """Val image names, labels and boxes from val_annotations.txt, checked against wnids and val/images."""
    ann = root / "val" / "val_annotations.txt"
    text = _read_text(ann)
    if text is None:
        raise DatasetError(f"{ann} is missing; {DOWNLOAD_HINT}.")
    index = {w: i for i, w in enumerate(wnids)}
    names, labels, boxes, lines = [], [], [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        (name, wnid), box = _parse_box_line(ann, lineno, line, ANNOTATION_LINE)
        if wnid not in index:
            raise DatasetError(
                f"{ann} line {lineno} names wnid {wnid!r}, which is not in {root / 'wnids.txt'}; "
                f"use the files from one download ({DOWNLOAD_HINT})."
            )
        if name in lines:
            raise DatasetError(f"{ann} lists {name} twice, on lines {lines[name]} and {lineno}; keep one line per "
                               f"image, or re-extract the zip ({DOWNLOAD_HINT}).")
        lines[name] = lineno
        names.append(name)
        labels.append(index[wnid])
        boxes.append(box)
    if not names:
        raise DatasetError(f"{ann} lists no images; re-extract the zip ({DOWNLOAD_HINT}).")
    present = set(_image_names(root / "val" / "images"))
    absent = [n for n in names if n not in present]
    if absent:
        raise DatasetError(
            f"{ann} names {len(absent)} file(s) that are not in {root / 'val' / 'images'}, "
            f"first {root / 'val' / 'images' / absent[0]}; re-extract the zip ({DOWNLOAD_HINT})."
        )
    return names, labels, boxes


def _val_class_root(root: Path, wnids: list[str]) -> Path | None:
    """The folder holding val's class folders (`val/` or `val/images/`); None in the zip's layout."""
    for folder in (root / "val", root / "val" / "images"):
        if any((folder / w).is_dir() for w in wnids):
            return folder
    return None


def _natural(name: str) -> list[int | str]:
    """Sort key that orders the numbers in a name by value: val_2 before val_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_boxes_file(path: Path, names: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """image name -> box from a `<wnid>_boxes.txt`, which must list each of `names` once and nothing else."""
    text, present = _read_text(path) or "", set(names)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            (name,), box = _parse_box_line(path, lineno, line, BOXES_LINE)
            if name in boxes or name not in present:
                what = "twice" if name in boxes else "but no such image is beside it"
                raise DatasetError(f"{path} line {lineno} lists {name} {what}; keep one line per image of that "
                                   "folder, or delete every val boxes file to read val without boxes.")
            boxes[name] = box
    if missing := [n for n in names if n not in boxes]:
        raise DatasetError(f"{path} has no box for {len(missing)} image(s), first {missing[0]}; add their lines, or "
                           "delete every val boxes file to read val without boxes.")
    return boxes


def _list_val_folders(root: Path, classes_at: Path, wnids: list[str]) -> tuple[list[str], list[int], list, list[str]]:
    """Val images in class folders, in natural name order, with their labels and boxes ([] without boxes files),
    and the boxes files read."""
    _check_class_folders(classes_at, root, wnids, ignore=frozenset({"images"}))
    boxes_files = [classes_at / w / f"{w}_boxes.txt" for w in wnids]
    present = [p.is_file() for p in boxes_files]
    if any(present) and not all(present):
        raise DatasetError(f"{boxes_files[present.index(False)]} is missing, while other val class folders hold their "
                           "boxes file; restore it, or delete every val boxes file to read val without boxes.")
    entries = []  # (name, label, path relative to root, box)
    for label, wnid in enumerate(wnids):
        folder = classes_at / wnid / "images" if (classes_at / wnid / "images").is_dir() else classes_at / wnid
        names = _image_names(folder)
        if not names:
            raise DatasetError(f"{folder} holds no images; re-extract the zip ({DOWNLOAD_HINT}).")
        boxes = _read_boxes_file(boxes_files[label], names) if all(present) else {}
        entries += [(n, label, str((folder / n).relative_to(root)), boxes.get(n)) for n in names]
    entries.sort(key=lambda e: (_natural(e[0]), e[1]))
    meta = [str(p.relative_to(root)) for p in boxes_files] if all(present) else []
    return [e[2] for e in entries], [e[1] for e in entries], [e[3] for e in entries] if meta else [], meta


def _list_files(root: Path, wnids: list[str]) -> _FileList:
    """Check the folder structure and list the images with their labels and the val boxes."""
    train, y_train = _list_train(root, wnids)
    words = ["words.txt"] if (root / "words.txt").is_file() else []
    classes_at = _val_class_root(root, wnids)
    if classes_at is None:
        val, y_val, val_boxes = read_val_annotations(root, wnids)
        return _FileList(train, y_train, [f"val/images/{n}" for n in val], y_val, val_boxes,
                         ["wnids.txt", "val/val_annotations.txt", *words], "tiny-imagenet-zip", True)
    val, y_val, val_boxes, boxes_files = _list_val_folders(root, classes_at, wnids)
    return _FileList(train, y_train, val, y_val, val_boxes, ["wnids.txt", *boxes_files, *words],
                     "tiny-imagenet-val-folders", bool(boxes_files))


def check_split(y_train: Sequence[int], y_val: Sequence[int], wnids: list[str], where: Path | str) -> None:
    """Refuse a split other than the official one (module docstring): equal counts per class in each split, and
    500 train / 50 val per class when there are Tiny-ImageNet's 200 classes."""
    for split, y in (("train", y_train), ("val", y_val)):
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(wnids))  # (C,)
        lo, hi = int(counts.argmin()), int(counts.argmax())
        if counts[lo] != counts[hi]:
            raise DatasetError(f"{where} is not the official split: its {split} set holds {counts[hi]} images of "
                               f"{wnids[hi]} but {counts[lo]} of {wnids[lo]} (the official split has the same count "
                               f"for every class); {RESPLIT_FIX}.")
    per_class = (len(y_train) // len(wnids), len(y_val) // len(wnids))
    if len(wnids) == OFFICIAL_SPLIT[0] and per_class != OFFICIAL_SPLIT[1:]:
        raise DatasetError(f"{where} is not the official split: {per_class[0]} train / {per_class[1]} val images per "
                           f"class, where the official split has {OFFICIAL_SPLIT[1]} / {OFFICIAL_SPLIT[2]} (a re-split "
                           f"copy, e.g. 80k/20k); {RESPLIT_FIX}.")


# ---------------------------------------------------------------------------------------------
# Decoding: a thread pool. PIL releases the GIL in the JPEG decoder, but header parsing holds it,
# so threads gave 1.65x on 2 cores (measured); enough for a once-per-dataset cost.


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """(64, 64, 3) uint8 of a loaded image of any mode.

    16-bit grey ("I;16*", or "I" as some Pillow versions open 16-bit PNGs) keeps its high byte, value >> 8:
    the scaling Pillow applies to 16-bit RGB files (/257 rounded would differ by at most 1). Palette, LA,
    CMYK and the other modes go through `convert("RGB")`.
    """
    if im.mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)  # (64, 64)
        if a.min() < 0 or a.max() > 0xFFFF:
            raise DatasetError(f"{name} is a 32-bit image with values outside 0..65535; save it as an 8-bit JPEG.")
        return np.repeat((a >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        raise DatasetError(f"{name} is a floating-point image (mode F); save it as an 8-bit RGB JPEG.")
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _decode(source: Path | bytes, name: str, fix: str) -> np.ndarray:
    """One checked image, a file or an encoded image's bytes, as (64, 64, 3) uint8; errors name `name`."""
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DatasetError(f"{name} is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}; {fix}.")
            im.load()  # raises OSError on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES must stay False)
            return _to_rgb(im, name)
    except DatasetError:
        raise
    except PermissionError as e:
        raise denied(Path(name)) from e
    except (OSError, SyntaxError, ValueError) as e:  # ValueError: a mode convert() does not know
        raise DatasetError(f"{name} cannot be decoded ({e}); {fix}.") from e


def _decode_into(out: np.ndarray, sources: Sequence[Path | bytes], names: Sequence[str], fix: str) -> None:
    """Decode `sources` into `out` (len(sources), 64, 64, 3) uint8."""
    for i, (source, name) in enumerate(zip(sources, names)):
        out[i] = _decode(source, name, fix)


def decode_images(sources: Sequence[Path | bytes], names: Sequence[str], *, workers: int,
                  fix: str = f"replace it with the original file ({DOWNLOAD_HINT})", chunk: int = 256) -> torch.Tensor:
    """Decode image files or encoded images' bytes with a thread pool; returns (N, 64, 64, 3) uint8.

    Args:
        sources: image files, or the bytes of encoded images.
        names: what an error calls each (its path; a parquet file and row).
        workers: decode threads.
        fix: what an error tells the user to do.
    """
    out = np.empty((len(sources), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # (N, 64, 64, 3) uint8
    starts = range(0, len(sources), chunk)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_decode_into, out[s : s + chunk], sources[s : s + chunk], names[s : s + chunk], fix)
                   for s in starts]
        try:
            for f in futures:
                f.result()
        finally:
            for f in futures:
                f.cancel()  # stop queued chunks after the first error
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Entry point


def detect(root: Path) -> str | None:
    """The layout of a `tiny-imagenet-200` folder (one with wnids.txt, or with train/ and val/): "tiny-imagenet-zip"
    or "tiny-imagenet-val-folders"; None for any other folder."""
    if not (root / "wnids.txt").is_file() and not ((root / "train").is_dir() and (root / "val").is_dir()):
        return None
    try:
        wnids = read_wnids(root)
    except DatasetError:
        return "tiny-imagenet-zip"  # the reader says what is wrong
    return "tiny-imagenet-zip" if _val_class_root(root, wnids) is None else "tiny-imagenet-val-folders"


def _scan(root: Path) -> tuple[list[str], _FileList, str]:
    """wnids, the checked file list and its stat key (mixnb.data.base) of a resolved folder; nothing decoded."""
    wnids = read_wnids(root)
    files = _list_files(root, wnids)
    return wnids, files, stat_key(root, STAT_TAG, files.meta, files.train + files.val)


def folder_stat_key(root: str | Path) -> str:
    """The stat key that `load_tiny_imagenet` keys the folder's cache on (runs recorded before the content key hold
    it as their dataset's `manifest_key`)."""
    return _scan(resolve_root(root, DOWNLOAD_HINT))[2]


def load_tiny_imagenet(
    root: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> ImageTensors:
    """Validate, decode (once, on all cores) and cache a `tiny-imagenet-200` folder in either layout.

    Args:
        root: the folder holding `wnids.txt`, `train/` and `val/`.
        cache_dir: where the decoded cache lives; None = `mixnb.data.base.default_cache_dir(root)`.
        workers: decode threads; None = os.cpu_count().

    Raises:
        DatasetError: naming the offending path and the fix; no cache file is written.
        OSError: the disk is full while writing the cache (the message names the file).
    """
    root = resolve_root(root, DOWNLOAD_HINT)
    wnids, files, stat = _scan(root)
    words = read_words(root, wnids)
    check_split(files.y_train, files.y_val, wnids, root)

    def build() -> dict:
        threads = workers or os.cpu_count() or 1
        return dict(
            x_train=decode_images([root / p for p in files.train], [str(root / p) for p in files.train],
                                  workers=threads),  # (N, 64, 64, 3) uint8
            y_train=torch.tensor(files.y_train, dtype=torch.int64),  # (N,)
            x_val=decode_images([root / p for p in files.val], [str(root / p) for p in files.val],
                                workers=threads),  # (M, 64, 64, 3) uint8
            y_val=torch.tensor(files.y_val, dtype=torch.int64),  # (M,)
            val_boxes=(torch.tensor(files.val_boxes, dtype=torch.int16) if files.has_boxes  # (M, 4)
                       else whole_image_boxes(len(files.val), IMAGE_SIZE)),
            wnids=wnids, words=words, form=files.form, label_order="wnids.txt", has_boxes=files.has_boxes,
        )

    return load_cached(root, prefix="tinyimagenet", stat=stat, cache_dir=cache_dir, build=build, max_shared=MAX_SHARED)
