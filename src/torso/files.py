"""Writing files so that a killed process never leaves half of one (`atomic_write`), and tensors
with JSON metadata as safetensors bytes (`tensors_to_bytes`, `read_tensor_file`), never pickle.

The one definition torso uses for every file a user keeps (models, `torso.json`, training
state, reports, embedding indexes): the data goes to a uniquely named temporary file in the same
folder, is flushed to disk, and replaces the target with `os.replace`. Concurrent writers each
use their own temporary file, and a reader sees either the old file or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.errors import TorsoError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def unique_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File stems for the outputs written per input file, made unique when two inputs share
    one (`a/x.png`, `b/x.png` → `x`, `x-2`)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}-{count + 1}")
    return stems


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically; returns the path.

    A folder that cannot be created or written, or a full disk, is a `TorsoError` naming the
    folder (and, for a full disk, the space the file needs).
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
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TorsoError(
                f"the disk of '{path.parent}' is full: writing '{path.name}' needs "
                f"{_megabytes(len(data))} free; make space there or choose another folder"
            ) from None
        raise TorsoError(f"cannot write '{path}': {error.strerror or error}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


# -- safetensors ----------------------------------------------------------------------------
def tensors_to_bytes(tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> bytes:
    """Tensors (copied to CPU, contiguous, unshared) plus optional JSON `info`, as safetensors."""
    from safetensors.torch import save as save_tensor_bytes

    plain = {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}
    metadata = {"torso": json.dumps(info)} if info is not None else None
    return save_tensor_bytes(plain, metadata=metadata)


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON info from a safetensors file; a clear TorsoError if it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TorsoError(f"'{path}' does not exist") from None
    except OSError as error:
        raise TorsoError(f"cannot read '{path}': {error.strerror or error}") from None
    return parse_tensor_bytes(data, str(path))


def parse_tensor_bytes(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON info from safetensors bytes; `name` is used in error messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensor_bytes

    damaged = f"'{name}' is damaged or truncated (not a complete safetensors file)"
    if len(data) < 8:
        raise TorsoError(damaged)
    header_length = int.from_bytes(data[:8], "little")
    if header_length > len(data) - 8:
        raise TorsoError(damaged)
    try:
        header = json.loads(data[8 : 8 + header_length])
        tensors = load_tensor_bytes(data)
    except (SafetensorError, ValueError, UnicodeDecodeError):
        raise TorsoError(damaged) from None
    metadata = header.get("__metadata__") or {}
    try:
        info = json.loads(metadata["torso"]) if "torso" in metadata else {}
    except json.JSONDecodeError:
        raise TorsoError(damaged) from None
    return tensors, info
