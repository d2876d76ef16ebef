"""Profiles: every fact that comes with a dataset's protocol, in one record per profile.

A profile fixes the data (a generated sample set, or a real dataset in any form ``mixnb.data.load_dataset`` detects),
the model width and epochs, the train pipeline on the device, the optimiser defaults, the backbones a sweep runs, the
published table its runs are compared with, the method settings that protocol changes, and its analysis settings.
``RunConfig`` resolves its ``None`` fields from here; nothing else holds a per-profile number.

- ``tiny-imagenet``: OpenMixup's Tiny-ImageNet benchmark (docs/protocol.md §1).
- ``cifar100``: OpenMixup's CIFAR-100 benchmark (docs/protocol.md §8): OpenMixup at ``69ee565`` (2022-09-10, the
  commit that published ``configs/classification/cifar100/README.md``) and HEAD ``37e1372`` agree on every value here.
- ``imagenet64``: Downsampled ImageNet 64x64 (Chrabaszcz, Loshchilov, Hutter 2017, arXiv 1707.08819) through the
  Tiny-ImageNet pipeline (docs/protocol.md §9): no published mixup table.
- ``sample`` / ``test``: generated data, CPU minutes; they prove the pipeline and reproduce nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mixnb.data.base import DatasetError, ImageTensors
from mixnb.data.loader import IMAGENET_MEAN, IMAGENET_STD
from mixnb.mixups import CIFAR100, PUBLISHED
from mixnb.mixups.puzzlemix import CIFAR_MEAN, CIFAR_STD

# Train pipelines on the device (mixnb.data.loader.AUGMENTS keys, in order):
# "rrc" = RandomResizedCrop(size, scale (0.08, 1)) + flip (OpenMixup's Tiny-ImageNet, docs/protocol.md §1.4);
# "crop-pad" = RandomCrop(32, padding=4, reflect) + flip (OpenMixup's CIFAR-100, docs/protocol.md §8.2).
PIPELINES = {"rrc": ("random_resized_crop", "flip_lr"), "crop-pad": ("random_crop_pad", "flip_lr")}
# CIFAR_MEAN/CIFAR_STD (one copy, PuzzleMix's) are also OpenMixup's CIFAR-100 normalisation
# (configs/classification/_base_/datasets/cifar100/sz32_bs100.py at 69ee565 and 37e1372: the CIFAR-10 statistics);
# training, the analysis and the galleries read a run's from RunConfig.normalisation.


@dataclass(frozen=True)
class Profile:
    """One protocol's facts. Args:
        name: the profile's name (``RunConfig.profile``, the runs/ subfolder).
        sample: the generated sample set's sizes (``mixnb.data.make_sample_dataset`` kwargs), or None = real data
            (``data=`` / ``$MIXNB_DATA``, the form detected; docs/datasets.md).
        dataset: what the data is, in words (the README and errors name it; "generated" for sample sets).
        protocol: the protocol in one line, for the report's header.
        epochs, width: defaults of ``RunConfig.epochs`` / ``width`` (64 = the papers' width).
        image_size: the side of the images, px (the crop keeps it).
        classes: classes of the real dataset (None for generated sets: their spec says).
        train_images: train images of the real dataset (None for generated sets); with ``image_size`` it scales the
            DRY_RUN estimate from Tiny-ImageNet's measured rates.
        forms: the prefix of the data forms this profile reads (``mixnb.data.load_dataset``'s ``form``).
        pipeline: "rrc" or "crop-pad" (``PIPELINES``).
        backbones: what ``make sweep`` runs when BACKBONES is unset.
        published: the key of the published table runs are compared with (``mixnb.mixups.PUBLISHED``), or None.
        batch_size, lr, momentum, weight_decay: defaults of the RunConfig fields of those names.
        mean, std: the input normalisation the reference used (0..1 units; ``RunConfig.normalisation``).
        method_args: method -> settings this protocol changes from the registry's (the published α of its table,
            FMix's mask size); explicit ``method_args`` win.
        registry_bn_groups: whether the registry's per-backbone BN groups apply (OpenMixup's Tiny RX-50 AutoMix/SAMix
            ran on 2 GPUs x 50); False: one group (the CIFAR-100 configs run 1 GPU x 100).
        analysis: ``mixnb.analysis.settings.AnalysisSettings`` kwargs for this profile.
    """

    name: str
    sample: dict[str, int] | None
    dataset: str
    protocol: str
    epochs: int
    width: int
    image_size: int
    classes: int | None
    train_images: int | None
    forms: str
    pipeline: str
    backbones: tuple[str, ...]
    published: str | None
    batch_size: int = 100
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry_bn_groups: bool = True
    analysis: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"profile {self.name}: pipeline must be one of {', '.join(PIPELINES)}, got "
                             f"{self.pipeline!r}")

    def check_data(self, data: ImageTensors) -> None:
        """Fail in one line when ``data`` is not this profile's dataset (another form or image size), naming the
        profile that reads it."""
        if data.form.startswith(self.forms) and data.image_size == self.image_size:
            return
        fits = [p.name for p in PROFILES.values() if p.sample is None and data.form.startswith(p.forms)]
        raise DatasetError(f"profile {self.name} runs on {self.dataset}, but {data.root} holds {data.form} at "
                           f"{data.image_size} px: use PROFILE={fits[0] if fits else '...'} for it, or point MIXNB_DATA "
                           f"at this profile's data")

    @property
    def reference(self) -> Profile:
        """The real protocol this profile's runs are held to: its own; Tiny-ImageNet's for the generated sets."""
        return PROFILES["tiny-imagenet"] if self.sample is not None else self

    @property
    def protocol_epochs(self) -> tuple[int, ...]:
        """The epoch counts on the protocol: the published table's budgets, else the profile's epochs."""
        return PUBLISHED[self.published].budgets if self.published else (self.epochs,)

    @property
    def augment(self) -> tuple[str, ...]:
        """The train augmentations in order (``mixnb.data.loader.AUGMENTS`` keys)."""
        return PIPELINES[self.pipeline]


# CIFAR-100's method settings: the α of OpenMixup's table (mixnb.mixups.CIFAR100, read there: one copy) and FMix's
# mask at the image's size, (32, 32) in configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py (69ee565).
_CIFAR_METHOD_ARGS: dict[str, dict[str, Any]] = {
    **{m: {"alpha": row.alpha} for m, row in CIFAR100.rows.items() if row.alpha is not None and row.implemented},
    "fmix": {"alpha": CIFAR100.rows["fmix"].alpha, "size": (32, 32)}}


# Analysis settings (mixnb.analysis.settings.AnalysisSettings):
# sample: 10 classes, 300 val images, a width-8 ResNet-18 on a 2-core CPU, two runs at once (make sweep's CPU_JOBS):
# the whole analysis in ~6 s of one core (cost.seconds; it was ~12 s at 64 / 100 / 30 images, with 2 of 13 minutes
# of make sweep + make test spent on it). FGSM/PGD-10 on a seeded 32 of the 300 images, occlusion on 50, the 16
# generated corruptions at severities 1, 3, 5 on 20 (calibration and localisation use all 300); the report gives
# each number's n and interval. 3 epochs (4 before): the sample proves the pipeline, its numbers are no finding.
# tiny-imagenet: every val image for calibration, CAM, attacks and occlusion, at most 1000 a pass (the memory model
# allows R-18 1000 and RX-50 ~145: an fp32 attack pass saves ~20 / ~138 MiB per image); the corruptions on a seeded 2,000
# (the uint8 cache is 2.0 GB for 16 corruptions x 5 severities instead of 9.8 GB for all 10,000; the mean of
# 80 cells of 2,000 images has a standard error of ~0.15 points). That is ~300k forwards and 110k forward +
# backwards per run: from BENCHMARKS.md's H100 rates (R-18 eval 0.19 s / 10k, train 6,882 img/s; RX-50 1.03 s
# / 10k and 2,485 img/s; bf16) halved for the analysis' fp32 (TF32 convs), ~45 s per R-18 run and ~2.5 min per
# RX-50 run; by FLOPs (R-18: 4.44 GFLOP forward, ~8.9 forward + input-gradient backward) 2.3 PFLOP, ~40 s at
# 60 TFLOP/s. Not measured on a GPU yet.
# cifar100: as tiny-imagenet on its 10,000 test images (a quarter of the pixels each: about a quarter of its cost).
# imagenet64: 50,000 val images: calibration and CAM on all (forwards only), attacks and occlusion on a seeded 10,000
# (5x Tiny's full val set would be ~5x its cost), corruptions on a seeded 2,000 as Tiny's. Not measured.
_TINY_ANALYSIS = {"batch_size": 1000, "corruption_images": 2000}

_TINY_PROTOCOL = ("OpenMixup's Tiny-ImageNet benchmark (SGD with momentum, per-epoch cosine, 64 px, RandomResizedCrop "
                  "(bilinear or bicubic, as the code column says) + flip, no centre crop at test; the median top-1 of "
                  "the last 10 epochs)")

PROFILES: dict[str, Profile] = {
    "tiny-imagenet": Profile(
        "tiny-imagenet", None, "Tiny-ImageNet (200 classes, 100,000 train / 10,000 val, 64 px)", _TINY_PROTOCOL,
        epochs=400, width=64, image_size=64, classes=200, train_images=100_000, forms="tiny-imagenet", pipeline="rrc",
        backbones=("resnet18", "resnext50"), published="tiny-imagenet", analysis=_TINY_ANALYSIS),
    "sample": Profile(
        "sample", {"num_classes": 10, "train_per_class": 100, "val_per_class": 30}, "generated", _TINY_PROTOCOL,
        epochs=3, width=8, image_size=64, classes=None, train_images=None, forms="tiny-imagenet", pipeline="rrc",
        backbones=("resnet18",), published=None,
        analysis={"batch_size": 64, "attack_images": 32, "occlusion_images": 50, "corruption_images": 20,
                  "corruption_severities": (1, 3, 5)}),
    "test": Profile(
        "test", {"num_classes": 4, "train_per_class": 16, "val_per_class": 8}, "generated", _TINY_PROTOCOL,
        epochs=2, width=8, image_size=64, classes=None, train_images=None, forms="tiny-imagenet", pipeline="rrc",
        backbones=("resnet18",), published=None,
        analysis={"batch_size": 64, "attack_images": 16, "pgd_steps": 3, "occlusion_images": 16,
                  "corruption_images": 8, "corruption_severities": (1, 5), "gallery_images": 4}),
    # OpenMixup's CIFAR-100 configs (docs/protocol.md §8; 69ee565 and 37e1372 alike): _base_/datasets/cifar100/
    # sz32_bs100.py: RandomCrop(32, padding=4, padding_mode="reflect") + RandomHorizontalFlip, 1 GPU x 100;
    # cifar100/mixups/basic/{r18,rx50}_mixups_CE_none.py: SGD lr 0.1, momentum 0.9, weight_decay 1e-4 (RX-50's comment:
    # "adjust wd={1e-4, 5e-4} for mixup methods"), CosineAnnealing min_lr 0 (AutoMix/SAMix 0.05: the registry's),
    # max_epochs 400 (the table also has 200, 800, 1200: EPOCHS=...).
    "cifar100": Profile(
        "cifar100", None, "CIFAR-100 (100 classes, 50,000 train / 10,000 test, 32 px)",
        "OpenMixup's CIFAR-100 benchmark (SGD lr 0.1 with momentum, weight decay 1e-4, per-epoch cosine, 32 px, "
        "RandomCrop(32, padding 4, reflect) + flip; 200/400/800/1200 epochs; the median top-1 of the last 10 epochs)",
        epochs=400, width=64, image_size=32, classes=100, train_images=50_000, forms="cifar-100", pipeline="crop-pad",
        backbones=("resnet18", "resnext50"), published="cifar-100", lr=0.1, weight_decay=1e-4, mean=CIFAR_MEAN,
        std=CIFAR_STD, method_args=_CIFAR_METHOD_ARGS, registry_bn_groups=False, analysis=_TINY_ANALYSIS),
    # Downsampled ImageNet 64x64 (arXiv 1707.08819): 1,281,167 train / 50,000 val, 1000 classes; the Tiny pipeline and
    # optimiser (no published mixup numbers to follow); 40 epochs = the paper's WRN budget (docs/protocol.md §9.2).
    "imagenet64": Profile(
        "imagenet64", None, "Downsampled ImageNet 64x64 (1000 classes, 1,281,167 train / 50,000 val)",
        "Downsampled ImageNet 64x64 through OpenMixup's Tiny-ImageNet pipeline and optimiser, 40 epochs (the dataset "
        "paper's budget; no published mixup table); the median top-1 of the last 10 epochs", epochs=40, width=64,
        image_size=64, classes=1000, train_images=1_281_167, forms="imagenet64", pipeline="rrc",
        backbones=("resnet18", "resnext50"), published=None, registry_bn_groups=False,
        analysis={"batch_size": 1000, "attack_images": 10000, "occlusion_images": 10000, "corruption_images": 2000}),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; unknown names fail with the valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[name]


def profile_method_args(profile: str, method: str) -> dict[str, Any]:
    """The settings ``profile`` gives ``method`` over the registry's (``Profile.method_args``)."""
    return dict(get_profile(profile).method_args.get(method, {}))


def pixels_per_epoch(profile: Profile) -> float | None:
    """Train pixels an epoch of ``profile`` sees, relative to Tiny-ImageNet's (100,000 images at 64 px): what scales
    a rate measured on Tiny-ImageNet to this profile (compute per image grows with its pixels); None off real data."""
    tiny = PROFILES["tiny-imagenet"]
    if profile.train_images is None or tiny.train_images is None:
        return None
    return profile.train_images * profile.image_size**2 / (tiny.train_images * tiny.image_size**2)
