"""The Lambda Invoke endpoint in front of moto (:mod:`fsdgraph.testing.lambda_endpoint`).

Everything goes through real boto3 clients. Most tests use the session's ``lambda_server`` (a
separate process, as users run it) and create their own uniquely named functions in the shared
``moto_server``; the tests of ``InvokeServer``'s knobs and of ``close()`` start one in-process.
The handlers are in ``tests/invoke_handlers.py``, found by the handler processes through the
``PYTHONPATH`` each function sets in its environment variables. Failed Event invocations are
observed where Lambda reports them: the invocation records in an on-failure SQS queue.

Nothing waits a fixed time: each test polls for the outcome it asserts, under a deadline that
only bounds a hung test.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fsdgraph.testing.lambda_endpoint import InvokeServer
from fsdgraph.testing.waiting import wait_until

TESTS_DIR = Path(__file__).resolve().parent
MODULE = "fsdgraph.testing.lambda_endpoint"


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def code_zip() -> bytes:
    """A code package: moto wants one, though the handler runs from the installed environment."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("unused.py", "")
    return buffer.getvalue()


def client(service: str, endpoint_url: str, region: str) -> Any:
    boto3 = pytest.importorskip("boto3")
    # One attempt: a retried request would hide what the endpoint answered first.
    config = boto3.session.Config(retries={"total_max_attempts": 1}, read_timeout=60)
    return boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint_url,
                                          config=config)


def eventually(condition: Callable[[], Any], what: str) -> Any:
    """Wait until ``condition`` returns something true, and return that."""
    return wait_until(condition, what)


def send_event(lam: Any, name: str, payload: bytes) -> str:
    """Invoke ``name`` with InvocationType Event; returns the request id. The (empty) response
    body is read, which hands the connection back to the client's pool."""
    response = lam.invoke(FunctionName=name, InvocationType="Event", Payload=payload)
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    return str(response["ResponseMetadata"]["RequestId"])


def control(server_url: str, path: str, body: Any = None) -> Any:
    """A request to the invoke server's test controls (``/_fsdgraph/...``)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server_url + path, data=data,
                                     method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(path: Path, timeout_s: float) -> bool:
    """Whether ``path`` exists within ``timeout_s``: only to show that something does *not*
    happen (a slow machine can make that pass wrongly, never fail wrongly)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def role(moto_server: Any) -> str:
    iam = client("iam", moto_server.url, moto_server.region)
    try:
        return str(iam.create_role(RoleName=unique("role"), AssumeRolePolicyDocument="{}")
                   ["Role"]["Arn"])
    finally:
        iam.close()


@pytest.fixture
def moto_lambda(moto_server: Any) -> Iterator[Any]:
    """A client of moto itself, to see where requests landed."""
    lam = client("lambda", moto_server.url, moto_server.region)
    yield lam
    lam.close()


@pytest.fixture
def lam(lambda_server: Any, moto_server: Any) -> Iterator[Any]:
    """A client of the session's invoke server."""
    lam = client("lambda", lambda_server.url, moto_server.region)
    yield lam
    lam.close()


MakeFunction = Callable[..., str]


@pytest.fixture
def make_function(lambda_server: Any, role: str, moto_lambda: Any) -> Iterator[MakeFunction]:
    """``make(handler, endpoint_url=None, timeout=30, memory=128, variables=None, retries=0,
    on_failure=None)``: a new function running ``invoke_handlers.<handler>``, created through the
    endpoint (the session's invoke server by default); deleted at the end. Its failed Event
    invocations are retried ``retries`` times (None: Lambda's default, no configuration), then
    recorded to the ``on_failure`` queue ARN if given."""
    names = []

    def make(handler: str, *, endpoint_url: str | None = None, timeout: int = 30,
             memory: int = 128, variables: dict[str, str] | None = None,
             retries: int | None = 0, on_failure: str | None = None) -> str:
        name = unique("fn")
        creator = client("lambda", endpoint_url or lambda_server.url, moto_lambda.meta.region_name)
        try:
            creator.create_function(
                FunctionName=name, Runtime="python3.11", Role=role,
                Handler=f"invoke_handlers.{handler}", Code={"ZipFile": code_zip()},
                Timeout=timeout, MemorySize=memory,
                Environment={"Variables": {"PYTHONPATH": str(TESTS_DIR), **(variables or {})}},
            )
            config: dict[str, Any] = {}
            if retries is not None:
                config["MaximumRetryAttempts"] = retries
            if on_failure is not None:
                config["DestinationConfig"] = {"OnFailure": {"Destination": on_failure}}
            if config:
                creator.put_function_event_invoke_config(FunctionName=name, **config)
        finally:
            creator.close()
        names.append(name)
        return name

    yield make
    for name in names:
        moto_lambda.delete_function(FunctionName=name)


