"""``python -m k8spacket``: the same command line as the ``k8spacket`` script."""

import sys

from k8spacket.cli import main

sys.exit(main())
