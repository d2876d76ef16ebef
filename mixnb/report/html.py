"""The report's HTML pieces, every value escaped: the header, what the tables' numbers are and their notes, the
appendix, the cost note, the analysis definitions and failures, galleries as JPEG, a run page's head, and
``sanitised`` (what a run page keeps of its untrusted notebook)."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from mixnb.config import PROFILES
from mixnb.mixups import REGISTRY, get_spec
from mixnb.report.analysis import definitions
from mixnb.report.frames import READOUT_WINDOW, Runs, column_values, frame_rows, short_runs
from mixnb.report.labels import BACKBONE_LABELS, alpha_text, method_label, row_label, run_page, values_text
from mixnb.report.published import follows_tiny_code, off_protocol, openmixup_why, published_source
from mixnb.report.tables import LOAD_SPREAD, appendix_table, timing_caveat
from mixnb.runs import analysis_failure, failure, read_summary


def header_html(runs: Runs, profile: str) -> str:
    """The report's header as HTML, every value escaped: the protocol, the hyperparameters and dataset the runs
    really used, what is off the protocol, hardware, versions and commits, and what was left out."""
    s = runs.summaries
    sample = profile in PROFILES and PROFILES[profile].sample is not None
    out = [f"<h1>Mixup benchmark on {escape(dataset_title(s, profile))} — profile <code>{escape(profile)}</code></h1>"]
    if sample:
        out.append("<blockquote><b>These numbers come from the generated sample profile</b> (a small synthetic dataset "
                   "and a narrow network, minutes on a CPU). They prove the pipeline; they are <b>not</b> comparable "
                   "with OpenMixup's published Tiny-ImageNet numbers, which the tables therefore leave out."
                   "</blockquote>")
    reference = PROFILES[profile].reference if profile in PROFILES else PROFILES["tiny-imagenet"]
    items = [f"Protocol: {escape(reference.protocol)}."]
    if not s.empty:
        used = {name: values_text(s[col]) for name, col in (
            ("epochs", "epochs"), ("width", "width"), ("batch", "batch_size"), ("lr", "lr"), ("momentum", "momentum"),
            ("weight decay", "weight_decay"), ("min lr", "min_lr"), ("precision", "precision"))}
        items.append("Hyperparameters of these runs: " + "; ".join(f"{k} {escape(v)}" for k, v in used.items()) + ".")
        read = s[["data_root", "data_form", "label_order"]].drop_duplicates()
        items.append("Dataset: " + ("generated sample set at " if sample else "")
                     + ", ".join(_dataset_read(*r) for r in read.itertuples(index=False)) + ".")
        items.append(f"Hardware: {escape(', '.join(sorted(set(s['device_name'].dropna()))) or '?')}; torch "
                     f"{escape(', '.join(sorted(set(s['torch'].dropna()))))}; commit(s) "
                     f"{escape(', '.join(c[:10] for c in sorted(set(s['commit'].dropna()))))}.")
    items.append(f"Runs: {len(s)} finished in {s['config_key'].nunique() if not s.empty else 0} configurations; "
                 f"{len(runs.diverged)} diverged; {len(runs.skipped)} left out.")
    out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    epochs = "/".join(map(str, reference.protocol_epochs))
    if (banner := off_protocol(s, reference)):
        out.append(f"<p><b>Off the protocol</b> ({escape(epochs)} epochs at width {reference.width}, default "
                   f"settings): " + "; ".join(escape(b) for b in banner) + ".</p>")
    if not s.empty and s["epochs"].max() < min(reference.protocol_epochs) / 4:
        out.append(f"<p>With schedules this short (far below the protocol's {escape(epochs)} epochs) mixing methods "
                   "usually trail Vanilla: they regularise, and pay off only when a model would otherwise "
                   "overfit.</p>")
    if runs.skipped:
        out.append("<p>Left out: " + "; ".join(f"<code>{escape(n)}</code> {escape(why)}" for n, why in runs.skipped)
                   + ".</p>")
    return "\n".join(out)


def _dataset_read(root: str, form: Any, label_order: Any) -> str:
    """A dataset folder and the form it was read as (docs/datasets.md), with its label order."""
    known = [f"read as <code>{escape(form)}</code>"] if pd.notna(form) else []
    known += [f"labels in {escape(label_order)} order"] if pd.notna(label_order) else []
    return f"<code>{escape(root)}</code>" + (f" ({', '.join(known)})" if known else "")


def dataset_title(summaries: pd.DataFrame, profile: str) -> str:
    """The dataset and its size, from the runs' records (``dataset_name``; none yet: the profile's), e.g. "the
    generated sample set (10 classes; 1,000 train / 300 val images)"; several datasets are joined with "and"."""
    if summaries.empty or "dataset" not in summaries:
        spec = PROFILES[profile].sample if profile in PROFILES else None
        if spec is None:
            return PROFILES[profile].dataset if profile in PROFILES else "no dataset yet"
        k = spec["num_classes"]
        sizes = [(k, k * spec["train_per_class"], k * spec["val_per_class"])]
        names = ["the generated sample set"]
    else:
        sets = summaries[["dataset", "classes", "train_images", "val_images"]].drop_duplicates()
        sizes = [(r.classes, r.train_images, r.val_images) for r in sets.itertuples()]
        names = [("the " if r.dataset == "generated sample set" else "") + r.dataset for r in sets.itertuples()]
    return " and ".join(f"{name} ({k} classes; {train:,} train / {val:,} val images)"
                        for name, (k, train, val) in zip(names, sizes))


