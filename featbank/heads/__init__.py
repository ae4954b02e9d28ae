"""Off-the-shelf heads: the registry (:mod:`.registry`: name -> unfitted
scikit-learn pipeline, tuning on the validation split) and the estimators
(softmax, svm, rf, logreg, knn), with the torch engine the linear ones share
(:mod:`.linear`, :mod:`.engines`).
"""
from featbank.core.lazy import lazy_exports

_EXPORTS = {
    "HEADS": "registry",
    "HeadOptions": "registry",
    "register_head": "registry",
    "make_head": "registry",
    "fit_head": "registry",
    "resolve_heads": "registry",
    "linear_heads": "registry",
    "SoftmaxClassifier": "softmax",
    "LinearSVM": "svm",
    "Forest": "forest",
    "LogisticHead": "logreg",
    "CosineKNN": "knn",
    "TorchLinear": "linear",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
