"""Files appear under their name only when complete: written under a temporary sibling name,
then renamed."""
from __future__ import annotations

import os
import shutil
import uuid

__all__ = ["temporary_name", "remove"]


def temporary_name(path) -> str:
    """A unique sibling name for ``path`` (unique per call, so that concurrent writers, threads
    or processes, never collide)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(os.path.abspath(path)),
                        f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove(path, missing_ok=True):
    """Remove a file or a directory tree."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=missing_ok)
    elif os.path.lexists(path):
        os.remove(path)
