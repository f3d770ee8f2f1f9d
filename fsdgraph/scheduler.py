"""The scheduler: submit a plan, get the outputs, metrics and a clean slate back.

One run, in order (``Scheduler.run``):

1. open a backend session; check the run against the backend (``Backend.preflight``: quotas,
   concurrency, function timeout) and size the channel's resources to the quotas
   (``Channel.fit``); stage every worker's plan shard and input columns in the object store
   (keys under ``runs/<run id>/``);
2. create the run's control plane and the channel's resources (queues, topics: concurrently, and
   proven to deliver before any worker starts), timed and counted as the report's ``setup_s``
   and ``setup_requests``;
3. invoke the roots of the invocation tree (they invoke the rest) and poll the control plane:
   progress moves the progress bar; an ``error`` status fails the run at once with the worker's
   own message; a worker silent for ``stall_timeout_s`` or a run longer than ``timeout_s`` fails
   it with a :class:`~fsdgraph.errors.RunTimeout` naming the workers, their last layer and what
   is missing;
4. fetch every worker's output columns and metrics, assemble the (batch x out) activations;
5. always: delete queues, topics and objects of the run, close the session (``teardown_s``,
   ``teardown_requests``);
6. report (:mod:`fsdgraph.report`): the run's metrics, what the channel chose, and the bill at
   the backend's prices (none for a backend that has no price table).

State of the watch loop is one :class:`RunState`; the loop only feeds it status messages and the
clock, which keeps the failure rules in one readable place. Statuses are drained by several
concurrent polls at scale (:func:`fsdgraph.control.pollers`), and how late each arrives is
measured (``status_lag_s``: from the worker's send to the scheduler's receive).

>>> import numpy as np, scipy.sparse as sp
>>> from fsdgraph import compile, sequential
>>> plan = compile(sequential([sp.eye(4, format="csr", dtype=np.float32)], bias=-0.5), workers=2)
>>> y = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 0, 0]], np.float32))
>>> Scheduler("local", "object").run_sync(plan, y).categories
array([0])
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from fsdgraph import defaults
from fsdgraph.backend import Backend, Services
from fsdgraph.backends import get_backend
from fsdgraph.channels import ChannelConfig, get_channel
from fsdgraph.checkpoints import attempt_object, checkpoint_every
from fsdgraph.codec import input_parts, read_output
from fsdgraph.control import (
    CONTROL_POLL_S,
    FUNCTION_FAILED,
    Status,
    heartbeat_interval,
    pollers,
)
from fsdgraph.errors import (
    ConfigError,
    FsdError,
    GraphError,
    InputError,
    ProtocolError,
    RunError,
    RunTimeout,
)
from fsdgraph.event import WorkerEvent
from fsdgraph.integrity import RunKey
from fsdgraph.kernels import Block, categories
from fsdgraph.kernels.block import DENSE_ABOVE
from fsdgraph.kernels.choice import NAMES as KERNELS
from fsdgraph.metrics import WorkerMetrics, counted
from fsdgraph.model_plan import ModelPlan
from fsdgraph.model_plan import input_parts as model_input_parts
from fsdgraph.model_plan import read_outputs as read_model_outputs
from fsdgraph.plan import Plan
from fsdgraph.prices import Prices
from fsdgraph.report import RunFacts, build_report
from fsdgraph.resources import RunNames
from fsdgraph.retry import retry
from fsdgraph.sealed import ALIGN, seal, unseal_parts
from fsdgraph.transport import Limits, check_invoke_payload
from fsdgraph.tree import depth, roots


@dataclass(frozen=True)
class RunConfig:
    """How a run is launched and watched (times in seconds)."""

    branching: int = defaults.BRANCHING  #: children per node of the invocation tree
    timeout_s: float = defaults.TIMEOUT_S  #: the whole run
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S  #: a worker silent this long failed
    progress: bool | None = None  #: progress bar; None = only on a terminal
    progress_interval_s: float = CONTROL_POLL_S  #: how often a worker reports progress
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    #: Workers relaunched (from their last checkpoint) in one run before a lost one fails it.
    relaunches: int = defaults.RELAUNCHES
    #: A worker silent this long (and at least four heartbeat intervals) is relaunched.
    relaunch_after_s: float = defaults.RELAUNCH_AFTER_S
    #: Layers between two checkpoints of a worker's output; None: chosen from their cost
    #: (:func:`fsdgraph.checkpoints.checkpoint_every`), 0: never (no relaunch possible).
    checkpoint_every: int | None = None
    #: The workers' layer kernel (auto, numba, scipy: ``fsdgraph.kernels.choice``); None: each
    #: function's own ``FSDGRAPH_KERNEL``, else auto. All give the same results.
    kernel: str | None = None
    #: Threads per layer product in a worker; 0: the function's own choice (one per vCPU on
    #: Lambda, else 1).
    kernel_threads: int = 0

    def __post_init__(self) -> None:
        if (isinstance(self.branching, bool) or not isinstance(self.branching, int)
                or self.branching < 1):
            raise ConfigError(f"branching must be an integer >= 1, got {self.branching!r}")
        if self.kernel is not None and self.kernel not in ("auto", *KERNELS):
            raise ConfigError(f"kernel {self.kernel!r}: expected one of auto, "
                              f"{', '.join(KERNELS)}")
        for name in ("relaunches", "checkpoint_every", "kernel_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("timeout_s", "stall_timeout_s", "progress_interval_s", "relaunch_after_s"):
            value = getattr(self, name)
            # ``not x > 0`` also refuses NaN, which would never fire as a deadline.
            if not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive finite number of seconds, "
                                  f"got {value}")


@dataclass
class Result:
    """Outputs of a run: final activations (batch x out, CSR), categories and the report."""

    activations: sp.csr_matrix
    categories: np.ndarray
    report: dict[str, Any]
    #: An op-level model's outputs by name (batch x width, float32); for a model run,
    #: ``activations`` is its first output as CSR.
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


#: How long the scheduler waits for more peer timeouts after the first, to name the edge that
#: lost data: every worker downstream of it times out too, about as soon.
TIMEOUT_GRACE_S = 2.0


class RunState:
    """What the scheduler knows about every worker while a run is going."""

    def __init__(self, workers: int, layers: int, started: float) -> None:
        self.layers = layers
        self.done_layers = [0] * workers
        self.last_heard = [started] * workers
        self.heard_from = [False] * workers
        self.finished: set[int] = set()
        self.launched_at: dict[int, float] = {}
        self.started = started
        self.duplicates = 0  #: invocations that found their worker running and exited
        self.status_lag_s = 0.0  #: the latest a ``done`` or ``error`` status arrived
        self.progress_lag_s = 0.0  #: the latest any status arrived
        self.rejected = 0  #: messages on the control plane that were not authentic statuses
        #: Workers' peer timeouts, held for :data:`TIMEOUT_GRACE_S` to report the one that
        #: names the edge that lost data (the earliest layer), not the first to give up.
        self.timeouts: list[Status] = []
        self.timeouts_until = 0.0
        self.attempt = [0] * workers  #: the current attempt of each worker
        #: Workers whose invocation the backend reported failed (Lambda's on-failure records):
        #: the status, until they are relaunched.
        self.lost: dict[int, Status] = {}
        self.last_first_heard = started  #: when a worker was last heard from for the first time
        self.relaunches = 0  #: workers relaunched from their last checkpoint
        self.continuations = 0  #: attempts that handed over near their time limit

    def apply(self, status: Status, now: float, received_at: float = 0.0) -> None:
        """Fold one status message in (received at wall-clock time ``received_at``, to measure
        its lag); raise RunError for an ``error`` status."""
        w = status.worker
        if status.kind == "rejected":
            self.rejected += 1
            return
        if not 0 <= w < len(self.done_layers):
            return
        if status.sent_at and received_at:
            lag = max(0.0, received_at - status.sent_at)
            self.progress_lag_s = max(self.progress_lag_s, lag)
            if status.kind in ("done", "error"):
                self.status_lag_s = max(self.status_lag_s, lag)
        if status.kind == "duplicate":
            self.duplicates += 1
            return
        if status.attempt < self.attempt[w]:
            return  # an attempt that was replaced: whatever it says is past
        self.attempt[w] = status.attempt
        if status.kind == "error" and status.error_type == FUNCTION_FAILED:
            self.lost[w] = status  # relaunched by the scheduler, or fails the run (check)
            return
        if not self.heard_from[w]:
            self.last_first_heard = now
        self.last_heard[w] = now
        self.heard_from[w] = True
        if status.attempt == 0:  # launch_s measures the invocation tree, not relaunches
            self.launched_at[w] = status.launched_at
        if status.kind == "continued":
            self.continuations += 1
            self.attempt[w] = status.attempt + 1
            self.done_layers[w] = max(self.done_layers[w], status.layer)
            return
        if status.kind == "error" and status.error_type == "RunTimeout":
            if not self.timeouts:
                self.timeouts_until = now + TIMEOUT_GRACE_S
            self.timeouts.append(status)
            return
        if status.kind == "error":
            raise RunError(f"worker {w} failed at layer {status.layer}: {status.message}",
                           worker=w, layer=status.layer, details=status.details)
        self.done_layers[w] = max(self.done_layers[w], status.layer)
        if status.kind == "done":
            self.finished.add(w)

    def due_relaunch(self, now: float, after_s: float) -> list[int]:
        """Unfinished workers to relaunch: those the backend reported failed, those silent for
        ``after_s``, and those never heard from ``after_s`` after the last worker started."""
        due = []
        for w in range(len(self.done_layers)):
            if w in self.finished:
                continue
            silent = now - self.last_heard[w] > after_s
            # One never heard from may still be waiting for its parent to invoke it: only once
            # no worker has started for a while is it lost.
            starting = not self.heard_from[w] and now - self.last_first_heard <= after_s
            if w in self.lost or (silent and not starting):
                due.append(w)
        return due

    def relaunched(self, w: int, now: float) -> int:
        """Record that worker ``w`` is relaunched now; its new attempt number."""
        self.attempt[w] += 1
        self.last_heard[w] = now
        self.lost.pop(w, None)
        self.relaunches += 1
        return self.attempt[w]

    def check(self, now: float, config: RunConfig) -> None:
        """Raise RunTimeout if the run or a worker is past its deadline."""
        waiting = [w for w in range(len(self.done_layers)) if w not in self.finished]
        if not waiting:  # the last "done" came in time for this check: the run finished
            return
        if self.timeouts and (now >= self.timeouts_until
                              or {s.worker for s in self.timeouts} >= set(waiting)):
            first = min(self.timeouts, key=lambda s: (s.layer, s.worker))
            others = sorted({s.worker for s in self.timeouts} - {first.worker})
            also = f" (workers {others} timed out after it)" if others else ""
            raise RunTimeout(f"worker {first.worker} failed at layer {first.layer}: "
                             f"{first.message}{also}", worker=first.worker, layer=first.layer,
                             details=first.details)
        if self.lost:  # reported failed and not relaunched: the budget is spent
            w, status = next(iter(self.lost.items()))
            raise RunError(f"worker {w} failed at layer {self.done_layers[w]}: "
                           f"{status.message} (relaunch budget of {config.relaunches} spent)",
                           worker=w, layer=self.done_layers[w], details=status.details)
        if now - self.started > config.timeout_s:
            raise RunTimeout(f"run timed out after {config.timeout_s:g} s; "
                             f"{self._describe(waiting)}", worker=waiting[0] if waiting else None)
        silent = [w for w in waiting if now - self.last_heard[w] > config.stall_timeout_s]
        if silent:
            w = silent[0]
            what = (f"stopped reporting (last heard at layer {self.done_layers[w]} of "
                    f"{self.layers})" if self.heard_from[w]
                    else "never started (no status since launch)")
            raise RunTimeout(f"worker {w} {what} for {config.stall_timeout_s:g} s; "
                             f"{self._describe(waiting)}", worker=w, layer=self.done_layers[w])

    def _describe(self, waiting: list[int]) -> str:
        return "unfinished: " + ", ".join(
            f"worker {w} at layer {self.done_layers[w]}/{self.layers}" for w in waiting)


class Scheduler:
    """Runs compiled plans on a backend through a channel. See the module docstring."""

    def __init__(self, backend: str | Backend = "local", channel: str | None = None,
                 config: RunConfig | None = None, *, prices: Prices | None = None) -> None:
        self.backend = get_backend(backend)() if isinstance(backend, str) else backend
        # None: the backend's own default (queue for local and aws, ray for ray...).
        self.channel = get_channel(channel or self.backend.default_channel)
        self.config = config or RunConfig()
        #: The price table of the bill and the auto channel (default: the backend's).
        self.prices = prices

    def prewarm(self) -> None:
        """Let the backend start warm workers while the caller loads data."""
        self.backend.prewarm()

    def close(self) -> None:
        """Release the backend's warm resources."""
        self.backend.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_sync(self, plan: Plan | ModelPlan, inputs: Any) -> Result:
        """:meth:`run` for callers without an event loop."""
        return asyncio.run(self.run(plan, inputs))

    async def run(self, plan: Plan | ModelPlan, inputs: Any) -> Result:
        """Run ``plan`` on ``inputs`` (batch x input width; for an op-level model, a mapping
        from input name to array, or one array); see the module docstring."""
        model_io = _ModelIO(plan, inputs) if isinstance(plan, ModelPlan) else None
        if model_io is not None:
            y0 = sp.csr_matrix((model_io.batch, 0), dtype=np.float32)
        else:
            assert isinstance(plan, Plan)
            y0 = sp.csr_matrix(inputs, dtype=np.float32)
            if y0.shape[1] != plan.input_width:
                raise InputError(f"inputs have {y0.shape[1]} features, the plan expects "
                                 f"{plan.input_width}")
            if not np.all(np.isfinite(y0.data)):
                raise InputError("inputs contain NaN or infinite values")
        submitted = time.perf_counter()
        names = RunNames(uuid.uuid4().hex[:12], self.backend.namespace, RunKey.generate())
        coordinator = WorkerMetrics(-1)
        prices = self.prices or self.backend.prices()
        channel_config = self.channel.prepare(self.config.channel, prices)
        async with self.backend.session(names) as raw:
            _check_limits(raw.limits)
            missing = self.channel.missing_services(raw)
            if missing:
                raise ConfigError(f"channel {self.channel.name!r} needs {', '.join(missing)}, "
                                  f"which backend {self.backend.name!r} does not provide")
            await self.backend.preflight(raw, plan.workers, self.config.timeout_s)
            channel_config, channel_setup = self.channel.fit(channel_config, plan.workers,
                                                             raw.quotas)
            if not plan.edges:
                channel_setup = {"mode": "none", "why": "the plan exchanges nothing: no "
                                                        "channel resources"}
            services = counted(raw, coordinator)
            phases = _Phases(coordinator)
            try:
                with phases("stage"):
                    if model_io is not None:
                        await model_io.stage(services, names)
                    else:
                        assert isinstance(plan, Plan)
                        await self._stage(services, names, plan, y0)
                with phases("setup"):
                    await services.control.create()
                    if plan.edges:  # a plan without exchange needs no queues or topics
                        await self.channel.create_resources(services, names, plan.workers,
                                                            channel_config)
                invoked = time.time()
                state = await self._launch_and_watch(services, names, plan, y0.shape[0],
                                                     channel_config)
                keys = [names.output_key(w) for w in range(plan.workers)]
                outputs = await asyncio.gather(*map(services.objects.get, keys))
                model_outputs: dict[str, np.ndarray] = {}
                if model_io is not None:
                    model_outputs, worker_metrics = model_io.collect(names, keys, outputs)
                    activations = sp.csr_matrix(model_outputs[model_io.plan.model.outputs[0]])
                else:
                    assert isinstance(plan, Plan)
                    activations, worker_metrics = _assemble(
                        [read_output(key, unseal_parts(names, key, body), y0.shape[0],
                                     plan.output_width)
                         for key, body in zip(keys, outputs, strict=True)],
                        y0.shape[0], plan.output_width)
                wall_s = time.perf_counter() - submitted
            finally:
                with phases("teardown"):
                    await self._cleanup(services, names, plan, channel_config)
        cats = categories(activations)
        facts = RunFacts(
            run_id=names.run_id, backend=self.backend.name, batch=y0.shape[0], wall_s=wall_s,
            stage_s=phases.seconds["stage"],
            launch_s=max(state.launched_at.values(), default=invoked) - invoked,
            invoked_at=invoked, invocation_depth=depth(plan.workers, self.config.branching),
            categories=len(cats), config=asdict(self.config),
            setup_s=phases.seconds["setup"], setup_requests=phases.requests["setup"],
            teardown_s=phases.seconds["teardown"], teardown_requests=phases.requests["teardown"],
            status_lag_s=state.status_lag_s, progress_lag_s=state.progress_lag_s,
            duplicate_invocations=state.duplicates, channel_setup=channel_setup,
            statuses_rejected=state.rejected, relaunches=state.relaunches,
            continuations=state.continuations)
        report = build_report(worker_metrics, coordinator.to_dict(), plan, facts, self.channel,
                              self.config.channel, prices)
        if model_io is not None:
            mp = model_io.plan
            report["model"] = {"ops": list(mp.model.order()), "outputs": list(mp.model.outputs),
                               "steps": mp.steps(),
                               "collectives": [asdict(c) for c in mp.edges],
                               "lower_bound_bytes": mp.lowering.lower_bound_bytes(
                                   model_io.batch),
                               "weight_bytes": mp.weight_bytes()}
        return Result(activations, cats, report, model_outputs)

    async def _stage(self, services: Services, names: RunNames, plan: Plan,
                     y0: sp.csr_matrix) -> None:
        """PUT every worker's input columns and every group position's plan shard, sealed (the
        replicas of a group share its shards: worker ``w`` reads shard ``w % group``). Both go as
        raw arrays (:func:`fsdgraph.serialize.pack_parts`): the object store carries bytes
        whatever they hold, so only the checksum and one copy into the body touch the data."""
        blocks = replica_input_blocks(y0, plan)
        objects = [(names.shard_key(g), plan.shards[g].to_parts()) for g in range(plan.group)]
        objects += [(names.input_key(w), input_parts(block)) for w, block in enumerate(blocks)]
        await put_sealed(services, names, objects)

    async def _launch_and_watch(self, services: Services, names: RunNames,
                                plan: Plan | ModelPlan,
                                batch: int, channel_config: ChannelConfig) -> RunState:
        interval = heartbeat_interval(plan.workers, self.config.progress_interval_s,
                                      self.config.stall_timeout_s)
        event = WorkerEvent(
            run_id=names.run_id, namespace=names.namespace, worker=-1, workers=plan.workers,
            batch=batch, channel=self.channel.name, backend=self.backend.name,
            channel_config=asdict(channel_config), backend_config=services.description,
            progress_interval_s=interval, branching=self.config.branching,
            run_key=names.key.hex(), checkpoint_every=self._checkpoint_every(plan, channel_config),
            time_limit_s=self.backend.time_limit_s(), kernel=self.config.kernel or "",
            kernel_threads=self.config.kernel_threads, group=plan.group,
            kind="model" if isinstance(plan, ModelPlan) else "layers")
        relaunch_after = max(self.config.relaunch_after_s, 4 * interval)
        state = RunState(plan.workers, plan.layers, time.monotonic())
        for root in roots(plan.workers, self.config.branching):
            payload = event.child(root).to_json()
            check_invoke_payload(payload, services.limits)
            await services.functions.invoke(payload)
        show = self.config.progress if self.config.progress is not None else sys.stderr.isatty()
        arrived: asyncio.Queue[tuple[float, list[Status]]] = asyncio.Queue()

        async def drain() -> None:
            # A poll that fails retryably (a read timeout, throttling) is tried again until the
            # stall timeout: the workers' statuses are still there to be read.
            poll = partial(services.control.poll, wait_s=CONTROL_POLL_S)
            while True:
                statuses = await retry(poll, deadline_s=self.config.stall_timeout_s)
                arrived.put_nowait((time.time(), statuses))

        drains = [asyncio.ensure_future(drain()) for _ in range(pollers(plan.workers))]
        try:
            with tqdm(total=plan.workers * plan.layers, disable=not show, unit="layer",
                      desc=f"{plan.workers} workers", leave=False) as bar:
                while len(state.finished) < plan.workers:
                    try:
                        received_at, statuses = await asyncio.wait_for(arrived.get(),
                                                                       CONTROL_POLL_S)
                    except TimeoutError:
                        received_at, statuses = 0.0, []
                    now = time.monotonic()
                    for status in statuses:
                        state.apply(status, now, received_at)
                    for w in state.due_relaunch(now, relaunch_after):
                        if state.relaunches >= self.config.relaunches or (
                                isinstance(plan, ModelPlan) and not plan.relaunchable):
                            break  # a lost worker then fails the run (RunState.check)
                        await self._relaunch(services, names, event, w, state.relaunched(w, now))
                    for task in drains:
                        if task.done():  # a poll that failed fails the run, with its error
                            task.result()
                    bar.update(sum(state.done_layers) - bar.n)
                    slowest = min(range(plan.workers), key=state.done_layers.__getitem__)
                    bar.set_postfix_str(f"slowest: worker {slowest} at layer "
                                        f"{state.done_layers[slowest]}/{plan.layers}",
                                        refresh=False)
                    state.check(now, self.config)
        finally:
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
        return state

    def _checkpoint_every(self, plan: Plan | ModelPlan, channel_config: ChannelConfig) -> int:
        if isinstance(plan, ModelPlan):
            return 0  # a model worker keeps no state worth a checkpoint: it restarts
        if self.config.checkpoint_every is not None:
            return self.config.checkpoint_every
        if not self.config.relaunches:
            return 0  # nobody would resume from a checkpoint
        return checkpoint_every(plan.layers, layer_s=self.channel.estimate_layer_s,
                                hold_limit_s=channel_config.visibility_timeout_s / 2)

    async def _relaunch(self, services: Services, names: RunNames, event: WorkerEvent,
                        worker: int, attempt: int) -> None:
        """Start attempt ``attempt`` of a lost ``worker`` from its latest checkpoint; the
        attempt object tells a replaced attempt that is still running to stop."""
        await services.objects.put(names.attempt_key(worker),
                                   attempt_object(names, worker, attempt))
        payload = replace(event.child(worker), attempt=attempt, resume=True,
                          invoke_children=False).to_json()
        check_invoke_payload(payload, services.limits)
        await services.functions.invoke(payload)

    async def _cleanup(self, services: Services, names: RunNames, plan: Plan | ModelPlan,
                       channel_config: ChannelConfig) -> None:
        """Remove every resource of the run; a failure here must not hide the run's error."""
        steps: list[Callable[[], Awaitable[object]]] = [
            lambda: (self.channel.delete_resources(services, names, plan.workers, channel_config)
                     if plan.edges else asyncio.sleep(0)),
            services.control.delete,
            lambda: services.objects.delete_prefix(names.prefix),
        ]
        for step in steps:  # every step is tried, whatever the others did
            try:
                await step()
            except (FsdError, OSError) as exc:
                print(f"fsdgraph: cleanup of run {names.run_id}: {exc}", file=sys.stderr)


