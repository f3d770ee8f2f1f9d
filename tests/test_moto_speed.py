"""fsdgraph.testing.moto_speed changes how fast moto answers, never what it answers.

moto runs in this process (``mock_aws``) with the patches installed, as the local server runs it.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

moto = pytest.importorskip("moto", reason="pip install -e '.[test]'")
boto3 = pytest.importorskip("boto3", reason="pip install -e '.[test]'")

import moto.sqs.models as sqs_models  # noqa: E402
from moto.core import utils as moto_utils  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402

from fsdgraph.testing import moto_speed  # noqa: E402

HOSTS = ["sqs.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com", "s3.amazonaws.com",
         "bucket.s3.us-east-1.amazonaws.com", "lambda.eu-west-1.amazonaws.com", "sqs",
         "example.org"]


@pytest.fixture(scope="module")
def installed() -> None:
    moto_speed.install()
    moto_speed.install()  # a second call changes nothing


def test_the_clock_reads_what_moto_computes(installed: None) -> None:
    # Bracketed by readings of the same clock: an order, not a bound on elapsed time.
    before = time.time()
    now, now_ms = sqs_models.unix_time(), sqs_models.unix_time_millis()
    after = time.time()
    assert before <= now <= after
    assert 1000 * before <= now_ms <= 1000 * after
    some_day = datetime.datetime(2020, 1, 2, 3, 4, 5)
    assert sqs_models.unix_time(some_day) == moto_utils.unix_time(some_day)


def test_hosts_map_to_the_service_moto_finds(installed: None) -> None:
    app = DomainDispatcherApplication(lambda service: None)  # type: ignore[arg-type,return-value]
    for host in HOSTS:
        expected = moto_speed._find_backend(app, host)
        assert app.get_backend_for_host(host) == expected
        assert app.get_backend_for_host(host) == expected  # remembered, the same
    assert app.get_backend_for_host("sqs.us-east-1.amazonaws.com") == "sqs"
    assert app.get_backend_for_host(None) is None


def test_messages_past_their_retention_are_still_not_received(installed: None,
                                                              monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="kept",
                               Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="young")
        sqs.send_message(QueueUrl=url, MessageBody="old")
        backend = sqs_models.sqs_backends["123456789012"]["us-east-1"]
        old = next(m for m in backend.get_queue("kept")._messages if m.body == "old")
        old.sent_timestamp -= 61_000  # sent 61 s ago: past the 60 s retention
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in got] == ["young"]


def test_account_backends_are_made_once_and_found_again(installed: None) -> None:
    account = "000011112222"
    assert not dict.__contains__(sqs_models.sqs_backends, account)
    made = sqs_models.sqs_backends[account]  # made under moto's lock, as before
    assert sqs_models.sqs_backends[account] is made  # found again, without it
    assert made["us-east-1"] is sqs_models.sqs_backends[account]["us-east-1"]
    del sqs_models.sqs_backends[account]


def test_queue_attributes_count_messages_when_read(installed: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="counted")["QueueUrl"]
        for body in ("a", "b", "c"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=600)
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=600)
        everything = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (everything["ApproximateNumberOfMessages"],
                everything["ApproximateNumberOfMessagesNotVisible"],
                everything["ApproximateNumberOfMessagesDelayed"]) == ("2", "1", "1")
        assert everything["SqsManagedSseEnabled"] == "true"  # bools as moto writes them
        one = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                     "QueueArn"])["Attributes"]
        assert one == {"ApproximateNumberOfMessages": "2",
                       "QueueArn": "arn:aws:sqs:us-east-1:123456789012:counted"}
        # The same queue created again with the same attributes is the same queue.
        assert sqs.create_queue(QueueName="counted")["QueueUrl"] == url


def test_deletes_find_their_message_by_any_of_its_receipts(installed: None,
                                                           monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="deleted")["QueueUrl"]
        other = sqs.create_queue(QueueName="other")["QueueUrl"]
        for body in ("a", "b"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        sqs.send_message(QueueUrl=other, MessageBody="c")
        first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=0)
        again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)
        assert len(first["Messages"]) == len(again["Messages"]) == 2
        foreign = sqs.receive_message(QueueUrl=other)["Messages"][0]["ReceiptHandle"]
        with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=foreign)  # another queue's
        old = next(m for m in first["Messages"] if m["Body"] == "a")["ReceiptHandle"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=old)  # an earlier receipt still works
        sqs.delete_message(QueueUrl=url, ReceiptHandle=old)  # and deleting twice succeeds
        new = next(m for m in again["Messages"] if m["Body"] == "b")["ReceiptHandle"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=new)
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert counts["ApproximateNumberOfMessages"] == "0"
        assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
        sqs.delete_message(QueueUrl=other, ReceiptHandle=foreign)
