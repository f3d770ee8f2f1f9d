"""Fault injection: transports that lose, repeat, delay, damage and forge what a run sends, and
a runner that classifies what a run makes of it.

A :class:`Faults` (a frozen, JSON-able dataclass: a seed and a rate per kind of fault) travels
in the local backend's session description (``LocalBackend(faults=...)``); every process of the
run, the scheduler's and each worker's, then wraps its transports in
:class:`FaultyMessageService` and :class:`FaultyObjectStore`, which delegate to the real ones
and inject:

================  =========================================================================
kind              what happens
================  =========================================================================
``drop``          a chunk message is reported sent and never sent
``duplicate``     a chunk message is sent twice
``delay``         a chunk message is reported sent and sent later, from a background task
``reorder``       the entries of a batch call go in another order
``bitflip``       one bit of a chunk's raw bytes flips (the body stays valid base64)
``forge_marker``  before a chunk message, a forged empty marker: the real entry with every
                  attribute kept (authentication included) but ``count`` = "0" and no body
``replay``        a chunk message sent earlier by the same worker is sent again, later
``relabel``       a copy of a chunk message is sent labelled as another run's (``run``)
``forge_error``   before a status, a forged ``error`` status: the real one, attributes kept,
                  its JSON body's ``kind`` set to "error" and its message replaced
``flip_get``      one bit of an exchange object flips as it is read (transient)
``flip_put``      one bit of an exchange object flips as it is written (persistent)
``forge_object``  before an exchange object is written, a forged empty marker is written at
                  its key: the real object with its chunk list emptied, all else kept
``enospc``        writing an exchange or output object fails with OSError(ENOSPC)
``kill``/``stop`` a worker receives SIGKILL or SIGSTOP as it starts a layer
                  (``LocalBackend.kill`` and ``kill_signal``)
================  =========================================================================

Forgeries are made only by changing real traffic, never from a secret, so they exercise the
same checks an attacker who can write to a run's queues or bucket would.

Every decision is a hash of the seed, the fault's kind, the identity of what is sent (a chunk's
layer, sender, target and index; a status's worker, kind and layer; an object's key without its
run id) and how many times this process has sent that identity before: the sender is part of
each identity (and an optional ``role`` can be mixed in), so a seed gives the same schedule in
every run, whatever the run id, the process ids or the timing.

>>> f = Faults(seed=7, duplicate=0.5)
>>> f.kinds
('duplicate',)
>>> Faults.from_dict(f.to_dict()) == f
True
>>> import random
>>> g = Faults.random(random.Random(3), workers=4, layers=8)
>>> set(g.kinds) <= set(KINDS) and len(g.kinds) >= 1
True

:class:`Schedule` is one randomized run (network, worker count, channel, timeouts and faults,
all drawn from one seed); :class:`Runner` runs schedules on a warm local backend under a private
root and returns an :class:`Outcome`: ``exact`` (bit for bit the serial reference), ``failed``
(an :class:`~fsdgraph.errors.FsdError` naming a worker or an edge: acceptable), ``wrong`` (a
result that differs, reported as success: never acceptable) or ``bug`` (any other exception),
plus the processes and run directories it left behind. ``python -m fsdgraph.testing.faults
coordinate SCHEDULE_JSON ROOT`` runs one schedule as a coordinator process, for benchmarks that
kill it (bench/faults.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from fsdgraph.errors import FsdError
from fsdgraph.resources import RunNames
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Message,
    MessageService,
    ObjectStore,
    measured_size,
    pack_batches,
)
from fsdgraph.wire import from_json

#: Faults on chunk messages (queue and auto channels).
MESSAGE_KINDS = ("drop", "duplicate", "delay", "reorder", "bitflip", "forge_marker", "replay",
                 "relabel")
#: Faults on statuses (the run's control queue).
STATUS_KINDS = ("forge_error",)
#: Faults on exchange objects (object and auto channels) and outputs (``enospc``).
OBJECT_KINDS = ("flip_get", "flip_put", "forge_object", "enospc")
#: Faults on worker processes (``LocalBackend.kill``: "kill" is SIGKILL, "stop" SIGSTOP).
WORKER_KINDS = ("kill", "stop")
KINDS = MESSAGE_KINDS + STATUS_KINDS + OBJECT_KINDS + WORKER_KINDS
#: The coordinator process killed mid-run (bench/faults.py only).
COORDINATOR_KINDS = ("coordinator_kill", "coordinator_term")

#: What each kind may end in once the runtime defends against it: ``exact`` always; ``failed``
#: (naming the edge or worker) where nothing can recover what was lost or damaged for good.
EXPECTED: dict[str, frozenset[str]] = {
    **{k: frozenset({"exact"}) for k in KINDS},
    **{k: frozenset({"exact", "failed"}) for k in ("drop", "bitflip", "flip_get", "flip_put",
                                                  "enospc")},
}

#: The rates :meth:`Faults.random` draws from, per kind (low, high).
RATES: dict[str, tuple[float, float]] = {
    "drop": (0.01, 0.08), "duplicate": (0.05, 0.5), "delay": (0.05, 0.4),
    "reorder": (0.1, 0.8), "bitflip": (0.02, 0.15), "forge_marker": (0.05, 0.3),
    "replay": (0.05, 0.3), "relabel": (0.05, 0.3), "forge_error": (0.1, 0.4),
    "flip_get": (0.05, 0.3), "flip_put": (0.02, 0.15), "forge_object": (0.05, 0.3),
    "enospc": (0.02, 0.15),
}
#: One rate per kind that makes a fault very likely in a small run (:meth:`Faults.single`).
STRONG: dict[str, float] = {
    "drop": 0.05, "duplicate": 0.3, "delay": 0.3, "reorder": 0.6, "bitflip": 0.08,
    "forge_marker": 0.15, "replay": 0.2, "relabel": 0.2, "forge_error": 0.3, "flip_get": 0.15,
    "flip_put": 0.08, "forge_object": 0.15, "enospc": 0.08,
}
#: ``Faults.kill_signal`` values and the signals they send.
KILL_SIGNALS = ("KILL", "STOP")


@dataclass(frozen=True)
class Faults:
    """What to inject, and the seed every decision derives from (see the module docstring).
    Each rate is the probability that one chunk message, status, object write or object read
    gets that fault (``reorder``: one batch call)."""

    seed: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    reorder: float = 0.0
    bitflip: float = 0.0
    forge_marker: float = 0.0
    replay: float = 0.0
    relabel: float = 0.0
    forge_error: float = 0.0
    flip_get: float = 0.0
    flip_put: float = 0.0
    forge_object: float = 0.0
    enospc: float = 0.0
    #: The longest a delayed message waits (seconds).
    delay_max_s: float = 0.3
    #: How long a forged exchange object stands before the real one is written (seconds).
    forge_lead_s: float = 0.1
    #: ``(worker, layer)``: that worker's process gets ``kill_signal`` as it starts the layer.
    kill: tuple[int, int] | None = None
    kill_signal: str = "KILL"

    def __post_init__(self) -> None:
        if self.kill is not None:  # JSON gives a list
            object.__setattr__(self, "kill", tuple(self.kill))
        for name in RATES:
            rate = getattr(self, name)
            if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"Faults.{name} must be a rate in [0, 1], got {rate!r}")
        if self.delay_max_s < 0 or self.forge_lead_s < 0:
            raise ValueError("Faults.delay_max_s and forge_lead_s must be >= 0")
        if self.kill_signal not in KILL_SIGNALS:
            raise ValueError(f"Faults.kill_signal must be one of {KILL_SIGNALS}, "
                             f"got {self.kill_signal!r}")
        if self.kill is not None and len(self.kill) != 2:
            raise ValueError(f"Faults.kill must be (worker, layer), got {self.kill!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this schedule injects, in :data:`KINDS` order."""
        on = {name for name in RATES if getattr(self, name) > 0}
        if self.kill is not None:
            on.add("kill" if self.kill_signal == "KILL" else "stop")
        return tuple(k for k in KINDS if k in on)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (what the session description carries)."""
        d = asdict(self)
        d["kill"] = list(self.kill) if self.kill is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        return from_json(cls, data, "faults")

    @classmethod
    def single(cls, kind: str, seed: int, *, workers: int, layers: int) -> Faults:
        """Only ``kind``, at a rate that makes it very likely in a small run (:data:`STRONG`);
        ``kill``/``stop`` pick a worker and a layer from ``seed``."""
        rng = random.Random(seed)
        if kind in WORKER_KINDS:
            return cls(seed=seed, kill=(rng.randrange(workers), rng.randrange(1, layers)),
                       kill_signal="KILL" if kind == "kill" else "STOP")
        if kind not in STRONG:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
        rate: dict[str, Any] = {kind: STRONG[kind]}
        return dataclasses.replace(cls(seed=seed), **rate)

    @classmethod
    def random(cls, rng: random.Random, *, workers: int, layers: int,
               kinds: Sequence[str] = KINDS, most: int = 3) -> Faults:
        """A schedule of 1 to ``most`` kinds drawn from ``kinds``, each at a random rate
        (:data:`RATES`); at most one of ``kill``/``stop``, at a random worker and layer."""
        pool = [k for k in KINDS if k in kinds]
        if not pool:
            raise ValueError("Faults.random needs at least one kind")
        chosen = rng.sample(pool, rng.randint(1, min(most, len(pool))))
        rates: dict[str, Any] = {k: round(rng.uniform(*RATES[k]), 4) for k in chosen
                                 if k in RATES}
        killer = [k for k in chosen if k in WORKER_KINDS]
        kill = None
        if killer:
            kill = (rng.randrange(workers), rng.randrange(1, max(2, layers)))
        faults = cls(seed=rng.randrange(2**31), kill=kill,
                     kill_signal="STOP" if killer[:1] == ["stop"] else "KILL",
                     delay_max_s=round(rng.uniform(0.02, 0.3), 3))
        return dataclasses.replace(faults, **rates)


# -- decisions ------------------------------------------------------------------------------------
def _digest(parts: Sequence[object]) -> int:
    return int.from_bytes(hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest(),
                          "big")


def draw(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (the seed, the kind, the identity...).

    >>> draw(1, "drop", (3, 0, 1, 0), 0) == draw(1, "drop", (3, 0, 1, 0), 0)
    True
    """
    return _digest(parts) / 2**64


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one bit flipped, chosen by ``rng`` (empty data stays empty).

    >>> flip_bit(b"\\x00\\x00", random.Random(1)) != b"\\x00\\x00"
    True
    """
    if not data:
        return data
    bit = rng.randrange(len(data) * 8)
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def flip_body(body: str, rng: random.Random) -> str | None:
    """A base64 body with one bit of its raw bytes flipped, re-encoded (still valid base64);
    None for a body that is empty or not canonical base64 (e.g. an auto-channel pointer).

    >>> import base64
    >>> flipped = flip_body(base64.b64encode(b"chunk").decode(), random.Random(2))
    >>> raw = base64.b64decode(flipped, validate=True)
    >>> sum(bin(a ^ b).count("1") for a, b in zip(raw, b"chunk"))
    1
    """
    if not body:
        return None
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if not raw or base64.b64encode(raw).decode("ascii") != body:
        return None
    return base64.b64encode(flip_bit(raw, rng)).decode("ascii")


def forged_marker(entry: Entry) -> Entry:
    """The empty marker forged from a real chunk message: every attribute kept (its
    authentication too), ``count`` set to "0", no body.

    >>> forged_marker(Entry("QUJD", {"run": "r", "count": "2", "tag": "t"}))
    Entry(body='', attributes={'run': 'r', 'count': '0', 'tag': 't'})
    """
    return Entry("", {**entry.attributes, "count": "0"})


def relabelled(entry: Entry, rng: random.Random) -> Entry:
    """A copy of ``entry`` labelled as another run's (its ``run`` attribute changed only)."""
    run = entry.attributes.get("run", "")
    other = run
    while other == run:
        width = max(1, len(run))
        other = f"{rng.getrandbits(4 * width):0{width}x}"
    return Entry(entry.body, {**entry.attributes, "run": other})


