"""scripts/gpu_verify.py --dry: the GPU verification's plumbing on the CPU (every check it runs is isolated,
prints one line and passes).

The dry sizes are tiny (width 8, the test profile, batches of 8-16, the eager compile backend), so this is a
check of the plumbing, not of the GPU's numbers. The test runs every kind of check once, ``TESTED``: the captured
checks of CutMix, ManifoldMix, PuzzleMix and SAMix are the same code as Vanilla's with another method (every
method's capture is tests/test_compile.py's), and the RX-50 analysis is R-18's at another width; all of them take
~2.5 more minutes on 2 cores (``python scripts/gpu_verify.py --dry`` runs them). ``--slack 4`` and a 900 s
budget keep a loaded machine from failing it on time alone.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_verify.py"


TESTED = ("env", "fit-resume", "captured-vanilla", "divergence", "analysis-resnet18", "bn-groups", "notebook", "bench")


def check_names() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("gpu_verify", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_verify", module)  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.NAMES


@pytest.mark.slow
def test_gpu_verify_dry_runs_every_check_and_fails_none(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    assert set(TESTED) < set(check_names())
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--slack", "4", "--budget-s", "900", "--only",
                           ",".join(TESTED)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.strip().splitlines()
    results = {line.split(":")[0].split(" ", 1)[1]: line for line in lines[:-1]
               if line.split(" ", 1)[0] in ("PASS", "FAIL", "INFO", "SKIP")}
    assert list(results) == [n for n in check_names() if n in TESTED], proc.stdout + proc.stderr  # in order, a line each
    assert lines[-1].startswith("gpu_verify --dry: "), lines[-1]  # the summary, last
    assert (tmp_path / "gpu_verify.txt").read_text().splitlines() == lines  # $OUT gets the same lines
    assert not [line for line in results.values() if "not started" in line]  # nothing cut by the budget
    fails = [line for line in results.values() if line.startswith("FAIL ")]
    assert not fails, "\n".join(fails)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
