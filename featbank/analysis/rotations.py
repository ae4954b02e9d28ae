"""Features of every image turned by 90, 180 and 270 degrees, to find rotated copies.

CNN features are not rotation-invariant: a scan stored on its side lands far
from its original (0 of 20 rotated copies grouped at cosine 0.92). Each image
of a feature file is therefore run through the file's own trunk and
preprocessing three more times, turned (PIL's transpose: exact, lossless),
and the turned vectors query the file's similarity index. A copy of image
``a`` turned by ``r`` degrees counter-clockwise is found by ``a`` turned by
``r``.

The vectors are kept under ``<cache>/<collection>/analysis/rotations/``,
named by the digest of what the feature file holds: a changed image, or any
re-extraction, makes a new file, and a re-run with the same features runs
no trunk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featbank.analysis.common import output_folder, preprocess_change, trunk_weights
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path
from featbank.data.collection import Collection
from featbank.store.features import FeatureFile
from featbank.store.provenance import recorded

ANGLES = (90, 180, 270)  # counter-clockwise, PIL's meaning
TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
         270: Image.Transpose.ROTATE_270}
BATCH = 32  # images (each in three turns) a forward pass


def rotated_features(collection: Collection, entry: FeatureFile, ids: list[str],
                     provenance: dict, *, cache_root: str | Path,
                     weights_file: str | None = None, device: str = "cpu",
                     progress=lambda it, **_: it) -> np.ndarray:
    """float32 (len(ANGLES), len(ids), dim): row k of plane a is the file's row k
    (``ids[k]``) turned by ``ANGLES[a]``, L2-normalised (zero where it cannot be read)."""
    folder = output_folder(cache_root, collection.name, "rotations")
    path = folder / f"{entry.path.stem}__{entry.content_sha256.split(':')[-1][:20]}.npy"
    if path.is_file():
        kept = np.load(path)
        if kept.shape == (len(ANGLES), len(ids), entry.feature_dim):
            return kept
    for stale in folder.glob(f"{entry.path.stem}__*.npy"):
        stale.unlink(missing_ok=True)
    planes = _run(collection, entry, ids, provenance, weights_file, device, progress)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, planes)
    return planes


def _run(collection, entry, all_ids, provenance, weights_file, device, progress):
    import torch

    from featbank.data.images import DecodeError, load_rgb, min_decode_size, to_view
    from featbank.models.inference import TrunkRunner, autocast_dtype, resolve_device
    from featbank.models.registry import get_spec
    from featbank.models.trunks import load_trunk

    spec = get_spec(entry.backbone)
    change = preprocess_change(provenance, spec.preprocess.attrs())
    if change:  # the turned images must be preprocessed as the file's were
        key, was, now = change
        raise BadInput(f"{entry.path.name} was extracted with {key}={was!r}, but "
                       f"{entry.backbone} now preprocesses with {now!r}; re-extract it")
    place = resolve_device(device)
    trunk = load_trunk(spec, trunk_weights(entry, provenance, weights_file),
                       option="--weights-file", progress=False)
    # as the file's rows were computed: its precision (kept, not checked again), layout and
    # batch norms
    precision = str(recorded(provenance, "precision"))
    runner = TrunkRunner(spec, trunk, place, autocast_dtype(precision, place), check=False,
                         layout=str(recorded(provenance, "memory_format")),
                         fold=bool(recorded(provenance, "fold_bn")))
    pre, size = spec.preprocess, min_decode_size([spec.preprocess])
    out = np.zeros((len(ANGLES), len(all_ids), entry.feature_dim), np.float32)
    blank = torch.zeros(3, pre.input_size, pre.input_size, dtype=torch.uint8)
    starts = range(0, len(all_ids), BATCH)
    for start in progress(starts, desc="turned images", unit="batch"):
        ids = all_ids[start:start + BATCH]
        views, readable = [], []
        for image_id in ids:
            try:
                image = load_rgb(collection.path(image_id), min_size=size)
                views += [to_view(image.transpose(TURNS[a]), pre) for a in ANGLES]
                readable.append(True)
            except DecodeError:
                views += [blank] * len(ANGLES)
                readable.append(False)
        vectors = runner.submit(torch.stack(views))().astype(np.float32)
        if vectors.shape[1] != entry.feature_dim:
            raise BadInput(f"{entry.path.name} holds {entry.feature_dim}-d vectors but its "
                           f"trunk gives {vectors.shape[1]}-d ones; re-extract it")
        vectors = vectors.reshape(len(ids), len(ANGLES), -1).transpose(1, 0, 2)
        vectors[:, ~np.array(readable)] = 0
        out[:, start:start + len(ids)] = vectors
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