def forged_error(entry: Entry) -> Entry | None:
    """A forged ``error`` status made from a real status message: its JSON body's ``kind`` set
    to "error" and its message replaced, everything else (attributes, tag) kept; None if the
    body is not a JSON object with a ``kind`` or is an error already.

    >>> real = Entry('{"kind": "progress", "worker": 2, "message": ""}', {"kind": "progress"})
    >>> forged = forged_error(real)
    >>> body = json.loads(forged.body)
    >>> body["kind"], body["worker"], forged.attributes
    ('error', 2, {'kind': 'progress'})
    """
    try:
        body = json.loads(entry.body)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("kind") in (None, "error"):
        return None
    body["kind"] = "error"
    body["message"] = f"RunError: worker {body.get('worker')}: forged error status (injected)"
    if "error_type" in body:
        body["error_type"] = "RunError"
    return Entry(json.dumps(body), dict(entry.attributes))


def forged_marker_object(data: bytes) -> bytes | None:
    """The empty-marker object forged from a real exchange object: its msgpack array (or map)
    with the chunk list (the first list of byte strings) emptied and all else kept, whatever the
    rest of the format holds; None if there is no non-empty chunk list to empty.

    >>> real = msgpack.packb(["fmt", "r1", [b"a", b"b"], "tag"], use_bin_type=True)
    >>> msgpack.unpackb(forged_marker_object(real))
    ['fmt', 'r1', [], 'tag']
    """
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None

    def is_chunks(v: object) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(p, bytes) for p in v)

    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if is_chunks(v):
                return bytes(msgpack.packb([*obj[:i], [], *obj[i + 1:]], use_bin_type=True))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if is_chunks(v):
                return bytes(msgpack.packb({**obj, k: []}, use_bin_type=True))
    return None


