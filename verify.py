"""Check, repair and prune the feature files of a cache.

Usage and examples: ``python verify.py --help`` (featbank/cli/verify.py).
"""
import sys

from featbank.cli.common import run
from featbank.cli.verify import main

if __name__ == "__main__":
    sys.exit(run(main))