@pytest.fixture
def failures(moto_server: Any) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """An SQS queue for on-failure records: (its ARN, ``next()`` returning the next record)."""
    sqs = client("sqs", moto_server.url, moto_server.region)
    url = sqs.create_queue(QueueName=unique("failures"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]

    def receive() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1,
                                       WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(message["Body"]) for message in messages]

    def next_record() -> dict[str, Any]:
        return dict(eventually(receive, f"a record in {arn}")[0])

    yield arn, next_record
    sqs.delete_queue(QueueUrl=url)
    sqs.close()


def invocation_log(log_dir: Path, name: str, request_id: str) -> Path:
    """The log file of the function's invocation ``request_id`` (any sequence number)."""
    matches = list(log_dir.glob(f"{name}-*-{request_id}.log"))
    assert len(matches) == 1, f"{len(matches)} log files for {name} {request_id} in {log_dir}"
    return matches[0]


# -- everything but Invoke lands in moto -----------------------------------------------------------
def test_control_plane_requests_land_in_moto(lam: Any, moto_lambda: Any, role: str) -> None:
    """create/get/list/put-event-invoke-config/delete through the endpoint act on moto's state,
    and moto's answers come back unchanged."""
    name = unique("fn")
    created = lam.create_function(
        FunctionName=name, Runtime="python3.11", Role=role, Handler="invoke_handlers.echo",
        Code={"ZipFile": code_zip()}, Timeout=7, Environment={"Variables": {"A": "1"}})
    assert created["FunctionName"] == name and created["Timeout"] == 7
    direct = moto_lambda.get_function(FunctionName=name)["Configuration"]
    assert direct["FunctionArn"] == created["FunctionArn"]
    assert direct["Environment"] == {"Variables": {"A": "1"}}
    assert lam.get_function(FunctionName=name)["Configuration"]["CodeSha256"] == \
        direct["CodeSha256"]
    listed = [f["FunctionName"] for f in lam.list_functions(MaxItems=1000)["Functions"]]
    assert name in listed

    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    config = moto_lambda.get_function_event_invoke_config(FunctionName=name)
    assert config["MaximumRetryAttempts"] == 0

    lam.delete_function(FunctionName=name)
    with pytest.raises(moto_lambda.exceptions.ResourceNotFoundException):
        moto_lambda.get_function(FunctionName=name)