def chunk_identity(attributes: Mapping[str, str]) -> tuple[str, ...] | None:
    """``(layer, src, target, index)`` of a chunk message; None for anything else (probes)."""
    try:
        return tuple(attributes[k] for k in ("layer", "src", "target", "index"))
    except KeyError:
        return None


_EXCHANGE = re.compile(r"runs/[^/]+/x/(\d+)/(\d+)/(\d+)")
_OUTPUT = re.compile(r"runs/[^/]+/out/(\d+)")


class _Decider:
    """The decisions of one process: ``hit(kind, identity)`` counts how often ``identity`` was
    seen and draws against the kind's rate."""

    def __init__(self, faults: Faults, role: str | None) -> None:
        self.faults = faults
        self.role = role
        self.seen: Counter[tuple[object, ...]] = Counter()
        #: What this process injected, by kind (for tests of the wrappers).
        self.injected: Counter[str] = Counter()

    def occurrence(self, identity: tuple[object, ...]) -> int:
        n = self.seen[identity]
        self.seen[identity] = n + 1
        return n

    def hit(self, kind: str, identity: tuple[object, ...], n: int) -> bool:
        rate: float = getattr(self.faults, kind)
        if rate <= 0 or draw(self.faults.seed, self.role, kind, identity, n) >= rate:
            return False
        self.injected[kind] += 1
        return True

    def rng(self, kind: str, identity: tuple[object, ...], n: int) -> random.Random:
        return random.Random(_digest((self.faults.seed, self.role, kind, "rng", identity, n)))


