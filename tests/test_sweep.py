"""The sweep (mixnb.sweep): the grid and its refusals, estimates, the command line's checks, GPU and time slots,
the run lock between two sweeps, submitit (a SLURM job script; a preempted job that resumes)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mixnb.__main__ import main
from mixnb.paths import NOTEBOOKS
from mixnb.runs import is_locked, run_lock
from mixnb.sweep import (TrainJob, dry_run, expand, gpu_slots, make_executor, measured_rates, minutes, parse_axes,
                         parse_method_axes, rate_for, read_grid, submit_sweep, wait_for)


# ----------------------------------------------------------------------------- the grid
def test_grids_from_the_command_line_and_a_grid_file(tmp_path):
    names = [j.config.run_name() for j in expand("sample", ["vanilla", "mixup", "cutmix"], alphas=[0.2, 1])]
    assert names == ["vanilla-resnet18-s0", "mixup-resnet18-s0-a0.2", "mixup-resnet18-s0",
                     "cutmix-resnet18-s0-a0.2", "cutmix-resnet18-s0"]  # Vanilla has no alpha: one run
    jobs = expand("sample", ["mixup", "cutmix"], sets=parse_axes(["lr=0.1,0.2", "weight_decay=5e-4"]),
                  args=parse_method_axes(["cutmix:alpha=0.5"]))
    assert [j.config.run_name() for j in jobs] == ["mixup-resnet18-s0-lr0.1-wd0.0005", "mixup-resnet18-s0-wd0.0005",
                                                  "cutmix-resnet18-s0-a0.5-lr0.1-wd0.0005", "cutmix-resnet18-s0-a0.5-wd0.0005"]
    assert jobs[0].parameters()["weight_decay"] == 0.0005  # every field reaches the notebook
    grid = read_grid(NOTEBOOKS.parent / "grids" / "alpha-search.toml")
    runs = expand("tiny-imagenet", grid=grid)
    assert {j.config.full_method_args().get("alpha") for j in runs if j.config.method == "samix"} == {0.2, 1.0, 2.0}
    (tmp_path / "bad.toml").write_text("[cutmix]\nalhpa = [1]\n")
    with pytest.raises(ValueError, match="bad.toml.*alhpa.*its settings: alpha"):
        read_grid(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        expand("sample", ["mixup"], alphas=[-1])


def test_every_grid_value_reaches_a_run_or_is_refused(tmp_path):
    """The loop's own axes given as settings, a setting no method has, an empty list: each one line, no run."""
    for item, option in (("seed=1,2", "seeds"), ("method=mixup", "methods"), ("backbone=resnext50", "backbones"),
                         ("profile=test", "profile")):
        with pytest.raises(ValueError, match=rf"an axis of the sweep's own loop.*--{option} \(make {option.upper()}="):
            parse_axes([item])  # SET="seed=1,2" ran seed 0 only
    with pytest.raises(ValueError, match=r"--arg 'apha=0.5': no method has setting 'apha'; valid: .*\balpha\b"):
        parse_method_axes(["apha=0.5"])  # dropped
    with pytest.raises(ValueError, match=r"cutmix has no setting 'lr'.*RunConfig fields go in --set"):
        parse_method_axes(["cutmix:lr=0.1"])
    assert parse_method_axes(["alpha=0.5", "cutmix:alpha=1,2"]) == {None: {"alpha": [0.5]}, "cutmix": {"alpha": [1, 2]}}
    grid = tmp_path / "grid.toml"
    for text, message in (("[all]\nseed = [0, 1]", r"\[all\]: seed is an axis.*--seeds"),
                          ("[all]\napha = [0.2]", r"\[all\] has no setting 'apha'; its settings: .*\balpha\b"),
                          ("[mixup]\nalpha = []", r"\[mixup\] alpha = \[\] would leave mixup out of the sweep"),
                          ("[cutmix]\nbackbone = 'resnext50'", r"\[cutmix\]: backbone is an axis.*--backbones")):
        grid.write_text(text)
        with pytest.raises(ValueError, match=rf"^grid file {re.escape(str(grid))}: {message}"):
            read_grid(grid)
    grid.write_text("[all]\nepochs = 2\nalpha = [0.2, 1.0]\n[cutmix]\nalpha = 0.5")
    assert read_grid(grid) == {"all": {"epochs": [2], "alpha": [0.2, 1.0]}, "cutmix": {"alpha": [0.5]}}


