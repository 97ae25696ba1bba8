"""`make lab`'s server: JupyterLab starts headless with the project's kernel and jupytext's
pairing, answers, stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks_with_the_project_kernel(tmp_path):
    port, token = _free_port(), "steering-test-token"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    lab_args = f"--no-browser --port={port} --ip=127.0.0.1 --IdentityProvider.token={token}"
    # `make lab` itself, with this interpreter's environment and set-up taken as done.
    server = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.installed", "lab", f"BIN={Path(sys.executable).parent}",
         f"LAB_ARGS={lab_args}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "lab.err").open("w"), env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
        with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=10) as r:
            names = {item["name"] for item in json.load(r)["content"]}
        assert {"01_data.ipynb", "05_sweep.ipynb", "06_report.ipynb"} <= names
        # jupytext's contents manager is on: Lab opens a py:percent source as its notebook
        # (and saves both sides of the pair).
        url = f"{base}/api/contents/05_sweep.py?token={token}&type=notebook&content=1"
        with urllib.request.urlopen(url, timeout=30) as r:
            opened = json.load(r)
        assert opened["type"] == "notebook"
        cells = opened["content"]["cells"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells)
        with urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}", timeout=10) as r:
            kernels = json.load(r)["kernelspecs"]
        assert "steering-study" in kernels, "run `make setup` (it registers the kernel)"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # The group got our SIGTERM, and the server did not ignore it (wait would have timed
    # out). `make` either dies of it (-15) or, when its child's death reaches it first,
    # exits 2 reporting the child "Terminated", or its wait finding no child left (races
    # between the two, seen under load); a lab that crashed on its own would exit 2 with an
    # "Error" line instead.
    made = [line for line in (tmp_path / "lab.err").read_text(errors="replace").splitlines()
            if line.startswith("make")]
    assert server.returncode == -signal.SIGTERM or (
        server.returncode == 2 and made and all(_killed(line) for line in made)), (
        server.returncode, made)


def _killed(make_line: str) -> bool:
    """A line make prints when its child died of our SIGTERM (no 'Error N' of a crash)."""
    return any(text in make_line for text in ("Terminated", "wait: No child processes",
                                              "Waiting for unfinished jobs"))
