"""Test-wide isolation: caches, runs and reports go to a temporary folder, never the repo's."""

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="mixnb-tests-"))
os.environ.setdefault("MIXNB_CACHE", str(_TMP / "cache"))
os.environ["MIXNB_RUNS"] = str(_TMP / "runs")
os.environ["MIXNB_REPORTS"] = str(_TMP / "reports")
os.environ.pop("MIXNB_DATA", None)
os.environ.pop("MIXNB_ATTENTIVEMIX_TEACHER", None)


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP
