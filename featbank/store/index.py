"""A persisted similarity index per feature file (FAISS), cosine on L2-normalised rows.

``<file>.faiss`` beside the feature file, with ``<file>.faiss.json`` saying what it
is: the kind and its parameters, the rows it covers (the feature file's first
``rows``), the content they held (:func:`featbank.store.layout.content_digest` of
their ids and row digests) and when it was built. Below
:data:`EXACT_BELOW` rows the index is exact (``IndexFlatIP``: the same neighbours as
a brute-force search); above, an inverted file over the rows' cells with each
vector kept as 8-bit scalars (``IVF<nlist>,SQ8``), trained on a sample and searched
in ``nprobe`` cells, sized from the row count: a byte a dimension, so 5 million
512-d rows take 2.6 GB.

The index is filled by streaming the HDF5 file in chunks, never holding the whole
matrix. It grows with the feature file (only the new rows are added, while the rows
it covers are unchanged) and is rebuilt when they changed (a replaced image, a
repair, a file started anew with ``--force-new``) or when the file's size calls
for the other kind (a file grown past exact search gets an approximate index). It is written
to a temporary name and renamed, under a lock: a killed build leaves the previous
index or none, never half of one.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json, hold_lock
from featbank.store.health import raise_if_damaged
from featbank.store.layout import content_digest
from featbank.store.shards import row_digests

EXACT_BELOW = 200_000  # rows: exact search costs ~0.1 s a query past this on 2 cores
CHUNK = 65_536  # rows read from the HDF5 file at a time
TRAIN_ROWS = 64  # training rows per inverted list (FAISS asks for at least 39)
NPROBE_SHARE = 1 / 128  # of the lists searched (at least 16)


def faiss():
    """The FAISS module (``pip install faiss-cpu``, in ``featbank[index]``)."""
    try:
        import faiss as module
    except ImportError:
        raise BadInput("similarity indexes need FAISS: pip install faiss-cpu "
                       "(or pip install 'featbank[index]')") from None
    return module


@dataclass
class IndexInfo:
    """What ``<file>.faiss.json`` records about an index."""

    kind: str  # "flat" (exact) or "ivf-sq8"
    factory: str  # FAISS's description, e.g. "IVF4096,SQ8"
    dim: int
    rows: int  # the feature file's first ``rows`` rows are in the index, in order
    ids_sha256: str  # what those rows held (layout.content_digest): another means stale
    nlist: int | None = None
    nprobe: int | None = None
    built: str = ""
    grown: str = ""


def index_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".faiss")


def choose(rows: int, dim: int) -> tuple[str, int | None, int | None]:
    """(factory, nlist, nprobe) for ``rows`` vectors of ``dim``: exact below EXACT_BELOW;
    above, about 2 sqrt(rows) lists (FAISS's guidance is 4 to 16 sqrt(rows); fewer, larger
    lists build and add faster on 2 cores), each searched list ~1/128 of them."""
    if rows < EXACT_BELOW:
        return "Flat", None, None
    nlist = 2 ** round(math.log2(2 * math.sqrt(rows)))
    return f"IVF{nlist},SQ8", nlist, max(16, int(nlist * NPROBE_SHARE))


def _held(f: h5py.File, ids: np.ndarray, rows: int) -> str:
    """What the file's first ``rows`` rows hold (their ids and row digests)."""
    if "row_digest" in f:
        digests = f["row_digest"][:rows]
    else:  # a file of an earlier format: its rows' digests computed from the vectors
        digests = np.concatenate([row_digests(ids[a:min(rows, a + CHUNK)].tolist(),
                                              f["features"][a:min(rows, a + CHUNK)])
                                  for a in range(0, rows, CHUNK)] or [np.zeros(0, np.uint64)])
    return content_digest(ids[:rows], digests)


def _normalised(block: np.ndarray) -> np.ndarray:
    block = np.ascontiguousarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def _stream(f: h5py.File, start: int, stop: int):
    for a in range(start, stop, CHUNK):
        yield _normalised(f["features"][a:min(stop, a + CHUNK)])


