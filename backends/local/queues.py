"""SNS topics and SQS queues on the local file system, shared by any number of OS processes.

:class:`SpoolMessageService` implements :class:`~fsdgraph.transport.MessageService` with no
server process: every operation is a few file-system calls under ``root``, and each step that
others may observe concurrently is a single atomic ``rename``.

On-disk layout under ``root``::

    root/
        tmp/                                staging for new queues/topics/subscriptions + trash
        quotas.lock                         flock-ed while filter policies are counted
        filter-policies.json                {"<topic>": <subscriptions with a filter policy>}
        queues/<queue>/
            config.json                     {"visibility_timeout_s": 30.0,
                                             "max_message_bytes": 262144}
            doorbell                        named FIFO: senders write a byte, receivers wait on it
            tmp/<name>                      a message being written
            ready/<ts>.<n>.<token>          a visible message
            inflight/<deadline>.<n>.<ts>.<token>
                                            a received, not yet deleted message; this file name
                                            is the receipt
        topics/<topic>/
            subs/<queue>.json               {"queue": "<queue>", "filter_policy": {...}}
            subscriptions.json              {"<queue>": {...filter policy...}, ...}: all of
                                            subs/, rewritten at each subscribe

``ts`` is the ``time.time_ns()`` of the send and ``deadline`` the ``time.time_ns()`` at which an
in-flight message becomes visible again, both zero-padded to 20 digits so names sort by time;
``n`` is how many times the message was received before; ``token`` (16 hex digits) makes the name
unique. A message file holds UTF-8 JSON ``{"id": ..., "body": ..., "attributes": {...}}``.

Semantics (those of SNS + SQS standard queues):

* **send** writes the message to ``tmp/`` and renames it into ``ready/`` (atomic, so a receiver
  never sees a partial message), then rings the queue's doorbell.
* **receive** requeues expired in-flight messages, lists ``ready/`` and claims up to
  ``max_messages`` of them, oldest first, each by renaming it to ``inflight/`` with its visibility
  deadline in the new name. Only one of several concurrent receivers wins a rename, so each
  visible message goes to one receiver. With nothing visible it long-polls: it waits on the
  doorbell FIFO (opened ``O_RDWR | O_NONBLOCK`` so it never reads EOF) with
  :meth:`asyncio.loop.add_reader`, and also wakes at ``wait_s`` and at the earliest in-flight
  deadline. Draining the doorbell before the last scan makes lost wake-ups impossible; a receiver
  that leaves visible messages behind rings again so another waiting receiver takes them.
* **delete** unlinks the in-flight file named by the receipt. A receipt that no longer exists
  (the message timed out and was received again) is not an error: the message is then delivered
  more than once, as SQS does (at-least-once; consumers deduplicate).
* **visibility timeout**: any receiver that finds an in-flight message past its deadline renames
  it back to ``ready/`` with ``n`` incremented, so its next receipt says ``receive_count=n+1``.
* **topics**: ``publish_batch`` delivers each entry to every subscribed queue whose filter policy
  matches (for every key of the policy, the entry's attribute must equal one of the listed
  strings; an empty policy matches everything), with raw delivery (body and attributes
  unchanged). A subscription whose queue was deleted is skipped, as SNS drops such deliveries.
  Each subscription is a file of ``subs/``; ``subscribe`` also rewrites ``subscriptions.json``,
  all of the topic's subscriptions in one file (atomically, under the lock quotas are counted
  under), which is what publishers read: one file, however many queues subscribe. Each process
  caches it until the file is replaced (another inode, mtime or size) and indexes it by filter
  value, so a publish matches an entry against the few subscriptions that can match it.
* **limits**: the batch rules (entries and bytes per batch, ``receive`` arguments, empty
  batches) are :class:`~fsdgraph.transport.MessageService`'s, checked before any of this runs.
  Here an entry larger than the queue's ``max_message_bytes`` (or, when published, than
  ``Limits.max_message_bytes`` or than any matching queue's limit) fails alone with code
  ``MessageTooLong``, measured with :func:`~fsdgraph.transport.entry_size`.
* **names**: queue names match ``[A-Za-z0-9_-]{1,80}`` and topic names ``[A-Za-z0-9_-]{1,255}``
  (AWS's rules), so a name is always one safe path segment. A create call with another name
  (or a malformed filter policy) raises :class:`~fsdgraph.errors.ConfigError`; any other call
  with an unknown (or impossible) name raises :class:`~fsdgraph.errors.NotFound` naming it,
  except the deletes, which do nothing.
* **quotas**: with ``quotas`` (a :class:`~fsdgraph.quotas.Quotas`), ``create_topic`` of a new
  topic beyond ``topics_per_account`` topics under ``root`` fails with ``TopicLimitExceeded``, and
  a ``subscribe`` that adds a filter policy beyond ``filter_policies_per_topic`` on its topic or
  ``filter_policies_per_account`` under ``root`` fails with ``FilterPolicyLimitExceeded``, as
  AWS refuses them: a :class:`~fsdgraph.errors.TransportError` (not retryable) naming the quota
  and where to raise it. Subscriptions with an empty policy do not count, nor does re-subscribing
  a queue with a policy again; they are counted until their topic is deleted (deleting the queue
  leaves the subscription, as on SNS). The counts live in ``filter-policies.json`` under
  ``root``, read and written under an exclusive ``flock`` of ``quotas.lock`` by every process, so
  checking one costs the same at any number of subscriptions. Without ``quotas`` nothing is
  refused (the counts are still kept, so another instance on the same ``root`` can enforce them).
* Messages are not fsync-ed: the service is for runs on one machine, not for durability.

Cost: a send is a create, a write and a rename per message plus one doorbell write per batch; a
receive lists ``ready/`` and ``inflight/`` (so it grows with the queue's depth, about 0.3 µs per
waiting message) and renames and reads each message it returns; a delete is one unlink. On tmpfs
a send + receive + delete cycle costs some tens of microseconds per message.

Fault injection, for tests: with ``duplicate_rate`` p, each message delivered to a queue is
written twice with probability p (the copy has the same message id; simulating SQS's
at-least-once duplicates); with ``shuffle``, receive takes the visible messages in random order
instead of oldest first (SQS standard queues do not keep order). ``seed`` makes both repeatable
within one process.

One instance may be used by many coroutines of one event loop at a time; every process opens its
own instance on the same ``root``. :meth:`SpoolMessageService.close` releases the doorbell file
descriptors the instance keeps open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsdgraph.backends.local.files import write_new
from fsdgraph.errors import ConfigError, NotFound, TransportError
from fsdgraph.quotas import WHERE_TO_RAISE, Quotas
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Failure,
    Limits,
    Message,
    MessageService,
    entry_failure,
)

__all__ = ["QueueConfig", "SpoolMessageService"]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RECEIPT = re.compile(r"\d{20}\.\d+\.\d{20}\.[0-9a-f]{16}")
#: In a topic's directory: every subscription of the topic, in one file.
_SNAPSHOT = "subscriptions.json"
_READ_CHUNK = 65536


@dataclass(frozen=True)
class QueueConfig:
    """What ``create_queue`` stores in ``config.json``."""

    visibility_timeout_s: float
    max_message_bytes: int


def _token() -> str:
    return os.urandom(8).hex()


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def _ring(doorbell: str) -> None:
    """Write one byte to a doorbell FIFO, if anyone listens and it is not full already."""
    try:
        fd = os.open(doorbell, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no receiver has it open; ENOENT: the queue is gone
        return
    try:
        os.write(fd, b"\0")
    except OSError:  # EAGAIN: full of unread rings already, which wake receivers anyway
        pass
    finally:
        os.close(fd)


def _normalise_policy(policy: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, values in policy.items():
        if not isinstance(key, str):
            raise ConfigError(f"filter policy keys must be str, got {key!r}")
        if isinstance(values, (str, bytes)):
            raise ConfigError(
                f"filter policy value for {key!r} must be a list of strings, got the string "
                f"{values!r} (write [{values!r}])"
            )
        listed = list(values)
        if not listed:
            raise ConfigError(f"filter policy value for {key!r} must list at least one string")
        for value in listed:
            if not isinstance(value, str):
                raise ConfigError(f"filter policy values for {key!r} must be str, got {value!r}")
        out[key] = listed
    return out


def _matches(policy: Mapping[str, frozenset[str]], attributes: Mapping[str, str]) -> bool:
    for key, allowed in policy.items():
        value = attributes.get(key)
        if value is None or value not in allowed:
            return False
    return True


class _Doorbell:
    """This process's handle on a queue's doorbell FIFO, shared by its waiting coroutines."""

    def __init__(self, path: str) -> None:
        self.path = path
        # O_RDWR: the FIFO always has a writer (us), so it never reports EOF, and opening it
        # never blocks; senders' O_WRONLY | O_NONBLOCK opens succeed while we hold it.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.ino = os.fstat(self.fd).st_ino
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def current(self) -> bool:
        """Whether the FIFO at ``path`` is still the one we opened (the queue was not
        deleted and created again)."""
        if self.closed:
            return False
        try:
            return os.stat(self.path).st_ino == self.ino
        except OSError:
            return False

    def drain(self) -> None:
        try:
            while len(os.read(self.fd, _READ_CHUNK)) == _READ_CHUNK:
                pass
        except BlockingIOError:
            pass

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.fd, b"\0")

    async def wait(self, timeout: float) -> None:
        """Return when the doorbell rings or after ``timeout`` seconds, whichever is first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._loop is not loop:
            self._unregister()  # left registered on a loop that is gone (e.g. asyncio.run ended)
            loop.add_reader(self.fd, self._fire)
            self._loop = loop
        self._waiters.add(fut)
        timer = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.discard(fut)
            if not self._waiters:
                self._unregister()

    def _fire(self) -> None:
        self._unregister()
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            _resolve(fut)

    def _unregister(self) -> None:
        if self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self.fd)
            self._loop = None

    def close(self) -> None:
        if self.closed:
            return
        self._fire()
        self.closed = True
        os.close(self.fd)


