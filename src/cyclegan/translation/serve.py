"""A web page and an HTTP API that translate images with a trained model (``cyclegan serve``).

    GET  /           a page: drop or pick an image, see its translations beside it, download them
    GET  /health     {"status": "ok", "queued": N}
    GET  /info       the checkpoint's architecture, its directions and the server's limits
    POST /translate  multipart/form-data with the file in field ``image`` and, optionally, ``direction``
                     (AtoB or BtoA; default AtoB). Answers the translation as image/png, or as JSON
                     {"direction", "width", "height", "media_type", "image": base64 PNG} when asked with
                     ``?format=json`` or an Accept header naming application/json (and not image/png).
                     A model trained on data that is not 8-bit takes 16-bit PNG and TIFF (any sample
                     type) and answers in the upload's kind: 16-bit PNG, or TIFF as image/tiff.

Every error is ``{"error": "one line"}``: 400 a bad form or an unreadable image, 413 an upload or an image
above the limits (of pixels, or of memory even in tiles), 415 a body that is not multipart/form-data, 503 a
full queue, 500 anything unexpected (its detail goes to the server's log, in one line, not to the client).

One model runs at a time: requests wait in a queue that one worker thread drains. The worker decodes the
uploads itself, so waiting requests hold compressed bytes (spooled to disk above 1 MB), not pixels, and
memory stays bounded by the queue length whatever the load. It runs waiting images of the same direction
and size as one batch, up to a pixel budget per batch: on a CPU batching pays only for small images.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import logging
import socket
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image, UnidentifiedImageError

from cyclegan.config import ServeOptions
from cyclegan.data import formats
from cyclegan.data.images import DECODE_ERRORS, ImageTooLarge, check_pixels, first_line, to_image
from cyclegan.data.intensity import Conversion, load_mapped
from cyclegan.devices import resolve_device
from cyclegan.errors import CycleGANError, TooLarge
from cyclegan.models.checkpoints import resolve_checkpoint, translations
from cyclegan.translation.translator import Translator

try:
    import python_multipart  # noqa: F401 - Starlette parses forms with it, and fails late without it
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import FormData, UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ModuleNotFoundError as missing:  # optional: everything but the server itself works without them
    MISSING: str | None = missing.name
else:
    MISSING = None

# Pixels per batch, where batching pays. Measured on 2 CPU cores with the paper's generator: through the
# server (benchmarks/serve.py), 64 px images are served at 23.4 requests/s in batches of up to 8 against
# 17.6 one by one; the bare generator at 256 px runs 17% slower in batches of 8. So a CPU batches images up
# to 64x64 only. The CUDA budget is a conservative guess, not a measurement.
BATCH_PIXELS = {"cpu": 8 * 64 * 64, "cuda": 16 * 256 * 256}
LOG = logging.getLogger("uvicorn.error")  # the server's own log, as uvicorn configures it


class RequestError(CycleGANError):
    """A request the server refuses, answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Job:
    """One uploaded image waiting for ``direction``'s generator; ``size`` (from its header) groups batches."""

    direction: str
    size: tuple[int, int]
    upload: BinaryIO
    name: str = "the upload"
    future: Future = field(default_factory=Future)


