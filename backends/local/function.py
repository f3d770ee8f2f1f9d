"""``python -m fsdgraph.backends.local.function``: the process behind one local invocation."""

import sys

from fsdgraph.backends.local.functions import main

if __name__ == "__main__":
    sys.exit(main())
