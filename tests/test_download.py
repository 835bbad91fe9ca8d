"""Downloads against a local HTTP server on 127.0.0.1 that can serve, refuse, drop, stall and trickle."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import re
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from cyclegan import cli
from cyclegan.data import download
from cyclegan.data.download import (
    DATASETS,
    DEFAULT_BASE_URL,
    MODELS,
    download_dataset,
    download_model,
    list_available,
    resolve_base_url,
)
from cyclegan.errors import CycleGANError
from cyclegan.models.checkpoints import load_generator
from cyclegan.networks.patchgan import NLayerDiscriminator
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.training.loop import train
from cyclegan.translation.bulk import translate_files

SPLITS = ("trainA", "trainB", "testA", "testB")
Route = Callable[[BaseHTTPRequestHandler], None]


class LocalServer:
    """A loopback HTTP server whose answer per path is a route set by the test."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers)))
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self, path: str, data: bytes, ranges: bool = True) -> None:
        """Serve ``data``, honouring ``Range: bytes=N-`` unless ``ranges`` is off."""

        def route(h: BaseHTTPRequestHandler) -> None:
            match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "")) if ranges else None
            start = int(match.group(1)) if match else 0
            if match and start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206 if match else 200)
            if match:
                h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            h.send_header("Content-Length", str(len(data) - start))
            h.end_headers()
            h.wfile.write(data[start:])

        self.routes[path] = route

    def drop(self, path: str, data: bytes, after: int) -> None:
        """Announce all of ``data`` but close the connection after ``after`` bytes."""

        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:after])
            h.close_connection = True

        self.routes[path] = route

    def stall(self, path: str, head: bytes | None = None) -> None:
        """Say nothing (``head`` None), or send headers and ``head`` of a longer body, then wait."""

        def route(h: BaseHTTPRequestHandler) -> None:
            if head is not None:
                h.send_response(200)
                h.send_header("Content-Length", str(len(head) + 1000))
                h.end_headers()
                h.wfile.write(head)
            self.release.wait(10)

        self.routes[path] = route

    def trickle(self, path: str, data: bytes) -> None:
        """Announce all of ``data``, then send it a byte every 10 ms: never idle, never done in a test."""

        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for byte in data:
                if self.release.wait(0.01):
                    return
                try:
                    h.wfile.write(bytes([byte]))
                except OSError:  # the client gave up
                    return

        self.routes[path] = route


@pytest.fixture(autouse=True)
def _no_proxy_or_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", download.BASE_URL_ENV):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    s = LocalServer()
    yield s
    s.close()


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


