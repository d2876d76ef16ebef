"""mixnb.data: the Tiny-ImageNet reader and cache, the sample generator, batched augmentation, DeviceLoader."""

from __future__ import annotations

import ast
import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageFile
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import mixnb

import mixnb.io
from mixnb.io import HOST
from mixnb.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    DeviceLoader,
    TinyImageNetTensors,
    batch_flip_lr,
    batch_random_resized_crop,
    load_tiny_imagenet,
    make_sample_dataset,
    normalize,
    resized_crop,
    sample_crop_boxes,
)
from mixnb.data import base, tinyimagenet
from mixnb.data.sample import COLOURS, SHAPES, class_specs


def make_tiny(path: Path, seed: int = 0) -> Path:
    """3 classes x 4 train + 2 val images: small enough to rebuild in every test."""
    return make_sample_dataset(path, seed=seed, num_classes=3, train_per_class=4, val_per_class=2)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("pristine") / "tiny")


@pytest.fixture
def tiny(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny set that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "tiny"))


@pytest.fixture(scope="module")
def sample10(tmp_path_factory: pytest.TempPathFactory) -> TinyImageNetTensors:
    """A 10-class sample set (600 train / 200 val), decoded once for the module."""
    folder = tmp_path_factory.mktemp("sample") / "sample10"
    root = make_sample_dataset(folder, seed=0, train_per_class=60, val_per_class=20)
    return load_tiny_imagenet(root, cache_dir=tmp_path_factory.mktemp("cache"))


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Reader: validation


def _first_train_image(root: Path) -> Path:
    wnid = (root / "wnids.txt").read_text().split()[0]
    return root / "train" / wnid / "images" / f"{wnid}_0.JPEG"


def _break_missing_folder(root: Path) -> tuple[Path, Path]:
    shutil.rmtree(root)
    return root, root


def _break_missing_wnids(root: Path) -> tuple[Path, Path]:
    (root / "wnids.txt").unlink()
    return root, root / "wnids.txt"


def _break_missing_annotations(root: Path) -> tuple[Path, Path]:
    (root / "val" / "val_annotations.txt").unlink()
    return root, root / "val" / "val_annotations.txt"


def _break_missing_val_image(root: Path) -> tuple[Path, Path]:
    (root / "val" / "images" / "val_1.JPEG").unlink()
    return root, root / "val" / "images" / "val_1.JPEG"


def _break_unknown_val_wnid(root: Path) -> tuple[Path, Path]:
    ann = root / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    fields = lines[0].split("\t")
    lines[0] = "\t".join([fields[0], "n99999999", *fields[2:]])
    ann.write_text("\n".join(lines) + "\n")
    return root, ann


def _break_empty_class(root: Path) -> tuple[Path, Path]:
    folder = _first_train_image(root).parent
    for p in folder.iterdir():
        p.unlink()
    return root, folder


