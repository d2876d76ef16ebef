"""Notebooks: committed clean, and every one runs top to bottom under papermill with tiny parameters.

Also the sweep end to end (papermill per run, skip finished, keep going on failure) and the
HTML report.
"""

import json
import re
from urllib.parse import unquote
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from mixnb.paths import NOTEBOOKS, reports_root, runs_root
from mixnb.report import load_runs, render_report
from mixnb.sweep import expand, run_sweep

NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOK_FILES} >= {"train.ipynb", "analysis.ipynb", "explore.ipynb"}


def stored_form(path) -> str:
    """A notebook as a commit stores it: through the nbstripout filter that ``make install`` configures
    (.gitattributes), so running one in JupyterLab leaves git clean; the file itself without that filter."""
    clean = subprocess.run(["git", "config", "--get", "filter.nbstripout.clean"], cwd=NOTEBOOKS, capture_output=True,
                           text=True).stdout.split()
    text = path.read_text()
    return subprocess.run(clean, input=text, capture_output=True, text=True, check=True).stdout if clean else text


def test_make_install_configures_the_notebook_filter():
    attributes = (NOTEBOOKS.parent / ".gitattributes").read_text()
    assert "*.ipynb filter=nbstripout" in attributes
    if subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=NOTEBOOKS, capture_output=True).returncode:
        pytest.skip("not a git work tree: there is no commit to keep clean")
    clean = subprocess.run(["git", "config", "--get", "filter.nbstripout.clean"], cwd=NOTEBOOKS, capture_output=True,
                           text=True).stdout
    assert "nbstripout --keep-id" in clean, "run make install: it points git's notebook filter at the venv"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebooks_are_committed_clean(path):
    """The committed .ipynb files are the notebooks' only source: valid, without outputs, with stable cell ids
    and the metadata the kernel writes (opening one in JupyterLab changes nothing but the Python version)."""
    from ipykernel.ipkernel import IPythonKernel

    text = stored_form(path)
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: strip them"
    assert [c.id for c in nb.cells] and all(c.id.startswith(path.stem + "-") for c in nb.cells)
    assert nb.metadata.kernelspec.name == "mixnb"
    kernel = {k: v for k, v in IPythonKernel.language_info.items() if k != "version"}
    assert {k: v for k, v in nb.metadata.language_info.items() if k != "version"} == kernel
    assert text == nbformat.writes(nb) + "\n"  # nbformat's own layout: a save rewrites nothing


def test_report_and_explore_parameters_are_declared():
    def declared(name: str) -> set[str]:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        return {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}

    assert declared("analysis.ipynb") == {"profile", "runs_root"}  # what render_report passes
    assert {"methods", "seed", "n_images", "profile"} <= declared("explore.ipynb")


def test_train_notebook_has_one_parameters_cell():
    nb = nbformat.read(NOTEBOOKS / "train.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "method =" in tagged[0].source


@pytest.mark.slow
def test_sweep_then_report_end_to_end():
    """Two methods on the test profile through papermill, a re-run that skips them, the report."""
    failures = run_sweep(expand("test", ["vanilla", "cutmix"], epochs=2))
    assert failures == []
    for job in expand("test", ["vanilla", "cutmix"], epochs=2):
        for name in ("summary.json", "metrics.csv", "train.ipynb", "checkpoint.pt", "mix_samples.png", "params.json"):
            assert (job.run_dir / name).exists(), name
        executed = nbformat.read(job.run_dir / "train.ipynb", as_version=4)
        assert executed.metadata.papermill.parameters["method"] == job.config.method
    stamp = (job.run_dir / "summary.json").stat().st_mtime_ns
    assert run_sweep(expand("test", ["vanilla", "cutmix"], epochs=2)) == []  # skips finished runs
    assert (job.run_dir / "summary.json").stat().st_mtime_ns == stamp

    html = render_report("test")
    text = html.read_text()
    assert html == reports_root() / "test" / "benchmark.html" and "test/benchmark.html" in (reports_root() / "index.html").read_text()
    assert "<title>mixnb benchmark: test (" in text
    assert "OpenMixup" in text and "CutMix" in text and "generated sample profile" in text
    assert text.count("data:image/png;base64") >= 3  # curves + galleries embedded: self-contained
    assert "from mixnb" not in text  # no code cells
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<script" not in text  # works offline
    links = re.findall(r'href="(runs/[^"]+)"', text)
    assert len(set(links)) == 2 and all((html.parent / unquote(link)).is_file() for link in links)  # table + appendix
    assert (html.parent / "runs" / job.run_dir.name / "params.json").is_file()
    exported = pd.read_csv(html.parent / "benchmark.csv").set_index("method")["top1_mean"]
    summaries = load_runs("test").summaries.set_index("method")["median_top1"]
    assert exported["CutMix"] == round(summaries["cutmix"], 2) and exported["Vanilla"] == round(summaries["vanilla"], 2)
    assert "| CutMix |" in (html.parent / "benchmark.md").read_text()
    assert r"\begin{tabular}" in (html.parent / "benchmark.tex").read_text()


@pytest.mark.slow
def test_sweep_keeps_going_and_reports_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))  # no Vanilla run here: AttentiveMix+ has no teacher
    failures = run_sweep(expand("test", ["attentivemix", "mixup"], epochs=1, analysis=False))
    assert [j.config.method for j, _ in failures] == ["attentivemix"]
    assert "MIXNB_ATTENTIVEMIX_TEACHER" in failures[0][1]  # the one-line reason names the fix
    assert (expand("test", ["mixup"], epochs=1)[0].run_dir / "summary.json").exists()
    proc = subprocess.run([sys.executable, "-m", "mixnb", "sweep", "--profile", "test", "--methods", "attentivemix",
                           "--epochs", "1"], capture_output=True, text=True, env={**_env(), "MIXNB_RUNS": str(tmp_path)})
    assert proc.returncode == 1 and "FAILED attentivemix-resnet18-s0" in proc.stdout


@pytest.mark.slow
def test_explore_notebook_runs():
    out = runs_root().parent / "explore.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "explore.ipynb"), str(out), "-k",
                           "mixnb", "-y", json.dumps({"n_images": 3}), "--no-progress-bar"], check=True, env=_env(),
                          capture_output=True, text=True)
    executed = nbformat.read(out, as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 9  # a gallery per input-space method at least
    assert "without encryption" not in proc.stderr  # make install quiets the kernel's loopback-TCP warning


def _env() -> dict:
    import os

    return dict(os.environ)


def test_report_commands_explain_themselves(tmp_path, monkeypatch):
    """No runs: a page that says how to get some; an unknown profile: the valid names, no folder made."""
    from mixnb.report import Runs, benchmark_table, header_html, write_exports

    empty = Runs(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), [])
    assert "Runs: 0 finished" in header_html(empty, "sample") and benchmark_table(pd.DataFrame()).empty
    exports = write_exports(pd.DataFrame(), tmp_path)  # every run diverged, or none yet: the exports still come
    assert [p.name for p in exports] == ["benchmark.csv", "benchmark.md", "benchmark.tex"]
    monkeypatch.setenv("MIXNB_REPORTS", str(tmp_path))
    with pytest.raises(ValueError, match="unknown profile 'smaple'; valid: tiny-imagenet, sample, test"):
        render_report("smaple")
    assert not (tmp_path / "smaple").exists()
