"""Read a `tiny-imagenet-200` folder into uint8 tensors, validated and cached.

Layout (as the official zip http://cs231n.stanford.edu/tiny-imagenet-200.zip unpacks):
`wnids.txt` (label order), `words.txt` (wnid -> names), `train/<wnid>/images/*.JPEG`,
`val/images/*.JPEG` + `val/val_annotations.txt` (filename, wnid, x0, y0, x1, y1; tab-separated).
`test/` and `train/<wnid>/<wnid>_boxes.txt` are ignored.

Protocol: protocol.md §1.4 (PIL decode, `.convert("RGB")`, native 64x64, no resizing).
The decoded set is saved once with `torch.save`, keyed on a manifest of (path, size, mtime_ns)
of every file read, so later runs load it in about a second.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 64
IMAGE_SUFFIXES = (".jpeg", ".jpg")  # matched case-insensitively
CACHE_VERSION = 1  # bump when the cached content or its layout changes
DOWNLOAD_HINT = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it, "
    "then point MIXNB_DATA at the tiny-imagenet-200 folder"
)


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the path and the fix."""


@dataclass(frozen=True)
class TinyImageNetTensors:
    """The decoded train and val splits; labels index `wnids`."""

    x_train: torch.Tensor  # (N, 64, 64, 3) uint8, CPU
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor  # (M, 64, 64, 3) uint8
    y_val: torch.Tensor  # (M,) int64
    wnids: list[str]  # class order = wnids.txt order
    words: dict[str, str]  # wnid -> human-readable name
    root: str


@dataclass(frozen=True)
class _FileList:
    """Every file the reader uses, relative to the root, with the labels of the images."""

    train: list[str]
    y_train: list[int]
    val: list[str]
    y_val: list[int]
    meta: list[str]  # text files that define the labels


# ---------------------------------------------------------------------------------------------
# Listing and validation (cheap: text files and directory entries only)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise DatasetError(f"{path} is missing; {DOWNLOAD_HINT}.")
    wnids = _read_lines(path)
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path} must list distinct wnids, one per line; {DOWNLOAD_HINT}.")
    return wnids


def _read_words(root: Path, wnids: list[str]) -> dict[str, str]:
    """wnid -> names from words.txt; wnids it does not cover (or a missing file) map to themselves."""
    names: dict[str, str] = {}
    path = root / "words.txt"
    if path.is_file():
        for line in path.read_text().splitlines():
            wnid, _, name = line.partition("\t")
            names[wnid.strip()] = name.strip()
    return {w: names.get(w) or w for w in wnids}


def _image_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES))


def _list_files(root: Path, wnids: list[str]) -> _FileList:
    """Check the folder structure and list the images with their labels."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"{train_dir} is missing; {DOWNLOAD_HINT}.")
    found = {e.name for e in os.scandir(train_dir) if e.is_dir()}
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

    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DatasetError(f"{ann} is missing; {DOWNLOAD_HINT}.")
    index = {w: i for i, w in enumerate(wnids)}
    present = set(_image_names(root / "val" / "images"))
    val: list[str] = []
    y_val: list[int] = []
    absent: list[str] = []
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(
                f"{ann} line {lineno} names wnid {fields[1] if len(fields) > 1 else '?'!r}, which is not in "
                f"{root / 'wnids.txt'}; use the files from one download ({DOWNLOAD_HINT})."
            )
        if fields[0] not in present:
            absent.append(fields[0])
        val.append(f"val/images/{fields[0]}")
        y_val.append(index[fields[1]])
    if absent:
        raise DatasetError(
            f"{ann} names {len(absent)} file(s) that are not in {root / 'val' / 'images'}, "
            f"first {root / 'val' / 'images' / absent[0]}; re-extract the zip ({DOWNLOAD_HINT})."
        )
    if not val:
        raise DatasetError(f"{ann} lists no images; re-extract the zip ({DOWNLOAD_HINT}).")
    meta = ["wnids.txt", "val/val_annotations.txt"] + (["words.txt"] if (root / "words.txt").is_file() else [])
    return _FileList(train, y_train, val, y_val, meta)


def _manifest_key(root: Path, files: _FileList) -> str:
    """sha1 over (relative path, size, mtime_ns) of every file read, plus the cache version."""
    h = hashlib.sha1(f"mixnb-tinyimagenet-v{CACHE_VERSION}\n".encode())
    for rel in files.meta + files.train + files.val:
        st = os.stat(root / rel)
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Decoding: a thread pool. PIL releases the GIL in the JPEG decoder, but header parsing holds it,
# so threads gave 1.65x on 2 cores (measured); enough for a once-per-dataset cost.


def _decode_into(out: np.ndarray, paths: list[Path]) -> None:
    """Decode `paths` into `out` (len(paths), 64, 64, 3) uint8, checking each image."""
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise DatasetError(
                        f"{path} is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}; "
                        f"replace it with the original file ({DOWNLOAD_HINT})."
                    )
                im.load()  # raises OSError on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES must stay False)
                out[i] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise DatasetError(
                f"{path} cannot be decoded ({e}); replace it with the original file ({DOWNLOAD_HINT})."
            ) from e


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


def _save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Entry point


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
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; {DOWNLOAD_HINT}.")
    wnids = _read_wnids(root)
    words = _read_words(root, wnids)
    files = _list_files(root, wnids)
    key = _manifest_key(root, files)
    path = _cache_path(root, Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root))

    blob = _load_cache(path, key)
    if blob is None:
        workers = workers or os.cpu_count() or 1
        blob = {
            "key": key,
            "x_train": _decode_all(root, files.train, workers),  # (N, 64, 64, 3) uint8
            "y_train": torch.tensor(files.y_train, dtype=torch.int64),  # (N,)
            "x_val": _decode_all(root, files.val, workers),  # (M, 64, 64, 3) uint8
            "y_val": torch.tensor(files.y_val, dtype=torch.int64),  # (M,)
            "wnids": wnids,
            "words": words,
            "root": str(root),
        }
        try:
            _save_atomic(blob, path)
        except OSError as e:  # an unwritable cache costs a re-decode next time, not the run
            warnings.warn(f"could not write the dataset cache {path} ({e}); set MIXNB_CACHE to a writable folder")
    return TinyImageNetTensors(
        x_train=blob["x_train"],
        y_train=blob["y_train"],
        x_val=blob["x_val"],
        y_val=blob["y_val"],
        wnids=wnids,
        words=words,
        root=str(root),
    )
