"""Stage 3, fine-tuning: the network and its freezing (:mod:`.model`), the
labelled images (:mod:`.data`), an epoch of training or evaluation
(:mod:`.epochs`) and a resumable run that tests and exports its trunk
(:mod:`.train`); :mod:`.config` holds the settings.
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "FinetuneConfig": "config",
    "finetune": "train",
    "FinetuneResult": "train",
    "FineTuneNet": "model",
    "apply_freeze": "model",
    "frozen_count": "model",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
