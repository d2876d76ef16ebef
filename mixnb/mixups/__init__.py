"""Mixup methods and their registry: the one place that holds each method's protocol defaults.

Defaults come from docs/protocol.md §2.1 (alpha per method) and §2.x (method settings). ``min_lr``
is the backbone's cosine floor (docs/protocol.md §1.5). ``published`` is OpenMixup's Tiny-ImageNet
top-1 beside which the report sets ours (docs/protocol.md §4, docs/methods.md §8).

Reference code (``RunConfig.reference``, docs/publication.md): ``defaults`` are the settings of the OpenMixup
code that published each row (``code``: commit, date and crop per backbone); ``head`` holds the settings that
OpenMixup's 2025 HEAD code runs instead, applied with ``reference="head"``.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Any

from mixnb.data import IMAGENET_MEAN, IMAGENET_STD
from mixnb.mixups._helpers import NO_REPEAT_TRIES, sample_beta, soft_target
from mixnb.mixups.adautomix import AdAutoMix
from mixnb.mixups.alignmix import AlignMix
from mixnb.mixups.attentivemix import AttentiveMix
from mixnb.mixups.automix import AutoMix
from mixnb.mixups.base import MixedBatch, MixLoss, MixMethod, NeededRun, StepContext, StepOutput, mixed_cross_entropy
from mixnb.mixups.cutmix import CutMix
from mixnb.mixups.fmix import FMix
from mixnb.mixups.gridmix import GridMix
from mixnb.mixups.manifoldmix import ManifoldMix
from mixnb.mixups.mixup import MixUp
from mixnb.mixups.multimode import MultiMode
from mixnb.mixups.puzzlemix import CIFAR_MEAN, CIFAR_STD, PuzzleMix
from mixnb.mixups.resizemix import ResizeMix
from mixnb.mixups.saliencymix import SaliencyMix
from mixnb.mixups.samix import SAMix
from mixnb.mixups.smoothmix import SmoothMix
from mixnb.mixups.vanilla import Vanilla

REFERENCES = ("published", "head")  # the code that published each row | OpenMixup's HEAD (docs/publication.md)


@dataclass(frozen=True)
class Code:
    """The OpenMixup code behind a published cell: the commit that published it (its runs predate it, so the code at
    or before it made them) and what that code's Tiny pipeline did (docs/publication.md)."""

    commit: str
    date: str
    crop: str  # RandomResizedCrop interpolation of its Tiny configs (mixnb.data.loader.KERNELS)
    undetermined: str = ""  # a setting the commit cannot decide, with the pick and why; "" when all are known


HEAD = Code("37e1372", "2025-10-15", "bicubic")  # OpenMixup HEAD: bicubic since ce8974d (2022-03-19)
_E81 = Code("e81ed85", "2022-03-10", "bilinear")  # torchvision's default: `interpolation=3` came in ce8974d
# Published on 2022-03-25 with a bicubic config, but AttentiveMix's Tiny config exists from 3fea614 (2022-03-11) and
# PuzzleMix RX-50 was rerun (66.92 -> 67.83) at an unknown date: their runs may predate ce8974d's bicubic (03-19).
_7BF = Code("7bf8bcf", "2022-03-25", "bicubic", "crop undetermined (the run may predate 2022-03-19, bilinear); "
                                                "bicubic, the config committed with the number")
_11D, _E01 = Code("11d4167", "2022-08-29", "bicubic"), Code("e014301", "2022-09-12", "bicubic")


