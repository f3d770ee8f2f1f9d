"""``python -m fsdgraph ...``: the ``fsdgraph`` command (:mod:`fsdgraph.cli`)."""

import sys

from fsdgraph.cli import main

sys.exit(main())
