"""Notebooks: committed clean, and every one runs top to bottom under papermill with tiny parameters.

Also the sweep end to end (papermill per run, skip finished, keep going on failure) and the
HTML report.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mixnb.paths import NOTEBOOKS, reports_root, runs_root
from mixnb.report import render_report
from mixnb.sweep import expand, run_sweep

NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOK_FILES} >= {"train.ipynb", "analysis.ipynb", "explore.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: strip them"
    assert nb.metadata.kernelspec.name == "mixnb"


def test_train_notebook_has_one_parameters_cell():
    nb = nbformat.read(NOTEBOOKS / "train.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "method =" in tagged[0].source


def test_sweep_then_report_end_to_end():
    """Two methods on the test profile through papermill, a re-run that skips them, the report."""
    failures = run_sweep(profile="test", methods=["vanilla", "cutmix"], epochs=2)
    assert failures == []
    for job in expand("test", ["vanilla", "cutmix"], epochs=2):
        for name in ("summary.json", "metrics.csv", "train.ipynb", "checkpoint.pt", "mix_samples.png", "params.json"):
            assert (job.run_dir / name).exists(), name
        executed = nbformat.read(job.run_dir / "train.ipynb", as_version=4)
        assert executed.metadata.papermill.parameters["method"] == job.config.method
    stamp = (job.run_dir / "summary.json").stat().st_mtime_ns
    assert run_sweep(profile="test", methods=["vanilla", "cutmix"], epochs=2) == []  # skips finished runs
    assert (job.run_dir / "summary.json").stat().st_mtime_ns == stamp

    html = render_report("test")
    text = html.read_text()
    assert html == reports_root() / "test" / "benchmark.html" and (reports_root() / "benchmark.html").exists()
    assert "OpenMixup" in text and "CutMix" in text and "generated sample profile" in text
    assert text.count("data:image/png;base64") >= 3  # curves + galleries embedded: self-contained
    assert "from mixnb" not in text  # no code cells


def test_sweep_keeps_going_and_reports_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))  # no Vanilla run here: AttentiveMix+ has no teacher
    failures = run_sweep(profile="test", methods=["attentivemix", "mixup"], epochs=1)
    assert [j.config.method for j, _ in failures] == ["attentivemix"]
    assert "MIXNB_ATTENTIVEMIX_TEACHER" in Path(failures[0][1]).read_text()  # the log names the fix
    assert (expand("test", ["mixup"], epochs=1)[0].run_dir / "summary.json").exists()
    proc = subprocess.run([sys.executable, "-m", "mixnb", "sweep", "--profile", "test", "--methods", "attentivemix",
                           "--epochs", "1"], capture_output=True, text=True, env={**_env(), "MIXNB_RUNS": str(tmp_path)})
    assert proc.returncode == 1 and "FAILED attentivemix-resnet18-s0" in proc.stdout


def test_explore_notebook_runs():
    out = runs_root().parent / "explore.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "explore.ipynb"), str(out), "-k", "mixnb",
                    "-y", json.dumps({"n_images": 3}), "--no-progress-bar"], check=True, env=_env(),
                   capture_output=True)
    executed = nbformat.read(out, as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 9  # a gallery per input-space method at least


def _env() -> dict:
    import os

    return dict(os.environ)
