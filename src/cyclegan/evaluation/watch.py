"""``cyclegan report RUN_DIR --watch``: serve a run's live report on localhost, reloading when it changes.

Training rewrites ``report.html`` at every sample grid and evaluation; this serves that file (and nothing
else of the folder) on 127.0.0.1 with a few lines of script that ask every few seconds whether the file
has changed and reload the page when it has. Each connection gets a thread (browsers open idle ones ahead)
bounded by a timeout: a tool for one person's browser, not a web server. It runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import http.server
from collections.abc import Callable
from pathlib import Path

from cyclegan.errors import CycleGANError
from cyclegan.evaluation.report import write_report
from cyclegan.evaluation.runfiles import read_config
from cyclegan.layout import REPORT

POLL_SECONDS = 2.0
WAITING = "<!DOCTYPE html><html><body><p>No report yet: this page waits for one.</p></body></html>"
RELOAD = """<script>
(() => {{
  const shown = "{version}";
  setInterval(() => {{
    fetch("version", {{cache: "no-store"}}).then(r => r.text())
      .then(v => {{ if (v !== shown) location.reload(); }}).catch(() => {{}});
  }}, {interval});
}})();
</script>
"""


def report_version(page: Path) -> str:
    """Changes whenever the page is rewritten (each rewrite is a new file, renamed over the old one)."""
    try:
        stat = page.stat()
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}-{stat.st_ino}-{stat.st_size}"


def watch_server(
    run_dir: Path, port: int, poll_seconds: float = POLL_SECONDS
) -> http.server.ThreadingHTTPServer:
    """A server (not yet serving) of ``run_dir``'s report on 127.0.0.1:``port`` (0: any free port).

    A run without a report yet gets one first, as ``cyclegan report`` writes it.
    """
    run_dir = Path(run_dir)
    read_config(run_dir)  # a folder that is not a run: one line, before anything listens
    page = run_dir / REPORT
    if not page.is_file():
        write_report(run_dir)
    handler = _handler(page, poll_seconds)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise CycleGANError(
            f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); pick another --port"
        ) from None
    server.daemon_threads = True
    return server


def watch(run_dir: Path, port: int, announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C."""
    server = watch_server(run_dir, port)
    host, bound = server.server_address[:2]
    announce(f"Watching {Path(run_dir) / REPORT} at http://{host!s}:{bound}/ (Ctrl-C to stop)")
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _handler(page: Path, poll_seconds: float) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # seconds a client may take to send its request

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._page()
            elif self.path == "/version":
                self._send(200, "text/plain", report_version(page).encode())
            else:
                self._send(404, "text/plain", b"not found: only the report is served here\n")

        def _page(self) -> None:
            version = report_version(page)  # before reading: a rewrite in between reloads once more
            try:
                text = page.read_text(encoding="utf-8")
            except OSError:
                text = WAITING
            head, found, tail = text.rpartition("</body>")
            if not found:
                head, tail = text, ""
            script = RELOAD.format(version=version, interval=round(poll_seconds * 1000))
            self._send(200, "text/html; charset=utf-8", f"{head}{script}</body>{tail}".encode())

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)  # unless the browser went away

        def log_message(self, format: str, *args: object) -> None:
            pass  # a request every few seconds would bury the terminal

    return Handler