@dataclass(frozen=True)
class MethodSpec:
    cls: type[MixMethod]
    defaults: dict[str, Any] = field(default_factory=dict)
    min_lr: float = 0.0  # backbone cosine floor
    label: str = ""  # the name in the benchmark table
    auto_compile: bool = True  # RunConfig.compile="auto" compiles on CUDA; False where make bench found it slower
    sweep: bool = True  # in the default sweep (METHODS unset); False: only with METHODS=all or by name
    bn_groups: dict[str, int] = field(default_factory=dict)  # backbone -> BN groups of the batch (default 1)
    published: dict[str, float] = field(default_factory=dict)  # Tiny-ImageNet top-1 (%) by backbone (docs/protocol.md §4)
    published_alpha: float | None = None  # the alpha printed beside it (None: Vanilla, no alpha)
    reproduced: bool = True  # False = 📖: the original paper's number, not run in OpenMixup
    note: str = ""  # a footnote to the published number
    paper: str = ""  # authors, venue, arXiv id (docs/protocol.md §2, docs/methods.md)
    code: dict[str, Code] = field(default_factory=dict)  # backbone -> the code that published it (absent: HEAD)
    head: dict[str, Any] = field(default_factory=dict)  # the settings OpenMixup HEAD runs where ``defaults`` differ
    deviations: str = ""  # what the published reference still does not reproduce (the report prints it)
    needs: str | None = None  # a method whose finished run of the same backbone this one uses (its model: ``setup``)
    caption: str = ""  # one line on what it does to a pair (the gallery's reading guide; "": its module's first line)
    host_sync: str = ""  # why its step must meet the host ("": it must not; make bench --sync-check holds it to that)
    no_mix_probe: str = ""  # why make bench cannot time its mixing alone ("": its mix() or preview() is all of it)

    def __post_init__(self) -> None:
        if takes_loss_settings(self.cls):  # DecoupleMix's settings join the method's own: one dict, everywhere
            object.__setattr__(self, "defaults", {**self.defaults, **LOSS_DEFAULTS})


# The default training step's loss (base.MixLoss: DecoupleMix off, its eta and form), accepted by every method
# that uses that step: eta 0.1 is OpenMixup's base decouple configs' (CIFAR-100, ImageNet; no Tiny config).
LOSS_DEFAULTS: dict[str, Any] = {"decouple": False, "decouple_eta": 0.1, "decouple_form": "openmixup"}


def takes_loss_settings(cls: type[MixMethod]) -> bool:
    """Whether a method's loss is ``MixMethod.training_step``'s (so it takes ``LOSS_DEFAULTS``); Vanilla aside: one
    class per image makes the regulariser 0, and a setting with no effect would only split run identities."""
    return cls.training_step is MixMethod.training_step and cls is not Vanilla


def _tiny(resnet18: float, resnext50: float) -> dict[str, float]:
    return {"resnet18": resnet18, "resnext50": resnext50}


# AutoMix/SAMix settings (docs/protocol.md §3.1-3.4): EMA momentum 0.999 -> 0.999999 after 10% of the
# iterations, lam margin 0.08, mask loss 0.1 with margin 0.1, MixBlock lr 0.1 -> 1e-3.
_AUTOMIX = {"alpha": 2.0, "momentum": 0.999, "end_momentum": 0.999999, "momentum_warmup": 0.1, "lam_margin": 0.08,
            "mask_loss": 0.1, "mask_margin": 0.1, "mixblock_lr": 0.1, "mixblock_min_lr": 1e-3}
_2X50 = {"resnext50": 2}  # OpenMixup trains these RX-50 rows on 2 GPUs x 50 with per-GPU BN (docs/protocol.md §1.5)
_HEADS = "OpenMixup read out the best of 4 heads (EMA included) by median (docs/protocol.md §1.7)"
# att_norm: BN after the MixBlock's q/k convs in all four e81ed85 Tiny configs, commented out in 1ae985f (2022-03-17)
_AUTOMIX_DEVIATIONS = ("the committed 2022 R-18 configs have 100-class heads, so the runs used uncommitted configs "
                       "(the 2022 files are the nearest record); RX-50 (bn_groups 2): partners are drawn over the "
                       "whole batch, not within each GPU's 50, and the 2022 code evaluated each GPU's val shard with "
                       "its own BN statistics, where we use group 0's (running_stats first: equal in expectation)")


