"""Datasets and pretrained generators from the reference project's server: download, verify, put in place.

Nothing that looks complete appears before it is verified. The bytes go to a hidden ``.NAME.*.part`` file
beside the target, which a broken connection leaves for the next run to resume (HTTP Range). A dataset is
checked entry by entry (no absolute paths, no ``..``, no symlinks, a size limit) before it is extracted
into a hidden folder, every entry's CRC is checked while extracting, and only a complete layout is renamed
to ``ROOT/NAME``. A generator is loaded into its network before it is renamed to ``ROOT/NAME.pth``.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cyclegan.checkpoints import load_generator
from cyclegan.data import list_images
from cyclegan.errors import CycleGANError
from cyclegan.images import IMAGE_EXTENSIONS

DEFAULT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan"
BASE_URL_ENV = "CYCLEGAN_BASE_URL"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte before giving up
MAX_EXTRACT_BYTES = 20 * 2**30  # the largest dataset unpacks to a few GiB; more is a zip bomb
MAX_ENTRIES = 200_000
_CHUNK = 256 * 1024

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
_SPLITS = ("trainA", "trainB", "testA", "testB")

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


def resolve_base_url(explicit: str | None = None) -> str:
    """``--base_url``, else $CYCLEGAN_BASE_URL (a mirror, or file:// for a local copy), else the reference."""
    url = explicit or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise CycleGANError(f"the base URL must start with http://, https:// or file://, got {url!r}")
    return url.rstrip("/")


def dataset_url(name: str, base_url: str | None = None) -> str:
    return f"{resolve_base_url(base_url)}/datasets/{name}.zip"


def model_url(name: str, base_url: str | None = None) -> str:
    return f"{resolve_base_url(base_url)}/pretrained_models/{name}.pth"


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
    return "\n".join(lines)


def download_dataset(
    name: str,
    root: Path = Path("datasets"),
    *,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = MAX_EXTRACT_BYTES,
) -> Path:
    """Download dataset ``name`` and unpack it to ``root/name`` (trainA/, trainB/, testA/, testB/)."""
    root = Path(root)
    if name == "cityscapes":
        raise CycleGANError(cityscapes_message(root))
    _check_name(name, DATASETS, "dataset", " (and cityscapes, prepared by hand)")
    dest = root / name
    url = dataset_url(name, base_url)
    if dest.exists() and not force:
        problem = _layout_problem(dest, name)
        if problem:
            raise CycleGANError(
                f"{dest} exists but {problem}; use --force to download it again and replace it"
            )
        _note(f"{name} is already present at {dest} ({_summary(dest)}); use --force to download it again")
        return dest
    part = root / f".{name}.zip.part"
    hint = f"on a machine with internet access fetch {url} and unzip it into {root}/, which makes {dest}/"
    _fetch(url, part, hint, timeout, progress)
    try:
        _install_dataset(part, url, dest, name, max_bytes, progress)
    except CycleGANError:
        part.unlink(missing_ok=True)
        raise
    part.unlink()
    _note(f"{name} ready at {dest} ({_summary(dest)})")
    return dest


def download_model(
    name: str,
    root: Path = Path("checkpoints/pretrained"),
    *,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download pretrained generator ``name`` to ``root/name.pth``, a reference-format state dict."""
    _check_name(name, MODELS, "pretrained model")
    root = Path(root)
    dest = root / f"{name}.pth"
    url = model_url(name, base_url)
    if dest.exists() and not force:
        try:
            load_generator(dest)
        except CycleGANError as err:
            raise CycleGANError(
                f"{dest} exists but is not a usable generator ({err}); use --force to download it again"
            ) from None
        _note(f"{name} is already present at {dest}; use --force to download it again")
        return dest
    part = root / f".{name}.pth.part"
    _fetch(
        url, part, f"on a machine with internet access fetch {url} and save it as {dest}", timeout, progress
    )
    try:
        _, model_config = load_generator(part)
    except CycleGANError as err:
        part.unlink(missing_ok=True)
        raise CycleGANError(f"{url} is not a CycleGAN generator, nothing was saved: {err}") from None
    os.replace(part, dest)
    _note(f"{name} ready at {dest} ({model_config.netG}, ngf {model_config.ngf})")
    return dest


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


def _fetch(url: str, part: Path, hint: str, timeout: float, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming the bytes an earlier broken download left there.

    ``hint`` says how to place the file by hand, for when the server cannot be reached.
    """
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "cyclegan", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # asked for bytes past the end: the part may already be complete
            if _range_total(err.headers.get("Content-Range")) == offset:
                return
            part.unlink()  # not the file the server has now: start clean
            _fetch(url, part, hint, timeout, progress)
            return
        detail = " (not on the server: check the name and the base URL)" if err.code == 404 else ""
        raise CycleGANError(f"{url} answered HTTP {err.code} {err.reason}{detail}") from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        raise CycleGANError(_connect_message(url, err, hint, timeout)) from None
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        length = response.headers.get("Content-Length")
        if resumed:
            total = _range_total(response.headers.get("Content-Range"))
        else:
            offset, total = 0, int(length) if length and length.isdigit() else None
        _note(f"{'Resuming' if resumed else 'Downloading'} {url}")
        _receive(response, url, part, offset, total, timeout, progress)


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
    timeout: float,
    progress: bool,
) -> None:
    """Append the body to ``part`` behind a progress bar; what arrived stays there for a resume."""
    size = offset
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
        part.parent.mkdir(parents=True, exist_ok=True)
        with bar, part.open("ab" if offset else "wb") as f:
            while chunk := response.read1(_CHUNK):  # what has arrived, so a timeout loses nothing
                f.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except TimeoutError:
        raise CycleGANError(
            f"timed out after {timeout:g} s: {_host(url)} stopped sending {url} after {_size(size)};"
            " run the same command again to resume"
        ) from None
    except (ConnectionError, HTTPException) as err:
        raise CycleGANError(_broken_message(url, size, total, err)) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            part.unlink(missing_ok=True)
            raise CycleGANError(
                f"the disk is full: {url} needs {_size(total or size)} in {part.parent}; free some and retry"
            ) from None
        raise CycleGANError(f"downloading {url} failed after {_size(size)}: {_describe(err)}") from None
    if total is not None and size < total:
        raise CycleGANError(_broken_message(url, size, total, None))


def _broken_message(url: str, size: int, total: int | None, err: Exception | None) -> str:
    of_total = f" of {_size(total)}" if total is not None else ""
    why = f" ({_describe(err)})" if err else ""
    return (
        f"the connection to {_host(url)} broke after {_size(size)}{of_total} of {url}{why};"
        " run the same command again to resume"
    )


# Unpacking datasets


def _install_dataset(part: Path, url: str, dest: Path, name: str, max_bytes: int, progress: bool) -> None:
    """Check and extract the archive in a hidden folder beside ``dest``, then rename it into place."""
    work = dest.parent / f".{name}.extracting"
    shutil.rmtree(work, ignore_errors=True)  # left by a run that was killed while extracting
    try:
        try:
            archive = zipfile.ZipFile(part)
        except (zipfile.BadZipFile, OSError) as err:
            raise CycleGANError(
                f"{url} is not a valid zip archive, truncated or corrupt ({err}); run again to refetch it"
            ) from None
        with archive:
            total = _check_members(archive, url, max_bytes)
            free = shutil.disk_usage(dest.parent).free
            if total > free:
                raise CycleGANError(
                    f"not enough space in {dest.parent}: {name} unpacks to {_size(total)}, {_size(free)} free"
                )
            _extract(archive, work / "unpacked", url, total, progress)
        top = work / "unpacked" / name
        if not top.is_dir():  # tolerate an archive without the usual top folder NAME/
            top = work / "unpacked"
        problem = _layout_problem(top, name)
        if problem:
            raise CycleGANError(f"{url} is not the {name} dataset: the archive {problem}")
        if dest.exists() or dest.is_symlink():  # --force: the old copy goes only once the new one is ready
            dest.rename(work / "replaced")
        top.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
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
    counts["."] = sum(
        1
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != "."
    )
    return {key: n for key, n in counts.items() if n}


def _split_order(path: Path) -> tuple[int, str]:
    """trainA, trainB, testA, testB first, in that order, then the rest by name."""
    return (_SPLITS.index(path.name) if path.name in _SPLITS else len(_SPLITS), path.name)


def _layout_problem(folder: Path, name: str) -> str | None:
    """Why ``folder`` is not a usable copy of dataset ``name``, or None."""
    if not folder.is_dir():
        return "is not a folder"
    counts = _image_counts(folder)
    if name in _FREE_LAYOUT:
        return None if counts else "holds no images"
    missing = [split for split in _SPLITS if split not in counts]
    return f"has no images in {', '.join(missing)}" if missing else None


def _summary(folder: Path) -> str:
    counts = _image_counts(folder)
    return ", ".join(f"{'top level' if key == '.' else key} {n}" for key, n in counts.items()) + " images"
