"""Read a `tiny-imagenet-200` folder into uint8 tensors, validated and cached.

Layout (as the official zip http://cs231n.stanford.edu/tiny-imagenet-200.zip unpacks):
`wnids.txt` (label order), `words.txt` (wnid -> names), `train/<wnid>/images/*.JPEG`,
`val/images/*.JPEG` + `val/val_annotations.txt` (filename, wnid, x0, y0, x1, y1; tab-separated).
`test/` and `train/<wnid>/<wnid>_boxes.txt` are ignored. Text files are UTF-8 (a BOM is fine).

Protocol: docs/protocol.md §1.4 (PIL decode, `.convert("RGB")`, native 64x64, no resizing). 16-bit grey
images keep their high byte (value >> 8), as Pillow reads 16-bit RGB files.

The decoded set is saved once with `torch.save`, so later runs load it in about a second. The cache
is keyed on `manifest_key`: sha1 over the bytes of the label files (`wnids.txt`, `words.txt`,
`val/val_annotations.txt`) and (path, size, mtime_ns, ctime_ns, inode) of every image, one `stat`
per image (0.6 s for 110k files, measured on a 2-core VM with a warm page cache).
- Caught: any change to a label file; an image added, removed or renamed; an image replaced by
  another file (new inode) or rewritten in place, even with its size and mtime restored (the
  kernel sets ctime on every write and `utime`; no user call can set it back).
- Not caught: a change that keeps inode and ctime, i.e. one made below the filesystem (an edited
  disk image, the clock turned back by root) or on a filesystem without a real ctime (FAT/exFAT,
  some FUSE mounts). There, delete the cache file after replacing images.
- Rebuilt needlessly (one re-decode): after a copy of the folder (new inodes), `chmod`/`chown`, a
  backup tool that restores atimes, a FUSE remount with fresh inode numbers.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixnb.io import atomic_torch_save, remove_stale_temps

IMAGE_SIZE = 64
IMAGE_SUFFIXES = (".jpeg", ".jpg")  # matched case-insensitively
CACHE_VERSION = 2  # bump when the cached content or its layout changes (2: val_boxes, stat + label-hash key)
DOWNLOAD_HINT = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it, "
    "then point MIXNB_DATA at the tiny-imagenet-200 folder"
)
ANNOTATION_LINE = "<image>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"  # val_annotations.txt, as in the official zip


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the path and the fix."""


@dataclass(frozen=True)
class TinyImageNetTensors:
    """The decoded train and val splits; labels index `wnids`."""

    x_train: torch.Tensor  # (N, 64, 64, 3) uint8, CPU
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor  # (M, 64, 64, 3) uint8
    y_val: torch.Tensor  # (M,) int64
    val_boxes: torch.Tensor  # (M, 4) int16 object boxes x0, y0, x1, y1: inclusive pixels of the 64x64 image
    wnids: list[str]  # class order = wnids.txt order
    words: dict[str, str]  # wnid -> human-readable name
    root: str  # the dataset folder, resolved
    manifest_key: str  # sha1 hex of what the cache is keyed on (module docstring); record it with a run


@dataclass(frozen=True)
class _FileList:
    """Every file the reader uses, relative to the root, with the labels of the images."""

    train: list[str]
    y_train: list[int]
    val: list[str]
    y_val: list[int]
    val_boxes: list[tuple[int, int, int, int]]
    meta: list[str]  # text files that define the labels


# ---------------------------------------------------------------------------------------------
# Listing and validation (cheap: text files and directory entries only)


def _check_link(path: Path) -> None:
    """Raise if `path` is a symbolic link that loops or points nowhere; anything else passes."""
    if not os.path.islink(path):
        return
    try:
        os.stat(path)
    except OSError as e:
        target = os.readlink(path)
        if e.errno == errno.ELOOP:
            what = "loops (following it leads back to itself)"
        elif e.errno in (errno.ENOENT, errno.ENOTDIR):
            what = f"points nowhere ({target} does not exist)"
        else:
            what = f"cannot be followed to {target} ({e.strerror})"
        raise DatasetError(f"{path} is a symbolic link that {what}; fix the link or replace it with the real file "
                           "or folder.") from e