def _dataset_zip(
    name: str = "horse2zebra",
    splits: tuple[str, ...] = SPLITS,
    extra: tuple[zipfile.ZipInfo, bytes] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for split in splits:
            for i in range(2):
                archive.writestr(f"{name}/{split}/{i}.png", _png())
        if extra is not None:
            archive.writestr(*extra)
    return buf.getvalue()


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _state_bytes(net: torch.nn.Module) -> bytes:
    return _torch_bytes(net.state_dict())


def _generator_bytes() -> bytes:
    return _state_bytes(ResnetGenerator(3, 3, 4, "instance", False, 9))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _get(kind: str, root: Path, base: str, **kwargs: object) -> Path:
    """Download horse2zebra (dataset or model, served as by ``_serve``) into ``root``."""
    fetch = download_dataset if kind == "dataset" else download_model
    return fetch("horse2zebra", root, base_url=base, progress=False, **kwargs)


def _serve(server: LocalServer, kind: str) -> str:
    """Serve a valid horse2zebra of ``kind``; return its name in the root."""
    if kind == "dataset":
        server.serve("/datasets/horse2zebra.zip", _dataset_zip())
        return "horse2zebra"
    server.serve("/pretrained_models/horse2zebra.pth", _generator_bytes())
    return "horse2zebra.pth"


@contextlib.contextmanager
def _one_line_error(match: str) -> Iterator[None]:
    """Expect a CycleGANError matching ``match``: one line, never advice to unpickle (weights_only)."""
    with pytest.raises(CycleGANError, match=match) as info:
        yield
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Datasets


def test_dataset_downloads_verifies_and_lands_in_place(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.serve("/datasets/horse2zebra.zip", _dataset_zip())
    root = tmp_path / "datasets"
    path = download_dataset("horse2zebra", root, base_url=server.base, progress=False)
    assert path == root / "horse2zebra"
    assert [p.name for p in root.iterdir()] == ["horse2zebra"]  # no .part, no extraction folder
    for split in SPLITS:
        assert sorted(p.name for p in (path / split).iterdir()) == ["0.png", "1.png"]
    assert "horse2zebra ready" in capsys.readouterr().err
    trained = train(
        tiny_config(path, tmp_path / "runs", max_steps=2, load_size=36, crop_size=32), show_progress=False
    )
    assert trained.progress.step == 2

    mtime = path.stat().st_mtime_ns
    assert download_dataset("horse2zebra", root, base_url=server.base, progress=False) == path
    assert "already present" in capsys.readouterr().err
    assert len(server.requests) == 1 and path.stat().st_mtime_ns == mtime

    (path / "trainA" / "mine.png").write_bytes(_png())
    download_dataset("horse2zebra", root, base_url=server.base, progress=False, force=True)
    assert len(server.requests) == 2
    assert not (path / "trainA" / "mine.png").exists()
    assert [p.name for p in root.iterdir()] == ["horse2zebra"]


def test_incomplete_folder_is_not_taken_for_the_dataset(server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / "horse2zebra" / "trainA").mkdir(parents=True)
    with pytest.raises(CycleGANError, match=r"has no images in trainA, trainB, testA, testB; use --force"):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert server.requests == []


def test_free_layout_dataset_needs_only_some_images(server: LocalServer, tmp_path: Path) -> None:
    server.serve("/datasets/ae_photos.zip", _dataset_zip("ae_photos", splits=("testA",)))
    path = download_dataset("ae_photos", tmp_path, base_url=server.base, progress=False)
    assert _files(path) == ["testA", "testA/0.png", "testA/1.png"]


def test_archive_without_the_splits_is_refused(server: LocalServer, tmp_path: Path) -> None:
    server.serve("/datasets/horse2zebra.zip", _dataset_zip(splits=("trainA", "trainB")))
    with pytest.raises(
        CycleGANError, match=r"is not the horse2zebra dataset: the archive has no images in testA"
    ):
        download_dataset("horse2zebra", tmp_path / "d", base_url=server.base, progress=False)
    assert _files(tmp_path / "d") == []


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("horse2zebra/trainA/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../../../evil.txt", "points outside the target folder"),
        ("horse2zebra/../../evil.txt", "points outside the target folder"),
        ("ABSOLUTE", "has an absolute path"),
        ("SYMLINK", "is a symbolic link"),
    ],
)
def test_malicious_archive_is_refused_and_leaves_nothing(
    server: LocalServer, tmp_path: Path, entry: str, message: str
) -> None:
    outside = tmp_path / "outside" / "evil.txt"
    info = {"ABSOLUTE": zipfile.ZipInfo(str(outside)), "SYMLINK": _symlink_entry()}.get(
        entry, zipfile.ZipInfo(entry)
    )
    server.serve("/datasets/horse2zebra.zip", _dataset_zip(extra=(info, b"/etc/passwd")))
    root = tmp_path / "a" / "b" / "datasets"
    with pytest.raises(
        CycleGANError, match=rf"refusing {re.escape(server.base)}/datasets/horse2zebra.zip: .*{message}"
    ):
        download_dataset("horse2zebra", root, base_url=server.base, progress=False)
    assert _files(root) == []
    assert _files(tmp_path) == ["a", "a/b", "a/b/datasets"]


def test_zip_bomb_limit(server: LocalServer, tmp_path: Path) -> None:
    server.serve("/datasets/horse2zebra.zip", _dataset_zip())
    with pytest.raises(CycleGANError, match=r"unpacks to .* more than the limit of 100 B"):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False, max_bytes=100)
    assert _files(tmp_path) == []


