"""What a feature file records about how its rows were made, and the checks on it.

The attributes of a feature file (the contract in docs/design.md): ``backbone``,
``feature_dim``, ``weights`` (``imagenet``, ``random`` or ``sha256:<hex>``),
``weights_exact`` (the exact weights, e.g. ``torchvision:resnet50.IMAGENET1K_V2``),
``weights_hash`` (the published checkpoint hash, when there is one),
``weights_source`` (a weights file's path when extracted, else empty),
``weights_label`` (what tables show), ``input_size``, ``mean``, ``std``,
``resize``, ``crop_pct``, ``interpolation``, ``dtype``, ``collection``,
``featbank_version``, ``torch_version``, ``torchvision_version``, ``created``,
and how the rows were computed: ``decode`` (``pillow``, ``nvjpeg:<library>``,
or ``nvjpeg+pillow:<library>`` when Pillow took a share of the JPEGs),
``precision`` (``fp32``, ``bf16``, ``fp16``), ``tf32``, ``torch_release`` and
``torchvision_release`` (major.minor); and where in the trunk: ``layer``
(``final``, or a stage's name), ``layer_index`` (its place from the input, 1
first; absent for a ``final`` file made without looking inside the trunk) and
``pool`` (how the layer's output became a vector: ``model``, ``gap``, ``cls``,
``mean``; see :mod:`featbank.models.layers`). Rows from two runs share a file
only when every :data:`PROVENANCE_KEYS` attribute agrees.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from featbank.core.errors import BadInput
from featbank.core.fileio import safe_name
from featbank.core.version import __version__

FINAL = "final"  # the layer of a file that holds the trunk's output
# Attributes that must agree before rows from two runs may share a file.
PROVENANCE_KEYS = ("backbone", "feature_dim", "weights", "weights_exact", "input_size", "mean",
                   "std", "resize", "crop_pct", "interpolation", "dtype", "decode", "precision",
                   "tf32", "torch_release", "torchvision_release", "layer", "pool")
# Keys files written before them do not record, read as the value every run used then
# (featbank's defaults until the key was added, 2026-11-30): Pillow decoding, fp32 (the
# CPU's only precision; a GPU run's --precision auto was not recorded), no TF32, the
# trunk's output pooled its own way, the contiguous memory format (a CPU's; it is for
# the record and for resuming alike, never a reason to refuse rows), batch norms not
# folded (the same). The releases come from the versions recorded.
HISTORICAL = {"decode": "pillow", "precision": "fp32", "tf32": False, "layer": FINAL,
              "pool": "model", "memory_format": "contiguous", "fold_bn": False}
LATER_KEYS = (*HISTORICAL, "torch_release", "torchvision_release")


def feature_path(cache_root: str | os.PathLike, collection: str, backbone: str,
                 weights: str, layer: str = FINAL, pool: str = "") -> Path:
    """``<cache>/<collection>/features/<backbone>__<weights>[__<layer>][__<pool>].h5``.

    weights : ``imagenet``, ``random`` or ``sha256:<hex>`` (shortened to 12 digits);
    layer : named when not ``final``; pool : named when not the layer's default.
    """
    tag = weights if ":" not in weights else "sha256-" + weights.split(":", 1)[1][:12]
    parts = [backbone, tag] + ([layer] if layer != FINAL else []) + ([pool] if pool else [])
    return Path(cache_root) / collection / "features" / ("__".join(map(safe_name, parts)) + ".h5")


def file_attrs(*, backbone: str, feature_dim: int, preprocess: dict, weights: dict,
               dtype: str, collection: str, decode: str = "pillow", precision: str = "fp32",
               tf32: bool = False, layer: str = FINAL, layer_index: int | None = None,
               pool: str = "model", memory_format: str = "contiguous",
               compiled: bool = False, fold_bn: bool = False) -> dict:
    """The attributes of a new feature file.

    preprocess : ``Preprocess.attrs()``; weights : ``Weights.attrs()`` (id, exact, hash);
    decode, precision, tf32 : how the rows are computed (memory_format, compiled and fold_bn,
    batch norms folded into the convolutions, too, for the record: they change the sums at
    the rounding level only); layer, layer_index, pool :
    where in the trunk (see the module docstring).
    """
    if dtype not in ("float32", "float16"):
        raise BadInput(f"unknown storage dtype {dtype!r}; use float32 or float16")
    return {"backbone": backbone, "feature_dim": feature_dim, **weights, **preprocess,
            "dtype": dtype, "decode": decode, "precision": precision, "tf32": bool(tf32),
            "memory_format": memory_format, "compiled": bool(compiled),
            "fold_bn": bool(fold_bn),
            "layer": layer, **({"layer_index": int(layer_index)} if layer_index else {}),
            "pool": pool, "collection": collection, "featbank_version": __version__,
            "torch_version": _version("torch"), "torchvision_version": _version("torchvision"),
            "torch_release": _release("torch"), "torchvision_release": _release("torchvision"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _release(package: str) -> str:
    """``2.14`` of ``2.14.1+cu130``: a release's features change with major.minor."""
    return ".".join(_version(package).split("+")[0].split(".")[:2])


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def plain_attrs(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def provenance_value(attrs: dict, key: str):
    """A provenance attribute; files from before ``weights_exact`` existed stand for the
    same exact weights when their id already names them (random, a file's sha256)."""
    if key == "weights_exact" and key not in attrs and attrs.get("weights") != "imagenet":
        return attrs.get("weights")
    if key == "weights_exact" and attrs.get(key, "").startswith("random"):
        return "random"  # "random:seed0" before the init was named: the same library init
    return attrs.get(key)


def weights_label(wid: str, exact: str, description: dict | None = None,
                  source: str = "") -> str:
    """Readable weights for tables: ``imagenet IMAGENET1K_V1``; ``random`` (the library's
    own initialisation, seed 0); ``He-uniform (seed N)`` (fine-tuning from scratch);
    ``θ̂ <run> (<collection>/<task>)`` for a trunk fine-tuned by featbank; else
    ``file <name> (sha256:<12 hex>)``."""
    if wid == "imagenet":
        return f"imagenet {exact.rsplit('.', 1)[-1]}" if exact and exact != "imagenet" else wid
    if wid == "random":
        return "random"
    if wid == "he-uniform":
        return f"He-uniform ({exact.rsplit(':', 1)[-1].replace('seed', 'seed ')})"
    description = description or {}
    if description.get("collection") and description.get("task"):
        run = Path(source).parent.name if source else wid[:19]
        return f"θ̂ {run} ({description['collection']}/{description['task']})"
    name = f"file {Path(source).name} " if source else ""
    return f"{name}({wid[:19]})" if name else wid[:19]


def same_attr(a, b) -> bool:
    """Two attribute values agree (sequences to float tolerance)."""
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return a == b


def recorded(attrs: dict, key: str):
    """What a file records for ``key``, with the values of its time for the keys added
    after it was written (:data:`HISTORICAL`; releases from the versions recorded)."""
    value = provenance_value(attrs, key)
    if value is not None or key not in LATER_KEYS:
        return value
    if key.endswith("_release"):
        version = attrs.get(key.replace("_release", "_version"))
        return ".".join(str(version).split("+")[0].split(".")[:2]) if version else None
    return HISTORICAL[key]


def provenance_conflict(stored: dict, wanted: dict) -> tuple[str, object, object] | None:
    """The first :data:`PROVENANCE_KEYS` attribute (key, stored, wanted) on which rows
    already made (``stored``, read with :func:`recorded`) and a run's (``wanted``) differ;
    None when they agree."""
    for key in PROVENANCE_KEYS:
        was, now = recorded(stored, key), recorded(wanted, key)
        if not same_attr(was, now):
            return key, was, now
    return None
