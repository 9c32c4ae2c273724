"""Topic names of the data plane and a small admin over the broker.

Every confluent-kafka error and timeout is translated here into StreamsError
or BrokerUnavailable, with the topic and the broker address in the message.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.config import Broker, as_broker
from streams.errors import UNREACHABLE, BrokerUnavailable, StreamsError

_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# librdkafka prints every failed connection attempt to stderr unless it is
# given a logger; route those lines to Python logging (silent by default).
_LOG = logging.getLogger("streams.kafka")


@dataclass(frozen=True)
class TaskTopics:
    """The two data-plane topics of one task."""

    broadcast: str
    updates: str

    def names(self) -> list[str]:
        """Both topic names, broadcast first."""
        return [self.broadcast, self.updates]


def _checked(name: str) -> str:
    if not _LEGAL_NAME.match(name):
        raise ValueError(f"{name!r} is not a legal topic name (1-249 of [A-Za-z0-9._-])")
    return name


def task_topics(prefix: str, task_id: str) -> TaskTopics:
    """The broadcast and updates topic names of task `task_id`."""
    base = f"{prefix}.task.{task_id}"
    return TaskTopics(_checked(f"{base}.broadcast"), _checked(f"{base}.updates"))


def events_topic(prefix: str) -> str:
    """The topic every committed event is relayed to."""
    return _checked(f"{prefix}.events")


class TopicAdmin:
    """Create, delete and list topics; check that the broker answers."""

    def __init__(self, broker: Broker | str, timeout_s: float = 10) -> None:
        self.broker = as_broker(broker)
        self.bootstrap_servers = self.broker.bootstrap
        self.timeout_s = timeout_s
        config: dict[str, Any] = {**self.broker.config(), "logger": _LOG}
        self._admin = AdminClient(config)

    def ping(self, timeout_s: float = 3.0) -> None:
        """Raise BrokerUnavailable unless the broker answers within `timeout_s`."""
        self._metadata(timeout_s)

    def list(self) -> set[str]:
        """Names of every topic on the broker."""
        return set(self._metadata(self.timeout_s).topics)

    def exists(self, name: str) -> bool:
        """Whether topic `name` exists."""
        return name in self.list()

    def ids(self, names: Sequence[str]) -> dict[str, str | None]:
        """Each topic's id (None for a topic that does not exist).

        A topic deleted and created again under the same name gets a new id: that is
        how a reader tells a recreated topic (a broker restarted empty) from the one it
        was reading, whatever its offsets. Raise StreamsError if the broker cannot say.
        """
        futures = self._admin.describe_topics(TopicCollection(list(names)),
                                              request_timeout=self.timeout_s) if names else {}
        ids: dict[str, str | None] = {}
        for topic, future in futures.items():
            try:
                ids[topic] = str(future.result(timeout=self.timeout_s + 1).topic_id)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise self._translate(exc, f"describe topic {topic!r}", self.timeout_s) from exc
                ids[topic] = None
            except concurrent.futures.TimeoutError as exc:
                raise self._unreachable(f"describe topic {topic!r}", self.timeout_s) from exc
        return ids

    def create(self, names: Sequence[str], partitions: int = 1) -> None:
        """Create the topics; one that already exists is left as it is."""
        # replication_factor=-1 lets the broker apply its own default, so the
        # same call suits a single embedded broker and a replicated cluster.
        new = [NewTopic(_checked(n), num_partitions=partitions, replication_factor=-1) for n in names]
        futures = self._admin.create_topics(new, request_timeout=self.timeout_s) if new else {}
        self._settle(futures, "create", KafkaError.TOPIC_ALREADY_EXISTS)

    def delete(self, names: Sequence[str]) -> None:
        """Delete the topics; one that does not exist is not an error."""
        futures = self._admin.delete_topics(list(names), request_timeout=self.timeout_s) if names else {}
        self._settle(futures, "delete", KafkaError.UNKNOWN_TOPIC_OR_PART)

    def _metadata(self, timeout_s: float) -> Any:
        try:
            return self._admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise self._translate(exc, "list topics", timeout_s) from exc

    def _settle(self, futures: dict[str, Any], verb: str, harmless: int) -> None:
        for topic, future in futures.items():
            try:
                # The admin request carries its own timeout; the extra second
                # only covers the hop back from librdkafka's thread.
                future.result(timeout=self.timeout_s + 1)
            except KafkaException as exc:
                if exc.args[0].code() != harmless:
                    raise self._translate(exc, f"{verb} topic {topic!r}", self.timeout_s) from exc
            except concurrent.futures.TimeoutError as exc:
                raise self._unreachable(f"{verb} topic {topic!r}", self.timeout_s) from exc

    def _translate(self, exc: KafkaException, what: str, timeout_s: float) -> StreamsError:
        error = exc.args[0]
        if isinstance(error, KafkaError) and error.code() in UNREACHABLE:
            return self._unreachable(what, timeout_s)
        return StreamsError(f"could not {what} on broker {self.bootstrap_servers}: {error}")

    def _unreachable(self, what: str, timeout_s: float) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"broker at {self.bootstrap_servers} did not answer within {timeout_s:g} s "
            f"(could not {what}); is it running?"
        )
