"""The report's numbers say what they are: the read-out off the protocol, Δ Vanilla, seeds and their intervals, the
α choice, the n and interval of every analysis number, and wall-time ratios only under comparable load.

Run folders are written by hand (``write_run``: metrics rows through ``train.summarize``, the writer ``fit`` uses),
so no model is trained here but in the one test of the load column ``fit`` records."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection

from mixnb.config import RunConfig
from mixnb.io import write_json
from mixnb.report import (Runs, appendix_table, benchmark_table, best_alpha, beyond_accuracy, beyond_view,
                          compares_with_openmixup, cost_note_html, cost_styler, cost_table, dataset_name, header_html,
                          load_runs, openmixup_agreement, plot_alpha, table_intro_html, tidy_table, timing_caveat,
                          vanilla_deltas, write_exports)
from mixnb.report.analysis import ece_interval, wilson_interval
from mixnb.runs import ANALYSIS_VERSION
from mixnb.train import summarize

SAMPLE_DATA = {"content_key": "c0", "classes": 10, "train_images": 1000, "val_images": 300, "root": "/data/sample",
               "form": "tiny-imagenet-val-folders", "label_order": "wnids.txt", "boxes": True}
TINY_DATA = {**SAMPLE_DATA, "classes": 200, "train_images": 100_000, "val_images": 10_000, "form": "tiny-imagenet-zip"}


def write_run(root: Path, top1: list[float], *, method: str = "vanilla", seed: int = 0, profile: str = "sample",
              loads: list[float] | None = None, dataset: dict | None = None, analysis: dict | None = None,
              **config) -> Path:
    """A finished run folder: params, one metrics row per ``top1`` (the machine's ``loads`` beside them when given),
    summary.json as ``fit`` writes it, and ``analysis`` as analysis.json."""
    cfg = RunConfig(method=method, seed=seed, profile=profile, device="cpu", **config)
    identity = json.loads(json.dumps(cfg.identity(torch.device("cpu"), dataset or SAMPLE_DATA)))
    rows = [{"epoch": e + 1, "lr": 0.1, "train_loss": 1.0, "top1": t, "top5": 100.0, "val_loss": 1.0,
             "train_seconds": 2.0, "epoch_seconds": 2.5, "peak_mem_mb": 100.0, "world_size": 1}
            | ({"load_avg": loads[e]} if loads else {}) for e, t in enumerate(top1)]
    run_dir = root / profile / cfg.run_name()
    run_dir.mkdir(parents=True)
    write_json(run_dir / "params.json", {"config": cfg.to_dict(), "identity": identity})
    pd.DataFrame(rows).to_csv(run_dir / "metrics.csv", index=False)
    env = {"device_name": "test CPU", "cpu_count": 2, "host": "box", "torch": torch.__version__}
    write_json(run_dir / "summary.json", summarize(rows, cfg, env=env, identity=identity, extra={"world_size": 1}))
    if analysis is not None:
        write_json(run_dir / "analysis.json", analysis)
    return run_dir


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Hand-made summaries: (method, alpha, seed, top-1) rows of one backbone and settings at the protocol's length,
    each configuration its key."""
    return pd.DataFrame([dict(method=m, backbone="resnet18", settings="", alpha=a, seed=s, median_top1=v,
                              readout_top1=v, readout="online", best_top1=v + 1, epochs=400, width=64,
                              median_window=11, group_key=m, config_key=f"{m}-{a}") for m, a, s, v in rows])


# ----------------------------------------------------------------------------- the headline off the protocol
def test_short_runs_say_what_their_number_is_and_show_last_and_best_epoch(tmp_path):
    write_run(tmp_path, [40, 60, 70])  # the sample profile's 3 epochs
    write_run(tmp_path, [30, 45, 44], method="cutmix")
    s = load_runs("sample", tmp_path).summaries
    table = benchmark_table(s)
    assert ("R-18", "top-1: median of all 3 epochs") in table.columns and ("R-18", "top-1") not in table.columns
    assert table.loc["Vanilla", ("R-18", "last epoch")] == "70.00" and table.loc["Vanilla", ("R-18", "best epoch")] == "70.00"
    assert table.loc["CutMix", ("R-18", "last epoch")] == "44.00" and table.loc["CutMix", ("R-18", "best epoch")] == "45.00"
    assert table.loc["Vanilla", ("R-18", "top-1: median of all 3 epochs")] == "60.00"
    assert "2 of 2 runs have 3 epochs, fewer than the read-out's 11" in table_intro_html(s, "sample")

    long = tmp_path / "long"
    write_run(long, [50.0] * 11)
    s = load_runs("sample", long).summaries
    assert list(benchmark_table(s).columns.get_level_values(1))[0] == "top-1"  # the protocol's window: no aside
    assert "last epoch" not in benchmark_table(s).columns.get_level_values(1)
    assert "fewer than the read-out" not in table_intro_html(s, "sample")

    one = tmp_path / "one"
    write_run(one, [50.0], epochs=1)
    assert "1 of 1 run has 1 epoch, fewer than the read-out's 11" in table_intro_html(load_runs("sample", one).summaries,
                                                                                       "sample")


def test_openmixup_numbers_stand_only_beside_runs_on_its_protocol(tmp_path):
    write_run(tmp_path, [40, 60, 50, 70], epochs=4)
    sample = load_runs("sample", tmp_path).summaries
    assert not compares_with_openmixup(sample) and not sample["on_protocol"].any()
    table = benchmark_table(sample, reference=compares_with_openmixup(sample))
    assert "OpenMixup" not in table.columns.get_level_values(1) and "Δ OpenMixup" not in table.columns.get_level_values(1)
    assert "OpenMixup's published numbers are left out" in table_intro_html(sample, "sample")

    write_run(tmp_path, [60.0] * 400, profile="tiny-imagenet", dataset=TINY_DATA)
    write_run(tmp_path, [50.0] * 4, method="cutmix", profile="tiny-imagenet", dataset=TINY_DATA, epochs=4)
    full = load_runs("tiny-imagenet", tmp_path).summaries.set_index("method")
    assert full.loc["vanilla", "on_protocol"] and not full.loc["cutmix", "on_protocol"]  # 4 epochs: off it
    table = benchmark_table(full.reset_index(), reference=compares_with_openmixup(full))
    assert table.loc["Vanilla", ("R-18", "Δ OpenMixup")] == "-1.68"  # 60 - 61.68, published
    assert table.loc["CutMix (epochs 4)", ("R-18", "OpenMixup")] == "65.53"
    assert table.loc["CutMix (epochs 4)", ("R-18", "Δ OpenMixup")] == "–"
    assert "Δ OpenMixup only where" in table_intro_html(full.reset_index(), "tiny-imagenet")



def test_agreement_with_openmixup_is_read_only_over_cells_on_its_protocol():
    published = {"vanilla": 61.68, "mixup": 63.86, "cutmix": 65.53, "fmix": 63.47}  # the registry's R-18 numbers
    ours = {"vanilla": 60.0, "mixup": 62.0, "cutmix": 64.0, "fmix": 63.5}  # one pair swapped: MixUp, FMix
    s = frame([(m, None if m == "vanilla" else 1.0, 0, v) for m, v in ours.items()]).assign(on_protocol=True)
    agreement = openmixup_agreement(s).set_index("backbone")
    assert agreement.loc["R-18", "methods"] == 4 and agreement.loc["R-18", "Kendall τ"] == pytest.approx(4 / 6, abs=1e-3)
    mean_abs = sum(abs(ours[m] - published[m]) for m in ours) / 4
    assert agreement.loc["R-18", "mean |Δ OpenMixup|"] == pytest.approx(mean_abs, abs=1e-3)
    off = s.assign(on_protocol=s["method"] != "fmix")  # fmix off the protocol: left out
    assert openmixup_agreement(off).set_index("backbone").loc["R-18", "Kendall τ"] == pytest.approx(1.0)
    assert openmixup_agreement(s.assign(on_protocol=False)).empty


def test_the_title_names_the_dataset_and_its_size(tmp_path):
    write_run(tmp_path, [40, 60, 50, 70], epochs=4)
    runs = load_runs("sample", tmp_path)
    title = header_html(runs, "sample").split("</h1>")[0]
    assert "the generated sample set (10 classes; 1,000 train / 300 val images)" in title
    assert "Tiny-ImageNet" not in title
    empty = Runs(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), [])
    assert "(4 classes; 64 train / 32 val images)" in header_html(empty, "test").split("</h1>")[0]
    assert dataset_name("tiny-imagenet", TINY_DATA) == "Tiny-ImageNet"
    assert dataset_name("tiny-imagenet", {**TINY_DATA, "form": "cifar-100-python", "classes": 100}) == "CIFAR-100"
    assert dataset_name("tiny-imagenet", {"classes": 200}) == "Tiny-ImageNet"  # a record from before forms
    assert dataset_name("sample", TINY_DATA) == "generated sample set"


