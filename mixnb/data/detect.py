"""Tell which form a dataset folder holds, from its file names, and read it: `load_dataset(root)`.

The forms (docs/datasets.md), tried in this order, each read by its own module:
- "tiny-imagenet-parquet": train-*.parquet and valid-*.parquet, or a hub cache folder (mixnb.data.parquet);
- "tiny-imagenet-zip", "tiny-imagenet-val-folders": wnids.txt, train/, val/ (mixnb.data.tinyimagenet);
- "cifar-100-python": train, test, meta (mixnb.data.cifar);
- "imagenet64-pickle", "imagenet64-npz": train_data_batch_1..10 and val_data (mixnb.data.imagenet64).
TFDS's `downsampled_imagenet` is refused with its reason; any other folder fails with one line listing the forms.
"""

from __future__ import annotations

from pathlib import Path

from mixnb.data import cifar, imagenet64, parquet, tinyimagenet
from mixnb.data.base import DatasetError, ImageTensors, resolve_root

HINT = "point MIXNB_DATA at the dataset folder (docs/datasets.md describes the forms mixnb reads)"
KNOWN = ("a tiny-imagenet-200 folder (wnids.txt, train/, val/)",
         "Tiny-ImageNet's Hugging Face parquet files (train-*.parquet, valid-*.parquet) or their hub cache folder",
         "cifar-100-python (train, test, meta)",
         "Downsampled ImageNet 64x64 batches (train_data_batch_1..10, val_data; pickles or .npz)")
TFDS_REFUSAL = ("TFDS downsampled_imagenet: unlabelled, a different set (van den Oord et al.'s PixelRNN images, not "
                "Chrabaszcz et al.'s labelled ImageNet 64x64, arXiv:1707.08819); use the Imagenet64 batches "
                "(https://image-net.org/download-images) instead")


def _is_tfds_downsampled_imagenet(root: Path) -> bool:
    """A TFDS folder of downsampled_imagenet: named so, or holding a dataset_info.json (up to 3 levels down) that
    names it."""
    if "downsampled_imagenet" in root.parts:
        return True
    infos = (info for depth in range(4) for info in root.glob("/".join(["*"] * depth + ["dataset_info.json"])))
    return any("downsampled_imagenet" in info.read_text(errors="replace") for info in infos)


def detect_form(root: str | Path) -> str:
    """The form of the dataset at `root`, from the names of its files.

    Raises:
        DatasetError: TFDS's downsampled_imagenet (with the reason), or no form mixnb reads (listing them).
    """
    root = resolve_root(root, HINT)
    for reader in (parquet, tinyimagenet, cifar, imagenet64):
        if form := reader.detect(root):
            return form
    if _is_tfds_downsampled_imagenet(root):
        raise DatasetError(f"{root} holds {TFDS_REFUSAL}.")
    raise DatasetError(f"{root} holds none of the dataset forms mixnb reads: {'; '.join(KNOWN)}; {HINT}.")


def load_dataset(root: str | Path, *, cache_dir: str | Path | None = None, workers: int | None = None) -> ImageTensors:
    """Detect the form of the dataset at `root`, validate it, decode it once and cache it (mixnb.data.base).

    Args:
        root: the dataset folder, in any form `detect_form` knows.
        cache_dir: where the decoded cache lives; None = `mixnb.data.base.default_cache_dir(root)`.
        workers: JPEG decode threads (Tiny-ImageNet's forms); None = os.cpu_count().

    Raises:
        DatasetError: naming the offending path and the fix; no cache file is written.
    """
    form = detect_form(root)
    if form == parquet.FORM:
        return parquet.load_parquet(root, cache_dir=cache_dir, workers=workers)
    if form.startswith("tiny-imagenet"):
        return tinyimagenet.load_tiny_imagenet(root, cache_dir=cache_dir, workers=workers)
    if form == cifar.FORM:
        return cifar.load_cifar100(root, cache_dir=cache_dir)
    return imagenet64.load_imagenet64(root, cache_dir=cache_dir)
