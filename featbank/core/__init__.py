"""The ground every layer stands on: whole-or-absent file writes and locks
(:mod:`.fileio`), how settings become checked, identity-bearing dataclasses
(:mod:`.settings`), lazy re-exports (:mod:`.lazy`) and the version.
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "atomic_path": "fileio",
    "atomic_write_json": "fileio",
    "atomic_write_text": "fileio",
    "hold_lock": "fileio",
    "safe_name": "fileio",
    "first_line": "fileio",
    "runtime": "settings",
    "identity": "settings",
    "digest": "settings",
    "defaults": "settings",
    "default_workers": "settings",
    "__version__": "version",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
