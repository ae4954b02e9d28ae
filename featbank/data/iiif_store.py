"""A IIIF collection in the cache: its documents, its catalogue and its images, fetched
politely in the background while extraction runs.

Layout, under ``<cache>/<collection>/iiif/`` (docs/iiif.md)::

    documents/<digest>.json   each manifest or collection as last fetched (--offline reads these)
    images/<image id>         one image per canvas, written whole or not at all
    failed/<image id>.txt     why a canvas's image could not be had this run
    canvases.csv              the catalogue: canvas, manifest, label, rights, attribution, URL

A stored image is never fetched again (a re-run makes no image request); the documents
are fetched again on every run that is not ``--offline``, so a changed label reaches the
labels, and through them every result, on the next run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_write_json, atomic_write_text
from featbank.data import iiif
from featbank.data.collection import (
    Collection,
    check_name,
    chosen_tasks,
    clean_label,
    new_collection_folder,
)
from featbank.data.fetch import NOT_THERE, Fetched, Polite, Politeness

WAIT_LIMIT = 3600.0  # seconds a worker waits for one image before giving it up


def from_iiif(source: str, *, cache: str | Path, name: str | None = None,
              label_columns: list[str] | None = None, short_side: int = 299,
              offline: bool = False, politeness: Politeness | None = None,
              separator: str = ";", warn: Callable[[str], None] = print) -> Collection:
    """The collection of a IIIF manifest or collection (URL or file): one image per canvas,
    one task per metadata label (``label_columns`` picks), its downloads ready to start
    (``Collection.downloads``)."""
    name = check_name(name or iiif.default_name(source))
    folder = Path(cache) / name / "iiif"
    client = Polite(politeness, offline=offline)
    with new_collection_folder(folder.parent):  # a source that is not IIIF leaves no folder
        canvases = iiif.read_canvases(source, lambda ref: _document(ref, folder, client),
                                      warn=warn)
        if not canvases:
            raise BadInput(f"{source} lists no canvas")
    by_id = {iiif.image_id(c.id): c for c in canvases}
    ids = sorted(by_id)
    labels, multi = _tasks([by_id[i] for i in ids], label_columns, separator, source)
    found = Collection(name=name, root=folder / "images", ids=ids, labels=labels,
                       source=f"iiif:{source}", multi_label=multi)
    found.downloads = Downloads(by_id, folder, client, short_side)
    found.downloads.write_catalogue()
    return found


def _document(ref: str, folder: Path, client: Polite):
    """A manifest or collection by URL (fetched unless --offline; stored) or by path."""
    if "://" not in ref:
        path = Path(ref)
        if not path.is_file():
            raise MissingFile(f"IIIF manifest {ref} does not exist (give a URL or a file)")
        return _json(path.read_bytes(), ref)
    stored = folder / "documents" / f"{hashlib.sha256(ref.encode()).hexdigest()[:20]}.json"
    if client.offline:
        if not stored.is_file():
            raise MissingFile(f"{ref} was never fetched into {stored.parent}; run once "
                              "without --offline")
        return _json(stored.read_bytes(), ref)
    try:
        document = client.get_json(ref)
    except Fetched as err:
        raise BadInput(f"cannot read the IIIF document {ref}: {err}") from None
    stored.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stored, document)
    return document


def _json(data: bytes, where: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadInput(f"{where} is not JSON ({err})") from None


def _tasks(canvases: list[iiif.Canvas], columns: list[str] | None, separator: str, source):
    """task -> labels aligned with ``canvases``, and the multi-label tasks (a canvas with
    several values for one label)."""
    known = list(dict.fromkeys(k for c in canvases for k in c.metadata))
    tasks = chosen_tasks(known, columns, lambda c: f"{source}: no canvas has the metadata "
                         f"label {c!r}; its labels are {', '.join(known) or 'none'}")
    labels, multi = {}, {}
    for task in tasks:
        cells = [[v.replace(separator, ",") for v in c.metadata.get(task, [])] for c in canvases]
        if any(len(v) > 1 for v in cells):
            multi[task] = separator
        labels[task] = [clean_label(separator.join(sorted(set(v)))) if v else None
                        for v in cells]
    return labels, multi


class Downloads:
    """The images of a IIIF collection, fetched in collection order by a pool of threads
    while DataLoader workers wait for each file (:class:`WaitFor`)."""

    def __init__(self, canvases: dict[str, iiif.Canvas], folder: Path, client: Polite,
                 short_side: int):
        self.canvases, self.folder, self.client = canvases, folder, client
        self.short_side = short_side
        self.root, self.failed_dir = folder / "images", folder / "failed"
        self.urls: dict[str, str] = {}
        self.fetched = 0
        self.pool: ThreadPoolExecutor | None = None

    def start(self, ids: list[str]) -> "WaitFor":
        """Fetch the images of ``ids`` not stored yet, in this order; returns what a
        worker calls to wait for an image."""
        todo = [i for i in ids if not (self.root / i).is_file()]
        if todo and self.root.is_dir():  # what a killed download left half-written
            for partial in self.root.rglob(".*.part"):
                partial.unlink(missing_ok=True)
        for i in todo:
            (self.failed_dir / f"{i}.txt").unlink(missing_ok=True)
        if todo:
            workers = max(1, self.client.politeness.per_host) * 2
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featbank-iiif")
            for i in todo:
                self.pool.submit(self._fetch, i)
        return WaitFor(self.root, self.failed_dir)

    def fetch_all(self) -> None:
        """Fetch every image not stored yet and wait for them (fine-tuning reads them all)."""
        self.start(sorted(self.canvases))
        self.finish(cancel=False)

    def _fetch(self, image: str) -> None:
        try:
            self.urls[image] = fetch_image(self.client, self.canvases[image],
                                           self.root / image, self.short_side)
            self.fetched += 1
        except Fetched as err:
            _mark_failed(self.failed_dir / f"{image}.txt", str(err))
        except Exception as err:  # a thread's surprise must still free its waiting worker
            _mark_failed(self.failed_dir / f"{image}.txt", f"{type(err).__name__}: {err}")

    def finish(self, cancel: bool = True) -> None:
        """Wait for the downloads under way (with ``cancel``, drop those not begun: what a
        failed extraction no longer waits for) and record the URLs in the catalogue."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)
            self.pool = None
        self.write_catalogue()

    def write_catalogue(self) -> None:
        path = self.folder / "canvases.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        urls = _stored_urls(path) | self.urls
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(
            iiif.catalogue_rows(list(self.canvases.values()), urls))
        atomic_write_text(path, buffer.getvalue())