def _break_truncated_image(root: Path) -> tuple[Path, Path]:
    path = _first_train_image(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root, path


def _break_garbage_image(root: Path) -> tuple[Path, Path]:
    path = root / "val" / "images" / "val_0.JPEG"
    path.write_bytes(b"not a jpeg at all" * 10)
    return root, path


def _break_wrong_size(root: Path) -> tuple[Path, Path]:
    path = _first_train_image(root)
    Image.new("RGB", (32, 48), (10, 20, 30)).save(path, format="JPEG")
    return root, path


def _break_extra_class(root: Path) -> tuple[Path, Path]:
    (root / "train" / "n12345678" / "images").mkdir(parents=True)
    return root, Path("n12345678")


def _break_missing_class(root: Path) -> tuple[Path, Path]:
    folder = _first_train_image(root).parents[1]
    shutil.rmtree(folder)
    return root, Path(folder.name)


BREAKS = [
    _break_missing_folder,
    _break_missing_wnids,
    _break_missing_annotations,
    _break_missing_val_image,
    _break_unknown_val_wnid,
    _break_empty_class,
    _break_truncated_image,
    _break_garbage_image,
    _break_wrong_size,
    _break_extra_class,
    _break_missing_class,
]


@pytest.mark.parametrize("breaker", BREAKS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_broken_folder_raises_one_clear_error(tiny: Path, tmp_path: Path, breaker: Callable) -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # else PIL would silently accept truncated files
    root, offending = breaker(tiny)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        load_tiny_imagenet(root, cache_dir=cache)
    assert str(offending) in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())  # no partial cache file
    assert not (root / ".mixnb-cache").exists()


def test_wrong_size_message_gives_the_size(tiny: Path, tmp_path: Path) -> None:
    _break_wrong_size(tiny)
    with pytest.raises(DatasetError, match="32x48"):
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")


def test_missing_val_image_message_counts(tiny: Path, tmp_path: Path) -> None:
    (tiny / "val" / "images" / "val_0.JPEG").unlink()
    (tiny / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"names 2 file\(s\).*val_0\.JPEG"):
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temps_are_removed_on_the_next_start(tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    name = base.cache_path(tiny.resolve(), "tinyimagenet", cache).name
    dead, live = f"{HOST}-{_dead_pid()}", f"{HOST}-{os.getpid()}"
    elsewhere = f".{name}.other_host-{_dead_pid()}.n0de2.tmp"  # another node's writer may be alive
    (cache / elsewhere).write_bytes(b"another node's temp")
    (cache / f".{name}.{dead}.k1ll3d.tmp").write_bytes(b"half a cache")
    (cache / f".{name}.{live}.wr1t1ng.tmp").write_bytes(b"a live writer's temp")
    for pid, tag in [(dead, "k1ll3d"), (live, "wr1t1ng")]:
        (tiny.parent / f".{tiny.name}.{pid}.{tag}.tmp").mkdir()
        (tiny.parent / f".{tiny.name}.{pid}.{tag}.tmp" / "wnids.txt").write_text("n90000000\n")
    load_tiny_imagenet(tiny, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == sorted(
        [f".{name}.{live}.wr1t1ng.tmp", elsewhere])
    make_tiny(tiny)  # complete already: only the stale folder goes
    temps = sorted(p.name for p in tiny.parent.iterdir() if p.name.endswith(".tmp"))
    assert temps == [f".{tiny.name}.{live}.wr1t1ng.tmp"]


def test_sample_temp_folder_is_named_for_remove_stale_temps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def record(out: Path, params: dict, gen: torch.Generator) -> None:
        seen.append(out.name)
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(mixnb.data.sample, "_write_folder", record)
    with pytest.raises(RuntimeError, match="killed"):
        make_tiny(tmp_path / "tiny")
    assert len(seen) == 1 and seen[0].startswith(f".tiny.{HOST}-{os.getpid()}.") and seen[0].endswith(".tmp")


def test_two_writers_of_one_sample_write_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CI stop 26: two pytest workers built the same sample; the second swapped out the folder the first was decoding.
    write, writes, started = mixnb.data.sample._write_folder, [], threading.Event()

    def slow(out: Path, params: dict, gen: torch.Generator) -> None:
        writes.append(out.name)
        started.set()
        time.sleep(0.3)  # the second writer arrives while this one writes
        write(out, params, gen)

    monkeypatch.setattr(mixnb.data.sample, "_write_folder", slow)
    first = threading.Thread(target=make_tiny, args=(tmp_path / "tiny",))
    first.start()
    started.wait(10)
    marker = None
    try:
        make_tiny(tmp_path / "tiny")  # waits for the first writer, then finds the sample complete
        marker = (tmp_path / "tiny" / "wnids.txt").stat().st_ino
    finally:
        first.join()
    assert len(writes) == 1
    assert (tmp_path / "tiny" / "wnids.txt").stat().st_ino == marker  # not swapped out after the second returned


LABEL_FILES = ["wnids.txt", "words.txt", "val/val_annotations.txt"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "cp1252"])
@pytest.mark.parametrize("name", LABEL_FILES)
def test_label_file_that_is_not_utf8_names_the_file(tiny: Path, tmp_path: Path, name: str, encoding: str) -> None:
    path = tiny / name
    path.write_bytes((path.read_text() + "caf\u00e9\n").encode(encoding))  # Notepad's "Unicode" / "ANSI"
    kind = "is UTF-16 text" if encoding.startswith("utf-16") else "is not UTF-8 text"
    with pytest.raises(DatasetError, match="save it as UTF-8") as err:
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(f"{path} {kind}")


def test_label_files_with_a_utf8_bom_are_read(tiny: Path, tmp_path: Path) -> None:
    plain = load_tiny_imagenet(tiny, cache_dir=tmp_path / "plain")
    for name in LABEL_FILES:
        (tiny / name).write_bytes((tiny / name).read_text().encode("utf-8-sig"))
    bom = load_tiny_imagenet(tiny, cache_dir=tmp_path / "bom")
    assert bom.wnids == plain.wnids and bom.words == plain.words
    assert torch.equal(bom.y_val, plain.y_val) and torch.equal(bom.x_val, plain.x_val)


def _link_root(tiny: Path, loop: bool) -> tuple[Path, Path]:
    link = tiny.parent / "data"
    link.symlink_to(link if loop else tiny.parent / "nowhere")
    return link, link


def _link_class(tiny: Path, loop: bool) -> tuple[Path, Path]:
    folder = _first_train_image(tiny).parents[1]
    shutil.rmtree(folder)
    folder.symlink_to(folder if loop else tiny / "gone")
    return tiny, folder


def _link_image(tiny: Path, loop: bool) -> tuple[Path, Path]:
    path = tiny / "val" / "images" / "val_1.JPEG"
    path.unlink()
    path.symlink_to(path if loop else tiny / "val" / "moved" / "val_1.JPEG")
    return tiny, path


@pytest.mark.parametrize("loop", [False, True], ids=["dangling", "loop"])
@pytest.mark.parametrize("make_link", [_link_root, _link_class, _link_image], ids=lambda f: f.__name__[1:])
def test_broken_symlink_is_named(tiny: Path, tmp_path: Path, make_link: Callable, loop: bool) -> None:
    root, link = make_link(tiny, loop)
    with pytest.raises(DatasetError, match="loops" if loop else "points nowhere") as err:
        load_tiny_imagenet(root, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(f"{link} is a symbolic link")


def _rewrite_annotations(root: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    ann = root / "val" / "val_annotations.txt"
    ann.write_text("\n".join(edit(ann.read_text().splitlines())) + "\n")
    return ann


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: [ls[0].replace("\t", " "), *ls[1:]], r"line 1 is .*must be tab-separated <image>\\t<wnid>\\t<x0>"),
        (lambda ls: [ls[0].split("\t")[0], *ls[1:]], r"line 1 is .*must be tab-separated"),
        (lambda ls: [*ls[:2], ls[2].replace("\t", "\t\t"), *ls[3:]], r"line 3 is .*tab-separated"),
        (lambda ls: [*ls[:2], "\t".join(ls[2].split("\t")[:2] + ["5", "0", "64", "9"]), *ls[3:]],
         r"line 3 has the box \(5, 0, 64, 9\)"),
        (lambda ls: [*ls, ls[1]], r"lists val_1\.JPEG twice, on lines 2 and 7"),
    ],
    ids=["spaces", "one_column", "empty_field", "box_outside", "duplicate"],
)
def test_malformed_annotation_line_is_named(tiny: Path, tmp_path: Path, edit: Callable, message: str) -> None:
    ann = _rewrite_annotations(tiny, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(str(ann))


def test_unreadable_image_says_chmod(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _first_train_image(tiny)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anyway: make open() fail as it does for everyone else
        real_open = tinyimagenet.Image.open

        def denied(fp: Path, *args: object, **kwargs: object) -> Image.Image:
            if Path(fp) == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(fp))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(tinyimagenet.Image, "open", denied)
    with pytest.raises(DatasetError) as err:
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert str(err.value) == f"{path} is not readable (permission denied); fix its permissions (chmod a+r {path})."


# ---------------------------------------------------------------------------------------------
# Reader: content and cache


def test_grayscale_and_cmyk_become_rgb(tiny: Path, tmp_path: Path) -> None:
    wnid = (tiny / "wnids.txt").read_text().split()[0]
    gray = tiny / "train" / wnid / "images" / f"{wnid}_0.JPEG"
    cmyk = tiny / "train" / wnid / "images" / f"{wnid}_1.JPEG"
    Image.open(gray).convert("L").save(gray, format="JPEG")
    Image.open(cmyk).convert("CMYK").save(cmyk, format="JPEG")
    data = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert data.x_train.shape[1:] == (64, 64, 3)
    g = data.x_train[0]  # files are sorted within a class: <wnid>_0 first
    assert torch.equal(g[..., 0], g[..., 1]) and torch.equal(g[..., 0], g[..., 2])
    assert torch.equal(g[..., 0], torch.from_numpy(np.array(Image.open(gray))))
    assert torch.equal(data.x_train[1], torch.from_numpy(np.array(Image.open(cmyk).convert("RGB"))))


@pytest.mark.parametrize("fmt, dtype", [("PNG", np.uint16), ("TIFF", np.int32)], ids=["png_I;16", "tiff_I"])
def test_16bit_grey_keeps_the_high_byte(tiny: Path, tmp_path: Path, fmt: str, dtype: type) -> None:
    path = _first_train_image(tiny)  # a PNG or TIFF under a .JPEG name: PIL goes by the content
    a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(dtype)  # 0 .. 65520
    a[0, :4] = [255, 256, 0x8080, 65535]
    Image.fromarray(a).save(path, format=fmt)
    assert Image.open(path).mode in ("I;16", "I")
    x = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache").x_train[0]  # (64, 64, 3) uint8
    expected = torch.from_numpy((a.astype(np.int64) >> 8).astype(np.uint8))
    assert x[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert all(torch.equal(x[..., c], expected) for c in range(3))


def test_palette_and_grey_alpha_become_rgb(tiny: Path, tmp_path: Path) -> None:
    wnid = (tiny / "wnids.txt").read_text().split()[0]
    pal, la = (tiny / "train" / wnid / "images" / f"{wnid}_{i}.JPEG" for i in range(2))
    rgb = np.array(Image.open(pal))
    Image.fromarray(rgb).quantize(16).save(pal, format="PNG")
    Image.fromarray(rgb).convert("LA").save(la, format="PNG")
    x = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache").x_train
    p = Image.open(pal)
    assert p.mode == "P" and Image.open(la).mode == "LA"
    palette = np.array(p.getpalette()).reshape(-1, 3)  # (colours, 3)
    assert torch.equal(x[0], torch.from_numpy(palette[np.array(p)].astype(np.uint8)))
    grey = torch.from_numpy(np.array(Image.open(la))[..., 0])  # the L channel; alpha is dropped
    assert all(torch.equal(x[1][..., c], grey) for c in range(3))


def test_val_boxes_are_kept_and_cached(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = [line.split("\t") for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines()]
    data = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert data.val_boxes.dtype == torch.int16 and data.val_boxes.shape == (6, 4)
    assert data.val_boxes.tolist() == [[int(v) for v in a[2:]] for a in ann]
    assert data.root == str(tiny.resolve()) and len(data.manifest_key) == 40
    monkeypatch.setattr(tinyimagenet, "decode_images", None)  # from the cache now
    again = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert torch.equal(again.val_boxes, data.val_boxes) and again.manifest_key == data.manifest_key


def test_labels_follow_wnids_order(tiny: Path, tmp_path: Path) -> None:
    data = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert data.wnids == (tiny / "wnids.txt").read_text().split()
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    ann = [line.split("\t")[1] for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines()]
    assert [data.wnids[i] for i in data.y_val.tolist()] == ann
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.x_val.shape == (6, 64, 64, 3)
    assert data.words[data.wnids[0]] == "red solid circle"
    first = np.array(Image.open(tiny / "val" / "images" / "val_0.JPEG"))
    assert torch.equal(data.x_val[0], torch.from_numpy(first))


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_tiny_imagenet(tiny)  # default cache dir: <root>/.mixnb-cache
    assert len(list((tiny / ".mixnb-cache").glob("*.pt"))) == 1

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(tinyimagenet, "decode_images", no_decode)
    again = load_tiny_imagenet(tiny)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_val, again.y_val)

    path = _first_train_image(tiny)
    Image.new("RGB", (64, 64), (200, 0, 0)).save(path, format="JPEG")
    with pytest.raises(AssertionError, match="decoded"):
        load_tiny_imagenet(tiny)  # the manifest changed, so it tries to decode
    monkeypatch.undo()
    changed = load_tiny_imagenet(tiny)
    assert torch.equal(changed.x_train[0], torch.from_numpy(np.array(Image.open(path))))
    assert torch.equal(changed.x_train[1:], first.x_train[1:])

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # same bytes, newer mtime
    monkeypatch.setattr(tinyimagenet, "decode_images", no_decode)
    with pytest.raises(AssertionError, match="decoded"):
        load_tiny_imagenet(tiny)


def _overwrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_cache_is_rebuilt_when_a_file_is_replaced_with_size_and_mtime_kept(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    images = sorted((tiny / "train").glob("*/images/*.JPEG"), key=lambda p: p.stat().st_size)
    small, big = images[0], images[-1]
    _overwrite_keeping_size_and_mtime(big, small.read_bytes().ljust(big.stat().st_size, b"\0"))  # JPEG ends at EOI
    ann = tiny / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    first_other = next(i for i, line in enumerate(lines) if line.split("\t")[1] != lines[0].split("\t")[1])
    a, b = lines[0].split("\t"), lines[first_other].split("\t")
    a[1], b[1] = b[1], a[1]  # swap two labels: same bytes count
    lines[0], lines[first_other] = "\t".join(a), "\t".join(b)
    _overwrite_keeping_size_and_mtime(ann, ("\n".join(lines) + "\n").encode())

    again = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert again.manifest_key != first.manifest_key
    i = sorted(str(p.relative_to(tiny)) for p in images).index(str(big.relative_to(tiny)))
    assert torch.equal(again.x_train[i], torch.from_numpy(np.array(Image.open(small))))
    assert not torch.equal(again.x_train[i], first.x_train[i])
    assert again.y_val[0] == first.y_val[first_other] and again.y_val[first_other] == first.y_val[0]


def test_full_disk_fails_naming_the_cache_file(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FullDisk:
        def __init__(self, f: object) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(mixnb.io, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    cache = tmp_path / "cache"
    path = base.cache_path(tiny.resolve(), "tinyimagenet", cache)
    with pytest.raises(OSError, match=f"no space left \\(disk full or over quota\\) while writing {path}") as err:
        load_tiny_imagenet(tiny, cache_dir=cache)
    assert err.value.errno == errno.ENOSPC and list(cache.iterdir()) == []  # no temp left


def test_corrupt_cache_is_rebuilt(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"garbage")
    assert torch.equal(load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache").x_train, first.x_train)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_file.name]  # no temp files left


def test_cache_dir_falls_back_when_root_is_read_only(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert base.default_cache_dir(tiny) == tiny / ".mixnb-cache"
    monkeypatch.setattr(base.os, "access", lambda path, mode: False)
    monkeypatch.setenv("MIXNB_CACHE", str(tmp_path / "shared-cache"))
    assert base.default_cache_dir(tiny) == tmp_path / "shared-cache"
    load_tiny_imagenet(tiny)
    assert len(list((tmp_path / "shared-cache").glob("tinyimagenet-tiny-*.pt"))) == 1


def test_boxes_files_and_test_folder_are_ignored(tiny: Path, tmp_path: Path) -> None:
    assert list((tiny / "train").glob("*/*_boxes.txt"))  # the official layout has them; the reader skips them
    (tiny / "test" / "images").mkdir(parents=True)
    (tiny / "test" / "images" / "test_0.JPEG").write_bytes(b"unlabelled, ignored")
    assert len(load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache").x_train) == 12


# ---------------------------------------------------------------------------------------------
# Sample generator


def test_sample_is_deterministic(tmp_path: Path) -> None:
    a = files_under(make_tiny(tmp_path / "a", seed=0))
    b = files_under(make_tiny(tmp_path / "b", seed=0))
    c = files_under(make_tiny(tmp_path / "c", seed=1))
    assert a == b
    assert a.keys() == c.keys() and a != c
    jpegs = [k for k in a if k.endswith(".JPEG")]
    assert all(a[k] != c[k] for k in jpegs)


def test_sample_layout_and_reuse(tiny: Path, tmp_path: Path) -> None:
    wnids = (tiny / "wnids.txt").read_text().split()
    assert wnids == ["n90000000", "n90000001", "n90000002"]
    names = sorted(p.name for p in (tiny / "train" / wnids[1] / "images").iterdir())
    assert names == [f"{wnids[1]}_{i}.JPEG" for i in range(4)]
    ann = [line.split("\t") for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines()]
    assert [a[0] for a in ann] == [f"val_{i}.JPEG" for i in range(6)] and {a[1] for a in ann} == set(wnids)
    boxes = np.array([[int(v) for v in a[2:]] for a in ann])  # x0, y0, x1, y1 inclusive
    side = boxes[:, 2:] - boxes[:, :2] + 1
    assert (boxes >= 0).all() and (boxes <= 63).all() and (side >= 10).all() and (side <= 46).all()
    assert len((tiny / "words.txt").read_text().splitlines()) > len(wnids)  # like the real words.txt

    mtime = (tiny / "wnids.txt").stat().st_mtime_ns
    assert make_tiny(tiny) == tiny and (tiny / "wnids.txt").stat().st_mtime_ns == mtime  # complete: not rewritten
    assert not [p for p in tiny.parent.iterdir() if p.name.endswith(".tmp")]  # no temp siblings left
    bigger = make_sample_dataset(tiny, seed=0, num_classes=3, train_per_class=5, val_per_class=2)
    assert len(list((bigger / "train" / wnids[0] / "images").iterdir())) == 5  # other parameters: rebuilt
    (tmp_path / "user").mkdir()
    with pytest.raises(DatasetError, match="not a generated sample"):
        make_tiny(tmp_path / "user")


def test_sample_classes_share_colours_and_shapes() -> None:
    specs = class_specs(10)
    assert len(set(specs)) == 10
    for field in range(3):
        counts = np.bincount([s[field] for s in specs])
        assert counts[counts > 0].min() >= 2
    assert len(set(class_specs(200))) == 200 and len(SHAPES) * len(COLOURS) * 4 >= 200


def test_sample_is_not_separable_by_mean_colour(sample10: TinyImageNetTensors) -> None:
    """Nearest class-mean of the per-image mean RGB: measured 20% val top-1 on the 2,000/500 set (chance 10%)."""
    m_train, m_val = sample10.x_train.float().mean((1, 2)), sample10.x_val.float().mean((1, 2))  # (N, 3)
    centres = torch.stack([m_train[sample10.y_train == k].mean(0) for k in range(10)])
    acc = (torch.cdist(m_val, centres).argmin(1) == sample10.y_val).float().mean().item()
    assert acc < 0.35


# ---------------------------------------------------------------------------------------------
# Batched RandomResizedCrop


def _tv_resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    bicubic = InterpolationMode.BICUBIC
    out = [TF.resized_crop(xi, *b.tolist(), [64, 64], interpolation=bicubic, antialias=True) for xi, b in zip(x, boxes)]
    return torch.stack(out).float()


def _pil_resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    out = []
    for xi, (top, left, h, w) in zip(x, boxes.tolist()):
        im = Image.fromarray(xi.permute(1, 2, 0).numpy()).crop((left, top, left + w, top + h))
        out.append(torch.tensor(np.asarray(im.resize((64, 64), Image.BICUBIC))).permute(2, 0, 1))
    return torch.stack(out).float()


@pytest.mark.parametrize("source", ["random", "sample"])
def test_resized_crop_matches_torchvision_and_pil(source: str, sample10: TinyImageNetTensors) -> None:
    """Per-sample error in 0..255 units over 300 crops (measured: random / sample images).

    vs torchvision v2 uint8 `resized_crop(antialias=True)`: mean 0.0074 / 0.0041, 99.9% 1, max 2.
    Held: mean < 0.02, 99.9% quantile <= 1, max <= 3.
    vs PIL `crop().resize(BICUBIC)` (the reference pipeline): mean 0.0002 / 0.0002, max 2 / 1.
    Held: mean < 0.002, max <= 2.
    """
    gen = torch.Generator().manual_seed(1)
    if source == "random":
        x = torch.randint(0, 256, (300, 3, 64, 64), generator=gen, dtype=torch.uint8)
    else:
        x = sample10.x_train[::2].permute(0, 3, 1, 2).contiguous()  # (300, 3, 64, 64) uint8
    boxes = sample_crop_boxes(len(x), 64, 64, gen=gen)
    ours = resized_crop(x, boxes)
    assert ours.dtype == torch.float32 and ours.shape == (300, 3, 64, 64)
    err = (ours - _tv_resized_crop(x, boxes)).abs()
    assert err.mean() < 0.02 and err.flatten().quantile(0.999) <= 1 and err.max() <= 3
    err = (ours - _pil_resized_crop(x, boxes)).abs()
    assert err.mean() < 0.002 and err.max() <= 2


def test_resized_crop_full_box_is_identity() -> None:
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 64, 64]] * 4)
    assert torch.equal(resized_crop(x, boxes), x.float())
    assert torch.equal(resized_crop(x.float(), boxes), x.float())


def test_crop_boxes_lie_inside_and_respect_the_law() -> None:
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 20000
    boxes = sample_crop_boxes(n, 64, 64, gen=torch.Generator().manual_seed(0), scale=scale, ratio=ratio)
    top, left, h, w = boxes.T.double()
    assert boxes.dtype == torch.int64 and boxes.shape == (n, 4)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    assert (h > 0).all() and (w > 0).all()
    # w and h are rounded, so the drawn (area, ratio) lies within half a pixel of the box.
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * 4096).all() and ((w - 0.5) * (h - 0.5) <= scale[1] * 4096).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()


def test_crop_box_distribution_matches_torchvision() -> None:
    """Means over 4,000 torchvision draws vs 20,000 of ours; tolerances are about 4 standard errors."""
    torch.manual_seed(0)  # torchvision draws from the global RNG (tests only; mixnb never does)
    img = torch.zeros(3, 64, 64)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    ref = ref.double()
    ours = sample_crop_boxes(20000, 64, 64, gen=torch.Generator().manual_seed(0)).double()

    def stats(b: torch.Tensor) -> torch.Tensor:
        top, left, h, w = b.T
        return torch.stack([(h * w / 4096).mean(), torch.log(w / h).mean(), top.mean(), left.mean(), h.mean()])

    diff = (stats(ours) - stats(ref)).abs()
    assert (diff <= torch.tensor([0.02, 0.015, 0.6, 0.6, 0.8], dtype=torch.float64)).all(), diff


@pytest.mark.parametrize("ratio", [(2.0, 3.0), (0.3, 0.5)])
def test_crop_box_fallback_is_torchvision_central_crop(ratio: tuple[float, float]) -> None:
    """No draw fits, so every sample takes the fallback: a deterministic box, compared exactly."""
    ref = T.RandomResizedCrop.get_params(torch.zeros(3, 64, 64), [1.0, 1.0], list(ratio))
    boxes = sample_crop_boxes(8, 64, 64, gen=torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=ratio)
    assert boxes.tolist() == [list(ref)] * 8


def test_batch_random_resized_crop_is_seeded() -> None:
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = batch_random_resized_crop(x, gen=torch.Generator().manual_seed(5))
    b = batch_random_resized_crop(x, gen=torch.Generator().manual_seed(5))
    c = batch_random_resized_crop(x, gen=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 3, 64, 64) and a.min() >= 0 and a.max() <= 255 and torch.equal(a, a.round())


# ---------------------------------------------------------------------------------------------
# Flip, normalisation, DeviceLoader


def test_flip_and_normalize() -> None:
    x = torch.randint(0, 256, (8, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator()
    assert torch.equal(batch_flip_lr(x, gen=gen, p=1.0), x.flip(-1))
    assert torch.equal(batch_flip_lr(x, gen=gen, p=0.0), x)
    out = normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 0.25))
    mean, std = torch.tensor([127.5, 63.75, 0.0])[:, None, None], torch.tensor([255.0, 127.5, 63.75])[:, None, None]
    expected = (x.float() - mean) / std
    assert out.dtype == torch.float32 and torch.allclose(out, expected)
    assert torch.allclose(normalize(x.float(), IMAGENET_MEAN, IMAGENET_STD), normalize(x, IMAGENET_MEAN, IMAGENET_STD))


def _images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _batches(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_reproducible_and_resumable() -> None:
    images, labels = _images(30), torch.arange(30)

    def loader(seed: int) -> DeviceLoader:
        gen = torch.Generator().manual_seed(seed)
        return DeviceLoader(images, labels, batch_size=8, device="cpu", train=True, gen=gen)

    a, b = loader(0), loader(0)
    epochs_a = [_batches(a) for _ in range(2)]
    epochs_b = [_batches(b) for _ in range(2)]
    for ea, eb in zip(epochs_a, epochs_b):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(ea, eb))
    assert not torch.equal(epochs_a[0][0][1], epochs_a[1][0][1])  # a new permutation each epoch
    assert not torch.equal(_batches(loader(1))[0][0], epochs_a[0][0][0])

    state = a.gen.get_state()  # checkpoint at an epoch boundary, then resume
    epoch = _batches(a)
    a.gen.set_state(state)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(epoch, _batches(a)))


def test_loader_eval_is_normalisation_only() -> None:
    images, labels = _images(10), torch.arange(10) % 3
    loader = DeviceLoader(images, labels, batch_size=4, device="cpu", train=False)
    batches = _batches(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])  # (10, 3, 64, 64) float32
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None] * 255, torch.tensor(IMAGENET_STD)[:, None, None] * 255
    assert x.dtype == torch.float32 and x.shape == (10, 3, 64, 64)
    assert torch.allclose(x * std + mean, images.permute(0, 3, 1, 2).float(), atol=1e-3)
    assert torch.equal(torch.cat([y for _, y in batches]), labels) and batches[0][1].dtype == torch.int64


def test_loader_batch_counts_and_layout() -> None:
    gen = torch.Generator().manual_seed(0)
    images, labels = _images(10), torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4, device="cpu", train=True, gen=gen, channels_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None] * 255, torch.tensor(IMAGENET_STD)[:, None, None] * 255
    pixels = x * std + mean  # crop output holds integers in [0, 255]
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    dropped = DeviceLoader(images, labels, batch_size=4, device="cpu", train=True, gen=gen, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == list(range(10))  # a permutation


def test_loader_flip_is_a_true_mirror() -> None:
    images = _images(64)
    loader = DeviceLoader(images, torch.arange(64), batch_size=16, device="cpu", train=True,
                          gen=torch.Generator().manual_seed(0), augment=("flip_lr",))
    source = normalize(images.permute(0, 3, 1, 2), IMAGENET_MEAN, IMAGENET_STD)  # (64, 3, 64, 64)
    flipped = []
    for x, y in loader:  # labels are the image indices
        same = (x == source[y]).flatten(1).all(1)
        mirror = (x == source[y].flip(-1)).flatten(1).all(1)
        assert (same | mirror).all()
        flipped.append(mirror)
    assert 0.2 < torch.cat(flipped).float().mean() < 0.8


def test_loader_rejects_bad_arguments() -> None:
    images, labels = _images(4), torch.arange(4)
    with pytest.raises(ValueError, match="random_resized_crop"):
        DeviceLoader(images, labels, batch_size=2, device="cpu", train=True, gen=torch.Generator(), augment=["cutout"])
    with pytest.raises(ValueError, match="gen"):
        DeviceLoader(images, labels, batch_size=2, device="cpu", train=True)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(images.float(), labels, batch_size=2, device="cpu", train=False)


# ---------------------------------------------------------------------------------------------
# Explicit randomness across the whole package

GLOBAL_RNG_CALLS = {  # torch.<name>(...) draws from the global RNG unless given generator=
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
    "bernoulli", "multinomial", "normal", "poisson",
}
IN_PLACE_SAMPLERS = {  # <tensor>.<name>(...) likewise; model init through nn.init is left to torch.manual_seed
    "uniform_", "normal_", "bernoulli_", "exponential_", "random_", "geometric_", "cauchy_", "log_normal_",
}


def _is_global_draw(node: ast.Call) -> str | None:
    """The sampler's name if `node` draws from torch's global RNG (no generator= keyword), else None."""
    func = node.func
    if not isinstance(func, ast.Attribute) or any(k.arg == "generator" for k in node.keywords):
        return None
    owner = func.value
    if func.attr in GLOBAL_RNG_CALLS and isinstance(owner, ast.Name) and owner.id == "torch":
        return f"torch.{func.attr}"
    is_init = (isinstance(owner, ast.Name) and owner.id == "init") or (
        isinstance(owner, ast.Attribute) and owner.attr == "init"
    )
    return f".{func.attr}" if func.attr in IN_PLACE_SAMPLERS and not is_init else None


def _global_rng_uses(path: Path) -> list[str]:
    """Lines of `path` that import `random`, touch numpy.random or draw from torch's global RNG."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name == "random" or a.name == "numpy.random"]
        elif isinstance(node, ast.ImportFrom):
            module, names = node.module or "", {a.name for a in node.names}
            if module in ("random", "numpy.random") or module == "numpy" and "random" in names:
                found.append(f"{where} imports from {module}")
        elif isinstance(node, ast.Attribute) and node.attr == "random" and isinstance(node.value, ast.Name):
            if node.value.id in ("np", "numpy"):
                found.append(f"{where} uses {node.value.id}.random")
        elif isinstance(node, ast.Call) and (name := _is_global_draw(node)):
            found.append(f"{where} calls {name} without generator=")
    return found


def test_no_global_rng_in_package() -> None:
    files = sorted(Path(mixnb.__file__).parent.rglob("*.py"))
    assert any(f.name == "loader.py" for f in files)
    assert [hit for f in files for hit in _global_rng_uses(f)] == []


def test_global_rng_scanner_catches_offenders(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import random\nimport numpy as np\nimport torch\n"
        "a = np.random.rand(3)\n"
        "b = torch.rand(3)\n"
        "c = torch.randint(0, 5,\n    (3,))\n"
        "d = torch.randperm(5, generator=g)\n"
        "nn.init.normal_(w, 0, 0.01)\n"
        "e = torch.empty(3).uniform_(0, 1)\n"
    )
    hits = _global_rng_uses(bad)
    assert len(hits) == 5 and not any(":7 " in h or ":8 " in h for h in hits), hits
