"""One run per run directory: a lock file naming its owner, with stale locks detected.

Two runs writing into one directory would interleave their metrics and race on the checkpoint rename. A run takes
``<run_dir>/.lit_fed.lock`` (created exclusively, holding the owner's pid, host and start time) for as long as it
trains; a second run is refused with a message naming the owner. A lock whose owner is gone — same host, no such
process — is stale: it is replaced (with a warning), so a run killed with ``kill -9`` does not block its resume.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("lit_fed")

LOCK_NAME = ".lit_fed.lock"


class RunDirectoryInUse(RuntimeError):
    """Another live run holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}  # unreadable (being written, or garbage): treated as held


@contextlib.contextmanager
def run_directory_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Holds ``run_dir``'s lock for the duration of the block.

    Raises:
        RunDirectoryInUse: a live process (on this host, or any process on another host) holds it.
    """
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            pid, host = owner.get("pid"), owner.get("host")
            stale = host == me["host"] and isinstance(pid, int) and not _alive(pid)
            if not stale:
                who = f"pid {pid} on {host}, since {owner.get('started')}" if owner else "an unreadable lock"
                raise RunDirectoryInUse(
                    f"{directory} is in use by another lit-fed run ({who}); wait for it to finish, choose another "
                    f"--trainer.run_dir, or delete {path} if that run is gone"
                ) from None
            log.warning("removing the stale run-directory lock %s (pid %s on %s is gone)", path, pid, host)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:  # another run took it between our removal and creation
        raise RunDirectoryInUse(f"{directory} is in use by another lit-fed run (it took the lock at the same time)")
    try:
        yield path
    finally:
        if _owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
