"""Datasets and pretrained generators from the reference project's server: download, verify, put in place.

The CycleGAN datasets are zip archives of trainA/, trainB/, testA/, testB/; the pix2pix ones (``--paired``)
are ``.tar.gz`` archives of side-by-side A|B images in train/, val/ (and test/), unpacked by
:mod:`cyclegan.data.archives` with the same checks. Nothing that looks complete appears before it is
verified. The bytes go to a hidden ``.NAME.*.part`` file beside the target, which a broken connection, a
stall or the overall deadline leaves for the next run to resume (HTTP Range); once all bytes are there, any
failure removes it, so the next run starts clean. A dataset is checked entry by entry (no absolute paths, no
``..``, no symlinks, no encryption, a size limit) before it is extracted into a hidden folder, every entry's
CRC is checked while extracting, and only a complete layout is renamed to ``ROOT/NAME``. A generator is
loaded into its network before it is renamed to ``ROOT/NAME.pth``. Symbolic links found at any of these
paths are never followed: nothing outside ``ROOT`` is written or deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import lzma
import os
import re
import shutil
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from http.client import HTTPException, InvalidURL
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cyclegan.config import NetConfig
from cyclegan.data.archives import unpack_tar
from cyclegan.data.datasets import SPLITS, is_image_file, list_images
from cyclegan.errors import CycleGANError, first_line
from cyclegan.models.checkpoints import load_generator

DEFAULT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan"
PIX2PIX_BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix"  # the reference's pix2pix files
BASE_URL_ENV = "CYCLEGAN_BASE_URL"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before giving up
DATASET_DEADLINE = 3600.0  # seconds for a whole dataset download, however the server trickles
MODEL_DEADLINE = 600.0
MAX_EXTRACT_BYTES = 20 * 2**30  # the largest dataset unpacks to a few GiB; more is a zip bomb
MAX_ENTRIES = 200_000
_CHUNK = 256 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

DATASET_INFO = {
    "apple2orange": "apples <-> oranges (ImageNet)",
    "summer2winter_yosemite": "Yosemite in summer <-> in winter (Flickr)",
    "horse2zebra": "horses <-> zebras (ImageNet)",
    "monet2photo": "Monet paintings <-> landscape photos",
    "cezanne2photo": "Cezanne paintings <-> landscape photos",
    "ukiyoe2photo": "Ukiyo-e prints <-> landscape photos",
    "vangogh2photo": "Van Gogh paintings <-> landscape photos",
    "maps": "aerial photos <-> Google Maps tiles",
    "facades": "building facades: photos <-> label maps (CMP Facades)",
    "iphone2dslr_flower": "flower photos: iPhone <-> DSLR with shallow depth of field (Flickr)",
    "ae_photos": "a few test photos to try the style_* models on",
    "mini": "a tiny dataset for smoke tests",
}
DATASETS = tuple(DATASET_INFO)
_FREE_LAYOUT = ("ae_photos", "mini")  # not pinned to the four splits: any folder of images will do

MODEL_INFO = {
    "horse2zebra": "horse -> zebra",
    "zebra2horse": "zebra -> horse",
    "monet2photo": "Monet painting -> photo",
    "style_monet": "photo -> Monet painting",
    "style_cezanne": "photo -> Cezanne painting",
    "style_ukiyoe": "photo -> Ukiyo-e print",
    "style_vangogh": "photo -> Van Gogh painting",
    "apple2orange": "apple -> orange",
    "orange2apple": "orange -> apple",
    "summer2winter_yosemite": "summer -> winter (Yosemite)",
    "winter2summer_yosemite": "winter -> summer (Yosemite)",
    "sat2map": "aerial photo -> map",
    "map2sat": "map -> aerial photo",
    "cityscapes_photo2label": "street photo -> label map (Cityscapes)",
    "cityscapes_label2photo": "label map -> street photo (Cityscapes)",
    "facades_photo2label": "facade photo -> label map",
    "facades_label2photo": "facade label map -> photo",
    "iphone2dslr_flower": "iPhone flower photo -> DSLR look",
}
MODELS = tuple(MODEL_INFO)

# The reference's pix2pix datasets (A left, B right) and released generators (U-Nets with batch norm), as its
# download_pix2pix_dataset.sh and download_pix2pix_model.sh name them.
PAIRED_DATASET_INFO = {
    "facades": "facade photos (A) | label maps (B), CMP Facades",
    "maps": "aerial photos (A) | Google Maps tiles (B)",
    "edges2shoes": "edge maps (A) | shoe photos (B), UT Zappos50K; train/ and val/ only",
    "edges2handbags": "edge maps (A) | handbag photos (B); train/ and val/ only",
    "night2day": "night (A) | day (B) photos of the same outdoor scenes",
}
PAIRED_DATASETS = tuple(PAIRED_DATASET_INFO)
PAIRED_MODEL_INFO = {
    "edges2shoes": "edges -> shoe photo",
    "sat2map": "aerial photo -> map",
    "map2sat": "map -> aerial photo (trained --direction BtoA on maps)",
    "facades_label2photo": "facade label map -> photo (trained --direction BtoA on facades)",
    "day2night": "day -> night (trained --direction BtoA on night2day)",
}
PAIRED_MODELS = tuple(PAIRED_MODEL_INFO)

CITYSCAPES_HELP = """\
Cityscapes is not served: its license allows downloads only from cityscapes-dataset.com. To train on it:
  1. register at https://www.cityscapes-dataset.com and download leftImg8bit_trainvaltest.zip (photos)
     and gtFine_trainvaltest.zip (label maps), and unzip both;
  2. arrange DATASETS/cityscapes/ as the reference's datasets/prepare_cityscapes_dataset.py does:
     trainA/ the photos of leftImg8bit/train, trainB/ the *_gtFine_color.png maps of gtFine/train,
     testA/ and testB/ the same from val/, every image resized to 256x256;
  3. run `cyclegan data check DATASETS/cityscapes`."""


def cityscapes_message(root: Path) -> str:
    """The one-line form of CITYSCAPES_HELP, for the error."""
    return (
        "cityscapes cannot be downloaded (its license allows downloads only from cityscapes-dataset.com):"
        " register there, get leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, and arrange them as"
        f" {Path(root) / 'cityscapes'}/trainA (photos), trainB (gtFine color label maps), testA and testB"
        " (the same from val), as the reference's prepare_cityscapes_dataset.py does;"
        " `cyclegan download --list` explains it step by step"
    )


def resolve_base_url(explicit: str | None = None, default: str = DEFAULT_BASE_URL) -> str:
    """``--base_url``, else $CYCLEGAN_BASE_URL (a mirror, or file:// for a local copy), else the reference's
    ``default`` site. A mirror serves CycleGAN's and pix2pix's files side by side (``.zip`` and ``.tar.gz``
    datasets, ``pretrained_models/`` and ``models-pytorch/`` generators)."""
    url = explicit or os.environ.get(BASE_URL_ENV) or default
    problem = _url_problem(url)
    if problem:
        raise CycleGANError(f"the base URL {url!r} {problem}")
    return url.rstrip("/")


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot take ``/datasets/NAME.zip`` appended and be fetched, checked before connecting."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as err:
        return f"is malformed ({err})"
    if parts.scheme not in ("http", "https", "file"):
        return "must start with http://, https:// or file://"
    if re.search(r"[\x00-\x20\x7f]", url):
        return "contains spaces or control characters (write a space as %20)"
    if parts.query or parts.fragment:
        return "must not have a query (?) or a fragment (#): file names are appended to it"
    if parts.scheme == "file":
        return None
    if not parts.hostname:
        return "has no host name"
    if not parts.path.isascii():
        return "has non-ASCII characters in its path (percent-encode them)"
    try:
        parts.hostname.encode("idna")
    except UnicodeError as err:
        return f"has an invalid host name ({err})"
    return None


def dataset_url(name: str, base_url: str | None = None, paired: bool = False) -> str:
    if paired:
        return f"{resolve_base_url(base_url, PIX2PIX_BASE_URL)}/datasets/{name}.tar.gz"
    return f"{resolve_base_url(base_url)}/datasets/{name}.zip"


def model_url(name: str, base_url: str | None = None, paired: bool = False) -> str:
    if paired:
        return f"{resolve_base_url(base_url, PIX2PIX_BASE_URL)}/models-pytorch/{name}.pth"
    return f"{resolve_base_url(base_url)}/pretrained_models/{name}.pth"


def _is_paired(name: str, paired: bool, names: tuple[str, ...], paired_names: tuple[str, ...]) -> bool:
    """``--paired``, or a name only pix2pix has."""
    return paired or (name in paired_names and name not in names)


def list_available(base_url: str | None = None) -> str:
    """What ``cyclegan download --list`` prints."""
    base = resolve_base_url(base_url)
    width = max(map(len, DATASETS + MODELS))
    lines = [
        f"Datasets (cyclegan download dataset NAME: {base}/datasets/NAME.zip, unpacked to datasets/NAME):"
    ]
    lines += [f"  {name.ljust(width)}  {info}" for name, info in DATASET_INFO.items()]
    lines += [f"  {'cityscapes'.ljust(width)}  street photos <-> label maps; prepared by hand:"]
    lines += [f"    {line}" for line in CITYSCAPES_HELP.splitlines()]
    lines += [
        "",
        f"Pretrained generators (cyclegan download model NAME: {base}/pretrained_models/NAME.pth,"
        " saved as checkpoints/pretrained/NAME.pth):",
    ]
    lines += [f"  {name.ljust(width)}  {info}" for name, info in MODEL_INFO.items()]
    paired = resolve_base_url(base_url, PIX2PIX_BASE_URL)
    lines += [
        "",
        f"Paired datasets for pix2pix (cyclegan download dataset NAME --paired:"
        f" {paired}/datasets/NAME.tar.gz, A|B side by side in train/, val/, test/; --paired is implied for"
        " names only pix2pix has):",
    ]
    lines += [f"  {name.ljust(width)}  {info}" for name, info in PAIRED_DATASET_INFO.items()]
    lines += [
        "",
        f"pix2pix generators (cyclegan download model NAME --paired: {paired}/models-pytorch/NAME.pth):",
    ]
    lines += [f"  {name.ljust(width)}  {info}" for name, info in PAIRED_MODEL_INFO.items()]
    return "\n".join(lines)


def download_dataset(
    name: str,
    root: Path = Path("datasets"),
    *,
    base_url: str | None = None,
    force: bool = False,
    paired: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DATASET_DEADLINE,
    max_bytes: int = MAX_EXTRACT_BYTES,
) -> Path:
    """Download dataset ``name`` and unpack it to ``root/name`` (trainA/, trainB/, testA/, testB/; with
    ``paired``, the pix2pix version: side-by-side A|B images in train/, val/, test/).

    ``timeout`` bounds each wait for the server, ``deadline`` the whole download (seconds).
    """
    root = Path(root)
    if name == "cityscapes":
        raise CycleGANError(cityscapes_message(root))
    paired = _is_paired(name, paired, DATASETS, PAIRED_DATASETS)
    if paired:
        _check_name(name, PAIRED_DATASETS, "paired dataset")
    else:
        extra = f" (and cityscapes, prepared by hand); with --paired: {', '.join(PAIRED_DATASETS)}"
        _check_name(name, DATASETS, "dataset", extra)
    limits = _limits(timeout, deadline)
    dest = root / name
    url = dataset_url(name, base_url, paired)
    _refuse_symlink(dest, force)
    if dest.exists() and not force:
        problem = _layout_problem(dest, name, paired)
        if problem:
            raise CycleGANError(
                f"{dest} exists but {problem}; use --force to download it again and replace it"
            )
        _note(f"{name} is already present at {dest} ({_summary(dest)}); use --force to download it again")
        return dest
    suffix = "tar.gz" if paired else "zip"
    part = root / f".{name}.{suffix}.part"
    how = "untar" if paired else "unzip"
    hint = f"on a machine with internet access fetch {url} and {how} it into {root}/, which makes {dest}/"
    _fetch(url, part, hint, limits, progress)
    with _removed_on_failure(part):
        _install_dataset(part, url, dest, name, max_bytes, progress, paired)
    part.unlink()
    _note(f"{name} ready at {dest} ({_summary(dest)})")
    return dest


def download_model(
    name: str,
    root: Path = Path("checkpoints/pretrained"),
    *,
    base_url: str | None = None,
    force: bool = False,
    paired: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = MODEL_DEADLINE,
) -> Path:
    """Download pretrained generator ``name`` to ``root/name.pth``, a reference-format state dict: a
    CycleGAN ResNet, or with ``paired`` a released pix2pix U-Net.

    ``timeout`` bounds each wait for the server, ``deadline`` the whole download (seconds).
    """
    paired = _is_paired(name, paired, MODELS, PAIRED_MODELS)
    if paired:
        _check_name(name, PAIRED_MODELS, "pix2pix model")
    else:
        _check_name(name, MODELS, "pretrained model", f"; with --paired: {', '.join(PAIRED_MODELS)}")
    limits = _limits(timeout, deadline)
    root = Path(root)
    dest = root / f"{name}.pth"
    url = model_url(name, base_url, paired)
    _refuse_symlink(dest, force)
    if dest.exists() and not force:
        try:
            _verify_generator(dest, paired)
        except CycleGANError as err:
            raise CycleGANError(
                f"{dest} exists but is not a usable generator ({err}); use --force to download it again"
            ) from None
        _note(f"{name} is already present at {dest}; use --force to download it again")
        return dest
    part = root / f".{name}.pth.part"
    hint = f"on a machine with internet access fetch {url} and save it as {dest}"
    _fetch(url, part, hint, limits, progress)
    with _removed_on_failure(part):
        try:
            model_config = _verify_generator(part, paired)
        except CycleGANError as err:
            what = "pix2pix" if paired else "CycleGAN"
            raise CycleGANError(f"{url} is not a {what} generator, nothing was saved: {err}") from None
        _move_into_place(part, dest)
    _note(f"{name} ready at {dest} ({model_config.netG}, ngf {model_config.ngf})")
    return dest


def _verify_generator(path: Path, paired: bool) -> NetConfig:
    """Load ``path`` into its network; a failure is one line about "it" (checkpoints names LFS pointers and
    never suggests unsafe loading). The reference released pix2pix's generators as U-Nets and CycleGAN's as
    ResNets, so the kind tells the two versions of a name apart."""
    try:
        net = load_generator(path)[1]
    except CycleGANError as err:
        raise CycleGANError(first_line(err).replace(str(path), "it")) from None
    if net.netG.startswith("unet") != paired:
        other = "CycleGAN" if paired else "pix2pix"
        raise CycleGANError(
            f"it is a {net.netG} generator, {other}'s release of this name, not the one asked for"
        )
    return net


@dataclasses.dataclass(frozen=True)
class _Limits:
    """Seconds to wait for each read (``timeout``) and for the whole download (``deadline``)."""

    timeout: float
    deadline: float
    start: float = dataclasses.field(default_factory=time.monotonic)

    def passed(self) -> bool:
        return time.monotonic() - self.start > self.deadline


def _limits(timeout: float, deadline: float) -> _Limits:
    for flag, value in (("timeout", timeout), ("deadline", deadline)):
        if not value > 0:
            raise CycleGANError(f"the {flag} must be a positive number of seconds, got {value:g}")
    return _Limits(timeout, deadline)


def _refuse_symlink(dest: Path, force: bool) -> None:
    """A symlink at ``dest`` is not followed; --force replaces the link itself, never what it points to."""
    if dest.is_symlink() and not force:
        raise CycleGANError(
            f"{dest} is a symbolic link, which downloads do not follow; remove it, or use --force to replace"
            " the link (what it points to is left alone)"
        )


@contextlib.contextmanager
def _removed_on_failure(part: Path) -> Iterator[None]:
    """Any failure once all bytes arrived means they are wrong (or unusable): the next run starts clean."""
    try:
        yield
    except Exception:
        part.unlink(missing_ok=True)
        raise


def _move_into_place(source: Path, dest: Path) -> None:
    """Rename ``source`` to ``dest`` (a link at ``dest`` is replaced, not followed)."""
    try:
        os.replace(source, dest)
    except OSError as err:
        raise CycleGANError(f"cannot put the download in place at {dest}: {_describe(err)}") from None


def _check_name(name: str, choices: tuple[str, ...], kind: str, extra: str = "") -> None:
    if name not in choices:
        raise CycleGANError(f"unknown {kind} {name!r}; available: {', '.join(choices)}{extra}")


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def _describe(err: Exception) -> str:
    return str(err) or type(err).__name__


# Downloading


def _fetch(url: str, part: Path, hint: str, limits: _Limits, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming the bytes an earlier broken download left there.

    ``hint`` says how to place the file by hand, for when the server cannot be reached.
    """
    offset = _resume_offset(part)
    headers = {"User-Agent": "cyclegan", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=limits.timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # asked for bytes past the end: the part may already be complete
            if _range_total(err.headers.get("Content-Range")) == offset:
                return
            part.unlink()  # not the file the server has now: start clean
            _fetch(url, part, hint, limits, progress)
            return
        detail = " (not on the server: check the name and the base URL)" if err.code == 404 else ""
        raise CycleGANError(f"{url} answered HTTP {err.code} {err.reason}{detail}") from None
    except (ValueError, InvalidURL) as err:  # what urllib and http.client say about a malformed URL
        raise CycleGANError(f"cannot download {url!r}, the URL is malformed ({_describe(err)})") from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        raise CycleGANError(_connect_message(url, err, hint, limits.timeout)) from None
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        length = response.headers.get("Content-Length")
        if resumed:
            total = _range_total(response.headers.get("Content-Range"))
        else:
            if offset:  # the server ignored the Range header and sends everything again
                part.unlink()
            offset, total = 0, int(length) if length and length.isdigit() else None
        _note(f"{'Resuming' if resumed else 'Downloading'} {url}")
        _receive(response, url, part, offset, total, limits, progress)


def _resume_offset(part: Path) -> int:
    """How many bytes an earlier run left in ``part``; a symlink planted there is removed, never followed."""
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise CycleGANError(f"cannot use {part.parent}: {_describe(err)}") from None
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if not stat.S_ISLNK(info.st_mode):
        raise CycleGANError(f"{part} is in the way (it is not a file); remove it and run again")
    part.unlink()
    _note(f"removed the symbolic link {part} (downloads never write through one)")
    return 0


def _open_part(part: Path, append: bool) -> io.BufferedWriter:
    """Open ``part`` to append to it, or create it afresh; fails rather than follow a symlink there."""
    part.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | _NOFOLLOW | (os.O_APPEND if append else os.O_CREAT | os.O_EXCL)
    return os.fdopen(os.open(part, flags, 0o644), "ab")


def _range_total(content_range: str | None) -> int | None:
    """The full size in ``Content-Range: bytes 0-99/1234`` or ``bytes */1234``."""
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _connect_message(url: str, err: Exception, hint: str, timeout: float) -> str:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s waiting for {_host(url)}; try again later, or {hint}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot reach the server {_host(url)} ({reason}); {hint}"
    return f"{_host(url)} closed the connection without answering ({_describe(err)}); {hint}"


def _receive(
    response: io.BufferedIOBase,
    url: str,
    part: Path,
    offset: int,
    total: int | None,
    limits: _Limits,
    progress: bool,
) -> None:
    """Append the body to ``part`` behind a progress bar.

    What arrived before a network problem or the deadline stays there, a valid prefix for a resume; a
    failed write (a full disk) leaves an unknown tail, so the part is removed.
    """
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not progress,
    )
    try:
        with bar, _open_part(part, append=offset > 0) as f:
            size = _copy(response, f, bar, url, offset, total, limits)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:  # only writing gets here: _copy turns network errors into CycleGANError
        part.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            needs = f" ({_size(total)})" if total is not None else ""
            raise CycleGANError(
                f"the disk is full: no room in {part.parent} for {url}{needs}; free some and run again"
            ) from None
        raise CycleGANError(f"cannot write {part}: {_describe(err)}; run the same command again") from None
    if total is not None and size < total:
        raise CycleGANError(_broken_message(url, size, total, None))


def _copy(
    response: io.BufferedIOBase,
    f: io.BufferedWriter,
    bar: tqdm,
    url: str,
    size: int,
    total: int | None,
    limits: _Limits,
) -> int:
    """Write the body to ``f`` as it arrives, so a stall loses nothing; return the size of the file."""
    while not limits.passed():
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError:
            raise CycleGANError(
                f"timed out after {limits.timeout:g} s: {_host(url)} stopped sending {url}"
                f" after {_size(size)}; run the same command again to resume"
            ) from None
        except (OSError, HTTPException) as err:
            raise CycleGANError(_broken_message(url, size, total, err)) from None
        if not chunk:
            return size
        f.write(chunk)
        size += len(chunk)
        bar.update(len(chunk))
    of_total = f" of {_size(total)}" if total is not None else ""
    raise CycleGANError(
        f"gave up on {url} at the deadline of {limits.deadline:g} s (--deadline): {_size(size)}{of_total}"
        " arrived; run the same command again to resume"
    )


def _broken_message(url: str, size: int, total: int | None, err: Exception | None) -> str:
    of_total = f" of {_size(total)}" if total is not None else ""
    why = f" ({_describe(err)})" if err else ""
    return (
        f"the connection to {_host(url)} broke after {_size(size)}{of_total} of {url}{why};"
        " run the same command again to resume"
    )


# Unpacking datasets


def _install_dataset(
    part: Path, url: str, dest: Path, name: str, max_bytes: int, progress: bool, paired: bool
) -> None:
    """Check and extract the archive in a hidden folder beside ``dest``, then rename it into place."""
    work = dest.parent / f".{name}.extracting"
    _fresh_folder(work)
    try:
        if paired:
            unpack_tar(
                part, work / "unpacked", url, max_bytes=max_bytes, max_entries=MAX_ENTRIES, progress=progress
            )
        else:
            _unpack_zip(part, work / "unpacked", url, name, max_bytes, progress)
        top = work / "unpacked" / name
        if not top.is_dir():  # tolerate an archive without the usual top folder NAME/
            top = work / "unpacked"
        problem = _layout_problem(top, name, paired)
        if problem:
            raise CycleGANError(f"{url} is not the {name} dataset: the archive {problem}")
        if dest.exists() or dest.is_symlink():  # --force: the old copy goes only once the new one is ready
            _move_into_place(dest, work / "replaced")
        _move_into_place(top, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # does not follow symlinks, nor delete what they point to


def _unpack_zip(part: Path, target: Path, url: str, name: str, max_bytes: int, progress: bool) -> None:
    try:
        archive = zipfile.ZipFile(part)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CycleGANError(
            f"{url} is not a valid zip archive, truncated or corrupt ({err}); run again to refetch it"
        ) from None
    with archive:
        total = _check_members(archive, url, max_bytes)
        free = shutil.disk_usage(target.parent).free
        if total > free:
            raise CycleGANError(
                f"not enough space to unpack {name}: it needs {_size(total)}, {_size(free)} are free"
            )
        _extract(archive, target, url, total, progress)


def _fresh_folder(work: Path) -> None:
    """Create the empty folder ``work``, removing what a killed run left there; a symlink is not followed."""
    try:
        if work.is_symlink() or work.is_file():
            work.unlink()
        elif work.exists():
            shutil.rmtree(work)
        work.mkdir()
    except OSError as err:
        raise CycleGANError(f"cannot prepare {work} to unpack into: {_describe(err)}") from None


_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _check_members(archive: zipfile.ZipFile, url: str, max_bytes: int) -> int:
    """Refuse what could write outside the target folder or fill the disk; return the unpacked size."""
    members = archive.infolist()
    if len(members) > MAX_ENTRIES:
        raise CycleGANError(f"refusing {url}: {len(members)} entries, more than the limit of {MAX_ENTRIES}")
    for member in members:
        name = member.filename.replace("\\", "/")
        path = PurePosixPath(name)
        if path.is_absolute() or re.match(r"[A-Za-z]:", name):
            problem = "has an absolute path"
        elif ".." in path.parts:
            problem = "points outside the target folder (..)"
        elif stat.S_ISLNK(member.external_attr >> 16):
            problem = "is a symbolic link"
        elif member.flag_bits & 0x1:
            problem = "is encrypted"
        elif member.compress_type not in _COMPRESSIONS:
            problem = f"uses compression method {member.compress_type}, which zipfile cannot unpack"
        else:
            continue
        raise CycleGANError(f"refusing {url}: its entry {member.filename!r} {problem}")
    total = sum(member.file_size for member in members)
    if total > max_bytes:
        raise CycleGANError(
            f"refusing {url}: it unpacks to {_size(total)}, more than the limit of {_size(max_bytes)}"
        )
    return total


def _extract(archive: zipfile.ZipFile, target: Path, url: str, total: int, progress: bool) -> None:
    """Extract every entry (zipfile checks each CRC as it goes), turning failures into one-line errors."""
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="unzip", disable=not progress)
    with bar:
        for member in archive.infolist():
            try:
                archive.extract(member, target)
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError) as err:
                raise CycleGANError(
                    f"{url} is corrupt ({member.filename}: {err}); run the same command to download it afresh"
                ) from None
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise CycleGANError(
                        f"the disk is full: unpacking {url} needs {_size(total)} in {target.parent.parent}"
                    ) from None
                raise CycleGANError(f"cannot extract {member.filename} from {url}: {err}") from None
            bar.update(member.file_size)


