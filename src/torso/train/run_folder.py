"""A run folder's protection: what makes a folder a torso run, clearing one for `--overwrite`,
the exclusive lock a training process holds on it, and removing temporary files a killed
process left behind.

The lock is `fcntl.flock` on `.torso.lock` inside the folder, holding the owner's pid; the
operating system releases it when the process ends, however it ends, so a stale lock file never
blocks a later run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

from torso.errors import TorsoError

# Any of these makes a folder a torso run (a finished model, the run's arguments, its state).
RUN_MARKERS = ("torso.json", "train_args.json", "state.safetensors")
# What a run writes at the top of its folder, and the folders it writes.
RUN_FILES = ("model.safetensors", "metrics.csv", "report.html", *RUN_MARKERS)
RUN_FOLDERS = ("best", "tensorboard")
LOCK_FILE = ".torso.lock"
# `torso.files.atomic_write`'s temporary files: `.NAME.<random>.tmp`.
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a torso run (`torso.json`, `train_args.json` or the state)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS)


def clear_run(folder: str | os.PathLike) -> None:
    """Remove a run's files from `folder`: its model, state, arguments, metrics, report and
    plots (`*.png`), `best/` and `tensorboard/`, and torso's temporary files; nothing else."""
    folder = Path(folder)
    for path in folder.iterdir():
        if path.is_dir() and path.name in RUN_FOLDERS:
            shutil.rmtree(path)
        elif path.is_file() and (
            path.name in RUN_FILES or path.suffix == ".png" or TEMPORARY.match(path.name)
        ):
            path.unlink()


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of `atomic_write` (`.NAME.*.tmp`) that a killed process left
    in `folder` and its `best/`; returns them. Call it only while holding the run's lock."""
    folder = Path(folder)
    removed = []
    for place in (folder, folder / "best"):
        if not place.is_dir():
            continue
        for path in place.iterdir():
            if path.is_file() and TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class RunLock:
    """An exclusive lock on a run folder for as long as it is held (`with RunLock(folder):`).

    A second process that asks for it gets a `TorsoError` naming the pid of the holder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise TorsoError(
                    f"run folder '{self.folder}' is in use by another torso process "
                    f"(pid {holder}); wait for it to finish or choose another --out"
                ) from None
            raise TorsoError(f"cannot lock run folder '{self.folder}': {error.strerror}") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            os.ftruncate(self._handle, 0)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