class Batcher:
    """A queue of jobs that one worker thread drains: ``work`` runs on the oldest job together with the
    waiting jobs of the same direction and size, up to ``max_batch`` images and ``batch_pixels`` pixels.

    When a batch could grow, the worker waits up to ``window`` seconds for more; jobs of other sizes keep
    their place. ``work`` settles each job's future; an exception it raises fails the whole batch.
    """

    def __init__(
        self,
        work: Callable[[list[Job]], None],
        *,
        max_batch: int = 1,
        batch_pixels: int = 0,
        window: float = 0.0,
        max_queued: int = 64,
    ) -> None:
        self.work, self.max_batch, self.batch_pixels = work, max_batch, batch_pixels
        self.window, self.max_queued = window, max_queued
        self._jobs: list[Job] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cyclegan-serve", daemon=True)

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, job: Job) -> Future:
        with self._changed:
            if self._closed:
                raise RequestError(503, "the server is shutting down")
            if len(self._jobs) >= self.max_queued:
                raise RequestError(
                    503, f"the server is busy ({len(self._jobs)} images waiting); retry shortly"
                )
            self._jobs.append(job)
            self._changed.notify_all()
        return job.future

    def _run(self) -> None:
        while batch := self._next_batch():
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip abandoned
            try:
                if batch:
                    self.work(batch)
            except Exception as err:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _next_batch(self) -> list[Job]:
        with self._changed:
            self._changed.wait_for(lambda: self._jobs or self._closed)
            if not self._jobs:
                return []
            first = self._jobs[0]
            cap = min(self.max_batch, max(1, self.batch_pixels // (first.size[0] * first.size[1])))
            deadline = time.monotonic() + self.window
            batch = self._matching(first, cap)
            while len(batch) < cap and not self._closed and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
                batch = self._matching(first, cap)
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _matching(self, first: Job, cap: int) -> list[Job]:
        return [j for j in self._jobs if (j.direction, j.size) == (first.direction, first.size)][:cap]


def require_web() -> None:
    if MISSING:
        raise CycleGANError(
            f"cyclegan serve needs FastAPI, uvicorn and python-multipart ({MISSING} is missing): "
            "pip install -e '.[serve]'"
        )


def load_translators(
    checkpoint: Path, device: torch.device | str = "cpu", max_memory: int | None = None
) -> dict[str, Translator]:
    """Every direction a checkpoint or run folder translates (a reference ``.pth`` holds one generator,
    A→B). Each forward stays within ``max_memory`` bytes of tensors: a batch runs in parts, and an image
    too large for it whole is translated in exact tiles (the same pixels, in bounded memory)."""
    path = resolve_checkpoint(Path(checkpoint))
    return {d: Translator.load(path, d, device, max_memory=max_memory) for d in translations(path)}


def run_model(translator: Translator, batch: torch.Tensor) -> torch.Tensor:
    """N×C×H×W in [-1, 1] -> translations: the one place the server runs a generator (the translator tiles
    images beyond its memory budget)."""
    return translator.translate_tensor(batch)


@dataclass(frozen=True)
class Reply:
    """A translated image, encoded."""

    data: bytes
    media_type: str
    width: int
    height: int


def translate_jobs(translators: dict[str, Translator], max_pixels: int) -> Callable[[list[Job]], None]:
    """The worker's ``work``: decode each upload as translation does (through the model's mapping),
    translate, settle its future with the encoded :class:`Reply`; a file that fails to decode fails its own
    job only."""

    def work(jobs: list[Job]) -> None:
        translator = translators[jobs[0].direction]
        conversion = translator.conversion
        groups: dict[tuple[int, ...], list[tuple[Job, torch.Tensor]]] = {}
        for job in jobs:
            try:
                x = load_mapped(
                    job.upload, conversion.source, translator.in_channels, conversion.slice_axis, max_pixels
                )
            except DECODE_ERRORS as err:
                job.future.set_exception(_decode_error(err, job.name))
                continue
            groups.setdefault(tuple(x.shape), []).append((job, x))
        for group in groups.values():  # one group unless a header lied about the size
            _run_group(translator, group)

    return work


def _run_group(translator: Translator, group: list[tuple[Job, torch.Tensor]]) -> None:
    try:
        ys = run_model(translator, torch.stack([x for _, x in group]))
    except TooLarge as err:  # beyond the memory budget even in tiles, or beyond the device's memory
        for job, _ in group:
            job.future.set_exception(RequestError(413, str(err)))
        return
    for (job, _), y in zip(group, ys, strict=True):
        job.future.set_result(_encode(y, translator.conversion, job.upload))


def _encode(y: torch.Tensor, conversion: Conversion, upload: BinaryIO) -> Reply:
    """8-bit PNG for 8-bit data; else the upload's kind: TIFF for TIFF, PNG (16-bit) where it holds the
    target's sample type, TIFF otherwise."""
    height, width = y.shape[-2:]
    if conversion.target.eight_bit:
        return Reply(_png(to_image(y)), "image/png", width, height)
    upload.seek(0)
    tiff = formats.probe(upload).format == "tiff" or conversion.target.dtype not in ("uint8", "uint16")
    data = formats.encode(
        conversion.target.inverse(y[None]),
        Path("upload"),
        conversion.target.dtype,
        dst_suffix=".tif" if tiff else ".png",
    )
    return Reply(data, "image/tiff" if tiff else "image/png", width, height)


def _decode_error(err: BaseException, name: str) -> RequestError:
    if isinstance(err, ImageTooLarge):
        return RequestError(413, str(err))
    if isinstance(err, Image.DecompressionBombError):
        return RequestError(413, f"{name}: {first_line(err)}")
    if isinstance(err, UnidentifiedImageError):
        return RequestError(400, f"{name} is not an image in a format Pillow reads")
    return RequestError(400, f"{name} is not an image that can be read ({first_line(err)})")


def peek_size(
    upload: BinaryIO, name: str, max_pixels: int, conversion: Conversion | None = None
) -> tuple[int, int]:
    """(width, height) as the upload will decode, EXIF rotation included, from its header alone: what is
    not an image, or is too large, is refused before a pixel is decoded."""
    if conversion is not None and not conversion.source.eight_bit:
        try:
            return formats.probe(upload, conversion.slice_axis, max_pixels).size
        except DECODE_ERRORS as err:
            raise _decode_error(err, name) from None
        finally:
            upload.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(upload) as image:
                check_pixels(name, image.size, max_pixels)
                width, height = image.size
                turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except DECODE_ERRORS as err:
        raise _decode_error(err, name) from None
    finally:
        upload.seek(0)
    return (height, width) if turned else (width, height)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise RequestError(413, f"the upload is larger than the limit of {limit / 2**20:g} MB")
        yield chunk


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form, refusing bodies above ``limit`` bytes before (or while) reading them."""
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "multipart/form-data":
        sent = kind or "no content type"
        raise RequestError(415, f"send the image as multipart/form-data (field image), not {sent}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the upload is larger than the limit of {limit / 2**20:g} MB")
    parser = MultiPartParser(request.headers, _limited(request.stream(), limit), max_files=1, max_fields=2)
    try:
        return await parser.parse()
    except MultiPartException as err:
        raise RequestError(400, f"bad multipart/form-data body: {err.message}") from None
    except ClientDisconnect:  # nobody is left to answer: no traceback, no 500 in the log
        raise RequestError(400, "the client disconnected during the upload") from None


def _wants_json(request: Request) -> bool:
    wanted = request.query_params.get("format", "")
    if wanted not in ("", "png", "json"):
        raise RequestError(400, f"format must be png or json, got {wanted!r}")
    if wanted:
        return wanted == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "image/png" not in accept


def _direction(value: Any, directions: tuple[str, ...]) -> str:
    if value is None or value == "":
        return directions[0]
    if value not in directions:
        raise RequestError(400, f"direction must be {' or '.join(directions)} for this model, got {value!r}")
    return value


def create_app(
    checkpoint: Path, device: torch.device | str = "cpu", options: ServeOptions | None = None
) -> FastAPI:
    """The web app for ``checkpoint`` (a run folder, one of our checkpoints or a reference ``.pth``).

    Its worker thread runs while the app does (uvicorn, or ``with TestClient(app)``)."""
    require_web()
    options = options or ServeOptions()
    options.validate()
    translators = load_translators(checkpoint, device, options.max_memory)
    directions = tuple(translators)
    first = translators[directions[0]]
    batcher = Batcher(
        translate_jobs(translators, options.max_pixels),
        max_batch=options.max_batch,
        batch_pixels=BATCH_PIXELS.get(first.device.type, 0),
        window=options.batch_window_ms / 1000,
        max_queued=options.max_queued,
    )
    info = {
        "checkpoint": Path(checkpoint).name,
        "directions": list(directions),
        "model": dataclasses.asdict(first.config),
        "channels": {d: t.in_channels for d, t in translators.items()},
        "device": str(first.device),
        "limits": {**dataclasses.asdict(options), "max_upload_bytes": options.max_upload_bytes},
    }
    page = resources.files("cyclegan.translation").joinpath("serve.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="cyclegan", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Contained)

    @app.exception_handler(RequestError)
    async def refused(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queued": batcher.queued}

    @app.get("/info")
    async def model_info() -> dict[str, Any]:
        return info

    @app.post("/translate")
    async def translate(request: Request) -> Response:
        as_json = _wants_json(request)
        form = await read_form(request, options.max_upload_bytes)
        try:
            direction = _direction(form.get("direction"), directions)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise RequestError(400, "no file in the form field named image")
            if upload.size == 0:
                raise RequestError(400, "the uploaded file is empty")
            name = " ".join((upload.filename or "the upload").split())[:200]  # one line in errors
            conversion = translators[direction].conversion
            size = await run_in_threadpool(peek_size, upload.file, name, options.max_pixels, conversion)
            reply = await asyncio.wrap_future(batcher.submit(Job(direction, size, upload.file, name)))
        finally:
            await form.close()
        if not as_json:
            return Response(reply.data, media_type=reply.media_type, headers={"X-Direction": direction})
        return JSONResponse(
            {
                "direction": direction,
                "width": reply.width,
                "height": reply.height,
                "media_type": reply.media_type,
                "image": base64.b64encode(reply.data).decode("ascii"),
            }
        )

    return app


class Contained:
    """Answers an unexpected error with a generic 500 and logs its detail in one line: its text may show
    paths and internals that are not the client's business, and a traceback per request floods the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:
            LOG.error(
                "%s %s failed: %s: %s", scope["method"], scope["path"], type(err).__name__, first_line(err)
            )
            if not started:
                await JSONResponse({"error": "internal error"}, status_code=500)(scope, receive, send)


def listen(host: str, port: int) -> socket.socket:
    """Bind first, so a taken port or a bad address is a one-line error (and port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CycleGANError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(
    checkpoint: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str = "auto",
    options: ServeOptions | None = None,
) -> None:
    """Run the web page and API for ``checkpoint`` until Ctrl-C."""
    require_web()
    app = create_app(checkpoint, resolve_device(device), options)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"Serving {checkpoint} at http://{shown}:{bound_port}/ (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
