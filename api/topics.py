"""The API's view of the broker: topic admin with errors in the project's own terms."""

from __future__ import annotations

from api.errors import Unavailable
from streams.config import Broker
from streams.errors import StreamsError
from streams.topics import TopicAdmin


class BrokerTopics:
    """Creates and deletes task topics; a broker failure becomes `Unavailable`."""

    def __init__(self, broker: Broker) -> None:
        self._admin = TopicAdmin(broker)
        self.broker = broker

    def create(self, names: list[str]) -> None:
        """Create the topics if missing."""
        try:
            self._admin.create(names)
        except StreamsError as exc:
            raise Unavailable(f"the message broker could not create topics: {exc}") from exc

    def delete(self, names: list[str]) -> None:
        """Delete the topics if present."""
        try:
            self._admin.delete(names)
        except StreamsError as exc:
            raise Unavailable(f"the message broker could not delete topics: {exc}") from exc

    def ping(self, timeout_s: float = 3.0) -> None:
        """Raise `Unavailable` unless the broker answers."""
        try:
            self._admin.ping(timeout_s)
        except StreamsError as exc:
            raise Unavailable(str(exc)) from exc
