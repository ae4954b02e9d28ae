"""The networks: the backbone registry with each entry's preprocessing and
pinned ImageNet weights (:mod:`.registry`, torch-free), building, loading,
freezing and exporting trunks (:mod:`.trunks`) and running them batched on a
device (:mod:`.inference`).
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "BACKBONES": "registry",
    "BackboneSpec": "registry",
    "Pretrained": "registry",
    "get_spec": "registry",
    "available_backbones": "registry",
    "register": "registry",
    "weights_id": "registry",
    "Weights": "trunks",
    "load_trunk": "trunks",
    "resolve_weights": "trunks",
    "export_trunk": "trunks",
    "stages": "trunks",
    "WeightsUnavailableError": "trunks",
    "TrunkRunner": "inference",
    "resolve_device": "inference",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