def _stored_urls(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["id"]: r["image_url"] for r in csv.DictReader(fh) if r.get("image_url")}


def _mark_failed(marker: Path, reason: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, f"IIIF: {reason}".replace("\n", " "))


def fetch_image(client: Polite, canvas: iiif.Canvas, path: Path, short_side: int) -> str:
    """Download a canvas's image to ``path``, trying its candidate URLs in order (the next
    only when a server has no such image or size); returns the URL that served it.

    A level-0 service whose sizes the manifest does not list is asked for its info.json
    (the sizes it serves) when the full image is larger than needed, or when no URL
    guessed without it served the image."""
    if canvas.service is None and not canvas.image:
        raise Fetched("the canvas paints no image")
    level0 = canvas.service is not None and canvas.service.level == 0 and \
        not canvas.service.sizes
    small = 0 < min(canvas.width, canvas.height) <= short_side  # full size is what we need
    info = _info(client, canvas) if level0 and not small else None
    tried: dict[str, Fetched] = {}
    url = _first_served(client, iiif.candidate_urls(canvas, short_side, info), path, tried)
    if url is None and level0 and info is None and all(
            e.status in NOT_THERE for e in tried.values()):
        info = _info(client, canvas)
        url = _first_served(client, iiif.candidate_urls(canvas, short_side, info), path, tried)
    if url is None:
        reasons = dict.fromkeys(str(e) for e in tried.values())
        raise Fetched(f"could not fetch the image ({'; '.join(reasons)})")
    return url


def _info(client: Polite, canvas: iiif.Canvas) -> dict | None:
    try:
        return client.get_json(f"{canvas.service.id}/info.json")
    except Fetched:
        return None


def _first_served(client: Polite, urls: list[str], path: Path, tried: dict) -> str | None:
    """The first of ``urls`` not tried yet that serves the image (saved at ``path``); None
    when none does. A failure other than "no such image" stops the search."""
    for url in urls:
        if url in tried:
            continue
        try:
            client.download(url, path)
            return url
        except Fetched as err:
            tried[url] = err
            if err.status not in NOT_THERE:
                return None
    return None


class WaitFor:
    """Called by a DataLoader worker with an image's path: "" once the file is there, else
    the reason it will not be (picklable: only paths)."""

    def __init__(self, root: Path, failed_dir: Path):
        self.root, self.failed_dir = Path(root), Path(failed_dir)

    def __call__(self, path: Path) -> str:
        path = Path(path)
        marker = self.failed_dir / f"{path.relative_to(self.root).as_posix()}.txt"
        deadline, pause = time.monotonic() + WAIT_LIMIT, 0.002
        while True:
            if path.is_file():
                return ""
            if marker.is_file():
                return marker.read_text(encoding="utf-8") or "IIIF: could not fetch the image"
            if time.monotonic() > deadline:
                return f"IIIF: the download did not finish within {WAIT_LIMIT:.0f} s"
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def canvas_json(canvas: iiif.Canvas) -> str:
    """A canvas as JSON, for a Ray task that fetches its image (:func:`ensure_image`)."""
    return json.dumps(asdict(canvas))


_CLIENTS: dict[tuple, Polite] = {}


def ensure_image(canvas: str, path: str | os.PathLike, short_side: int,
                 politeness: Politeness, offline: bool) -> str:
    """In a Ray task: the image of ``canvas`` (:func:`canvas_json`) at ``path``, fetched
    unless stored; "" or the reason it cannot be had. One client per process and settings."""
    path = Path(path)
    if path.is_file():
        return ""
    key = (politeness, offline)
    client = _CLIENTS.setdefault(key, Polite(politeness, offline=offline))
    fields = json.loads(canvas)
    service = fields.pop("service")
    found = iiif.Canvas(**fields, service=iiif.Service(**service) if service else None)
    try:
        fetch_image(client, found, path, short_side)
        return ""
    except Fetched as err:
        return f"IIIF: {err}"
