"""The result files: each mode's markdown tables, the .json/.md pair rewritten after every row, reading a .json back,
and ``--summarize``'s one summary of every result file under a folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixnb.bench.kernels import KERNEL_CATEGORIES, OTHER, PROFILE_STEPS, TOP_KERNELS
from mixnb.bench.rig import EPOCH_IMAGES, EVAL_IMAGES
from mixnb.bench.timing import Stat
from mixnb.io import atomic_write_text, write_json


def fmt(stat: Stat | None, digits: int = 1) -> str:
    return "n/a" if stat is None else f"{stat.median:,.{digits}f} ({stat.low:,.{digits}f}–{stat.high:,.{digits}f})"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["", f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def relative(r: dict[str, Any], vanilla_ms: float | None) -> str:
    """A row's step time over Vanilla's (the "× Vanilla" column)."""
    return f"{r['step_ms'].median / vanilla_ms:.2f}" if vanilla_ms else "n/a"


def epoch_cell(r: dict[str, Any]) -> str:
    """The "s / epoch" column: EPOCH_IMAGES at the median rate + an eval pass (absent for --concurrent processes)."""
    return f"{r['epoch_s']:,.1f}" if r.get("epoch_s") is not None else "n/a"


def vanilla_ms(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Vanilla's median step ms per backbone among ``rows``."""
    return {r["backbone"]: r["step_ms"].median for r in rows if r["method"] == "vanilla" and r.get("status") == "ok"}


def method_cells(r: dict[str, Any], vanilla: dict[str, float]) -> list[Any]:
    if r["status"] != "ok":
        return [r["backbone"], r["method"], *[""] * 9, r["status"]]
    share = f"{100 * r['mix_share']:.1f} %" if "mix_share" in r else r["mix_probe"]
    return [r["backbone"], r["method"], fmt(r["img_s"], 0), fmt(r["step_ms"], 2), relative(r, vanilla.get(r["backbone"])),
            fmt(r.get("mix_ms"), 3), share, fmt(r.get("eval_s"), 2), epoch_cell(r), f"{r['peak_mem_mb']:,.0f}",
            f"{r['warmup_s']:.1f}", r.get("note", "")]


def header(m: dict[str, Any], title: str, how: str) -> list[str]:
    """The title and settings lines every .md starts with; ``how``: what was timed."""
    settings = (f"commit {m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] else ''}; width {m['width']}, "
                f"batch {m['batch_size']}, compile {m['compile']}, capture {m.get('capture', 'model')}, autocast "
                f"{m.get('precision', 'n/a')}, {how}; {m['threads']} CPU threads.")
    return [f"## mixnb {title}: {m['device_name']} ({m['device']}), torch {m['torch']}, {m['date']}", "", settings]


def windows_text(m: dict[str, Any]) -> str:
    window = f"{m['steps']} steps" if m["steps"] else f"~{m['seconds']} s"
    return f"{m['windows']} windows of {window} each, median (min–max) over windows"


