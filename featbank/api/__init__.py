"""featbank's public API: what the command lines do, as functions for notebooks and scripts.

Stages (:mod:`featbank.api.stages`, :mod:`featbank.api.grid`): :func:`extract`,
:func:`load_features`, :func:`fit_head`, :func:`classify`, :func:`results_table`,
:func:`finetune`.
Analyses of a cached collection (:mod:`featbank.api.analyses`): :func:`retrieve`,
:func:`duplicates`, :func:`cka_files`, :func:`map2d`, :func:`export`,
:func:`layer_curve`, :func:`shot_curve`; what is wrong with it
(:mod:`featbank.api.quality`, DataFrames): :func:`label_issues`, :func:`leaks`,
:func:`outliers`, :func:`select`, :func:`without_leaks`; of its images run through trunks
(:mod:`featbank.api.trunks`): :func:`layers`, :func:`top_images`, :func:`saliency`.
On arrays (:mod:`featbank.api.arrays`): :func:`cka`, :func:`cka_matrix`,
:func:`neighbours`, :func:`near_duplicates`; and the pure measures
:func:`linear_cka`, :func:`precision_at_k`, :func:`average_precision_at_k`,
:func:`expected_calibration_error`.
The scripts (``extract.py``, ...) parse their arguments and call these.
"""
from featbank.analysis.similarity import average_precision_at_k, linear_cka, precision_at_k
from featbank.api.analyses import (
                                   cka_files,
                                   duplicates,
                                   export,
                                   layer_curve,
                                   map2d,
                                   retrieve,
                                   shot_curve,
)
from featbank.api.arrays import cka, cka_matrix, near_duplicates, neighbours
from featbank.api.grid import classify, results_table
from featbank.api.quality import label_issues, leaks, outliers, select, without_leaks
from featbank.api.stages import extract, finetune, fit_head, load_features
from featbank.api.trunks import layers, saliency, top_images
from featbank.evaluation.calibration import expected_calibration_error

__all__ = ["extract", "load_features", "fit_head", "classify", "results_table", "finetune",
           "retrieve", "cka_files", "map2d", "export", "duplicates", "layers", "layer_curve",
           "shot_curve", "top_images", "saliency", "cka", "cka_matrix", "neighbours",
           "near_duplicates", "label_issues", "leaks", "outliers", "select", "without_leaks",
           "linear_cka", "precision_at_k", "average_precision_at_k",
           "expected_calibration_error"]
