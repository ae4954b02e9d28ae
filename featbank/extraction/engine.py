"""Stream a collection's images through frozen backbones into the feature cache.

Each image is decoded once per run, whatever the number of backbones: a
DataLoader worker turns it into one uint8 view per distinct geometry (input
size, resize policy), and each backbone normalises its view on the device.
With ``--layers``, one forward pass fills a feature file per layer
(:mod:`featbank.extraction.targets`). Only images not yet in a target's file
are decoded, so a re-run is a no-op, a layer added later is the only one
computed, and a killed run resumes where it stopped. Batches are cut from the list of
images still to do, in collection order, so a resumed run feeds the model the
same batches as an uninterrupted one (bitwise-equal features on CPU).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_write_json, hold_lock
from featbank.core.hardware import cores
from featbank.data.collection import Collection, new_collection_folder, save_metadata
from featbank.data.saved_splits import follow_saved
from featbank.extraction.compute import (
    decode_mode,
    default_batch_size,
    device_decoder,
    one_precision_per_backbone,
    settle_provenance,
    trunk_runner,
)
from featbank.extraction.config import ExtractConfig
from featbank.extraction.devicedecode import DecoderBalance, device_index
from featbank.extraction.freshness import Freshness, Stamps, freshness
from featbank.extraction.loader import Images, batches_on_device, collate
from featbank.extraction.targets import Target, plan
from featbank.models.fold import can_fold
from featbank.models.inference import (
    TrunkRunner,
    add_share,
    backbone_share,
    one_thread,
    resolve_device,
    resolve_layout,
    resolve_precision,
    resolve_workers,
    shared_views,
    tf32_in_use,
)
from featbank.models.layers import FINAL
from featbank.models.registry import get_spec
from featbank.models.trunks import resolve_weights
from featbank.store.features import count_rows, read_skipped, write_skipped_list
from featbank.store.provenance import feature_path, file_attrs
from featbank.store.repair import repair
from featbank.store.writer import FeatureWriter

MAX_QUEUED = 4

__all__ = ["ExtractConfig", "ExtractReport", "extract"]


@dataclass
class ExtractReport:
    backbone: str
    path: Path
    n_rows: int  # in the file now
    n_new: int  # images this run tried (not in the file before)
    n_skipped: int  # images of the file's collection that could not be decoded
    seconds: float
    n_added: int = 0  # rows this run added
    # From the first decoded batch to the committed file: the steady pipeline,
    # without starting workers or loading the model (None when nothing was to do).
    stream_seconds: float | None = None
    # With --decode device: the images handed to nvJPEG (the others, and any it refused,
    # were decoded by Pillow), and the library that called it.
    device_decoded: int | None = None
    jpeg_decoder: str | None = None
    # The collection, its list of images without a row, and its hidden or system files
    # left out.
    collection: str = ""
    skipped_csv: Path | None = None
    ignored: int = 0
    layer: str = FINAL  # the trunk's layer the file holds (models.layers)
    # Rows replaced (their images changed), taken out (images no longer in the collection)
    # and kept with a new stamp (bytes unchanged): extraction.freshness.
    n_changed: int = 0
    n_removed: int = 0
    n_touched: int = 0
    fetched: int | None = None  # images of a IIIF collection downloaded by this run


def extract(collection: Collection, config: ExtractConfig) -> list[ExtractReport]:
    """Fill the cache for every backbone (and layer) of ``config``; returns one report per
    feature file. A run that fails before anything is computed leaves no collection
    folder behind (``new_collection_folder``)."""
    with new_collection_folder(Path(config.cache_root) / collection.name):
        try:
            reports = _extract(collection, config)
        finally:
            if collection.downloads is not None:
                collection.downloads.finish()
        for report in reports if collection.downloads is not None else []:
            report.fetched = collection.downloads.fetched
        return reports


def _extract(collection: Collection, config: ExtractConfig) -> list[ExtractReport]:
    device = resolve_device(config.device)  # a missing GPU is an error even with nothing to do
    if device.type == "cpu":
        torch.set_num_threads(cores())  # the trunk's intra-op threads: every core
    specs = [get_spec(name) for name in config.backbones]
    decoder = device_decoder(config, specs)
    weights = {s.name: resolve_weights(s, config.weights) for s in specs}
    folder = Path(config.cache_root) / collection.name
    save_metadata(collection, folder)
    follow_saved(collection, folder, warn=lambda m: tqdm.write(m, file=sys.stderr))
    files, targets, trunks = {}, {}, {}
    made = {"decode": decode_mode(config, decoder), "tf32": tf32_in_use(device),
            "precision": resolve_precision(config.precision, device),
            "memory_format": resolve_layout(config.precision, device),
            "compiled": config.compile, "fold_bn": can_fold(device, config.precision)}
    for spec in specs:
        targets[spec.name], trunks[spec.name] = plan(spec, config)
        for t in targets[spec.name]:
            attrs = file_attrs(backbone=spec.name, feature_dim=t.dim,
                               preprocess=spec.preprocess.attrs(),
                               weights=weights[spec.name].attrs(), dtype=config.dtype,
                               collection=collection.name, layer=t.layer.name,
                               layer_index=t.layer.index, pool=t.pool, **made)
            fit = _trained_on(weights[spec.name], collection)
            if fit:
                attrs["trunk_fit"] = json.dumps({"collection": collection.name, "n": len(fit)})
            files[t.key] = FeatureWriter(feature_path(
                config.cache_root, collection.name, spec.name, weights[spec.name].id,
                t.layer.name, t.named_pool), attrs,
                extra={"trunk_fit_ids": fit} if fit else None)
    with ExitStack() as held:
        for out in sorted(files.values(), key=lambda f: f.path):  # one order: no deadlock
            held.enter_context(hold_lock(out.lock_path, on_wait=lambda o=out: tqdm.write(
                f"waiting for another run that is writing {o.path}")))
        reports = _extract_locked(collection, config, targets, files, device, decoder,
                                  trunks)
    atomic_write_json(folder / "extract_config.json",
                      {**asdict(config), "workers": resolve_workers(config.workers, device),
                       "batch_size": config.batch_size or default_batch_size(
                           device, shared_views(specs)[0]), "jpeg_decoder": decoder,
                       "weights_exact": {n: w.exact for n, w in weights.items()}})
    skipped_csv = write_skipped_list(folder, collection.missing,
                                     [f.path for f in files.values() if f.path.is_file()])
    _refuse_empty_files(files, collection, skipped_csv)
    for report in reports:
        report.collection = collection.name
        report.skipped_csv, report.ignored = skipped_csv, collection.ignored
    return reports


def _trained_on(weights, collection: Collection) -> list[str]:
    """The images of ``collection`` a fine-tuned trunk was trained or validated on (its file
    records them): the features' heads are never tested on them."""
    if weights.trained_on is None or weights.trained_on[0] != collection.name:
        return []
    return sorted(weights.trained_on[1])


