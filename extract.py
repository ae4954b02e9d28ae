"""Extract global-average-pooled CNN features of a collection into the HDF5 cache.

Usage and examples: ``python extract.py --help`` (featbank/cli/extract.py).
"""
import sys

from featbank.cli.common import run
from featbank.cli.extract import main

if __name__ == "__main__":
    sys.exit(run(main))
