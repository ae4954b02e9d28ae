"""Analyses on arrays: features in (NumPy arrays, or ``Features`` read from the cache), numbers
and pandas DataFrames out, no files written.

The cached-collection functions (``fb.retrieve``, ``fb.duplicates``, ``fb.cka_files``,
...) are conveniences over the same computations that also draw pictures; these
are for notebooks and other pipelines.

>>> import numpy as np, featbank as fb
>>> X = np.random.default_rng(0).normal(size=(100, 16))
>>> round(fb.cka(X, X), 6)
1.0
>>> fb.cka(X, np.random.default_rng(1).normal(size=(100, 16))) < 0.3
True
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from featbank.store.features import Features, align_on_ids

if TYPE_CHECKING:
    import pandas

ArrayLike = np.ndarray | Features


def _matrix(x: ArrayLike) -> np.ndarray:
    return np.asarray(x.X if isinstance(x, Features) else x, dtype=np.float64)


def _aligned(sets: Sequence[ArrayLike]) -> list[np.ndarray]:
    """The matrices of ``sets``; ``Features`` are aligned on the ids they all hold."""
    if all(isinstance(s, Features) for s in sets):
        _, blocks = align_on_ids(list(sets), [f"features {k}" for k in range(len(sets))])
        return [np.asarray(b, dtype=np.float64) for b in blocks]
    return [_matrix(s) for s in sets]


def cka(X: ArrayLike, Y: ArrayLike, *, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same images.

    Parameters
    ----------
    X, Y : array of shape (n_samples, n_features_x) and (n_samples, n_features_y), or Features
        Row i is the same image in both; two ``Features`` (``fb.load_features``) are
        compared on the ids they share.
    debiased : bool
        The unbiased HSIC estimator (better with few images per dimension).

    Returns
    -------
    float
        In [0, 1]: 1 for the same representation up to rotation and isotropic
        scaling, near 0 for unrelated ones.

    Examples
    --------

    >>> import numpy as np, featbank as fb
    >>> X = np.random.default_rng(0).normal(size=(50, 8))
    >>> round(fb.cka(X, 3 * X + 1), 6)
    1.0
    """
    from featbank.analysis.similarity import linear_cka

    x, y = _aligned([X, Y])
    return float(linear_cka(x, y, debiased=debiased))


def cka_matrix(sets: Mapping[str, ArrayLike], *, debiased: bool = False) -> pandas.DataFrame:
    """Linear CKA between every pair of named representations.

    Parameters
    ----------
    sets : mapping of name to array (n_samples, d_name) or Features
        The representations, rows aligned (``Features`` on the ids they all hold).
    debiased : bool
        The unbiased HSIC estimator.

    Returns
    -------
    pandas.DataFrame
        Symmetric, indexed and labelled by the names, ones on the diagonal.

    Examples
    --------

    >>> import numpy as np, featbank as fb
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 8))
    >>> m = fb.cka_matrix({"a": X, "b": X @ rng.normal(size=(8, 8)), "c": rng.normal(size=(60, 8))})
    >>> list(m.columns), float(round(m.loc["a", "a"], 6))
    (['a', 'b', 'c'], 1.0)
    """
    import pandas as pd

    from featbank.analysis.similarity import cka_matrix as matrix

    names = list(sets)
    values = matrix(_aligned([sets[n] for n in names]), debiased=debiased)
    return pd.DataFrame(values, index=names, columns=names)


def neighbours(gallery: ArrayLike, queries: ArrayLike, *, k: int = 10) -> pandas.DataFrame:
    """The ``k`` gallery rows most cosine-similar to each query, best first (exact search).

    Parameters
    ----------
    gallery, queries : array of shape (n_gallery, d) and (n_queries, d), or Features
        With ``Features`` the frame names images by their ids, else by row numbers.
    k : int
        Neighbours per query, between 1 and the gallery's size.

    Returns
    -------
    pandas.DataFrame
        One row per (query, rank): ``query``, ``rank`` (1 = nearest), ``neighbour`` and
        ``similarity`` (cosine).

    Examples
    --------

    >>> import numpy as np, featbank as fb
    >>> G = np.eye(4)
    >>> G[3] = [0, 0, 1, 1]
    >>> fb.neighbours(G, G[[2]], k=2)[["query", "rank", "neighbour"]].values.tolist()
    [[0, 1, 2], [0, 2, 3]]
    """
    import pandas as pd

    from featbank.core.errors import BadInput
    from featbank.store.index import faiss

    g, q = _matrix(gallery).astype(np.float32), _matrix(queries).astype(np.float32)
    if not 1 <= k <= len(g):
        raise BadInput(f"k={k} but the gallery holds {len(g)} rows; use k between 1 and {len(g)}")
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    index = faiss().IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g))
    similarity, found = index.search(np.ascontiguousarray(q), k)
    query_ids = queries.ids if isinstance(queries, Features) else list(range(len(q)))
    gallery_ids = np.array(gallery.ids if isinstance(gallery, Features) else range(len(g)),
                           dtype=object)
    return pd.DataFrame({"query": np.repeat(np.array(query_ids, dtype=object), k),
                         "rank": np.tile(np.arange(1, k + 1), len(q)),
                         "neighbour": gallery_ids[found.ravel()],
                         "similarity": similarity.ravel().astype(float)})


def near_duplicates(features: ArrayLike, *, threshold: float | None = None,
                    k: int = 10) -> pandas.DataFrame:
    """Groups of near-duplicate rows, largest first: rows are linked when their cosine
    similarity is at least ``threshold``, and a group is a connected component.

    Parameters
    ----------
    features : array of shape (n_samples, d), or Features
    threshold : float, optional
        Cosine similarity linking two rows; default the one ``analyze.py duplicates`` uses.
    k : int
        Neighbours looked at per row.

    Returns
    -------
    pandas.DataFrame
        One row per grouped image: ``group`` (1 = largest), ``id`` (the row, or the
        image's id for ``Features``) and ``similarity_to_first``.

    Examples
    --------

    >>> import numpy as np, featbank as fb
    >>> X = np.eye(5); X[4] = X[0] + 0.01
    >>> fb.near_duplicates(X, threshold=0.99)["id"].tolist()
    [0, 4]
    """
    import pandas as pd

    from featbank.analysis.config import DUPLICATE_THRESHOLD
    from featbank.analysis.duplicates import connected_groups

    X = _matrix(features)
    threshold = DUPLICATE_THRESHOLD if threshold is None else threshold
    found = neighbours(X, X, k=min(k + 1, len(X)))
    pairs = found[(found["query"] != found["neighbour"]) & (found["similarity"] >= threshold)]
    groups = connected_groups(len(X), pairs[["query", "neighbour"]].to_numpy(dtype=int))
    ids = features.ids if isinstance(features, Features) else list(range(len(X)))
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    rows = [{"group": g, "id": ids[r], "similarity_to_first": float(unit[r] @ unit[group[0]])}
            for g, group in enumerate(groups, 1) for r in group]
    return pd.DataFrame(rows, columns=["group", "id", "similarity_to_first"])