def _both(code: Code) -> dict[str, Code]:
    return {"resnet18": code, "resnext50": code}


# OpenMixup's Tiny-ImageNet table order; published = its page (docs/en/model_zoos/Mixup_sup.md, docs/protocol.md §4)
REGISTRY: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(Vanilla, {}, label="Vanilla",
                          caption="No mixing: every image trains on its own label (λ = 1).",
                          published=_tiny(61.68, 65.04), code=_both(_E81)),
    "mixup": MethodSpec(MixUp, {"alpha": 1.0}, label="MixUp",
                        caption="Blends the whole images and their labels: λ · image + (1 − λ) · partner.",
                        paper="Zhang et al., ICLR 2018, arXiv 1710.09412",
                        published=_tiny(63.86, 66.36), published_alpha=1.0,
                        code=_both(_E81)),
    # partner_tries: a plain randperm at e81ed85; HEAD's no-repeat shuffle since 9fc838b (2025-03-19)
    "cutmix": MethodSpec(CutMix, {"alpha": 1.0, "partner_tries": 1}, label="CutMix",
                         caption=("Pastes a box of the partner (one box per batch); λ = the image's true share once "
                                  "the box is clipped to the image."),
                         paper="Yun et al., ICCV 2019, arXiv 1905.04899", published=_tiny(65.53, 66.47),
                         published_alpha=1.0, code=_both(_E81), head={"partner_tries": NO_REPEAT_TRIES}),
    "manifoldmix": MethodSpec(ManifoldMix, {"alpha": 0.2, "layers": ("input", "layer1", "layer2")},
                              label="ManifoldMix",
                              paper="Verma et al., ICML 2019, arXiv 1806.05236",
                              published=_tiny(64.15, 67.30), published_alpha=0.2,
                              code=_both(_E81), no_mix_probe="mixes hidden features inside the forward"),
    "smoothmix": MethodSpec(SmoothMix, {"alpha": 0.2, "label_weights": "openmixup"}, label="SmoothMix",
                            caption=("Blends the partner in through a Gaussian mask of random centre and width (soft "
                                     "edges, no box); λ comes from the mask, not from a Beta draw."),
                            paper="Lee et al., CVPR Workshops 2020",
                            published=_tiny(66.65, 69.65), published_alpha=0.2,
                            note="alpha has no effect in the code; its label weights are the paper's swapped",
                            code={"resnet18": _11D, "resnext50": _E01}),
    "saliencymix": MethodSpec(SaliencyMix, {"alpha": 1.0}, label="SaliencyMix",
                              caption=("A CutMix box centred on the saliency peak (OpenCV fine-grained) of the first "
                                       "partner, shared by the batch."),
                              paper="Uddin et al., ICLR 2021, arXiv 2006.01791", published=_tiny(64.60, 66.55),
                              published_alpha=1.0, code=_both(_E81),
                              host_sync="the partner image goes to OpenCV on the host"),
    "attentivemix": MethodSpec(AttentiveMix, {"alpha": 2.0, "teacher_weights": None, "lam_rule": "first"},
                               label="AttentiveMix+",
                               caption=("Each image keeps its top ⌊49λ⌋ of 7×7 cells by a teacher's feature "
                                        "attention; the partner fills the rest."),
                               paper="Walawalkar et al., ICASSP 2020, arXiv 2003.13048",
                               published=_tiny(64.85, 67.42), published_alpha=2.0,
                               note="OpenMixup's page gives 64.85 / 67.42; the survey's table gives 64.01 / 66.84",
                               code=_both(_7BF), needs="vanilla",  # the default teacher (docs/protocol.md §2.7)
                               deviations="teacher: the published runs used torchvision's ImageNet R-18; without that "
                                          "file (teacher_weights or $MIXNB_ATTENTIVEMIX_TEACHER) it is our own Vanilla "
                                          "run"),
    "fmix": MethodSpec(FMix, {"alpha": 1.0, "decay_power": 3.0, "size": (64, 64), "max_soft": 0.0,
                              "spectrum": "openmixup", "partner_tries": 1}, label="FMix*",
                       caption=("A binarised low-frequency noise image picks the partner's pixels; λ = the mask's "
                                "exact share."),
                       paper="Harris et al., arXiv 2002.12047", published=_tiny(63.47, 65.08), published_alpha=1.0,
                       code=_both(_E81), head={"partner_tries": NO_REPEAT_TRIES}),
    # block_num=5, t_size=4 and CIFAR stats from 3fea614 to a0c5840 (2022-12-21); HEAD: {2,4,8}, -1, ImageNet at 64 px
    "puzzlemix": MethodSpec(PuzzleMix, {"alpha": 1.0, "block_nums": (2, 4, 8, 16), "beta": 1.2, "gamma": 0.5,
                                        "eta": 0.2, "neigh_size": 4, "n_labels": 3, "t_eps": 0.8, "transport": True,
                                        "t_size": 4, "workers": 0, "mean": CIFAR_MEAN, "std": CIFAR_STD},
                            label="PuzzleMix",
                            caption=("A graph cut over saliency gives each block (2, 4 or 8 per side) to the image, "
                                     "the partner or a 50/50 blend; transport then moves salient blocks into the shown "
                                     "ones."),
                            paper="Kim et al., ICML 2020, arXiv 2009.06962",
                            published=_tiny(65.81, 67.83), published_alpha=1.0,
                            code={"resnet18": _E81, "resnext50": _7BF},
                            head={"block_nums": (2, 4, 8), "t_size": -1, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                            host_sync="the graph-cut terms go to gco on the host and the labels come back"),
    # use_alpha False at e81ed85 (tau ~ U(scope)); True since 3fea614: equal in distribution at alpha 1
    "resizemix": MethodSpec(ResizeMix, {"alpha": 1.0, "scope": (0.1, 0.8), "use_alpha": False,
                                        "interpolation": "nearest"}, label="ResizeMix*",
                            caption=("Pastes the whole partner, shrunk (nearest) into a random box; λ = 1 − box "
                                     "area."),
                            paper="Qin et al., arXiv 2012.11101", published=_tiny(63.74, 65.87),
                            published_alpha=1.0, code=_both(_E81), head={"use_alpha": True}),
    "gridmix": MethodSpec(GridMix, {"alpha": 0.2, "n_holes": (2, 6), "hole_aspect_ratio": (1.0, 1.0),
                                    "cut_area_ratio": (0.5, 1.0), "cut_aspect_ratio": (0.5, 2.0)}, label="GridMix",
                          caption=("Pastes the partner through a grid of square holes inside a random crop; λ = 1 − "
                                   "hole area."),
                          paper="Baek et al., Pattern Recognition 2021",
                          published=_tiny(65.14, 66.53), published_alpha=0.2,
                          note="GridMixup's holes in a crop, not the paper's local-context loss",
                          code={"resnet18": _11D, "resnext50": _E01}),
    # AlignMix (docs/methods.md §3): OpenMixup's Tiny config, ManifoldMix (alpha 2, {input, layer1, layer2}) or
    # AlignMix on the layer-4 map, uniform per step; sweep False: the Sinkhorn step is not in the sample sweep's budget
    "alignmix": MethodSpec(AlignMix, {"alpha": 2.0, "manifold_alpha": None, "layers": ("input", "layer1", "layer2"),
                                      "align_prob": 0.5, "eps": 0.1, "max_iter": 100, "tol": 0.1},
                           label="AlignMix",
                           caption=("Per step, ManifoldMix or AlignMix: a Sinkhorn plan between the two layer-4 maps "
                                    "moves the partner's features onto the image's positions, then blends them; shown "
                                    "on 8×8-px cells."),
                           paper="Venkataramanan et al., CVPR 2022, arXiv 2103.15375",
                           sweep=False, published={"resnet18": 66.87}, published_alpha=2.0,
                           reproduced=False,
                           note="the authors' number (their README; official code, PreAct ResNet-18, 1200 epochs, best "
                                "epoch: the median of its last 10 is 65.24), another protocol; not run in OpenMixup"),
    # auto_compile False: with capture="model" only ``model(x)`` is compiled, their encoder-k and forward_stages
    # passes stay eager, and with CUDA graphs the R-18 step measured 34.8 ms (AutoMix) against 29.0 ms eager (H100,
    # BENCHMARKS.md); capture="step" graphs all of them and is not measured on a GPU yet
    "automix": MethodSpec(AutoMix, {**_AUTOMIX, "att_norm": True}, min_lr=0.05, label="AutoMix",
                          caption=("A MixBlock (attention over a momentum encoder's stage-3 features) predicts a "
                                   "per-pixel mask, learned with the classifier."),
                          paper="Liu et al., ECCV 2022, arXiv 2103.13027", auto_compile=False,
                          bn_groups=_2X50, published=_tiny(67.33, 70.72), published_alpha=2.0, note=_HEADS,
                          code=_both(_E81), head={"att_norm": False}, deviations=_AUTOMIX_DEVIATIONS),
    "samix": MethodSpec(SAMix, {**_AUTOMIX, "lam_mul_k": "auto", "att_norm": True}, min_lr=0.05, label="SAMix*",
                        caption=("AutoMix with a λ-aware, non-linear MixBlock and a mask-variance term that pushes "
                                 "masks to 0/1."),
                        paper="Li et al., arXiv 2111.15454",
                        auto_compile=False, bn_groups=_2X50, published=_tiny(68.89, 72.18), published_alpha=2.0,
                        note=_HEADS, code=_both(_E81), head={"att_norm": False}, deviations=_AUTOMIX_DEVIATIONS),
    # AdAutoMix (docs/methods.md §4): the Tiny R-18 config (its RX-50 config: --set min_lr=0.05 and
    # --arg mixblock_min_lr=0.001) and the published run's mask loss; sweep False: a step costs 1.7x AutoMix's
    # (CPU, width 8, batch 100, one thread: 2.2 s against 1.3 s; Vanilla 0.4 s)
    "adautomix": MethodSpec(AdAutoMix, {**_AUTOMIX, "alpha": 1.0, "mix_samples": 3, "lam_margin": 0.03,
                                        "margin_rule": "authors", "mixup_radio": 0.5, "beta_radio": 0.4,
                                        "adv_interval": 2, "mixblock_min_lr": 0.0},
                            min_lr=0.0, label="AdAutoMix",
                            caption=("AutoMix's machinery with an adversarial generator: a co-attention block mixes "
                                     "three images, trained in turn to fool the classifier and to help it."),
                            paper="Qin, Jin et al., ICLR 2024, arXiv 2312.11954", auto_compile=False, sweep=False,
                            published=_tiny(69.19, 72.89), published_alpha=1.0, reproduced=False,
                            note="the authors' number (their README), not in OpenMixup's table: R-18 = their log's "
                                 "median of the EMA one-hot head over epochs 390-400"),
    # timm's per-batch switch as DeiT's recipe sets it (MixUp alpha 0.8 / CutMix alpha 1.0, switch 0.5; multimode.py);
    # not in OpenMixup's table, whose Tiny multi-mode config is [mixup, cutmix, vanilla] uniform (docs/methods.md §7)
    "mixup+cutmix": MethodSpec(MultiMode, {"mix_modes": ("mixup", "cutmix"), "mix_prob": (0.5, 0.5),
                                           "alphas": (0.8, 1.0)}, label="MixUp+CutMix",
                               paper="timm's switch between the two (Wightman, pytorch-image-models)", sweep=False),
}


