"""The benchmark and beyond-accuracy tables as files beside the report: CSV (tidy), Markdown and LaTeX."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mixnb.io import atomic_write_text
from mixnb.report.analysis import beyond_accuracy, beyond_view
from mixnb.report.labels import BACKBONE_LABELS, alpha_text, method_label
from mixnb.report.published import compares_with_openmixup, openmixup_header, published_source
from mixnb.report.tables import tidy_table


def write_exports(summaries: pd.DataFrame, out_dir: Path) -> list[Path]:
    """benchmark.csv (tidy), benchmark.md and benchmark.tex (the table's layout: a row per method, per backbone
    ours and the difference to Vanilla, and OpenMixup's number where runs are on its protocol, the best of each of
    our columns in bold) next to the report; beyond.csv/.md/.tex (the beyond-accuracy table) when runs were
    analysed."""
    tidy = tidy_table(summaries)  # read as the main table reads
    paths = [out_dir / f"benchmark.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], tidy.to_csv(index=False))
    backbones = [b for b in BACKBONE_LABELS if b in set(tidy.get("backbone", []))]
    reference = compares_with_openmixup(summaries)
    om = openmixup_header(*published_source(summaries)) if not summaries.empty else "OpenMixup"
    header = ["Method", "α"] + [f"{BACKBONE_LABELS[b]} {w}" for b in backbones
                                for w in ("ours", "Δ Vanilla", *((om,) if reference else ()))]
    rows = []
    best = {b: tidy[tidy["backbone"] == b]["top1_mean"].max() for b in backbones}
    for (method, settings), group in tidy.groupby(["method", "settings"], sort=False):
        cells = {r.backbone: r for r in group.itertuples()}
        alphas = "/".join(alpha_text(cells[b].alpha) if b in cells else "–" for b in backbones)
        row = [(f"{method} ({settings})" if settings else method), alphas]
        for b in backbones:
            r = cells.get(b)
            ours = "–" if r is None else (f"{r.top1_mean:.2f} ± {r.top1_std:.2f}" if r.seeds > 1 else f"{r.top1_mean:.2f}")
            row += [(ours, r is not None and r.top1_mean == best[b]),
                    ("ref" if method == method_label("vanilla") else f"{r.delta_vanilla:+.2f}"
                     if r is not None and pd.notna(r.delta_vanilla) else "–", False)]
            if reference:
                row.append((f"{r.openmixup:.2f}" if r is not None and pd.notna(r.openmixup) else "–", False))
        rows.append([(c, False) if isinstance(c, str) else c for c in row])
    paths[1:] = _table_files(out_dir / "benchmark", header, rows, text_columns=1)
    beyond = beyond_accuracy(summaries)
    if not beyond.empty:
        paths.append(out_dir / "beyond.csv")
        atomic_write_text(paths[-1], beyond.reset_index().to_csv(index=False))
        view, best = beyond_view(beyond)
        cells = [[(str(k), False) for k in key] + list(zip(row, marks))
                 for key, row, marks in zip(view.index, view.itertuples(index=False), best.itertuples(index=False))]
        paths += _table_files(out_dir / "beyond", [*view.index.names, *view.columns], cells, text_columns=4)
    return paths


def _table_files(stem: Path, header: list[str], rows: list[list[tuple[str, bool]]], *, text_columns: int) -> list[Path]:
    """``stem``.md and ``stem``.tex of ``rows`` (cells as (text, bold)); the first ``text_columns`` left-aligned."""
    md = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(f"**{_md(c)}**" if bold else _md(c) for c, bold in row) + " |" for row in rows]
    tex = [r"\begin{tabular}{" + "l" * text_columns + "r" * (len(header) - text_columns) + "}", r"\toprule",
           " & ".join(_tex(h) for h in header) + r" \\", r"\midrule",
           *(" & ".join(rf"\textbf{{{_tex(c)}}}" if bold else _tex(c) for c, bold in row) + r" \\" for row in rows),
           r"\bottomrule", r"\end{tabular}"]
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex")]
    for path, lines in zip(paths, (md, tex)):
        atomic_write_text(path, "\n".join(lines) + "\n")
    return paths


def _md(text: str) -> str:
    """A Markdown table cell: backslashes and pipes escaped (a pipe would split the cell), on one line."""
    return " ".join(text.replace("\\", "\\\\").replace("|", r"\|").splitlines())


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "α": r"$\alpha$",
               "–": "--"}


def _tex(text: str) -> str:
    """A LaTeX table cell: every special character escaped, in one pass (so no replacement is escaped again)."""
    return re.sub("|".join(map(re.escape, TEX_ESCAPES)), lambda m: TEX_ESCAPES[m.group()], text)