# ----------------------------------------------------------------------------- estimates and options
def test_the_gpu_time_of_puzzlemix_at_the_published_settings_is_not_guessed_from_heads_rate():
    _, rates = measured_rates()
    [published] = expand("tiny-imagenet", ["puzzlemix"], backbones=["resnet18"])
    [head] = expand("tiny-imagenet", ["puzzlemix"], backbones=["resnet18"], sets={"reference": ["head"]})
    [cutmix] = expand("tiny-imagenet", ["cutmix"], backbones=["resnet18"])
    assert rate_for(published, rates) is None  # 16x16 blocks and 4-px transport: ~26x HEAD's per batch, no GPU rate
    assert rate_for(head, rates) == rates[("resnet18", "puzzlemix")]  # measured at HEAD's settings
    assert rate_for(cutmix, rates) == rates[("resnet18", "cutmix")]


def test_the_gpu_time_of_another_profile_scales_tinys_rate_by_its_train_pixels():
    _, rates = measured_rates()
    tiny = rates[("resnet18", "cutmix")][0]
    for profile, scale in (("cifar100", 50_000 * 32**2 / (100_000 * 64**2)), ("imagenet64", 12.81167)):
        [job] = expand(profile, ["cutmix"], backbones=["resnet18"])
        rate, how = rate_for(job, rates)
        assert rate == pytest.approx(tiny * scale) and f"for {profile}'s train pixels per epoch" in how
    assert "imagenet64: Tiny-ImageNet's measured rates x12.8117" in dry_run(expand("imagenet64", ["vanilla"], epochs=1))