# ----------------------------------------------------------------------------- published tables per dataset
@dataclass(frozen=True)
class PublishedRow:
    """One method's row of a published table: its α, top-1 (%) per backbone and epoch budget, and its marks."""

    label: str  # the name as the table prints it
    alpha: float | None  # the α printed beside it (None: Vanilla)
    top1: dict[str, dict[int, float]]  # backbone -> epochs -> top-1 (%)
    mark: str = ""  # "📖": the original authors' number, not run in OpenMixup
    implemented: bool = True  # False: a row mixnb has no method for (listed, never run)


@dataclass(frozen=True)
class PublishedTable:
    """A dataset's published mixup table, which the report's OpenMixup column reads for runs of its profile."""

    dataset: str  # the name the report gives runs on this data (mixnb.report.DATASET_FORMS)
    source: str  # where the numbers come from
    budgets: tuple[int, ...]  # the epoch counts published
    width: int  # the backbone width of the published runs
    nearest: bool  # runs at other epoch counts compare with the nearest budget (False: only the budget itself)
    rows: dict[str, PublishedRow]


def _cifar(alpha: float | None, r18: tuple[float, ...], rx50: tuple[float, ...], wrn: float, label: str,
           **kw: Any) -> PublishedRow:
    top1 = {"resnet18": dict(zip((200, 400, 800, 1200), r18)), "resnext50": dict(zip((200, 400, 800, 1200), rx50)),
            "wrn28_8": {400: wrn}}
    return PublishedRow(label, alpha, top1, **kw)


