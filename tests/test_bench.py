"""`python -m mixnb.bench` end to end on CPU with tiny settings: the files and their fields (no timings asserted)."""

import contextlib
import importlib.util
import io
import json

import pytest
import torch

from mixnb.bench import Stat, main, parse_spec, time_window
from mixnb.mixups import REGISTRY

TINY = ["--device", "cpu", "--width", "8", "--batch-size", "20", "--steps", "1", "--windows", "1", "--warmup", "1",
        "--eval-images", "40", "--profile", "test", "--workers", "1"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([*TINY, "--methods", "vanilla,cutmix", "--out", str(out)])
    return code, out, printed.getvalue()


def test_bench_writes_json_and_markdown_with_every_field(bench_run):
    code, out, printed = bench_run
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    meta = report["meta"]
    for key in ("device_name", "torch", "date", "git", "width", "batch_size", "compile", "windows"):
        assert key in meta, key
    assert meta["width"] == 8 and meta["batch_size"] == 20 and meta["device"] == "cpu" and meta["profile"] == "test"
    assert set(meta["git"]) == {"commit", "dirty"}

    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == ["vanilla", "cutmix"]
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["backbone"] == "resnet18" and row["label"] == REGISTRY[name].label
        for key in ("img_s", "step_ms", "eval_s", "mix_ms"):
            assert set(row[key]) == {"median", "low", "high"}, key
            assert 0 < row[key]["low"] <= row[key]["median"] <= row[key]["high"], key
        assert row["epoch_s"] > row["eval_s"]["median"] > 0
        assert row["mix_share"] > 0 and row["peak_mem_mb"] > 0 and row["mix_probe"] == "mix()"
    assert rows["vanilla"]["eval_s"] == rows["cutmix"]["eval_s"]  # the plain model's eval is timed once

    (naive,) = report["naive"]
    assert naive["backbone"] == "resnet18" and naive["img_s"]["median"] > 0
    assert naive["ours_img_s"]["median"] > 0  # our Vanilla step, in windows alternating with the naive one
    assert naive["ratio"] == pytest.approx(naive["ours_img_s"]["median"] / naive["img_s"]["median"])  # 1 window

    ops = {r["op"]: r for r in report["ops"]}
    assert set(ops) == {"mixup", "cutmix"}
    libs = {"mixnb", "torchvision"} | ({"timm"} if importlib.util.find_spec("timm") else set())
    for row in ops.values():
        assert libs <= set(row), row
    assert any("timm" in n for n in report["notes"]) == (importlib.util.find_spec("timm") is None)

    md = (out / "bench.md").read_text()
    assert md.startswith("## mixnb bench: ") and meta["git"]["commit"][:12] in md
    for header in ("| backbone | method | img/s |", "ours / naive", "| op (ms per call"):
        assert header in md, header
    assert "| resnet18 | vanilla |" in md and "| resnet18 | cutmix |" in md
    assert printed.rstrip().endswith(md.rstrip())  # the table is printed last


def test_missing_optional_piece_is_a_skipped_row_not_a_crash(tmp_path):
    # attentivemix with a teacher file that does not exist: the row says why, the run goes on
    code = main([*TINY, "--methods", "attentivemix:teacher_weights=/nonexistent.pth", "--no-peers", "--out", str(tmp_path)])
    assert code == 0
    (row,) = json.loads((tmp_path / "bench.json").read_text())["methods"]
    assert row["status"].startswith("skipped: FileNotFoundError") and "/nonexistent.pth" in row["status"]
    assert "| attentivemix:teacher_weights=/nonexistent.pth |" in (tmp_path / "bench.md").read_text()


def test_sync_check_runs_every_step_on_cpu(tmp_path):
    code = main([*TINY, "--methods", "mixup", "--batch-size", "10", "--sync-check", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "sync.json").read_text())["methods"]
    assert [r["method"] for r in rows] == ["mixup"]
    assert all(r["result"] == "ran (no sync check on CPU)" for r in rows), rows


def test_method_specs_and_the_timing_helper():
    assert parse_spec("puzzlemix:workers=8:transport=false") == ("puzzlemix", {"workers": 8, "transport": False})
    assert parse_spec("mixup") == ("mixup", {})
    calls = []
    assert time_window(calls.append, 3, torch.device("cpu")) >= 0 and calls == [3]
    assert Stat.of([3.0, 1.0, 2.0]) == Stat(2.0, 1.0, 3.0)