# ----------------------------------------------------------------------------- Δ Vanilla and seeds
def test_every_top1_table_has_delta_vanilla_from_the_matching_vanilla_run(tmp_path):
    write_run(tmp_path, [50.0] * 4)
    write_run(tmp_path, [53.0] * 4, method="mixup")
    write_run(tmp_path, [57.0] * 4, method="mixup", lr=0.1)  # no Vanilla at lr 0.1: no difference
    s = load_runs("sample", tmp_path).summaries
    for table in (benchmark_table(s), benchmark_table(s, value="best_top1", reference=False, code=False)):
        assert table.loc["MixUp", ("R-18", "Δ Vanilla")] == "+3.00"
        assert table.loc["MixUp (lr 0.1)", ("R-18", "Δ Vanilla")] == "–"
        assert table.loc["Vanilla", ("R-18", "Δ Vanilla")] == "ref"
    appendix = appendix_table(s).reset_index().set_index("settings")
    assert appendix.loc["–", "Δ Vanilla"].tolist() == ["ref", "+3.00"] and appendix.loc["lr 0.1", "Δ Vanilla"] == "–"
    tidy = tidy_table(s).set_index(["method", "settings"])["delta_vanilla"]
    assert tidy[("MixUp", "")] == 3.0 and pd.isna(tidy[("MixUp", "lr 0.1")])
    write_exports(s, tmp_path)
    md = (tmp_path / "benchmark.md").read_text()
    assert "| R-18 Δ Vanilla |" in md and "| Vanilla | – | 50.00 | ref |" in md and "| MixUp | 1 | 53.00 | +3.00 |" in md
    assert "OpenMixup" not in md  # off the protocol


