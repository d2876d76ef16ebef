"""Run by tests/test_scale.py under ``torchrun --nproc-per-node 2``: every 2-process scenario, saved for
the assertions; also the helpers both sides share. Imports only mixnb.train: each rank starts fast."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import mixnb.train as t
from mixnb.config import RunConfig

_BN_TRAIN = nn.BatchNorm2d.train


def bn_from_running_stats(self, mode=True):
    """BatchNorm2d.train that keeps BN in eval mode: its output then does not depend on the batch split."""
    return _BN_TRAIN(self, False)


def vanilla(**kw) -> RunConfig:
    return RunConfig(**{"method": "vanilla", "profile": "test", "epochs": 2, "device": "cpu", "precision": "fp32",
                        "batch_size": 20, "crop_interpolation": "bicubic", **kw})  # 64 images: 4 steps per epoch,
    # the last of 4 images; fp32: bf16 rounds the two ranks' half batches differently, and this compares the maths
    # exactly; bicubic: test_scale's tolerances were measured on its crops (bilinear's drift 1.6e-5 in val_loss)


def crash_at(epoch: int):
    """A train_one_epoch that raises at ``epoch`` (0-based): a run killed after ``epoch`` checkpoints."""
    real = t.train_one_epoch

    def dying(*args, **kwargs):
        if args[4].epoch == epoch:  # ctx
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    return dying


def crashed(cfg: RunConfig, run_dir: Path, epoch: int) -> None:
    real, t.train_one_epoch = t.train_one_epoch, crash_at(epoch)
    try:
        t.fit(cfg, run_dir, progress="none")
    except RuntimeError:
        pass
    t.train_one_epoch = real


def main(out: Path) -> None:
    dist.init_process_group("gloo")  # ours, so a crashing fit leaves it up for the resume
    rank = dist.get_rank()
    writes = []
    for name in ("write_json", "atomic_torch_save", "_write_metrics"):  # who writes the run folder
        real = getattr(t, name)
        setattr(t, name, lambda *a, _real=real, _name=name, **k: (writes.append(_name), _real(*a, **k))[1])

    # 1. BN from running statistics: 2 processes = 1 process, and a resume may change the count
    nn.BatchNorm2d.train = bn_from_running_stats
    t.fit(vanilla(), out / "k2", progress="none")
    crashed(vanilla(), out / "k2-to-k1", 1)  # pytest resumes it with one process
    t.fit(vanilla(), out / "k1-to-k2", progress="none")  # pytest left a 1-process checkpoint here
    nn.BatchNorm2d.train = _BN_TRAIN

    # 2. per-rank mixing streams: a resume with the same count is exact
    mixup = RunConfig(method="mixup", profile="test", epochs=2, device="cpu")
    t.fit(mixup, out / "mixup", progress="none")
    crashed(mixup, out / "mixup-resumed", 1)
    t.fit(mixup, out / "mixup-resumed", progress="none")

    # 3. per-rank BN; methods that call forward_stages, fc, forward(mix=...), the saliency pass
    captured = {}
    real_average, real_evaluate = t.average_buffers_, t.evaluate

    def average(*modules, **kw):
        captured["bn_before"] = [b.clone() for b in modules[0].buffers() if b.is_floating_point()]
        real_average(*modules, **kw)

    def evaluate(model, method, loader, **kw):
        captured["model"], captured["method"] = model.state_dict(), method.state_dict()
        return real_evaluate(model, method, loader, **kw)

    t.average_buffers_, t.evaluate = average, evaluate
    for method, epochs in (("vanilla", 2), ("automix", 1), ("manifoldmix", 1), ("puzzlemix", 1)):
        t.fit(RunConfig(method=method, profile="test", epochs=epochs, device="cpu"), out / method, progress="none")
        torch.save(captured, out / method / f"rank{rank}.pt")

    # 4. per-rank BN in fp32, for the single-process bn_groups=2 run that must equal it
    t.fit(vanilla(), out / "perrank", progress="none")

    # 5. settings that cannot run on 2 CPU processes fail clearly
    errors = {}
    for name, cfg in {"batch": vanilla(batch_size=99), "sync_bn": vanilla(sync_bn=True)}.items():
        try:
            t.fit(cfg, out / f"error-{name}", progress="none")
        except ValueError as err:
            errors[name] = str(err)
    (out / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "errors": errors}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
