"""Writing files so that a killed process never leaves half of one: `atomic_write`.

The one definition torso uses for every file a user keeps (models, `torso.json`, training
state, reports, embedding indexes): the data goes to a uniquely named temporary file in the same
folder, is flushed to disk, and replaces the target with `os.replace`. Concurrent writers each
use their own temporary file, and a reader sees either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torso.errors import TorsoError


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically; returns the path.

    A folder that cannot be created or written is a `TorsoError` naming it.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise TorsoError(f"cannot write to '{path.parent}': {error.strerror or error}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; saved files are ordinary ones
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise TorsoError(f"cannot write '{path}': {error.strerror or error}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
