"""Kill a training run in the middle of an epoch, for the resume tests (imported by tests)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mixnb.config import RunConfig

_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import mixnb.train as t
    from mixnb.config import RunConfig
    real = t.train_one_epoch
    def dying(*args, **kwargs):
        if args[4].epoch == int(sys.argv[2]):  # ctx.epoch: die in the middle of this epoch
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    t.train_one_epoch = dying
    t.fit(RunConfig.from_dict(json.loads(sys.argv[3])), sys.argv[1], progress="none")
""")


def run_until_killed(cfg: RunConfig, run_dir: Path, epoch: int) -> None:
    """Train ``cfg`` in a subprocess that SIGKILLs itself during ``epoch`` (0-based); check it died there."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(run_dir), str(epoch), json.dumps(cfg.to_dict())],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # really killed, mid-run
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == epoch
    assert not (run_dir / "summary.json").exists()