def _has_policy(sub_path: str) -> bool:
    """Whether the subscription stored at ``sub_path`` exists and has a filter policy."""
    try:
        return bool(json.loads(_read(sub_path))["filter_policy"])
    except FileNotFoundError:
        return False


def _refused(code: str, quota: str, have: int, what: str) -> TransportError:
    """AWS's refusal of a request beyond a quota, naming the quota and where to raise it."""
    return TransportError(f"{code}: {what}, over the quota {quota} of {have} (raise "
                          f"{WHERE_TO_RAISE.get(quota, quota)} and set quotas.{quota})",
                          retryable=False)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


#: A subscription as read from its file: the queue and its filter policy.
_Sub = tuple[str, dict[str, frozenset[str]]]


class _SubscriptionIndex:
    """A topic's subscriptions, indexed so that an entry is matched against the few whose policy
    can match it (those listing its value of one key), not against every one: a topic carries
    hundreds of filtered subscriptions in a large run and each chunk matches one."""

    def __init__(self, subs: Sequence[_Sub]) -> None:
        self.unfiltered = [queue for queue, policy in subs if not policy]
        #: Every filtered subscription under one key of its policy (the smallest), by value.
        self.by_key: dict[str, dict[str, list[_Sub]]] = {}
        for queue, policy in subs:
            if policy:
                key = min(policy)
                values = self.by_key.setdefault(key, {})
                for value in policy[key]:
                    values.setdefault(value, []).append((queue, policy))

    def matching(self, attributes: Mapping[str, str]) -> list[str]:
        """The queues whose subscription matches an entry with ``attributes``."""
        queues = list(self.unfiltered)
        for key, values in self.by_key.items():
            value = attributes.get(key)
            if value is not None:
                queues.extend(queue for queue, policy in values.get(value, ())
                              if _matches(policy, attributes))
        return queues




