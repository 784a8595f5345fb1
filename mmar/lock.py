"""One run owns its folder: an advisory lock that dies with the process that holds it.

`folder_lock(directory)` takes an exclusive `flock` on `directory/.lock` and writes the holder's
PID, host and start time into it. A second run on the same folder (another process, a second
`mmar train --out` on the same path) is refused at once with `FolderInUse`, naming the holder.
The kernel drops the lock when its process dies, however it dies (SIGKILL included), so a stale
`.lock` file left behind never blocks `--resume`. The file itself is never deleted: removing it
would let two processes lock two different files of the same name. Within one process the lock
is re-entrant (a quickstart holds its folder while its own training steps take theirs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # resolved folder -> how many times this process holds it


class FolderInUse(OSError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(directory: str | Path) -> Iterator[Path]:
    """Hold `directory`'s lock for the duration of the block (creating the folder if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield directory
        finally:
            _held[key] -= 1
        return
    handle = open(directory / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUse(f"{directory} is in use by {holder}: wait for that run to end, or choose another --out") \
            from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _held[key] = 1
        yield directory
    finally:
        _held.pop(key, None)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