def _image_counts(folder: Path) -> dict[str, int]:
    """Images per visible subfolder (recursively), and loose ones at the top under ``.``."""
    counts = {
        child.name: len(list_images(child))
        for child in sorted(folder.iterdir(), key=_split_order)
        if child.is_dir() and not child.name.startswith(".")
    }
    counts["."] = sum(1 for p in folder.iterdir() if p.is_file() and is_image_file(p) and p.name[0] != ".")
    return {key: n for key, n in counts.items() if n}


def _split_order(path: Path) -> tuple[int, str]:
    """trainA, trainB, testA, testB first, in that order, then the rest by name."""
    return (SPLITS.index(path.name) if path.name in SPLITS else len(SPLITS), path.name)


def _layout_problem(folder: Path, name: str, paired: bool = False) -> str | None:
    """Why ``folder`` is not a usable copy of dataset ``name`` (of its pix2pix version if ``paired``)."""
    if not folder.is_dir():
        return "is not a folder"
    counts = _image_counts(folder)
    if paired:
        return None if "train" in counts else "has no images in train/ (the paired version's layout)"
    if name in _FREE_LAYOUT:
        return None if counts else "holds no images"
    missing = [split for split in SPLITS if split not in counts]
    return f"has no images in {', '.join(missing)}" if missing else None


def _summary(folder: Path) -> str:
    counts = _image_counts(folder)
    return ", ".join(f"{'top level' if key == '.' else key} {n}" for key, n in counts.items()) + " images"
