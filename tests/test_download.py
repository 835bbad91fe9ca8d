"""Downloads against a local HTTP server on 127.0.0.1 that can serve, refuse, drop and stall."""

from __future__ import annotations

import io
import re
import socket
import stat
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from cyclegan import download
from cyclegan.checkpoints import load_generator
from cyclegan.download import (
    DATASETS,
    DEFAULT_BASE_URL,
    MODELS,
    download_dataset,
    download_model,
    list_available,
    resolve_base_url,
)
from cyclegan.errors import CycleGANError
from cyclegan.inference import translate_files
from cyclegan.networks import NLayerDiscriminator, ResnetGenerator
from cyclegan.training import train

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


def _state_bytes(net: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def _generator_bytes() -> bytes:
    return _state_bytes(ResnetGenerator(3, 3, 4, "instance", False, 9))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


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
    assert Image.open(written[0]).size == (30, 22)

    mtime = path.stat().st_mtime_ns
    download_model("horse2zebra", root, base_url=server.base, progress=False)
    assert "already present" in capsys.readouterr().err
    assert len(server.requests) == 1 and path.stat().st_mtime_ns == mtime
    download_model("horse2zebra", root, base_url=server.base, progress=False, force=True)
    assert len(server.requests) == 2 and _files(root) == ["horse2zebra.pth"]


@pytest.mark.parametrize(
    "data",
    [b"\x00not a checkpoint" * 64, _state_bytes(NLayerDiscriminator(3, 4, 3, "instance"))],
    ids=["random-bytes", "discriminator"],
)
def test_a_file_that_is_not_a_generator_is_refused(server: LocalServer, tmp_path: Path, data: bytes) -> None:
    server.serve("/pretrained_models/style_monet.pth", data)
    with pytest.raises(
        CycleGANError, match=r"style_monet\.pth is not a CycleGAN generator, nothing was saved"
    ):
        download_model("style_monet", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == []


def test_an_unusable_model_file_in_place_needs_force(server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / "map2sat.pth").write_bytes(b"junk")
    with pytest.raises(CycleGANError, match=r"exists but is not a usable generator .*use --force"):
        download_model("map2sat", tmp_path, base_url=server.base, progress=False)
    server.serve("/pretrained_models/map2sat.pth", _generator_bytes())
    download_model("map2sat", tmp_path, base_url=server.base, progress=False, force=True)
    load_generator(tmp_path / "map2sat.pth")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_full_disk_fails_cleanly(server: LocalServer, tmp_path: Path) -> None:
    server.serve("/pretrained_models/horse2zebra.pth", _generator_bytes())
    (tmp_path / ".horse2zebra.pth.part").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(CycleGANError, match="the disk is full"):
        download_model("horse2zebra", tmp_path, base_url=server.base, progress=False)
    assert _files(tmp_path) == []
