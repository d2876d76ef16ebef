"""Write the template notebooks (without outputs) from the cell sources below.

The notebooks are the product; this script keeps their source reviewable in one place.
Run `python scripts/make_notebooks.py` after editing it.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NB = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = {"kernelspec": {"display_name": "Python (mixnb)", "language": "python", "name": "mixnb"},
          "language_info": {"name": "python"}}


def code(src: str, tags: list[str] | None = None):
    cell = new_code_cell(src.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


def md(src: str):
    return new_markdown_cell(src.strip())


TRAIN = [
    md("""
# One training run
Papermill executes this notebook once per (method, backbone, seed) into `runs/<profile>/<run>/`.
Logic lives in `mixnb`; this notebook only wires it: parameters → `RunConfig` → `fit` → plots.
A killed run resumes from its checkpoint when executed again with the same parameters.
"""),
    code("""
method = "vanilla"  # a name in mixnb.mixups.REGISTRY
backbone = "resnet18"  # resnet18 | resnext50
profile = "sample"  # tiny-imagenet (the full protocol) | sample (generated data, CPU minutes) | test
seed = 0  # seeds data order, augmentation, mixing and init
epochs = None  # None: the profile's (400 for tiny-imagenet)
method_args = {}  # overrides of the registry defaults, e.g. {"alpha": 0.5}
data = None  # tiny-imagenet-200 folder; None: $MIXNB_DATA, or the generated sample set
device = "auto"  # auto | cpu | cuda | cuda:N
compile = "auto"  # torch.compile mode: auto (measured best on CUDA, off on the CPU) | off | default | reduce-overhead
precision = "auto"  # autocast: auto (bf16 where native: CUDA, AMX CPUs) | bf16 | fp32
world_size = 1  # processes (GPUs) for this run; > 1: the same run through torchrun (DDP), global batch unchanged
sync_bn = False  # world_size > 1 only: True syncs BatchNorm over the global batch; per GPU (the reference) otherwise
run_dir = None  # None: runs/<profile>/<run name>
progress = "epoch"  # epoch: a line per epoch (papermill-friendly) | bar | none
""", tags=["parameters"]),
    code("""
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mixnb.config import RunConfig
from mixnb.paths import run_dir as default_run_dir
from mixnb.report import plot_learning_curve, run_gallery
from mixnb.train import fit, launch

cfg = RunConfig.from_dict(dict(method=method, backbone=backbone, profile=profile, seed=seed, epochs=epochs,
                               method_args=method_args, data=data, device=device, compile=compile,
                               precision=precision, sync_bn=sync_bn))
print("differs from the defaults:", cfg.changes())
run_dir = Path(run_dir) if run_dir else default_run_dir(cfg.profile, cfg.run_name())
print("run folder:", run_dir)
"""),
    code("""
#papermill_description=train
if world_size > 1:  # torchrun --standalone --nproc-per-node world_size -m mixnb train --config run_dir/params.json
    summary = launch(cfg, run_dir, world_size=world_size, progress=progress)
else:
    summary = fit(cfg, run_dir, progress=progress)
print(f"{summary['median_label']}: {summary['median_top1']:.2f}  "
      f"(best {summary['best_top1']:.2f} at epoch {summary['best_epoch']}, {summary['seconds_per_epoch']:.1f} s/epoch)")
"""),
    md("## Learning curve"),
    code("""
metrics = pd.read_csv(run_dir / "metrics.csv")
plot_learning_curve(metrics)
plt.show()
"""),
    md("## Mixed samples (fixed seed, val images)"),
    code("""
fig = run_gallery(run_dir)
fig.savefig(run_dir / "mix_samples.png", dpi=110, bbox_inches="tight")
plt.show()
"""),
]

ANALYSIS = [
    code("""
profile = "sample"  # which profile's runs to report
runs_root = None  # None: the repo's runs/
""", tags=["parameters"]),
    code("""
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import HTML, Image, Markdown, display

from mixnb.report import (benchmark_table, cost_table, header, load_runs, method_label, plot_curves,
                          readout_table)

summaries, metrics = load_runs(profile, Path(runs_root) if runs_root else None)
h = header(summaries, profile)
lines = [f"# Mixup benchmark on Tiny-ImageNet — profile `{profile}`"]
if h["sample"]:
    lines.append("> **These numbers come from the generated sample profile** (a small synthetic dataset and a "
                 "narrow network, minutes on a CPU). They prove the pipeline; they are **not** comparable "
                 "with OpenMixup's published Tiny-ImageNet numbers, shown beside them for reference only.")
