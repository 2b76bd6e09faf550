"""Atomic files: a reader (or a run resumed after a kill) sees the old file or the new one, never half of one.

Every file the project writes for keeps goes through here: the bytes go to `<name>.tmp` beside the target, are
flushed and fsynced, then `os.replace` swaps them in (atomic on POSIX and Windows), and the folder is fsynced so
that the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written (disk full, file-size limit, read-only or vanished folder); the old file, if
    any, is untouched."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block has written it, fsync it and rename it into place.

    For writers that insist on a file name (`safetensors.torch.save_file`). If the block raises, the temporary
    file is removed and `path` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = _io_failure(e)
        if reason is not None:
            raise WriteError(f"{path}: cannot write it ({reason}); the previous file, if any, is untouched: free "
                             "disk space (or raise the file-size limit, or fix permissions) and run again") from None
        raise
    _fsync_dir(path.parent)


def _io_failure(e: BaseException) -> str | None:
    """Why writing failed when the machine, not the code, is to blame; None for any other exception."""
    if isinstance(e, WriteError):
        return None
    if isinstance(e, OSError):
        return e.strerror or str(e)
    # safetensors' writer reports the OSError inside its own exception type, e.g. "I/O error: No space left on
    # device (os error 28)"; matched by name so that this module needs no safetensors import.
    if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):
        return str(e).split("I/O error:", 1)[1].strip()
    return None


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (a NaN or infinity is an error, not the non-standard `NaN` token), indented, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):  # pragma: no cover - json handles floats itself
        raise ValueError(f"not finite: {obj}")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
