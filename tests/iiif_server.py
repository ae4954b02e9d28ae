"""A loopback IIIF server for the tests and bench/bench_iiif.py: a static level-0 layout
(featbank.data.iiif_static) served by http.server in a thread, counting the requests
and answering some paths badly on purpose.

faults: path -> "429" (the first two requests answer 429 with Retry-After: 1), "503"
(likewise), "drop" (the first request sends half its body, then closes the connection),
"always429" (every request: 429 with Retry-After: 1), "wait3600" (429 asking for an hour).
"""
from __future__ import annotations

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
        return super().do_GET()

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


@contextmanager
def serve(folder: Path, faults: dict[str, str] | None = None, port: int = 0,
          delay: float = 0.0):
    """Serve ``folder`` on 127.0.0.1 (each image ``delay`` seconds late); yields the server
    (``.base``, ``.counts``, ``.agents``)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Handler, directory=str(folder)))
    server.daemon_threads = True
    server.counts, server.agents, server.lock = Counter(), set(), threading.Lock()
    server.faults, server.delay = faults or {}, delay
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