def test_seeds_give_a_t_interval_and_a_paired_comparison_flagged_within_noise():
    s = frame([("vanilla", None, 0, 50.0), ("vanilla", None, 1, 51.0), ("vanilla", None, 2, 52.0),
               ("mixup", 1.0, 0, 52.0), ("mixup", 1.0, 1, 50.0), ("mixup", 1.0, 2, 55.0),  # differences 2, -1, 3
               ("cutmix", 1.0, 0, 55.0), ("cutmix", 1.0, 1, 56.0), ("cutmix", 1.0, 2, 57.0)])  # 5, 5, 5
    table = benchmark_table(s)
    assert table.loc["Vanilla", ("R-18", "top-1")] == "51.00 ± 1.00"
    assert table.loc["Vanilla", ("R-18", "95 % CI")] == "[48.52, 53.48]"  # 51 ± t(0.975, 2) 1 / √3 = 51 ± 2.484
    delta = vanilla_deltas(s)
    assert delta["mixup-1.0"].paired == 3 and delta["mixup-1.0"].delta == pytest.approx(4 / 3)
    assert delta["mixup-1.0"].within_noise and not delta["cutmix-1.0"].within_noise
    assert table.loc["MixUp", ("R-18", "Δ Vanilla")] == "+1.33 [-3.84, +6.50], 3 paired, within seed noise"
    assert table.loc["CutMix", ("R-18", "Δ Vanilla")] == "+5.00 [+5.00, +5.00], 3 paired"

    one = frame([("vanilla", None, 0, 50.0), ("mixup", 1.0, 0, 52.0)])
    table = benchmark_table(one)
    assert "95 % CI" not in table.columns.get_level_values(1)
    assert not any("±" in cell for cell in table.to_numpy().ravel())  # never "± 0.00" or "± nan"
    assert table.loc["MixUp", ("R-18", "Δ Vanilla")] == "+2.00"
    assert "n = 1 seed per configuration" in table_intro_html(one, "sample")
    assert appendix_table(one)["95 % CI"].tolist() == ["n=1", "n=1"]


# ----------------------------------------------------------------------------- the α search
def test_alpha_ties_follow_the_stated_rule_and_are_reported():
    s = frame([("cutmix", 0.2, 0, 32.8125), ("cutmix", 1.0, 0, 32.8099),  # equal as shown: published α 1 wins
               ("mixup", 0.5, 0, 40.0), ("mixup", 2.0, 0, 40.0), ("mixup", 0.2, 0, 30.0),  # published 1 not run
               ("fmix", 0.2, 0, 41.0), ("fmix", 1.0, 0, 40.0)])  # no tie: the better one
    best = best_alpha(s).set_index("method")
    assert best.loc["cutmix", "alpha"] == 1.0 and best.loc["cutmix", "tie_rule"] == "published α"
    assert best.loc["mixup", "alpha"] == 0.5 and best.loc["mixup", "tie_rule"] == "smallest α"
    assert best.loc["fmix", "alpha"] == 0.2 and best.loc["fmix", "tied"] == ()
    table = benchmark_table(s)
    assert table.loc["CutMix", ("R-18", "α")] == "1 (best of 2; tied with 0.2: published α)"
    assert table.loc["MixUp", ("R-18", "α")] == "0.5 (best of 3; tied with 2: smallest α)"
    assert table.loc["FMix*", ("R-18", "α")] == "0.2 (best of 2)"
    chosen = appendix_table(s)["chosen α"].droplevel(["backbone", "settings"])
    assert chosen[("CutMix", "1")] == "✓ (tied with 0.2: published α)" and chosen[("CutMix", "0.2")] == ""
    assert chosen[("MixUp", "0.5")].startswith("✓") and chosen[("MixUp", "2")] == chosen[("MixUp", "0.2")] == ""
    assert (chosen == "").sum() == 4 and (chosen != "").sum() == 3  # one ✓ per method