class SpoolMessageService(MessageService):
    """SNS + SQS semantics on a shared directory (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        limits: Limits,
        *,
        duplicate_rate: float = 0.0,
        shuffle: bool = False,
        seed: int | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        if not 0.0 <= duplicate_rate <= 1.0:
            raise ConfigError(f"duplicate_rate must be between 0 and 1, got {duplicate_rate!r}")
        self.root = Path(root)
        self.limits = limits
        self.duplicate_rate = duplicate_rate
        self.shuffle = shuffle
        self.quotas = quotas
        self._rng = random.Random(seed)
        base = os.fspath(self.root)
        self._queues = f"{base}/queues"
        self._topics = f"{base}/topics"
        self._tmp = f"{base}/tmp"
        self._quota_lock = f"{base}/quotas.lock"
        self._policy_counts = f"{base}/filter-policies.json"
        for directory in (self._queues, self._topics, self._tmp):
            os.makedirs(directory, exist_ok=True)
        self._configs: dict[str, tuple[tuple[int, int, int], QueueConfig]] = {}
        #: Per topic: the identity of the subscriptions.json read (inode, mtime, size) and its
        #: index.
        self._subscriptions: dict[str, tuple[tuple[int, int, int], _SubscriptionIndex]] = {}
        self._bells: dict[str, _Doorbell] = {}
        self._last_ts = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def close(self) -> None:
        """Close the doorbell file descriptors this instance holds (it stays usable)."""
        bells, self._bells = self._bells, {}
        for bell in bells.values():
            bell.close()

    # -- provisioning ---------------------------------------------------------------------------
    async def create_queue(
        self, name: str, *, visibility_timeout_s: float, max_message_bytes: int
    ) -> str:
        if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
            raise ConfigError(f"queue name {name!r} must be 1 to 80 of [A-Za-z0-9_-]")
        if not math.isfinite(visibility_timeout_s) or visibility_timeout_s < 0:
            raise ConfigError(
                f"visibility_timeout_s must be a finite number >= 0, got {visibility_timeout_s!r}"
            )
        if not isinstance(max_message_bytes, int) or not (
            0 < max_message_bytes <= self.limits.max_message_bytes
        ):
            raise ConfigError(
                f"max_message_bytes must be an integer from 1 to "
                f"{self.limits.max_message_bytes} (Limits.max_message_bytes), "
                f"got {max_message_bytes!r}"
            )
        config = json.dumps(
            {
                "visibility_timeout_s": float(visibility_timeout_s),
                "max_message_bytes": max_message_bytes,
            },
            sort_keys=True,
        ).encode()
        qdir = os.path.join(self._queues, name)
        for _attempt in range(10):
            if not os.path.isdir(qdir):
                stage = os.path.join(self._tmp, f"queue-{name}-{_token()}")
                os.mkdir(stage)
                for sub in ("ready", "inflight", "tmp"):
                    os.mkdir(os.path.join(stage, sub))
                os.mkfifo(os.path.join(stage, "doorbell"), 0o666)
                write_new(os.path.join(stage, "config.json"), config)
                try:
                    os.rename(stage, qdir)
                    return name
                except OSError as exc:  # created concurrently by someone else
                    shutil.rmtree(stage, ignore_errors=True)
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            # The queue exists: reuse it, with this configuration.
            try:
                if _read(os.path.join(qdir, "config.json")) == config:
                    return name
                tmp = os.path.join(qdir, "tmp", f"config-{_token()}")
                write_new(tmp, config)
                os.replace(tmp, os.path.join(qdir, "config.json"))
                return name
            except FileNotFoundError:  # deleted meanwhile: create it again
                continue
        raise NotFound(f"queue {name!r} kept disappearing while being created")

    async def create_topic(self, name: str) -> str:
        if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name):
            raise ConfigError(f"topic name {name!r} must be 1 to 255 of [A-Za-z0-9_-]")
        tdir = os.path.join(self._topics, name)
        if os.path.isdir(tdir):
            return name
        if self.quotas is None:
            self._create_topic(name, tdir)
            return name
        with self._counting():
            if not os.path.isdir(tdir):
                topics = len(os.listdir(self._topics))
                if topics >= self.quotas.topics_per_account:
                    raise _refused("TopicLimitExceeded", "topics_per_account",
                                   self.quotas.topics_per_account,
                                   f"creating topic {name!r} would make {topics + 1} topics")
                self._create_topic(name, tdir)
        return name

    def _create_topic(self, name: str, tdir: str) -> None:
        stage = os.path.join(self._tmp, f"topic-{name}-{_token()}")
        os.mkdir(stage)
        os.mkdir(os.path.join(stage, "subs"))
        try:
            os.rename(stage, tdir)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise

    async def subscribe(
        self, topic: str, queue: str, *, filter_policy: Mapping[str, Sequence[str]]
    ) -> None:
        subs_dir = self._subs_dir(topic)
        if not os.path.isdir(subs_dir):
            raise NotFound(f"no topic named {topic!r}")
        self._config(queue)
        policy = _normalise_policy(filter_policy)
        data = json.dumps({"queue": queue, "filter_policy": policy}, sort_keys=True).encode()
        path = os.path.join(subs_dir, f"{queue}.json")
        with self._counting():
            # Only a subscription that gains a filter policy counts against the quotas (one
            # re-subscribed with a policy again replaces its own).
            had = _has_policy(path)
            counts = self._read_counts()
            if policy and not had:
                self._check_policy_quotas(topic, queue, counts)
            tmp = os.path.join(self._tmp, f"sub-{_token()}")
            write_new(tmp, data)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                os.unlink(tmp)
                raise NotFound(f"no topic named {topic!r}") from None
            if bool(policy) != had:
                counts[topic] = counts.get(topic, 0) + (1 if policy else -1)
                self._write_counts(counts)
            self._write_snapshot(topic, queue, policy)

    def _write_snapshot(self, topic: str, queue: str, policy: Mapping[str, list[str]]) -> None:
        """Rewrite the topic's subscriptions.json with ``queue``'s subscription (under the
        lock, so no concurrent subscribe is lost)."""
        snapshot = f"{self._topics}/{topic}/{_SNAPSHOT}"
        try:
            subs = json.loads(_read(snapshot))
        except FileNotFoundError:  # the first subscription of the topic
            subs = {}
        subs[queue] = policy
        tmp = os.path.join(self._tmp, f"subscriptions-{_token()}")
        write_new(tmp, json.dumps(subs, sort_keys=True).encode())
        try:
            os.replace(tmp, snapshot)
        except FileNotFoundError:  # the topic was deleted meanwhile
            os.unlink(tmp)
            raise NotFound(f"no topic named {topic!r}") from None

    def _check_policy_quotas(self, topic: str, queue: str, counts: Mapping[str, int]) -> None:
        if self.quotas is None:
            return
        what = f"subscribing queue {queue!r} to topic {topic!r} with a filter policy would make"
        on_topic = counts.get(topic, 0) + 1
        if on_topic > self.quotas.filter_policies_per_topic:
            raise _refused("FilterPolicyLimitExceeded", "filter_policies_per_topic",
                           self.quotas.filter_policies_per_topic,
                           f"{what} {on_topic} filter policies on the topic")
        in_account = sum(counts.values()) + 1
        if in_account > self.quotas.filter_policies_per_account:
            raise _refused("FilterPolicyLimitExceeded", "filter_policies_per_account",
                           self.quotas.filter_policies_per_account,
                           f"{what} {in_account} filter policies in the account")

    @contextlib.contextmanager
    def _counting(self) -> Iterator[None]:
        """Hold the lock under which topics and filter policies are counted (every process)."""
        fd = os.open(self._quota_lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_counts(self) -> dict[str, int]:
        try:
            raw = json.loads(_read(self._policy_counts))
        except FileNotFoundError:
            return {}
        return {str(topic): int(n) for topic, n in raw.items()}

    def _write_counts(self, counts: Mapping[str, int]) -> None:
        tmp = os.path.join(self._tmp, f"counts-{_token()}")
        write_new(tmp, json.dumps({t: n for t, n in counts.items() if n > 0}).encode())
        os.replace(tmp, self._policy_counts)

    async def delete_queue(self, queue: str) -> None:
        self._configs.pop(queue, None)
        bell = self._bells.pop(queue, None)
        if bell is not None:
            bell.close()
        if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
            return
        trash = self._to_trash(os.path.join(self._queues, queue))
        if trash is None:
            return
        # Wake whoever waits on it (the FIFO they hold is the one just moved), so that their
        # next scan reports NotFound at once instead of after their wait_s.
        _ring(os.path.join(trash, "doorbell"))
        shutil.rmtree(trash, ignore_errors=True)

    async def delete_topic(self, topic: str) -> None:
        self._subscriptions.pop(topic, None)
        if not isinstance(topic, str) or not _TOPIC_NAME.fullmatch(topic):
            return
        with self._counting():  # its filter policies stop counting as it disappears
            trash = self._to_trash(os.path.join(self._topics, topic))
            counts = self._read_counts()
            if counts.pop(topic, None) is not None:
                self._write_counts(counts)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _to_trash(self, path: str) -> str | None:
        """Move ``path`` out of sight in one atomic rename; None if it is already gone."""
        trash = os.path.join(self._tmp, f"trash-{_token()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash

    # -- data plane -----------------------------------------------------------------------------
    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        subs = self._subs(topic)
        failures: list[Failure] = []
        deliveries: dict[str, list[bytes]] = {}
        configs: dict[str, QueueConfig | None] = {}
        for index, (entry, size) in enumerate(zip(entries, sizes, strict=True)):
            failure = entry_failure(index, size, self.limits.max_message_bytes)
            if failure is not None:
                failures.append(failure)
                continue
            targets: list[str] = []
            too_small: list[str] = []
            for queue in subs.matching(entry.attributes):
                if queue not in configs:
                    try:
                        configs[queue] = self._config(queue)
                    except NotFound:  # subscribed queue deleted: SNS drops the delivery
                        configs[queue] = None
                config = configs[queue]
                if config is None:
                    continue
                targets.append(queue)
                if size is not None and size > config.max_message_bytes:
                    too_small.append(f"{queue!r} ({config.max_message_bytes})")
            if too_small:
                failures.append(
                    Failure(
                        index,
                        "MessageTooLong",
                        f"entry {index} of {size} bytes exceeds max_message_bytes of queue "
                        + ", ".join(too_small),
                        retryable=False,
                    )
                )
                continue
            if targets:
                data = self._encode(entry)
                for queue in targets:
                    deliveries.setdefault(queue, []).append(data)
        for queue, payloads in deliveries.items():
            with contextlib.suppress(NotFound):  # deleted meanwhile: SNS drops the delivery
                self._deliver(queue, payloads)
        return BatchResult(tuple(failures))

    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        config = self._config(queue)
        failures: list[Failure] = []
        payloads: list[bytes] = []
        for index, (entry, size) in enumerate(zip(entries, sizes, strict=True)):
            failure = entry_failure(index, size, config.max_message_bytes)
            if failure is not None:
                failures.append(failure)
            else:
                payloads.append(self._encode(entry))
        if payloads:
            self._deliver(queue, payloads)
        return BatchResult(tuple(failures))

    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        config = self._config(queue)
        qdir = f"{self._queues}/{queue}"
        messages, _ = self._claim(queue, qdir, config, max_messages)
        if messages or wait_s <= 0:
            return messages
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while True:
            # Drain, then scan: a send that the scan misses rings after the drain and wakes us.
            bell = self._doorbell(queue, qdir)
            bell.drain()
            messages, next_visible_ns = self._claim(queue, qdir, config, max_messages)
            if messages:
                return messages
            timeout = give_up - loop.time()
            if timeout <= 0:
                return []
            if next_visible_ns is not None:
                # + 1 ms so that the deadline has passed when we look again.
                timeout = min(timeout, max(0.0, (next_visible_ns - time.time_ns()) / 1e9) + 1e-3)
            await bell.wait(timeout)

    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        self._config(queue)
        qdir = f"{self._queues}/{queue}"
        failures: list[Failure] = []
        for index, receipt in enumerate(receipts):
            if not isinstance(receipt, str) or not _RECEIPT.fullmatch(receipt):
                failures.append(
                    Failure(
                        index,
                        "ReceiptHandleIsInvalid",
                        f"receipt {receipt!r} was not issued by this service",
                        retryable=False,
                    )
                )
                continue
            try:
                os.unlink(f"{qdir}/inflight/{receipt}")
            except FileNotFoundError:
                # Timed out already. If nobody has received it again yet, it still waits in
                # ready/ under the name it had for this receipt: delete it there. Otherwise it
                # was delivered again (at-least-once), which is not an error.
                _deadline, count, ts, token = receipt.split(".")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{qdir}/ready/{ts}.{count}.{token}")
        return BatchResult(tuple(failures))

    # -- helpers --------------------------------------------------------------------------------
    def _config(self, queue: str) -> QueueConfig:
        if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
            raise NotFound(f"no queue named {queue!r}")
        path = f"{self._queues}/{queue}/config.json"
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._configs.pop(queue, None)
            raise NotFound(f"no queue named {queue!r}") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._configs.get(queue)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            raw = json.loads(_read(path))
        except FileNotFoundError:
            raise NotFound(f"no queue named {queue!r}") from None
        config = QueueConfig(float(raw["visibility_timeout_s"]), int(raw["max_message_bytes"]))
        self._configs[queue] = (key, config)
        return config

    def _subs_dir(self, topic: str) -> str:
        if not isinstance(topic, str) or not _TOPIC_NAME.fullmatch(topic):
            raise NotFound(f"no topic named {topic!r}")
        return f"{self._topics}/{topic}/subs"

    def _subs(self, topic: str) -> _SubscriptionIndex:
        subs_dir = self._subs_dir(topic)
        snapshot = f"{self._topics}/{topic}/{_SNAPSHOT}"
        try:
            st = os.stat(snapshot)
        except (FileNotFoundError, NotADirectoryError):
            self._subscriptions.pop(topic, None)
            if not os.path.isdir(subs_dir):
                raise NotFound(f"no topic named {topic!r}") from None
            return _SubscriptionIndex([])  # a topic nobody subscribed to yet
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._subscriptions.get(topic)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            raw = json.loads(_read(snapshot))
        except FileNotFoundError:  # the topic was deleted meanwhile
            raise NotFound(f"no topic named {topic!r}") from None
        index = _SubscriptionIndex(sorted(
            (queue, {k: frozenset(v) for k, v in policy.items()}) for queue, policy in raw.items()))
        self._subscriptions[topic] = (key, index)
        return index

    @staticmethod
    def _encode(entry: Entry) -> bytes:
        return json.dumps(
            {"id": os.urandom(16).hex(), "body": entry.body, "attributes": dict(entry.attributes)},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    def _deliver(self, queue: str, payloads: list[bytes]) -> None:
        """Write messages into a queue's ready/ (each maybe twice) and ring its doorbell."""
        qdir = f"{self._queues}/{queue}"
        tmp_dir = f"{qdir}/tmp"
        ready_dir = f"{qdir}/ready"
        try:
            for data in payloads:
                copies = 1
                if self.duplicate_rate and self._rng.random() < self.duplicate_rate:
                    copies = 2
                for _ in range(copies):
                    # Strictly increasing within this process, so one sender's order is kept.
                    ts = self._last_ts = max(time.time_ns(), self._last_ts + 1)
                    name = f"{ts:020d}.0.{_token()}"
                    tmp = f"{tmp_dir}/{name}"
                    write_new(tmp, data)
                    os.rename(tmp, f"{ready_dir}/{name}")
        except FileNotFoundError:
            raise NotFound(f"no queue named {queue!r}") from None
        finally:
            _ring(f"{qdir}/doorbell")

    def _doorbell(self, queue: str, qdir: str) -> _Doorbell:
        bell = self._bells.get(queue)
        if bell is not None:
            if bell.current():
                return bell
            del self._bells[queue]
            bell.close()
        try:
            bell = _Doorbell(f"{qdir}/doorbell")
        except FileNotFoundError:
            raise NotFound(f"no queue named {queue!r}") from None
        self._bells[queue] = bell
        return bell

    def _claim(
        self, queue: str, qdir: str, config: QueueConfig, max_messages: int
    ) -> tuple[list[Message], int | None]:
        """Requeue expired in-flight messages, then claim up to ``max_messages`` visible ones.
        Also return the earliest deadline of the messages still in flight (None if none)."""
        now = time.time_ns()
        inflight_dir = f"{qdir}/inflight"
        ready_dir = f"{qdir}/ready"
        next_visible: int | None = None
        try:
            inflight = os.listdir(inflight_dir)
            ready = os.listdir(ready_dir)
        except FileNotFoundError:
            raise NotFound(f"no queue named {queue!r}") from None
        for name in inflight:
            deadline_s, count, ts, token = name.split(".")
            deadline = int(deadline_s)
            if deadline <= now:
                requeued = f"{ts}.{count}.{token}"
                try:
                    os.rename(f"{inflight_dir}/{name}", f"{ready_dir}/{requeued}")
                except FileNotFoundError:  # deleted, or requeued by someone else
                    continue
                ready.append(requeued)
            elif next_visible is None or deadline < next_visible:
                next_visible = deadline
        if not ready:
            return [], next_visible
        ready.sort()
        if self.shuffle:
            self._rng.shuffle(ready)
        visible_until = f"{now + int(config.visibility_timeout_s * 1e9):020d}"
        messages: list[Message] = []
        taken = 0
        for name in ready:
            if len(messages) >= max_messages:
                break
            taken += 1
            ts, count, token = name.split(".")
            receive_count = int(count) + 1
            receipt = f"{visible_until}.{receive_count}.{ts}.{token}"
            path = f"{inflight_dir}/{receipt}"
            try:
                os.rename(f"{ready_dir}/{name}", path)
                raw = json.loads(_read(path))
            except FileNotFoundError:  # claimed by another receiver (or expired and requeued)
                continue
            messages.append(Message(raw["body"], raw["attributes"], receipt, receive_count))
        if taken < len(ready):
            # We leave visible messages behind, and may have drained the ring that would have
            # woken another receiver for them: pass it on.
            bell = self._bells.get(queue)
            if bell is not None:
                bell.ring()
            else:
                _ring(f"{qdir}/doorbell")
        return messages, next_visible
