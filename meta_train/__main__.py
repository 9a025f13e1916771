"""``python -m meta_train`` (from a checkout) and ``python -m metaopt.meta_train``."""

import sys

from metaopt.meta_train.cli import main

if __name__ == "__main__":
    sys.exit(main())