# -- invocation types ------------------------------------------------------------------------------
def test_event_invoke_runs_the_handler(lam: Any, lambda_server: Any, moto_server: Any,
                                       make_function: MakeFunction, tmp_path: Path) -> None:
    """202 and an empty body at once; then the handler runs with the function's environment
    variables, Lambda's reserved ones and a context, and its output goes to its log file."""
    name = make_function("report", timeout=30, memory=256, variables={"GREETING": "hello"})
    path = tmp_path / "seen.json"
    env = ["GREETING", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
           "AWS_LAMBDA_FUNCTION_TIMEOUT", "AWS_REGION"]
    event = {"path": str(path), "env": env}
    response = lam.invoke(FunctionName=name, InvocationType="Event",
                          Payload=json.dumps(event).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    wait_until(path.exists, f"the handler's run:\n{lambda_server.log.read_text()}")
    seen = json.loads(path.read_text())
    assert seen["event"] == event
    assert seen["env"] == {"GREETING": "hello", "AWS_LAMBDA_FUNCTION_NAME": name,
                           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                           "AWS_LAMBDA_FUNCTION_TIMEOUT": "30", "AWS_REGION": moto_server.region}
    context = seen["context"]
    request_id = response["ResponseMetadata"]["RequestId"]
    assert context["function_name"] == name
    assert context["memory_limit_in_mb"] == "256"  # a string, as on Lambda
    assert context["aws_request_id"] == request_id
    assert context["invoked_function_arn"].endswith(f":function:{name}")
    assert 0 < context["remaining_ms"] <= 30_000
    # The handler's result went to stdout, which is the invocation's log file.
    log = invocation_log(lambda_server.log_dir, name, request_id)
    wait_until(lambda: '"GREETING": "hello"' in log.read_text(), "the handler's line in its log")


@pytest.mark.parametrize("form", ["name", "arn", "partial arn", "qualified name"])
def test_request_response_returns_the_result(lam: Any, moto_lambda: Any,
                                             make_function: MakeFunction, form: str) -> None:
    """200 with the handler's JSON result, whatever form FunctionName takes; what the handler
    prints goes to the log (returned with LogType=Tail), never into the result."""
    name = make_function("echo")
    arn = moto_lambda.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    function_name = {"name": name, "arn": arn, "partial arn": ":".join(arn.split(":")[4:]),
                     "qualified name": f"{name}:$LATEST"}[form]
    event = {"numbers": [1, 2.5, None], "text": "héllo"}
    response = lam.invoke(FunctionName=function_name, Payload=json.dumps(event).encode(),
                          LogType="Tail")
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"echo": event, "function_name": name}
    assert response["ExecutedVersion"] == "$LATEST"
    assert f"echo handler called by {name}" in base64.b64decode(response["LogResult"]).decode()


def test_raising_handler_is_an_unhandled_function_error(lam: Any,
                                                        make_function: MakeFunction) -> None:
    """Still HTTP 200, with FunctionError "Unhandled" and Lambda's error object."""
    name = make_function("fail")
    response = lam.invoke(FunctionName=name, Payload=b'{"x": 7}')
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad input: 7"
    assert "invoke_handlers.py" in error["stackTrace"][-1]
    assert "raise ValueError" in error["stackTrace"][-1]


def test_dry_run_checks_without_running(lam: Any, make_function: MakeFunction) -> None:
    name = make_function("fail")
    response = lam.invoke(FunctionName=name, InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert "FunctionError" not in response


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event", "DryRun"])
def test_missing_function_is_resource_not_found(lam: Any, invocation_type: str) -> None:
    """botocore raises the modelled ResourceNotFoundException, whose message names the
    function."""
    name = unique("missing")
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as caught:
        lam.invoke(FunctionName=name, InvocationType=invocation_type, Payload=b"{}")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    assert error["Error"]["Message"].startswith("Function not found: ")
    assert error["Error"]["Message"].endswith(f":function:{name}")


def test_invalid_json_payload_is_refused(lam: Any, make_function: MakeFunction) -> None:
    name = make_function("echo")
    with pytest.raises(lam.exceptions.InvalidRequestContentException, match="json"):
        lam.invoke(FunctionName=name, Payload=b"{not json")


# -- limits ----------------------------------------------------------------------------------------
def test_payload_over_the_limit_is_refused(moto_server: Any, make_function: MakeFunction,
                                           tmp_path: Path) -> None:
    """An Event payload of exactly max_event_bytes runs; one byte more is refused with 413,
    whose message gives both sizes, and is not counted. The same for RequestResponse."""
    event_limit, response_limit = 2000, 3000
    with InvokeServer(moto_server.url, max_event_bytes=event_limit,
                      max_request_response_bytes=response_limit) as server:
        name = make_function("report", endpoint_url=server.url)
        lam = client("lambda", server.url, moto_server.region)
        try:
            path = tmp_path / "seen.json"

            def payload(size: int) -> bytes:
                data = json.dumps({"path": str(path), "pad": ""}).encode()
                return data.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(data)) + b'"')

            assert len(payload(event_limit)) == event_limit
            send_event(lam, name, payload(event_limit))
            wait_until(path.exists, "the handler's run")

            with pytest.raises(lam.exceptions.ClientError) as caught:
                lam.invoke(FunctionName=name, InvocationType="Event",
                           Payload=payload(event_limit + 1))
            error = caught.value.response
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
            assert error["Error"]["Code"] == "RequestEntityTooLargeException"
            message = error["Error"]["Message"]
            assert f"{event_limit + 1} byte payload" in message
            assert f"limit {event_limit} bytes" in message

            with pytest.raises(lam.exceptions.ClientError) as caught:
                lam.invoke(FunctionName=name, Payload=payload(response_limit + 1))
            assert caught.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
            assert f"smaller than {response_limit} bytes" in str(caught.value)
            assert server.invocations == Counter({name: 1})
        finally:
            lam.close()


