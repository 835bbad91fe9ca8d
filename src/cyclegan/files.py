"""Writing files so that a crash, a kill or a full disk never leaves a half-written one behind.

A leaf module: it imports nothing else of the package but the error type, so anything may use it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cyclegan.errors import CycleGANError

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp)`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash at any point leaves either the old file or the new one, never a truncated file; a write that
    fails (a full disk, say) removes the temporary file and raises a one-line CycleGANError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise CycleGANError(write_failure(path, err)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CycleGANError(write_failure(path, err)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_failure(path: Path, err: OSError) -> str:
    """One line for a failed write, naming the disk-full case plainly (it is the common one)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write {path}: the disk is full (or the file size limit is reached); free some space"
    reason = err.strerror or str(err) or type(err).__name__
    return f"cannot write {path}: {reason}"


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable: without this a power cut can undo it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files a killed process left in ``folder`` (callers hold the folder's lock)."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file() or p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _read_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` can only read it by
    setting it, which races with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


UMASK = _read_umask()
"""Read once at import, before any writer thread starts: mkstemp makes private 0600 files, and results
should get the usual permissions."""


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a log, and how many non-blank lines were skipped as unreadable (a line torn by a
    kill, typically). A missing file has no rows."""
    if not Path(path).is_file():
        return [], 0
    rows, skipped = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped
