"""Names of everything a run creates. Every name and key carries the run id (run isolation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fsdgraph.integrity import RunKey


@dataclass(frozen=True)
class RunNames:
    """Queue, topic and key names of run ``run_id``.

    ``namespace`` starts every queue and topic name: a backend gives its deployment's name, so
    that permissions can be granted on ``<namespace>-*`` and nothing else.

    >>> n = RunNames("r1")
    >>> n.queue(3), n.exchange_key(5, 1, 2)
    ('fsd-r1-w3', 'runs/r1/x/2/5/1')
    """

    run_id: str
    namespace: str = "fsd"
    #: The run's secret (:mod:`fsdgraph.integrity`): what its processes send each other is
    #: tagged with it. Never part of a name, never printed.
    key: RunKey = field(default_factory=RunKey, repr=False, compare=False)

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def control_queue(self) -> str:
        return f"{self.namespace}-{self.run_id}-ctl"

    def queue(self, worker: int) -> str:
        return f"{self.namespace}-{self.run_id}-w{worker}"

    def topic(self, index: int) -> str:
        return f"{self.namespace}-{self.run_id}-t{index}"

    def shard_key(self, worker: int) -> str:
        return f"{self.prefix}plan/{worker}"

    def input_key(self, worker: int) -> str:
        return f"{self.prefix}input/{worker}"

    def output_key(self, worker: int) -> str:
        return f"{self.prefix}out/{worker}"

    def claim_key(self, worker: int, attempt: int = 0) -> str:
        """Created once, by the first copy of attempt ``attempt`` of worker ``worker`` to start
        (a duplicated invocation finds it and exits)."""
        return f"{self.prefix}claim/{worker}/{attempt}"

    def attempt_key(self, worker: int) -> str:
        """The attempt of worker ``worker`` the scheduler relaunched last (absent: the first):
        an older attempt that finds a newer one here stops."""
        return f"{self.prefix}attempt/{worker}"

    def checkpoint_prefix(self, worker: int) -> str:
        return f"{self.prefix}ckpt/{worker}/"

    def checkpoint_key(self, worker: int, layer: int) -> str:
        """Worker ``worker``'s output columns after layer ``layer`` (a relaunch resumes there)."""
        return f"{self.checkpoint_prefix(worker)}{layer:06d}"

    def exchange_key(self, layer: int, src: int, dst: int) -> str:
        # The reader first: each worker's reads stay under a prefix of its own, which S3 can
        # scale apart from the others' (request rates are per prefix).
        return f"{self.prefix}x/{dst}/{layer}/{src}"