# -- timeouts and shutdown -------------------------------------------------------------------------
def test_event_past_its_timeout_is_killed(lam: Any, lambda_server: Any,
                                          make_function: MakeFunction, tmp_path: Path) -> None:
    """A handler that would write a file after 3 s under a Timeout of 1 s never writes it, and
    its log and the server's say it timed out."""
    name = make_function("sleep_then_write", timeout=1)
    path = tmp_path / "late.json"
    request_id = send_event(lam, name, json.dumps({"path": str(path), "sleep_s": 3}).encode())
    eventually(lambda: f"({request_id}): timed out after 1 s; killed"
               in lambda_server.log.read_text(), "the server to report the timeout")
    assert "Task timed out after 1.00 seconds" in \
        invocation_log(lambda_server.log_dir, name, request_id).read_text()
    assert not path.exists(), "the handler ran past its timeout"


def test_request_response_past_its_timeout(lam: Any, make_function: MakeFunction,
                                           tmp_path: Path) -> None:
    """The caller gets Lambda's Sandbox.Timedout function error after the Timeout, not the
    handler's 3 s."""
    name = make_function("sleep_then_write", timeout=1)
    path = tmp_path / "late.json"
    response = lam.invoke(FunctionName=name,
                          Payload=json.dumps({"path": str(path), "sleep_s": 3}).encode())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]
    assert not path.exists()


def test_close_kills_running_invocations(moto_server: Any, make_function: MakeFunction,
                                         tmp_path: Path) -> None:
    """close() returns promptly and the invocation it interrupted never finishes."""
    server = InvokeServer(moto_server.url, log_dir=tmp_path / "logs")
    try:
        server.start()
        name = make_function("sleep_then_write", endpoint_url=server.url, timeout=60)
        started, path = tmp_path / "started.json", tmp_path / "late.json"
        lam = client("lambda", server.url, moto_server.region)
        try:
            event = {"started": str(started), "path": str(path), "sleep_s": 3}
            send_event(lam, name, json.dumps(event).encode())
        finally:
            lam.close()
        wait_until(started.exists, "the handler's start")
        assert server.invocations == Counter({name: 1})
    finally:
        server.close()
    assert not wait_for(path, 4), "the handler outlived close()"