def _denied(path: Path) -> DatasetError:
    mode = "a+rx" if path.is_dir() else "a+r"
    return DatasetError(f"{path} is not readable (permission denied); fix its permissions (chmod {mode} {path}).")


def _read_text(path: Path) -> str | None:
    """The text of `path`, UTF-8 with or without a BOM (Notepad writes one); None if there is no such file."""
    _check_link(path)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except PermissionError as e:
        raise _denied(path) from e
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        raise DatasetError(f"{path} is UTF-16 text (or holds NUL bytes); save it as UTF-8 (the official zip's files "
                           "are plain ASCII).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save it as "
                           "UTF-8 (the official zip's files are plain ASCII).") from e


def _read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    text = _read_text(path)
    if text is None:
        raise DatasetError(f"{path} is missing; {DOWNLOAD_HINT}.")
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path} must list distinct wnids, one per line; {DOWNLOAD_HINT}.")
    return wnids


def _read_words(root: Path, wnids: list[str]) -> dict[str, str]:
    """wnid -> names from words.txt; wnids it does not cover (or a missing file) map to themselves."""
    names: dict[str, str] = {}
    for line in (_read_text(root / "words.txt") or "").splitlines():
        wnid, _, name = line.partition("\t")
        names[wnid.strip()] = name.strip()
    return {w: names.get(w) or w for w in wnids}


def _image_names(folder: Path) -> list[str]:
    """Sorted image names in `folder` ([] if it is not a folder); a broken link among them fails."""
    _check_link(folder)
    if not folder.is_dir():
        return []
    try:
        entries = [e for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES)]
    except PermissionError as e:
        raise _denied(folder) from e
    for e in entries:
        if e.is_symlink():
            _check_link(Path(e.path))
    return sorted(e.name for e in entries)


