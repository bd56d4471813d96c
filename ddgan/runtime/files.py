"""Writing a file so that no reader ever sees half of it, and a crash never leaves one behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".tmp"


def temporary_pattern(name: str) -> str:
    """The glob that matches the temporary files `atomic_write` makes for a file called `name`."""
    return f".{name}.*{TEMPORARY_SUFFIX}"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int = 0o644,
                 durable: bool = True) -> Path:
    """Call write(f) on a temporary file beside `path`, fsync it, then rename it over `path`.

    Either the old file (or none) or the whole new one is there at any moment, also after a power cut:
    the data is on disk before the rename, and the folder entry after it (durable=False skips both
    fsyncs, for files that are cheap to remake). The temporary file is removed when `write` raises or
    the process is interrupted. `mode` replaces mkstemp's private 0600.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