def _extract_locked(collection, config: ExtractConfig, targets: dict[str, list[Target]],
                    files: dict, device, decoder: str | None, trunks: dict):
    started = time.perf_counter()
    todo, before, fresh = {}, {}, {}
    stamps = Stamps({i: collection.path(i) for i in collection.ids})
    for out in files.values():
        repaired = repair(out.path)  # a damaged file keeps its readable rows; the rest is redone
        if repaired:
            tqdm.write(str(repaired), file=sys.stderr)
    one_precision_per_backbone(files, config)
    for key, out in files.items():
        settle_provenance(out, config)
        out.merge()  # parts left by an interrupted run
        before[key] = count_rows(out.path) if out.path.is_file() else 0
        fresh[key] = freshness(out, collection.ids, stamps, verify=config.verify_images)
        todo[key] = fresh[key].todo
        for note in fresh[key].notes():
            tqdm.write(f"{out.path.name}: {note}", file=sys.stderr)
    pending = [i for i in collection.ids if any(i in t for t in todo.values())]
    first_batch_at, device_decoded = None, None
    specs = [ts[0].spec for ts in targets.values()]
    if pending and config.engine == "ray":  # the trunks' outputs only (ExtractConfig)
        from featbank.extraction.ray_engine import run_ray

        first_batch_at = time.perf_counter()
        run_ray(collection, pending, specs, {k[0]: v for k, v in files.items()},
                {k[0]: v for k, v in todo.items()}, config)
    elif pending:
        first_batch_at, device_decoded = _run(collection, pending, targets, files, todo,
                                              config, device, decoder, trunks)
    for out in files.values():
        if config.prune:
            out.prune()
        out.merge()
    stream = None if first_batch_at is None else time.perf_counter() - first_batch_at
    seconds = time.perf_counter() - started
    return [_report(key, files[key].path, len(todo[key]), before[key], seconds, stream,
                    device_decoded, decoder, fresh[key]) for key in files]


