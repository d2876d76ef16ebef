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


# torch APIs mixnb's package uses -> the first torch release that has them (torch's release notes)
TORCH_API_SINCE = {"recompile_limit": (2, 7), "cudagraph_mark_step_begin": (2, 1), ".compile(mode=": (2, 2),
                   "fused=": (2, 3)}


def test_torch_has_a_floor_not_a_pin_and_the_floor_has_every_api_used():
    deps = _names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"].startswith(">=") and deps["torchvision"].startswith(">=")
    floor = tuple(int(v) for v in deps["torch"][2:].split(".")[:2])
    source = "\n".join(p.read_text() for p in (ROOT / "mixnb").rglob("*.py"))
    used = {api: since for api, since in TORCH_API_SINCE.items() if api in source}
    assert "recompile_limit" in used  # the table is read against the code, not against itself
    too_new = {api: since for api, since in used.items() if since > floor}
    assert not too_new, f"torch>={deps['torch'][2:]} lacks {too_new}: raise the floor in pyproject.toml and environment.yml"


def test_ci_runs_make_test_only():
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1].strip() == "make test"


def test_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make sweep" in quick and "make test" in quick
    assert "make sweep PROFILE=tiny-imagenet MIXNB_DATA=" in readme


def test_readme_methods_table_is_the_registry():
    """The README's methods table is methods_markdown()'s, so a registry change (a published number, a paper, a
    method added) cannot leave the README behind."""
    from mixnb.report import methods_markdown

    assert methods_markdown() in (ROOT / "README.md").read_text()