def _list_train(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Check train/ against wnids.txt and list its images with their labels."""
    train_dir = root / "train"
    _check_link(train_dir)
    if not train_dir.is_dir():
        raise DatasetError(f"{train_dir} is missing; {DOWNLOAD_HINT}.")
    try:
        entries = list(os.scandir(train_dir))
    except PermissionError as e:
        raise _denied(train_dir) from e
    for e in entries:
        if e.is_symlink():
            _check_link(Path(e.path))
    found = {e.name for e in entries if e.is_dir()}
    missing, extra = [w for w in wnids if w not in found], sorted(found - set(wnids))
    if missing or extra:
        raise DatasetError(
            f"{train_dir} has class folders that differ from {root / 'wnids.txt'}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)}). "
            "Remove or add folders so that train/ holds exactly the wnids listed, or re-extract the zip."
        )
    train: list[str] = []
    y_train: list[int] = []
    for label, wnid in enumerate(wnids):
        names = _image_names(train_dir / wnid / "images")
        if not names:
            raise DatasetError(f"{train_dir / wnid / 'images'} holds no images; re-extract the zip ({DOWNLOAD_HINT}).")
        train += [f"train/{wnid}/images/{n}" for n in names]
        y_train += [label] * len(names)
    return train, y_train


def _parse_annotation(ann: Path, lineno: int, line: str) -> tuple[str, str, tuple[int, int, int, int]]:
    """(image, wnid, box) of one val_annotations.txt line."""
    fields = [f.strip() for f in line.strip().split("\t")]
    try:
        x0, y0, x1, y1 = (int(v) for v in fields[2:])
    except ValueError:  # not 6 fields, or a box value that is not an integer
        raise DatasetError(
            f"{ann} line {lineno} is {line[:80]!r}, but each line must be tab-separated {ANNOTATION_LINE}, "
            f"as in the official zip; write tabs between the fields or re-extract the zip ({DOWNLOAD_HINT})."
        ) from None
    if not (0 <= x0 <= x1 < IMAGE_SIZE and 0 <= y0 <= y1 < IMAGE_SIZE):
        raise DatasetError(
            f"{ann} line {lineno} has the box ({x0}, {y0}, {x1}, {y1}), but a box is x0 <= x1 and y0 <= y1 in "
            f"pixels 0..{IMAGE_SIZE - 1}; re-extract the zip ({DOWNLOAD_HINT})."
        )
    return fields[0], fields[1], (x0, y0, x1, y1)


def _read_annotations(root: Path, wnids: list[str]) -> tuple[list[str], list[int], list[tuple[int, int, int, int]]]:
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
        name, wnid, box = _parse_annotation(ann, lineno, line)
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


def _list_files(root: Path, wnids: list[str]) -> _FileList:
    """Check the folder structure and list the images with their labels and the val boxes."""
    train, y_train = _list_train(root, wnids)
    val, y_val, val_boxes = _read_annotations(root, wnids)
    meta = ["wnids.txt", "val/val_annotations.txt"] + (["words.txt"] if (root / "words.txt").is_file() else [])
    return _FileList(train, y_train, [f"val/images/{n}" for n in val], y_val, val_boxes, meta)


def _manifest_key(root: Path, files: _FileList) -> str:
    """sha1 over the label files' bytes and (path, size, mtime_ns, ctime_ns, inode) of every image."""
    h = hashlib.sha1(f"mixnb-tinyimagenet-v{CACHE_VERSION}\n".encode())
    for rel in files.meta:
        h.update(f"{rel}\t{hashlib.sha1((root / rel).read_bytes()).hexdigest()}\n".encode())
    for rel in files.train + files.val:
        st = os.stat(root / rel)
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Decoding: a thread pool. PIL releases the GIL in the JPEG decoder, but header parsing holds it,
# so threads gave 1.65x on 2 cores (measured); enough for a once-per-dataset cost.


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """(64, 64, 3) uint8 of a loaded image of any mode.

    16-bit grey ("I;16*", or "I" as some Pillow versions open 16-bit PNGs) keeps its high byte, value >> 8:
    the scaling Pillow applies to 16-bit RGB files (/257 rounded would differ by at most 1). Palette, LA,
    CMYK and the other modes go through `convert("RGB")`.
    """
    if im.mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)  # (64, 64)
        if a.min() < 0 or a.max() > 0xFFFF:
            raise DatasetError(f"{path} is a 32-bit image with values outside 0..65535; save it as an 8-bit JPEG.")
        return np.repeat((a >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        raise DatasetError(f"{path} is a floating-point image (mode F); save it as an 8-bit RGB JPEG.")
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _decode(path: Path) -> np.ndarray:
    """One checked image as (64, 64, 3) uint8."""
    try:
        with Image.open(path) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DatasetError(
                    f"{path} is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}; "
                    f"replace it with the original file ({DOWNLOAD_HINT})."
                )
            im.load()  # raises OSError on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES must stay False)
            return _to_rgb(im, path)
    except DatasetError:
        raise
    except PermissionError as e:
        raise _denied(path) from e
    except (OSError, SyntaxError, ValueError) as e:  # ValueError: a mode convert() does not know
        raise DatasetError(
            f"{path} cannot be decoded ({e}); replace it with the original file ({DOWNLOAD_HINT})."
        ) from e


def _decode_into(out: np.ndarray, paths: list[Path]) -> None:
    """Decode `paths` into `out` (len(paths), 64, 64, 3) uint8."""
    for i, path in enumerate(paths):
        out[i] = _decode(path)


def _decode_all(root: Path, rel_paths: list[str], workers: int, chunk: int = 256) -> torch.Tensor:
    """Decode every image with a thread pool; returns (N, 64, 64, 3) uint8."""
    out = np.empty((len(rel_paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # (N, 64, 64, 3) uint8
    paths = [root / p for p in rel_paths]
    starts = range(0, len(paths), chunk)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_decode_into, out[s : s + chunk], paths[s : s + chunk]) for s in starts]
        try:
            for f in futures:
                f.result()
        finally:
            for f in futures:
                f.cancel()  # stop queued chunks after the first error
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Cache


def default_cache_dir(root: Path) -> Path:
    """`<root>/.mixnb-cache` if writable, else `$MIXNB_CACHE` (default `~/.cache/mixnb`)."""
    local = root / ".mixnb-cache"
    if os.access(local if local.is_dir() else root, os.W_OK):
        return local
    return Path(os.environ.get("MIXNB_CACHE", Path.home() / ".cache" / "mixnb"))


def _cache_path(root: Path, cache_dir: Path) -> Path:
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return cache_dir / f"tinyimagenet-{root.name}-{tag}.pt"


def _load_cache(path: Path, key: str) -> dict | None:
    """The cached dict if it exists, loads and matches `key`; None otherwise."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a corrupt or foreign file is rebuilt, never trusted
        return None
    return blob if isinstance(blob, dict) and blob.get("key") == key else None


def _save_cache(blob: dict, path: Path) -> None:
    """Write the cache atomically; a full disk fails the load, an unwritable folder only warns."""
    try:
        atomic_torch_save(blob, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the message names the path and the fix
            raise
        warnings.warn(f"could not write the dataset cache {path} ({e}); set MIXNB_CACHE to a writable folder")


# ---------------------------------------------------------------------------------------------
# Entry point


def _resolve_root(root: str | Path) -> Path:
    """The absolute, resolved dataset folder; a broken link on the way fails naming the link."""
    path = Path(root).expanduser().absolute()
    for p in reversed([path, *path.parents]):
        _check_link(p)
    path = path.resolve()
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder; {DOWNLOAD_HINT}.")
    return path


def load_tiny_imagenet(
    root: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> TinyImageNetTensors:
    """Validate, decode (once, on all cores) and cache a `tiny-imagenet-200` folder.

    Args:
        root: the folder holding `wnids.txt`, `train/` and `val/`.
        cache_dir: where the decoded cache lives; None = `default_cache_dir(root)`.
        workers: decode threads; None = os.cpu_count().

    Raises:
        DatasetError: naming the offending path and the fix; no cache file is written.
        OSError: the disk is full while writing the cache (the message names the file).
    """
    root = _resolve_root(root)
    wnids = _read_wnids(root)
    words = _read_words(root, wnids)
    files = _list_files(root, wnids)
    key = _manifest_key(root, files)
    path = _cache_path(root, Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root))
    remove_stale_temps(path)  # a killed build leaves a ~1.35 GB temp beside the cache

    blob = _load_cache(path, key)
    if blob is None:
        workers = workers or os.cpu_count() or 1
        blob = {
            "key": key,
            "x_train": _decode_all(root, files.train, workers),  # (N, 64, 64, 3) uint8
            "y_train": torch.tensor(files.y_train, dtype=torch.int64),  # (N,)
            "x_val": _decode_all(root, files.val, workers),  # (M, 64, 64, 3) uint8
            "y_val": torch.tensor(files.y_val, dtype=torch.int64),  # (M,)
            "val_boxes": torch.tensor(files.val_boxes, dtype=torch.int16),  # (M, 4)
            "wnids": wnids,
            "words": words,
            "root": str(root),
        }
        _save_cache(blob, path)
    return TinyImageNetTensors(
        x_train=blob["x_train"],
        y_train=blob["y_train"],
        x_val=blob["x_val"],
        y_val=blob["y_val"],
        val_boxes=blob["val_boxes"],
        wnids=wnids,
        words=words,
        root=str(root),
        manifest_key=key,
    )
