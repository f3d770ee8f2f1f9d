"""A coordinator's end, however it comes: what it leaves behind and how it exits.

The coordinator is the ``fsdgraph graphchallenge`` command in a subprocess whose stdout is a
pipe, on a private root directory (``FSDGRAPH_LOCAL_ROOT`` for the run directories, ``TMPDIR``
for the launcher's), so that other tests' directories are never seen. Each run is held open by
stopping its worker processes (SIGSTOP) once all have started: the signal then always lands in a
running run, however fast the machine.

* SIGTERM and SIGHUP: exit 143 and 129 with a message, after the run's clean-up, which leaves no
  process and no directory;
* SIGKILL: the reader of the pipe gets its end as soon as the coordinator is gone (no launcher or
  worker holds the coordinator's stdout, even a launcher that cannot run), and the launcher then
  stops the run's workers, removes the run's directory and its own, and exits;
* coordinator and launcher killed at once: the workers die with the launcher, the directories
  left behind are listed by ``fsdgraph cleanup --dry-run`` and swept by the next session, which
  never touches a live coordinator's directory nor one without an owner record;
* ``fsdgraph cleanup`` kills a stopped launcher of a dead coordinator and its workers;
* bad ``LocalBackend`` options raise ``ConfigError`` before anything exists, and a session that
  fails while it is being set up leaves nothing.

AWS: ``fsdgraph cleanup --backend aws`` against the local moto server (``moto_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsdgraph.backends.local import LocalBackend
from fsdgraph.backends.local.owner import Owner, pid_alive, sweep, write_owner
from fsdgraph.cleanup import Terminated, parse_duration, terminate_on_signals
from fsdgraph.cli import main
from fsdgraph.errors import ConfigError, InputError
from fsdgraph.resources import RunNames
from fsdgraph.testing.waiting import wait_until

#: A run that lasts long enough for its workers to be seen (and then stopped, so it lasts).
RUN = ["graphchallenge", "--synthetic", "--neurons", "1024", "--layers", "120", "--images", "1000",
       "--workers", "4", "--partitioner", "contiguous", "--no-progress"]
WORKERS = 4
#: Safety net only (a hung test fails instead of hanging CI): never a bound on how fast
#: anything must be.
PATIENCE_S = 600.0


@pytest.fixture
def root() -> Iterator[Path]:
    """A private directory, short enough for a launcher's socket path in it."""
    path = Path(tempfile.mkdtemp(prefix="fsdlc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "FSDGRAPH_LOCAL_ROOT": str(root), "TMPDIR": str(root)}


def _patient(proc: subprocess.Popen[bytes] | None = None) -> Any:
    """``alive`` for wait_until: the process (if any) runs and the safety net has not passed."""
    until = time.monotonic() + PATIENCE_S
    return lambda: time.monotonic() < until and (proc is None or proc.poll() is None)


def _worker_pids(root: Path) -> list[int]:
    return [int(p.name.rsplit(".", 1)[1]) for p in root.glob("fsdgraph-*/pids/*")]


def _all_started(root: Path) -> list[int]:
    """The pids of the run's worker processes once every worker has one (a duplicated
    invocation can add a copy), else []."""
    names = {p.name.rsplit(".", 1)[0] for p in root.glob("fsdgraph-*/pids/*")}
    return _worker_pids(root) if names >= {str(w) for w in range(WORKERS)} else []


def _launcher_pid(root: Path) -> int:
    (record,) = root.glob("fsdgraph-launcher-*/launcher.pid")
    return int(record.read_text())


def _start_held_run(root: Path, **popen: Any) -> tuple[subprocess.Popen[bytes], list[int], int]:
    """The CLI running a run whose workers have all started and are now stopped: the process,
    the workers' pids and the launcher's."""
    proc = subprocess.Popen([sys.executable, "-m", "fsdgraph", *RUN], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(root), **popen)
    pids = wait_until(lambda: _all_started(root), "the run's workers to start", _patient(proc))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a duplicate copy that left
            os.kill(pid, signal.SIGSTOP)
    return proc, pids, _launcher_pid(root)


def _gone(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                      (signal.SIGHUP, 129, "SIGHUP")])
def test_sigterm_and_sighup_remove_the_run_and_exit_128_plus_the_signal(
        root: Path, signum: int, code: int, name: str) -> None:
    proc, workers, launcher = _start_held_run(root)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == code, err.decode()
    assert err.decode().strip().endswith(
        f"fsdgraph: terminated by {name}; the run's resources were removed"), err.decode()
    assert "Traceback" not in err.decode() and b"PASSED" not in out
    # Removed by the coordinator itself, before it exited: nothing to wait for.
    assert _leftovers(root) == []
    wait_until(lambda: _gone([*workers, launcher]), "the workers and the launcher to be reaped",
               _patient())


def test_sigkill_ends_the_pipe_at_once_and_the_launcher_cleans_up(root: Path) -> None:
    proc, workers, launcher = _start_held_run(root)
    os.kill(launcher, signal.SIGSTOP)  # it cannot exit: if it held the pipe, no end would come
    proc.kill()
    out, _ = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == -signal.SIGKILL
    assert pid_alive(launcher)  # the end of the pipe did not wait for it
    assert b"PASSED" not in out
    os.kill(launcher, signal.SIGCONT)  # now it sees its coordinator gone: it stops the run
    wait_until(lambda: _gone([*workers, launcher]), "the launcher and the workers to exit",
               _patient())
    wait_until(lambda: _leftovers(root) == [], "the run's and the launcher's directories to go",
               _patient())


def test_what_a_killed_coordinator_and_launcher_left_is_swept(root: Path) -> None:
    proc, workers, launcher = _start_held_run(root, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its launcher (the workers have
    proc.communicate(timeout=PATIENCE_S)  # process groups of their own)
    assert proc.returncode == -signal.SIGKILL
    wait_until(lambda: _gone([*workers, launcher]), "the workers to die with their launcher",
               _patient())
    left = _leftovers(root)
    assert len(left) == 2 and any(n.startswith("fsdgraph-launcher-") for n in left), left

    live = root / "fsdgraph-live-run"  # a live coordinator's (this process's): never touched
    live.mkdir()
    write_owner(live)
    foreign = root / "fsdgraph-not-ours"  # no owner record: not ours to judge
    foreign.mkdir()

    dry = subprocess.run([sys.executable, "-m", "fsdgraph", "cleanup", "--dry-run"],
                         capture_output=True, env=_env(root), timeout=PATIENCE_S)
    assert dry.returncode == 0, dry.stderr.decode()
    listed = [r for r in json.loads(dry.stdout)["would_remove"]
              if r.get("path", "").startswith(str(root))]
    assert sorted(Path(r["path"]).name for r in listed) == left
    assert {r["kind"] for r in listed} == {"run", "launcher"}
    assert all(r["owner_pid"] == proc.pid and r["processes"] == [] for r in listed)
    assert sorted(_leftovers(root)) == sorted([*left, live.name, foreign.name])  # dry: kept

    async def next_session() -> None:
        backend = LocalBackend(root=str(root), warm=False)
        async with backend.session(RunNames("next")) as services:
            assert Path(services.description["root"]).parent == root

    asyncio.run(next_session())
    assert _leftovers(root) == sorted([live.name, foreign.name])


def test_cleanup_kills_the_processes_of_a_dead_coordinator(root: Path) -> None:
    proc, workers, launcher = _start_held_run(root)
    os.kill(launcher, signal.SIGSTOP)  # an orphan that cannot clean up after itself
    proc.kill()
    proc.communicate(timeout=PATIENCE_S)
    stuck = [pid for pid in [*workers, launcher] if pid_alive(pid)]  # (not a duplicate copy
    assert launcher in stuck and len(stuck) > WORKERS // 2              # that left by itself)

    done = subprocess.run([sys.executable, "-m", "fsdgraph", "cleanup"], capture_output=True,
                          env=_env(root), timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr.decode()
    removed = json.loads(done.stdout)["removed"]
    ours = [r for r in removed if r.get("path", "").startswith(str(root))]
    assert {r["kind"] for r in ours} == {"run", "launcher"}
    killed = {pid for r in ours for pid in r["processes"]}
    killed |= {r["pid"] for r in removed if r["kind"] == "process"}
    assert set(stuck) <= killed
    wait_until(lambda: _gone(stuck), "the killed processes to be reaped", _patient())
    assert _leftovers(root) == []


#: A Python coordinator of its own (not the command line): a run held open by worker 1, which
#: stops itself (SIGSTOP) as it starts layer 3 and is not relaunched.
SCRIPT = """
import sys
import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet

plan = fsdgraph.compile(fsdgraph.sequential(radixnet(1024, 12), bias=-0.3,
                                            cap=32, bias_on_nonzero=True), workers=4,
                        partitioner="contiguous")
backend = LocalBackend(root=sys.argv[1], warm=sys.argv[2] == "warm", kill=(1, 3),
                       kill_signal="STOP")
config = fsdgraph.RunConfig(progress=False, relaunches=0)
with fsdgraph.Scheduler(backend, "queue", config) as scheduler:
    scheduler.run_sync(plan, synthetic_images(1024, 100, seed=1))
"""


def _start_script(root: Path, warm: bool) -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), "warm" if warm else "cold"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids = wait_until(lambda: _all_started(root), "the run's workers to start", _patient(proc))
    return proc, pids


def test_a_python_coordinator_killed_by_sigterm_leaves_nothing(root: Path) -> None:
    """SIGTERM's default action ends a program that does not handle it like SIGKILL: its
    launcher stops the run's workers (the stopped one too) and removes every directory."""
    proc, workers = _start_script(root, warm=True)
    launcher = _launcher_pid(root)
    proc.terminate()
    out, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == -signal.SIGTERM
    assert (out, err) == (b"", b"")
    wait_until(lambda: _gone([*workers, launcher]), "the launcher and the workers to exit",
               _patient())
    wait_until(lambda: _leftovers(root) == [], "the run's and the launcher's directories to go",
               _patient())


def test_cold_workers_leave_with_their_coordinator_and_the_next_start_sweeps(root: Path) -> None:
    """Without a launcher, each worker process watches the coordinator recorded as its run's
    owner; one that cannot (stopped) and the run directory are swept by the next session."""
    proc, workers = _start_script(root, warm=False)
    stopped = wait_until(lambda: [int(p.name.rsplit(".", 1)[1])
                                  for p in root.glob("fsdgraph-*/pids/1.*")
                                  if _stopped(int(p.name.rsplit(".", 1)[1]))],
                         "worker 1 to stop itself", _patient(proc))
    proc.kill()
    proc.communicate(timeout=PATIENCE_S)
    wait_until(lambda: _gone([w for w in workers if w not in stopped]),
               "the running workers to see their coordinator gone", _patient())
    assert not _gone(stopped)
    (_run,) = _leftovers(root)

    async def next_session() -> None:
        async with LocalBackend(root=str(root), warm=False).session(RunNames("next")):
            pass

    asyncio.run(next_session())
    wait_until(lambda: _gone(stopped), "the stopped worker to be killed", _patient())
    assert _leftovers(root) == []


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("T")


# -- options and set-up ---------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"duplicate_rate": 5.0},
     "LocalBackend.duplicate_rate must be a probability between 0 and 1, got 5.0"),
    ({"duplicate_rate": -0.5},
     "LocalBackend.duplicate_rate must be a probability between 0 and 1, got -0.5"),
    ({"kill": (1,)}, "LocalBackend.kill must be (worker, layer), two integers >= 0, or None, "
                     "got (1,)"),
    ({"shuffle": "yes"}, "LocalBackend.shuffle must be True or False, got 'yes'"),
    ({"root": "/no/such/folder"},
     "LocalBackend.root must be an existing directory, got '/no/such/folder'"),
])
def test_bad_options_raise_config_error_before_anything_exists(
        root: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LocalBackend(**{"root": str(root), **options})
    assert str(info.value) == message
    assert _leftovers(root) == []


def test_the_root_setting_comes_from_the_config_file(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[local]\nroot = "{root}"\n')
    assert LocalBackend.configure(config).root == str(root)
    config.write_text('[local]\nroot = "/no/such/folder"\n')
    with pytest.raises(ConfigError) as info:
        LocalBackend.configure(config)
    assert str(info.value) == (f"{config} [local]: LocalBackend.root must be an existing "
                               f"directory, got '/no/such/folder'")


def test_a_session_that_fails_while_set_up_leaves_nothing(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsdgraph.backends.local as local

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("services cannot be built")

    monkeypatch.setattr(local, "_services", broken)

    async def session() -> None:
        async with LocalBackend(root=str(root), warm=False).session(RunNames("broken")):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError) as info:
        asyncio.run(session())
    assert str(info.value) == "services cannot be built"
    assert _leftovers(root) == []


def test_sweep_keeps_live_and_unrecorded_directories_and_dead_owners_go(root: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, owner in (("fsdgraph-dead-1", Owner(dead.pid)), ("fsdgraph-live-1", None),
                        ("fsdgraph-reused-1", Owner(os.getpid(), start="0"))):
        (root / name / "pids").mkdir(parents=True)
        write_owner(root / name, owner)
    (root / "fsdgraph-unrecorded").mkdir()
    (root / "other-dead").mkdir()
    write_owner(root / "other-dead", Owner(dead.pid))  # not named fsdgraph-*: not ours
    swept = sweep(root)
    assert sorted(Path(s.path).name for s in swept) == ["fsdgraph-dead-1", "fsdgraph-reused-1"]
    assert _leftovers(root) == ["fsdgraph-live-1", "fsdgraph-unrecorded", "other-dead"]


# -- signals in Python code -----------------------------------------------------------------------
def test_terminated_unwinds_asyncio_tasks_like_ctrl_c(capfd: pytest.CaptureFixture[str]) -> None:
    ran: list[str] = []

    async def inner() -> None:
        try:
            await asyncio.sleep(0)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while this task runs
            await asyncio.sleep(PATIENCE_S)
        finally:
            ran.append("inner")

    async def outer() -> None:
        tasks = [asyncio.ensure_future(inner())]
        try:
            await asyncio.sleep(PATIENCE_S)
        finally:
            await asyncio.sleep(0)  # an asynchronous clean-up still runs
            ran.append(f"outer, {len(tasks)} task")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, terminate_on_signals():
        asyncio.run(outer())
    assert (info.value.signum, info.value.name, info.value.exit_code) == (
        signal.SIGTERM, "SIGTERM", 143)
    assert sorted(ran) == ["inner", "outer, 1 task"]
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
    assert "Traceback" not in capfd.readouterr().err


def test_cleanup_rejects_a_bad_age(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_duration("0") == 0.0 and parse_duration("1.5h") == 5400.0
    with pytest.raises(InputError):
        parse_duration("soon")
    code = main(["cleanup", "--older-than", "soon", "--dry-run"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "fsdgraph: error: --older-than must be a duration such as 30m, 1h or 2d (s, m, h, d), "
        "got 'soon'")


def test_help_lists_the_signal_exit_codes_and_cleanup() -> None:
    out = subprocess.run([sys.executable, "-m", "fsdgraph", "--help"], capture_output=True,
                         text=True, timeout=PATIENCE_S)
    assert out.returncode == 0
    assert "cleanup" in out.stdout
    for text in ("129 SIGHUP", "130 Ctrl-C (SIGINT)", "143 SIGTERM"):
        assert text in " ".join(out.stdout.split()), text


# -- AWS ------------------------------------------------------------------------------------------
def _aws_config(tmp_path: Path, server: Any, deployment: str) -> Path:
    services = ("s3", "sns", "sqs", "sts", "iam", "logs", "lambda")
    config = tmp_path / "aws.toml"
    config.write_text(f'[aws]\nregion = "{server.region}"\ndeployment = "{deployment}"\n'
                      f'bucket = "{server.bucket}"\n[aws.endpoints]\n'
                      + "".join(f'{s} = "{server.url}"\n' for s in services))
    return config


def test_aws_cleanup_removes_old_runs_and_keeps_young_ones_and_the_deployment(
        moto_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    from fsdgraph.backends.aws.config import load_aws_settings
    from fsdgraph.backends.aws.deploy import remove_run_leftovers

    def client(service: str) -> Any:
        return boto3.client(service, region_name=moto_server.region,
                            endpoint_url=moto_server.url)

    sqs, sns, s3 = client("sqs"), client("sns"), client("s3")
    ns = "janitor"
    failures = sqs.create_queue(QueueName=f"{ns}-failures")["QueueUrl"]  # the deployment's
    other = sqs.create_queue(QueueName="someone-else-0123456789ab-w0")["QueueUrl"]
    queues = [sqs.create_queue(QueueName=f"{ns}-0123456789ab-{s}")["QueueUrl"]
              for s in ("ctl", "w0", "w1")]
    topic = sns.create_topic(Name=f"{ns}-0123456789ab-t0")["TopicArn"]
    arn = sqs.get_queue_attributes(QueueUrl=queues[1],
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    for key in ("plan/0", "input/0", "x/1/0/0"):
        s3.put_object(Bucket=moto_server.bucket, Key=f"fsdgraph/runs/0123456789ab/{key}", Body=b"")
    orphan_topic = sns.create_topic(Name=f"{ns}-fedcba987654-t0")["TopicArn"]  # undated
    config = _aws_config(tmp_path, moto_server, ns)
    settings = load_aws_settings(config, environ={})
    said: list[str] = []
    try:
        # Young: only the undated topic (a run of which only topics are left is over) goes.
        removed = remove_run_leftovers(settings, older_than_s=3600, say=said.append)
        assert [(r.kind, r.name) for r in removed] == [("topic", f"{ns}-fedcba987654-t0")]
        assert any(line.startswith("keeping run 0123456789ab: started") for line in said)

        code = main(["cleanup", "--backend", "aws", "--older-than", "0s", "--dry-run",
                     "--config", str(config)])
        assert code == 0
        listed = [r for r in json.loads(capsys.readouterr().out)["would_remove"]
                  if r["backend"] == "aws"]
        assert sorted((r["kind"], r["name"]) for r in listed) == [
            ("objects", f"s3://{moto_server.bucket}/fsdgraph/runs/0123456789ab/"),
            ("queue", f"{ns}-0123456789ab-ctl"), ("queue", f"{ns}-0123456789ab-w0"),
            ("queue", f"{ns}-0123456789ab-w1"), ("topic", f"{ns}-0123456789ab-t0")]

        code = main(["cleanup", "--backend", "aws", "--older-than", "0s",
                     "--config", str(config)])
        assert code == 0
        gone = [r for r in json.loads(capsys.readouterr().out)["removed"]
                if r["backend"] == "aws"]
        assert sorted((r["kind"], r["name"]) for r in gone) == sorted(
            (r["kind"], r["name"]) for r in listed)
        left = sqs.list_queues(QueueNamePrefix=ns).get("QueueUrls", [])
        assert left == [failures]
        assert [t["TopicArn"] for t in sns.list_topics()["Topics"]
                if t["TopicArn"].rsplit(":", 1)[-1].startswith(ns)] == []
        assert s3.list_objects_v2(Bucket=moto_server.bucket,
                                  Prefix="fsdgraph/runs/0123456789ab/").get("KeyCount") == 0
        assert other in sqs.list_queues(QueueNamePrefix="someone-else").get("QueueUrls", [])
    finally:
        for url in (failures, other, *queues):
            with contextlib.suppress(Exception):
                sqs.delete_queue(QueueUrl=url)
        for t in (topic, orphan_topic):
            with contextlib.suppress(Exception):
                sns.delete_topic(TopicArn=t)