def table_intro_html(summaries: pd.DataFrame, profile: str) -> str:
    """What the main table's numbers are, in plain words: the read-out (and, for runs shorter than its window,
    that the "median" covers every epoch), seeds and intervals, Δ Vanilla, the α choice and its tie rule, and
    whether OpenMixup's numbers are shown (only beside runs on their protocol) and why not."""
    items = ["top-1 (%): the median of the last 10 epochs as OpenMixup's summary script reads them (epochs E−10 to E "
             "of E: 11 values), mean ± std over the seeds of one configuration (seeds pool only within identical "
             "settings); each method at its best α among those that ran, chosen on the validation set by this same "
             "read-out (as OpenMixup: no split is held out for the choice). A tie (means equal at two decimals) goes to the "
             "published α when it is among the tied, else to the smallest; the α cell names it. Every configuration "
             "is in the appendix."]
    if not summaries.empty:
        short = summaries[short_runs(summaries)]
        if len(short):
            epochs = "/".join(map(str, sorted(set(short["epochs"])))) + (" epoch" if set(short["epochs"]) == {1} else
                                                                          " epochs")
            runs = "run has" if len(summaries) == 1 else "runs have"
            items.append(f"<b>{len(short)} of {len(summaries)} {runs} {epochs}, fewer than the read-out's "
                         f"{READOUT_WINDOW}</b>: their top-1 is the median of all their epochs, early ones included, "
                         f"not the protocol's read-out; the last- and best-epoch top-1 (means over seeds) stand beside "
                         f"it.")
        counts = summaries.groupby("config_key").size()
        items.append("n = 1 seed per configuration: no spread (±) and no interval can be given; "
                     f"<code>make sweep PROFILE={escape(profile)} SEEDS=0,1,2</code> runs three."
                     if counts.max() < 2 else
                     "With two seeds or more: 95 % CI = the Student-t interval of the seed mean (n = seeds).")
        items.append("Δ Vanilla: the difference to our Vanilla run of the same backbone, epochs, width and settings; "
                     "over two seeds or more both ran, the mean of the paired differences (same seed = same data order "
                     "and initialisation) with its 95 % t-interval, <i>within seed noise</i> when that holds 0; "
                     "“–”: no such Vanilla run.")
        items += openmixup_why(summaries, profile)
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def table_notes_html(methods: list[str], summaries: pd.DataFrame | None = None) -> str:
    """The legend of the table's marks and the notes on the published numbers of ``methods``; the per-method code
    provenance only where it applies to ``summaries``' runs (``follows_tiny_code``), else the table's source."""
    items = ["<code>*</code> after a name: an arXiv pre-print whose number OpenMixup's authors reproduced; "
             "📖: the original paper's number, not run in OpenMixup (docs/protocol.md §4); †: read as OpenMixup read "
             "these rows, the best of four heads' medians (online/EMA × clean/mixed, docs/protocol.md §1.7); the online "
             "encoder's plain median is in the read-out table below."]
    if summaries is not None and not follows_tiny_code(summaries):
        table, _ = published_source(summaries)
        items.append(f"Settings: OpenMixup's {escape(table.dataset)} configs, and its numbers from "
                     f"{escape(table.source)} (docs/protocol.md §8); the Tiny-ImageNet code provenance does not apply.")
        return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
    items.append("code: the OpenMixup code a cell's runs follow (RunConfig.reference, docs/publication.md): the commit "
                 "that published the number (the default, reference=published) or HEAD (reference=head); ‡: a setting "
                 "that commit cannot decide, picked as the note says.")
    for m in [m for m in REGISTRY if m in set(methods)]:
        spec = get_spec(m)
        if spec.note or not spec.reproduced:
            mark = "" if spec.reproduced else "📖 "
            items.append(f"{mark}{escape(method_label(m))}: published at α {alpha_text(spec.published_alpha)}; "
                         f"{escape(spec.note)}")
        if spec.code:
            cells = "; ".join(f"{BACKBONE_LABELS.get(b, b)} {c.commit} ({c.date}, crop {c.crop}"
                              f"{', ‡ ' + c.undetermined if c.undetermined else ''})" for b, c in spec.code.items())
            items.append(f"{escape(method_label(m))}: published by {escape(cells)}; deviations that remain: "
                         f"{escape(spec.deviations or 'none known')}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def section_html(text: str, *, tag: str = "p") -> str:
    """``text`` as one escaped HTML element (``code`` spans between backticks kept)."""
    parts = escape(text).split("`")
    return f"<{tag}>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + f"</{tag}>"


def appendix_html(summaries: pd.DataFrame, diverged: pd.DataFrame | None = None) -> str:
    """``appendix_table`` as HTML, every cell escaped, with a link to each configuration's run pages."""
    table = appendix_table(summaries, diverged)
    if table.empty:
        return ""
    runs: dict[tuple[str, str, str, str], list[tuple[int, str]]] = {}
    for df in (summaries, diverged if diverged is not None else pd.DataFrame()):
        for r in frame_rows(df):
            key = (BACKBONE_LABELS.get(r.backbone, r.backbone), method_label(r.method),
                   alpha_text(getattr(r, "alpha", None)) if df is summaries else "", r.settings or "–")
            runs.setdefault(key, []).append((r.seed, r.run))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [*table.index.names, *table.columns, "runs"])
    body = []
    for key, row in table.iterrows():
        links = " ".join(f'<a href="{escape(run_page(run))}">s{seed}</a>' for seed, run in sorted(runs.get(key, [])))
        cells = [*key, *row.tolist()]
        body.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + f"<td>{links}</td></tr>")
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def cost_note_html(summaries: pd.DataFrame) -> str:
    """Where and under what load the timings were taken, whether the × Vanilla ratios may be read (one line why
    not), and ``make bench`` for relative costs measured interleaved."""
    devices = ", ".join(sorted(set(summaries["device_name"].dropna()))) or "?"
    hosts = ", ".join(sorted(set(summaries.get("host", pd.Series(dtype=str)).dropna()))) or "?"
    loads = summaries.get("load_avg", pd.Series(dtype=float)).dropna()
    load = f"median 1-min load per run {loads.min():.2f}–{loads.max():.2f}" if len(loads) else "load not recorded"
    caveat = timing_caveat(summaries)
    verdict = (f"<b>× Vanilla is greyed: not a finding</b>: {escape(caveat)}." if caveat else
               f"The runs' loads agree within {LOAD_SPREAD} and stay under the core count: × Vanilla compares like "
               f"with like on this machine.")
    return (f"<p>FLOPs per image do not depend on the machine and load. Wall times: {escape(devices)} on host "
            f"{escape(hosts)}, {escape(load)}, each run's own epochs (a sweep may run several at once, on a CPU two: "
            f"the load says how busy the machine was). {verdict} For relative "
            f"costs measured interleaved in one process on one device, run <code>make bench</code>.</p>")


