"""Reliability: no code runs from a run folder, a diverged run never becomes a result, and every failure
says what and where (the run-folder half; the dataset half is in test_data.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TEST  # tests/helpers.py, on sys.path
from mixnb import runs
from mixnb.__main__ import main
from mixnb.config import RunConfig
from mixnb.gallery import photo_galleries
from mixnb.io import HOST
from mixnb.paths import NOTEBOOKS
from mixnb.mixups import StepOutput
from mixnb.mixups.vanilla import Vanilla
from mixnb.report import load_runs, render_report
from mixnb.runs import is_finished
from mixnb.sweep import expand, run_sweep
from mixnb.train import Diverged, Generators, fit


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_malicious_checkpoint_runs_no_code(tmp_path):
    run = tmp_path / "vanilla-resnet18-s0"  # where AttentiveMix+ looks for its teacher
    fit(RunConfig(method="vanilla", **TEST), run, progress="none")
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="holds Python objects.*will not load"):
        runs.load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(Exception):  # the AttentiveMix+ teacher lookup reads the same file
        runs.needed_run(RunConfig(method="attentivemix", **TEST), tmp_path)
    [(_, why)] = photo_galleries(tmp_path / "gallery", methods=["attentivemix"], n_images=2)  # the report's teacher
    assert "holds Python objects" in why
    notebook = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(tmp_path / "o.ipynb"),
                               "-k", "mixnb", "-p", "profile", "test", "-p", "epochs", "1", "-p", "device", "cpu",
                               "-p", "run_dir", str(run), "--no-progress-bar"], capture_output=True, text=True)
    assert notebook.returncode != 0 and "holds Python objects" in notebook.stdout + notebook.stderr  # re-executed
    (run / "summary.json").unlink()  # resume: the checkpoint is read
    with pytest.raises(ValueError, match="holds Python objects"):
        fit(RunConfig(method="vanilla", **TEST), run, progress="none")
    assert not marker.exists()


def test_non_finite_loss_stops_the_run_at_its_first_bad_step(tmp_path, monkeypatch):
    """Iteration 3 of epoch 2 returns NaN: the run stops naming it, keeps epoch 1's checkpoint, no summary."""
    real = Vanilla.training_step

    def poisoned(self, model, x, y, ctx):
        out = real(self, model, x, y, ctx)
        return StepOutput(out.loss * float("nan"), out.logs) if (ctx.epoch, ctx.step) == (1, 6) else out

    monkeypatch.setattr(Vanilla, "training_step", poisoned)
    cfg = RunConfig(method="vanilla", profile="test", epochs=3, batch_size=16, log_every=2, device="cpu")
    with pytest.raises(Diverged, match=r"epoch 2, iteration 3 of the epoch \(step 7 of the run\)"):
        fit(cfg, tmp_path, progress="none")
    assert not (tmp_path / "summary.json").exists() and not is_finished(tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the last good one
    assert "iteration 3" in json.loads((tmp_path / "failed.json").read_text())["reason"]
    with pytest.raises(Diverged, match="stopped before.*delete"):  # not silently retried
        fit(cfg, tmp_path, progress="none")


@pytest.mark.slow
def test_a_diverged_sweep_run_is_failed_with_its_reason_and_shown_as_diverged(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    jobs = expand("test", ["mixup"], epochs=2, sets={"lr": [1e6]}, analysis=False)
    [(job, reason)] = run_sweep(jobs)
    assert "diverged" in reason and "non-finite" in reason
    runs = load_runs("test")
    assert runs.summaries.empty and list(runs.diverged["run"]) == [job.config.run_name()]
    with pytest.raises(ValueError, match="alpha must be finite"):
        RunConfig(method="mixup", method_args={"alpha": float("inf")})


@pytest.mark.slow
def test_a_report_from_a_folder_full_of_markup_has_none_of_it_live(tmp_path, monkeypatch):
    evil = "<svg onload=alert(1)>"
    runs = tmp_path / f"runs{evil}"
    monkeypatch.setenv("MIXNB_RUNS", str(runs))
    data = tmp_path / "data<img src=x onerror=alert(2)>"
    from mixnb.data import make_sample_dataset

    make_sample_dataset(data, num_classes=4, train_per_class=8, val_per_class=4)
    cfg = RunConfig(method="vanilla", data=str(data), **TEST)
    fit(cfg, runs / "test" / cfg.run_name(), progress="none")
    foreign = runs / "test" / "vanilla-resnet18-s<seed>"
    foreign.mkdir()
    (foreign / "metrics.csv").write_text("epoch\n1\n")
    (foreign / "summary.json").write_text(json.dumps({"epochs": 1, "method": "<script>alert(3)</script>"}))
    html = render_report("test").read_text()
    for live in ("<svg onload", "<img src=x", "<script>alert"):
        assert live not in html
    assert "data&lt;img src=x" in html  # shown, escaped
    assert "<code>vanilla-resnet18-s&lt;seed&gt;</code> unreadable" in html  # the foreign folder named as left out


@pytest.mark.slow
def test_the_sweep_survives_a_crashing_worker_and_the_report_a_broken_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    from mixnb.sweep import job as sweep_job

    tried = []

    def execute(job, *, env=None, pass_fds=()):
        tried.append(job.config.method)
        if job.config.method == "vanilla":
            raise OSError(30, "Read-only file system", str(job.run_dir / ".lock"))
        fit(job.config, job.run_dir, progress="none")

    monkeypatch.setattr(sweep_job, "execute", execute)
    # one job at a time, in order: with two slots both would start at once and prove nothing (and race, CI stop 27)
    failures = run_sweep(expand("test", ["vanilla", "mixup"], epochs=1, analysis=False), cpu_jobs=1)
    assert tried == ["vanilla", "mixup"]  # the crash did not end the sweep
    assert [(j.config.method, r) for j, r in failures] == [("vanilla", "OSError: [Errno 30] Read-only file system: "
                                                           f"'{tmp_path}/test/vanilla-resnet18-s0-ep1/.lock'")]
    rc = subprocess.run([sys.executable, "-m", "mixnb", "sweep", "--profile", "test", "--methods", "nope"],
                        capture_output=True, text=True)
    assert rc.returncode == 2 and "unknown method 'nope'" in rc.stderr and "Traceback" not in rc.stderr
    mixup = tmp_path / "test" / "mixup-resnet18-s0-ep1"
    (mixup / "checkpoint.pt").write_bytes(b"")  # a 0-byte checkpoint of a finished run: still in the table
    assert list(load_runs("test").summaries["method"]) == ["mixup"]
    vanilla = tmp_path / "test" / "vanilla-resnet18-s0"  # ... and a broken teacher: the gallery says why
    fit(RunConfig(method="vanilla", **TEST), vanilla, progress="none")
    (vanilla / "checkpoint.pt").write_bytes(b"")
    [(_, why)] = photo_galleries(tmp_path / "test" / "gallery", methods=["attentivemix"], n_images=2)
    assert isinstance(why, str) and "checkpoint.pt is corrupt" in why


def test_rank_and_epoch_streams_are_distinct_and_seeds_fit_the_generator():
    def draws(rank: int, epoch: int = 0, seed: int = 0) -> list[torch.Tensor]:
        gens = Generators.from_seed(seed, torch.device("cpu"), rank=rank)
        if epoch:
            gens.seed_rank_streams(seed, rank, epoch)
        return [torch.rand(4, generator=g) for g in (gens.mix, gens.host)]

    a, b, c = draws(0), draws(1), draws(0, epoch=3)
    assert all(not torch.equal(x, y) for x, y in zip(a, b))  # ranks differ (they were equal)
    assert all(not torch.equal(x, y) for x, y in zip(a, c))  # a resume with another rank count re-seeds
    assert all(torch.equal(x, y) for x, y in zip(a, draws(0)))  # and the streams are reproducible
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        RunConfig(seed=2**32)  # would have been seed 0 again


def test_a_finished_run_without_its_checkpoint_is_not_retrained(tmp_path):
    cfg = RunConfig(method="vanilla", **TEST)
    summary = fit(cfg, tmp_path, progress="none")
    (tmp_path / "checkpoint.pt").unlink()
    before = (tmp_path / "metrics.csv").stat().st_mtime_ns
    assert fit(cfg, tmp_path, progress="none") == summary
    assert (tmp_path / "metrics.csv").stat().st_mtime_ns == before


def test_temp_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / f".{name}.{HOST}-{dead.pid}.x.tmp" for name in ("checkpoint.pt", "metrics.csv")]
    live = tmp_path / f".checkpoint.pt.{HOST}-{os.getpid()}.y.tmp"
    for p in (*stale, live):
        p.write_bytes(b"half")
    fit(RunConfig(method="vanilla", **TEST), tmp_path, progress="none")
    assert not any(p.exists() for p in stale) and live.exists()


def test_user_errors_print_one_line_and_debug_keeps_the_traceback(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixnb prepare: error:") and "missing" in err and err.count("\n") == 1
    with pytest.raises(Exception):
        main(["--debug", "prepare", str(tmp_path / "missing")])
    assert main(["train", "--profile", "test", "--set", "min_lr=0.5"]) == 2
    assert "min_lr 0.5 is above lr 0.2" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_analysis_keeps_the_run_is_reported_and_is_retried_by_the_next_sweep(tmp_path, monkeypatch):
    from mixnb.report import analysis_failures_html
    from mixnb.runs import analysis_failure, needs_analysis, read_analysis

    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    [job] = expand("test", ["vanilla"], epochs=1)
    fit(job.config, job.run_dir, progress="none")  # trained; not analysed yet
    trained = (job.run_dir / "summary.json").read_text()
    monkeypatch.setenv("MIXNB_TINC", str(tmp_path / "moved"))  # the analysis' last section fails, as an OOM would
    [(_, reason)] = run_sweep([job])
    assert reason.startswith("analysis failed: FileNotFoundError: MIXNB_TINC=") and "tries again" in reason
    assert is_finished(job.run_dir) and read_analysis(job.run_dir) is None and needs_analysis(job.run_dir)
    assert "FileNotFoundError" in analysis_failure(job.run_dir)["reason"]
    html = analysis_failures_html(load_runs("test").summaries, "test")
    assert "Analysis failed for 1 finished run(s)" in html and job.run_dir.name in html
    monkeypatch.delenv("MIXNB_TINC")
    assert run_sweep([job]) == []  # retried, not retrained
    assert (job.run_dir / "summary.json").read_text() == trained
    assert read_analysis(job.run_dir) is not None and analysis_failure(job.run_dir) is None
    assert analysis_failures_html(load_runs("test").summaries, "test") == ""


def test_a_damaged_executed_notebook_is_skipped_by_the_report_and_never_left_by_the_sweep(tmp_path, monkeypatch,
                                                                                           capsys):
    import nbformat

    import mixnb.report.render as report
    from mixnb.sweep import Job
    from mixnb.sweep.job import execute

    whole = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# curves")]))
    cut, fine = tmp_path / "runs" / "cut", tmp_path / "runs" / "fine"
    for run_dir, text in ((cut, whole[:40]), (fine, whole)):
        run_dir.mkdir(parents=True)
        (run_dir / "train.ipynb").write_text(text)
    pages = []
    monkeypatch.setattr(report, "_to_html", lambda notebook, html, **kw: pages.append(html.parent.name))
    report.write_run_pages([cut, fine], tmp_path / "report")  # raised NotJSONError, without the path, on the first
    assert pages == ["fine"]
    out = capsys.readouterr().out
    assert f"{cut / 'train.ipynb'} is damaged (NotJSONError" in out and "delete it" in out and out.count("\n") == 1

    def papermill(text, rc):  # writes ``text`` to its output path, as papermill killed mid-write (or not) would
        def run(cmd, **kwargs):
            Path(cmd[4]).write_text(text)
            return subprocess.CompletedProcess(cmd, rc)
        return run

    job = Job(RunConfig(method="vanilla", profile="test"), runs=tmp_path / "sweep")
    monkeypatch.setattr(subprocess, "run", papermill(whole, 0))
    execute(job)
    assert (job.run_dir / "train.ipynb").read_text() == whole
    monkeypatch.setattr(subprocess, "run", papermill(whole[:40], -9))
    with pytest.raises(RuntimeError, match="papermill failed; see"):
        execute(job)
    assert sorted(p.name for p in job.run_dir.iterdir()) == ["papermill.log"]  # no cut notebook, no stale one, no temp


PAYLOADS = ['<scr<script></script>ipt>alert(1)</script>', "<img src=x onerror=alert(2)>",
            '<a href="javascript:alert(3)">j</a>', "<svg onload=alert(4)>",
            '<iframe src="https://example.com"></iframe>', '<a href=" JaVaScRiPt:alert(5)">k</a>',
            '<a href="data:text/html,<script>alert(6)</script>">d</a>']
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAEElEQVR4nGP8z4AATAxEcQAz0QEHOoQ+uAAA"
       "AABJRU5ErkJggg==")  # a 4x4 red PNG


def _live_markup(html: str) -> list[str]:
    return [m for m in ("<script", "<svg", "<iframe", "onerror=", "onload=", "javascript:", 'href="data:')
            if m in html.lower()]


def test_a_run_page_keeps_its_notebook_and_none_of_its_script(tmp_path):
    """A crafted train.ipynb in a run folder: markdown and HTML outputs full of payloads, a JavaScript output."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    from mixnb.report import sanitised, write_run_pages

    assert _live_markup(sanitised("".join(PAYLOADS))) == []
    legit = (f'<div class="jp-OutputArea-output"><img alt="curve" src="{PNG}"><table class="dataframe"><tbody><tr>'
             '<td>1.5</td></tr></tbody></table></div>')
    assert sanitised(legit) == legit

    outputs = [new_output("display_data", data={"text/html": "".join(PAYLOADS) + legit}),
               new_output("display_data", data={"image/png": PNG.split(",")[1]}),
               new_output("display_data", data={"application/javascript": "alert(7)"})]
    notebook = new_notebook(cells=[new_markdown_cell("## Learning curve\n" + "\n".join(PAYLOADS)),
                                   new_code_cell("print(1)", outputs=outputs)],
                            metadata={"title": "<script>alert(8)</script>"})
    run = tmp_path / "run"
    run.mkdir()
    nbformat.write(notebook, run / "train.ipynb")
    write_run_pages([run], tmp_path / "report")
    page = (tmp_path / "report" / "runs" / "run" / "index.html").read_text()
    assert _live_markup(page) == [] and "alert(" not in page.replace("ipt&gt;alert(1)", "")  # text, not script
    assert page.count(f'src="{PNG}"') == 2 and "<td>1.5</td>" in page and '<h2 id="Learning-curve">' in page
    assert "<style" in page and "<title>mixnb run run</title>" in page  # the template's CSS and title kept


def test_labels_and_exports_escape_what_matplotlib_markdown_and_latex_would_read(tmp_path):
    import pandas as pd

    from mixnb.report import config_label, plot_curves
    from mixnb.report.exports import _md, _tex

    assert config_label("mixup", 0.2, "spectrum $x$") == r"MixUp α 0.2 (spectrum \$x\$)"
    metrics = pd.DataFrame({"backbone": "resnet18", "method": "mixup", "alpha": 0.2, "settings": r"eps $\frac{$",
                            "epoch": [1, 2], "top1": [1.0, 2.0], "train_loss": [3.0, 2.5]})
    plot_curves(metrics).savefig(tmp_path / "curves.png")  # mathtext: ParseFatalException, the report stopped
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert _md(r"lr 0.1 | a\b") == r"lr 0.1 \| a\\b"
    assert _tex(r"\ & % $ # _ { } ~ ^ ±") == (r"\textbackslash{} \& \% \$ \# \_ \{ \} \textasciitilde{} "
                                               r"\textasciicircum{} $\pm$")


# ----------------------------------------------------------------------------- issue 24: one run, one folder
def _finished_run(runs_root: Path, **config) -> Path:
    """A finished run of the test profile (params, metrics, summary; no checkpoint, gallery or analysis) recorded
    on the dataset the sweep reads, in ``runs_root``/test/<its run name>."""
    from test_report import write_run

    from mixnb.runs import dataset_record, load_data

    cfg = RunConfig(profile="test", epochs=1, device="cpu")
    return write_run(runs_root, [50.0], profile="test", epochs=1, dataset=dataset_record(load_data(cfg)), **config)


def test_the_same_dataset_given_two_ways_is_one_run_folder(tmp_path, monkeypatch):
    """``train --set data=D`` beside a sweep with MIXNB_DATA=D trained the same run twice, in two folders."""
    from mixnb.paths import run_dir

    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    monkeypatch.setenv("MIXNB_DATA", "/data/tiny-imagenet-200")
    [swept] = expand("tiny-imagenet", ["vanilla"], ["resnet18"])
    [given] = expand("tiny-imagenet", ["vanilla"], ["resnet18"], sets={"data": ["/data/./tiny-imagenet-200/"]})
    trained = RunConfig(profile="tiny-imagenet", data="/data/tiny-imagenet-200")
    assert given.run_dir == swept.run_dir == run_dir("tiny-imagenet", trained.run_name())
    dataset = {"content_key": "a", "classes": 200, "train_images": 100_000, "val_images": 10_000,
               "root": "/data/tiny-imagenet-200", "form": "tiny-imagenet-zip", "label_order": "wnids.txt", "boxes": True}
    swept.run_dir.mkdir(parents=True)
    (swept.run_dir / "params.json").write_text(json.dumps({"identity": trained.identity(torch.device("cpu"), dataset)}))
    with pytest.raises(runs.RunConflict, match="dataset.content_key: 'a' there, 'b' now"):  # other data: refused
        runs.check_identity(swept.run_dir, trained.identity(torch.device("cpu"), {**dataset, "content_key": "b"}))


def test_a_copied_run_folder_is_left_out_never_another_seed(tmp_path):
    import shutil

    from test_report import write_run

    run = write_run(tmp_path, [30.0, 29.69])
    shutil.copytree(run, run.with_name(f"{run.name}.bak"))
    loaded = load_runs("sample", tmp_path)
    assert list(loaded.summaries["run"]) == [run.name]  # "29.69 ± 0.00, 2 seeds" from one run
    [(name, why)] = loaded.skipped
    assert name == f"{run.name}.bak" and f"its config's run is {run.name}" in why and "never counted as a seed" in why


# ----------------------------------------------------------------------------- issue 24: one notion of done
def test_every_product_a_run_owes_is_one_check_that_the_sweep_and_analyze_use(tmp_path, monkeypatch, capsys):
    """A finished run owes its gallery and analysis; the sweep makes the missing ones (the notebook again for the
    gallery), and with checkpoint.pt deleted says once that they cannot be made instead of retrying forever."""
    from mixnb.runs import ANALYSIS, GALLERY, missing_products
    from mixnb.sweep import job as sweep_job

    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    run = _finished_run(tmp_path)
    gone = "cannot be made: checkpoint.pt deleted"
    assert missing_products(run, analysis=True) == {GALLERY: gone, ANALYSIS: gone}
    assert missing_products(run.with_name("none"), analysis=False) == {"summary.json": None}
    made = []
    monkeypatch.setattr(sweep_job, "execute", lambda job, **kw: made.append("notebook") or (run / GALLERY).touch())
    monkeypatch.setattr(sweep_job, "analyse", lambda job, **kw: made.append("analysis"))
    [job] = expand("test", ["vanilla"], epochs=1)
    assert job.run_dir == run and run_sweep([job]) == [] and made == []  # not retried ...
    assert f"{run.name}: {GALLERY} {gone}; {ANALYSIS} {gone} (its result stands)" in capsys.readouterr().out
    assert main(["analyze", str(run)]) == 0  # ... nor a failure of make analyze
    assert f"{ANALYSIS} {gone}" in capsys.readouterr().out
    (run / "checkpoint.pt").write_bytes(b"weights")
    [(_, reason)] = run_sweep([job])  # the notebook failed after training: run again, it makes the gallery
    assert made == ["notebook"] and reason.startswith("analysis failed") and missing_products(run, analysis=False) == {}


def test_a_damaged_analysis_or_corruption_cache_under_its_key_is_rebuilt(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mixnb.analysis.corruptions import generated_corruptions
    from mixnb.analysis.settings import AnalysisSettings
    from test_report import analysis_record, write_run

    run = write_run(tmp_path, [50.0], analysis={**analysis_record(fgsm=50.0, ece=1.0), "calibration": None})
    assert runs.read_analysis(run) is None and runs.needs_analysis(run)  # was returned: a TypeError on every read
    monkeypatch.setenv("MIXNB_CACHE", str(tmp_path / "cache"))
    data = SimpleNamespace(x_val=torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8), y_val=torch.arange(6),
                           content_key="k", root=str(tmp_path / "data"))
    s = AnalysisSettings(corruptions=("brightness",), corruption_severities=(1,), corruption_images=4)
    made = generated_corruptions(data, s)
    torch.save({**{k: made[k] for k in ("key", "idx", "names", "severities", "generation_seconds")},
                "x": torch.zeros(1, dtype=torch.uint8)}, made["path"])  # the key is right, the images are not
    again = generated_corruptions(data, s)
    assert not again["cached"] and torch.equal(again["x"], made["x"])
    assert generated_corruptions(data, s)["cached"]


def test_analyze_refuses_a_checkpoint_of_another_run(tmp_path):
    from mixnb.analysis import analyze_or_record
    from test_report import write_run

    run = write_run(tmp_path, [50.0])
    other = json.loads((write_run(tmp_path, [50.0], method="mixup") / "params.json").read_text())["identity"]
    torch.save({"identity": other, "model": {}, "rows": [], "epoch": 1}, run / "checkpoint.pt")  # copied in
    assert analyze_or_record(run) is None
    reason = runs.analysis_failure(run)["reason"]
    assert "checkpoint.pt is another run's checkpoint" in reason and "method: 'vanilla' in params.json, 'mixup' in it" in reason


# ----------------------------------------------------------------------------- issue 24: lower harm
def test_the_dry_run_lists_a_diverged_run_as_diverged(tmp_path, monkeypatch):
    from mixnb.sweep import dry_run, plan

    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    monkeypatch.setattr(plan, "memory_cells", lambda job: "")  # the memory model is not what is tested
    run = _finished_run(tmp_path)
    (run / "summary.json").unlink()
    runs.mark_failed(run, "diverged: non-finite loss at epoch 1")
    out = dry_run(expand("test", ["vanilla"], epochs=1))
    assert "\ndiverged  " in out and "1 runs: 0 finished, 0 to run, 1 diverged" in out


def test_the_analysis_notebook_refuses_an_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'smaple'; valid: .*sample"):
        load_runs("smaple")  # analysis.ipynb's parameters: an empty report, rc 0


def test_ctrl_c_and_a_failed_report_notebook_end_in_one_line(monkeypatch, capsys):
    import mixnb.report

    def interrupted(profile):
        raise KeyboardInterrupt

    def notebook_failed(profile):
        raise subprocess.CalledProcessError(1, [sys.executable, "-m", "papermill", "notebooks/analysis.ipynb", "out"])

    monkeypatch.setattr(mixnb.report, "render_report", interrupted)
    assert main(["report", "--profile", "test"]) == 130
    assert capsys.readouterr().err == "mixnb report: interrupted\n"
    monkeypatch.setattr(mixnb.report, "render_report", notebook_failed)
    assert main(["report", "--profile", "test"]) == 1
    assert capsys.readouterr().err == ("mixnb report: error: -m papermill notebooks/analysis.ipynb exited with status 1 "
                                       "(its error is above)\n")


def test_make_passes_every_value_as_one_quoted_word():
    """Unquoted, SET="lr=0.1; echo pwned" ran echo and PROFILE="a b" split in two."""
    from mixnb.paths import ROOT

    out = subprocess.run(["make", "-n", "sweep", "DRY_RUN=1", "SET=lr=0.1; echo pwned", "PROFILE=a b",
                          "ARGS=cutmix:alpha=0.5 it's"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    [command] = [line for line in out.splitlines() if " -m mixnb sweep " in line]
    assert "--profile 'a b'" in command and "--set 'lr=0.1;' 'echo' 'pwned'" in command
    assert "--arg 'cutmix:alpha=0.5' 'it'\\''s'" in command


def test_make_n_sweep_prints_the_sweep_and_runs_nothing(tmp_path):
    """make -n ran a real sweep while the recipe called $(MAKE) (make runs such lines even under -n)."""
    from mixnb.paths import ROOT

    env = {**os.environ, "MIXNB_RUNS": str(tmp_path / "runs"), "MIXNB_REPORTS": str(tmp_path / "reports")}
    out = subprocess.run(["make", "-n", "sweep", "PROFILE=test"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert " -m mixnb sweep --profile 'test'" in out and " -m mixnb report --profile 'test'" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_explore_notebook_checks_its_profile_before_drawing():
    """explore.ipynb's ``profile`` is checked by get_profile before the galleries (a typo read as "AttentiveMix+ has
    no teacher"), and that check names the valid profiles."""
    import nbformat

    from mixnb.paths import NOTEBOOKS
    from mixnb.profiles import get_profile

    code = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4).cells
                     if c.cell_type == "code")
    assert -1 < code.find("get_profile(profile)") < code.find("photo_galleries(")
    with pytest.raises(ValueError, match=r"unknown profile 'smaple'; valid: .*\bsample\b"):
        get_profile("smaple")
