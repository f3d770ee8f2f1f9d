"""``python -m fsdgraph.backends.local (serve RUN_DIR | run)``: see ``launcher``."""

import sys

from fsdgraph.backends.local.launcher import main

sys.exit(main(sys.argv[1:]))