# OpenMixup's CIFAR-100 table (docs/protocol.md §8.4): configs/classification/cifar100/README.md, identical at 69ee565
# (2022-09-10, the file's first commit) and HEAD 37e1372 (2025-10-15); R-18 and RX-50 at 200/400/800/1200 epochs,
# WRN-28-8 at 400 (no mixnb backbone); the median top-1 of the last 10 epochs; α searched per method.
CIFAR100 = PublishedTable(
    "CIFAR-100", "OpenMixup configs/classification/cifar100/README.md at 69ee565 (2022-09-10) = 37e1372",
    budgets=(200, 400, 800, 1200), width=64, nearest=True, rows={
        "vanilla": _cifar(None, (76.42, 77.73, 78.04, 78.55), (79.37, 80.24, 81.09, 81.32), 81.63, "Vanilla"),
        "mixup": _cifar(1.0, (78.52, 79.34, 79.12, 79.24), (81.18, 82.54, 82.10, 81.77), 82.82, "MixUp"),
        "cutmix": _cifar(0.2, (79.45, 79.58, 78.17, 78.29), (81.52, 78.52, 78.32, 77.17), 84.45, "CutMix"),
        "manifoldmix": _cifar(2.0, (79.18, 80.18, 80.35, 80.21), (81.59, 82.56, 82.88, 83.28), 83.24, "ManifoldMix"),
        "smoothmix": _cifar(0.2, (77.90, 78.77, 78.69, 78.38), (80.68, 79.56, 78.95, 77.88), 82.09, "SmoothMix"),
        "saliencymix": _cifar(0.2, (79.75, 79.64, 79.12, 77.66), (80.72, 78.63, 78.77, 77.51), 84.35, "SaliencyMix"),
        "attentivemix": _cifar(2.0, (79.62, 80.14, 78.91, 78.41), (81.69, 81.53, 80.54, 79.60), 84.34,
                               "AttentiveMix+"),
        "fmix": _cifar(0.2, (78.91, 79.91, 79.69, 79.50), (79.87, 78.99, 79.02, 78.24), 84.21, "FMix*"),
        "puzzlemix": _cifar(1.0, (79.96, 80.82, 81.13, 81.10), (81.69, 82.84, 82.85, 82.93), 85.02, "PuzzleMix"),
        "comixup": _cifar(2.0, (80.01, 80.87, 81.17, 81.18), (81.73, 82.88, 82.91, 82.97), 85.05, "Co-Mixup",
                          mark="📖", implemented=False),  # not implemented in mixnb
        "gridmix": _cifar(0.2, (78.23, 78.60, 78.72, 77.58), (81.11, 79.80, 78.90, 76.11), 84.24, "GridMix"),
        "resizemix": _cifar(1.0, (79.56, 79.19, 80.01, 79.23), (79.56, 79.78, 80.35, 79.73), 84.87, "ResizeMix*"),
        "automix": _cifar(2.0, (80.12, 81.78, 82.04, 81.95), (82.84, 83.32, 83.64, 83.80), 85.18, "AutoMix"),
        "samix": _cifar(2.0, (81.21, 81.97, 82.30, 82.41), (83.81, 84.27, 84.42, 84.31), 85.50, "SAMix*"),
    })