class _Phases:
    """Wall time and coordinator requests of the run's phases (stage, setup, teardown)."""

    def __init__(self, coordinator: WorkerMetrics) -> None:
        self.coordinator = coordinator
        self.seconds: dict[str, float] = {}
        self.requests: dict[str, dict[str, int]] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        before = Counter(self.coordinator.current.requests)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = time.perf_counter() - start
            self.requests[phase] = dict(Counter(self.coordinator.current.requests) - before)


#: The smallest message limit the protocol works with: a chunk's attributes take about 120 bytes
#: and a worker's status message a few hundred.
MIN_MESSAGE_BYTES = 1024


async def put_sealed(services: Services, names: RunNames,
                     objects: list[tuple[str, list[bytes | memoryview]]]) -> None:
    """PUT each ``(key, parts)`` sealed, its parts aligned (workers use the arrays where they
    lie); the first failure is raised once every PUT has ended."""
    puts: list[asyncio.Future[None]] = []
    try:
        for key, parts in objects:
            puts.append(asyncio.ensure_future(
                services.objects.put(key, seal(names, key, parts, align=ALIGN))))
            # Let this PUT start (a large one is written from a thread) while the next
            # object is encoded and checksummed.
            await asyncio.sleep(0)
    finally:
        # Every PUT ends before staging does, whatever fails: none may land after the
        # teardown has removed the run's objects.
        outcomes = await asyncio.gather(*puts, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class _ModelIO:
    """The inputs and outputs of an op-level model run: each worker's rows of every input
    staged, and its rows of every output read back."""

    def __init__(self, plan: ModelPlan, inputs: Any) -> None:
        self.plan = plan
        try:
            self.values = plan.model.bind(inputs)
        except GraphError as exc:
            raise InputError(str(exc)) from None
        self.batch = next(iter(self.values.values())).shape[0]
        self.slices = plan.image_slices(self.batch)
        widths = plan.model.widths()
        self.widths = {name: widths[name] for name in plan.model.outputs}

    async def stage(self, services: Services, names: RunNames) -> None:
        plan = self.plan
        objects = [(names.shard_key(g), plan.program_parts(g)) for g in range(plan.group)]
        objects += [(names.input_key(r), model_input_parts(
            (start, stop), {n: v[start:stop] for n, v in self.values.items()}))
            for r, (start, stop) in enumerate(self.slices)]
        await put_sealed(services, names, objects)

    def collect(self, names: RunNames, keys: list[str], bodies: list[bytes]
                ) -> tuple[dict[str, np.ndarray], list[Mapping[str, Any]]]:
        """Every output, assembled from the workers' rows and features; a ProtocolError if
        the pieces do not cover it exactly once."""
        joined = {name: np.zeros((self.batch, width), np.float32)
                  for name, width in self.widths.items()}
        covered = {name: np.zeros((self.batch, width), np.uint8)
                   for name, width in self.widths.items()}
        metrics: list[Mapping[str, Any]] = []
        for w, (key, body) in enumerate(zip(keys, bodies, strict=True)):
            rows = self.slices[w // self.plan.group]
            pieces, m = read_model_outputs(key, unseal_parts(names, key, body), rows,
                                           self.widths)
            for name, ((lo, hi), y) in pieces.items():
                joined[name][rows[0]:rows[1], lo:hi] = y
                covered[name][rows[0]:rows[1], lo:hi] += 1
            metrics.append(m)
        for name, width in self.widths.items():
            if not (covered[name] == 1).all():
                raise ProtocolError(f"output {name!r}: the workers' pieces do not cover its "
                                    f"{self.batch} x {width} values exactly once")
        return joined, metrics


def _check_limits(limits: Limits) -> None:
    for name in ("max_message_bytes", "max_batch_bytes"):
        if getattr(limits, name) < MIN_MESSAGE_BYTES:
            raise ConfigError(f"limit {name}={getattr(limits, name)} is too small: chunk "
                              f"attributes and status messages need at least "
                              f"{MIN_MESSAGE_BYTES} bytes to fit")


def replica_input_blocks(y0: sp.csr_matrix, plan: Plan) -> list[Block]:
    """Every worker's input block: its group position's input columns of its replica's rows
    (:meth:`Plan.image_slices`), with global row ids."""
    columns = [shard.input_neurons for shard in plan.shards[:plan.group]]
    if plan.replicas == 1:
        return input_blocks(y0, columns)
    blocks = []
    for start, stop in plan.image_slices(y0.shape[0]):
        for block in input_blocks(y0[start:stop], columns):
            blocks.append(replace(block, rows=block.rows + np.int32(start)))
    return blocks


def input_blocks(y0: sp.csr_matrix, columns: list[np.ndarray]) -> list[Block]:
    """Each worker's input columns (``columns[w]``, ascending input neuron ids) of ``y0`` as a
    block of its live rows, column ids sorted within each row, no stored zeros.

    One pass over ``y0`` serves every worker: a worker that reads every input shares ``y0``'s
    arrays, and the others take their columns from one CSC copy (a slice of the column
    pointers each, rather than one scan of all of ``y0``'s nonzeros per worker).
    """
    if not y0.has_sorted_indices or (y0.nnz and not np.all(y0.data)):
        y0 = y0.copy()  # never change the caller's matrix in place
        y0.eliminate_zeros()
        y0.sort_indices()  # duplicates stay: the serial reference sums them one by one
    width = y0.shape[1]
    csc: sp.csc_matrix | None = None
    blocks = []
    for cols in columns:
        if len(cols) == width and np.array_equal(cols, np.arange(width)):
            blocks.append(_live_rows(y0))
            continue
        if csc is None:
            csc = y0.tocsc()
        # A column slice of CSC, back to CSR: column ids come out sorted.
        blocks.append(_live_rows(sp.csr_matrix(csc[:, cols])))
    return blocks


def _live_rows(csr: sp.csr_matrix) -> Block:
    """The rows of ``csr`` (sorted, no stored zeros) that hold a nonzero, as a block stored
    by its density (the rule of :meth:`Block.from_csr`), without copying the values."""
    counts = np.diff(csr.indptr)
    live = np.flatnonzero(counts).astype(np.int32)
    if len(live) < csr.shape[0]:
        indptr = np.concatenate(([0], np.cumsum(counts[live])))
        csr = sp.csr_matrix((csr.data, csr.indices, indptr), shape=(len(live), csr.shape[1]))
    block = Block(live, csr=csr)
    return block.as_dense() if block.density > DENSE_ABOVE else block


def _assemble(outputs: list[tuple[Block, np.ndarray, dict[str, Any]]], batch: int,
              width: int) -> tuple[sp.csr_matrix, list[Mapping[str, Any]]]:
    """Stitch every worker's output columns into one (batch x width) matrix."""
    metrics: list[Mapping[str, Any]] = [m for _, _, m in outputs]
    if len(outputs) == 1 and np.array_equal(outputs[0][1], np.arange(width)):
        # One worker, every column in order; copied, as the block's arrays may be read-only
        # views of the object read.
        return outputs[0][0].to_matrix(batch).copy(), metrics
    parts = []
    for block, columns, _ in outputs:
        coo = block.to_matrix(batch).tocoo()
        parts.append((coo.row, columns[coo.col], coo.data))
    rows, cols, data = (np.concatenate(x) for x in zip(*parts, strict=True))
    return sp.csr_matrix((data, (rows, cols)), shape=(batch, width)), metrics
