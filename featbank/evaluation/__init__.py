"""How models are scored and compared: metrics (:mod:`.metrics`), bootstrap
intervals and paired tests (:mod:`.stats`), a model's results row and reports
(:mod:`.reports`), the paper-style table (:mod:`.tables`) and every plot
(:mod:`.plots`).
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "metrics": "metrics",
    "hits": "metrics",
    "score_of": "metrics",
    "accuracy_ci": "stats",
    "map_ci": "stats",
    "mcnemar_p": "stats",
    "paired_p": "stats",
    "result_row": "reports",
    "write_reports": "reports",
    "Table": "tables",
    "build_table": "tables",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
