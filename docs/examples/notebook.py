# %% [markdown]
# # featbank in a notebook
#
# The whole path from a folder of images to the paper-style table, in Python.
# Each `# %%` cell runs as written in Jupyter (jupytext's percent format) or as a
# script: `.venv/bin/python docs/examples/notebook.py [IMAGES [WEIGHTS]]`, where
# IMAGES is a folder with one sub-folder per class (default: the built-in demo
# collection) and WEIGHTS is `imagenet`, `random` or a weights file (default:
# `random`, which needs no download). The test suite runs it on the demo, and on
# heritage/test with the real SqueezeNet weights.

# %%
import os
import sys

import numpy as np
from sklearn.model_selection import train_test_split

import featbank as fb

IMAGES = sys.argv[1] if len(sys.argv) > 1 else None
WEIGHTS = sys.argv[2] if len(sys.argv) > 2 else "random"
CACHE = os.environ.get("FEATBANK_CACHE", "cache")

# %% [markdown]
# ## 1. Extract: one frozen pass of the backbone over the images
# A re-run is a no-op; a killed run resumes. The report says where the features went.

# %%
[report] = fb.extract(IMAGES, backbone="squeezenet1_1", weights=WEIGHTS, cache=CACHE,
                      progress=False)
collection = report.collection
print(f"{report.n_rows} rows in {report.path} ({report.n_skipped} could not be decoded)")

# %% [markdown]
# ## 2. The features in memory: ids, matrix, labels, provenance

# %%
data = fb.load_features("squeezenet1_1", collection=collection, cache=CACHE)
task = next(iter(data.labels))
print(data.X.shape, task, data.provenance["weights_exact"])

# %% [markdown]
# ## 3. One head, by hand: logistic regression on a random half, scored on the other

# %%
y = np.array(data.labels[task], dtype=object)
X_train, X_test, y_train, y_test = train_test_split(data.X, y, test_size=0.5, stratify=y,
                                                    random_state=0)
head = fb.fit_head("logreg", X_train, y_train)
print(f"logreg, half and half: {head.score(X_test, y_test):.3f}")

# %% [markdown]
# ## 4. The grid on the task's saved split, and the table as a DataFrame
# Every cell is stored in the collection's results store; the table is read back from it.

# %%
fb.classify(collection=collection, cache=CACHE, head="logreg,knn", task=task)
table = fb.results_table(collection, cache=CACHE)
print(table.round(3).to_string())

# %% [markdown]
# ## 5. Similarity retrieval: do a test image's nearest neighbours share its label?

# %%
retrieval = fb.retrieve("squeezenet1_1", task, collection=collection, cache=CACHE, k=10,
                        progress=False, sheet=0)
print(f"precision@10 {retrieval['precision_at_k']:.3f} "
      f"(chance {retrieval['chance_precision_at_k']:.3f})")
