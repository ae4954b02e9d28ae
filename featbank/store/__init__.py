"""What featbank keeps on disk, as documented contracts: feature files
(:mod:`.features` to read and list them, :mod:`.writer` to fill them in
parts and shards, :mod:`.provenance` for what made their rows) and the
results store (:mod:`.results`). Torch-free.
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "Features": "features",
    "FeatureFile": "features",
    "Concatenation": "features",
    "read_features": "features",
    "feature_files": "features",
    "one_feature_file": "features",
    "select_features": "features",
    "FeatureWriter": "writer",
    "PROVENANCE_KEYS": "provenance",
    "feature_path": "provenance",
    "file_attrs": "provenance",
    "weights_label": "provenance",
    "append_result": "results",
    "load_results": "results",
    "latest_rows": "results",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