def test_a_top1_against_alpha_plot_per_searched_method():
    s = frame([("mixup", a, seed, v + seed) for a, v in ((0.2, 40.0), (1.0, 45.0), (2.0, 42.0)) for seed in (0, 1)]
              + [("cutmix", 1.0, 0, 50.0), ("vanilla", None, 0, 48.0)])
    fig = plot_alpha(s)
    (ax,) = fig.axes[:1]
    (curve,) = ax.containers  # MixUp only: CutMix ran one α, Vanilla none
    line = curve.lines[0]
    assert list(line.get_xdata()) == [0.2, 1.0, 2.0] and list(line.get_ydata()) == [40.5, 45.5, 42.5]
    (circled,) = [c for c in ax.collections if isinstance(c, PathCollection)]  # the error bars: LineCollections
    assert circled.get_offsets().tolist() == [[1.0, 45.5]]  # the chosen α
    plt.close(fig)
    assert plot_alpha(frame([("mixup", 1.0, 0, 40.0), ("cutmix", 1.0, 0, 50.0)])) is None


# ----------------------------------------------------------------------------- analysis numbers
def analysis_record(*, fgsm: float, ece: float, nll_se: float | None = 0.05) -> dict:
    bins = [{"lo": 0.0, "hi": 0.5, "count": 100, "accuracy": 0.4, "confidence": 0.3},
            {"lo": 0.5, "hi": 1.0, "count": 200, "accuracy": 0.8, "confidence": 0.9}]
    return {"version": ANALYSIS_VERSION, "clean": {"images": 300, "top1": 66.7},
            "calibration": {"ece": ece, "nll": 1.0, "bins": bins} | ({} if nll_se is None else {"nll_se": nll_se}),
            "adversarial": {"fgsm_top1": fgsm, "pgd_top1": fgsm - 5, "images": 64},
            "occlusion": {"auc": 50.0, "images": 100},
            "corruptions": {"generated": {"mean_top1": 40.0, "images": 30}, "official": None},
            "localization": {"top1_loc": 55.0, "images": 300}, "flops": {"train_step_per_image": 2.1e8}}


def test_analysis_numbers_carry_n_interval_direction_and_the_best_in_bold(tmp_path):
    write_run(tmp_path, [50.0] * 4, analysis=analysis_record(fgsm=50.0, ece=10.0))
    write_run(tmp_path, [55.0] * 4, method="mixup", analysis=analysis_record(fgsm=30.0, ece=5.0, nll_se=None))
    view, best = beyond_view(beyond_accuracy(load_runs("sample", tmp_path).summaries))
    view, best = view.droplevel(["backbone", "α", "settings"]), best.droplevel(["backbone", "α", "settings"])
    assert {"ECE % ↓ (n=300)", "NLL ↓ (n=300)", "FGSM % ↑ (n=64)", "PGD % ↑ (n=64)", "occlusion AUC % ↑ (n=100)",
            "corruption % ↑ (n=30)", "localization % ↑ (n=300)"} <= set(view.columns)
    lo, hi = wilson_interval(50.0, 64)
    assert view.loc["Vanilla", "FGSM % ↑ (n=64)"] == f"50.00 [{lo:.1f}, {hi:.1f}]" == "50.00 [38.1, 61.9]"
    assert best.loc["Vanilla", "FGSM % ↑ (n=64)"] and not best.loc["MixUp", "FGSM % ↑ (n=64)"]  # higher is better
    assert best.loc["MixUp", "ECE % ↓ (n=300)"] and not best.loc["Vanilla", "ECE % ↓ (n=300)"]  # lower is better
    assert view.loc["Vanilla", "NLL ↓ (n=300)"] == "1.00 [0.90, 1.10]"  # ± 1.96 SE of the mean over the images
    assert view.loc["MixUp", "NLL ↓ (n=300)"] == "1.00"  # a record without the SE: the value alone


