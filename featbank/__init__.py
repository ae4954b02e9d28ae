"""featbank: deep transfer learning on art and heritage image collections.

Extraction (``featbank.extraction.engine``) caches one global-average-pooled vector per
image and backbone in HDF5; off-the-shelf heads and fine-tuning build on it.
"""
from featbank.core.version import __version__
