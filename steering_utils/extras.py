"""Optional installs: the error a run gets when one it needs is absent.

A missing package is not a params error: the params are fine, the environment lacks an
extra. `MissingExtra` says so in one line naming the make target that installs it
(`make setup-vllm`, `make setup-ray`, `make setup` for the scorers' and offline wheels).
"""

from __future__ import annotations


class MissingExtra(ImportError):
    """An optional install these params need is absent; the message names its make target."""

    def __init__(self, needs: str, target: str, pip: str = "", instead: str = ""):
        self.target = target
        how = f"run `make {target}`" + (f" ({pip})" if pip else "")
        super().__init__(f"{needs}; {how}" + (f", or {instead}" if instead else ""))
