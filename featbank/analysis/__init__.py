"""Analysis: the seeds' other questions, answered on the cache and the trained networks.

One module per sub-command of ``analyze.py``; each writes a JSON file with its
figures and the settings that made them, plus pictures, to
``<cache>/<collection>/analysis/<sub-command>/``.

- :mod:`.retrieve`  similarity retrieval: precision@k and mAP@k, contact sheets, lookups;
- :mod:`.cka`       linear CKA between feature files;
- :mod:`.maps`      2-D maps (UMAP or t-SNE) coloured by a task;
- :mod:`.export`    features with ids and labels as .npy or Parquet;
- :mod:`.similarity` the pure functions underneath (CKA, neighbours, precision@k, AP@k).
"""
