"""A loopback IIIF server for the tests and bench/bench_iiif.py: a static level-0 layout
(featbank.data.iiif_static) served by http.server in a thread, counting the requests
and answering some paths badly on purpose.

faults: path -> "429" (the first two requests answer 429 with Retry-After: 1), "503"
(likewise), "drop" (the first request sends half its body, then closes the connection),
"always429" (every request: 429 with Retry-After: 1), "wait3600" (429 asking for an hour).

With ``dynamic``, ``/iiif/<n>/full/<w>,<h>/0/default.jpg`` (and ``<w>,``) is made on
request from ``/iiif/<n>/full/full/0/default.jpg`` with Pillow, as a level-2 Image API
server would (no maintained one installs from the package registry), and
:func:`as_level2` rewrites a manifest to say so.
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server = self.server
        path = self.path.split("?")[0]
        with server.lock:
            server.counts[path] += 1
            server.agents.add(self.headers.get("User-Agent", ""))
            seen = server.counts[path]
        fault = server.faults.get(path, "")
        if server.delay and path.endswith(".jpg"):
            time.sleep(server.delay)
        if fault in ("429", "503") and seen <= 2 or fault == "always429":
            return self._refuse(int(fault[-3:]), "1")
        if fault == "wait3600":
            return self._refuse(429, "3600")
        if fault == "drop" and seen == 1:
            return self._drop()
        resized = _SIZE.fullmatch(path) if server.dynamic else None
        if resized and not Path(self.translate_path(path)).is_file():
            return self._resized(*resized.groups())
        return super().do_GET()

    def _resized(self, image: str, width: str, height: str):
        from PIL import Image

        original = Path(self.translate_path(f"/iiif/{image}/full/full/0/default.jpg"))
        if not original.is_file():
            return self.send_error(404)
        with Image.open(original) as im:
            w = int(width)
            h = int(height) if height else round(im.height * w / im.width)
            out = io.BytesIO()
            im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS).save(out, "JPEG",
                                                                             quality=95)
        data = out.getvalue()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, after: str):
        self.send_response(status)
        self.send_header("Retry-After", after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drop(self):
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)


_SIZE = re.compile(r"/iiif/(\d+)/full/(\d+),(\d*)/0/default\.jpg")


def as_level2(manifest: Path) -> None:
    """A manifest of featbank.data.iiif_static, its services said to be level 2."""
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace("level0", "level2"), encoding="utf-8")
    json.loads(manifest.read_text(encoding="utf-8"))


@contextmanager
def serve(folder: Path, faults: dict[str, str] | None = None, port: int = 0,
          delay: float = 0.0, dynamic: bool = False):
    """Serve ``folder`` on 127.0.0.1 (each image ``delay`` seconds late); yields the server
    (``.base``, ``.counts``, ``.agents``)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Handler, directory=str(folder)))
    server.daemon_threads = True
    server.counts, server.agents, server.lock = Counter(), set(), threading.Lock()
    server.faults, server.delay, server.dynamic = faults or {}, delay, dynamic
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def image_requests(server) -> int:
    """Requests for images (not manifests or info.json)."""
    return sum(n for path, n in server.counts.items() if path.endswith(".jpg"))
