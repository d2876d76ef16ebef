"""Test-wide isolation: caches, runs and reports go to a temporary folder, never the repo's."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

_TMP = Path(tempfile.mkdtemp(prefix="mixnb-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)  # each process its own; xdist's controller outlives its workers
if not os.environ.get("PYTEST_XDIST_WORKER"):  # never the user's cache; xdist's workers share the controller's
    os.environ["MIXNB_CACHE"] = str(_TMP / "cache")
os.environ["MIXNB_RUNS"] = str(_TMP / "runs")
os.environ["MIXNB_REPORTS"] = str(_TMP / "reports")
os.environ.pop("MIXNB_DATA", None)
os.environ.pop("MIXNB_ATTENTIVEMIX_TEACHER", None)
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: pytest -n auto; the workers share the cores, never oversubscribe
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)  # the subprocesses a test starts (papermill kernels, sweeps, DDP)
    torch.set_num_threads(_threads)


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


# The helpers the method tests share (gen, batch, ctx, tiny_model, the dispatch probes) and their one seed convention
# live in tests/helpers.py, imported as `from helpers import ...`: this folder is on sys.path (rootdir-based imports).
