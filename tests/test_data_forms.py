"""Dataset forms and identity: every reader on a small generated replica of its form, the form detection, the
content key that says what the data is (a run's dataset identity) and the old stat-keyed records it maps."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import CPU, make_tiny, pristine, tiny, write_params, zip_data  # tests/helpers.py, on sys.path
from helpers import old_dataset_record as _old_record
from mixnb import runs
from mixnb.__main__ import main
from mixnb.config import RunConfig
from mixnb.data import DatasetError, ImageTensors, detect_form, load_dataset, load_tiny_imagenet
from mixnb.data.replicas import FORMS, planar, write_pickle, write_replica
from mixnb.runs import RunConflict, check_identity, dataset_differences, dataset_record

TENSORS = ("x_train", "y_train", "x_val", "y_val")


def same_tensors(a: ImageTensors, b: ImageTensors) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in TENSORS) and a.wnids == b.wnids


# ---------------------------------------------------------------------------------------------
# Identity: the content key says what the data is; the stat key only keys the cache


def test_chmod_keeps_the_content_key_and_the_run_identity(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    identity = write_params(tmp_path / "run", dataset_record(first))
    for image in tiny.rglob("*.JPEG"):
        image.chmod(0o444)  # a new ctime: the stat key changes, the cache is rebuilt
    again = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert again.manifest_key != first.manifest_key and again.content_key == first.content_key
    assert RunConfig(profile="test").identity(CPU, dataset_record(again)) == identity
    check_identity(tmp_path / "run", identity)


def test_regenerating_the_sample_after_deleting_the_cache_keeps_the_content_key(tmp_path: Path) -> None:
    root, cache = tmp_path / "sample-test", tmp_path / "cache"
    first = load_tiny_imagenet(make_tiny(root), cache_dir=cache)
    write_params(tmp_path / "run", dataset_record(first))
    shutil.rmtree(root)
    shutil.rmtree(cache)  # rm -rf $MIXNB_CACHE: the sample set and its cache are made again, byte for byte
    again = load_tiny_imagenet(make_tiny(root), cache_dir=cache)
    assert again.content_key == first.content_key and same_tensors(again, first)
    assert dataset_record(again) == dataset_record(first)
    check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(again)))


def test_a_copy_elsewhere_is_the_same_dataset(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    write_params(tmp_path / "run", dataset_record(first))
    copy = load_tiny_imagenet(shutil.copytree(tiny, tmp_path / "elsewhere" / "copy"), cache_dir=tmp_path / "cache")
    assert copy.root != first.root and copy.content_key == first.content_key
    check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(copy)))


def test_changed_pixels_change_the_content_key_and_the_run_is_refused(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    write_params(tmp_path / "run", dataset_record(first))
    image = next((tiny / "train").rglob("*.JPEG"))
    Image.new("RGB", (64, 64), (200, 0, 0)).save(image, format="JPEG")
    changed = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    assert changed.content_key != first.content_key
    with pytest.raises(RunConflict, match="dataset.content_key"):
        check_identity(tmp_path / "run", RunConfig(profile="test").identity(CPU, dataset_record(changed)))


def test_a_relabelled_image_changes_the_content_key(tiny: Path, tmp_path: Path) -> None:
    first = load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")
    ann = tiny / "val" / "val_annotations.txt"
    lines = [line.split("\t") for line in ann.read_text().splitlines()]
    other = next(i for i, f in enumerate(lines) if f[1] != lines[0][1])
    lines[0][1], lines[other][1] = lines[other][1], lines[0][1]  # same counts per class, two labels swapped
    ann.write_text("".join("\t".join(f) + "\n" for f in lines))
    assert load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache").content_key != first.content_key


# ---------------------------------------------------------------------------------------------
# tiny-imagenet-200 with val in class folders


def _val_into_class_folders(root: Path, *, images_dir: bool, boxes: bool, under_images: bool = False) -> None:
    """What prep scripts do: val/images/* into val/<wnid>/[images/], optional <wnid>_boxes.txt, train boxes gone."""
    ann = [line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
    classes_at = root / "val" / "images" if under_images else root / "val"
    for name, wnid, *box in ann:
        folder = classes_at / wnid / "images" if images_dir else classes_at / wnid
        folder.mkdir(parents=True, exist_ok=True)
        (root / "val" / "images" / name).rename(folder / name)
        if boxes:
            with open(classes_at / wnid / f"{wnid}_boxes.txt", "a") as f:
                f.write("\t".join([name, *box]) + "\n")
    (root / "val" / "val_annotations.txt").unlink()
    for boxes_file in (root / "train").glob("*/*_boxes.txt"):
        boxes_file.unlink()