lines.append(f"- Protocol: OpenMixup Tiny-ImageNet (SGD lr 0.2, cosine, batch 100, 64 px, RandomResizedCrop "
             f"bicubic + flip, no centre crop at test); epochs: {h['epochs']}")
lines.append(f"- Dataset: {'generated sample set' if h['sample'] else h['data'] or '$MIXNB_DATA'}; runs: {h['runs']}")
lines.append(f"- Hardware: {', '.join(h['devices']) or '?'}; torch {h['torch']}, Python {h['python']}; "
             f"commit(s): {', '.join(c[:10] for c in h['commits'])}")
display(Markdown("\\n".join(lines)))
"""),
    md("## Benchmark table\nMedian top-1 (%) of the last 10 epochs (of all epochs when a run has fewer), "
       "mean ± std over seeds, beside OpenMixup's published number and the difference."),
    code("""
if summaries.empty:
    display(Markdown(f"No finished runs for profile `{profile}` yet: run `make sweep PROFILE={profile}`."))
else:
    display(benchmark_table(summaries))
    display(Markdown("Best epoch top-1 (%), for comparison:"))
    display(benchmark_table(summaries, value="best_top1"))
    readout = readout_table(summaries)
    if not readout.empty:
        display(Markdown("AutoMix and SAMix: the table shows the online encoder's clean-head median. OpenMixup "
                         "read these rows as the best of four heads (online/EMA x clean/mixed, protocol.md §1.7):"))
        display(readout)
"""),
    md("## Learning curves"),
    code("""
if not metrics.empty:
    plot_curves(metrics)
    plt.show()
"""),
    md("## Cost: seconds per epoch and peak memory"),
    code("""
if not summaries.empty:
    display(cost_table(summaries))
"""),
    md("## Mixed samples of every method on real photos (fixed seed)\n"
       "The same grid as `notebooks/explore.ipynb`: photos from `skimage.data` at 64×64."),
    code("""
from mixnb.mixups import REGISTRY
from mixnb.paths import runs_root as runs_root_default
from mixnb.report import method_gallery, photo_batch

x, y, names = photo_batch(6)
profile_runs = (Path(runs_root) if runs_root else runs_root_default()) / profile
for name in REGISTRY:
    try:  # a run folder of this profile lets AttentiveMix+ find its default teacher (the Vanilla run)
        method_gallery(name, x, y, classes=names, seed=0, run_dir=profile_runs / "gallery")
        plt.show()
    except (FileNotFoundError, RuntimeError) as err:
        display(Markdown(f"**{method_label(name)}** skipped: {err}"))
"""),
    md("## Mixed samples of every run on dataset images (fixed seed, val images)"),
    code("""
for _, row in summaries.sort_values(["backbone", "method"]).iterrows():
    png = Path(row["run_dir"]) / "mix_samples.png"
    if png.exists():
        display(Markdown(f"### {method_label(row['method'])} — {row['backbone']}, seed {row['seed']}"))
        display(Image(filename=str(png)))
"""),
]

EXPLORE = [
    md("""
# Explore the mixup methods
Each method mixes the same real photos (from `skimage.data`, resized to 64×64) with a fixed seed.
Rows: the image, its mask (white = the image's own pixels, where the method has one) and the mixed
image; λ (the weight of the image's own label) is in each title. Change `seed` or `methods` and re-run.
Methods that need a model (ManifoldMix, PuzzleMix, AutoMix, SAMix) use an untrained narrow network
here; AttentiveMix+ needs a teacher (see its docstring) and is skipped without one.
"""),
    code("""
methods = None  # None: every registered method; or a list of names
seed = 0  # the generator seed of the draws
n_images = 6  # how many photos (up to 8)
""", tags=["parameters"]),
    code("""
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mixnb.mixups import REGISTRY
from mixnb.report import method_gallery, photo_batch

x, y, names = photo_batch(n_images)
for name in methods or list(REGISTRY):
    try:
        method_gallery(name, x, y, classes=names, seed=seed)
        plt.show()
    except (FileNotFoundError, RuntimeError) as err:  # e.g. no AttentiveMix+ teacher on this machine
        display(Markdown(f"**{name}** skipped: {err}"))
"""),
]

if __name__ == "__main__":
    for name, cells in {"train": TRAIN, "analysis": ANALYSIS, "explore": EXPLORE}.items():
        for i, cell in enumerate(cells):
            cell.id = f"{name}-{i}"  # stable ids: regenerating leaves untouched cells untouched in git
        nb = new_notebook(cells=cells, metadata=KERNEL)
        nbformat.write(nb, NB / f"{name}.ipynb")
        print("wrote", NB / f"{name}.ipynb")
