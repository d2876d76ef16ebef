"""Project hygiene: environment.yml matches pyproject.toml, CI calls `make test`, README commands."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", req.strip())
        out[m.group(1).lower()] = m.group(2).replace(" ", "")
    return out


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and line.strip().startswith("- ") and not line.strip().startswith("- -e"):
            pip_lines.append(line.strip()[2:])
    assert _names(pip_lines) == _names(project["dependencies"])
    assert f"python{project['requires-python']}" in (ROOT / "environment.yml").read_text()


def test_torch_has_a_floor_not_a_pin():
    deps = _names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"].startswith(">=") and deps["torchvision"].startswith(">=")


def test_ci_runs_make_test_only():
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1].strip() == "make test"


def test_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make sweep" in quick and "make test" in quick
    assert "make sweep PROFILE=tiny-imagenet MIXNB_DATA=" in readme
