"""Stage 2, off-the-shelf classification: the grid of heads x feature files x
tasks (:mod:`.grid`), one cell's training and row (:mod:`.cells`) and
ensembles of stored cells (:mod:`.ensembles`); :mod:`.config` holds the
settings.
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "ClassifyConfig": "config",
    "classify": "grid",
    "run_cell": "cells",
    "cell_key": "cells",
    "run_ensemble": "ensembles",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
