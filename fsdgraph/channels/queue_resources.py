"""A queue channel run's topics and queues: how many, created how, and proven to deliver.

**Topic shards.** Each worker's queue subscribes with a filter policy (``{"target": [w]}``) to
one topic, the shard ``w mod S``; a sender publishes each target's messages on that target's
shard, packing up to ``max_batch_entries`` entries per call. SNS allows
``Quotas.filter_policies_per_topic`` filter policies per topic (200), so ``S`` is the fewest
shards that keeps every topic within it (:func:`fit`): one topic up to 200 workers (the best
packing), five at a thousand. Beyond ``Quotas.filter_policies_per_account`` (10 000) no sharding
helps: the channel sends straight to each queue (SQS, ``ChannelConfig.direct``) and says why.

**Setup** is O(P) requests (S topics, P queues, P subscriptions; each queue's policy is part of
its creation), made concurrently with bounded concurrency and retries
(:func:`fsdgraph.bounded.each`), and so is teardown.

**Readiness.** AWS documents that a new queue policy can take up to a minute and a new filter
policy minutes to apply, and a message SNS cannot deliver meanwhile is lost. So before any worker
starts, :func:`prove_delivery` publishes a probe through every shard to every queue and waits
until each queue has received its own, publishing again to the queues still silent, for up to
``ChannelConfig.ready_timeout_s``; then it names the queues that never received one. Probes
carry ``kind=probe``; one that reaches a worker late is dropped and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from functools import partial
from typing import Any

from fsdgraph.bounded import each
from fsdgraph.channels.base import ChannelConfig
from fsdgraph.errors import RunTimeout
from fsdgraph.quotas import Quotas, exceeded
from fsdgraph.resources import RunNames
from fsdgraph.transport import Entry, Limits, MessageService, delete_received, pack_batches

#: The ``kind`` attribute of a readiness probe.
PROBE = "probe"
#: Queues still silent after this long get their probe again (seconds).
PROBE_AGAIN_S = 5.0


def topic_shards(config: ChannelConfig, workers: int) -> int:
    """Topics of a run: none in direct mode, else ``config.topics`` (set by :func:`fit`),
    at least one and at most one per worker."""
    return 0 if config.direct else max(1, min(config.topics, workers))


def fit(config: ChannelConfig, workers: int,
        quotas: Quotas) -> tuple[ChannelConfig, dict[str, Any]]:
    """Shards (or direct sends) for ``workers`` workers within ``quotas``; see the module
    docstring. ``config.topics`` is the fewest shards the user wants (0: as few as fit).

    >>> fit(ChannelConfig(), 1000, Quotas())[1]["topics"]
    5
    >>> fit(ChannelConfig(), 20_000, Quotas())[1]["mode"]
    'direct'
    """
    if config.direct:
        return config, {"mode": "direct", "topics": 0, "why": "ChannelConfig.direct is set"}
    if workers > quotas.filter_policies_per_account:
        why = (f"{workers} queues need {workers} filter policies, more than the account's "
               f"quota filter_policies_per_account={quotas.filter_policies_per_account:g}: "
               f"chunks go straight to each queue (SQS SendMessageBatch)")
        return replace(config, direct=True), {"mode": "direct", "topics": 0, "why": why}
    shards = min(workers, max(config.topics, math.ceil(workers / quotas.filter_policies_per_topic)))
    if shards > quotas.topics_per_account:
        raise exceeded("topics_per_account", shards, quotas.topics_per_account,
                       f"{workers} workers need {shards} topics")
    per_topic = math.ceil(workers / shards)
    why = (f"{shards} topic{'s' if shards > 1 else ''} of at most {per_topic} filter policies "
           f"each (quota filter_policies_per_topic={quotas.filter_policies_per_topic:g})")
    return replace(config, topics=shards), {"mode": "topics", "topics": shards,
                                            "filter_policies_per_topic": per_topic, "why": why}


async def create(messages: MessageService, names: RunNames, workers: int,
                 config: ChannelConfig, limits: Limits) -> None:
    """Create the run's topics and queues, subscribe each queue to its shard and prove that
    every queue receives through it (all concurrently, bounded)."""
    shards = topic_shards(config, workers)
    topics = await each([partial(messages.create_topic, names.topic(t)) for t in range(shards)])

    async def queue(w: int) -> str:
        q = await messages.create_queue(names.queue(w),
                                        visibility_timeout_s=config.visibility_timeout_s,
                                        max_message_bytes=limits.max_message_bytes)
        if topics:
            await messages.subscribe(topics[w % shards], q, filter_policy={"target": [str(w)]})
        return q

    queues = await each([partial(queue, w) for w in range(workers)])
    if topics:
        await prove_delivery(messages, names, topics, queues, config, limits)


async def delete(messages: MessageService, names: RunNames, workers: int,
                 config: ChannelConfig) -> None:
    """Delete the run's topics, then its queues (concurrently, bounded)."""
    await each([partial(messages.delete_topic, names.topic(t))
                for t in range(topic_shards(config, workers))])
    await each([partial(messages.delete_queue, names.queue(w)) for w in range(workers)])


def probe(run_id: str, worker: int) -> Entry:
    return Entry(PROBE, {"run": run_id, "kind": PROBE, "target": str(worker)})


async def prove_delivery(messages: MessageService, names: RunNames, topics: list[str],
                         queues: list[str], config: ChannelConfig, limits: Limits) -> None:
    """Publish a probe to every queue through its shard until each has received its own;
    RunTimeout naming the silent queues after ``config.ready_timeout_s``."""
    deadline = time.monotonic() + config.ready_timeout_s
    silent = set(range(len(queues)))
    while True:
        by_shard: dict[int, list[Entry]] = {}
        for w in sorted(silent):
            by_shard.setdefault(w % len(topics), []).append(probe(names.run_id, w))
        await each([partial(messages.publish_batch, topics[t], batch)
                    for t, entries in by_shard.items()
                    for batch in pack_batches(entries, limits.max_batch_entries,
                                              limits.max_batch_bytes)])
        until = min(deadline, time.monotonic() + PROBE_AGAIN_S)
        arrived = await each([partial(_await_probe, messages, queues[w], w, until, limits)
                              for w in sorted(silent)])
        silent -= {w for w, ok in zip(sorted(silent), arrived, strict=True) if ok}
        if not silent:
            return
        if time.monotonic() >= deadline:
            names_ = ", ".join(f"{queues[w]} (topic {topics[w % len(topics)]})"
                               for w in sorted(silent)[:10])
            more = f" and {len(silent) - 10} more" if len(silent) > 10 else ""
            raise RunTimeout(
                f"the queue channel was not ready after {config.ready_timeout_s:g} s: no probe "
                f"reached {len(silent)} of {len(queues)} queues: {names_}{more}. Their "
                f"subscriptions, filter policies or queue policies are not in effect (AWS "
                f"documents minutes for a new filter policy); raise ready_timeout_s or check "
                f"the queues' access policies")


async def _await_probe(messages: MessageService, queue: str, worker: int, until: float,
                       limits: Limits) -> bool:
    """Receive from ``queue`` until its probe arrives (True) or ``until`` (False); whatever
    arrives is deleted (before the launch only probes travel)."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False
        got = await messages.receive(queue, max_messages=limits.max_batch_entries,
                                     wait_s=min(1.0, left))
        if got:
            await delete_received(messages, queue, [m.receipt for m in got])
        if any(m.attributes.get("kind") == PROBE and m.attributes.get("target") == str(worker)
               for m in got):
            return True
        await asyncio.sleep(0)
