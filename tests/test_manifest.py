"""The run manifest's git commit: this checkout's HEAD in git, None outside a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_study import _assert_git_commit

from steering_utils.manifest import git_commit

ROOT = Path(__file__).resolve().parent.parent


def test_git_commit_is_head_in_a_checkout_and_none_outside(tmp_path):
    recorded = git_commit()
    _assert_git_commit(recorded)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert recorded.split("-")[0] == head
    for wrong in ("", "0" * 40, head[:12]):  # empty, not a commit here, not a full hash
        with pytest.raises(AssertionError):
            _assert_git_commit(wrong)
    # The same package outside any git checkout (the ceiling stops git looking above).
    shutil.copytree(ROOT / "steering_utils", tmp_path / "steering_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "from steering_utils.manifest import git_commit;"
                          " print(repr(git_commit()))"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
