"""Analyse a collection: retrieval, CKA, 2-D maps and export on cached features;
layers, top images and saliency maps inside the networks.

Usage and examples: ``python analyze.py --help`` (featbank/cli/analyze.py).
"""
import sys

from featbank.cli.analyze import main
from featbank.cli.common import run

if __name__ == "__main__":
    sys.exit(run(main))
