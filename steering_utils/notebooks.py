"""The stage notebooks: `notebooks/NN_stage.ipynb`, each paired with its py:percent source.

The `.py` file of a pair is the reviewed source (ruff lints it, its diffs read like
code); the `.ipynb` is what JupyterLab opens, committed without outputs. Lab saves both
sides (jupytext's contents manager, configured by `notebooks/jupytext.toml`);
`sync_pair` does the same from Python, as `jupytext --sync` does from a shell. The
runner executes the cells of the newer side, the side `jupytext --sync` would keep, so
an edit made on either side is the one that runs and nothing regenerates over it.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "steering-study"  # registered by `make kernel`
SOURCE_FORMAT = "py:percent"
# What the runner injects; every notebook's `parameters` cell declares exactly these
# (tests/test_notebooks.py).
PARAMETERS = ("params_file", "runs_root", "reports_root")


def notebook_pair(stage: str, folder: Path = NOTEBOOKS) -> tuple[Path, Path]:
    """(`<stage>.ipynb`, `<stage>.py`) in the notebooks folder."""
    return folder / f"{stage}.ipynb", folder / f"{stage}.py"


def strip_outputs(nb):
    """The notebook with every code cell's outputs and execution count cleared (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def read_stage_notebook(stage: str, folder: Path = NOTEBOOKS):
    """The stage's notebook as the newer side of its pair holds it, without outputs.

    jupytext's rule: the .ipynb's cells win only when it is strictly newer than the .py.
    """
    import jupytext

    ipynb, source = notebook_pair(stage, folder)
    sides = [p for p in (source, ipynb) if p.is_file()]
    if not sides:
        raise FileNotFoundError(f"no notebook for stage {stage}: neither {ipynb} nor {source}")
    newer = max(sides, key=lambda p: p.stat().st_mtime_ns)  # max keeps the .py on a tie
    return strip_outputs(jupytext.read(newer))


def sync_pair(path: Path) -> None:
    """Bring both sides of a pair up to the newer one's cells (`jupytext --sync path`)."""
    from jupytext.cli import jupytext as jupytext_cli

    jupytext_cli(["--sync", "--quiet", str(path)])


def source_text(nb, folder: Path = NOTEBOOKS) -> str:
    """The py:percent text of a notebook under the folder's jupytext config (outputs ignored)."""
    import jupytext
    from jupytext.config import load_jupytext_config
    from jupytext.formats import long_form_one_format

    fmt = long_form_one_format(SOURCE_FORMAT)
    config = load_jupytext_config(str(folder))  # notebooks/jupytext.toml
    if config is not None:
        config.set_default_format_options(fmt)  # the header filter, as `jupytext --sync`
    return jupytext.writes(nb, fmt=fmt, config=config)