def to_markdown(report: dict[str, Any]) -> str:
    m, sync = report["meta"], "result" in next(iter(report["methods"]), {})
    lines = header(m, "sync check" if sync else "bench", windows_text(m))
    if sync:
        rows = [[r["backbone"], r["method"], r["result"], r.get("where", "")] for r in report["methods"]]
        return "\n".join(lines + table(["backbone", "method", "result", "where"], rows)) + "\n"
    vanilla = vanilla_ms(report["methods"])
    lines += table(["backbone", "method", "img/s", "step ms", "× Vanilla", "mix ms", "mix share", "eval s / 10k",
                    "s / epoch", "peak MiB", "warm-up s", "note"], [method_cells(r, vanilla) for r in report["methods"]])
    if report["naive"]:
        lines += table(["backbone", "ours (Vanilla) img/s", "naive pipeline img/s", "ours / naive"],
                       [[r["backbone"], fmt(r["ours_img_s"], 0), fmt(r["img_s"], 0), f"{r['ratio']:.2f}×"]
                        for r in report["naive"]])
    if report["ops"]:
        libs = ("mixnb", "timm", "torchvision")
        lines += table(["op (ms per call, one batch)", *libs, "timm / mixnb", "torchvision / mixnb"],
                       [[r["op"], *(fmt(r.get(k), 3) for k in libs),
                         *(f"{r[k].median / r['mixnb'].median:.2f}" if k in r and "mixnb" in r else "n/a"
                           for k in libs[1:])] for r in report["ops"]])
    if report["notes"]:
        lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def concurrent_table(report: dict[str, Any]) -> list[str]:
    """Per backbone x method x K: each process's median img/s, their sum, and the sum over K=1's."""
    def cells(r: dict[str, Any]) -> list[Any]:
        rates = " / ".join(f"{p['img_s']:,.0f}" if p["error"] is None else "failed" for p in r["processes"])
        total = f"{r['aggregate_img_s']:,.0f}" if r["ok"] else "n/a"
        return [r["backbone"], r["method"], r["k"], rates, total, f"{r['vs_k1']:.2f}×" if r["vs_k1"] else "n/a",
                process_errors(r)]

    return table(["backbone", "method", "K", "img/s per process", "aggregate img/s", "vs K=1", "errors"],
                 [cells(r) for r in report["rows"]])


def process_errors(r: dict[str, Any]) -> str:
    """A concurrent row's failed processes, each with its one-line error."""
    return "; ".join(f"p{p['index']}: {p['error']}" for p in r["processes"] if p["error"] is not None)


def concurrent_markdown(report: dict[str, Any]) -> str:
    how = f"K processes at once on one device, each {windows_text(report['meta'])} after all K are warm"
    return "\n".join(header(report["meta"], "concurrent bench", how) + concurrent_table(report)) + "\n"


def configuration(m: dict[str, Any]) -> str:
    """A result file's compile setting as asked (``--compile``; "auto" resolves per method), with the capture."""
    option = m.get("compile_option", m["compile"])
    return f"{option}, step capture" if m.get("capture") == "step" and option != "off" else option


