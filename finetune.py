"""Fine-tune a backbone on one task of a collection (same saved split as classify.py).

Usage and examples: ``python finetune.py --help`` (featbank/cli/finetune.py).
"""
import sys

from featbank.cli.common import run
from featbank.cli.finetune import main

if __name__ == "__main__":
    sys.exit(run(main))
