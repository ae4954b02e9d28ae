"""Stage 1, extraction: decode each image once, run every frozen trunk over it,
hand the rows to the store. The local engine (:mod:`.engine`, with nvJPEG
decoding on a GPU in :mod:`.devicedecode`) and the Ray engine
(:mod:`.ray_engine`) write the same file; :mod:`.config` holds the settings.
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "ExtractConfig": "config",
    "extract": "engine",
    "ExtractReport": "engine",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
