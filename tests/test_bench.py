"""`python -m mixnb.bench` end to end on CPU with tiny settings: the files and their fields (no timings asserted)."""

import contextlib
import importlib.util
import io
import json
import threading
import time

import pytest
import torch

from mixnb.bench import (KERNEL_CATEGORIES, OTHER, TOP_KERNELS, Barrier, Stat, build_rig, concurrent_row,
                         kernel_category, main, parse_args, parse_spec, process_results, time_window)
from mixnb.bench.throughput import mix_probe
from mixnb.config import RunConfig
from mixnb.mixups import REGISTRY
from mixnb.runs import load_data

pytestmark = pytest.mark.xdist_group("bench")  # make test -n: its module fixtures are built once, on one worker

TINY = ["--device", "cpu", "--width", "8", "--batch-size", "20", "--steps", "1", "--windows", "1", "--warmup", "1",
        "--eval-images", "40", "--profile", "test", "--workers", "1"]


def run_main(argv):
    """main(argv): (exit code, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One folder for this module's bench, --concurrent and --profile-kernels runs (what --summarize reads)."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def bench_run(results):
    out = results / "methods"
    code, printed = run_main([*TINY, "--methods", "vanilla,cutmix", "--out", str(out)])
    return code, out, printed


@pytest.fixture(scope="module")
def concurrent_run(results):
    # a row that fails in every process before its barrier first: the next row's barrier must still meet
    out = results / "concurrent"
    code, printed = run_main([*TINY, "--methods", "attentivemix:teacher_weights=/nonexistent.pth,vanilla",
                              "--concurrent", "1,2", "--out", str(out)])
    return code, out, printed


@pytest.fixture(scope="module")
def kernels_run(results):
    out = results / "kernels"
    code, printed = run_main([*TINY, "--methods", "vanilla", "--profile-kernels", "--out", str(out)])
    return code, out, printed


@pytest.mark.slow
def test_bench_writes_json_and_markdown_with_every_field(bench_run):
    code, out, printed = bench_run
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    meta = report["meta"]
    for key in ("device_name", "torch", "date", "git", "width", "batch_size", "compile", "capture", "windows"):
        assert key in meta, key
    assert meta["width"] == 8 and meta["batch_size"] == 20 and meta["device"] == "cpu" and meta["profile"] == "test"
    assert (meta["compile_option"], meta["compile"], meta["capture"], meta["barrier"]) == ("auto", "off", "model", None)
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
        assert row["warmup_s"] > 0 and row["compile"] == "off"  # auto on the CPU: eager
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
    for header in ("| backbone | method | img/s |", "| peak MiB | warm-up s | note |", "ours / naive", "| op (ms per call"):
        assert header in md, header
    assert ", compile off, capture model, " in md
    warmups = [line.split(" | ")[-2] for line in md.splitlines() if line.startswith(("| resnet18 | vanilla |",
                                                                                      "| resnet18 | cutmix |"))]
    assert warmups == [f"{rows[m]['warmup_s']:.1f}" for m in ("vanilla", "cutmix")]
    assert "| resnet18 | vanilla |" in md and "| resnet18 | cutmix |" in md
    assert printed.rstrip().endswith(md.rstrip())  # the table is printed last


def test_capture_reaches_the_run_config_and_the_report(tmp_path):
    code, _ = run_main([*TINY, "--methods", "vanilla", "--no-peers", "--capture", "step", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["meta"]["capture"] == "step" and report["methods"][0]["status"] == "ok"
    assert ", capture step, " in (tmp_path / "bench.md").read_text()
    data = load_data(RunConfig(profile="test"))
    for capture in ("model", "step"):  # compiled lazily: building costs no compile
        rig = build_rig("vanilla", "resnet18", data, parse_args([*TINY, "--compile", "default", "--capture", capture]),
                        tmp_path)
        assert rig.cfg.capture == capture and ("training_step" in vars(rig.method)) == (capture == "step")


@pytest.mark.slow
def test_concurrent_processes_and_their_sum(concurrent_run):
    code, out, printed = concurrent_run
    assert code == 0
    report = json.loads((out / "concurrent.json").read_text())
    assert report["meta"]["compile_option"] == "auto"
    rows = {(r["method"], r["k"]): r for r in report["rows"]}
    assert list(rows) == [("attentivemix:teacher_weights=/nonexistent.pth", 1), ("vanilla", 1),
                          ("attentivemix:teacher_weights=/nonexistent.pth", 2), ("vanilla", 2)]
    for k in (1, 2):
        failed = rows["attentivemix:teacher_weights=/nonexistent.pth", k]
        assert failed["ok"] == 0 and failed["vs_k1"] is None and len(failed["processes"]) == k
        assert all(p["error"].startswith("skipped: FileNotFoundError") for p in failed["processes"])
        row = rows["vanilla", k]
        assert row["ok"] == k and [p["index"] for p in row["processes"]] == list(range(k))
        for p in row["processes"]:  # each process's own bench.json: training windows after the barrier, no eval
            (child,) = [r for r in json.loads((out / f"k{k}" / f"p{p['index']}" / "bench.json").read_text())["methods"]
                        if r["method"] == "vanilla"]
            assert p["error"] is None and p["img_s"] == child["img_s"]["median"] > 0
            assert child["warmup_s"] > 0 and child["barrier_wait_s"] >= 0  # it met the others before its windows
            assert "eval_s" not in child and "mix_ms" not in child
        meta = json.loads((out / f"k{k}" / "p0" / "bench.json").read_text())["meta"]
        assert meta["barrier"] == {"k": k, "index": 0} and "--concurrent" not in meta["argv"]
        assert row["aggregate_img_s"] == pytest.approx(sum(p["img_s"] for p in row["processes"]))
    assert rows["vanilla", 1]["vs_k1"] == 1.0
    assert rows["vanilla", 2]["vs_k1"] == pytest.approx(rows["vanilla", 2]["aggregate_img_s"]
                                                        / rows["vanilla", 1]["aggregate_img_s"])
    md, two = (out / "concurrent.md").read_text(), rows["vanilla", 2]
    rates = " / ".join(f"{p['img_s']:,.0f}" for p in two["processes"])
    assert f"| resnet18 | vanilla | 2 | {rates} | {two['aggregate_img_s']:,.0f} | {two['vs_k1']:.2f}× |  |" in md
    assert "| failed / failed | n/a | n/a | p0: skipped: FileNotFoundError" in md
    assert printed.rstrip().endswith(md.rstrip())


def test_concurrent_barrier_and_failed_processes(tmp_path):
    waiter = threading.Thread(target=Barrier(tmp_path, 2, 0).wait, args=(0,))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # process 1 is not warm yet
    Barrier(tmp_path, 2, 1).arrive(0)
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    with pytest.raises(TimeoutError, match=r"process\(es\) 1 of 2 not warm"):
        Barrier(tmp_path, 2, 0).wait(1, timeout=0.05)
    Barrier(tmp_path, 2, 1).exited()  # the parent's mark for a process that ended: nobody waits for it
    assert Barrier(tmp_path, 2, 0).wait(1, timeout=5) < 1  # not the timeout: nobody is waited for

    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "bench.log").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n\n")
    ok = {("resnet18", "vanilla"): {"status": "ok", "img_s": Stat(100.0, 90.0, 110.0)}}
    results = [(ok, "no row written"), process_results(tmp_path / "p1", 1)]
    assert results[1] == ({}, "exit 1: RuntimeError: out of memory")
    row = concurrent_row("resnet18", "vanilla", 2, results, {"ok": 1, "aggregate_img_s": 80.0})
    assert row["processes"] == [{"index": 0, "img_s": 100.0, "error": None},
                                {"index": 1, "img_s": None, "error": "exit 1: RuntimeError: out of memory"}]
    assert (row["ok"], row["aggregate_img_s"], row["vs_k1"]) == (1, 100.0, 1.25)  # the others still count


def test_kernel_profile_shares(kernels_run):
    code, out, printed = kernels_run
    assert code == 0
    (row,) = json.loads((out / "kernels.json").read_text())["rows"]
    assert row["status"] == "ok" and row["time_base"] == "CPU ops' self time" and row["steps"] > 0
    names = [c for c, _ in KERNEL_CATEGORIES] + [OTHER]
    assert set(row["categories"]) == set(names)  # (json.dumps sorts the keys)
    assert sum(c["share"] for c in row["categories"].values()) == pytest.approx(1.0)
    assert sum(c["ms"] for c in row["categories"].values()) == pytest.approx(row["total_ms"])
    assert max(row["categories"], key=lambda c: row["categories"][c]["ms"]) == "convolution / gemm"
    assert 0 < row["total_ms"] and len(row["top"]) == TOP_KERNELS < row["kernels"]
    assert [k["ms"] for k in row["top"]] == sorted((k["ms"] for k in row["top"]), reverse=True)
    assert all(k["category"] == kernel_category(k["name"]) for k in row["top"])
    md = (out / "kernels.md").read_text()
    assert "| resnet18 | vanilla | auto | CPU ops' self time |" in md and f"top {TOP_KERNELS} of " in md
    assert f"| wall ms / step | {' | '.join(names)} |" in md
    assert printed.rstrip().endswith(md.rstrip())


def test_kernel_categories_of_cuda_kernel_names():
    cases = {
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<3>, at::native::(anonymous namespace)::FusedSgdMathFunctor<float, 3>>": "optimizer",
        "void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float, 512, true, 1>": "batch norm",
        "triton_red_fused__native_batch_norm_legit_functional_relu_3": "batch norm",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution / gemm",
        "triton_tem_fused_convolution_7": "convolution / gemm",
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)>>": "copies / layout",
        "Memcpy HtoD (Pageable -> Device)": "copies / layout",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>":
            "reductions",
        "triton_poi_fused_add_relu_threshold_backward_5": "elementwise / activation",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "elementwise / activation",
        "aten::clamp_min_": "elementwise / activation",
        "aten::randperm": OTHER,
    }
    assert {name: kernel_category(name) for name in cases} == cases


def test_summarize_prints_every_table(results, bench_run, concurrent_run, kernels_run):
    methods = json.loads((results / "methods" / "bench.json").read_text())
    step = json.loads(json.dumps(methods))  # a second configuration: the step capture, CutMix twice as fast
    step["meta"].update(compile_option="reduce-overhead", capture="step", date="9999-01-01T00:00:00+00:00")
    cutmix = step["methods"][1]
    cutmix["step_ms"] = {k: v / 2 for k, v in cutmix["step_ms"].items()}
    cutmix.update(img_s={k: 2 * v for k, v in cutmix["img_s"].items()}, epoch_s=123.4, warmup_s=56.7)
    (results / "step").mkdir()
    (results / "step" / "bench.json").write_text(json.dumps(step))

    code, printed = run_main(["--summarize", str(results)])
    assert code == 0
    lines = printed.splitlines()
    rows = {tuple(line.split(" | ")[:2]): line for line in lines if line.startswith(("| vanilla |", "| cutmix |"))}
    assert list(rows) == [("| vanilla", "auto"), ("| vanilla", "reduce-overhead, step capture"), ("| cutmix", "auto"),
                          ("| cutmix", "reduce-overhead, step capture")]  # --concurrent's processes: not rows here
    for report, config in ((methods, "auto"), (step, "reduce-overhead, step capture")):
        van, cut = report["methods"]
        for r in (van, cut):
            cells = rows[f"| {r['method']}", config].split(" | ")
            ratio = r["step_ms"]["median"] / van["step_ms"]["median"]
            assert cells[2:7] == ["off", f"{r['img_s']['median']:,.0f}", f"{r['epoch_s']:,.1f}", f"{ratio:.2f}",
                                  f"{r['warmup_s']:.1f}"], cells
    assert "### resnet18" in printed and "| method | configuration | compiled | img/s | s / epoch |" in printed
    conc = json.loads((results / "concurrent" / "concurrent.json").read_text())["rows"]
    assert "| resnet18 | vanilla | 2 | " in printed and f"| {conc[-1]['aggregate_img_s']:,.0f} |" in printed
    assert lines.index("### device time by kernel category") > max(i for i, line in enumerate(lines)
                                                                   if line.startswith("| resnet18 | vanilla | 2 |"))
    assert lines[-1].startswith("| resnet18 | vanilla | auto | CPU ops' self time |")  # the kernel table is last


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


def test_a_method_that_mixes_inside_the_forward_has_no_mixing_probe():
    assert mix_probe("manifoldmix", None) == ("n/a: mixes hidden features inside the forward", None)
