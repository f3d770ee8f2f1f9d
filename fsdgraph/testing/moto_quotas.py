"""moto's server, enforcing the service quotas moto does not: a test fails here where AWS
would refuse the request.

``python -m fsdgraph.testing.moto_quotas [moto.server arguments]`` serves exactly as ``python -m
moto.server`` does (same options: ``-H``, ``-p``, ...), after :func:`install` has wrapped three
methods of moto's SNS backend (``moto.sns.models.SNSBackend``: ``create_topic``, ``subscribe``,
``set_subscription_attributes``) and its Subscribe response handler
(``moto.sns.responses.SNSResponse.subscribe``, which must take back a subscription whose filter
policy is refused). The quotas are :func:`fsdgraph.quotas.load_quotas` of the server's environment,
so ``FSDGRAPH_QUOTA_FILTER_POLICIES_PER_TOPIC=4`` (or a ``[quotas]`` table in the config file)
lowers one for a test:

* CreateTopic of a new name beyond ``topics_per_account``: ``TopicLimitExceeded``;
* Subscribe of a new subscription beyond ``subscriptions_per_topic``:
  ``SubscriptionLimitExceeded``;
* a first ``FilterPolicy`` for a subscription (Subscribe's attribute, or
  SetSubscriptionAttributes) beyond ``filter_policies_per_topic`` on its topic or
  ``filter_policies_per_account`` in the account and region: ``FilterPolicyLimitExceeded``.

Each refusal is an HTTP 403 with the code and status of botocore's model of SNS, so a client raises
the same modelled exceptions as against AWS (``sns.exceptions.FilterPolicyLimitExceededException``).
Nothing is counted: every check reads moto's own state, so Unsubscribe, DeleteTopic or setting an
empty ``FilterPolicy`` frees what it removes, and a refused Subscribe leaves no subscription behind.
As on AWS, the quotas count per account and region (one moto backend), replacing a filter policy
takes no new one, and subscribing an endpoint already subscribed returns the existing subscription.

Lambda: moto checks PutFunctionConcurrency against the account's concurrency only when
``MOTO_LAMBDA_CONCURRENCY_QUOTA`` is set; :func:`install` sets it to ``lambda_concurrency`` (unless
already set), so a reservation that leaves fewer than 100 unreserved executions is refused, as on
AWS. Running functions, and their concurrency, is the invoke server's part
(:mod:`fsdgraph.testing.lambda_endpoint`).

Two fixes, not quotas: the server listens with a backlog of 4096 connections (werkzeug's 128
refuses hundreds of workers connecting at once); and moto's ``Topic.publish`` delivers only to
the first 100 subscriptions of a topic (it reads one page of ListSubscriptionsByTopic):
:func:`install` replaces it with one that delivers to all of them, as SNS does (a topic shard
holds up to 200). The server also runs moto without the costs that made it collapse under
hundreds of clients (:mod:`fsdgraph.testing.moto_speed`): the same answers, faster.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from moto.core.exceptions import ServiceException
from moto.moto_api._internal import mock_random
from moto.sns.models import SNSBackend, Subscription, Topic
from moto.sns.responses import SNSResponse

from fsdgraph.quotas import Quotas, load_quotas

__all__ = ["FilterPolicyLimitExceeded", "SubscriptionLimitExceeded", "TopicLimitExceeded",
           "install", "main"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: moto serves each request in its own thread; a check and the change it guards are one step.
_lock = threading.RLock()
_quotas = Quotas()
_installed = False


# moto answers a ServiceException with the HTTP status botocore's model gives its code (403 for
# all three) and the message as the error's Message.
class FilterPolicyLimitExceeded(ServiceException):
    code = "FilterPolicyLimitExceeded"


class SubscriptionLimitExceeded(ServiceException):
    code = "SubscriptionLimitExceeded"


class TopicLimitExceeded(ServiceException):
    code = "TopicLimitExceeded"


def _has_filter_policy(subscription: Subscription) -> bool:
    return bool(subscription.attributes.get("FilterPolicy"))


def _check_new_filter_policy(backend: SNSBackend, subscription: Subscription) -> None:
    """FilterPolicyLimitExceeded if giving ``subscription`` a first filter policy would pass a
    quota."""
    with_policy = [s for s in backend.subscriptions.values() if _has_filter_policy(s)]
    on_topic = sum(1 for s in with_policy if s.topic.arn == subscription.topic.arn)
    if on_topic >= _quotas.filter_policies_per_topic:
        raise FilterPolicyLimitExceeded(
            f"Filter policy limit exceeded: topic {subscription.topic.arn} already has "
            f"{on_topic} subscriptions with a filter policy (quota filter_policies_per_topic = "
            f"{_quotas.filter_policies_per_topic})")
    if len(with_policy) >= _quotas.filter_policies_per_account:
        raise FilterPolicyLimitExceeded(
            f"Filter policy limit exceeded: the account has {len(with_policy)} filter policies "
            f"in {backend.region_name} (quota filter_policies_per_account = "
            f"{_quotas.filter_policies_per_account})")


def _wrap(owner: type, name: str) -> Callable[[_F], _F]:
    """Replace ``owner.name`` by the decorated function, which gets the original first."""
    original = getattr(owner, name)

    def decorate(wrapper: _F) -> _F:
        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with _lock:
                return wrapper(original, *args, **kwargs)

        setattr(owner, name, wrapped)
        return wrapper

    return decorate


def _patch_sns() -> None:
    # CreateTopic answers an existing name with that topic: only a new one counts.
    @_wrap(SNSBackend, "create_topic")
    def create_topic(original: Callable[..., Any], self: SNSBackend, name: str, *args: Any,
                     **kwargs: Any) -> Any:
        if (len(self.topics) >= _quotas.topics_per_account
                and not any(topic.name == name for topic in self.topics.values())):
            raise TopicLimitExceeded(
                f"Topic limit exceeded: the account has {len(self.topics)} topics in "
                f"{self.region_name} (quota topics_per_account = {_quotas.topics_per_account})")
        return original(self, name, *args, **kwargs)

    @_wrap(SNSBackend, "subscribe")
    def subscribe(original: Callable[..., Any], self: SNSBackend, topic_arn: str, endpoint: str,
                  protocol: str) -> Any:
        if self._find_subscription(topic_arn, endpoint, protocol) is None:
            count = sum(1 for s in self.subscriptions.values() if s.topic.arn == topic_arn)
            if count >= _quotas.subscriptions_per_topic:
                raise SubscriptionLimitExceeded(
                    f"Subscription limit exceeded: topic {topic_arn} has {count} subscriptions "
                    f"(quota subscriptions_per_topic = {_quotas.subscriptions_per_topic})")
        return original(self, topic_arn, endpoint, protocol)

    # Both SetSubscriptionAttributes and Subscribe's Attributes land here.
    @_wrap(SNSBackend, "set_subscription_attributes")
    def set_subscription_attributes(original: Callable[..., Any], self: SNSBackend, arn: str,
                                    name: str, value: Any) -> Any:
        subscription = self.subscriptions.get(arn)
        if (name == "FilterPolicy" and value and subscription is not None
                and not _has_filter_policy(subscription)):
            _check_new_filter_policy(self, subscription)
        return original(self, arn, name, value)

    # moto's Subscribe creates the subscription, then sets its attributes one by one: a filter
    # policy refused there must take back the subscription it just created, as SNS refuses the
    # whole request.
    @_wrap(SNSResponse, "subscribe")
    def subscribe_response(original: Callable[..., Any], self: SNSResponse) -> Any:
        backend: SNSBackend = self.backend
        topic_arn, endpoint = self._get_param("TopicArn"), self._get_param("Endpoint")
        protocol = self._get_param("Protocol")
        existed = backend._find_subscription(topic_arn, endpoint, protocol) is not None
        try:
            return original(self)
        except FilterPolicyLimitExceeded:
            if not existed:
                created = backend._find_subscription(topic_arn, endpoint, protocol)
                if created is not None:
                    backend.unsubscribe(created.arn)
            raise


def _publish_to_every_subscription(
        self: Topic, message: str, subject: str | None = None,
        message_attributes: dict[str, Any] | None = None, group_id: str | None = None,
        deduplication_id: str | None = None, message_structure: str | None = None) -> str:
    """moto's ``Topic.publish``, delivering to every subscription of the topic: moto's own
    reads only the first page (100) of ListSubscriptionsByTopic, so a topic with more
    subscribers silently loses their messages; SNS delivers to all of them."""
    message_id = str(mock_random.uuid4())
    for subscription in self.sns_backend._get_topic_subscriptions(self):
        subscription.publish(message, message_id, subject=subject,
                             message_attributes=message_attributes, group_id=group_id,
                             deduplication_id=deduplication_id,
                             message_structure=message_structure)
    self.sent_notifications.append((message_id, message, subject, message_attributes, group_id))
    return message_id


def install(quotas: Quotas | None = None) -> Quotas:
    """Enforce ``quotas`` (default: :func:`~fsdgraph.quotas.load_quotas` of the environment) in
    this process's moto backends; a second call only changes the quotas. Returns them."""
    global _quotas, _installed
    with _lock:
        _quotas = load_quotas(environ=os.environ) if quotas is None else quotas
        os.environ.setdefault("MOTO_LAMBDA_CONCURRENCY_QUOTA", str(_quotas.lambda_concurrency))
        if not _installed:
            _patch_sns()
            Topic.publish = _publish_to_every_subscription  # type: ignore[method-assign]
            _installed = True
        return _quotas


def main(argv: Sequence[str] | None = None) -> int:
    """Install the quotas, then run moto's server with ``argv`` (its own options)."""
    install()
    import werkzeug.serving
    from moto.server import main as moto_main

    from fsdgraph.testing import moto_speed

    moto_speed.install()

    # Hundreds of workers open their connections at once; werkzeug's backlog of 128 refuses
    # the rest, which no AWS endpoint does.
    werkzeug.serving.BaseWSGIServer.request_queue_size = 4096
    moto_main(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
