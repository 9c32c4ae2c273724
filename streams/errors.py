"""The streams package's own error types; confluent-kafka errors become these where caught."""

from __future__ import annotations


class StreamsError(Exception):
    """A broker operation failed (the message names the topic and the broker)."""


class BrokerUnavailable(StreamsError):
    """The broker cannot be reached at its bootstrap address."""
