"""The sweep's live progress (mixnb.progress): per-run lines from metrics.csv, ETAs, the plain-log form."""

from types import SimpleNamespace

from mixnb.progress import SweepWatcher, eta, read_progress, sweep_eta


def job(tmp_path, name, backbone="resnet18", epochs=4):
    cfg = SimpleNamespace(num_epochs=epochs, backbone=backbone, run_name=lambda: name)
    (tmp_path / name).mkdir(exist_ok=True)
    return SimpleNamespace(run_dir=tmp_path / name, config=cfg)


def write_metrics(j, rows):
    lines = ["epoch,top1,epoch_seconds"] + [f"{i + 1},{t},{s}" for i, (t, s) in enumerate(rows)]
    (j.run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_a_runs_progress_and_eta_come_from_its_own_epochs(tmp_path):
    j = job(tmp_path, "a", epochs=10)
    assert read_progress(j.run_dir, 10).remaining_s is None  # no metrics yet: nothing known
    assert read_progress(j.run_dir, 10).line("a") == "a: epoch 0/10, top-1 –, ETA ?"
    write_metrics(j, [(10.0, 99.0), (20.5, 4.0), (30.25, 6.0)])  # the first epoch carries the compile
    p = read_progress(j.run_dir, 10)
    assert (p.done, p.top1, p.seconds_per_epoch, p.remaining_s) == (3, 30.25, 5.0, 35.0)
    assert p.line("a") == "a: epoch 3/10, top-1 30.25, ETA 0m35s" and eta(3725) == "1h02m"


def test_the_sweep_eta_counts_waiting_runs_at_their_backbones_rate_over_the_slots(tmp_path):
    a, b, c = job(tmp_path, "a"), job(tmp_path, "b"), job(tmp_path, "c", backbone="resnext50")
    write_metrics(a, [(1, 10.0), (2, 10.0)])
    running = [(a, read_progress(a.run_dir, 4))]
    assert sweep_eta(running, [b], slots=2, backbone=lambda j: j.config.backbone) == (20 + 40) / 2
    assert sweep_eta(running, [c], slots=1, backbone=lambda j: j.config.backbone) is None  # no RX-50 rate yet


def test_in_a_log_a_line_is_printed_per_finished_epoch(tmp_path, capsys):
    a = job(tmp_path, "a")
    watcher = SweepWatcher(lambda: [a], lambda: [], slots=1, terminal=False)
    write_metrics(a, [(1.5, 2.0)])
    assert watcher.show()[-1] == "sweep: 1 running, 0 waiting, ETA 0m06s"
    watcher.show()  # no new epoch: nothing printed
    write_metrics(a, [(1.5, 2.0), (2.5, 2.0)])
    watcher.show()
    assert capsys.readouterr().out.splitlines() == [
        "[progress] a: epoch 1/4, top-1 1.50, ETA 0m06s", "[progress] sweep: 1 running, 0 waiting, ETA 0m06s",
        "[progress] a: epoch 2/4, top-1 2.50, ETA 0m04s", "[progress] sweep: 1 running, 0 waiting, ETA 0m04s"]


def test_on_a_terminal_each_running_job_has_a_bar(tmp_path):
    a, b = job(tmp_path, "a"), job(tmp_path, "b")
    write_metrics(a, [(1.5, 2.0)])
    with SweepWatcher(lambda: [a, b], lambda: [], slots=2, terminal=True, interval_s=60) as watcher:
        watcher.show()
        assert [(bar.desc, bar.n) for bar in watcher._bars.values()] == [("a", 1), ("b", 0)]
