"""``cyclegan serve``: the HTTP API in-process, then a real server driven by a browser and by 50 uploads."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

import cyclegan
from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.models import checkpoints
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.networks.resnet import ResnetGenerator
from cyclegan.translation import serve
from cyclegan.translation.bulk import translate_files

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LOADED_TRANSLATIONS = (
    "return [...document.querySelectorAll('figure[data-direction] img')]"
    ".filter(img => img.complete && img.naturalWidth).length"
)
READ_IMAGE_FILE = (  # the bytes behind an <img>, as base64
    "const [img, done] = arguments;"
    "fetch(img.src).then(r => r.arrayBuffer()).then(b => {"
    "  let s = ''; new Uint8Array(b).forEach(c => { s += String.fromCharCode(c); }); done(btoa(s));"
    "});"
)
OPTIONS = serve.ServeOptions(max_pixels=5000, max_upload_mb=0.05)  # small limits, to test them cheaply


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CycleGAN(CycleGANOptions(net=NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    checkpoints.save_weights(path, model.networks(), model.options, {"step": 0})
    return path


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(serve.create_app(checkpoint, options=OPTIONS)) as test_client:
        yield test_client


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def expected(checkpoint: Path, images: list[Path], direction: str, out: Path) -> dict[str, np.ndarray]:
    """What ``cyclegan translate`` writes for each image, by file name."""
    written = translate_files(images, checkpoint, out / direction, direction=direction, show_progress=False)
    return {p.name: np.asarray(Image.open(p)) for p in written.written}


def bomb_png(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert fragment in body["error"]


def test_translations_are_the_pixels_translate_writes(
    client: TestClient, checkpoint: Path, tmp_path: Path
) -> None:
    source = write_images(tmp_path / "in", 1, size=(37, 29))[0]
    grey = tmp_path / "in" / "grey.jpg"
    Image.new("L", (20, 24), 100).save(grey)
    for direction in ("AtoB", "BtoA"):
        want = expected(checkpoint, [source, grey], direction, tmp_path)
        for path in (source, grey):
            files = {"image": (path.name, path.read_bytes(), "image/png")}
            response = client.post("/translate", files=files, data={"direction": direction})
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.headers["x-direction"] == direction
            np.testing.assert_array_equal(pixels(response.content), want[path.with_suffix(".png").name])
    files = {"image": ("a.png", source.read_bytes())}
    default = client.post("/translate", files=files)  # AtoB when not given
    by_header = client.post("/translate", files=files, headers={"Accept": "application/json"})
    by_query = client.post("/translate?format=json", files=files, data={"direction": "AtoB"})
    for answer in (by_header.json(), by_query.json()):
        assert {k: answer[k] for k in ("direction", "width", "height", "media_type")} == {
            "direction": "AtoB", "width": 37, "height": 29, "media_type": "image/png"
        }  # fmt: skip
        assert base64.b64decode(answer["image"]) == default.content


def test_health_info_and_a_single_generator_reference_file(
    client: TestClient, checkpoint: Path, tmp_path: Path
) -> None:
    assert client.get("/health").json() == {"status": "ok", "queued": 0}
    info = client.get("/info").json()
    assert info["directions"] == ["AtoB", "BtoA"] and info["checkpoint"] == "tiny.safetensors"
    assert (info["model"]["netG"], info["model"]["ngf"], info["limits"]["max_pixels"]) == (
        "resnet_6blocks",
        4,
        5000,
    )
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and 'type="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing from a CDN
    reference = tmp_path / "latest_net_G_A.pth"
    torch.save(ResnetGenerator(3, 3, 4, "instance", False, 6).state_dict(), reference)
    with TestClient(serve.create_app(reference)) as single:
        assert single.get("/info").json()["directions"] == ["AtoB"]
        image = {"image": ("x.png", png_bytes(Image.new("RGB", (16, 16), "red")))}
        assert single.post("/translate", files=image).status_code == 200
        assert_error(single.post("/translate", files=image, data={"direction": "BtoA"}), 400, "AtoB")


def test_bad_requests_get_a_one_line_json_error_and_the_server_keeps_serving(client: TestClient) -> None:
    good = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)))
    cases = [
        (
            {"files": {"image": ("notes.png", b"just some text", "text/plain")}},
            400,
            "notes.png is not an image",
        ),
        ({"files": {"image": ("cut.png", good[: len(good) // 2])}}, 400, "not an image"),
        ({"files": {"image": ("bomb.png", bomb_png(100_000, 100_000))}}, 413, "decompression bomb"),
        ({"files": {"image": ("big.png", bomb_png(3000, 3000))}}, 413, "above the limit"),
        ({"files": {"image": ("big.png", png_bytes(Image.new("RGB", (100, 100))))}}, 413, "above the limit"),
        ({"files": {"image": ("huge.png", os.urandom(60_000))}}, 413, "larger than the limit"),
        ({"files": {"image": ("empty.png", b"")}}, 400, "empty"),
        ({"data": {"direction": "AtoB"}, "files": {"other": ("x", b"x")}}, 400, "field named image"),
        ({"json": {"image": "x"}}, 415, "multipart/form-data"),
        (
            {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            400,
            "field named",
        ),
        ({"content": b"--", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
        ({"files": {"image": ("a.png", good)}, "data": {"direction": "sideways"}}, 400, "direction must be"),
        ({"files": {"image": ("a.png", good)}, "params": {"format": "gif"}}, 400, "format must be"),
    ]
    for request, status, fragment in cases:
        assert_error(client.post("/translate", **request), status, fragment)
    assert_error(client.get("/translate"), 405, "Method Not Allowed")
    assert_error(client.get("/nowhere"), 404, "Not Found")
    body = httpx.Request("POST", "http://x/translate", files={"image": ("a.png", os.urandom(60_000))})
    data = body.read()
    chunks = (data[i : i + 4096] for i in range(0, len(data), 4096))  # sent without a Content-Length
    chunked = client.post(
        "/translate", content=chunks, headers={"content-type": body.headers["content-type"]}
    )
    assert_error(chunked, 413, "larger than the limit")
    ok = client.post("/translate", files={"image": ("a.png", good)})
    assert ok.status_code == 200 and pixels(ok.content).shape == (30, 40, 3)


def test_the_worker_batches_waiting_images_of_one_size_and_direction_in_arrival_order() -> None:
    batches: list[list[str]] = []

    def work(jobs: list[serve.Job]) -> None:
        batches.append([job.upload.read().decode() for job in jobs])
        for job in jobs:
            job.future.set_result(None)

    batcher = serve.Batcher(work, max_batch=2, batch_pixels=4 * 32 * 32, max_queued=6)
    keys = [("AtoB", (32, 32)), ("AtoB", (32, 32)), ("BtoA", (32, 32)), ("AtoB", (32, 32)),
            ("AtoB", (64, 64)), ("AtoB", (64, 64))]  # fmt: skip
    futures = [
        batcher.submit(serve.Job(d, size, io.BytesIO(str(i).encode()))) for i, (d, size) in enumerate(keys)
    ]
    with pytest.raises(serve.RequestError, match="busy") as busy:
        batcher.submit(serve.Job("AtoB", (8, 8), io.BytesIO()))
    assert busy.value.status == 503
    batcher.start()
    batcher.close()
    assert all(f.done() for f in futures)
    # 64x64 images exceed the pixel budget of a batch (4 * 32 * 32), so they run one at a time
    assert batches == [["0", "1"], ["2"], ["3"], ["4"], ["5"]]


def test_cli_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("checkpoint not found: " + str(tmp_path / "missing.safetensors"))
    )
    assert main(["serve", str(checkpoint), "--max_batch", "0"]) == 2
    assert "--max_batch must be positive" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(checkpoint), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    monkeypatch.setattr(serve, "MISSING", "uvicorn")
    assert main(["serve", str(checkpoint)]) == 2
    assert "pip install -e '.[serve]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``cyclegan serve`` in its own process on a free loopback port: (base URL, pid)."""
    logs = tmp_path_factory.mktemp("server") / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(cyclegan.__file__).parents[1])}
    command = [
        sys.executable,
        "-m",
        "cyclegan.cli",
        "serve",
        str(checkpoint),
        "--port",
        "0",
        "--device",
        "cpu",
    ]
    with open(logs, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("Serving"), f"{line} {logs.read_text()}"
        yield line.split(" at ")[1].split()[0].rstrip("/"), process.pid
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, logs.read_text()  # Ctrl-C shuts it down cleanly


def test_fifty_concurrent_uploads_are_all_answered_correctly_in_bounded_memory(
    server: tuple[str, int], checkpoint: Path, tmp_path: Path
) -> None:
    psutil = pytest.importorskip("psutil")
    url, pid = server
    images = []
    for i, size in enumerate([(32, 32), (40, 24), (48, 48)]):
        for path in write_images(tmp_path / f"size{i}", 2, size, seed=i):
            images.append(path.rename(tmp_path / f"{i}_{path.name}"))
    truncated = images[0].read_bytes()[:200]
    want = {d: expected(checkpoint, images, d, tmp_path) for d in ("AtoB", "BtoA")}
    uploads = [(images[i % len(images)], ("AtoB", "BtoA")[i % 2]) for i in range(50)]

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            requests = [
                http.post("/translate", files={"image": (p.name, p.read_bytes())}, data={"direction": d})
                for p, d in uploads
            ]
            requests += [http.post("/translate", files={"image": ("cut.png", truncated)}) for _ in range(4)]
            return await asyncio.gather(*requests)

    process = psutil.Process(pid)
    asyncio.run(send_all())  # warm up: the first run sizes the allocator's pools
    before = process.memory_info().rss
    responses = asyncio.run(send_all())
    after = process.memory_info().rss
    for (path, direction), response in zip(uploads, responses, strict=False):
        assert response.status_code == 200, response.text
        got = pixels(response.content).astype(int)
        # batched convolutions may round differently from single ones: allow one grey level
        assert np.abs(got - want[direction][path.name]).max() <= 1, path.name
    for response in responses[len(uploads) :]:
        assert_error(response, 400, "not an image")
    assert after - before < 32 * 2**20, f"the server grew by {(after - before) / 2**20:.0f} MB"
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "queued": 0}