def _sample(f: h5py.File, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows drawn at random, read in order, chunk by chunk."""
    total = f["features"].shape[0]
    rows = np.sort(rng.choice(total, size=min(n, total), replace=False))
    return np.concatenate([_normalised(f["features"][rows[(rows >= a) & (rows < a + CHUNK)]])
                           for a in range(0, total, CHUNK)])


def _kind(rows: int) -> str:
    return "flat" if choose(rows, 1)[1] is None else "ivf-sq8"


def read_info(path: Path) -> IndexInfo | None:
    meta = index_path(path).with_suffix(".faiss.json")
    if not (meta.is_file() and index_path(path).is_file()):
        return None
    try:
        return IndexInfo(**json.loads(meta.read_text()))
    except (ValueError, TypeError):
        return None  # damaged metadata: the index is rebuilt


def ensure_index(path: str | Path, *, warn=print):
    """The similarity index of the feature file at ``path``, up to date: built when
    absent or stale, grown by the new rows when the file grew. Returns (index, info)."""
    path = Path(path)
    raise_if_damaged(path)
    locks = path.parent / ".locks"
    locks.mkdir(exist_ok=True)
    with hold_lock(locks / (index_path(path).name + ".lock")):
        with h5py.File(path, "r") as f:
            ids = np.array(f["ids"][:], dtype=bytes)
            dim = int(f["features"].shape[1])
            info = read_info(path)
            if info is not None and info.rows <= len(ids) and info.dim == dim and \
                    info.kind == _kind(len(ids)) and info.ids_sha256 == _held(f, ids, info.rows):
                index = faiss().read_index(str(index_path(path)))
                if info.nprobe:  # not stored by FAISS
                    faiss().extract_index_ivf(index).nprobe = info.nprobe
                if info.rows == len(ids):
                    return index, info
                return _grow(path, f, index, info, ids, warn)
            return _build(path, f, ids, dim, warn)


def _build(path: Path, f: h5py.File, ids: np.ndarray, dim: int, warn):
    module = faiss()
    factory, nlist, nprobe = choose(len(ids), dim)
    index = module.index_factory(dim, factory, module.METRIC_INNER_PRODUCT)
    if nlist:
        warn(f"{path.name}: training a {factory} index on {nlist * TRAIN_ROWS:,} sampled rows")
        index.train(_sample(f, nlist * TRAIN_ROWS, np.random.default_rng(0)))
        index.nprobe = nprobe
    for block in _stream(f, 0, len(ids)):
        index.add(block)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = IndexInfo(kind="ivf-sq8" if nlist else "flat", factory=factory, dim=dim,
                     rows=len(ids), ids_sha256=_held(f, ids, len(ids)), nlist=nlist, nprobe=nprobe,
                     built=now, grown=now)
    _write(path, index, info)
    return index, info


def _grow(path: Path, f: h5py.File, index, info: IndexInfo, ids: np.ndarray, warn):
    warn(f"{path.name}: adding {len(ids) - info.rows:,} new rows to its index")
    for block in _stream(f, info.rows, len(ids)):
        index.add(block)
    info.rows, info.ids_sha256 = len(ids), _held(f, ids, len(ids))
    info.grown = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(path, index, info)
    return index, info


def _write(path: Path, index, info: IndexInfo) -> None:
    """Index then metadata, each whole or absent; the metadata names the rows, so an
    index without matching metadata is rebuilt, never trusted."""
    target = index_path(path)
    meta = target.with_suffix(".faiss.json")
    meta.unlink(missing_ok=True)
    with atomic_path(target) as tmp:
        faiss().write_index(index, str(tmp))
    atomic_write_json(meta, asdict(info))


def search(index, queries: np.ndarray, k: int, *, rows: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest indexed rows of each query by cosine: (rows (q, k), similarity (q, k)),
    best first; ``rows`` restricts the search to those feature rows (a gallery)."""
    module = faiss()
    params = None
    if rows is not None:
        selector = module.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
        params = (module.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
                  if hasattr(index, "nprobe") else module.SearchParameters(sel=selector))
    similarity, found = index.search(_normalised(queries), k, params=params)
    return found, similarity