def test_sweep_options_are_checked_before_any_run_naming_themselves(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b"\x80\x81\x00binary")
    monkeypatch.delenv("MIXNB_DATA", raising=False)
    monkeypatch.delenv("MIXNB_TINC", raising=False)
    for argv, message in ((["--alphas", "abc"], "--alphas 'abc': give comma-separated numbers, e.g. --alphas 0.2,1"),
                          (["--seeds", "0,,1"], "--seeds '0,,1': give comma-separated integers"),
                          (["--grid", str(grid)], f"grid file {grid} is not text"),
                          (["--runs-per-gpu", "0", "--dry-run"], "RUNS_PER_GPU must be >= 1, got 0"),
                          (["--profile", "tiny-imagenet", "--executor", "slurm", "--time", "abc"],  # before the data
                           "--time 'abc': use minutes, H:MM")):
        assert main(["sweep", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("MIXNB_TINC", str(tmp_path / "moved"))  # found only after each run's training
    assert main(["sweep", "--profile", "test", "--dry-run"]) == 2
    assert f"MIXNB_TINC={tmp_path / 'moved'} is not a Tiny-ImageNet-C folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- local slots and the run lock
def test_gpu_groups_and_time_limits(monkeypatch):
    assert gpu_slots(["0", "1", "2", "3"], 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpu_slots(None, 4) == [{}]  # the default GPU, one run at a time
    assert gpu_slots(["0", "1"], 1, runs_per_gpu=2) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "0", "1")]
    with pytest.raises(ValueError, match="GPUS_PER_RUN=2"):
        gpu_slots(["0", "1", "2"], 2)
    assert [minutes(v) for v in ("90", "2:00", "2:00:30", "1-12", "1-00:30:00")] == [90, 120, 121, 2160, 1470]
    assert expand("test", ["cutmix"], gpus_per_run=2)[0].parameters()["world_size"] == 2
    assert "world_size" not in expand("test", ["cutmix"])[0].parameters()


LOCK_SWEEP = textwrap.dedent("""
    import os, sys, time
    import mixnb.sweep as s
    import mixnb.sweep.job
    ready = sys.argv[3]
    open(os.path.join(ready, str(os.getpid())), "w").close()  # imported: torch's import time varies with the load
    def fake(job, *, env=None, pass_fds=()):  # a job that takes a while, then is finished
        with open(sys.argv[1], "a") as log:
            log.write(f"start {job.config.run_name()} {time.time()}\\n")
        deadline = time.time() + 60
        while len(os.listdir(ready)) < 2 and time.time() < deadline:  # both sweeps up before any job ends
            time.sleep(0.05)
        time.sleep(1.5)  # long enough that the other sweep finds jobs running (two slots each)
        (job.run_dir / "metrics.csv").write_text("epoch\\n1\\n")
        (job.run_dir / "summary.json").write_text('{"epochs": 1}')
        with open(sys.argv[1], "a") as log:
            log.write(f"end {job.config.run_name()} {time.time()}\\n")
    mixnb.sweep.job.execute = fake
    s.run_sweep(s.expand("test", sys.argv[2].split(","), epochs=1, analysis=False))  # the fake trains, analyses nothing
""")


@pytest.mark.slow
def test_two_sweeps_at_once_run_each_job_once(tmp_path):
    methods = ["vanilla", "attentivemix", "mixup", "cutmix"]
    env = {**os.environ, "MIXNB_RUNS": str(tmp_path / "runs")}
    log = tmp_path / "executions.log"
    (tmp_path / "ready").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_SWEEP, str(log), ",".join(methods), str(tmp_path / "ready")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    events = [line.split() for line in log.read_text().splitlines()]
    started = [name for kind, name, _ in events if kind == "start"]
    assert sorted(started) == sorted(j.config.run_name() for j in expand("test", methods, epochs=1)), events
    assert "elsewhere" in "".join(outputs)  # each job ran once; the other sweep reports it as skipped
    when = {(kind, name.split("-")[0]): float(at) for kind, name, at in events}
    assert when["end", "vanilla"] < when["start", "attentivemix"]  # the teacher run first, whoever ran it


def test_a_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\ntime.sleep(120)", str(tmp_path / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path)
        with run_lock(tmp_path, wait_s=0.2) as fd:
            assert fd is None
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(tmp_path)  # a killed holder never leaves the run stuck
    with run_lock(tmp_path) as fd:
        assert fd is not None


# ----------------------------------------------------------------------------- submitit (slurm, local)
def test_slurm_job_script_carries_the_options(tmp_path, monkeypatch):
    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit looks for srun before it builds a job script
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    ex = make_executor("slurm", tmp_path, gpus_per_run=2, partition="gpu", account="lab", qos="high",
                       time="1-00:00:00", cpus_per_task=16, mem_gb=64)
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for option in ("--partition=gpu", "--account=lab", "--qos=high", "--time=1440", "--gpus-per-node=2",
                   "--cpus-per-task=16", "--mem=64GB", "--signal=USR2@", "--ntasks-per-node=1"):
        assert option in script, option
    delayed = TrainJob().checkpoint(expand("test", ["vanilla"])[0])  # requeue = the same call again
    assert isinstance(delayed.function, TrainJob) and delayed.args[0].config.method == "vanilla"


@pytest.mark.slow
def test_submitit_sweep_of_a_two_process_run_survives_preemption(tmp_path, monkeypatch):
    """submitit's local executor end to end: the job executes train.ipynb with world_size=2 (torchrun,
    gloo); SIGUSR2 mid-run (SLURM's warning before preemption or the time limit) requeues it, and
    the requeued job resumes from the run's checkpoint."""
    monkeypatch.setenv("MIXNB_RUNS", str(tmp_path))
    grid = dict(executor="local", gpus_per_run=2, time="20")
    jobs = expand("test", ["mixup"], epochs=6, gpus_per_run=2, analysis=False)  # the analysis is not what is tested
    [(job, sub)], conflicts = submit_sweep(jobs, **grid)
    assert conflicts == []
    deadline = time.monotonic() + 150
    while not (job.run_dir / "checkpoint.pt").exists():  # at least one epoch done
        assert time.monotonic() < deadline and sub.state == "RUNNING", sub.stderr()
        time.sleep(0.1)
    pid = sub._process.pid  # submitit's controller; the job's task is its child
    task = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    os.kill(task, signal.SIGUSR2)
    assert wait_for([(job, sub)]) == [] and sub.result() == "ran"
    assert "Requeued" in (sub.stderr() or "") + (sub.stdout() or "")
    executed = nbformat.read(job.run_dir / "train.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters["world_size"] == 2
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])  # rank 0's log, streamed into it
    start = int(re.search(r"\(cpu x 2\): epochs (\d+)->6", outputs).group(1))
    assert 1 <= start < 6  # the requeued job resumed from the checkpoint, not from scratch
    assert list(pd.read_csv(job.run_dir / "metrics.csv")["epoch"]) == list(range(1, 7))
    assert json.loads((job.run_dir / "summary.json").read_text())["world_size"] == 2
    assert (job.run_dir / "mix_samples.png").exists()  # the notebook ran to its end
    assert submit_sweep(jobs, **grid) == ([], [])  # finished: nothing to submit
