"""Files appear under their name only when complete: written under a temporary sibling name,
then renamed. An output has one writer at a time: :func:`hold` locks it."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid

__all__ = ["temporary_name", "remove", "hold", "Busy", "stale_temporaries"]


def temporary_name(path) -> str:
    """A unique sibling name for ``path`` (unique per call, so that concurrent writers, threads
    or processes, never collide)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(os.path.abspath(path)),
                        f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def stale_temporaries(path, inside=False):
    """Temporary siblings of ``path`` (see :func:`temporary_name`) that no live process
    on this host is writing: what a run killed while creating ``path`` left behind. With
    ``inside``, those of the files in the directory ``path`` instead."""
    path = os.fspath(path)
    parent = path if inside else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    found = []
    for name in os.listdir(parent):
        if not name.startswith("." if inside else f".{os.path.basename(path)}.tmp-"):
            continue
        head, sep, tail = name.rpartition(".tmp-")
        pid = tail.split("-", 1)[0]
        if sep and pid.isdigit() and not _alive(int(pid)):
            found.append(os.path.join(parent, name))
    return found


class Busy(Exception):
    """Another live process holds the lock of an output."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def lock_name(path) -> str:
    """The lock file of an output: a hidden sibling of the path it resolves to (so that a
    symbolic link to the output names the same lock)."""
    path = os.path.realpath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def hold(path, error=None):
    """Hold the lock of ``path`` for the block, or raise :class:`Busy` (or ``error``, an
    exception class) naming the holder.

    The lock is an advisory ``flock`` on a hidden sibling file that records the holder's
    pid, host and start time. The operating system releases it when the holder exits,
    however it ends, so a lock left by a killed process is stale by construction and
    simply taken over. Where ``fcntl`` is missing (Windows), the file is created
    exclusively and a file whose pid is not alive on this host counts as stale.
    """
    name = lock_name(path)
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        fcntl = None
    if fcntl is None:  # pragma: no cover
        with _hold_exclusive(name, info, error or Busy):
            yield
        return
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise (error or Busy)(
                f"{os.fspath(path)!r} is being written by another run ({holder}); wait for "
                "it to finish, or stop it first") from None
        try:  # the file we locked must still be the lock (not unlinked by a finishing holder)
            same = os.fstat(fd).st_ino == os.stat(name).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)  # while still locked: a waiter's inode check sees it gone
        os.close(fd)


def _read_holder(fd):
    try:
        d = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {d['pid']} on {d['host']}, started {d['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


@contextlib.contextmanager
def _hold_exclusive(name, info, error):  # pragma: no cover - platforms without fcntl
    while True:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                with open(name) as f:
                    d = json.load(f)
            except (OSError, ValueError):
                d = {}
            if d.get("host") == socket.gethostname() and not _alive(int(d.get("pid", 0))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)
                continue
            raise error(f"{name!r} is held by another run ({d or 'holder unknown'})") from None
    try:
        os.write(fd, info.encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def remove(path, missing_ok=True):
    """Remove a file or a directory tree."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=missing_ok)
    elif os.path.lexists(path):
        os.remove(path)
