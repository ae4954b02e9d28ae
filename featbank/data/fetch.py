"""Polite HTTP for collections published online: urllib3, with its ``Retry``.

One :class:`Polite` client per run: a User-Agent naming featbank and its version, at most
``per_host`` requests in flight and ``rate`` requests a second to each host (a server on
this machine, 127.0.0.1 or localhost, only the first: it spares no one else), retries
with exponential backoff on connection errors and on 429, 500, 502, 503 and 504, and a
server's ``Retry-After`` honoured (up to ``max_wait`` seconds: a server that asks for
longer is a failure with that reason, not a run that hangs). A body cut off mid-transfer
is fetched again. Files are written whole or not at all (a temporary name, then a
rename), so a killed download leaves nothing a later run would take for an image. The
environment's proxies (``https_proxy``, ``no_proxy``) and CA bundle (``SSL_CERT_FILE``,
``REQUESTS_CA_BUNDLE``) are read once.

urllib3 rather than requests (which wraps it): a small image's fetch cost a third of the
CPU time through urllib3 alone, time a two-core machine takes from the forward pass
(bench/bench_iiif.py).

Failures are returned as reasons (one line, e.g. ``HTTP 404 Not Found``), never raised:
every canvas that cannot be fetched is a row of skipped.csv.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from featbank.core.version import __version__

USER_AGENT = (f"featbank/{__version__} (deep features of heritage collections; "
              "+https://github.com/featbank/featbank)")
RETRY_STATUS = (429, 500, 502, 503, 504)
NOT_THERE = (400, 404, 410, 501)  # the next candidate URL may still serve the image
LOOPBACK = {"127.0.0.1", "localhost", "::1"}  # paced by nobody: only the connection limit


@dataclass(frozen=True)
class Politeness:
    """How hard a run may press one server (picklable: Ray tasks build their own client)."""

    per_host: int = 4  # requests in flight to one host
    rate: float = 8.0  # requests a second to one host
    retries: int = 5
    backoff: float = 0.5  # seconds, doubled each retry
    max_wait: float = 120.0  # the longest Retry-After honoured
    timeout: float = 60.0  # seconds without a byte before a request fails


class Fetched(Exception):
    """A request that did not give the document or image; ``str()`` is the reason."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class Polite:
    """An HTTP client shared by a run's download threads (see the module docstring)."""

    def __init__(self, politeness: Politeness | None = None, *, offline: bool = False):
        import urllib3

        self.politeness = p = politeness or Politeness()
        self.offline = offline
        self.retry = _retry(p)
        self.headers = {"User-Agent": USER_AGENT}
        pools = dict(num_pools=64, maxsize=max(p.per_host, 4), headers=self.headers,
                     ca_certs=os.environ.get("SSL_CERT_FILE")
                     or os.environ.get("REQUESTS_CA_BUNDLE"))
        self.direct = urllib3.PoolManager(**pools)
        self.proxied = {scheme: urllib3.ProxyManager(url, **pools)
                        for scheme, url in urllib.request.getproxies().items()
                        if scheme in ("http", "https")}
        self._hosts: dict[str, tuple[threading.Semaphore, list[float]]] = {}
        self._lock = threading.Lock()
        self.requests = 0  # sent, retries included: a re-run's count is what the docs promise

    def _pool(self, url: str):
        parts = urlsplit(url)
        proxied = self.proxied.get(parts.scheme)
        return self.direct if proxied is None or _bypass(parts.hostname or "") else proxied

    def _host(self, url: str):
        host = urlsplit(url).netloc
        with self._lock:
            if host not in self._hosts:
                self._hosts[host] = (threading.Semaphore(self.politeness.per_host), [0.0])
            return self._hosts[host]

    def _pace(self, url: str, next_at: list[float]) -> None:
        if urlsplit(url).hostname in LOOPBACK:  # this machine's own server: no one to spare
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, next_at[0])
            next_at[0] = start + 1.0 / self.politeness.rate
        if start > now:
            time.sleep(start - now)

    def _get(self, url: str):
        """The response to GET ``url``, its body not read yet; ``Fetched`` unless 200."""
        import urllib3

        if self.offline:
            raise Fetched("not stored, and --offline forbids fetching it")
        slots, next_at = self._host(url)
        with slots:
            self._pace(url, next_at)
            self.requests += 1
            try:
                response = self._pool(url).request(
                    "GET", url, retries=self.retry, preload_content=False,
                    timeout=urllib3.Timeout(connect=min(10.0, self.politeness.timeout),
                                            read=self.politeness.timeout))
            except _TooLong as err:
                raise Fetched(str(err)) from None
            except urllib3.exceptions.MaxRetryError as err:
                raise Fetched(_retry_reason(err, self.politeness.retries)) from None
            except urllib3.exceptions.HTTPError as err:
                raise Fetched(_error_reason(err)) from None
        if response.status != 200:
            response.drain_conn()
            response.release_conn()
            raise Fetched(f"HTTP {response.status} {_phrase(response.status)}".strip(),
                          response.status)
        return response

    def get_json(self, url: str):
        """A JSON document; ``Fetched`` with the reason when it cannot be had."""
        import urllib3

        response = self._get(url)
        try:
            return json.loads(response.read())
        except (ValueError, UnicodeDecodeError):
            raise Fetched(f"{url} did not answer JSON ({response.headers.get('content-type')})")
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise Fetched(_error_reason(err)) from None
        finally:
            response.release_conn()

    def download(self, url: str, path: Path) -> None:
        """``url``'s body into ``path``, whole or not at all; a body cut off mid-transfer is
        fetched again (``retries`` times). Raises ``Fetched`` with the reason."""
        import urllib3

        p = self.politeness
        for attempt in range(p.retries + 1):
            try:
                self._stream(self._get(url), path)
                return
            except (urllib3.exceptions.HTTPError, OSError, _Short) as err:
                reason = _error_reason(err)
                if attempt == p.retries:
                    raise Fetched(f"{reason} (after {p.retries + 1} tries)") from None
                time.sleep(p.backoff * 2 ** attempt)

    def _stream(self, response, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        expected = response.headers.get("content-length")
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        got = 0
        try:
            with open(partial, "wb") as fh:
                for chunk in response.stream(1 << 16):
                    fh.write(chunk)
                    got += len(chunk)
            if expected is not None and expected.isdigit() and got != int(expected):
                raise _Short(f"connection dropped after {got} of {expected} bytes")
            if got == 0:
                raise _Short("empty answer (0 bytes)")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            response.release_conn()


@functools.lru_cache(maxsize=1024)
def _bypass(host: str) -> bool:
    """Whether ``no_proxy`` names ``host`` (read once per host)."""
    return bool(urllib.request.proxy_bypass(host))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Short(OSError):
    pass


def _retry(p: Politeness):
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        """urllib3's Retry, refusing a Retry-After above ``max_wait`` (it would hang the run)."""

        def get_retry_after(self, response):
            wait = super().get_retry_after(response)
            if wait is not None and wait > p.max_wait:
                raise _TooLong(f"the server asked to wait {wait:.0f} s, more than the "
                               f"{p.max_wait:.0f} s a run waits")
            return wait

    return CappedRetry(total=p.retries, connect=p.retries, read=p.retries,
                       status=p.retries, backoff_factor=p.backoff, backoff_max=p.max_wait,
                       status_forcelist=RETRY_STATUS, allowed_methods=frozenset({"GET"}),
                       respect_retry_after_header=True, raise_on_status=True)


class _TooLong(Exception):
    pass


def _retry_reason(err, retries: int) -> str:
    """Why urllib3 gave up (``MaxRetryError``): the status the server kept answering, or
    the connection error of the last try."""
    cause = getattr(err, "reason", None)
    for status in RETRY_STATUS:
        if f"too many {status} error" in str(cause):
            return f"HTTP {status} after {retries} retries ({_retry_status(status)})"
    return _error_reason(cause) if isinstance(cause, Exception) else f"gave up: {err}"[:160]


def _retry_status(status: int) -> str:
    return {429: "too many requests", 503: "service unavailable"}.get(status, "server error")


def _error_reason(err: Exception) -> str:
    text = str(err)
    if isinstance(err, _Short):
        return text
    name = type(err).__name__
    if "Read timed out" in text or name.endswith("Timeout"):
        return "timed out"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection dropped mid-transfer"
    if "Connection refused" in text:
        return "connection refused"
    return f"{name}: {text[:160]}"
