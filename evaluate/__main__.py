"""``python -m metaopt.evaluate`` (and ``python -m evaluate`` from a checkout)."""

import sys

from metaopt.evaluate.cli import main

sys.exit(main())
