"""Benchmark: many seeded random fault schedules, and coordinators killed mid-run.

Each schedule is a small run (a generated RadiX-Net of 64 or 256 neurons and 6 to 12 layers,
2 to 7 workers, a channel the faults apply to) under up to ``--most`` kinds of fault drawn from
``--kinds`` (:mod:`fsdgraph.testing.faults`: lost, repeated, delayed, reordered, damaged,
forged, replayed and relabelled messages, damaged, forged and refused objects, workers killed
or stopped), all fixed by its seed ``--seed + i``. Each ends ``exact`` (bit for bit the serial
reference), ``failed`` (an error naming the edge or worker: acceptable), ``wrong`` (a result
that differs, reported as success: never acceptable) or ``bug`` (any other exception), and must
leave no process and no run directory behind.

A share of the schedules (``--coordinator-share``) run their coordinator in a process of its
own and send it SIGKILL or SIGTERM once every worker has started; what is left of the run
(worker, host and launcher processes, directories under its private root) after
``--leak-wait-s`` is reported as a leak.

Prints one JSON document: counts per outcome and per fault kind, every wrong, buggy or leaking
schedule with its seed, and schedules per second; a progress bar goes to stderr.

    python bench/faults.py [--schedules 1000] [--jobs 2] [--seed 0] [--kinds drop,kill,...]
    python bench/faults.py --only SEED     # one schedule again, in this process
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.util
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fsdgraph.testing.faults import KINDS, Runner, Schedule, kill_coordinator

_runner: Runner | None = None
_root: Path | None = None
_leak_wait_s = 10.0


def schedule_of(seed: int, kinds: list[str], most: int, coordinator_share: float) -> Schedule:
    """Schedule ``seed``: a coordinator kill with probability ``coordinator_share``, else a
    random mix of ``kinds``."""
    rng = random.Random(f"coordinator {seed}")
    if rng.random() < coordinator_share:
        # Delays make the run last long enough for the signal to land mid-run.
        return Schedule.random(seed, kinds=("delay",), layers=12,
                               coordinator=rng.choice(["KILL", "TERM"]))
    return Schedule.random(seed, kinds=kinds, most=most)


def _start(base: str, leak_wait_s: float) -> None:
    global _runner, _root, _leak_wait_s
    _root = Path(tempfile.mkdtemp(prefix="j", dir=base))  # short: sockets go under it
    _leak_wait_s = leak_wait_s
    _runner = Runner(_root / "runs", leak_grace_s=leak_wait_s)
    multiprocessing.util.Finalize(None, _runner.close, exitpriority=10)


def _one(schedule: dict[str, Any]) -> dict[str, Any]:
    assert _runner is not None and _root is not None
    s = Schedule.from_dict(schedule)
    if s.coordinator:
        outcome = kill_coordinator(s, _root / f"c{s.seed}", leak_grace_s=_leak_wait_s)
        shutil.rmtree(_root / f"c{s.seed}", ignore_errors=True)
    else:
        outcome = _runner.run(s)
        _runner.clean(outcome)  # the next schedule starts clean
    d = outcome.to_dict()
    d["may_fail"] = s.may_fail
    return d


def summarize(outcomes: list[dict[str, Any]], seconds: float, args: argparse.Namespace,
              ) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        for kind in o["kinds"] or ["none"]:
            by_kind[kind][o["verdict"]] += 1
            by_kind[kind]["leaked"] += bool(o["leaked_processes"] or o["leaked_paths"])

    def brief(o: dict[str, Any]) -> dict[str, Any]:
        return {k: o[k] for k in ("seed", "kinds", "verdict", "error", "leaked_processes",
                                  "leaked_paths")} | {
            "reproduce": f"python bench/faults.py --only {o['seed']}"
                         + (f" --kinds {args.kinds}" if args.kinds else "")}

    leaks = [o for o in outcomes if o["leaked_processes"] or o["leaked_paths"]]
    return {
        "schedules": len(outcomes), "jobs": args.jobs, "seed": args.seed,
        "seconds": round(seconds, 1),
        "schedules_per_s": round(len(outcomes) / seconds, 3) if seconds else None,
        "outcomes": dict(sorted(Counter(o["verdict"] for o in outcomes).items())),
        "leaked": len(leaks),
        "failed_where_exact_expected": sum(o["verdict"] == "failed" and not o["may_fail"]
                                           for o in outcomes),
        "by_kind": {k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())},
        "wrong": [brief(o) for o in outcomes if o["verdict"] == "wrong"],
        "bugs": [brief(o) for o in outcomes if o["verdict"] == "bug"],
        "leaks": [brief(o) for o in leaks],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2, help="schedules run at once")
    parser.add_argument("--seed", type=int, default=0, help="the first schedule's seed")
    parser.add_argument("--kinds", default="",
                        help=f"comma-separated fault kinds (default all: {','.join(KINDS)})")
    parser.add_argument("--most", type=int, default=3, help="most kinds in one schedule")
    parser.add_argument("--coordinator-share", type=float, default=0.05,
                        help="share of schedules that kill their coordinator mid-run")
    parser.add_argument("--leak-wait-s", type=float, default=10.0,
                        help="how long leftovers may take to go before they count as leaks")
    parser.add_argument("--only", type=int, default=None, help="run this one seed, here")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k] or list(KINDS)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")

    base = tempfile.mkdtemp(prefix="fsdf-")
    try:
        if args.only is not None:
            _start(base, args.leak_wait_s)
            try:
                print(json.dumps(_one(schedule_of(args.only, kinds, args.most,
                                                  args.coordinator_share).to_dict()), indent=1))
            finally:
                assert _runner is not None
                _runner.close()
            return
        schedules = [schedule_of(args.seed + i, kinds, args.most, args.coordinator_share)
                     for i in range(args.schedules)]
        outcomes: list[dict[str, Any]] = []
        start = time.monotonic()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_start,
                                 initargs=(base, args.leak_wait_s)) as pool, \
                tqdm(total=len(schedules), unit="schedule", file=sys.stderr) as bar:
            futures = [pool.submit(_one, s.to_dict()) for s in schedules]
            for future in as_completed(futures):
                outcomes.append(future.result())
                counts = Counter(o["verdict"] for o in outcomes)
                bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                                    refresh=False)
                bar.update()
        outcomes.sort(key=lambda o: o["seed"])
        print(json.dumps(summarize(outcomes, time.monotonic() - start, args), indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