def analysis_failures_html(summaries: pd.DataFrame, profile: str) -> str:
    """The finished runs whose analysis failed, each with its reason (analysis_failed.json), escaped; "" if none."""
    failed = [(Path(d).name, f["reason"]) for d in column_values(summaries, "run_dir") if (f := analysis_failure(d))]
    if not failed:
        return ""
    items = "".join(f"<li><b>{escape(run)}</b>: {escape(reason)}</li>" for run, reason in failed)
    return (f"<p><b>Analysis failed for {len(failed)} finished run(s)</b>; their accuracy above stands, and "
            f"<code>make analyze PROFILE={escape(profile)}</code> or the next <code>make sweep</code> tries again:</p>"
            f"<ul>{items}</ul>")


def definitions_html() -> str:
    """Each analysis number's definition, one line each (``mixnb.report.analysis.definitions``), escaped."""
    return "<ul>" + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in definitions().items()) + "</ul>"


def as_jpeg(source: plt.Figure | Path, *, quality: int = 72, dpi: int = 90, width: int = 780) -> Any:
    """A gallery (a figure, or a saved PNG) as an embeddable JPEG at most ``width`` px wide (about the report's
    column): photos compress ~5x better than as PNG, which keeps the self-contained report small."""
    import io

    from IPython.display import Image as IPImage
    from PIL import Image

    buf = io.BytesIO()
    if isinstance(source, plt.Figure):
        source.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(source)  # shown once, as this JPEG (an open figure would be shown again as a PNG)
        buf.seek(0)
    image = Image.open(buf if isinstance(source, plt.Figure) else source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return IPImage(data=out.getvalue(), format="jpeg")


def run_gallery_files(summaries: pd.DataFrame) -> list[tuple[str, Path]]:
    """(title, mix_samples.png) of every finished run that has one, in protocol order."""
    if summaries.empty:
        return []
    order = {m: i for i, m in enumerate(REGISTRY)}
    rows = summaries.assign(_o=summaries["method"].map(order)).sort_values(["backbone", "_o", "alpha", "seed"])
    return [(f"{row_label(r.method, r.settings)}, α {alpha_text(r.alpha)} — {r.backbone}, seed {r.seed}",
             Path(r.run_dir) / "mix_samples.png") for r in rows.itertuples() if (Path(r.run_dir) / "mix_samples.png").exists()]


def run_summary_box(run_dir: Path) -> str:
    """The head of a run page (trusted: built here, every value escaped): the run's read-out, best and last epoch,
    cost, and links back to the report and to the files beside the page (the checkpoint stays in the run folder)."""
    s = read_summary(run_dir) or {}
    facts = [("run", run_dir.name), ("method", s.get("method")), ("backbone", s.get("backbone")),
             ("epochs", s.get("epochs")), (s.get("median_label", "median top-1"), s.get("median_top1")),
             ("best epoch top-1", s.get("best_top1")), ("last epoch top-1", s.get("last_top1")),
             ("s/epoch", s.get("seconds_per_epoch")), ("device", s.get("environment", {}).get("device_name"))]
    if (ckpt := run_dir / "checkpoint.pt").exists():
        facts.append(("checkpoint", f"{ckpt.stat().st_size / 2**20:.1f} MiB in {run_dir}"))
    if (failed := failure(run_dir)) is not None:
        facts.append(("failed", failed.get("reason")))
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(f'{v:.2f}' if isinstance(v, float) else str(v))}</td></tr>"
                   for k, v in facts if v is not None)
    links = " · ".join(f'<a href="{href}">{escape(label)}</a>' for href, label in (
        ("../../benchmark.html", "← the report"), ("params.json", "params.json"), ("metrics.csv", "metrics.csv"),
        ("summary.json", "summary.json"), ("analysis.json", "analysis.json")) if href.startswith("..")
        or (run_dir / href).exists())
    return f'<div class="mixnb-run-summary"><p>{links}</p><table>{rows}</table></div>'


