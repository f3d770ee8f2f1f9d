"""Channels: how activation chunks travel between workers (see :mod:`fsdgraph.channels.base`).

Channels are plugins, found through the entry-point group ``fsdgraph.channels`` with the same
rule as backends (:mod:`fsdgraph.plugins`); ``queue``, ``object`` and ``auto`` are built in.

>>> get_channel("queue").name
'queue'
>>> "object" in channel_names()
True
"""

from __future__ import annotations

from fsdgraph.channels.base import Channel, ChannelConfig, Inbox, OutChunk, WorkerContext
from fsdgraph.plugins import Registry

CHANNELS: Registry[Channel] = Registry("fsdgraph.channels", Channel, {
    "queue": "fsdgraph.channels.queue:QueueChannel",
    "object": "fsdgraph.channels.object:ObjectChannel",
    "auto": "fsdgraph.channels.auto:AutoChannel",
}, hints={"ray": "pip install 'fsdgraph[ray]'"})  # the Ray backend's channel, an entry point


def channel_names() -> list[str]:
    """Every known channel name."""
    return CHANNELS.names()


def get_channel(name: str) -> type[Channel]:
    """The channel class registered as ``name``."""
    return CHANNELS.load(name)


__all__ = ["CHANNELS", "Channel", "ChannelConfig", "Inbox", "OutChunk", "WorkerContext",
           "channel_names", "get_channel"]
