"""Experiments as data: one config path (notebook, CLI, sweep), run identity, no stale or pooled results, grids."""

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest

from helpers import TEST  # tests/helpers.py, on sys.path
from mixnb.__main__ import main
from mixnb.config import RunConfig
from mixnb.data import make_sample_dataset
from mixnb.paths import NOTEBOOKS
from mixnb.report import appendix_table, benchmark_table, best_alpha, load_runs
from mixnb.runs import RunConflict
from mixnb.sweep import dry_run, expand, run_sweep
from mixnb.train import fit


# ----------------------------------------------------------------------------- one configuration path
@pytest.mark.slow
def test_papermill_runs_what_its_parameters_say(tmp_path):
    """`-p lr 0.1` trains at 0.1 (it was dropped); `-p epoch 1` fails naming `epochs` (it started 400)."""
    def papermill(*params: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(tmp_path / "o.ipynb"),
                               "-k", "mixnb", "--no-progress-bar", "-p", "profile", "test", "-p", "analysis", "False",
                               "-p", "run_dir", str(tmp_path / "run"), *params], capture_output=True, text=True)

    proc = papermill("-p", "epochs", "1", "-p", "lr", "0.1", "-p", "method", "mixup", "-p", "method_args",
                     '{"alpha": 0.2}', "-p", "eval_batch_size", "7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    params = json.loads((tmp_path / "run" / "params.json").read_text())
    assert params["config"]["lr"] == 0.1 and params["identity"]["method_args"]["alpha"] == 0.2
    assert params["config"]["eval_batch_size"] == 7
    proc = papermill("-p", "epoch", "1")
    assert proc.returncode != 0 and "unknown parameter(s) ['epoch']" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_accumulates_repeated_options_and_types_method_args(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "mixup", "--profile", "test", "--epochs", "1", "--device", "cpu",
                 "--progress", "none", "--run-dir", str(run), "--set", "lr=0.05", "--set", "weight_decay=0.0005",
                 "--arg", "alpha=0.3"]) == 0
    identity = json.loads((run / "params.json").read_text())["identity"]
    assert (identity["lr"], identity["weight_decay"], identity["method_args"]["alpha"]) == (0.05, 0.0005, 0.3)
    assert main(["train", "--method", "cutmix", "--arg", "alpha=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alpha expects a number" in err and "Traceback" not in err
    help_text = subprocess.run([sys.executable, "-m", "mixnb", "train", "--help"], capture_output=True, text=True).stdout
    help_text = " ".join(help_text.split())  # argparse wraps at the terminal's width
    assert "{auto,off,default,reduce-overhead" in help_text and "None: the profile's (0.2 Tiny" in help_text
    assert "--weight-decay" in help_text


# ----------------------------------------------------------------------------- run identity
def test_fit_refuses_another_configs_folder_instead_of_returning_its_summary(tmp_path):
    first = fit(RunConfig(method="mixup", **TEST), tmp_path, progress="none")
    assert fit(RunConfig(method="mixup", **TEST), tmp_path, progress="none") == first  # same run: finished
    with pytest.raises(RunConflict, match=r"lr: 0.2 there, 0.05 now.*method_args.alpha: 1.0 there, 0.3 now"):
        fit(RunConfig(method="mixup", lr=0.05, method_args={"alpha": 0.3}, **TEST), tmp_path, progress="none")
    (tmp_path / "summary.json").unlink()  # a resumable run: the same refusal
    with pytest.raises(RunConflict, match="another run"):
        fit(RunConfig(method="mixup", lr=0.05, **TEST), tmp_path, progress="none")


def test_a_run_never_resumes_on_another_dataset(tmp_path, monkeypatch):
    """MIXNB_DATA pointed at another folder with the same class count: refused, naming the dataset."""
    sets = [make_sample_dataset(tmp_path / name, seed=seed, num_classes=4, train_per_class=8, val_per_class=4)
            for name, seed in (("a", 0), ("b", 1))]
    monkeypatch.setenv("MIXNB_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(profile="tiny-imagenet", epochs=1, width=4, device="cpu")
    monkeypatch.setenv("MIXNB_DATA", str(sets[0]))
    summary = fit(cfg, tmp_path / "run", progress="none")
    assert summary["identity"]["dataset"]["root"] == str(sets[0].resolve())
    (tmp_path / "run" / "summary.json").unlink()
    monkeypatch.setenv("MIXNB_DATA", str(sets[1]))
    with pytest.raises(RunConflict, match="dataset.content_key"):
        fit(cfg, tmp_path / "run", progress="none")


def test_resume_is_not_blocked_by_a_compile_change(tmp_path):
    """A run written with compile="off" resumes (and reads as finished) under another compile mode."""
    cfg = RunConfig(method="vanilla", compile="off", **TEST)
    summary = fit(cfg, tmp_path, progress="none")
    (tmp_path / "summary.json").unlink()  # resume from the last checkpoint: nothing left to train, no compile
    resumed = fit(dataclasses.replace(cfg, compile="default"), tmp_path, progress="none")
    assert resumed["median_top1"] == summary["median_top1"] and resumed["config"]["compile"] == "default"


# ----------------------------------------------------------------------------- grids and the table
def test_best_alpha_selection_and_no_pooling_across_settings():
    rows = pd.DataFrame([
        dict(method="cutmix", backbone="resnet18", settings="", alpha=a, seed=s, median_top1=v,
             group_key="g", config_key=f"cutmix-{a}") for a, s, v in
        [(1.0, 0, 50.0), (1.0, 1, 52.0), (0.2, 0, 60.0), (0.2, 1, 58.0)]])
    best = best_alpha(rows)
    assert list(best["alpha"]) == [0.2] and list(best["mean"]) == [59.0] and list(best["count"]) == [2]
    table = benchmark_table(rows)
    assert table.loc["CutMix", ("R-18", "α")] == "0.2 (best of 2)" and table.loc["CutMix", ("R-18", "seeds")] == "2"
    assert table.loc["CutMix", ("R-18", "top-1")] == "59.00 ± 1.41"  # never 55.00 ± 4.76 over both alphas
    appendix = appendix_table(rows)
    assert sorted(appendix["median top-1"]) == ["51.00 ± 1.41", "59.00 ± 1.41"]


@pytest.mark.slow
def test_alphas_sweep_reports_the_better_alpha_and_runs_nothing_twice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    jobs = expand("test", ["mixup"], alphas=[0.5, 1], epochs=1, analysis=False)
    assert "2 to run" in dry_run(jobs)
    assert run_sweep(jobs) == []
    assert "done mixup-resnet18-s0-a0.5-ep1: median top-1" in capsys.readouterr().out
    assert "2 finished, 0 to run" in dry_run(jobs) and run_sweep(jobs) == []
    runs = load_runs("test")
    s = runs.summaries.set_index("alpha")["median_top1"]
    better = 0.5 if round(s[0.5], 2) > round(s[1.0], 2) else 1.0  # ties (at the 2 decimals shown): the published 1
    tie = "; tied with 0.5: published α" if round(s[0.5], 2) == round(s[1.0], 2) else ""
    assert benchmark_table(runs.summaries).iloc[0][("R-18", "α")] == f"{better:g} (best of 2{tie})"
    assert len(appendix_table(runs.summaries)) == 2


def test_a_setting_added_later_at_its_default_does_not_orphan_a_finished_run(tmp_path):
    """A run recorded before a method setting existed (here: DecoupleMix's) still reads as itself."""
    cfg = RunConfig(method="cutmix", **TEST)
    summary = fit(cfg, tmp_path, progress="none")
    for name in ("params.json", "summary.json"):
        record = json.loads((tmp_path / name).read_text())
        for key in ("decouple", "decouple_eta", "decouple_form"):
            del record["identity"]["method_args"][key]
        (tmp_path / name).write_text(json.dumps(record))
    assert fit(cfg, tmp_path, progress="none")["median_top1"] == summary["median_top1"]
    with pytest.raises(RunConflict, match="method_args.decouple: False there, True now"):
        fit(RunConfig(method="cutmix", method_args={"decouple": True}, **TEST), tmp_path, progress="none")


def test_cli_help_lists_each_methods_settings():
    """--arg's help in train and sweep names every method's keys (the registry's defaults), so no one guesses them."""
    import argparse

    from mixnb.__main__ import _add_config_options
    from mixnb.sweep import add_sweep_options

    for add in (_add_config_options, add_sweep_options):
        p = argparse.ArgumentParser()
        add(p)
        text = " ".join(p.format_help().split())
        assert "cutmix: alpha, partner_tries" in text and "puzzlemix: alpha, block_nums" in text and "t_size" in text