# What a run page keeps of its notebook: nbconvert's cells (divs and spans with classes), text, headings, code,
# tables and embedded images. Scripts, styles, event handlers, frames, forms, SVG and fetched images are dropped.
PAGE_TAGS = {"a", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img", "li", "ol",
             "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"}
PAGE_ATTRIBUTES = {"*": {"class", "id"}, "a": {"href"}, "img": {"src", "alt"}, "div": {"data-mime-type"},
                   "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}


def sanitised(html: str) -> str:
    """Untrusted ``html`` with only ``PAGE_TAGS`` and ``PAGE_ATTRIBUTES`` left, parsed and rebuilt by ammonia
    (nh3): no script, event handler or javascript: URL survives, however the markup is split or nested."""
    import nh3

    return nh3.clean(html, tags=PAGE_TAGS, clean_content_tags={"script", "style", "title"}, attributes=PAGE_ATTRIBUTES,
                     attribute_filter=_page_attribute, url_schemes={"http", "https", "mailto", "data"})


def _page_attribute(tag: str, name: str, value: str) -> str | None:
    """An image only from a data: URL (any other would be fetched when the page opens); data: URLs nowhere else."""
    if (tag, name) == ("img", "src"):
        return value if re.match(r"data:image/(png|jpeg|gif|webp);base64,", value) else None
    return None if value.strip().lower().startswith("data:") else value
