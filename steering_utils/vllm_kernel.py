"""Where a vLLM run's notebooks run: the vLLM environment's Jupyter kernel and python.

vLLM pins transformers below the main environment's, so it lives in a second environment
made by `make setup-vllm` (`.venv-vllm`), with its own Jupyter kernel. The runner (through
`engines.VLLMEngine.kernel`) asks for that kernel by name; `notebook_kernel` checks it
exists and puts its share folder on `JUPYTER_PATH` so Jupyter finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .extras import MissingExtra

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ".venv-vllm"
VLLM_KERNEL = "steering-study-vllm"


def notebook_kernel(project_root: Path | None = None) -> str:
    """Name of the vLLM environment's Jupyter kernel, made findable; MissingExtra if absent."""
    share = Path(project_root or PROJECT_ROOT) / VLLM_VENV / "share" / "jupyter"
    if not (share / "kernels" / VLLM_KERNEL / "kernel.json").is_file():
        raise MissingExtra(f"generation.engine: vllm needs the vLLM environment and its "
                           f"kernel {VLLM_KERNEL!r} (not found under {share})", "setup-vllm")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(share) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(share), *paths])
    return VLLM_KERNEL


def notebook_python(project_root: Path | None = None) -> str:
    """The vLLM environment's python (where a vLLM run's notebooks, so its Ray driver, run)."""
    return str(Path(project_root or PROJECT_ROOT) / VLLM_VENV / "bin" / "python")