def test_truncated_zip_is_refused(server: LocalServer, tmp_path: Path) -> None:
    data = _dataset_zip()
    server.serve("/datasets/horse2zebra.zip", data[: len(data) // 2])
    with pytest.raises(CycleGANError, match="is not a valid zip archive, truncated or corrupt"):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == []


def test_corrupt_entry_is_refused(server: LocalServer, tmp_path: Path) -> None:
    data = bytearray(_dataset_zip(compression=zipfile.ZIP_STORED))
    offset = data.index(b"IDAT")  # inside the first PNG: its CRC no longer matches
    data[offset : offset + 8] = bytes(b ^ 0xFF for b in data[offset : offset + 8])
    server.serve("/datasets/horse2zebra.zip", bytes(data))
    with pytest.raises(
        CycleGANError, match=r"horse2zebra\.zip is corrupt \(horse2zebra/trainA/0\.png: Bad CRC"
    ):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == []


def _patch_first_entry(data: bytes, offset: int, value: int) -> bytes:
    """Set a 2-byte field of the first central directory record (8: flags, 10: compression method)."""
    at = data.index(b"PK\x01\x02") + offset
    return data[:at] + value.to_bytes(2, "little") + data[at + 2 :]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [(8, 0x1, "is encrypted"), (10, 99, "uses compression method 99, which zipfile cannot unpack")],
)
def test_entries_zipfile_cannot_unpack_are_refused(
    server: LocalServer, tmp_path: Path, field: int, value: int, message: str
) -> None:
    server.serve("/datasets/horse2zebra.zip", _patch_first_entry(_dataset_zip(), field, value))
    with _one_line_error(rf"entry 'horse2zebra/trainA/0\.png' {message}$"):
        _get("dataset", tmp_path, server.base)
    assert _files(tmp_path) == []


def test_a_resumed_part_that_does_not_match_is_removed(server: LocalServer, tmp_path: Path) -> None:
    data = _dataset_zip()
    (tmp_path / ".horse2zebra.zip.part").write_bytes(b"\x00" * 100)  # from another version of the file
    server.serve("/datasets/horse2zebra.zip", data)
    with _one_line_error(r"horse2zebra\.zip is corrupt"):
        _get("dataset", tmp_path, server.base)
    assert _files(tmp_path) == []
    _get("dataset", tmp_path, server.base)
    assert "Range" not in server.requests[-1][1]
    assert [p.name for p in tmp_path.iterdir()] == ["horse2zebra"]


def test_404_fails_cleanly(server: LocalServer, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    url = f"{server.base}/datasets/horse2zebra.zip"
    with pytest.raises(CycleGANError, match=rf"{re.escape(url)} answered HTTP 404"):
        download_dataset("horse2zebra", root, base_url=server.base, progress=False)
    assert not root.exists()


@pytest.mark.parametrize("ranges", [True, False])
def test_dropped_connection_leaves_a_part_that_the_next_run_resumes(
    server: LocalServer, tmp_path: Path, ranges: bool
) -> None:
    data = _dataset_zip()
    server.drop("/datasets/horse2zebra.zip", data, after=len(data) // 3)
    with pytest.raises(
        CycleGANError, match=r"connection to 127\.0\.0\.1:\d+ broke after .*run the same command"
    ):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == [".horse2zebra.zip.part"]
    assert (tmp_path / ".horse2zebra.zip.part").stat().st_size == len(data) // 3

    server.serve("/datasets/horse2zebra.zip", data, ranges=ranges)
    download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert server.requests[-1][1].get("Range") == f"bytes={len(data) // 3}-"
    assert [p.name for p in tmp_path.iterdir()] == ["horse2zebra"]


def test_complete_part_left_by_an_interrupted_unzip_is_used(server: LocalServer, tmp_path: Path) -> None:
    data = _dataset_zip()
    (tmp_path / ".horse2zebra.zip.part").write_bytes(data)
    server.serve("/datasets/horse2zebra.zip", data)
    download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["horse2zebra"]


def test_unreachable_server_says_how_to_place_files_by_hand(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(CycleGANError) as info:
        download_dataset("horse2zebra", tmp_path / "d", base_url=base, progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot reach the server {base[7:]}")
    assert f"fetch {base}/datasets/horse2zebra.zip and unzip it into {tmp_path / 'd'}/" in message
    with pytest.raises(
        CycleGANError, match=rf"fetch {base}/pretrained_models/style_monet.pth and save it as"
    ):
        download_model("style_monet", tmp_path / "m", base_url=base, progress=False)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("head", [None, b"PK\x03\x04"])
def test_timeout(server: LocalServer, tmp_path: Path, head: bytes | None) -> None:
    server.stall("/datasets/horse2zebra.zip", head)
    with pytest.raises(CycleGANError, match=r"timed out after 0\.3 s"):
        download_dataset("horse2zebra", tmp_path, base_url=server.base, progress=False, timeout=0.3)
    assert not (tmp_path / "horse2zebra").exists()
    if head is not None:  # what arrived before the stall is kept for a resume
        assert (tmp_path / ".horse2zebra.zip.part").read_bytes() == head


def test_unknown_names_list_what_is_available(tmp_path: Path) -> None:
    with pytest.raises(CycleGANError, match=r"unknown dataset 'nope'; available: apple2orange, .*mini"):
        download_dataset("nope", tmp_path)
    with pytest.raises(CycleGANError, match=r"unknown pretrained model 'nope'; available: horse2zebra, "):
        download_model("nope", tmp_path)
    assert _files(tmp_path) == []


def test_cityscapes_explains_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(CycleGANError) as info:
        download_dataset("cityscapes", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for part in (
        "cityscapes-dataset.com",
        "leftImg8bit_trainvaltest.zip",
        "gtFine_trainvaltest.zip",
        "trainB",
    ):
        assert part in message
    assert "prepare_cityscapes_dataset.py" in list_available()


def test_list_names_everything() -> None:
    text = list_available("http://mirror.invalid/cg/")
    for name in (*DATASETS, *MODELS, "cityscapes"):
        assert re.search(rf"^  {name}\s", text, re.MULTILINE), name
    assert "http://mirror.invalid/cg/datasets/NAME.zip" in text


def test_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url(None) == DEFAULT_BASE_URL
    monkeypatch.setenv(download.BASE_URL_ENV, "http://env.invalid/x/")
    assert resolve_base_url(None) == "http://env.invalid/x"
    assert resolve_base_url("https://flag.invalid") == "https://flag.invalid"
    assert download.dataset_url("maps") == "http://env.invalid/x/datasets/maps.zip"
    assert download.model_url("map2sat", "file:///srv") == "file:///srv/pretrained_models/map2sat.pth"
    with pytest.raises(CycleGANError, match="must start with http://"):
        resolve_base_url("ftp://old.invalid")
    assert resolve_base_url("http://[::1]:8000/cg/") == "http://[::1]:8000/cg"
    assert resolve_base_url("https://b\u00fccher.invalid") == "https://b\u00fccher.invalid"  # IDNA encodes it


def test_local_mirror_by_file_url(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "datasets").mkdir(parents=True)
    (mirror / "datasets" / "mini.zip").write_bytes(_dataset_zip("mini"))
    path = download_dataset("mini", tmp_path / "d", base_url=mirror.as_uri(), progress=False)
    assert (path / "trainB" / "1.png").is_file()


# Pretrained models


def test_model_downloads_verifies_and_translates(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.serve("/pretrained_models/horse2zebra.pth", _generator_bytes())
    root = tmp_path / "pretrained"
    path = download_model("horse2zebra", root, base_url=server.base, progress=False)
    assert path == root / "horse2zebra.pth" and _files(root) == ["horse2zebra.pth"]
    net, model_config = load_generator(path)
    assert (model_config.netG, model_config.ngf) == ("resnet_9blocks", 4)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 3, 32, 32)
    assert "horse2zebra ready" in capsys.readouterr().err
    (tmp_path / "photo.png").write_bytes(_png((30, 22)))
    written = translate_files([tmp_path / "photo.png"], path, tmp_path / "out", show_progress=False)
    assert Image.open(written.written[0]).size == (30, 22)

    mtime = path.stat().st_mtime_ns
    download_model("horse2zebra", root, base_url=server.base, progress=False)
    assert "already present" in capsys.readouterr().err
    assert len(server.requests) == 1 and path.stat().st_mtime_ns == mtime
    download_model("horse2zebra", root, base_url=server.base, progress=False, force=True)
    assert len(server.requests) == 2 and _files(root) == ["horse2zebra.pth"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00not a checkpoint" * 64, "cannot read it as PyTorch weights"),
        (_state_bytes(NLayerDiscriminator(3, 4, 3, "instance")), ""),
        (_torch_bytes([torch.zeros(2)]), "it is not a state dict of tensors"),
        (_torch_bytes({"w": argparse.Namespace(a=1)}), "it holds Python objects"),
    ],
    ids=["random-bytes", "discriminator", "list-of-tensors", "python-object"],
)
def test_a_file_that_is_not_a_generator_is_refused(
    server: LocalServer, tmp_path: Path, data: bytes, reason: str
) -> None:
    server.serve("/pretrained_models/style_monet.pth", data)
    with _one_line_error(rf"style_monet\.pth is not a CycleGAN generator, nothing was saved: .*{reason}"):
        download_model("style_monet", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == []


def test_a_git_lfs_pointer_is_named_as_such(server: LocalServer, tmp_path: Path) -> None:
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 45575747\n"
    server.serve("/pretrained_models/horse2zebra.pth", pointer)
    lfs = r"it is a Git LFS pointer, not the weights"
    with _one_line_error(rf"nothing was saved: {lfs}"):
        _get("model", tmp_path, server.base)
    assert _files(tmp_path) == []
    (tmp_path / "horse2zebra.pth").write_bytes(pointer)  # one already in place, from a checkout without LFS
    with _one_line_error(rf"exists but is not a usable generator \({lfs}"):
        _get("model", tmp_path, server.base)


def test_an_unusable_model_file_in_place_needs_force(server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / "map2sat.pth").write_bytes(b"junk")
    with pytest.raises(CycleGANError, match=r"exists but is not a usable generator .*use --force"):
        download_model("map2sat", tmp_path, base_url=server.base, progress=False)
    server.serve("/pretrained_models/map2sat.pth", _generator_bytes())
    download_model("map2sat", tmp_path, base_url=server.base, progress=False, force=True)
    load_generator(tmp_path / "map2sat.pth")


def test_full_disk_removes_the_part_and_the_next_run_starts_clean(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _generator_bytes()
    server.serve("/pretrained_models/horse2zebra.pth", data)
    (tmp_path / ".horse2zebra.pth.part").write_bytes(data[:100])  # a valid prefix from a broken run

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # the write that fails: a tail of unknown length is on disk
    with _one_line_error(r"^the disk is full: no room in "):
        _get("model", tmp_path, server.base)
    assert server.requests[-1][1].get("Range") == "bytes=100-"
    assert _files(tmp_path) == []
    monkeypatch.undo()
    _get("model", tmp_path, server.base)
    assert "Range" not in server.requests[-1][1]
    assert _files(tmp_path) == ["horse2zebra.pth"]


# Symbolic links planted in the root


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_a_symlink_at_the_part_is_not_written_through(server: LocalServer, tmp_path: Path, kind: str) -> None:
    name = _serve(server, kind)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    root = tmp_path / "root"
    root.mkdir()
    suffix = ".zip" if kind == "dataset" else ""
    (root / f".{name}{suffix}.part").symlink_to(outside)
    _get(kind, root, server.base)
    assert "Range" not in server.requests[-1][1]  # not resumed from the size of what the link points to
    assert outside.read_bytes() == b"precious"
    assert [p.name for p in root.iterdir()] == [name] and not (root / name).is_symlink()


def test_a_symlink_at_the_extraction_folder_is_not_followed(server: LocalServer, tmp_path: Path) -> None:
    _serve(server, "dataset")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".horse2zebra.extracting").symlink_to(outside, target_is_directory=True)
    path = _get("dataset", root, server.base)
    assert _files(outside) == ["mine.txt"]
    assert [p.name for p in root.iterdir()] == ["horse2zebra"] and not path.is_symlink()
    assert (path / "testB" / "1.png").is_file()


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_a_symlink_at_the_destination_is_not_followed(server: LocalServer, tmp_path: Path, kind: str) -> None:
    name = _serve(server, kind)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    target = outside if kind == "dataset" else outside / "mine.txt"
    root = tmp_path / "root"
    root.mkdir()
    (root / name).symlink_to(target)
    with _one_line_error(r"is a symbolic link, which downloads do not follow"):
        _get(kind, root, server.base)
    assert server.requests == []
    path = _get(kind, root, server.base, force=True)  # replaces the link, not what it points to
    assert not path.is_symlink() and path.is_dir() == (kind == "dataset")
    assert _files(outside) == ["mine.txt"] and (outside / "mine.txt").read_text() == "mine"
    assert [p.name for p in root.iterdir()] == [name]


# Malformed base URLs, trickling servers


@pytest.mark.parametrize(
    "base",
    [
        "http://",
        "http:///x",
        "http://[::1",
        "http://exa mple.invalid",
        "http://example.invalid/x\n",
        "http://example.invalid/caf\u00e9",
        "http://" + "a" * 70 + ".invalid",
        "http://example.invalid:99999",
        "http://example.invalid:port",
        "http://example.invalid/x?a=1",
        "http://example.invalid/x#top",
    ],
)
def test_a_malformed_base_url_is_one_line(tmp_path: Path, base: str) -> None:
    for kind in ("dataset", "model"):
        with _one_line_error(r"^the base URL '.*' (is|has|must|contains)"):
            _get(kind, tmp_path / kind, base)
    assert _files(tmp_path) == []


def test_a_trickling_server_is_stopped_by_the_deadline_and_the_next_run_resumes(
    server: LocalServer, tmp_path: Path
) -> None:
    data = _dataset_zip()
    server.trickle("/datasets/horse2zebra.zip", data)
    with _one_line_error(
        rf"^gave up on {re.escape(server.base)}/datasets/horse2zebra\.zip at the deadline of 0\.4 s"
        r" \(--deadline\): \d+ B of [\d.]+ (B|KiB) arrived; run the same command again to resume$"
    ):
        _get("dataset", tmp_path, server.base, timeout=0.3, deadline=0.4)
    kept = (tmp_path / ".horse2zebra.zip.part").read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)
    server.serve("/datasets/horse2zebra.zip", data)
    _get("dataset", tmp_path, server.base)
    assert server.requests[-1][1].get("Range") == f"bytes={len(kept)}-"
    assert [p.name for p in tmp_path.iterdir()] == ["horse2zebra"]


def test_cli_deadline(server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.trickle("/pretrained_models/style_monet.pth", _generator_bytes())
    command = ["download", "model", "style_monet", "--root", str(tmp_path), "--base_url", server.base]
    assert cli.main([*command, "--deadline", "0.3"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "at the deadline of 0.3 s (--deadline)" in errors[0]
    assert cli.main([*command, "--deadline", "0"]) == 2
    assert "the deadline must be a positive number of seconds, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["download", "dataset", "--help"])
    assert "--deadline SECONDS" in capsys.readouterr().out


# pix2pix: paired datasets (.tar.gz) and released generators


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _paired_tar(name: str, extra: list[tuple[tarfile.TarInfo, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    files = [
        (tarfile.TarInfo(f"{name}/{split}/{i}.png"), _png((16, 8)))
        for split in ("train", "val")
        for i in range(2)
    ]
    return _tar_gz(files + list(extra))


def test_paired_dataset_unpacks_a_tar_gz_beside_the_unpaired_names(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.serve("/datasets/facades.tar.gz", _paired_tar("facades"))
    server.serve("/datasets/edges2shoes.tar.gz", _paired_tar("edges2shoes"))
    path = download_dataset("facades", tmp_path, base_url=server.base, paired=True, progress=False)
    assert _files(path) == ["train", "train/0.png", "train/1.png", "val", "val/0.png", "val/1.png"]
    assert download_dataset("edges2shoes", tmp_path, base_url=server.base, progress=False).is_dir()  # implied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edges2shoes", "facades"]  # nothing else left
    download_dataset("facades", tmp_path, base_url=server.base, paired=True, progress=False)
    assert "already present" in capsys.readouterr().err and len(server.requests) == 2
    with _one_line_error(r"facades exists but has no images in trainA, trainB, testA, testB; use --force"):
        download_dataset("facades", tmp_path, base_url=server.base, progress=False)  # the CycleGAN zip
    assert re.search(r"^  edges2shoes\s+edge maps \(A\) \| shoe photos \(B\)", list_available(), re.MULTILINE)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (tarfile.TarInfo("facades/train/../../evil.png"), "points outside the target folder"),
        (tarfile.TarInfo("/tmp/evil.png"), "has an absolute path"),
        (tarfile.TarInfo("facades/train/link.png"), "is a link"),
        (tarfile.TarInfo("facades/train/fifo"), "is neither a file nor a folder"),
    ],
    ids=["dotdot", "absolute", "symlink", "fifo"],
)
def test_a_hostile_tar_is_refused_and_leaves_nothing(
    server: LocalServer, tmp_path: Path, entry: tarfile.TarInfo, problem: str
) -> None:
    if entry.name.endswith("link.png"):
        entry.type, entry.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif entry.name.endswith("fifo"):
        entry.type = tarfile.FIFOTYPE
    server.serve("/datasets/maps.tar.gz", _paired_tar("maps", [(entry, b"x")]))
    with _one_line_error(rf"refusing .*maps\.tar\.gz: its entry .* {problem}"):
        download_dataset("maps", tmp_path / "d", base_url=server.base, paired=True, progress=False)
    assert _files(tmp_path) == ["d"]
    server.serve("/datasets/maps.tar.gz", _paired_tar("maps")[:-40])
    with _one_line_error(r"maps\.tar\.gz is not a valid \.tar\.gz archive, truncated or corrupt"):
        download_dataset("maps", tmp_path / "d", base_url=server.base, paired=True, progress=False)
    assert _files(tmp_path) == ["d"]


def test_pix2pix_generator_downloads_and_is_told_apart_from_cyclegans(
    server: LocalServer, tmp_path: Path
) -> None:
    from cyclegan.networks.unet import UnetGenerator

    unet = UnetGenerator(3, 3, 8, 4, "batch", use_dropout=True)  # the released ones: unet_256, batch norm
    old_style = {k: v for k, v in unet.state_dict().items() if not k.endswith("num_batches_tracked")}
    server.serve("/models-pytorch/facades_label2photo.pth", _torch_bytes(old_style))
    server.serve("/pretrained_models/facades_label2photo.pth", _generator_bytes())
    path = download_model(
        "facades_label2photo", tmp_path / "p2p", base_url=server.base, paired=True, progress=False
    )
    assert load_generator(path)[1].netG == "unet_256"
    (tmp_path / "labels.png").write_bytes(_png((30, 22)))
    written = translate_files([tmp_path / "labels.png"], path, tmp_path / "out", show_progress=False)
    assert Image.open(written.written[0]).size == (30, 22)

    cyclegan = download_model("facades_label2photo", tmp_path / "cg", base_url=server.base, progress=False)
    assert load_generator(cyclegan)[1].netG == "resnet_9blocks"
    with _one_line_error(
        r"exists but is not a usable generator \(it is a resnet_9blocks generator, CycleGAN's"
    ):
        download_model(
            "facades_label2photo", tmp_path / "cg", base_url=server.base, paired=True, progress=False
        )
    server.serve("/models-pytorch/sat2map.pth", _generator_bytes())
    with _one_line_error(
        r"sat2map\.pth is not a pix2pix generator, nothing was saved: it is a resnet_9blocks"
    ):
        download_model("sat2map", tmp_path / "p2p", base_url=server.base, paired=True, progress=False)
    assert _files(tmp_path / "p2p") == ["facades_label2photo.pth"]