@pytest.mark.parametrize("images_dir, boxes, under_images", [(False, True, False), (True, True, False),
                                                             (False, False, False), (False, True, True)],
                         ids=["flat_boxes", "images_boxes", "flat_no_boxes", "under_val_images"])
def test_val_in_class_folders_reads_as_the_zip(tiny: Path, tmp_path: Path, zip_data: ImageTensors,
                                               images_dir: bool, boxes: bool, under_images: bool) -> None:
    _val_into_class_folders(tiny, images_dir=images_dir, boxes=boxes, under_images=under_images)
    assert detect_form(tiny) == "tiny-imagenet-val-folders"
    data = load_dataset(tiny, cache_dir=tmp_path / "cache")
    assert data.form == "tiny-imagenet-val-folders" and data.has_boxes == boxes and data.label_order == "wnids.txt"
    assert same_tensors(data, zip_data) and data.content_key == zip_data.content_key  # natural order: val_0, val_1, ...
    whole = torch.tensor([[0, 0, 63, 63]] * len(data.y_val), dtype=torch.int16)
    assert torch.equal(data.val_boxes, zip_data.val_boxes if boxes else whole)


def test_val_class_folders_missing_one_boxes_file_is_named(tiny: Path, tmp_path: Path) -> None:
    _val_into_class_folders(tiny, images_dir=False, boxes=True)
    gone = next((tiny / "val").glob("*/*_boxes.txt"))
    gone.unlink()
    with pytest.raises(DatasetError, match="is missing, while other val class folders hold their boxes file") as err:
        load_dataset(tiny, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(str(gone))


def test_unequal_val_counts_are_refused_as_a_resplit(tiny: Path, tmp_path: Path) -> None:
    ann = tiny / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    first = lines[0].split("\t")[1]
    lines = [line for line in lines if line.split("\t")[1] != first or line == lines[0]]  # one val image of class 0
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"is not the official split: its val set holds 2 images of .* but 1 of"):
        load_tiny_imagenet(tiny, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Hugging Face parquet


def _rows(root: Path) -> dict[str, list[tuple[bytes, str, int]]]:
    """(JPEG bytes, path, label) of the zip folder's images in the zip reader's order, train and val."""
    wnids = (root / "wnids.txt").read_text().split()
    train = [(p.read_bytes(), p.name, k) for k, w in enumerate(wnids)
             for p in sorted((root / "train" / w / "images").iterdir())]
    ann = [line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
    val = [((root / "val" / "images" / name).read_bytes(), name, wnids.index(wnid)) for name, wnid, *_ in ann]
    return {"train": train, "valid": val}


def write_parquet(folder: Path, rows: dict[str, list[tuple[bytes, str, int]]], names: list[str] | None) -> Path:
    """The zh-plus/tiny-imagenet layout: data/{train,valid}-00000-of-00001.parquet; class names in the schema
    metadata as `datasets` writes them, or none."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = None if names is None else {b"huggingface": json.dumps(
        {"info": {"features": {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}})}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        table = pa.table({"image": pa.array([{"bytes": b, "path": p} for b, p, _ in split_rows], type=image),
                          "label": pa.array([y for _, _, y in split_rows], type=pa.int64())})
        pq.write_table(table.replace_schema_metadata(meta), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize("metadata", [True, False], ids=["hf_metadata", "no_metadata"])
def test_parquet_of_the_same_images_gives_the_zips_tensors_and_content_key(
        pristine: Path, zip_data: ImageTensors, tmp_path: Path, metadata: bool) -> None:
    """The sample's wnids.txt is sorted, so both forms have the same class order."""
    assert zip_data.wnids == sorted(zip_data.wnids)
    root = write_parquet(tmp_path / "hf", _rows(pristine), zip_data.wnids if metadata else None)
    assert detect_form(root) == "tiny-imagenet-parquet"
    data = load_dataset(root, cache_dir=tmp_path / "cache")
    assert data.form == "tiny-imagenet-parquet" and not data.has_boxes
    assert data.label_order == ("from-metadata" if metadata else "sorted-wnids")
    assert same_tensors(data, zip_data) and data.content_key == zip_data.content_key
    assert dataset_differences(dataset_record(zip_data), dataset_record(data), lambda: None) == {}
    assert torch.equal(data.val_boxes, torch.tensor([[0, 0, 63, 63]] * 6, dtype=torch.int16))


def test_parquet_in_a_hub_cache_folder_is_found(pristine: Path, zip_data: ImageTensors, tmp_path: Path) -> None:
    hub = tmp_path / "datasets--zh-plus--tiny-imagenet"
    write_parquet(hub / "snapshots" / "7d7dcc5", _rows(pristine), zip_data.wnids)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("7d7dcc5")
    assert same_tensors(load_dataset(hub, cache_dir=tmp_path / "cache"), zip_data)


def test_parquet_metadata_order_is_followed(pristine: Path, zip_data: ImageTensors, tmp_path: Path) -> None:
    """Class names listed in another order, labels indexing them: read as they say."""
    names = zip_data.wnids[::-1]
    rows = {s: [(b, p, len(names) - 1 - y) for b, p, y in r] for s, r in _rows(pristine).items()}
    data = load_dataset(write_parquet(tmp_path / "hf", rows, names), cache_dir=tmp_path / "cache")
    assert data.wnids == names and data.label_order == "from-metadata"
    assert [data.wnids[y] for y in data.y_train] == [zip_data.wnids[y] for y in zip_data.y_train]
    assert data.content_key != zip_data.content_key  # another class order: another run


def test_parquet_labels_in_another_order_without_metadata_are_refused(pristine: Path, tmp_path: Path) -> None:
    """The trap: labels in wnids.txt-like (unsorted) order, no class names; the file names give it away."""
    rows = {s: [(b, p, 2 - y) for b, p, y in r] for s, r in _rows(pristine).items()}
    root = write_parquet(tmp_path / "hf", rows, None)
    with pytest.raises(DatasetError, match=r"row 0 is n90000000_0\.JPEG, but its label 2 is n90000002 in the "
                                           r"sorted-wnids class order: the labels follow another order"):
        load_dataset(root, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_parquet_without_any_class_names_is_refused(pristine: Path, tmp_path: Path) -> None:
    rows = {s: [(b, "", y) for b, _, y in r] for s, r in _rows(pristine).items()}
    with pytest.raises(DatasetError, match="put the official wnids.txt in that folder"):
        load_dataset(write_parquet(tmp_path / "hf", rows, None), cache_dir=tmp_path / "cache")
    (tmp_path / "hf" / "wnids.txt").write_text("n90000002\nn90000000\nn90000001\n")  # sorted by the reader
    data = load_dataset(tmp_path / "hf", cache_dir=tmp_path / "cache")
    assert data.wnids == ["n90000000", "n90000001", "n90000002"] and data.label_order == "sorted-wnids"


def test_parquet_val_drawn_from_train_is_refused(pristine: Path, zip_data: ImageTensors, tmp_path: Path) -> None:
    rows = _rows(pristine)
    rows["valid"] = [r for r in rows["train"] if r[1].endswith(("_0.JPEG", "_1.JPEG"))]  # 2 per class, as val
    with pytest.raises(DatasetError, match="6 of its 6 val images are byte-identical to train images"):
        load_dataset(write_parquet(tmp_path / "hf", rows, zip_data.wnids), cache_dir=tmp_path / "cache")


def _solid_jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (i % 256, i // 256, 7)).save(out, format="JPEG")
    return out.getvalue()


def test_parquet_resplit_of_tiny_imagenet_is_refused(tmp_path: Path) -> None:
    """200 classes at 4 train / 1 val each (80k/20k-like): not the official 500 / 50; refused before decoding."""
    names = [f"n{k:08d}" for k in range(200)]
    jpeg = _solid_jpeg(0)
    rows = {"train": [(jpeg, f"{w}_{i}.JPEG", k) for k, w in enumerate(names) for i in range(4)],
            "valid": [(jpeg, f"val_{k}.JPEG", k) for k in range(200)]}
    with pytest.raises(DatasetError, match=r"4 train / 1 val images per class, where the official split has 500 / 50"):
        load_dataset(write_parquet(tmp_path / "hf", rows, names), cache_dir=tmp_path / "cache")


def test_parquet_without_image_bytes_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    for split in ("train", "valid"):
        pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "hf" / f"{split}-0.parquet")
    with pytest.raises(DatasetError, match=r"has the columns \['img', 'label'\], but a Tiny-ImageNet parquet"):
        load_dataset(tmp_path / "hf", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# CIFAR-100 and Downsampled ImageNet 64x64 (CIFAR's pickle format)


def _images(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _pickle(path: Path, record: dict, *, byte_keys: bool = False) -> None:
    write_pickle(path, {k.encode() if byte_keys else k: v for k, v in record.items()})


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """cifar-100-python with 5 train and 3 test images; returns the folder holding it and the images."""
    folder = tmp_path / "data" / "cifar-100-python"
    x = {"train": _images(5, 32, 0), "test": _images(3, 32, 1)}
    for split, labels in (("train", [0, 99, 5, 5, 42]), ("test", [1, 2, 3])):
        _pickle(folder / split, {"filenames": ["f.png"] * len(labels), "batch_label": split,
                                 "fine_labels": labels, "coarse_labels": [0] * len(labels), "data": planar(x[split])})
    _pickle(folder / "meta", {"fine_label_names": [f"class_{k}" for k in range(100)],
                              "coarse_label_names": [f"super_{k}" for k in range(20)]})
    return folder.parent, x


@pytest.mark.parametrize("at", ["parent", "folder"])
def test_cifar100_python_is_read(cifar: tuple[Path, dict], tmp_path: Path, at: str) -> None:
    parent, x = cifar
    root = parent if at == "parent" else parent / "cifar-100-python"
    assert detect_form(root) == "cifar-100-python"
    data = load_dataset(root, cache_dir=tmp_path / "cache")
    assert data.form == "cifar-100-python" and data.image_size == 32 and data.label_order == "meta"
    assert torch.equal(data.x_train, torch.from_numpy(x["train"]))
    assert torch.equal(data.x_val, torch.from_numpy(x["test"]))
    assert data.y_train.tolist() == [0, 99, 5, 5, 42] and data.y_val.tolist() == [1, 2, 3]
    assert data.wnids[99] == "class_99" and data.words["class_1"] == "class 1" and not data.has_boxes
    assert data.val_boxes.tolist() == [[0, 0, 31, 31]] * 3


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(cifar: tuple[Path, dict], tmp_path: Path) -> None:
    parent, _ = cifar
    (parent / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": _Payload()}))
    with pytest.raises(DatasetError, match=r"cannot be read as a CIFAR-format pickle \(it holds a posix.system"):
        load_dataset(parent, cache_dir=tmp_path / "cache")


def test_cifar_label_out_of_range_names_the_file(cifar: tuple[Path, dict], tmp_path: Path) -> None:
    parent, x = cifar
    _pickle(parent / "cifar-100-python" / "test", {"data": planar(x["test"]), "fine_labels": [1, 100, 3]})
    with pytest.raises(DatasetError, match=r"test `fine_labels` holds 100 at 1, outside 0..99"):
        load_dataset(parent, cache_dir=tmp_path / "cache")


def _imagenet64(folder: Path, kind: str, *, byte_keys: bool = False, split_folders: bool = False) -> dict:
    """train_data_batch_1..10 (2 images each) and val_data (3 images), as pickles or .npz; returns the arrays."""
    rng = np.random.default_rng(0)
    batches = {f"train_data_batch_{k}": (_images(2, 64, k), rng.integers(1, 1001, 2)) for k in range(1, 11)}
    batches["val_data"] = (_images(3, 64, 11), np.array([1, 1000, 7]))
    for name, (x, y) in batches.items():
        where = folder / ("val" if name == "val_data" else f"part{1 + (int(name.split('_')[-1]) > 5)}") \
            if split_folders else folder
        record = {"data": planar(x), "labels": [int(v) for v in y]}
        if name != "val_data":
            record["mean"] = planar(x).mean(0)
        if kind == "npz":
            where.mkdir(parents=True, exist_ok=True)
            np.savez(where / f"{name}.npz", **record)
        else:
            _pickle(where / name, record, byte_keys=byte_keys)
    return batches


@pytest.mark.parametrize("kind, byte_keys, split_folders", [("pickle", False, False), ("pickle", True, True),
                                                            ("npz", False, True)],
                         ids=["pickle_str_keys", "pickle_bytes_keys_in_part_folders", "npz"])
def test_imagenet64_batches_are_read(tmp_path: Path, kind: str, byte_keys: bool, split_folders: bool) -> None:
    batches = _imagenet64(tmp_path / "in64", kind, byte_keys=byte_keys, split_folders=split_folders)
    assert detect_form(tmp_path / "in64") == f"imagenet64-{kind}"
    data = load_dataset(tmp_path / "in64", cache_dir=tmp_path / "cache")
    train = [batches[f"train_data_batch_{k}"] for k in range(1, 11)]
    assert data.form == f"imagenet64-{kind}" and data.image_size == 64 and len(data.wnids) == 1000
    assert torch.equal(data.x_train, torch.from_numpy(np.concatenate([x for x, _ in train])))
    assert data.y_train.tolist() == [int(v) - 1 for _, y in train for v in y] and data.y_val.tolist() == [0, 999, 6]
    assert data.label_order == "map_clsloc-numbers" and data.wnids[0] == "1"


def test_imagenet64_pickle_and_npz_agree_and_map_clsloc_names_the_classes(tmp_path: Path) -> None:
    _imagenet64(tmp_path / "pickle", "pickle")
    _imagenet64(tmp_path / "npz", "npz")
    clsloc = "".join(f"n{k:08d} {k} name_{k}\n" for k in range(1000, 0, -1))  # any line order
    for form in ("pickle", "npz"):
        (tmp_path / form / "map_clsloc.txt").write_text(clsloc)
    a, b = (load_dataset(tmp_path / form, cache_dir=tmp_path / "cache") for form in ("pickle", "npz"))
    assert same_tensors(a, b) and a.content_key == b.content_key and a.form != b.form
    assert a.wnids[:2] == ["n00000001", "n00000002"] and a.words["n00000002"] == "name_2"
    assert a.label_order == "map_clsloc.txt"


def test_imagenet64_missing_batches_are_listed(tmp_path: Path) -> None:
    _imagenet64(tmp_path / "in64", "npz")
    for k in (6, 7):
        (tmp_path / "in64" / f"train_data_batch_{k}.npz").unlink()
    with pytest.raises(DatasetError, match=r"lacks train_data_batch_6.npz, train_data_batch_7.npz \(it holds 9 of"):
        load_dataset(tmp_path / "in64", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Detection


def test_tfds_downsampled_imagenet_is_refused_with_the_reason(tmp_path: Path) -> None:
    version = tmp_path / "tfds" / "downsampled_imagenet" / "64x64" / "2.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text(json.dumps({"name": "downsampled_imagenet", "version": "2.0.0"}))
    (version / "downsampled_imagenet-train.tfrecord-00000-of-00032").write_bytes(b"")
    for root in (tmp_path / "tfds", version):
        with pytest.raises(DatasetError, match="TFDS downsampled_imagenet: unlabelled, a different set"):
            load_dataset(root)


def test_an_unknown_folder_lists_the_forms(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "photos")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'photos'} holds none of the dataset forms")
    assert all(form in message for form in ("wnids.txt", "train-*.parquet", "cifar-100-python", "train_data_batch_1"))


def test_prepare_says_what_it_found(pristine: Path, zip_data: ImageTensors, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    root = write_parquet(tmp_path / "hf", _rows(pristine), zip_data.wnids)
    assert main(["prepare", str(root)]) == 0
    out = capsys.readouterr().out
    for line in ("tiny-imagenet-parquet, ok", "3 (label order: from-metadata)", "12 train, 6 val, 64x64",
                 "val boxes    absent (whole images)", f"content key  {zip_data.content_key}",
                 f"cache        {root / '.mixnb-cache'}"):
        assert line in out


def test_an_unfinished_run_recorded_before_the_content_key_resumes(tmp_path: Path) -> None:
    """fit compares its checkpoint's identity as check_identity does: an old dataset record in the checkpoint and
    params.json maps to today's data and the run resumes (it was refused as "written for another run")."""
    from mixnb.train import fit

    cfg = RunConfig(method="vanilla", profile="test", epochs=1, device="cpu")
    fit(cfg, tmp_path, progress="none")
    data = runs.load_data(cfg)
    (tmp_path / "summary.json").unlink()  # unfinished again
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["identity"]["dataset"] = _old_record(data)
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    params = json.loads((tmp_path / "params.json").read_text())
    params["identity"]["dataset"] = _old_record(data)
    (tmp_path / "params.json").write_text(json.dumps(params))
    assert fit(cfg, tmp_path, progress="none")["epochs"] == 1  # resumed at its end, not refused


def test_every_replica_reads_as_its_form_and_the_tiny_forms_share_one_content_key(tmp_path: Path) -> None:
    sample = {"num_classes": 3, "train_per_class": 10, "val_per_class": 2}
    read = {form: load_dataset(write_replica(form, tmp_path / form, **sample), cache_dir=tmp_path / f"cache-{form}")
            for form in FORMS}
    forms = {form: data.form for form, data in read.items()}
    assert forms == {"zip": "tiny-imagenet-zip", "val-class-folders": "tiny-imagenet-val-folders",
                     "hf-parquet": "tiny-imagenet-parquet", "cifar-100-python": "cifar-100-python",
                     "imagenet64-npz": "imagenet64-npz", "imagenet64-pickle": "imagenet64-pickle"}
    tiny = read["zip"]
    for form in ("val-class-folders", "hf-parquet"):
        assert read[form].content_key == tiny.content_key and same_tensors(read[form], tiny)
    assert read["imagenet64-npz"].content_key == read["imagenet64-pickle"].content_key
    assert torch.equal(read["imagenet64-npz"].x_train, tiny.x_train)
    assert read["imagenet64-npz"].y_val.tolist() == tiny.y_val.tolist() and len(read["imagenet64-npz"].wnids) == 1000
    cifar = read["cifar-100-python"]
    assert cifar.image_size == 32 and cifar.y_train.tolist() == tiny.y_train.tolist() and len(cifar.wnids) == 100
    blocks = tiny.x_train.view(-1, 32, 2, 32, 2, 3).double().mean((2, 4))  # the 64-px images, 2x2-averaged
    assert torch.equal(cifar.x_train, blocks.round().to(torch.uint8))
    with pytest.raises(FileExistsError, match="not empty"):
        write_replica("hf-parquet", tmp_path / "hf-parquet", **sample)
    with pytest.raises(ValueError, match="needs at least 10 train images .* got 6"):
        write_replica("imagenet64-npz", tmp_path / "too-small", num_classes=3, train_per_class=2, val_per_class=1)
    with pytest.raises(ValueError, match="unknown form 'zip2'; one of zip, val-class-folders"):
        write_replica("zip2", tmp_path / "nowhere")
