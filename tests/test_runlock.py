"""One runner per run folder: a second process stops naming the holder, waits, or takes a
dead holder's lock over (issue 15, finding 5)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from steering_utils.runlock import RunLock, RunLocked


def _holder(run: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the lock, says so on stdout, and holds it for `seconds`."""
    code = textwrap.dedent(f"""
        import sys, time
        from steering_utils.runlock import RunLock
        with RunLock({str(run)!r}):
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_stops_with_the_holder_named(tmp_path):
    run = tmp_path / "runs" / "smoke"
    holder = _holder(run, 60)
    try:
        lock = json.loads((run / ".lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as err:
            RunLock(run).acquire()
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since {lock['started_utc']}" \
            in message
        assert "--wait" in message and str(run / ".lock") in message
    finally:
        holder.kill()
        holder.wait()


def test_wait_takes_the_lock_once_the_holder_finishes(tmp_path):
    run = tmp_path / "smoke"
    holder = _holder(run, 2)
    said = []
    started = time.time()
    with RunLock(run, wait=True, echo=said.append) as lock:
        assert time.time() - started > 1.5  # only once the holder's 2 s are over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    holder.wait()
    assert said and said[0].startswith(f"waiting for pid {holder.pid}")
    assert not (run / ".lock").exists()  # released on exit


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "smoke"
    holder = _holder(run, 60)
    holder.kill()  # kill -9: the lock file stays behind
    holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    said = []
    with RunLock(run, echo=said.append):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert any("took over the stale lock" in line for line in said)
    assert sorted(p.name for p in run.iterdir()) == []  # no guard or aside files left


def test_racing_takeovers_of_a_stale_lock_let_exactly_one_in(tmp_path):
    run = tmp_path / "smoke"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                           "started_utc": "earlier"}))
    code = textwrap.dedent(f"""
        import time
        from steering_utils.runlock import RunLock, RunLocked
        try:
            with RunLock({str(run)!r}, echo=lambda line: None):
                print("in", flush=True)
                time.sleep(3)
        except RunLocked:
            print("refused", flush=True)
    """)
    racers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    outcomes = sorted(r.communicate(timeout=60)[0].strip() for r in racers)
    assert outcomes == ["in", "refused", "refused", "refused"]


def test_another_hosts_lock_is_never_taken(tmp_path):
    run = tmp_path / "smoke"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "other-machine",
                                           "started_utc": "2024-01-01T00:00:00Z"}))
    with pytest.raises(RunLocked, match="pid 1 on host other-machine since 2024-01-01"):
        RunLock(run).acquire()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    run = tmp_path / "smoke"
    run.mkdir()
    # Our own pid, but recorded with another process start time: the holder has died and
    # the pid now belongs to someone else.
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started_utc": "x", "process_start": "1"}))
    with RunLock(run, echo=lambda line: None):
        pass