# Tiny-ImageNet's table is the registry's ``published`` (one budget, 400 epochs), seen through the same record.
TINY_IMAGENET = PublishedTable(
    "Tiny-ImageNet", "OpenMixup docs/en/model_zoos/Mixup_sup.md (docs/protocol.md §4)", budgets=(400,), width=64,
    nearest=False, rows={m: PublishedRow(s.label, s.published_alpha, {b: {400: v} for b, v in s.published.items()},
                                         "" if s.reproduced else "📖") for m, s in REGISTRY.items() if s.published})
PUBLISHED = {"tiny-imagenet": TINY_IMAGENET, "cifar-100": CIFAR100}  # profiles.Profile.published keys


def nearest_budget(table: PublishedTable, epochs: int) -> int:
    """The published budget closest to ``epochs`` (a tie: the shorter)."""
    return min(table.budgets, key=lambda b: (abs(b - epochs), b))


def published_top1(table: PublishedTable, method: str, backbone: str, epochs: int) -> float | None:
    """``table``'s top-1 of ``method`` on ``backbone`` at ``epochs`` (one of its budgets), or None."""
    row = table.rows.get(method)
    return row.top1.get(backbone, {}).get(epochs) if row is not None else None


def settings_text() -> str:
    """Each method's settings (``--arg`` / ``ARGS`` keys) in one line per method, for the CLI's help."""
    return "; ".join(f"{name}: {', '.join(spec.defaults) or '(none)'}" for name, spec in REGISTRY.items())


