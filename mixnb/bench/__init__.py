"""``make bench`` (``python -m mixnb.bench``): training speed, mixing cost and peer ratios per method x backbone.

Per method x backbone, after warm-up, median and min-max over ``--windows`` timed windows (CUDA
events on a GPU, perf_counter on CPU) of: images/s of the Trainer's own ``train_one_epoch`` fed by a
``DeviceLoader`` with the real augmentation; s/epoch = 100,000 images at that rate + an
``evaluate`` pass over 10,000; the mixing alone on the same loader's batches (``mix``, or
``preview`` for model-based methods, e.g. PuzzleMix's saliency pass + graph cut + transport) and
its share of the step; peak memory (CUDA: allocated above what the run holds before its first
step; CPU: the process's RSS peak); step time relative to Vanilla's. Peers (``--no-peers`` skips
them): an OpenMixup-style naive pipeline (JPEGs, PIL + torchvision transforms in a worker
DataLoader, fp32, NCHW, eager, one ``.item()`` per step) on the same model, and the MixUp/CutMix
ops of timm and torchvision v2 against ours on one batch. ``--sync-check`` instead runs each
method's step under ``torch.cuda.set_sync_debug_mode("error")`` and names its first host sync.
Each row also keeps its warm-up's seconds (the compile; cudnn autotune in a backbone's first row).

Other modes: ``--concurrent 1,2,3`` runs K bench processes at once on the device for each K and reports
their training img/s and its sum (``make sweep RUNS_PER_GPU=K``'s aggregate); ``--profile-kernels``
groups the device time of a few training steps by kernel kind (``KERNEL_CATEGORIES``);
``--summarize DIR`` prints one summary of every result file under DIR (``scripts/gpu_check.sh``'s last table).
bench.json and bench.md (sync, concurrent, kernels .json/.md) in ``--out`` are rewritten after every row.

The modules, in reading order:
- ``timing``: the one timer (``time_window``) and ``measure``'s alternating windows; ``Stat``.
- ``rig``: ``build_rig``, one method on one backbone built as ``fit`` builds a run; ``Rig.epoch`` is what is timed.
- ``throughput``: ``bench_method``, one method x backbone row.
- ``peers``: the naive pipeline (``bench_naive``) and the timm / torchvision v2 ops (``bench_ops``).
- ``sync_check``, ``kernels``, ``concurrency``: the ``--sync-check``, ``--profile-kernels`` and ``--concurrent`` modes.
- ``markdown``: the result files (.json/.md per mode) and ``--summarize``.
- ``cli``: ``parse_args`` and ``main``; ``__main__`` runs it.

The names other code imports are re-exported here (``from mixnb.bench import build_rig, measure``).
"""

from mixnb.bench.cli import main, parse_args
from mixnb.bench.concurrency import Barrier, concurrent_row, process_results
from mixnb.bench.kernels import KERNEL_CATEGORIES, OTHER, TOP_KERNELS, kernel_category
from mixnb.bench.rig import build_rig, parse_spec, random_teacher
from mixnb.bench.timing import Stat, measure, time_window

__all__ = ["KERNEL_CATEGORIES", "OTHER", "TOP_KERNELS", "Barrier", "Stat", "build_rig", "concurrent_row",
           "kernel_category", "main", "measure", "parse_args", "parse_spec", "process_results", "random_teacher",
           "time_window"]
