"""featbank: deep transfer learning on art and heritage image collections.

Each frozen backbone runs once over a collection and caches one
global-average-pooled vector per image in HDF5; off-the-shelf heads,
fine-tuning and the analyses build on that cache.

>>> import featbank as fb
>>> fb.extract("paintings/", backbone="squeezenet1_1")          # doctest: +SKIP
>>> data = fb.load_features("squeezenet1_1", collection="paintings")  # doctest: +SKIP

``import featbank`` costs nothing: the functions load on first use (PEP 562).
Layers, from the top: ``cli`` and ``api`` gather the stages ``extraction``,
``classification``, ``finetuning`` and ``analysis``, which sit on the core
``models``, ``heads``, ``evaluation``, ``data``, ``store`` and ``core``.
"""
from featbank.core.version import __version__

__all__ = ["__version__", "extract", "load_features", "fit_head", "classify", "results_table",
           "finetune", "retrieve", "cka_files", "map2d", "export", "duplicates", "layers",
           "layer_curve", "shot_curve", "top_images", "saliency", "cka", "cka_matrix",
           "neighbours", "near_duplicates", "label_issues", "leaks", "outliers", "select",
           "without_leaks",
           "linear_cka", "precision_at_k",
           "average_precision_at_k", "expected_calibration_error"]


def __getattr__(name: str):
    if name in __all__:
        from featbank import api

        return getattr(api, name)
    raise AttributeError(f"module 'featbank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
