"""featbank's public API: what the command lines do, as functions for notebooks and scripts.

Stages (:mod:`featbank.api.stages`): :func:`extract`, :func:`load_features`,
:func:`fit_head`, :func:`classify`, :func:`results_table`, :func:`finetune`.
Analyses (:mod:`featbank.api.analyses`): :func:`retrieve`, :func:`cka`,
:func:`map2d`, :func:`export`, :func:`duplicates`, :func:`layers`, :func:`layer_curve`,
:func:`top_images`, :func:`saliency`.
The scripts (``extract.py``, ...) parse their arguments and call these.
"""
from featbank.api.analyses import (
                                   cka,
                                   duplicates,
                                   export,
                                   layer_curve,
                                   layers,
                                   map2d,
                                   retrieve,
                                   saliency,
                                   top_images,
)
from featbank.api.stages import classify, extract, finetune, fit_head, load_features, results_table

__all__ = ["extract", "load_features", "fit_head", "classify", "results_table", "finetune",
           "retrieve", "cka", "map2d", "export", "duplicates", "layers", "layer_curve", "top_images", "saliency"]
