"""The benchmark report: a profile's runs -> DataFrames -> tables, plots and HTML, which notebooks/analysis.ipynb
lays out and ``render_report`` turns into reports/<profile>/benchmark.html. The modules, from the bottom up:
``labels`` (how things are named), ``published`` (OpenMixup's protocol and numbers), ``frames`` (run folders ->
DataFrames, seeds pooled, the best α, Δ Vanilla), ``analysis`` (read from analysis.json), ``tables``, ``plots``,
``exports`` (CSV, Markdown, LaTeX), ``html`` (the report's fragments and the run pages' sanitising) and ``render``.
How each number states what it is, its n and its interval: docs/analysis.md §8. The names the notebooks, the command
line and the tests use are re-exported here.
"""

from mixnb.report.analysis import (beyond_accuracy, beyond_styler, beyond_view, cam_gallery, corruption_table,
                                   mce_table, plot_occlusion, plot_reliability)
from mixnb.report.exports import write_exports
from mixnb.report.frames import Runs, best_alpha, dataset_name, load_runs, vanilla_deltas
from mixnb.report.html import (analysis_failures_html, appendix_html, as_jpeg, cost_note_html, definitions_html,
                               header_html, run_gallery_files, sanitised, section_html, table_intro_html,
                               table_notes_html)
from mixnb.report.plots import config_label, plot_alpha, plot_cost, plot_curves, plot_learning_curve
from mixnb.report.published import code_followed, compares_with_openmixup
from mixnb.report.render import render_report, write_run_pages
from mixnb.report.tables import (appendix_table, benchmark_table, bold_best, cost_styler, cost_table, methods_markdown,
                                 openmixup_agreement, readout_table, tidy_table, timing_caveat)