def test_wilson_and_ece_intervals():
    assert wilson_interval(50.0, 100) == pytest.approx((40.383, 59.617), abs=1e-3)
    assert wilson_interval(0.0, 30)[0] == 0.0 and wilson_interval(0.0, 30)[1] == pytest.approx(11.351, abs=1e-3)
    record = analysis_record(fgsm=50, ece=10.0)["calibration"]
    se = 100 * (100 * 0.4 * 0.6 + 200 * 0.8 * 0.2) ** 0.5 / 300  # √(Σ n_m acc (1 - acc)) / N
    assert ece_interval(record) == pytest.approx((10 - 1.96 * se, 10 + 1.96 * se))
    assert ece_interval({**record, "ece": 1.0})[0] == 0.0  # floored


# ----------------------------------------------------------------------------- costs
def test_wall_time_ratios_are_greyed_unless_the_runs_loads_agree(tmp_path):
    write_run(tmp_path / "calm", [50.0] * 4, loads=[0.3, 0.4, 0.4, 0.5])
    write_run(tmp_path / "calm", [50.0] * 4, method="mixup", loads=[0.6, 0.7, 0.8, 0.9])
    calm = load_runs("sample", tmp_path / "calm").summaries
    assert calm.set_index("method")["load_avg"].to_dict() == {"vanilla": 0.4, "mixup": 0.75}  # medians
    assert timing_caveat(calm) is None
    assert list(cost_table(calm).columns)[0] == "train GFLOPs/image"
    assert "#aaa" not in cost_styler(calm).to_html() and "make bench" in cost_note_html(calm)

    write_run(tmp_path / "busy", [50.0] * 4, loads=[0.3] * 4)
    write_run(tmp_path / "busy", [50.0] * 4, method="mixup", loads=[1.2] * 4)
    busy = load_runs("sample", tmp_path / "busy").summaries
    assert "varied from 0.30 to 1.20" in timing_caveat(busy)
    assert "#aaa" in cost_styler(busy).to_html() and "× Vanilla is greyed" in cost_note_html(busy)
    assert "more than its 2 cores" in timing_caveat(busy.assign(load_avg=[2.4, 2.6]))
    assert "did not record the machine's load" in timing_caveat(busy.assign(load_avg=[0.3, float("nan")]))
    assert "different devices" in timing_caveat(busy.assign(load_avg=0.3, device_name=["a", "b"]))


@pytest.mark.slow
def test_fit_records_the_machines_load_each_epoch(tmp_path):
    from mixnb.train import fit

    fit(RunConfig(profile="test", epochs=1, width=4, device="cpu"), tmp_path, progress="none")
    load = pd.read_csv(tmp_path / "metrics.csv")["load_avg"]
    assert len(load) == 1 and load.notna().all() and (load >= 0).all()


# ----------------------------------------------------------------------------- run pages
def test_a_run_page_leads_with_its_summary_and_links_and_drops_the_defaults_cell(tmp_path):
    """The page opens on the run's numbers (escaped) and links back to the report and to its files; the notebook's
    defaults cell (tag "parameters", read before papermill's injected one) is not shown."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from mixnb.report import write_run_pages

    run = write_run(tmp_path, [50.0, 60.0, 55.0], method="cutmix")
    summary = json.loads((run / "summary.json").read_text())
    write_json(run / "summary.json", {**summary, "environment": {"device_name": "<b>box</b>"}})
    defaults = new_code_cell('method = "vanilla"  # defaults', metadata={"tags": ["parameters"]})
    injected = new_code_cell('method = "cutmix"', metadata={"tags": ["injected-parameters"]})
    nbformat.write(new_notebook(cells=[defaults, injected]), run / "train.ipynb")
    write_run_pages([run], tmp_path / "report")
    page = (tmp_path / "report" / "runs" / run.name / "index.html").read_text()
    box = page[page.index('class="mixnb-run-summary"'):page.index("</table>")]
    assert "<td>cutmix</td>" in box and "<td>60.00</td>" in box and "<td>55.00</td>" in box  # best and last epoch
    assert "&lt;b&gt;box&lt;/b&gt;" in box and "<b>box</b>" not in page
    assert all(f'href="{h}"' in page for h in ("../../benchmark.html", "params.json", "metrics.csv", "summary.json"))
    assert 'href="analysis.json"' not in page  # only files that exist
    assert "defaults" not in page and "cutmix" in page[page.index("</table>"):]
