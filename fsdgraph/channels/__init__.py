"""Channels: how activation chunks travel between workers (see :mod:`fsdgraph.channels.base`).

>>> get_channel("queue").name
'queue'
"""

from __future__ import annotations

from fsdgraph.channels.auto import AutoChannel
from fsdgraph.channels.base import Channel, ChannelConfig, Inbox, OutChunk
from fsdgraph.channels.object import ObjectChannel
from fsdgraph.channels.queue import QueueChannel
from fsdgraph.errors import ConfigError

CHANNELS: dict[str, type[Channel]] = {c.name: c for c in (QueueChannel, ObjectChannel,
                                                          AutoChannel)}


def get_channel(name: str) -> type[Channel]:
    """The channel class called ``name``."""
    try:
        return CHANNELS[name]
    except KeyError:
        known = ", ".join(sorted(CHANNELS))
        raise ConfigError(f"unknown channel {name!r}; known: {known}") from None


__all__ = ["CHANNELS", "AutoChannel", "Channel", "ChannelConfig", "Inbox", "ObjectChannel",
           "OutChunk", "QueueChannel", "get_channel"]
