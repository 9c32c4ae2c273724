"""The API's view of the broker: topic admin with errors in the project's own terms."""

from __future__ import annotations

from api.errors import Unavailable


class BrokerTopics:
    """Creates and deletes task topics; a broker failure becomes `Unavailable`."""

    def __init__(self, bootstrap_servers: str) -> None:
        from streams.topics import TopicAdmin

        self._admin = TopicAdmin(bootstrap_servers)
        self.bootstrap_servers = bootstrap_servers

    def create(self, names: list[str]) -> None:
        """Create the topics if missing."""
        from streams.errors import StreamsError

        try:
            self._admin.create(names)
        except StreamsError as exc:
            raise Unavailable(f"the message broker could not create topics: {exc}") from exc

    def delete(self, names: list[str]) -> None:
        """Delete the topics if present."""
        from streams.errors import StreamsError

        try:
            self._admin.delete(names)
        except StreamsError as exc:
            raise Unavailable(f"the message broker could not delete topics: {exc}") from exc

    def ping(self, timeout_s: float = 3.0) -> None:
        """Raise `Unavailable` unless the broker answers."""
        from streams.errors import StreamsError

        try:
            self._admin.ping(timeout_s)
        except StreamsError as exc:
            raise Unavailable(str(exc)) from exc
