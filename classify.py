"""Train off-the-shelf heads on cached features; print the paper-style results table.

Usage and examples: ``python classify.py --help`` (featbank/cli/classify.py).
"""
import sys

from featbank.cli.classify import main
from featbank.cli.common import run

if __name__ == "__main__":
    sys.exit(run(main))
