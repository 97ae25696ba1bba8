"""One runner per run folder: `runs/<run>/.lock` holds the owner's pid, host and start time.

The lock is a file created with O_EXCL (atomic: exactly one creator wins), its
content written before it becomes visible (link from a private file). A second
runner stops with a message naming the holder, or waits (`--wait`). A lock left by
a dead process on this host (pid gone, or reused by another process) is taken over:
the stale file is renamed aside while holding a short takeover guard, so two
runners that both find it stale cannot both take it. A run spread over a Ray cluster
(`execution: {mode: ray}`) has one driver, so one lock: its workers never open the run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"
# A takeover guard older than this was left by a process killed mid-takeover (which
# takes milliseconds): it is removed.
_GUARD_MAX_AGE_S = 30.0
_POLL_S = 1.0


class RunLocked(RuntimeError):
    """Another live process holds the run's lock; the message names it and the fix."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int | None) -> bool:
    """True while a process with this pid runs on this host (a zombie has stopped)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:  # an exited process nobody has reaped yet (e.g. no init in a container)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return True


def describe(holder: dict) -> str:
    """'pid 123 on host h since 2025-01-01T00:00:00Z' for messages."""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"since {holder.get('started_utc', '?')}")


class RunLock:
    """`with RunLock(run_folder, wait=False):` holds the run's lock for the block."""

    def __init__(self, run_folder: str | Path, wait: bool = False, echo=print,
                 timeout_s: float | None = None):
        self.folder = Path(run_folder)
        self.path = self.folder / LOCK_FILE
        self.wait = wait
        self.timeout_s = timeout_s
        self.echo = echo
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "process_start": _process_start(os.getpid())}
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock; raises RunLocked when held by a live process (unless waiting)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = None if self.timeout_s is None else time.time() + self.timeout_s
        announced = False
        while True:
            if self._create():
                self.held = True
                return
            holder = self.holder()
            if holder is not None and self._stale(holder):
                self._take_over(holder)
                continue
            if holder is None:  # vanished between our create and read: try again
                continue
            if not self.wait or (deadline is not None and time.time() > deadline):
                raise RunLocked(
                    f"{self.folder} is in use by {describe(holder)} ({self.path}); wait for it "
                    "to finish, run again with --wait, or, if that process is gone, delete "
                    f"{self.path}")
            if not announced:
                self.echo(f"waiting for {describe(holder)} to release {self.path}")
                announced = True
            time.sleep(_POLL_S)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held and (self.holder() or {}).get("pid") == self.mine["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def holder(self) -> dict | None:
        """The lock's content, or None when there is no lock."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Unreadable content is never half-written (see _create): treat it as a dead owner.
            return {"pid": None, "host": self.mine["host"], "started_utc": "?"}

    def _create(self) -> bool:
        # Write our content to a private file, then link it to the lock name: link fails if
        # the name exists (like O_EXCL) and a reader never sees an empty or partial lock.
        private = self.folder / f"{LOCK_FILE}.{self.mine['pid']}.new"
        private.unlink(missing_ok=True)  # ours by pid: left by an earlier process of that pid
        fd = os.open(private, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.mine, f)
            try:
                os.link(private, self.path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: O_EXCL on the name itself
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    json.dump(self.mine, f)
            return True
        finally:
            private.unlink(missing_ok=True)

    def _stale(self, holder: dict) -> bool:
        """True when the holder is known dead: same host and pid gone (or reused)."""
        if holder.get("host") != self.mine["host"]:
            return False  # another machine's process: we cannot tell, so never take it
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return True
        if not pid_alive(pid):
            return True
        started = holder.get("process_start")
        return started is not None and _process_start(pid) not in (None, started)

    def _take_over(self, holder: dict) -> None:
        """Rename a stale lock aside, under a guard so only one process judges and moves it."""
        guard = self.folder / f"{LOCK_FILE}.takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _GUARD_MAX_AGE_S:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            # Only guard holders remove a lock and a lock is only created where none
            # exists, so the file we re-check here is the one we rename.
            current = self.holder()
            if current == holder and self._stale(current):
                aside = self.folder / f"{LOCK_FILE}.stale-{os.getpid()}"
                os.replace(self.path, aside)
                aside.unlink(missing_ok=True)
                self.echo(f"took over the stale lock of {describe(holder)} (not running)")
        except FileNotFoundError:
            pass
        finally:
            guard.unlink(missing_ok=True)
