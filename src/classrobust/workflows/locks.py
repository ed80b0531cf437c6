"""One launcher per run folder: a lock file beside the folder, with its owner's host and pid (and
Slurm job), taken over when that owner is gone. Used by evaluation, the experiment runner and the
launchers; imports no other workflow, so that none of them imports another through it."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Iterator

from classrobust.errors import UsageError

LOCK = ".lock"


def lock_path(directory: Path) -> Path:
    """The lock file of a run folder: beside it, ``.<name>.lock``."""
    return directory.parent / f".{directory.name}{LOCK}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def run_lock(directory: Path, key: str) -> Iterator[None]:
    """Hold ``.<run folder name>.lock`` beside the run's folder while it is worked on (not inside: a
    run folder holds only what the run writes). A lock held by a live process on this host, or by
    any process on another host, is refused with its owner's name; one left by a dead process on this
    host is taken over."""
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          **({"slurm_job": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {})}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):  # being written right now, or half-written by a killed one
                owner = {"host": "?", "pid": -1, "since": "?"}
            if owner.get("host") == me["host"] and owner.get("pid", -1) > 0 and not alive(owner["pid"]):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if owner.get("slurm_job") and _slurm_job_ended(owner["slurm_job"]):
                path.unlink(missing_ok=True)  # stale: a Slurm job that timed out or was preempted
                continue
            raise UsageError(f"{key} is being run by pid {owner.get('pid')} on {owner.get('host')} since "
                             f"{owner.get('since')} (another launcher); if that process is gone, remove {path}")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _slurm_job_ended(job_id: str) -> bool:
    """Whether Slurm no longer runs job ``job_id`` (squeue lists nothing for it); False when squeue
    cannot be asked (no Slurm here: the lock is left to its owner)."""
    try:
        listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and not listed.stdout.strip() or "Invalid job id" in listed.stderr
