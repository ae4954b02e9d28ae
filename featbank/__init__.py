"""featbank: deep transfer learning on art and heritage image collections.

Extraction (``featbank.extract``) caches one global-average-pooled vector per
image and backbone in HDF5; off-the-shelf heads and fine-tuning build on it.
"""
__version__ = "0.1.0"
