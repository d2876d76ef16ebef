"""Beyond top-1: calibration, FGSM/PGD, occlusion, corruptions, CAM localisation and FLOPs of a finished run.

``analyze_run(run_dir)`` rebuilds a finished run's model and method from its checkpoint (weights only),
evaluates it on its own val set on the run's device, writes ``run_dir/analysis.json`` atomically and
returns it. The file is keyed on the checkpoint's sha256 and the settings: a second call skips, a
retrained run is analysed again, ``force=True`` always re-runs. Facts and constants: docs/analysis.md
(sections cited as §n), written to avoid the reference tools' bugs (§7).
The report's tables and plots of these numbers, and what each one is (``definitions()``): ``mixnb.report.analysis``.

The modules, in reading order (each section's module docstring says how its numbers are computed):
- ``settings``: ``AnalysisSettings`` (everything that changes a number) and ``PROFILE_SETTINGS``.
- ``run``: ``load_run`` (a finished run in eval mode on its device) and the batched helpers every pass uses.
- ``calibrate`` (§1): ECE / MCE, NLL, Brier and the reliability bins.
- ``attacks`` (§2): FGSM and PGD-10 in pixel space.
- ``occlude`` (§3): top-1 under seeded 8x8 patch occlusion and the area under that curve.
- ``corruptions`` (§4): Tiny-ImageNet-C's corruptions, generated and cached, and the official folder.
- ``cam`` (§5): Grad-CAM boxes and top-1 / GT-known localisation.
- ``flop_count`` (§6): FLOPs of one training step and of one image's forward.
- ``analyze``: ``analyze_run`` and its ``analysis.json`` (and what a run costs to analyse).
- ``cli``: ``python -m mixnb analyze``.

Every public name of these modules is re-exported here, so ``from mixnb.analysis import X`` works. The modules
of §1, §3 and §6 are not named after their entry functions (``calibration``, ``occlusion``, ``flops``): a
submodule of the same name would be shadowed by the function on the package.
"""

from mixnb.analysis.analyze import analysis_key, analyze_or_record, analyze_run, checkpoint_record
from mixnb.analysis.attacks import adversarial, fgsm, pgd
from mixnb.analysis.calibrate import calibration, reliability_bins
from mixnb.analysis.cam import box_iou, gallery_indices, grad_cam, largest_region_boxes, localisation, upsample_cam
from mixnb.analysis.cli import add_analyze_options, analyze_from_args
from mixnb.analysis.corruption_ops import (
    CORRUPTION_CACHE_VERSION,
    CORRUPTIONS,
    FROST_ENV,
    GEN_CHUNK,
    SAVE_QUALITY,
    brightness,
    contrast,
    corrupt,
    defocus_blur,
    elastic_apply,
    elastic_transform,
    fog,
    frost,
    gaussian_blur,
    gaussian_blur2d,
    gaussian_noise,
    glass_blur,
    glass_blur_apply,
    glass_positions,
    hsv_to_rgb,
    impulse_noise,
    jpeg_compression,
    jpeg_round_trip,
    pil_box_resize,
    pixelate,
    plasma_fractal,
    rgb_to_hsv,
    saturate,
    shot_noise,
    skip_reason,
    spatter,
    speckle_noise,
    zoom_blur,
)
from mixnb.analysis.corruptions import TINC_ENV, corruption_accuracy, generated_corruptions, official_corruptions
from mixnb.analysis.flop_count import count_flops, flops
from mixnb.analysis.occlude import curve_auc, occlusion, occlusion_masks, patch_mask
from mixnb.analysis.run import MEAN, STD, Run, load_run, predict
from mixnb.analysis.settings import PROFILE_SETTINGS, AnalysisSettings, settings_for

__all__ = [
    # settings, run
    "PROFILE_SETTINGS", "AnalysisSettings", "settings_for", "MEAN", "STD", "Run", "load_run", "predict",
    # §1 calibrate, §2 attacks, §3 occlude
    "calibration", "reliability_bins", "adversarial", "fgsm", "pgd", "curve_auc", "occlusion", "occlusion_masks",
    "patch_mask",
    # §4 corruptions
    "CORRUPTION_CACHE_VERSION", "CORRUPTIONS", "FROST_ENV", "GEN_CHUNK", "SAVE_QUALITY", "TINC_ENV", "brightness",
    "contrast", "corrupt", "corruption_accuracy", "defocus_blur", "elastic_apply", "elastic_transform", "fog", "frost",
    "gaussian_blur", "gaussian_blur2d", "gaussian_noise", "generated_corruptions", "glass_blur", "glass_blur_apply",
    "glass_positions", "hsv_to_rgb", "impulse_noise", "jpeg_compression", "jpeg_round_trip", "official_corruptions",
    "pil_box_resize", "pixelate", "plasma_fractal", "rgb_to_hsv", "saturate", "shot_noise", "skip_reason", "spatter",
    "speckle_noise", "zoom_blur",
    # §5 cam, §6 flop_count
    "box_iou", "gallery_indices", "grad_cam", "largest_region_boxes", "localisation", "upsample_cam", "count_flops",
    "flops",
    # analyze, cli
    "analysis_key", "analyze_or_record", "analyze_run", "checkpoint_record", "add_analyze_options", "analyze_from_args",
]