def get_spec(name: str) -> MethodSpec:
    """The registry entry for ``name``; unknown names fail with the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def reference_code(method: str, backbone: str, reference: str) -> Code:
    """The OpenMixup code a run of ``method`` on ``backbone`` follows under ``reference`` (``REFERENCES``)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    return get_spec(method).code.get(backbone, HEAD) if reference == "published" else HEAD


def get_method(name: str, **overrides: Any) -> MixMethod:
    """Build a method with its protocol defaults, ``overrides`` replacing some of them; the loss settings
    (``LOSS_DEFAULTS``) go to its ``mix_loss``, the others to its constructor."""
    spec = get_spec(name)
    unknown = set(overrides) - set(spec.defaults)
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(f"method {name!r} has no setting(s) {sorted(unknown)}; its settings: {valid}")
    settings = {**spec.defaults, **overrides}
    loss = {k: settings.pop(k) for k in LOSS_DEFAULTS} if takes_loss_settings(spec.cls) else None
    if "build" in inspect.signature(spec.cls).parameters:  # a method made of other methods builds them here
        settings.update(build=get_method, spec_of=get_spec)
    method = spec.cls(**settings)
    if loss is not None:
        method.mix_loss = MixLoss(**loss)
    return method


__all__ = [
    "HEAD",
    "REFERENCES",
    "CIFAR100",
    "Code",
    "LOSS_DEFAULTS",
    "REGISTRY",
    "MethodSpec",
    "MixLoss",
    "MixMethod",
    "MixedBatch",
    "PUBLISHED",
    "PublishedRow",
    "PublishedTable",
    "TINY_IMAGENET",
    "NeededRun",
    "StepContext",
    "StepOutput",
    "get_method",
    "get_spec",
    "mixed_cross_entropy",
    "nearest_budget",
    "published_top1",
    "reference_code",
    "sample_beta",
    "soft_target",
]