def kernel_share_table(rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per (meta, row) of --profile-kernels: device time per step and each category's share."""
    names = [c for c, _ in KERNEL_CATEGORIES] + [OTHER]

    def cells(m: dict[str, Any], r: dict[str, Any]) -> list[Any]:
        if r["status"] != "ok":
            return [r["backbone"], r["method"], configuration(m), r["status"], *[""] * (len(names) + 2)]
        return [r["backbone"], r["method"], configuration(m), r["time_base"], f"{r['total_ms']:,.2f}",
                f"{r['wall_ms']:,.2f}", *(f"{100 * r['categories'][c]['share']:.1f} %" for c in names)]

    return table(["backbone", "method", "configuration", "time", "ms / step", "wall ms / step", *names],
                 [cells(m, r) for m, r in rows])


def kernels_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = header(m, "kernel profile", f"torch.profiler over {PROFILE_STEPS} training steps after {m['warmup']} "
                                        "warm-up steps") + kernel_share_table([(m, r) for r in report["rows"]])
    for r in report["rows"]:
        if r["status"] == "ok":
            lines += ["", f"### {r['backbone']} {r['method']}: top {TOP_KERNELS} of {r['kernels']} ({r['time_base']})"]
            lines += table(["kernel", "category", "ms / step", "share", "calls / step"],
                           [[short(k["name"]), k["category"], f"{k['ms']:,.3f}", f"{100 * k['share']:.1f} %",
                             f"{k['calls']:g}"] for k in r["top"]])
    return "\n".join(lines) + "\n"


def short(name: str, width: int = 100) -> str:
    """A kernel name for a table cell: cut to ``width``, pipes escaped."""
    return (name if len(name) <= width else name[:width - 1] + "…").replace("|", "\\|")


def write_report(report: dict[str, Any], out: Path, stem: str = "bench",
                 render: Callable[[dict[str, Any]], str] = to_markdown) -> str:
    md = render(report)
    write_json(out / f"{stem}.json", json.loads(json.dumps(report, default=asdict)))
    atomic_write_text(out / f"{stem}.md", md)
    return md


def read_report(path: Path) -> dict[str, Any]:
    """A result file, its rows' {median, low, high} fields as Stat again."""
    def revive(v: Any) -> Any:
        return Stat(**v) if isinstance(v, dict) and set(v) == {"median", "low", "high"} else v

    report = json.loads(path.read_text())
    for rows in (v for k, v in report.items() if k != "meta"):
        rows[:] = [{k: revive(v) for k, v in r.items()} if isinstance(r, dict) else r for r in rows]
    return report


def summarize(root: Path) -> str:
    """Every bench.json, concurrent.json and kernels.json under ``root`` as one markdown summary: per backbone
    each method's img/s, s/epoch, × Vanilla and warm-up per configuration (a later file's row replaces an
    earlier one's of the same configuration unless it failed), then the concurrent rows, then the kernel categories."""
    found = {stem: [read_report(p) for p in sorted(root.rglob(f"{stem}.json"))] for stem in ("bench", "concurrent", "kernels")}
    benches = sorted((r for r in found["bench"] if not r["meta"].get("barrier")), key=lambda r: r["meta"]["date"])
    everything = [*benches, *found["concurrent"], *found["kernels"]]
    if not everything:
        return f"## mixnb summary: no bench.json, concurrent.json or kernels.json under {root}\n"
    m = everything[0]["meta"]
    title = (f"## mixnb summary of {root}: {m['device_name']} ({m['device']}), torch {m['torch']}, commit "
             f"{m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] else ''}")
    legend = (f"s / epoch: {EPOCH_IMAGES:,} images at the median img/s + one eval pass of {EVAL_IMAGES:,} (the bench's "
              "column); × Vanilla: step time over Vanilla's in the same configuration; warm-up s: the training "
              "warm-up, compile included (and cudnn autotune in a backbone's first row).")
    lines = [title, "", legend]
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}  # (backbone, method, configuration) -> row
    for report in benches:
        for r in report["methods"]:
            key = (r["backbone"], r["method"], configuration(report["meta"]))
            if key not in merged or r.get("status") == "ok":
                merged[key] = r
    methods = list(dict.fromkeys(method for _, method, _ in merged))
    configs = list(dict.fromkeys(config for _, _, config in merged))
    for backbone in dict.fromkeys(b for b, _, _ in merged):
        keys = sorted((k for k in merged if k[0] == backbone), key=lambda k: (methods.index(k[1]), configs.index(k[2])))
        vanilla = {c: vanilla_ms([merged[k] for k in keys if k[2] == c]).get(backbone) for c in configs}
        rows = []
        for key in keys:
            r, config = merged[key], key[2]
            if r.get("status") != "ok":
                rows.append([key[1], config, *[""] * 5, r.get("status", "")])
                continue
            warm = f"{r['warmup_s']:.1f}" if "warmup_s" in r else "n/a"
            rows.append([key[1], config, r.get("compile", ""), f"{r['img_s'].median:,.0f}", epoch_cell(r),
                         relative(r, vanilla.get(config)), warm, r.get("note", "")])
        lines += ["", f"### {backbone}"] + table(["method", "configuration", "compiled", "img/s", "s / epoch",
                                                  "× Vanilla", "warm-up s", "note"], rows)
    for report in found["concurrent"]:
        lines += ["", f"### concurrent processes on one device ({configuration(report['meta'])})"]
        lines += concurrent_table(report)
    if found["kernels"]:
        lines += ["", "### device time by kernel category"]
        lines += kernel_share_table([(report["meta"], r) for report in found["kernels"] for r in report["rows"]])
    return "\n".join(lines) + "\n"
