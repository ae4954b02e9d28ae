"""Polite fetching against a loopback server that misbehaves on purpose: Retry-After
honoured, a dropped connection fetched again, nothing half-written, failures as reasons."""
import time

import pytest
from helpers import make_image
from iiif_server import serve

from featbank.core.version import __version__
from featbank.data.fetch import Fetched, Polite, Politeness

FAST = Politeness(retries=3, backoff=0.05, max_wait=30)


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "site"
    for name in ("a", "b", "c", "d", "e"):
        make_image(folder / f"{name}.jpg", ord(name), size=(300, 200), quality=95)
    return folder


def test_429_and_503_wait_as_long_as_retry_after_says_then_succeed(site, tmp_path):
    with serve(site, faults={"/a.jpg": "429", "/b.jpg": "503"}) as server:
        client = Polite(FAST)
        started = time.monotonic()
        client.download(f"{server.base}/a.jpg", tmp_path / "a.jpg")
        waited = time.monotonic() - started
        client.download(f"{server.base}/b.jpg", tmp_path / "b.jpg")
    assert waited >= 2.0  # two answers of Retry-After: 1
    assert server.counts["/a.jpg"] == 3 and server.counts["/b.jpg"] == 3
    assert (tmp_path / "a.jpg").read_bytes() == (site / "a.jpg").read_bytes()
    assert server.agents == {client.headers["User-Agent"]}
    assert f"featbank/{__version__}" in client.headers["User-Agent"]


def test_a_connection_dropped_mid_body_is_fetched_again_and_written_whole(site, tmp_path):
    with serve(site, faults={"/c.jpg": "drop"}) as server:
        Polite(FAST).download(f"{server.base}/c.jpg", tmp_path / "out" / "c.jpg")
    assert server.counts["/c.jpg"] == 2
    assert (tmp_path / "out" / "c.jpg").read_bytes() == (site / "c.jpg").read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c.jpg"]  # no part left


def test_failures_are_reasons_and_leave_no_file(site, tmp_path):
    with serve(site, faults={"/d.jpg": "always429", "/e.jpg": "wait3600"}) as server:
        client = Polite(FAST)
        with pytest.raises(Fetched, match="HTTP 404") as missing:
            client.download(f"{server.base}/nothing.jpg", tmp_path / "n.jpg")
        assert missing.value.status == 404
        with pytest.raises(Fetched, match="HTTP 429 after 3 retries"):
            client.download(f"{server.base}/d.jpg", tmp_path / "d.jpg")
        started = time.monotonic()
        with pytest.raises(Fetched, match="asked to wait 3600 s"):
            client.download(f"{server.base}/e.jpg", tmp_path / "e.jpg")
        assert time.monotonic() - started < 10  # refused, not slept
    assert server.counts["/d.jpg"] == 4  # the first try and three retries
    with pytest.raises(Fetched, match="connection refused"):
        Polite(Politeness(retries=0)).download(server.base + "/a.jpg", tmp_path / "x.jpg")
    assert not any(tmp_path.glob("*.jpg"))


def test_offline_fetches_nothing(site, tmp_path):
    with serve(site) as server:
        with pytest.raises(Fetched, match="--offline"):
            Polite(FAST, offline=True).download(f"{server.base}/a.jpg", tmp_path / "a.jpg")
    assert not server.counts


def _eleven_requests(site, tmp_path) -> float:
    client = Polite(Politeness(rate=10.0, per_host=8))
    with serve(site) as server:
        started = time.monotonic()
        for k in range(11):
            client.download(f"{server.base}/a.jpg", tmp_path / f"{k}.jpg")
        elapsed = time.monotonic() - started
    assert client.requests == 11
    return elapsed


def test_requests_to_another_host_keep_to_the_rate_this_machine_s_only_to_connections(
        site, tmp_path, monkeypatch):
    assert _eleven_requests(site, tmp_path) < 0.9  # 127.0.0.1 spares no one: not paced
    monkeypatch.setattr("featbank.data.fetch.LOOPBACK", set())  # as if it were a museum's
    assert _eleven_requests(site, tmp_path) >= 0.95  # 11 at 10 a second: 10 gaps of 0.1 s
