"""``render_report``: analysis.ipynb executed by papermill for a profile and converted by nbconvert into one
self-contained benchmark.html, with the exports beside it, a page per run and reports/index.html."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from mixnb.config import PROFILES
from mixnb.io import atomic_write_text
from mixnb.notebook_run import run_notebook
from mixnb.paths import NOTEBOOKS, reports_root, runs_root
from mixnb.report.exports import write_exports
from mixnb.report.frames import column_values, load_runs
from mixnb.report.html import run_summary_box, sanitised
from mixnb.runs import METRICS, PARAMS, is_finished


def render_report(profile: str) -> Path:
    """Execute analysis.ipynb for ``profile`` and convert it to one self-contained HTML file.

    Writes reports/<profile>/analysis.ipynb and benchmark.html (the stable path of a profile's report),
    and reports/index.html, which lists every profile's report with its run count and date.
    """
    import nbformat

    runs = load_runs(profile)  # an unknown profile fails here, before any folder is made
    out_dir = reports_root() / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "analysis.ipynb"
    run_notebook(NOTEBOOKS / "analysis.ipynb", executed, {"profile": profile, "runs_root": str(runs_root())})
    html = out_dir / "benchmark.html"
    _to_html(nbformat.read(executed, as_version=4), html,
             title=f"mixnb benchmark: {profile} ({time.strftime('%Y-%m-%d %H:%M')})")
    write_exports(runs.summaries, out_dir)
    run_dirs = [*column_values(runs.summaries, "run_dir"), *column_values(runs.diverged, "run_dir")]
    write_run_pages([Path(d) for d in run_dirs], out_dir)
    write_index()
    return html


def write_run_pages(run_dirs: list[Path], out_dir: Path) -> None:
    """reports/<profile>/runs/<run>/: the run's executed train.ipynb as index.html (its curves and gallery),
    with params.json, metrics.csv and summary.json beside it, so the reports/ folder stands alone."""
    import shutil

    for run_dir in run_dirs:
        page = out_dir / "runs" / run_dir.name
        page.mkdir(parents=True, exist_ok=True)
        for name in (PARAMS, METRICS, "summary.json", "failed.json", "analysis.json"):  # analysis: per corruption
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, page / name)
        if (run_dir / "train.ipynb").exists() and (notebook := _read_notebook(run_dir / "train.ipynb")) is not None:
            notebook.cells = [c for c in notebook.cells if "parameters" not in c.get("metadata", {}).get("tags", [])]
            _to_html(notebook, page / "index.html", title=f"mixnb run {run_dir.name}", header=run_summary_box(run_dir))


def _read_notebook(path: Path) -> Any:
    """A run's executed notebook, or None after one line naming it when it is damaged (a kill cut papermill's write
    short, or not a notebook at all): one run never keeps the rest of the report from rendering."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # NotJSONError, UnicodeDecodeError, a schema error ...: whatever the file holds
        print(f"warning: {path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:80]}); its run page "
              f"is left out. Re-execute notebooks/train.ipynb into it with the run's config (docs/recipes.md) or "
              f"delete it", flush=True)
        return None


def write_index() -> Path:
    """reports/index.html: every profile's report, with its number of finished runs and when it was rendered."""
    from html import escape

    rows = []
    for name in PROFILES:
        html = reports_root() / name / "benchmark.html"
        if html.exists():
            done = sum(is_finished(d) for d in (runs_root() / name).glob("*") if d.is_dir())
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(html.stat().st_mtime))
            rows.append(f'<tr><td><a href="{escape(name)}/benchmark.html">{escape(name)}</a></td>'
                        f"<td>{done}</td><td>{when}</td></tr>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mixnb reports</title></head><body>"
            "<h1>mixnb reports</h1><table><tr><th>profile</th><th>finished runs</th><th>rendered</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
    index = reports_root() / "index.html"
    atomic_write_text(index, page)
    return index


def _to_html(notebook: Any, html: Path, *, title: str, header: str | None = None) -> None:
    """nbconvert, images embedded: a single self-contained file. Its template's scripts (require.js, MathJax and
    mermaid from a CDN) are dropped: the report uses none of them, and a page that stands alone must not reach out
    when opened offline. ``header`` makes a run page: a run folder's notebook, with its code; anyone who can write a
    run folder can craft it, so its cells pass through ``sanitised`` into the template's page of an empty notebook,
    after ``header`` (trusted HTML)."""
    import nbformat
    from nbconvert import HTMLExporter

    run_page = header is not None
    exporter = HTMLExporter(exclude_input=not run_page, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    resources = {"metadata": {"name": title}}
    page, _ = exporter.from_notebook_node(nbformat.v4.new_notebook() if run_page else notebook, resources=resources)
    page = re.sub(r"<script\b[^>]*>.*?</script>\s*", "", page, flags=re.DOTALL)  # the template's own: trusted
    if run_page:
        cells, _ = exporter.from_notebook_node(notebook, resources=resources)
        start, end, rest = page.partition("</main>")
        page = start + header + sanitised(cells) + end + rest
    atomic_write_text(html, page)
