"""Default settings, written once: ``RunConfig``, ``ChannelConfig`` and the command line's
``RunSettings`` all take their defaults from here."""

from __future__ import annotations

WORKERS = 4  #: workers P of a command-line run
CHANNEL = "queue"  #: a backend's channel unless it names another (``Backend.default_channel``)
BACKEND = "local"
PARTITIONER = "hypergraph"
BRANCHING = 4  #: children per node of the invocation tree
TIMEOUT_S = 900.0  #: the whole run
STALL_TIMEOUT_S = 120.0  #: a worker that reports nothing for this long failed
TOPICS = 0  #: queue channels: the fewest topic shards (0: as few as the quotas allow)
PEER_TIMEOUT_S = 60.0  #: a source that sends nothing new for this long fails the run
POLL_WAIT_S = 1.0  #: long-poll wait of one receive call
VISIBILITY_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 900.0  #: queue channels: setup waits this long for subscriptions to apply
RELAUNCHES = 3  #: workers the scheduler relaunches in a run before a silent one fails it
RELAUNCH_AFTER_S = 10.0  #: a worker silent this long (and 4 heartbeats) is relaunched
STRATEGY = "model"  #: how the workers share the work (``fsdgraph.compile``)
#: The strategies a plan can be compiled for (``auto``: the planner picks one).
STRATEGIES = ("model", "data", "hybrid")
MEMORY_MB = 1769  #: the functions' memory (one full vCPU on Lambda)
