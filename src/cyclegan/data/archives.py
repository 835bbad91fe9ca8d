"""Unpacking ``.tar.gz`` datasets (the reference's pix2pix sets) with the checks zip datasets get.

Every entry is checked before anything is written: no absolute paths, no ``..``, nothing but regular files
and folders (no links, devices or pipes), at most ``max_entries`` entries and ``max_bytes`` unpacked. Files
are then written one by one by this module (tarfile's own extraction, with its metadata and link handling,
is not used), each created afresh: nothing outside the target folder is written. The whole gzip stream is
read once first, so that its CRC and length are checked (tarfile stops reading at the end-of-archive marker,
short of the CRC).
"""

from __future__ import annotations

import errno
import gzip
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cyclegan.errors import CycleGANError

_CHUNK = 256 * 1024
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)  # gzip's CRC and truncation are OSErrors


def unpack_tar(
    archive: Path, target: Path, url: str, *, max_bytes: int, max_entries: int, progress: bool
) -> None:
    """Check every entry of the ``.tar.gz`` at ``archive``, then write its folders and files under
    ``target``; any problem is one line naming ``url``."""
    try:
        with gzip.open(archive, "rb") as stream:
            while stream.read(_CHUNK):
                pass
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            total = _check_members(members, url, max_bytes, max_entries)
            free = shutil.disk_usage(target.parent).free
            if total > free:
                raise CycleGANError(
                    f"not enough space in {target.parent}: {url} unpacks to {_mib(total)}, {_mib(free)} free"
                )
            _extract(tar, members, target, url, total, progress)
    except CycleGANError:
        raise
    except _READ_ERRORS as err:
        raise CycleGANError(
            f"{url} is not a valid .tar.gz archive, truncated or corrupt ({err}); run again to refetch it"
        ) from None


def _check_members(members: list[tarfile.TarInfo], url: str, max_bytes: int, max_entries: int) -> int:
    """Refuse what could write outside the target folder or fill the disk; return the unpacked size."""
    if len(members) > max_entries:
        raise CycleGANError(f"refusing {url}: {len(members)} entries, more than the limit of {max_entries}")
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or member.name.startswith("\\") or ":" in path.parts[0]:
            problem = "has an absolute path"
        elif ".." in path.parts:
            problem = "points outside the target folder (..)"
        elif member.issym() or member.islnk():
            problem = "is a link"
        elif not (member.isfile() or member.isdir()):
            problem = "is neither a file nor a folder"
        else:
            continue
        raise CycleGANError(f"refusing {url}: its entry {member.name!r} {problem}")
    total = sum(member.size for member in members if member.isfile())
    if total > max_bytes:
        raise CycleGANError(
            f"refusing {url}: it unpacks to {_mib(total)}, more than the limit of {_mib(max_bytes)}"
        )
    return total


def _extract(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], target: Path, url: str, total: int, progress: bool
) -> None:
    """Write the entries; a read error (a corrupt archive) propagates, a write error is one line here."""
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="untar", disable=not progress)
    with bar:
        for member in members:
            path = target.joinpath(*PurePosixPath(member.name).parts)
            try:
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                out = open(path, "xb")  # noqa: SIM115 - closed below, whatever happens
            except FileExistsError:
                raise CycleGANError(f"refusing {url}: it holds {member.name!r} twice") from None
            except OSError as err:
                raise _write_error(err, url, total) from None
            with out, tar.extractfile(member) as source:  # type: ignore[union-attr]
                while chunk := source.read(_CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise _write_error(err, url, total) from None
                    bar.update(len(chunk))


def _write_error(err: OSError, url: str, total: int) -> CycleGANError:
    if err.errno == errno.ENOSPC:
        return CycleGANError(f"the disk is full: unpacking {url} needs {_mib(total)}")
    return CycleGANError(f"cannot unpack {url}: {err.strerror or err}: {err.filename or ''}".rstrip(": "))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