def test_the_page_in_a_real_browser_shows_and_offers_the_translations(
    server: tuple[str, int], checkpoint: Path, tmp_path: Path
) -> None:
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("needs chromium and chromedriver (Debian: apt install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    source = write_images(tmp_path / "in", 1, size=(37, 29), seed=5)[0]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(f"{url}/")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: "resnet_6blocks" in d.find_element("id", "model").text)
        driver.find_element("id", "file").send_keys(str(source))
        wait.until(lambda d: d.execute_script(LOADED_TRANSLATIONS) == 2)
        for direction in ("AtoB", "BtoA"):
            figure = f'figure[data-direction="{direction}"]'
            img = driver.find_element("css selector", f"{figure} img")
            link = driver.find_element("css selector", f"{figure} a[download]")
            assert link.get_attribute("download") == f"img_000_{direction}.png"
            assert link.get_attribute("href") == img.get_attribute("src")
            assert driver.execute_script("return arguments[0].naturalWidth", img) == 37
            data = driver.execute_async_script(READ_IMAGE_FILE, img)
            want = expected(checkpoint, [source], direction, tmp_path)["img_000.png"]
            np.testing.assert_array_equal(pixels(base64.b64decode(data)), want)
        assert driver.find_element("id", "error").text == ""
        assert driver.find_element("css selector", "figure:not([data-direction]) img").get_attribute("alt")
    finally:
        driver.quit()


def test_images_beyond_the_memory_budget_are_translated_in_exact_tiles(
    checkpoint: Path, tmp_path: Path
) -> None:
    image = write_images(tmp_path / "in", 1, size=(600, 400))[0]
    budget = (
        75 * 2**20
    )  # this image needs about 84 MiB whole and 72 MiB in 64-pixel tiles (tiling's estimate)
    assert serve.load_translators(checkpoint, "cpu", budget)["AtoB"].tile_for(400, 600) is not None
    options = serve.ServeOptions(max_pixels=300_000, max_upload_mb=2, max_memory=budget)
    with TestClient(serve.create_app(checkpoint, options=options)) as client:
        answer = client.post("/translate", files={"image": ("img_000.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    want = expected(checkpoint, [image], "AtoB", tmp_path / "whole")["img_000.png"]
    assert np.abs(pixels(answer.content).astype(int) - want.astype(int)).max() <= 1
