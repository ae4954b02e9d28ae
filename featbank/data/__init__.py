"""Collections and what is read from them: images with their ids and labels
(:mod:`.collection`, from folders, CSV manifests, Dublin Core XML and iMet
files, :mod:`.importers`), the built-in demo, where a command's collection
comes from (:mod:`.sources`), tasks and their saved splits (:mod:`.tasks`),
and image decoding with per-backbone preprocessing (:mod:`.preprocess`,
:mod:`.images`, the only module here that needs torch).
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "Collection": "collection",
    "from_folder": "collection",
    "from_manifest": "collection",
    "load_metadata": "collection",
    "save_metadata": "collection",
    "from_dublin_core": "importers",
    "from_imet": "importers",
    "demo_collection": "demo",
    "open_collection": "sources",
    "cached_collection": "sources",
    "cached_names": "sources",
    "SplitSpec": "tasks",
    "Split": "tasks",
    "load_or_make_split": "saved_splits",
    "Preprocess": "preprocess",
    "load_rgb": "images",
    "decode_views": "images",
    "normalize": "images",
    "DecodeError": "images",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
