"""The run-folder lock: one process at a time owns a run folder.

The lock is an advisory ``fcntl.flock`` on ``RUN_DIR/run.lock``, which also holds the owner's pid,
host and start time as JSON. The kernel drops a flock when its process dies, so a folder whose owner
was killed is free again; the file then still names the dead owner, and the next run says that it
takes the folder over. A second process that finds the lock held refuses with ``RunDirLocked``
naming the owner, before it writes anything.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Optional, TextIO

from metaopt.meta_train.config import ConfigError

__all__ = ["LOCK_FILE", "RunDirLocked", "lock_path", "read_owner", "RunLock"]

LOCK_FILE = "run.lock"


class RunDirLocked(ConfigError):
    """The run folder is owned by another live process."""


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def read_owner(run_dir: str) -> Optional[dict]:
    """The owner recorded in ``run.lock`` (``{"pid", "host", "started"}``), or None."""
    try:
        with open(lock_path(run_dir), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        owner = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict]) -> str:
    if not owner:
        return "another process"
    return f"process {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')})"


class RunLock:
    """Holds the lock of one run folder for the life of a run.

    Args:
      run_dir: the run folder; it is created (with its lock file) when missing.
      log: where the take-over message goes.

    Raises:
      RunDirLocked: (from ``acquire``) the folder is owned by another live process.
    """

    def __init__(self, run_dir: str, log: TextIO = sys.stderr):
        self.run_dir = run_dir
        self.log = log
        self._file = None
        self.created_dir = False
        self.took_over: Optional[dict] = None

    def acquire(self) -> "RunLock":
        if self._file is not None:
            return self
        self.created_dir = not os.path.isdir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        f = open(lock_path(self.run_dir), "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirLocked(f"run_dir: {self.run_dir!r} is in use by {_describe(read_owner(self.run_dir))}; "
                               "wait for it to finish or choose another run_dir") from None
        f.seek(0)
        previous = f.read()
        if previous.strip():
            # The flock was free but the file names an owner: that process died without releasing.
            try:
                owner = json.loads(previous)
            except json.JSONDecodeError:
                owner = None
            self.took_over = owner if isinstance(owner, dict) else {}
            print(f"warning: run_dir {self.run_dir!r}: taking over the lock of {_describe(self.took_over)}, "
                  "which is no longer running", file=self.log)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(me) + "\n")
        f.flush()
        os.fsync(f.fileno())
        self._file = f
        return self

    def release(self) -> None:
        """Empties the owner record and drops the lock (the file stays: deleting it would race)."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
