"""Stage 4, analysis: the seeds' other questions, answered on the cache and the trained networks.

One module per sub-command of ``analyze.py``; each writes a JSON file with its
figures and the settings that made them, plus pictures, to
``<cache>/<collection>/analysis/<sub-command>/``.

- on cached features: :mod:`.retrieve` (precision@k and mAP@k, contact sheets,
  lookups), :mod:`.cka` (linear CKA between feature files), :mod:`.maps` (2-D
  maps coloured by a task), :mod:`.export` (.npy or Parquet);
- inside the networks: :mod:`.layers` (per-stage weight distance and CKA),
  :mod:`.top_images` (each channel's most activating images), :mod:`.saliency`
  (Grad-CAM, VisualBackProp, integrated gradients, with a sanity check);
- underneath: :mod:`.similarity` (pure CKA, neighbours, precision@k, AP@k),
  :mod:`.networks` (trunks and their named stages), :mod:`.common` (output
  folders, thumbnails, HTML), :mod:`.config` (each sub-command's settings).
"""