# -- command line ----------------------------------------------------------------------------------
def test_help() -> None:
    result = subprocess.run([sys.executable, "-m", MODULE, "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in ("--upstream", "--log-dir", "--cold", "--duplicate-events", "--retry-delay"):
        assert option in result.stdout


def test_command_line_prints_one_line_and_stops_on_sigterm(moto_server: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-m", MODULE, "--upstream", moto_server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # readline would wait forever on a server that hangs before printing.
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert rest == ""
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- asynchronous invocation settings and failures -------------------------------------------------
def test_event_invoke_config_is_replaced_and_updated(lam: Any, moto_lambda: Any,
                                                     make_function: MakeFunction) -> None:
    """A second Put replaces the first (moto alone would keep answering the first); an Update
    changes only the fields it names."""
    name = make_function("echo", retries=None)
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=2)
    destination = "arn:aws:sqs:us-east-1:123456789012:somewhere"
    lam.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=0,
        DestinationConfig={"OnFailure": {"Destination": destination}})
    config = moto_lambda.get_function_event_invoke_config(FunctionName=name)
    assert config["MaximumRetryAttempts"] == 0
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == destination

    lam.update_function_event_invoke_config(FunctionName=name, MaximumEventAgeInSeconds=120)
    config = lam.get_function_event_invoke_config(FunctionName=name)
    assert config["MaximumEventAgeInSeconds"] == 120
    assert config["MaximumRetryAttempts"] == 0
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == destination


def check_record(record: dict[str, Any], name: str, request_id: str, event: Any,
                 attempts: int) -> dict[str, Any]:
    """Assert the fields of Lambda's record of a failed Event invocation; return its
    responsePayload."""
    assert record["version"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    context = record["requestContext"]
    assert context["requestId"] == request_id
    assert context["functionArn"].endswith(f":function:{name}:$LATEST")
    assert context["condition"] == "RetriesExhausted"
    assert context["approximateInvokeCount"] == attempts
    assert record["requestPayload"] == event
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
    return dict(record["responsePayload"])


@pytest.mark.parametrize("failure", ["handler error", "timeout"])
def test_failed_event_is_recorded_in_the_on_failure_queue(
        lam: Any, make_function: MakeFunction, failures: Any, tmp_path: Path,
        failure: str) -> None:
    """With MaximumRetryAttempts=0 the first failure sends Lambda's invocation record, whose
    response payload is what a RequestResponse invocation would have answered."""
    arn, next_record = failures
    if failure == "handler error":
        name = make_function("fail", on_failure=arn)
        event: dict[str, Any] = {"x": 7}
    else:
        name = make_function("sleep_then_write", timeout=1, on_failure=arn)
        event = {"path": str(tmp_path / "late.json"), "sleep_s": 30}
    request_id = send_event(lam, name, json.dumps(event).encode())
    payload = check_record(next_record(), name, request_id, event, attempts=1)
    if failure == "handler error":
        assert payload["errorType"] == "ValueError"
        assert payload["errorMessage"] == "bad input: 7"
        assert "raise ValueError" in payload["stackTrace"][-1]
    else:
        assert payload["errorType"] == "Sandbox.Timedout"
        assert payload["errorMessage"] == \
            f"RequestId: {request_id} Error: Task timed out after 1.00 seconds"
        assert not (tmp_path / "late.json").exists()


def test_killed_execution_is_recorded(lam: Any, lambda_server: Any,
                                      make_function: MakeFunction, failures: Any,
                                      tmp_path: Path) -> None:
    """``POST /_fsdgraph/kill`` kills the execution whose event matches, and only it; its
    record says the runtime was killed."""
    arn, next_record = failures
    name = make_function("sleep_then_write", timeout=120, on_failure=arn)
    events = {worker: {"worker": worker, "started": str(tmp_path / f"started-{worker}"),
                       "path": str(tmp_path / f"done-{worker}"), "sleep_s": 100}
              for worker in (3, 4)}
    request_ids = {}
    for worker, event in events.items():
        request_ids[worker] = send_event(lam, name, json.dumps(event).encode())
    for event in events.values():
        wait_until(Path(event["started"]).exists, "the handler's start")

    answer = control(lambda_server.url, "/_fsdgraph/kill", {"match": {"worker": 3}})
    assert answer == {"killed": [{"functionName": name, "requestId": request_ids[3]}]}
    payload = check_record(next_record(), name, request_ids[3], events[3], attempts=1)
    assert payload["errorType"] == "Runtime.ExitError"
    assert payload["errorMessage"] == \
        f"RequestId: {request_ids[3]} Error: Runtime exited with error: signal: killed"
    running = control(lambda_server.url, "/_fsdgraph/status")["running"]
    assert request_ids[4] in [r["requestId"] for r in running]
    assert request_ids[3] not in [r["requestId"] for r in running]

    answer = control(lambda_server.url, "/_fsdgraph/kill", {"match": {"worker": 4}})
    assert [k["requestId"] for k in answer["killed"]] == [request_ids[4]]
    check_record(next_record(), name, request_ids[4], events[4], attempts=1)
    assert not any(Path(e["path"]).exists() for e in events.values())


def test_held_events_start_only_when_released(lam: Any, lambda_server: Any,
                                             make_function: MakeFunction,
                                             tmp_path: Path) -> None:
    """``POST /_fsdgraph/hold`` keeps the matching Event invocations from starting while the
    others run; ``POST /_fsdgraph/release`` starts them."""
    name = make_function("sleep_then_write", timeout=120)
    events = {worker: {"worker": worker, "started": str(tmp_path / f"started-{worker}"),
                       "path": str(tmp_path / f"done-{worker}"), "sleep_s": 0}
              for worker in (3, 4)}
    assert control(lambda_server.url, "/_fsdgraph/hold", {"match": {"worker": 3}}) == \
        {"held": {"worker": 3}}
    for event in events.values():
        send_event(lam, name, json.dumps(event).encode())
    assert control(lambda_server.url, "/_fsdgraph/status")["held"] == 1
    wait_until(Path(events[4]["path"]).exists, "the unheld event's result")
    assert not Path(events[3]["started"]).exists()

    assert control(lambda_server.url, "/_fsdgraph/release", {"match": {"worker": 3}}) == \
        {"released": 1}
    wait_until(Path(events[3]["path"]).exists, "the released event's result")
    assert control(lambda_server.url, "/_fsdgraph/status")["held"] == 0
    assert control(lambda_server.url, "/_fsdgraph/release", {"match": {"worker": 3}}) == \
        {"released": 0}


def test_failed_event_is_retried_as_configured(moto_server: Any, make_function: MakeFunction,
                                              failures: Any, tmp_path: Path) -> None:
    """Without an event invoke configuration Lambda retries twice: three executions of one
    request id, then one record counting them."""
    arn, next_record = failures
    with InvokeServer(moto_server.url, log_dir=tmp_path / "logs", retry_delay_s=0) as server:
        name = make_function("fail", endpoint_url=server.url, retries=None)
        lam = client("lambda", server.url, moto_server.region)
        try:
            lam.put_function_event_invoke_config(
                FunctionName=name, DestinationConfig={"OnFailure": {"Destination": arn}})
            request_id = send_event(lam, name, b'{"x": 1}')
        finally:
            lam.close()
        check_record(next_record(), name, request_id, {"x": 1}, attempts=3)
        assert server.invocations == Counter({name: 1})
        assert server.executions == Counter({name: 3})
        logs = sorted((tmp_path / "logs").glob(f"{name}-*-{request_id}.log"))
        assert [log.name.split("-")[2] for log in logs] == ["1", "2", "3"]


# -- duplicates, warm and cold starts --------------------------------------------------------------
def test_duplicate_events_run_twice(moto_server: Any, make_function: MakeFunction,
                                    tmp_path: Path) -> None:
    """With duplicate_events an Event invocation runs as two executions with one request id,
    each with its own log; a RequestResponse one runs once."""
    with InvokeServer(moto_server.url, log_dir=tmp_path / "logs",
                      duplicate_events=True) as server:
        name = make_function("report", endpoint_url=server.url)
        lam = client("lambda", server.url, moto_server.region)
        try:
            event = {"path": str(tmp_path / "seen.json")}
            request_id = send_event(lam, name, json.dumps(event).encode())

            def finished_logs() -> list[Path]:
                logs = list((tmp_path / "logs").glob(f"{name}-*-{request_id}.log"))
                done = [log for log in logs if '"aws_request_id"' in log.read_text()]
                return done if len(done) == 2 else []

            for log in eventually(finished_logs, "two finished executions"):
                assert json.loads(log.read_text())["context"]["aws_request_id"] == request_id
            assert server.executions == Counter({name: 2})
            assert server.invocations == Counter({name: 1})
            lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
            assert server.executions == Counter({name: 3})
        finally:
            lam.close()


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_warm_and_cold_executions_get_the_functions_settings(
        moto_server: Any, make_function: MakeFunction, tmp_path: Path, warm: bool) -> None:
    """Either way the handler sees the function's variables, Lambda's reserved ones and a context,
    and is killed at its Timeout; warm executions fork from one zygote per function."""
    with InvokeServer(moto_server.url, log_dir=tmp_path / "logs", warm=warm) as server:
        name = make_function("report", endpoint_url=server.url, timeout=20, memory=512,
                             variables={"GREETING": "hi"})
        slow = make_function("sleep_then_write", endpoint_url=server.url, timeout=1)
        lam = client("lambda", server.url, moto_server.region)
        try:
            env = ["GREETING", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                   "AWS_LAMBDA_FUNCTION_TIMEOUT", "AWS_LAMBDA_LOG_STREAM_NAME"]
            results = []
            for n in range(2):
                response = lam.invoke(FunctionName=name, Payload=json.dumps(
                    {"path": str(tmp_path / f"seen-{n}.json"), "env": env}).encode())
                assert "FunctionError" not in response
                results.append((json.loads(response["Payload"].read()),
                                response["ResponseMetadata"]["RequestId"]))
            for seen, request_id in results:
                assert seen["env"] == {"GREETING": "hi", "AWS_LAMBDA_FUNCTION_NAME": name,
                                       "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
                                       "AWS_LAMBDA_FUNCTION_TIMEOUT": "20",
                                       "AWS_LAMBDA_LOG_STREAM_NAME": request_id}
                assert seen["context"]["aws_request_id"] == request_id
                assert 0 < seen["context"]["remaining_ms"] <= 20_000
            assert len(server.status()["zygotes"]) == (1 if warm else 0)

            response = lam.invoke(FunctionName=slow, Payload=json.dumps(
                {"path": str(tmp_path / "late.json"), "sleep_s": 30}).encode())
            error = json.loads(response["Payload"].read())
            assert error["errorType"] == "Sandbox.Timedout"
            assert "Task timed out after 1.00 seconds" in error["errorMessage"]
            assert not (tmp_path / "late.json").exists()
        finally:
            lam.close()


def test_many_concurrent_warm_executions(moto_server: Any, make_function: MakeFunction,
                                         tmp_path: Path) -> None:
    """256 Event invocations all run at once, forked from one zygote; close() kills them all."""
    count = 256
    server = InvokeServer(moto_server.url)
    try:
        server.start()
        name = make_function("sleep_then_write", endpoint_url=server.url, timeout=300)
        lam = client("lambda", server.url, moto_server.region)
        try:
            for n in range(count):
                event = {"started": str(tmp_path / f"started-{n}"),
                         "path": str(tmp_path / f"done-{n}"), "sleep_s": 200}
                send_event(lam, name, json.dumps(event).encode())
        finally:
            lam.close()
        eventually(lambda: len(list(tmp_path.glob("started-*"))) == count,
                   f"{count} executions started")
        status = server.status()
        assert len(status["running"]) == count and status["queued"] == 0
        assert len(status["zygotes"]) == 1
        pids = [r["pid"] for r in status["running"]]
    finally:
        server.close()
    assert not any(process_alive(pid) for pid in [*pids, *status["zygotes"]])
    assert not list(tmp_path.glob("done-*"))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts need Linux")
def test_zygote_and_executions_die_with_the_server(moto_server: Any,
                                                   make_function: MakeFunction,
                                                   tmp_path: Path) -> None:
    """SIGKILL the server process: its zygote and the execution forked from it go too."""
    proc = subprocess.Popen([sys.executable, "-m", MODULE, "--upstream", moto_server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        name = make_function("sleep_then_write", endpoint_url=url, timeout=300)
        lam = client("lambda", url, moto_server.region)
        try:
            event = {"started": str(tmp_path / "started"), "path": str(tmp_path / "done"),
                     "sleep_s": 200}
            send_event(lam, name, json.dumps(event).encode())
        finally:
            lam.close()
        wait_until((tmp_path / "started").exists, "the handler's start")
        status = control(url, "/_fsdgraph/status")
        pids = [*status["zygotes"], *(r["pid"] for r in status["running"])]
        assert len(pids) == 2 and all(process_alive(pid) for pid in pids)
        proc.kill()
        proc.wait(timeout=30)
        eventually(lambda: not any(process_alive(pid) for pid in pids),
                   "the zygote and its child to exit")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