# -- the message service ----------------------------------------------------------------------
_Out = tuple[str, str, Entry]  # ("publish" or "send", topic or queue, entry)


class FaultyMessageService(MessageService):
    """``inner`` with faults injected into what is published or sent (see the module
    docstring): chunk messages on data topics and queues, and statuses on the control queue of
    ``names`` (without ``names``, statuses are left alone). Receives, deletes and provisioning
    are ``inner``'s."""

    def __init__(self, inner: MessageService, faults: Faults, names: RunNames | None = None,
                 role: str | None = None) -> None:
        self.inner = inner
        self.faults = faults
        self.names = names
        self.limits = inner.limits
        self._decide = _Decider(faults, role)
        self._history: list[_Out] = []
        self._pending: dict[int, _Out] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens = 0

    @property
    def injected(self) -> Counter[str]:
        return self._decide.injected

    # -- provisioning: the inner service's -------------------------------------------------------
    async def create_queue(self, name: str, *, visibility_timeout_s: float,
                           max_message_bytes: int) -> str:
        return await self.inner.create_queue(name, visibility_timeout_s=visibility_timeout_s,
                                             max_message_bytes=max_message_bytes)

    async def create_topic(self, name: str) -> str:
        return await self.inner.create_topic(name)

    async def subscribe(self, topic: str, queue: str, *,
                        filter_policy: Mapping[str, Sequence[str]]) -> None:
        await self.inner.subscribe(topic, queue, filter_policy=filter_policy)

    async def delete_queue(self, queue: str) -> None:
        await self.inner.delete_queue(queue)

    async def delete_topic(self, topic: str) -> None:
        await self.inner.delete_topic(topic)

    # -- data plane -------------------------------------------------------------------------------
    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        return await self._chunks("publish", topic, entries)

    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        if self.names is not None and queue == self.names.control_queue:
            return await self._statuses(queue, entries)
        return await self._chunks("send", queue, entries)

    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        return await self.inner._receive(queue, max_messages, wait_s)

    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        return await self.inner._delete_batch(queue, receipts)

    async def _call(self, method: str, to: str, batch: Sequence[Entry]) -> BatchResult:
        sizes = [measured_size(e) for e in batch]
        if method == "publish":
            return await self.inner._publish_batch(to, batch, sizes)
        return await self.inner._send_batch(to, batch, sizes)

    async def _extra(self, items: Sequence[_Out]) -> None:
        """Send injected entries (forgeries, copies, replays); their fate is not reported."""
        groups: dict[tuple[str, str], list[Entry]] = {}
        for method, to, entry in items:
            groups.setdefault((method, to), []).append(entry)
        for (method, to), group in groups.items():
            for batch in pack_batches(group, self.limits.max_batch_entries,
                                      self.limits.max_batch_bytes):
                with contextlib.suppress(FsdError):  # e.g. the queue is gone: the run is over
                    await self._call(method, to, batch)

    async def _chunks(self, method: str, to: str, entries: Sequence[Entry]) -> BatchResult:
        d = self._decide
        main: list[tuple[int, Entry]] = []  # (index in ``entries``, what goes in its place)
        before: list[_Out] = []
        after: list[_Out] = []
        for i, entry in enumerate(entries):
            ident = chunk_identity(entry.attributes)
            if ident is None:
                main.append((i, entry))
                continue
            n = d.occurrence(("chunk", *ident))
            if d.hit("drop", ident, n):
                continue  # reported sent
            if d.hit("bitflip", ident, n):
                flipped = flip_body(entry.body, d.rng("bitflip", ident, n))
                if flipped is None:
                    d.injected["bitflip"] -= 1  # nothing to flip in an empty marker or pointer
                else:
                    entry = Entry(flipped, dict(entry.attributes))
            if d.hit("forge_marker", ident, n):
                before.append((method, to, forged_marker(entry)))
            if d.hit("delay", ident, n):
                wait = d.rng("delay", ident, n).uniform(0.0, self.faults.delay_max_s)
                self._later((method, to, entry), wait)
                continue  # reported sent
            main.append((i, entry))
            if d.hit("duplicate", ident, n):
                after.append((method, to, entry))
            if d.hit("relabel", ident, n):
                after.append((method, to, relabelled(entry, d.rng("relabel", ident, n))))
            if self._history and d.hit("replay", ident, n):
                pick = d.rng("replay", ident, n).randrange(len(self._history))
                after.append(self._history[pick])
            self._history = [*self._history[-255:], (method, to, entry)]
        if len(main) > 1:
            batch_id = tuple(chunk_identity(e.attributes) for _, e in main)
            n = d.occurrence(("batch", batch_id))
            if d.hit("reorder", batch_id, n):
                d.rng("reorder", batch_id, n).shuffle(main)
        if before:
            await self._extra(before)  # the forgery first: it is what a receiver sees first
        result = await self._call(method, to, [e for _, e in main])
        if after:
            await self._extra(after)
        return BatchResult(tuple(dataclasses.replace(f, index=main[f.index][0])
                                 for f in result.failures))

    async def _statuses(self, queue: str, entries: Sequence[Entry]) -> BatchResult:
        d = self._decide
        before: list[_Out] = []
        for entry in entries:
            try:
                body = json.loads(entry.body)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            ident = ("status", body.get("worker"), body.get("kind"), body.get("layer"))
            n = d.occurrence(ident)
            if d.hit("forge_error", ident, n):
                forged = forged_error(entry)
                if forged is None:
                    d.injected["forge_error"] -= 1
                else:
                    before.append(("send", queue, forged))
        if before:
            await self._extra(before)
        return await self._call("send", queue, entries)

    # -- delays -----------------------------------------------------------------------------------
    def _later(self, out: _Out, wait_s: float) -> None:
        token = self._tokens
        self._tokens += 1
        self._pending[token] = out
        task = asyncio.get_running_loop().create_task(self._send_later(token, wait_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_later(self, token: int, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        out = self._pending.pop(token, None)
        if out is not None:
            await self._extra([out])

    def close(self) -> None:
        """Send what is still delayed (a message once published outlives its sender), then
        close the inner service."""
        for task in list(self._tasks):
            task.cancel()
        pending = list(self._pending.values())
        self._pending.clear()
        if pending:  # in a thread of its own: this may be called inside a running event loop
            sender = threading.Thread(target=asyncio.run, args=(self._extra(pending),))
            sender.start()
            sender.join()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


# -- the object store -----------------------------------------------------------------------
class FaultyObjectStore(ObjectStore):
    """``inner`` with faults injected into the exchange objects (``runs/<run>/x/...``) and,
    for ``enospc``, the outputs (``runs/<run>/out/<w>``); everything else is ``inner``'s."""

    def __init__(self, inner: ObjectStore, faults: Faults, names: RunNames | None = None,
                 role: str | None = None) -> None:
        self.inner = inner
        self.faults = faults
        self.names = names
        self.limits = getattr(inner, "limits", None)
        self._decide = _Decider(faults, role)

    @property
    def injected(self) -> Counter[str]:
        return self._decide.injected

    @staticmethod
    def _edge(key: str) -> tuple[str, ...] | None:
        m = _EXCHANGE.fullmatch(key)
        return ("x", *m.groups()) if m else None

    async def _put(self, key: str, data: bytes) -> None:
        d = self._decide
        edge = self._edge(key)
        out = _OUTPUT.fullmatch(key)
        ident = edge or (("out", out.group(1)) if out else None)
        if ident is not None:
            n = d.occurrence(("put", *ident))
            if d.hit("enospc", ident, n):
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected)", key)
            if edge is not None:
                if d.hit("forge_object", ident, n):
                    forged = forged_marker_object(data)
                    if forged is None:
                        d.injected["forge_object"] -= 1
                    else:
                        await self.inner._put(key, forged)
                        await asyncio.sleep(self.faults.forge_lead_s)
                if d.hit("flip_put", ident, n):
                    data = flip_bit(data, d.rng("flip_put", ident, n))
        await self.inner._put(key, data)

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        return await self.inner._put_if_absent(key, data)

    async def get(self, key: str) -> bytes:
        data = await self.inner.get(key)
        edge = self._edge(key)
        if edge is not None:
            n = self._decide.occurrence(("get", *edge))
            if self._decide.hit("flip_get", edge, n):
                return flip_bit(data, self._decide.rng("flip_get", edge, n))
        return data

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        await self.inner.wait_for(keys, timeout_s)


# -- schedules and outcomes ---------------------------------------------------------------------
def channels_for(kinds: Sequence[str]) -> list[str]:
    """The channels where every one of ``kinds`` can happen (chunk messages: queue and auto;
    exchange objects: object and auto; statuses and workers: all three).

    >>> channels_for(["drop", "flip_get"]), channels_for(["kill"])
    (['auto'], ['queue', 'object', 'auto'])
    """
    on = set(kinds)
    if on & set(MESSAGE_KINDS) and on & set(OBJECT_KINDS):
        return ["auto"]
    if on & set(MESSAGE_KINDS):
        return ["queue", "auto"]
    if on & set(OBJECT_KINDS):
        return ["object", "auto"]
    return ["queue", "object", "auto"]


#: Peer and stall timeouts: short where a fault may end a run (it ends quickly), generous where
#: nothing should fail (a loaded machine is slow, not wrong). With a worker killed or stopped,
#: the scheduler relaunches it after a short silence, and its peers and the stall watch
#: out-wait the relaunch.
SHORT_PEER_S, LONG_PEER_S = 3.0, 20.0
LONG_STALL_S = 20.0
RELAUNCH_AFTER_S = 10.0
KILL_PEER_S, KILL_STALL_S, KILL_RELAUNCH_AFTER_S = 20.0, 30.0, 1.0


@dataclass(frozen=True)
class Schedule:
    """One run under faults, all drawn from ``seed`` by :meth:`random`."""

    seed: int
    faults: Faults
    neurons: int = 64
    layers: int = 8
    workers: int = 4
    images: int = 32
    channel: str = "queue"
    #: The auto channel's line (bytes): small, so that edges go both ways.
    auto_object_above_bytes: int = 0
    peer_timeout_s: float = LONG_PEER_S
    stall_timeout_s: float = LONG_STALL_S
    #: A worker silent this long is relaunched (``RunConfig.relaunch_after_s``).
    relaunch_after_s: float = RELAUNCH_AFTER_S
    #: "KILL" or "TERM": the coordinator process gets it mid-run (bench/faults.py).
    coordinator: str | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        coordinator = (f"coordinator_{self.coordinator.lower()}",) if self.coordinator else ()
        return self.faults.kinds + coordinator

    @property
    def may_fail(self) -> bool:
        """Whether a failure naming a worker or an edge is acceptable (a kind that allows it)."""
        return any("failed" in EXPECTED.get(k, frozenset()) for k in self.faults.kinds)

    def allowed(self) -> frozenset[str]:
        """The outcomes this schedule may end in once every defence is in (:data:`EXPECTED`)."""
        return frozenset({"exact", "failed"}) if self.may_fail else frozenset({"exact"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["faults"] = self.faults.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        fields = dict(data)
        fields["faults"] = Faults.from_dict(fields["faults"])
        return cls(**fields)

    @classmethod
    def single(cls, kind: str, seed: int, **fixed: Any) -> Schedule:
        """A random small run (:meth:`random`) with only ``kind``, at a rate that makes it very
        likely (:meth:`Faults.single`)."""
        network = cls.random(seed, kinds=(kind,), **fixed)
        faults = Faults.single(kind, seed, workers=network.workers, layers=network.layers)
        return cls.random(seed, faults=faults, **fixed)

    @classmethod
    def random(cls, seed: int, *, kinds: Sequence[str] = KINDS, faults: Faults | None = None,
               most: int = 3, **fixed: Any) -> Schedule:
        """A small random run (64 or 256 neurons, 6 to 12 layers, 2 to 7 workers, 16 to 48
        images) on a channel the faults apply to, with 1 to ``most`` kinds of ``kinds`` (or the
        given ``faults``); ``fixed`` overrides any field."""
        rng = random.Random(seed)
        network = {"neurons": rng.choice([64, 256]), "layers": rng.randint(6, 12),
                   "workers": rng.randint(2, 7), "images": rng.randint(16, 48)}
        network.update({k: v for k, v in fixed.items() if k in network})
        if faults is None:
            faults = Faults.random(rng, workers=network["workers"], layers=network["layers"],
                                   kinds=kinds, most=most)
        on = set(faults.kinds)
        channel = rng.choice(channels_for(faults.kinds))
        channel = fixed.get("channel", channel)
        fields: dict[str, Any] = {
            "seed": seed, "faults": faults, "channel": channel, **network,
            "auto_object_above_bytes": rng.choice([1, 600, 2000]) if channel == "auto" else 0}
        ends_early = any("failed" in EXPECTED[k] for k in on)
        if on & set(WORKER_KINDS):
            fields.update(peer_timeout_s=KILL_PEER_S, stall_timeout_s=KILL_STALL_S,
                          relaunch_after_s=KILL_RELAUNCH_AFTER_S)
        else:
            fields.update(peer_timeout_s=SHORT_PEER_S if ends_early else LONG_PEER_S,
                          stall_timeout_s=LONG_STALL_S)
        fields.update({k: v for k, v in fixed.items() if k not in network})
        return cls(**fields)


@dataclass
class Outcome:
    """What a schedule ended in (see the module docstring)."""

    schedule: Schedule
    verdict: str  #: exact, failed, wrong, bug (or, for a killed coordinator, killed)
    error: str = ""  #: the exception as ``Type: message`` (failed, bug)
    leaked_processes: list[int] = field(default_factory=list)
    leaked_paths: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: A finished run's report counters of what its defences dropped (:data:`COUNTERS`).
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def leaked(self) -> bool:
        return bool(self.leaked_processes or self.leaked_paths)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.schedule.seed, "kinds": list(self.schedule.kinds),
                "verdict": self.verdict, "error": self.error[:300],
                "leaked_processes": self.leaked_processes, "leaked_paths": self.leaked_paths,
                "seconds": round(self.seconds, 3), "counters": self.counters,
                "schedule": self.schedule.to_dict()}


#: Counters of a run's report that show a fault met its defence (copies, strays, forgeries and
#: damage dropped, statuses rejected, workers relaunched).
COUNTERS = ("duplicates_dropped", "stray_dropped", "unauthenticated_dropped",
            "statuses_rejected", "relaunches")


def _error_names() -> tuple[frozenset[str], frozenset[str]]:
    def subclasses(cls: type) -> set[str]:
        out = {cls.__name__}
        sub: type
        for sub in cls.__subclasses__():
            out |= subclasses(sub)
        return out

    return frozenset(subclasses(FsdError)), frozenset(subclasses(OSError))


#: A failure message that says where: a worker, or an exchange edge or its key.
NAMES_A_PLACE = re.compile(r"\bworker \d+\b|runs/[^/\s]+/x/\d+/\d+/\d+|\bedge\b")
_WORKER_ERROR = re.compile(r"worker \d+ failed at layer \d+: (\w+)")


def classify(exc: BaseException) -> tuple[str, str]:
    """``(verdict, "Type: message")`` of a run that raised ``exc``: ``failed`` for an
    :class:`~fsdgraph.errors.FsdError` that names a worker or an edge and, if it reports a
    worker's error, one that is an FsdError or an OSError there too; else ``bug``.

    >>> from fsdgraph.errors import RunError, RunTimeout
    >>> classify(RunTimeout("worker 2 layer 5: nothing new from [1] for 3 s"))[0]
    'failed'
    >>> classify(RunError("worker 1 failed at layer 3: IndexError: index 9 is out of bounds"))[0]
    'bug'
    >>> classify(KeyError("count"))[0]
    'bug'
    """
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, FsdError) or not NAMES_A_PLACE.search(str(exc)):
        return "bug", text
    fsd, os_errors = _error_names()
    remote = _WORKER_ERROR.match(str(exc))
    if remote and remote.group(1) not in fsd | os_errors:
        return "bug", text
    return "failed", text


# -- processes and directories --------------------------------------------------------------------
def _processes() -> dict[int, tuple[int, str]]:
    """``pid -> (parent pid, state)`` of every process (Linux ``/proc``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(rest[1]), rest[0])
    return table


def descendants(pid: int | None = None) -> list[int]:
    """Live (not zombie) descendants of process ``pid`` (default: this one), sorted."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for p, (parent, _) in table.items():
        children.setdefault(parent, []).append(p)
    found: list[int] = []
    frontier = [os.getpid() if pid is None else pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return sorted(p for p in found if table.get(p, (0, "Z"))[1] != "Z")


def alive(pids: Sequence[int]) -> list[int]:
    """Those of ``pids`` still running (not zombies) and still fsdgraph processes (a pid
    can be reused)."""
    from fsdgraph.backends.local.owner import command_line, pid_alive

    return [pid for pid in pids
            if pid_alive(pid) and any("fsdgraph" in arg for arg in command_line(pid))]


def settle(check: Callable[[], list[Any]], grace_s: float) -> list[Any]:
    """What ``check`` still finds once it finds nothing, or after ``grace_s`` seconds of
    finding something (then it is a leak, not a slow exit)."""
    from fsdgraph.testing.waiting import wait_until

    give_up = time.monotonic() + grace_s
    with contextlib.suppress(AssertionError):  # given up: what is left is a leak
        wait_until(lambda: not check(), "leftovers to go",
                   alive=lambda: time.monotonic() < give_up)
    return check()


class Runner:
    """Runs schedules one after another on one warm local backend whose run directories go
    under ``root``; checks each result against the serial reference and what it left behind."""

    def __init__(self, root: str | Path, *, leak_grace_s: float = 30.0) -> None:
        from fsdgraph.backends.local import LocalBackend

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.leak_grace_s = leak_grace_s
        self.backend = LocalBackend(root=str(self.root))
        #: Processes under this one before a schedule runs (a test session's servers, say):
        #: never the schedule's, never counted or killed as its leftovers.
        self._before: set[int] = set()
        self._networks: dict[tuple[int, int, int, int], Any] = {}

    def close(self) -> None:
        self.backend.close()

    def network(self, s: Schedule) -> Any:
        """``(plan, images, reference)`` of a schedule's network (cached)."""
        import fsdgraph
        from fsdgraph.sources.images import synthetic_images
        from fsdgraph.sources.radixnet import radixnet

        key = (s.neurons, s.layers, s.workers, s.images)
        if key not in self._networks:
            graph = fsdgraph.sequential(radixnet(s.neurons, s.layers, seed=1), -0.1,
                                        cap=32, bias_on_nonzero=True)
            images = synthetic_images(s.neurons, s.images, seed=2)
            self._networks[key] = (fsdgraph.compile(graph, workers=s.workers), images,
                                   fsdgraph.reference_inference(images, graph.layers()))
        return self._networks[key]

    def config(self, s: Schedule) -> Any:
        import fsdgraph

        return fsdgraph.RunConfig(
            progress=False, timeout_s=120.0, stall_timeout_s=s.stall_timeout_s,
            progress_interval_s=0.25, relaunch_after_s=s.relaunch_after_s,
            channel=fsdgraph.ChannelConfig(
                peer_timeout_s=s.peer_timeout_s, poll_wait_s=0.2, visibility_timeout_s=2.0,
                auto_object_above_bytes=s.auto_object_above_bytes))

    def leftovers(self) -> tuple[list[int], list[str]]:
        """Processes under this one that the schedule started and paths under the root, but
        the warm launcher's (it serves every run)."""
        pool = self.backend._pool
        pid, directory = ((pool.process.pid, Path(pool.directory).name)
                          if pool is not None and pool.alive else (None, None))
        return ([p for p in descendants() if p != pid and p not in self._before],
                sorted(p.name for p in self.root.iterdir() if p.name != directory))

    def run(self, s: Schedule) -> Outcome:
        import numpy as np

        import fsdgraph

        plan, images, reference = self.network(s)
        self._before = set(descendants())
        self.backend.faults = s.faults
        self.backend.kill = s.faults.kill
        self.backend.kill_signal = s.faults.kill_signal
        start = time.monotonic()
        error = ""
        counters: dict[str, int] = {}
        try:
            result = fsdgraph.Scheduler(self.backend, s.channel, self.config(s)).run_sync(
                plan, images)
        except Exception as exc:
            verdict, error = classify(exc)
        else:
            got, want = result.activations.toarray(), reference.toarray()
            same = got.shape == want.shape and np.array_equal(got.view(np.uint32),
                                                               want.view(np.uint32))
            verdict = "exact" if same else "wrong"
            counters = {k: int(result.report.get(k, 0)) for k in COUNTERS}
            if not same:
                error = f"{int((got != want).sum())} of {want.size} values differ"
        finally:
            self.backend.faults = None
            self.backend.kill = None
        seconds = time.monotonic() - start
        processes = settle(lambda: self.leftovers()[0], self.leak_grace_s)
        paths = settle(lambda: self.leftovers()[1], self.leak_grace_s)
        return Outcome(s, verdict, error, processes, paths, seconds, counters)

    def clean(self, outcome: Outcome) -> None:
        """Remove what a schedule leaked (its processes were started here), so that the next
        one starts clean."""
        for pid in alive(outcome.leaked_processes):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for name in outcome.leaked_paths:
            shutil.rmtree(self.root / name, ignore_errors=True)


# -- a coordinator killed mid-run ---------------------------------------------------------------
def _pid_files(root: Path) -> dict[str, int]:
    """``name -> pid`` of every worker and host process recorded under the run directories."""
    found = {}
    for record in root.glob("fsdgraph-*/pids/*"):
        with contextlib.suppress(OSError, ValueError):
            found[record.name] = int(record.read_text())
    return found


def kill_coordinator(s: Schedule, root: str | Path, *, leak_grace_s: float = 10.0) -> Outcome:
    """Run ``s`` in a coordinator process of its own (its warm launcher and run directories
    under ``root``), send it SIG``s.coordinator`` once every worker has started, and report
    what is left after ``leak_grace_s``: worker, host and launcher processes, directories."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(  # its launcher's directory goes under root too (a short root)
        [sys.executable, "-m", "fsdgraph.testing.faults", "coordinate",
         json.dumps(s.to_dict()), str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    workers = s.workers

    def started() -> bool:
        return proc.poll() is not None or sum(
            1 for name in _pid_files(root) if name.split(".")[0].isdigit()) >= workers

    from fsdgraph.testing.waiting import wait_until

    wait_until(started, "every worker to start")
    seen = set(descendants(proc.pid)) | set(_pid_files(root).values())
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if s.coordinator == "KILL" else signal.SIGTERM)
        verdict = "killed"
    else:  # the run was over before the signal could land
        verdict = "finished"
    assert proc.stdout is not None
    printed = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    error = ""
    if verdict == "finished":  # what the run itself ended in
        try:
            ran = json.loads(printed)
            verdict, error = ("finished" if ran["verdict"] == "exact" else ran["verdict"],
                              ran["error"])
        except (ValueError, KeyError, TypeError):
            verdict, error = "bug", f"the coordinator exited with {proc.returncode}"
    seen |= set(_pid_files(root).values())
    processes = settle(lambda: alive(sorted(seen | set(_pid_files(root).values()))),
                       leak_grace_s)
    paths = settle(lambda: sorted(p.name for p in root.iterdir()), leak_grace_s)
    outcome = Outcome(s, verdict, error, processes, paths, time.monotonic() - start)
    for pid in alive(processes):  # ours: started by the coordinator above
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for name in paths:
        shutil.rmtree(root / name, ignore_errors=True)
    return outcome


def _coordinate(schedule_json: str, root: str) -> int:
    """The coordinator process of :func:`kill_coordinator`: run the schedule, then exit."""
    runner = Runner(root, leak_grace_s=0.0)
    try:
        outcome = runner.run(Schedule.from_dict(json.loads(schedule_json)))
    finally:
        runner.close()
    print(json.dumps(outcome.to_dict()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "coordinate":
        sys.exit(_coordinate(sys.argv[2], sys.argv[3]))
    sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'faults'} coordinate "
             f"SCHEDULE_JSON ROOT")