def _run(collection, pending, targets: dict[str, list[Target]], files, todo,
         config: ExtractConfig, device: torch.device, decoder: str | None,
         trunks: dict) -> tuple[float | None, int | None]:
    """Decode, forward and write the ``pending`` ids; ``decoder``: the JPEG decoder
    with ``--decode device``, else None.

    Returns when the first batch arrived, and with ``--decode device`` how many
    images the device decoded.
    """
    specs = [ts[0].spec for ts in targets.values()]
    pres, view_of = shared_views(specs)
    mine = {s.name: {t.key: files[t.key] for t in targets[s.name]} for s in specs}
    runners = {s.name: trunk_runner(s, targets[s.name], mine[s.name], todo, config, device,
                               trunks[s.name]) for s in specs}
    # The ids a backbone's forward pass serves: those any of its layers still needs.
    wanted = {s.name: todo[targets[s.name][0].key] if len(targets[s.name]) == 1 else
              set().union(*(todo[t.key] for t in targets[s.name])) for s in specs}
    paths = [collection.path(i) for i in pending]
    # A IIIF collection's images arrive while the first batches run (data.iiif_store).
    wait = collection.downloads.start(pending) if collection.downloads is not None else None
    on_device = decoder is not None
    workers = resolve_workers(config.workers, device)
    balance = DecoderBalance(workers) if config.decode == "device+pillow" else None
    loader = DataLoader(Images(paths, pres, jpeg_bytes=on_device, balance=balance, wait=wait),
                        batch_size=config.batch_size or default_batch_size(device, pres),
                        num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", shuffle=False,
                        worker_init_fn=one_thread)
    first_batch_at, device_decoded = None, 0
    # Parts are written by one thread, in order, while the device runs the next
    # batches; at most MAX_QUEUED batches wait (their features sit in pinned memory).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featbank-writer") as writer, \
            tqdm(total=len(pending), unit="img", disable=not config.progress,
                 desc=f"{collection.name}: {', '.join(runners)}") as bar:
        queued: deque[Future] = deque()
        for batch, views, reasons in batches_on_device(loader, pres, device, paths,
                                                         decode_ahead=on_device, balance=balance,
                                                         decoder=decoder or "auto"):
            first_batch_at = first_batch_at or time.perf_counter()
            device_decoded += len(batch.jpeg_at)
            ids = [pending[k] for k in batch.index.tolist()]
            for spec in specs:
                write = _submit(ids, reasons, batch.stamps, views[view_of[spec.name]],
                                wanted[spec.name], todo, runners[spec.name], mine[spec.name])
                queued.append(writer.submit(write))
            while len(queued) > MAX_QUEUED * len(specs) or (queued and queued[0].done()):
                queued.popleft().result()  # raises what the writer raised
            bar.update(len(ids))
        while queued:
            queued.popleft().result()
    return first_batch_at, device_decoded if on_device else None


def _refuse_empty_files(files: dict, collection: Collection, skipped_csv: Path) -> None:
    """A feature file exists only once it holds rows: when no image of the collection
    could be decoded, the file a run began is removed (``skipped.csv`` keeps why) and
    the run is bad input."""
    empty = [out for out in files.values() if out.path.is_file() and count_rows(out.path) == 0]
    if not empty:
        return
    for out in empty:
        out.path.unlink()
        if out.shards.is_dir():
            shutil.rmtree(out.shards)
    raise BadInput(f"no image of collection {collection.name!r} could be decoded "
                   f"({len(collection.ids)} listed with their reasons in {skipped_csv}); no "
                   "feature file was written")


def _submit(ids, reasons, stamps, pixels, wanted: set[str], todo: dict, runner: TrunkRunner,
            outs: dict[tuple[str, str], FeatureWriter]) -> Callable[[], None]:
    """Queue one backbone's share of a batch (one forward pass for all its layers, over
    the ``wanted`` ids); the returned call writes each layer's rows as a part of its file."""
    _, good, _ = backbone_share(ids, reasons, wanted)
    if good:
        computed = runner.submit_layers(pixels if len(good) == len(ids)
                                        else pixels[device_index(good, pixels.device)])
    position = {j: k for k, j in enumerate(good)}

    def write() -> None:
        arrays = computed() if good else {}
        for (_, layer), out in outs.items():
            need, mine, _ = backbone_share(ids, reasons, todo[(runner.spec.name, layer)])
            if not need:
                continue
            out.attrs["precision"] = runner.precision  # settled by the first batch's check
            rows = arrays[layer][[position[j] for j in mine]] if mine else \
                np.zeros((0, out.dim), dtype=np.float32)
            add_share(out, ids, reasons, stamps, need, mine, rows)
    return write


def _report(key: tuple[str, str], path: Path, n_new: int, rows_before: int, seconds: float,
            stream_seconds: float | None, device_decoded: int | None,
            decoder: str | None, fresh: Freshness) -> ExtractReport:
    exists = path.is_file()
    n_rows = count_rows(path) if exists else 0
    return ExtractReport(backbone=key[0], layer=key[1], path=path, n_rows=n_rows,
                         n_added=n_rows - rows_before + len(fresh.gone),
                         n_new=n_new, n_skipped=len(read_skipped(path)) if exists else 0,
                         seconds=seconds, stream_seconds=stream_seconds,
                         device_decoded=device_decoded,
                         jpeg_decoder=None if device_decoded is None else decoder,
                         n_changed=fresh.changed, n_removed=len(fresh.gone),
                         n_touched=fresh.touched)
