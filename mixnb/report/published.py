"""Our runs against OpenMixup: whether a run is on the protocol of its profile's published table (docs/protocol.md
§4), that table's numbers, the OpenMixup code a run's settings follow (docs/publication.md), and the report's lines
on both."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from mixnb.config import ADDED_METHOD_SETTINGS, PROFILES, REFERENCES, RunConfig
from mixnb.mixups import HEAD, PUBLISHED, REGISTRY, PublishedTable, get_spec, nearest_budget, published_top1, reference_code
from mixnb.profiles import Profile
from mixnb.report.labels import number_text, values_text


def comparison(table_key: str | None, dataset: str, identity: dict[str, Any],
               run_settings: dict[str, Any]) -> dict[str, bool]:
    """``on_protocol`` and ``compared`` of one run against the published table ``table_key`` (None: no table)."""
    table = PUBLISHED.get(table_key) if table_key else None
    if table is None or dataset != table.dataset or identity["width"] != table.width \
            or not set(run_settings) <= {"precision", "epochs"}:
        return {"on_protocol": False, "compared": False}
    on = identity["epochs"] in table.budgets
    return {"on_protocol": on, "compared": on or table.nearest}


def published_source(summaries: pd.DataFrame) -> tuple[PublishedTable, int]:
    """The published table the OpenMixup column reads (the runs' profile's; Tiny-ImageNet's for rows from before
    profiles named one) and its budget nearest the runs' most common epoch count."""
    keys = summaries["published_table"].dropna() if "published_table" in summaries else pd.Series(dtype=object)
    table = PUBLISHED[keys.mode().iloc[0]] if len(keys) else PUBLISHED["tiny-imagenet"]
    epochs = int(summaries["epochs"].mode().iloc[0]) if "epochs" in summaries and len(summaries) else table.budgets[0]
    return table, nearest_budget(table, epochs)


def openmixup_header(table: PublishedTable, budget: int) -> str:
    """The OpenMixup column's header: "OpenMixup" (Tiny-ImageNet: one budget), "OpenMixup 400 ep" otherwise."""
    return "OpenMixup" if len(table.budgets) == 1 else f"OpenMixup {budget} ep"


def published_column(table: PublishedTable, budget: int, methods: list[str], backbone: str) -> list[float | None]:
    """``table``'s number of each of ``methods`` on ``backbone`` at ``budget``."""
    return [published_top1(table, m, backbone, budget) for m in methods]


def compares_with_openmixup(summaries: pd.DataFrame) -> bool:
    """Whether any run is compared with its profile's published table (``compared``; rows without it: on the
    protocol, ``on_protocol``): Tiny-ImageNet's only at its 400 epochs, CIFAR-100's beside the nearest budget."""
    col = "compared" if "compared" in summaries else "on_protocol"
    return not summaries.empty and bool(summaries.get(col, pd.Series(False, index=summaries.index)).fillna(False).any())


def code_followed(method: str, backbone: str, identity: dict[str, Any]) -> str:
    """The OpenMixup code whose settings a run's identity holds: "e81ed85 (2022-03-10)" for the code that published
    the cell (‡: a setting of it undetermined, see the notes), "HEAD 37e1372 (2025-10-15)", or "neither" with the
    settings that match neither. Only what ``RunConfig.reference`` resolves is compared (alpha, epochs ... are the
    table's own columns and labels)."""
    if method not in REGISTRY:
        return "?"
    spec = get_spec(method)
    keys = sorted(set(spec.head) | set(ADDED_METHOD_SETTINGS.get(method, {})))
    mismatch = {}
    for reference in REFERENCES:
        want = RunConfig(method=method, backbone=backbone, reference=reference, bn_groups=identity.get("bn_groups"))
        maths = want.maths()
        pairs = [(k, maths.get(k), identity.get(k)) for k in ("crop_interpolation", "running_stats")]
        pairs += [(k, maths["method_args"].get(k), identity.get("method_args", {}).get(k)) for k in keys]
        mismatch[reference] = [(k, got) for k, want_value, got in pairs if want_value != got]
        if not mismatch[reference]:
            code = reference_code(method, backbone, reference)
            name = f"HEAD {code.commit}" if code == HEAD else code.commit  # no published cell: HEAD's code
            return f"{name} ({code.date}){' ‡' if code.undetermined and reference == 'published' else ''}"
    return "neither: " + ", ".join(f"{k} {number_text(v)}" for k, v in mismatch["published"])


def follows_tiny_code(summaries: pd.DataFrame) -> bool:
    """Whether the per-method OpenMixup code provenance (``code_followed``: the commits that published the
    Tiny-ImageNet cells) applies to these runs: not where a profile's own table set the settings (CIFAR-100's)."""
    tables = summaries.get("published_table", pd.Series(dtype=object))
    return bool(tables.fillna("tiny-imagenet").eq("tiny-imagenet").all())


def code_of_config(method: str, backbone: str, config_key: str) -> str:
    """``code_followed`` of a pooled configuration (its ``config_key``: the identity without the seed)."""
    try:
        identity = json.loads(config_key)
    except ValueError:
        return "?"
    return code_followed(method, backbone, identity) if isinstance(identity, dict) else "?"


def openmixup_why(summaries: pd.DataFrame, profile: str) -> list[str]:
    """The line that says which published numbers the OpenMixup column holds, or why it is absent."""
    from html import escape

    key = PROFILES[profile].published if profile in PROFILES else None
    if key is None and profile in PROFILES and PROFILES[profile].sample is None:
        return [f"No OpenMixup column: OpenMixup published no mixup table on {escape(PROFILES[profile].dataset)}."]
    table = PUBLISHED[key or "tiny-imagenet"]
    budgets = "/".join(map(str, table.budgets))
    if not compares_with_openmixup(summaries):
        datasets = ", ".join(sorted(set(summaries.get("dataset", pd.Series(["?"])))))
        return [f"OpenMixup's published numbers are left out: they are {table.dataset} at {budgets} epochs and width "
                f"{table.width}, and no run here is (these: {escape(datasets)}, "
                f"{values_text(summaries['epochs'])} epochs, width {values_text(summaries['width'])})."]
    out = []
    if len(table.budgets) > 1:
        _, budget = published_source(summaries)
        out.append(f"OpenMixup {budget} ep: {table.dataset}'s published numbers at {budget} epochs, the budget "
                   f"({budgets}) nearest these runs' {values_text(summaries['epochs'])} ({escape(table.source)}).")
    if not summaries["on_protocol"].all():
        out.append(f"Δ OpenMixup only where a cell's runs are on the protocol ({table.dataset}, {budgets} epochs, "
                   f"width {table.width}, no other setting changed).")
    return out


def off_protocol(summaries: pd.DataFrame, reference: Profile) -> list[str]:
    """What differs from ``reference``'s protocol (``Profile.reference``), per group of runs: epochs (off its
    published budgets), width and every other override (alpha is the searched setting: the table shows it)."""
    if summaries.empty:
        return []
    out = []
    for key, allowed in (("epochs", reference.protocol_epochs), ("width", (reference.width,))):
        off = summaries[~summaries[key].isin(allowed)]
        if len(off):
            out.append(f"{key} {values_text(off[key])} in {len(off)} of {len(summaries)} runs (protocol: "
                       f"{'/'.join(map(str, allowed))})")
    others = summaries["settings"].map(lambda st: ", ".join(p for p in st.split(", ") if p
                                                            and not p.startswith(("epochs ", "width "))))
    for settings, group in summaries[others != ""].groupby(others[others != ""]):
        out.append(f"{settings} in {len(group)} runs ({', '.join(sorted(group['run']))})")
    return out
