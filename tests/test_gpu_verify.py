"""scripts/gpu_verify.py --dry: the GPU verification's plumbing on the CPU (every check runs, isolated, and passes).

The dry sizes are tiny (width 8, the test profile, batches of 8-16, the eager compile backend), so this is a
check of the plumbing, not of the GPU's numbers: ~2.5 minutes on an idle 2-core CPU. ``--slack 4`` and a
900 s budget keep a loaded machine (other jobs on the same 2 cores) from failing it on time alone.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_verify.py"


def check_names() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("gpu_verify", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_verify", module)  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.NAMES


@pytest.mark.slow
def test_gpu_verify_dry_runs_every_check_and_fails_none(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--slack", "4", "--budget-s", "900"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.strip().splitlines()
    results = {line.split(":")[0].split(" ", 1)[1]: line for line in lines[:-1]
               if line.split(" ", 1)[0] in ("PASS", "FAIL", "INFO", "SKIP")}
    assert list(results) == list(check_names()), proc.stdout + proc.stderr  # every check, in order, one line each
    assert lines[-1].startswith("gpu_verify --dry: "), lines[-1]  # the summary, last
    assert (tmp_path / "gpu_verify.txt").read_text().splitlines() == lines  # $OUT gets the same lines
    assert not [line for line in results.values() if "not started" in line]  # nothing cut by the budget
    fails = [line for line in results.values() if line.startswith("FAIL ")]
    if importlib.util.find_spec("mixnb.memory") is None:  # until mixnb/memory.py lands, its checks fail alone
        memory_checks = ("analysis-resnet18", "analysis-resnext50", "bn-groups")
        assert all(f.split(":")[0].split(" ", 1)[1] in memory_checks and "memory" in f for f in fails), fails
        assert "mixnb.memory NO" in results["env"]
        pytest.xfail(f"mixnb.memory is not there yet: {len(fails)} memory checks FAIL, every other check passes")
    assert not fails, "\n".join(fails)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
